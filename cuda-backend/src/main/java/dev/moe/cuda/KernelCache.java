package dev.moe.cuda;

import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardCopyOption;
import java.security.MessageDigest;
import java.security.NoSuchAlgorithmException;
import java.util.HexFormat;
import java.util.List;
import java.util.Optional;

/**
 * Compiled kernels on disk, keyed by the hash of their source, the GPU architecture, the NVRTC
 * version and the options, so that a second run skips NVRTC. Lives in {@code $MOE_CUBIN_CACHE},
 * else {@code $XDG_CACHE_HOME/moe/cubin}, else {@code ~/.cache/moe/cubin}. A cache that cannot be
 * read or written is ignored: the kernels are compiled again.
 */
public final class KernelCache {
    private final Path dir;

    public KernelCache(Path dir) {
        this.dir = dir;
    }

    public static KernelCache fromEnvironment() {
        String explicit = System.getenv("MOE_CUBIN_CACHE");
        if (explicit != null && !explicit.isBlank()) {
            return new KernelCache(Path.of(explicit));
        }
        String xdg = System.getenv("XDG_CACHE_HOME");
        Path base = xdg != null && !xdg.isBlank() ? Path.of(xdg) : Path.of(System.getProperty("user.home"), ".cache");
        return new KernelCache(base.resolve("moe").resolve("cubin"));
    }

    public Path directory() {
        return dir;
    }

    public static String key(String source, String arch, String nvrtcVersion, List<String> options) {
        try {
            MessageDigest sha = MessageDigest.getInstance("SHA-256");
            for (String part : List.of(arch, nvrtcVersion, String.join(" ", options), source)) {
                sha.update(part.getBytes(StandardCharsets.UTF_8));
                sha.update((byte) 0);
            }
            return HexFormat.of().formatHex(sha.digest());
        } catch (NoSuchAlgorithmException e) {
            throw new IllegalStateException(e);
        }
    }

    public Optional<byte[]> read(String key) {
        try {
            Path file = dir.resolve(key + ".cubin");
            return Files.isRegularFile(file) ? Optional.of(Files.readAllBytes(file)) : Optional.empty();
        } catch (IOException e) {
            return Optional.empty();
        }
    }

    /** Temporary file renamed into place: a concurrent reader sees the whole cubin or none. */
    public void write(String key, byte[] cubin) {
        Path tmp = null;
        try {
            Files.createDirectories(dir);
            tmp = Files.createTempFile(dir, ".tmp-", ".cubin");
            Files.write(tmp, cubin);
            Files.move(tmp, dir.resolve(key + ".cubin"), StandardCopyOption.ATOMIC_MOVE, StandardCopyOption.REPLACE_EXISTING);
        } catch (IOException | RuntimeException e) {
            if (tmp != null) {
                try {
                    Files.deleteIfExists(tmp);
                } catch (IOException ignored) {
                    // best effort
                }
            }
        }
    }
}
