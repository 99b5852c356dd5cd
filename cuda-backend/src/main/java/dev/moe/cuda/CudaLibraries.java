package dev.moe.cuda;

import java.lang.foreign.Arena;
import java.lang.foreign.SymbolLookup;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.Optional;
import java.util.function.Function;

/**
 * Finds the three native libraries the GPU backend calls: the driver ({@code libcuda}), NVRTC and
 * cuBLASLt. For each, an environment variable naming a file wins; otherwise the usual sonames are
 * tried, newest CUDA first, with and without the version suffix, through the dynamic loader and
 * then in the usual install directories. A miss says what was tried and how to fix it.
 */
public final class CudaLibraries {

    /** One library: what it is for, the variable that overrides it, the sonames to try in order. */
    public record Spec(String what, String envVar, List<String> sonames) {}

    public static final Spec DRIVER = new Spec("the CUDA driver", "MOE_LIBCUDA", List.of("libcuda.so.1", "libcuda.so"));
    public static final Spec NVRTC = new Spec("NVRTC (the CUDA runtime compiler)", "MOE_LIBNVRTC",
            List.of("libnvrtc.so.13", "libnvrtc.so.12", "libnvrtc.so"));
    public static final Spec CUBLASLT = new Spec("cuBLASLt", "MOE_LIBCUBLASLT",
            List.of("libcublasLt.so.13", "libcublasLt.so.12", "libcublasLt.so"));

    /** Directories searched after the dynamic loader; {@code MOE_CUDA_LIB_DIR} comes first. */
    static final List<String> DIRECTORIES = List.of("/usr/local/cuda/lib64", "/usr/local/cuda/targets/x86_64-linux/lib",
            "/usr/lib/x86_64-linux-gnu", "/usr/lib64", "/usr/lib/wsl/lib");

    private CudaLibraries() {}

    /** Loads the library into the global arena (these stay loaded for the life of the process). */
    public static SymbolLookup load(Spec spec) {
        return find(spec, System.getenv(), CudaLibraries::tryLoad);
    }

    /**
     * The lookup of the first candidate that loads, or a {@link CudaException} listing every
     * candidate. {@code loader} returns empty for a candidate that does not load.
     */
    static <T> T find(Spec spec, Map<String, String> env, Function<String, Optional<T>> loader) {
        List<String> tried = new ArrayList<>();
        String override = env.get(spec.envVar());
        if (override != null && !override.isBlank()) {
            Optional<T> lib = loader.apply(override);
            if (lib.isPresent()) {
                return lib.get();
            }
            throw new CudaException(spec.what() + ": " + spec.envVar() + "=" + override + " could not be loaded"
                    + (Files.exists(Path.of(override)) ? " (the file exists but is not a loadable library for this machine)" : " (no such file)")
                    + "; unset it or point it at the library file");
        }
        for (String candidate : candidates(spec, env)) {
            tried.add(candidate);
            Optional<T> lib = loader.apply(candidate);
            if (lib.isPresent()) {
                return lib.get();
            }
        }
        String hint = spec == DRIVER
                ? "no NVIDIA driver is installed on this machine, or it is not on the loader path. Train on the CPU with --backend cpu"
                : "install the CUDA toolkit's " + spec.sonames().getFirst() + " (or pip's nvidia-* wheels) and set " + spec.envVar()
                        + " to its path, or use --backend cpu";
        throw new CudaException(spec.what() + " not found (tried " + String.join(", ", tried) + "): " + hint);
    }

    /** Sonames through the loader first, then each soname in each directory. */
    static List<String> candidates(Spec spec, Map<String, String> env) {
        List<String> out = new ArrayList<>(spec.sonames());
        List<String> dirs = new ArrayList<>();
        String extra = env.get("MOE_CUDA_LIB_DIR");
        if (extra != null && !extra.isBlank()) {
            dirs.add(extra);
        }
        dirs.addAll(DIRECTORIES);
        for (String dir : dirs) {
            for (String soname : spec.sonames()) {
                out.add(dir + "/" + soname);
            }
        }
        return out;
    }

    private static Optional<SymbolLookup> tryLoad(String nameOrPath) {
        try {
            if (nameOrPath.contains("/")) {
                if (!Files.isRegularFile(Path.of(nameOrPath))) {
                    return Optional.empty();
                }
                return Optional.of(SymbolLookup.libraryLookup(Path.of(nameOrPath), Arena.global()));
            }
            return Optional.of(SymbolLookup.libraryLookup(nameOrPath, Arena.global()));
        } catch (IllegalArgumentException notLoadable) {
            return Optional.empty();
        }
    }
}
