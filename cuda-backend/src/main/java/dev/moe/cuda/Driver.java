package dev.moe.cuda;

import static dev.moe.cuda.Native.FLOAT;
import static dev.moe.cuda.Native.INT;
import static dev.moe.cuda.Native.LONG;
import static dev.moe.cuda.Native.PTR;
import static dev.moe.cuda.Native.SIZE_T;

import java.lang.foreign.Arena;
import java.lang.foreign.FunctionDescriptor;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.SymbolLookup;
import java.lang.foreign.ValueLayout;
import java.lang.invoke.MethodHandle;

/**
 * The part of the CUDA driver API the backend uses. Every call is checked: a failure throws a
 * {@link CudaException} with the function's name and the driver's error name and text. Device
 * pointers, contexts, streams, modules and functions are plain {@code long}s/segments here; the
 * closeable handles live in {@link CudaContext} and {@link DeviceAllocator}.
 */
public final class Driver {
    private static final String LIB = "libcuda";
    public static final int CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT = 16;
    public static final int CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR = 75;
    public static final int CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR = 76;
    /** cuLaunchKernel's limit on dynamic shared memory without opting in. */
    static final int CUDA_ERROR_OUT_OF_MEMORY = 2;

    private final MethodHandle cuInit, cuDeviceGetCount, cuDeviceGet, cuDeviceGetName, cuDeviceGetAttribute, cuDriverGetVersion,
            cuDevicePrimaryCtxRetain, cuCtxSetCurrent, cuCtxSynchronize, cuMemAlloc, cuMemFree, cuMemGetInfo, cuMemHostAlloc,
            cuMemFreeHost, cuMemcpyHtoDAsync, cuMemcpyDtoHAsync, cuMemcpyDtoDAsync, cuMemsetD8Async, cuModuleLoadData,
            cuModuleGetFunction, cuLaunchKernel, cuStreamCreate, cuStreamSynchronize, cuEventCreate, cuEventRecord,
            cuEventSynchronize, cuEventElapsedTime, cuGetErrorName, cuGetErrorString, cuStreamBeginCapture, cuStreamEndCapture,
            cuGraphInstantiate, cuGraphLaunch, cuGraphExecDestroy, cuGraphDestroy, cuStreamWaitEvent, cuFuncGetParamInfo;
    /** Virtual memory management (CUDA 10.2 and later): null when the driver lacks it. */
    private final MethodHandle cuMemGetAllocationGranularity, cuMemAddressReserve, cuMemAddressFree, cuMemCreate, cuMemRelease, cuMemMap,
            cuMemUnmap, cuMemSetAccess;
    /** Whether a device supports cuMemCreate/cuMemMap (CU_DEVICE_ATTRIBUTE_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED). */
    public static final int CU_DEVICE_ATTRIBUTE_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED = 102;

    private static Driver instance;

    /** Loads the driver and calls cuInit once; throws with a hint to use the CPU when there is none. */
    public static synchronized Driver get() {
        if (instance == null) {
            instance = new Driver(CudaLibraries.load(CudaLibraries.DRIVER));
        }
        return instance;
    }

