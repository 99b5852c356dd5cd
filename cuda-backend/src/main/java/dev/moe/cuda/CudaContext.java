package dev.moe.cuda;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.util.HashMap;
import java.util.List;
import java.util.Map;

/**
 * One GPU as the backend uses it: the primary context, one stream (all work is ordered on it),
 * a caching allocator, a cuBLASLt handle with its workspace, and the kernels compiled so far.
 * Not thread-safe: one model, one thread.
 */
public final class CudaContext implements AutoCloseable {
    private static final long GEMM_WORKSPACE = 32L << 20;

    public final Driver driver;
    public final int device;
    public final String deviceName;
    /** "sm_90" on an H200. */
    public final String arch;
    public final int multiprocessors;
    public final MemorySegment stream;
    public final DeviceAllocator allocator;
    public final CublasLt blas;
    /**
     * The precision device-resident models give their MoE layers' experts and routers: fp32 (default,
     * for parity) or bf16 (bf16 copies of the fp32 master weights, bf16 activations inside the layer,
     * fp32 accumulation and fp32 weight gradients).
     */
    public volatile dev.moe.cuda.kernels.MoeKernelSource.Precision expertPrecision = dev.moe.cuda.kernels.MoeKernelSource.Precision.FP32;
    /**
     * How device-resident models compute attention: null (default, for parity) for the exact fp32
     * tiled kernels on the CUDA cores, or batched GEMMs on the tensor cores ({@link GemmAttention})
     * reading fp32 (TF32 products when {@link CublasLt#setTf32} is on) or bf16.
     */
    public volatile GemmAttention.Storage attentionGemm;
    private final MemorySegment context;
    private final DeviceAllocator.Block workspace;
    private final KernelCache cache = KernelCache.fromEnvironment();
    private final Map<String, MemorySegment> modules = new HashMap<>();
    /** Kernels by source, then name: keyed by the source itself (not its hash), so two sources never share an entry. */
    private final Map<String, Map<String, MemorySegment>> functions = new HashMap<>();
    /** Each launched kernel's parameter sizes (by function address), for {@link #fitArguments}. */
    private final Map<Long, int[]> parameterSizes = new HashMap<>();
    /** The graph launches are recorded into, or null when they run at once. */
    private LaunchGraph recording;
    private boolean reportedCompile;

    public CudaContext(int ordinal) {
        driver = Driver.get();
        int count = driver.deviceCount();
        if (ordinal >= count) {
            throw new CudaException("GPU " + ordinal + " asked for, but this machine has " + count + " CUDA device(s)");
        }
        device = driver.device(ordinal);
        deviceName = driver.deviceName(device);
        arch = "sm_" + driver.attribute(device, Driver.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)
                + driver.attribute(device, Driver.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR);
        multiprocessors = driver.attribute(device, Driver.CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT);
        context = driver.primaryContext(device);
        stream = driver.createStream();
        allocator = new DeviceAllocator(new DeviceAllocator.RawMemory() {
            @Override
            public long tryMalloc(long bytes) {
                return driver.tryMalloc(bytes);
            }

            @Override
            public void free(long pointer) {
                driver.free(pointer);
            }

            @Override
            public long[] memoryInfo() {
                return driver.memoryInfo();
            }
        });
        workspace = allocator.allocate(GEMM_WORKSPACE);
        blas = new CublasLt(workspace.pointer, GEMM_WORKSPACE);
    }

    /** Makes this context current on the calling thread (needed once per thread that launches). */
    public void makeCurrent() {
        driver.setCurrent(context);
    }

    /**
     * The kernel {@code name} of {@code source}: compiled by NVRTC at first use for this GPU and
     * cached on disk; the first compile in a process prints its time once.
     */
    public MemorySegment kernel(String source, String name) {
        // callers pass the same String each time, so the lookup is an identity check after the first
        Map<String, MemorySegment> ofSource = functions.computeIfAbsent(source, s -> new HashMap<>());
        MemorySegment f = ofSource.get(name);
        if (f != null) {
            return f;
        }
        MemorySegment module = modules.get(source);
        if (module == null) {
            Nvrtc nvrtc = Nvrtc.get();
            List<String> options = List.of();
            String key = KernelCache.key(source, arch, nvrtc.version(), options);
            byte[] cubin = cache.read(key).orElse(null);
            if (cubin == null) {
                long t0 = System.nanoTime();
                cubin = nvrtc.compile(source, "moe_kernels.cu", arch, options);
                if (!reportedCompile) {
                    reportedCompile = true;
                    System.err.printf("moe: compiled GPU kernels for %s with NVRTC %s in %.1f s (cached in %s)%n", arch, nvrtc.version(),
                            (System.nanoTime() - t0) / 1e9, cache.directory());
                }
                cache.write(key, cubin);
            }
            module = driver.loadModule(cubin);
            modules.put(source, module);
        }
        f = driver.function(module, name);
        ofSource.put(name, f);
        return f;
    }

    /** Launches a kernel; {@code args} are device pointers (long), ints and floats in the kernel's parameter order. */
    public void launch(MemorySegment function, String name, int gridX, int gridY, int block, int sharedBytes, Object... args) {
        LaunchGraph g = recording;
        if (g != null) {
            g.step(() -> launchNow(function, name, gridX, gridY, block, sharedBytes, args), name, gridX, gridY, block, sharedBytes,
                    java.util.Arrays.asList(args));
            return;
        }
        launchNow(function, name, gridX, gridY, block, sharedBytes, args);
    }

