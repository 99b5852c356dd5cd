package dev.moe.cuda;

import static dev.moe.cuda.Native.INT;
import static dev.moe.cuda.Native.PTR;
import static dev.moe.cuda.Native.SIZE_T;

import java.lang.foreign.Arena;
import java.lang.foreign.FunctionDescriptor;
import java.lang.foreign.MemoryLayout;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.SymbolLookup;
import java.lang.foreign.ValueLayout;
import java.lang.invoke.MethodHandle;
import java.util.List;

/** NVRTC: compiles CUDA C source to a cubin for one GPU architecture at run time. */
public final class Nvrtc {
    private static final String LIB = "libnvrtc";
    private final MethodHandle create, compile, logSize, log, cubinSize, cubin, destroy, version, errorString;
    private static Nvrtc instance;

    public static synchronized Nvrtc get() {
        if (instance == null) {
            instance = new Nvrtc(CudaLibraries.load(CudaLibraries.NVRTC));
        }
        return instance;
    }

    private Nvrtc(SymbolLookup lib) {
        create = fn(lib, "nvrtcCreateProgram", INT, PTR, PTR, PTR, INT, PTR, PTR);
        compile = fn(lib, "nvrtcCompileProgram", INT, PTR, INT, PTR);
        logSize = fn(lib, "nvrtcGetProgramLogSize", INT, PTR, PTR);
        log = fn(lib, "nvrtcGetProgramLog", INT, PTR, PTR);
        cubinSize = fn(lib, "nvrtcGetCUBINSize", INT, PTR, PTR);
        cubin = fn(lib, "nvrtcGetCUBIN", INT, PTR, PTR);
        destroy = fn(lib, "nvrtcDestroyProgram", INT, PTR);
        version = fn(lib, "nvrtcVersion", INT, PTR, PTR);
        errorString = fn(lib, "nvrtcGetErrorString", PTR, INT);
    }

    private static MethodHandle fn(SymbolLookup lib, String name, MemoryLayout ret, MemoryLayout... args) {
        return Native.function(lib, LIB, name, FunctionDescriptor.of(ret, args));
    }

    private void check(int result, String function) {
        if (result != 0) {
            String text;
            try {
                text = Native.cString((MemorySegment) errorString.invokeExact(result));
            } catch (Throwable t) {
                text = "NVRTC error " + result;
            }
            throw new CudaException(function + " failed: " + text);
        }
    }

    /** "13.0" and so on: part of the kernel cache key, since a new compiler may emit different code. */
    public String version() {
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment major = arena.allocate(INT);
            MemorySegment minor = arena.allocate(INT);
            check(Native.call(version, major, minor), "nvrtcVersion");
            return major.get(INT, 0) + "." + minor.get(INT, 0);
        }
    }

    /**
     * Compiles {@code source} for {@code arch} (e.g. "sm_90") and returns the cubin. A compile
     * error throws with NVRTC's log, which names the line in the generated source.
     */
    public byte[] compile(String source, String name, String arch, List<String> extraOptions) {
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment prog = arena.allocate(PTR);
            check(Native.call(create, prog, arena.allocateFrom(source), arena.allocateFrom(name), 0, MemorySegment.NULL,
                    MemorySegment.NULL), "nvrtcCreateProgram");
            MemorySegment program = prog.get(ValueLayout.ADDRESS, 0);
            try {
                List<String> options = new java.util.ArrayList<>(List.of("--gpu-architecture=" + arch, "-default-device", "--std=c++17"));
                options.addAll(extraOptions);
                MemorySegment opts = arena.allocate(PTR, options.size());
                for (int i = 0; i < options.size(); i++) {
                    opts.setAtIndex(ValueLayout.ADDRESS, i, arena.allocateFrom(options.get(i)));
                }
                int rc = Native.call(compile, program, options.size(), opts);
                if (rc != 0) {
                    throw new CudaException("NVRTC could not compile " + name + " for " + arch + ":\n" + log(arena, program));
                }
                MemorySegment size = arena.allocate(SIZE_T);
                check(Native.call(cubinSize, program, size), "nvrtcGetCUBINSize");
                MemorySegment out = arena.allocate(size.get(SIZE_T, 0));
                check(Native.call(cubin, program, out), "nvrtcGetCUBIN");
                return out.toArray(ValueLayout.JAVA_BYTE);
            } finally {
                Native.call(destroy, prog);
            }
        }
    }

    private String log(Arena arena, MemorySegment program) {
        MemorySegment size = arena.allocate(SIZE_T);
        check(Native.call(logSize, program, size), "nvrtcGetProgramLogSize");
        MemorySegment text = arena.allocate(Math.max(1, size.get(SIZE_T, 0)));
        check(Native.call(log, program, text), "nvrtcGetProgramLog");
        return text.getString(0);
    }
}
