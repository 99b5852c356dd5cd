package dev.moe.cli;

import com.palantir.javapoet.JavaFile;
import dev.moe.codegen.InMemoryCompiler;
import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardCopyOption;
import java.security.MessageDigest;
import java.security.NoSuchAlgorithmException;
import java.util.HashMap;
import java.util.HexFormat;
import java.util.List;
import java.util.Map;
import java.util.stream.Stream;

/**
 * Compiled generated classes, cached on disk by the hash of their source and the JDK version, so
 * that running the same recipe again skips javac. The cache lives in {@code $MOE_CACHE}, else
 * {@code $XDG_CACHE_HOME/moe/classes}, else {@code ~/.cache/moe/classes}; a cache that cannot be read
 * or written is ignored (the classes are compiled in memory as if there were none).
 */
final class ClassCache {
    private ClassCache() {}

    static Map<String, byte[]> compile(JavaFile file) {
        String source = file.toString();
        String key = sha256(source + "\n" + Runtime.version());
        Path dir = root().resolve(key);
        Map<String, byte[]> cached = read(dir);
        if (cached != null) {
            return cached;
        }
        Map<String, byte[]> classes = InMemoryCompiler.compileToBytes(List.of(file));
        write(dir, classes);
        return classes;
    }

    static Path root() {
        String explicit = System.getProperty("moe.cache", System.getenv("MOE_CACHE"));
        if (explicit != null && !explicit.isBlank()) {
            return Path.of(explicit);
        }
        String xdg = System.getenv("XDG_CACHE_HOME");
        Path base = xdg != null && !xdg.isBlank() ? Path.of(xdg) : Path.of(System.getProperty("user.home"), ".cache");
        return base.resolve("moe").resolve("classes");
    }

    private static Map<String, byte[]> read(Path dir) {
        if (!Files.isDirectory(dir)) {
            return null;
        }
        Map<String, byte[]> classes = new HashMap<>();
        try (Stream<Path> files = Files.list(dir)) {
            for (Path f : files.toList()) {
                String name = f.getFileName().toString();
                if (name.endsWith(".class")) {
                    classes.put(name.substring(0, name.length() - ".class".length()), Files.readAllBytes(f));
                }
            }
        } catch (IOException e) {
            return null;
        }
        return classes.isEmpty() ? null : classes;
    }

    /** Writes to a temporary directory renamed into place, so a reader never sees half a cache entry. */
    private static void write(Path dir, Map<String, byte[]> classes) {
        Path tmp = null;
        try {
            Files.createDirectories(dir.getParent());
            tmp = Files.createTempDirectory(dir.getParent(), ".tmp-");
            for (var e : classes.entrySet()) {
                Files.write(tmp.resolve(e.getKey() + ".class"), e.getValue());
            }
            Files.move(tmp, dir, StandardCopyOption.ATOMIC_MOVE);
        } catch (IOException | RuntimeException e) {
            // Another process won the race, or the cache is not writable: compiling again next time is fine.
            if (tmp != null) {
                try (Stream<Path> files = Files.walk(tmp)) {
                    files.sorted(java.util.Comparator.reverseOrder()).forEach(p -> p.toFile().delete());
                } catch (IOException ignored) {
                    // best effort
                }
            }
        }
    }

    private static String sha256(String s) {
        try {
            return HexFormat.of().formatHex(MessageDigest.getInstance("SHA-256").digest(s.getBytes(StandardCharsets.UTF_8)));
        } catch (NoSuchAlgorithmException e) {
            throw new IllegalStateException(e);
        }
    }
}
