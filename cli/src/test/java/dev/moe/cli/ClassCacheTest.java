package dev.moe.cli;

import static com.google.common.truth.Truth.assertThat;

import dev.moe.codegen.JavaGenerator;
import dev.moe.compiler.MoeCompiler;
import dev.moe.dsl.SourceFile;
import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Map;
import java.util.stream.Stream;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/** The on-disk cache of compiled generated classes. */
class ClassCacheTest {
    @TempDir
    Path cache;

    @BeforeEach
    void useTempCache() {
        System.setProperty("moe.cache", cache.toString());
    }

    @AfterEach
    void restore() {
        System.clearProperty("moe.cache");
    }

    @Test
    void secondCompileComesFromTheCacheWithTheSameBytes() throws IOException {
        var model = MoeCompiler.compile(new SourceFile("t.moe", TrainCommandTest.RECIPE)).orThrow().models().getFirst();
        var file = JavaGenerator.generate(model, JavaGenerator.DEFAULT_PACKAGE, "t.moe");
        Map<String, byte[]> first = ClassCache.compile(file);
        Path entry;
        try (Stream<Path> entries = Files.list(cache)) {
            entry = entries.filter(Files::isDirectory).filter(p -> !p.getFileName().toString().startsWith(".")).findFirst().orElseThrow();
        }
        // Mark the cached bytes: a second compile must return them, not recompile.
        Path classFile;
        try (Stream<Path> classes = Files.list(entry)) {
            classFile = classes.findFirst().orElseThrow();
        }
        String name = classFile.getFileName().toString().replace(".class", "");
        assertThat(first.get(name)).isEqualTo(Files.readAllBytes(classFile));
        byte[] marked = java.util.Arrays.copyOf(first.get(name), first.get(name).length + 1); // javac would never write this
        Files.write(classFile, marked);
        Map<String, byte[]> second = ClassCache.compile(file);
        assertThat(second.keySet()).isEqualTo(first.keySet());
        assertThat(second.get(name)).isEqualTo(marked);
    }

    @Test
    void anUnwritableCacheIsIgnored() throws IOException {
        Path blocked = cache.resolve("file-not-dir");
        Files.writeString(blocked, "x");
        System.setProperty("moe.cache", blocked.toString());
        var model = MoeCompiler.compile(new SourceFile("t.moe", TrainCommandTest.RECIPE)).orThrow().models().getFirst();
        var file = JavaGenerator.generate(model, JavaGenerator.DEFAULT_PACKAGE, "t.moe");
        assertThat(ClassCache.compile(file)).isNotEmpty();
    }
}