    /**
     * Records this context's launches and products into {@code graph} (see {@link LaunchGraph}) until {@link #runGraph};
     * other work queued meanwhile (copies, memsets) must be added with {@link LaunchGraph#step}.
     */
    public void beginGraph(LaunchGraph graph) {
        graph.begin();
        recording = graph;
        blas.recording = graph;
    }

    /** Stops recording into {@code graph} and drops what it recorded (the work that recorded it failed). */
    public void abandonGraph(LaunchGraph graph) {
        recording = null;
        blas.recording = null;
        graph.abandon();
    }

    /** Stops recording into {@code graph} and issues what it recorded. */
    public void runGraph(LaunchGraph graph) {
        recording = null;
        blas.recording = null;
        graph.run();
    }

    private void launchNow(MemorySegment function, String name, int gridX, int gridY, int block, int sharedBytes, Object... args) {
        int[] sizes = parameterSizes.computeIfAbsent(function.address(), a -> driver.parameterSizes(function));
        Object[] fitted = fitArguments(name, sizes, args);
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment params = arena.allocate(ValueLayout.ADDRESS, fitted.length);
            for (int i = 0; i < fitted.length; i++) {
                MemorySegment slot = switch (fitted[i]) {
                    case Long l -> arena.allocateFrom(ValueLayout.JAVA_LONG, l);
                    case Integer n -> arena.allocateFrom(ValueLayout.JAVA_INT, n);
                    case Float x -> arena.allocateFrom(ValueLayout.JAVA_FLOAT, x);
                    default -> throw new IllegalArgumentException("kernel argument of type " + fitted[i].getClass());
                };
                params.setAtIndex(ValueLayout.ADDRESS, i, slot);
            }
            driver.launch(function, name, gridX, gridY, block, sharedBytes, stream, params);
        }
    }

    /**
     * {@code args} fitted to kernel {@code name}'s parameters of {@code sizes} bytes (null: unknown, no check): an int where the
     * kernel takes 8 bytes is widened, as C converts an int argument for a long parameter, and a long that fits an int where it
     * takes 4 is narrowed; a different count, or a long beyond an int (a pointer, say) where it takes 4, throws. Without this a launch one argument short makes the driver read past the argument list: an illegal
     * address on the GPU or a crash inside libcuda instead of an error naming the kernel.
     */
    static Object[] fitArguments(String name, int[] sizes, Object[] args) {
        if (sizes == null) {
            return args;
        }
        if (sizes.length != args.length) {
            throw new CudaException("kernel " + name + " takes " + sizes.length + " arguments, launched with " + args.length);
        }
        Object[] out = args;
        for (int i = 0; i < args.length; i++) {
            int bytes = switch (args[i]) {
                case Long l -> 8;
                case Integer n -> 4;
                case Float x -> 4;
                default -> throw new IllegalArgumentException("kernel argument of type " + args[i].getClass());
            };
            if (bytes == 4 && sizes[i] == 8 && args[i] instanceof Integer n) {
                out = out == args ? args.clone() : out;
                out[i] = (long) n;
            } else if (bytes == 8 && sizes[i] == 4 && args[i] instanceof Long l && l == (int) (long) l) {
                // what the kernel read before this check: the low four bytes of the long
                out = out == args ? args.clone() : out;
                out[i] = (int) (long) l;
            } else if (bytes != sizes[i]) {
                throw new CudaException("kernel " + name + "'s argument " + (i + 1) + " is " + sizes[i] + " bytes wide, launched with a "
                        + args[i].getClass().getSimpleName() + " of " + bytes);
            }
        }
        return out;
    }

    /** Copies floats to the device (through a temporary host buffer). */
    public void upload(float[] src, long dst) {
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment host = arena.allocate((long) src.length * 4, 64);
            MemorySegment.copy(src, 0, host, ValueLayout.JAVA_FLOAT, 0, src.length);
            driver.copyToDevice(dst, host, (long) src.length * 4, stream);
            driver.synchronize(stream);
        }
    }

    public void upload(int[] src, long dst) {
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment host = arena.allocate((long) src.length * 4, 64);
            MemorySegment.copy(src, 0, host, ValueLayout.JAVA_INT, 0, src.length);
            driver.copyToDevice(dst, host, (long) src.length * 4, stream);
            driver.synchronize(stream);
        }
    }

    public void upload(short[] src, long dst) {
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment host = arena.allocate((long) src.length * 2, 64);
            MemorySegment.copy(src, 0, host, ValueLayout.JAVA_SHORT, 0, src.length);
            driver.copyToDevice(dst, host, (long) src.length * 2, stream);
            driver.synchronize(stream);
        }
    }

    public float[] downloadFloats(long src, int n) {
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment host = arena.allocate((long) n * 4, 64);
            driver.copyToHost(host, src, (long) n * 4, stream);
            driver.synchronize(stream);
            return host.toArray(ValueLayout.JAVA_FLOAT);
        }
    }

    public int[] downloadInts(long src, int n) {
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment host = arena.allocate((long) n * 4, 64);
            driver.copyToHost(host, src, (long) n * 4, stream);
            driver.synchronize(stream);
            return host.toArray(ValueLayout.JAVA_INT);
        }
    }

    public short[] downloadShorts(long src, int n) {
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment host = arena.allocate((long) n * 2, 64);
            driver.copyToHost(host, src, (long) n * 2, stream);
            driver.synchronize(stream);
            return host.toArray(ValueLayout.JAVA_SHORT);
        }
    }

    public void synchronize() {
        driver.synchronize(stream);
    }

    @Override
    public void close() {
        synchronize();
        workspace.close();
        allocator.close();
    }
}
