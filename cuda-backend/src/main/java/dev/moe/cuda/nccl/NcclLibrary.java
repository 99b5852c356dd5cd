package dev.moe.cuda.nccl;

import dev.moe.cuda.CudaException;
import java.io.IOException;
import java.lang.foreign.Arena;
import java.lang.foreign.SymbolLookup;
import java.nio.file.DirectoryStream;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.Optional;
import java.util.function.Function;

/**
 * Finds {@code libnccl.so.2} the way {@link dev.moe.cuda.CudaLibraries} finds the CUDA libraries:
 * {@code MOE_LIBNCCL} naming a file wins; otherwise the soname through the dynamic loader, then
 * {@code MOE_CUDA_LIB_DIR}, the usual install directories, and the {@code nvidia/nccl/lib} directory
 * of pip's {@code nvidia-nccl-cu12}/{@code -cu13} wheels (which PyTorch installs) in the active
 * virtual environment, conda environment, user site and system site directories.
 */
public final class NcclLibrary {
    static final String ENV = "MOE_LIBNCCL";
    static final List<String> SONAMES = List.of("libnccl.so.2", "libnccl.so");
    static final List<String> DIRECTORIES = List.of("/usr/local/cuda/lib64", "/usr/local/cuda/targets/x86_64-linux/lib",
            "/usr/lib/x86_64-linux-gnu", "/usr/lib64", "/usr/local/lib");
    /** Where Python environments keep their lib/pythonX.Y directories. */
    static final List<String> PYTHON_ROOTS = List.of("/usr/local/lib", "/usr/lib", "/opt/conda/lib");

    private NcclLibrary() {}

    public static SymbolLookup load() {
        return find(System.getenv(), NcclLibrary::tryLoad);
    }

    static <T> T find(Map<String, String> env, Function<String, Optional<T>> loader) {
        String override = env.get(ENV);
        if (override != null && !override.isBlank()) {
            Optional<T> lib = loader.apply(override);
            if (lib.isPresent()) {
                return lib.get();
            }
            throw new CudaException("NCCL: " + ENV + "=" + override + " could not be loaded"
                    + (Files.exists(Path.of(override)) ? " (the file exists but is not a loadable library for this machine)" : " (no such file)")
                    + "; unset it or point it at libnccl.so.2");
        }
        List<String> tried = new ArrayList<>();
        for (String candidate : candidates(env)) {
            tried.add(candidate);
            Optional<T> lib = loader.apply(candidate);
            if (lib.isPresent()) {
                return lib.get();
            }
        }
        throw new CudaException("NCCL not found (tried " + String.join(", ", tried) + "): training on several GPUs needs libnccl.so.2."
                + " Install it (pip install nvidia-nccl-cu12, which PyTorch also brings, or the libnccl2 package) and set " + ENV
                + " to the file, or train on one GPU");
    }

    /** The loader's sonames, then each directory's, then pip wheels' in each Python environment. */
    static List<String> candidates(Map<String, String> env) {
        List<String> out = new ArrayList<>(SONAMES);
        List<String> dirs = new ArrayList<>();
        String extra = env.get("MOE_CUDA_LIB_DIR");
        if (extra != null && !extra.isBlank()) {
            dirs.add(extra);
        }
        dirs.addAll(DIRECTORIES);
        List<String> roots = new ArrayList<>();
        for (String var : List.of("VIRTUAL_ENV", "CONDA_PREFIX")) {
            String v = env.get(var);
            if (v != null && !v.isBlank()) {
                roots.add(v + "/lib");
                if (var.equals("CONDA_PREFIX")) {
                    dirs.add(v + "/lib"); // conda's nccl package installs there
                }
            }
        }
        String home = env.get("HOME");
        if (home != null && !home.isBlank()) {
            roots.add(home + "/.local/lib");
        }
        roots.addAll(PYTHON_ROOTS);
        for (String root : roots) {
            for (Path python : pythonDirs(Path.of(root))) {
                for (String site : List.of("site-packages", "dist-packages")) {
                    Path lib = python.resolve(site).resolve("nvidia/nccl/lib");
                    if (Files.isDirectory(lib)) {
                        dirs.add(lib.toString());
                    }
                }
            }
        }
        for (String dir : dirs) {
            for (String soname : SONAMES) {
                out.add(dir + "/" + soname);
            }
        }
        return out;
    }

    /** The python3* directories under {@code root}, sorted by name, newest last. */
    private static List<Path> pythonDirs(Path root) {
        List<Path> out = new ArrayList<>();
        if (!Files.isDirectory(root)) {
            return out;
        }
        try (DirectoryStream<Path> ds = Files.newDirectoryStream(root, "python3*")) {
            ds.forEach(out::add);
        } catch (IOException | SecurityException unreadable) {
            return out;
        }
        out.sort(null);
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