    private Driver(SymbolLookup lib) {
        cuGetErrorName = fn(lib, "cuGetErrorName", INT, INT, PTR);
        cuGetErrorString = fn(lib, "cuGetErrorString", INT, INT, PTR);
        cuInit = fn(lib, "cuInit", INT, INT);
        cuDriverGetVersion = fn(lib, "cuDriverGetVersion", INT, PTR);
        cuDeviceGetCount = fn(lib, "cuDeviceGetCount", INT, PTR);
        cuDeviceGet = fn(lib, "cuDeviceGet", INT, PTR, INT);
        cuDeviceGetName = fn(lib, "cuDeviceGetName", INT, PTR, INT, INT);
        cuDeviceGetAttribute = fn(lib, "cuDeviceGetAttribute", INT, PTR, INT, INT);
        cuDevicePrimaryCtxRetain = fn(lib, "cuDevicePrimaryCtxRetain", INT, PTR, INT);
        cuCtxSetCurrent = fn(lib, "cuCtxSetCurrent", INT, PTR);
        cuCtxSynchronize = fn(lib, "cuCtxSynchronize", INT);
        cuMemAlloc = fn(lib, "cuMemAlloc_v2", INT, PTR, SIZE_T);
        cuMemFree = fn(lib, "cuMemFree_v2", INT, LONG);
        cuMemGetInfo = fn(lib, "cuMemGetInfo_v2", INT, PTR, PTR);
        cuMemHostAlloc = fn(lib, "cuMemHostAlloc", INT, PTR, SIZE_T, INT);
        cuMemFreeHost = fn(lib, "cuMemFreeHost", INT, PTR);
        cuMemcpyHtoDAsync = fn(lib, "cuMemcpyHtoDAsync_v2", INT, LONG, PTR, SIZE_T, PTR);
        cuMemcpyDtoHAsync = fn(lib, "cuMemcpyDtoHAsync_v2", INT, PTR, LONG, SIZE_T, PTR);
        cuMemcpyDtoDAsync = fn(lib, "cuMemcpyDtoDAsync_v2", INT, LONG, LONG, SIZE_T, PTR);
        cuMemsetD8Async = fn(lib, "cuMemsetD8Async", INT, LONG, ValueLayout.JAVA_BYTE, SIZE_T, PTR);
        cuModuleLoadData = fn(lib, "cuModuleLoadData", INT, PTR, PTR);
        cuModuleGetFunction = fn(lib, "cuModuleGetFunction", INT, PTR, PTR, PTR);
        cuLaunchKernel = fn(lib, "cuLaunchKernel", INT, PTR, INT, INT, INT, INT, INT, INT, INT, PTR, PTR, PTR);
        cuStreamCreate = fn(lib, "cuStreamCreate", INT, PTR, INT);
        cuStreamSynchronize = fn(lib, "cuStreamSynchronize", INT, PTR);
        cuEventCreate = fn(lib, "cuEventCreate", INT, PTR, INT);
        cuEventRecord = fn(lib, "cuEventRecord", INT, PTR, PTR);
        cuEventSynchronize = fn(lib, "cuEventSynchronize", INT, PTR);
        cuEventElapsedTime = lib.find("cuEventElapsedTime_v2").isPresent()
                ? fn(lib, "cuEventElapsedTime_v2", INT, PTR, PTR, PTR)
                : fn(lib, "cuEventElapsedTime", INT, PTR, PTR, PTR);
        cuStreamWaitEvent = fn(lib, "cuStreamWaitEvent", INT, PTR, PTR, INT);
        // CUDA 12.4 and later: the kernel's parameter sizes, to check a launch's arguments against them
        cuFuncGetParamInfo = lib.find("cuFuncGetParamInfo").isPresent() ? fn(lib, "cuFuncGetParamInfo", INT, PTR, SIZE_T, PTR, PTR) : null;
        cuStreamBeginCapture = fn(lib, "cuStreamBeginCapture_v2", INT, PTR, INT);
        cuStreamEndCapture = fn(lib, "cuStreamEndCapture", INT, PTR, PTR);
        cuGraphInstantiate = fn(lib, "cuGraphInstantiateWithFlags", INT, PTR, PTR, LONG);
        cuGraphLaunch = fn(lib, "cuGraphLaunch", INT, PTR, PTR);
        cuGraphExecDestroy = fn(lib, "cuGraphExecDestroy", INT, PTR);
        cuGraphDestroy = fn(lib, "cuGraphDestroy", INT, PTR);
        boolean vmm = lib.find("cuMemCreate").isPresent() && lib.find("cuMemMap").isPresent();
        cuMemGetAllocationGranularity = vmm ? fn(lib, "cuMemGetAllocationGranularity", INT, PTR, PTR, INT) : null;
        cuMemAddressReserve = vmm ? fn(lib, "cuMemAddressReserve", INT, PTR, SIZE_T, SIZE_T, LONG, LONG) : null;
        cuMemAddressFree = vmm ? fn(lib, "cuMemAddressFree", INT, LONG, SIZE_T) : null;
        cuMemCreate = vmm ? fn(lib, "cuMemCreate", INT, PTR, SIZE_T, PTR, LONG) : null;
        cuMemRelease = vmm ? fn(lib, "cuMemRelease", INT, LONG) : null;
        cuMemMap = vmm ? fn(lib, "cuMemMap", INT, LONG, SIZE_T, SIZE_T, LONG, LONG) : null;
        cuMemUnmap = vmm ? fn(lib, "cuMemUnmap", INT, LONG, SIZE_T) : null;
        cuMemSetAccess = vmm ? fn(lib, "cuMemSetAccess", INT, LONG, SIZE_T, PTR, SIZE_T) : null;
        check(Native.call(cuInit, 0), "cuInit");
    }

    /** Whether {@code device} can map physical memory into reserved address ranges (cuMemCreate, cuMemMap). */
    public boolean virtualMemorySupported(int device) {
        return cuMemCreate != null && attribute(device, CU_DEVICE_ATTRIBUTE_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED) != 0;
    }

    /**
     * CUmemAllocationProp for pinned device memory on {@code device}: type (int), requestedHandleTypes (int), location {type, id}
     * (two ints), win32HandleMetaData (pointer), allocFlags (8 bytes); 32 bytes, the rest zero.
     */
    private static MemorySegment allocationProp(Arena arena, int device) {
        MemorySegment prop = arena.allocate(32, 8);
        prop.set(INT, 0, 1); // CU_MEM_ALLOCATION_TYPE_PINNED
        prop.set(INT, 8, 1); // CU_MEM_LOCATION_TYPE_DEVICE
        prop.set(INT, 12, device);
        return prop;
    }

    /** The size and alignment unit of mappings on {@code device} (cuMemGetAllocationGranularity, minimum). */
    public long allocationGranularity(int device) {
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment g = arena.allocate(SIZE_T);
            check(Native.call(cuMemGetAllocationGranularity, g, allocationProp(arena, device), 0), "cuMemGetAllocationGranularity");
            return g.get(SIZE_T, 0);
        }
    }

    /** Reserves {@code bytes} (a multiple of the granularity) of device address space, backed by nothing yet. */
    public long reserveAddresses(long bytes, long alignment) {
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment p = arena.allocate(LONG);
            check(Native.call(cuMemAddressReserve, p, bytes, alignment, 0L, 0L), "cuMemAddressReserve");
            return p.get(LONG, 0);
        }
    }

    public void freeAddresses(long pointer, long bytes) {
        check(Native.call(cuMemAddressFree, pointer, bytes), "cuMemAddressFree");
    }

    /** A physical allocation of {@code bytes} (a multiple of the granularity) on {@code device}, or -1 when out of memory. */
    public long tryCreatePhysical(int device, long bytes) {
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment h = arena.allocate(LONG);
            int rc = Native.call(cuMemCreate, h, bytes, allocationProp(arena, device), 0L);
            if (rc == CUDA_ERROR_OUT_OF_MEMORY) {
                return -1;
            }
            check(rc, "cuMemCreate");
            return h.get(LONG, 0);
        }
    }

    public void releasePhysical(long handle) {
        check(Native.call(cuMemRelease, handle), "cuMemRelease");
    }

    /** Maps {@code handle}'s first {@code bytes} at {@code pointer} and makes them readable and writable from {@code device}. */
    public void map(long pointer, long bytes, long handle, int device) {
        check(Native.call(cuMemMap, pointer, bytes, 0L, handle, 0L), "cuMemMap");
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment desc = arena.allocate(12, 4); // CUmemAccessDesc: location {type, id}, flags
            desc.set(INT, 0, 1); // CU_MEM_LOCATION_TYPE_DEVICE
            desc.set(INT, 4, device);
            desc.set(INT, 8, 3); // CU_MEM_ACCESS_FLAGS_PROT_READWRITE
            check(Native.call(cuMemSetAccess, pointer, bytes, desc, 1L), "cuMemSetAccess");
        }
    }

    public void unmap(long pointer, long bytes) {
        check(Native.call(cuMemUnmap, pointer, bytes), "cuMemUnmap");
    }

    private static MethodHandle fn(SymbolLookup lib, String name, java.lang.foreign.MemoryLayout ret, java.lang.foreign.MemoryLayout... args) {
        return Native.function(lib, LIB, name, FunctionDescriptor.of(ret, args));
    }

    /** Throws for a non-zero CUresult, with the driver's own name and description of it. */
    void check(int result, String function) {
        if (result == 0) {
            return;
        }
        String name = "CUDA error " + result;
        String text = "";
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment p = arena.allocate(PTR);
            if (Native.call(cuGetErrorName, result, p) == 0) {
                name = Native.cString(p.get(ValueLayout.ADDRESS, 0));
            }
            if (Native.call(cuGetErrorString, result, p) == 0) {
                text = Native.cString(p.get(ValueLayout.ADDRESS, 0));
            }
        }
        throw new CudaException(function + " failed: " + name + (text.isEmpty() ? "" : " (" + text + ")"));
    }

    public int driverVersion() {
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment v = arena.allocate(INT);
            check(Native.call(cuDriverGetVersion, v), "cuDriverGetVersion");
            return v.get(INT, 0);
        }
    }

    public int deviceCount() {
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment v = arena.allocate(INT);
            check(Native.call(cuDeviceGetCount, v), "cuDeviceGetCount");
            return v.get(INT, 0);
        }
    }

    public int device(int ordinal) {
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment v = arena.allocate(INT);
            check(Native.call(cuDeviceGet, v, ordinal), "cuDeviceGet");
            return v.get(INT, 0);
        }
    }

    public String deviceName(int device) {
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment buf = arena.allocate(256);
            check(Native.call(cuDeviceGetName, buf, 256, device), "cuDeviceGetName");
            return buf.getString(0);
        }
    }

    public int attribute(int device, int attribute) {
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment v = arena.allocate(INT);
            check(Native.call(cuDeviceGetAttribute, v, attribute, device), "cuDeviceGetAttribute");
            return v.get(INT, 0);
        }
    }

    /** Retains the device's primary context and makes it current on this thread. */
    public MemorySegment primaryContext(int device) {
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment v = arena.allocate(PTR);
            check(Native.call(cuDevicePrimaryCtxRetain, v, device), "cuDevicePrimaryCtxRetain");
            MemorySegment ctx = v.get(ValueLayout.ADDRESS, 0);
            check(Native.call(cuCtxSetCurrent, ctx), "cuCtxSetCurrent");
            return ctx;
        }
    }

    public void setCurrent(MemorySegment context) {
        check(Native.call(cuCtxSetCurrent, context), "cuCtxSetCurrent");
    }

    public void synchronizeContext() {
        check(Native.call(cuCtxSynchronize), "cuCtxSynchronize");
    }

    /** A device allocation, or -1 when the device is out of memory (the allocator decides what to do). */
    public long tryMalloc(long bytes) {
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment v = arena.allocate(LONG);
            int rc = Native.call(cuMemAlloc, v, bytes);
            if (rc == CUDA_ERROR_OUT_OF_MEMORY) {
                return -1;
            }
            check(rc, "cuMemAlloc");
            return v.get(LONG, 0);
        }
    }

    public void free(long devicePointer) {
        check(Native.call(cuMemFree, devicePointer), "cuMemFree");
    }

    /** {free, total} bytes of device memory. */
    public long[] memoryInfo() {
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment free = arena.allocate(SIZE_T);
            MemorySegment total = arena.allocate(SIZE_T);
            check(Native.call(cuMemGetInfo, free, total), "cuMemGetInfo");
            return new long[] {free.get(SIZE_T, 0), total.get(SIZE_T, 0)};
        }
    }

    /** Page-locked host memory, so that copies run at full PCIe speed and asynchronously. */
    public MemorySegment hostAlloc(long bytes) {
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment v = arena.allocate(PTR);
            check(Native.call(cuMemHostAlloc, v, bytes, 0), "cuMemHostAlloc");
            return v.get(ValueLayout.ADDRESS, 0).reinterpret(bytes);
        }
    }

    public void freeHost(MemorySegment host) {
        check(Native.call(cuMemFreeHost, host), "cuMemFreeHost");
    }

    public void copyToDevice(long dst, MemorySegment src, long bytes, MemorySegment stream) {
        check(Native.call(cuMemcpyHtoDAsync, dst, src, bytes, stream), "cuMemcpyHtoDAsync");
    }

    public void copyToHost(MemorySegment dst, long src, long bytes, MemorySegment stream) {
        check(Native.call(cuMemcpyDtoHAsync, dst, src, bytes, stream), "cuMemcpyDtoHAsync");
    }

    public void copyOnDevice(long dst, long src, long bytes, MemorySegment stream) {
        check(Native.call(cuMemcpyDtoDAsync, dst, src, bytes, stream), "cuMemcpyDtoDAsync");
    }

    public void memsetZero(long dst, long bytes, MemorySegment stream) {
        check(Native.call(cuMemsetD8Async, dst, (byte) 0, bytes, stream), "cuMemsetD8Async");
    }

    /**
     * Starts capturing {@code stream}'s work into a graph instead of running it. Relaxed mode: cuBLASLt's host-side calls during
     * the capture are allowed.
     */
    public void beginCapture(MemorySegment stream) {
        check(Native.call(cuStreamBeginCapture, stream, 2 /* CU_STREAM_CAPTURE_MODE_RELAXED */), "cuStreamBeginCapture");
    }

    /** Ends the capture begun by {@link #beginCapture} and returns the graph (to instantiate, then destroy). */
    public MemorySegment endCapture(MemorySegment stream) {
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment v = arena.allocate(PTR);
            check(Native.call(cuStreamEndCapture, stream, v), "cuStreamEndCapture");
            return v.get(ValueLayout.ADDRESS, 0);
        }
    }

    /** An executable graph of {@code graph}; it keeps its own copy, so the graph may be destroyed after. */
    public MemorySegment instantiate(MemorySegment graph) {
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment v = arena.allocate(PTR);
            check(Native.call(cuGraphInstantiate, v, graph, 0L), "cuGraphInstantiateWithFlags");
            return v.get(ValueLayout.ADDRESS, 0);
        }
    }

    public void launchGraph(MemorySegment exec, MemorySegment stream) {
        check(Native.call(cuGraphLaunch, exec, stream), "cuGraphLaunch");
    }

    public void destroyGraphExec(MemorySegment exec) {
        check(Native.call(cuGraphExecDestroy, exec), "cuGraphExecDestroy");
    }

    public void destroyGraph(MemorySegment graph) {
        check(Native.call(cuGraphDestroy, graph), "cuGraphDestroy");
    }

    /** Loads a cubin (or PTX) image; the module lives as long as the context. */
    public MemorySegment loadModule(byte[] image) {
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment img = arena.allocate(image.length + 1L);
            img.copyFrom(MemorySegment.ofArray(image));
            MemorySegment v = arena.allocate(PTR);
            check(Native.call(cuModuleLoadData, v, img), "cuModuleLoadData");
            return v.get(ValueLayout.ADDRESS, 0);
        }
    }

    public MemorySegment function(MemorySegment module, String name) {
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment v = arena.allocate(PTR);
            check(Native.call(cuModuleGetFunction, v, module, arena.allocateFrom(name)), "cuModuleGetFunction(" + name + ")");
            return v.get(ValueLayout.ADDRESS, 0);
        }
    }

    /**
     * The byte size of each of {@code function}'s parameters, in order, or null when the driver cannot say (before CUDA 12.4, or
     * an answer of no parameters).
     */
    public int[] parameterSizes(MemorySegment function) {
        if (cuFuncGetParamInfo == null) {
            return null;
        }
        java.util.List<Integer> sizes = new java.util.ArrayList<>();
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment offset = arena.allocate(SIZE_T), size = arena.allocate(SIZE_T);
            // the driver answers CUDA_ERROR_INVALID_VALUE past the last parameter
            while (Native.call(cuFuncGetParamInfo, function, (long) sizes.size(), offset, size) == 0) {
                sizes.add((int) size.get(ValueLayout.JAVA_LONG, 0));
            }
        }
        // no parameter at all: every kernel here has some, so the driver could not say (not one without parameters)
        return sizes.isEmpty() ? null : sizes.stream().mapToInt(Integer::intValue).toArray();
    }

    /** Launches with {@code params} an array of pointers to the argument values (as cuLaunchKernel wants). */
    public void launch(MemorySegment function, String name, int gridX, int gridY, int blockX, int sharedBytes, MemorySegment stream,
            MemorySegment params) {
        if (gridX == 0 || gridY == 0) {
            // nothing to do (e.g. no token reached an FFN expert); the driver would refuse an empty grid as an invalid value
            return;
        }
        int rc;
        try {
            // invokeExact: launches are on the hot path, and the generic call boxes every argument.
            rc = (int) cuLaunchKernel.invokeExact(function, gridX, gridY, 1, blockX, 1, 1, sharedBytes, stream, params, MemorySegment.NULL);
        } catch (Throwable t) {
            throw new CudaException("cuLaunchKernel(" + name + ") failed: " + t, t);
        }
        check(rc, "cuLaunchKernel(" + name + ")");
    }

    public MemorySegment createStream() {
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment v = arena.allocate(PTR);
            check(Native.call(cuStreamCreate, v, 1 /* CU_STREAM_NON_BLOCKING */), "cuStreamCreate");
            return v.get(ValueLayout.ADDRESS, 0);
        }
    }

    public void synchronize(MemorySegment stream) {
        check(Native.call(cuStreamSynchronize, stream), "cuStreamSynchronize");
    }

    public MemorySegment createEvent() {
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment v = arena.allocate(PTR);
            check(Native.call(cuEventCreate, v, 0), "cuEventCreate");
            return v.get(ValueLayout.ADDRESS, 0);
        }
    }

    public void record(MemorySegment event, MemorySegment stream) {
        check(Native.call(cuEventRecord, event, stream), "cuEventRecord");
    }

    /** Makes {@code stream}'s later work wait (on the GPU) for the work recorded before {@code event} on another stream. */
    public void streamWaitEvent(MemorySegment stream, MemorySegment event) {
        check(Native.call(cuStreamWaitEvent, stream, event, 0), "cuStreamWaitEvent");
    }

    /** Blocks the calling thread until the work recorded before {@code event} has finished. */
    public void waitFor(MemorySegment event) {
        check(Native.call(cuEventSynchronize, event), "cuEventSynchronize");
    }

    /** Milliseconds between two recorded events (waits for the second). */
    public float elapsedMillis(MemorySegment start, MemorySegment end) {
        check(Native.call(cuEventSynchronize, end), "cuEventSynchronize");
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment v = arena.allocate(FLOAT);
            check(Native.call(cuEventElapsedTime, v, start, end), "cuEventElapsedTime");
            return v.get(FLOAT, 0);
        }
    }
}
