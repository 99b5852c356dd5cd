package dev.moe.maven;

import static com.google.common.truth.Truth.assertThat;
import static com.google.common.truth.Truth.assertWithMessage;

import dev.moe.dsl.diag.Diagnostic;
import dev.moe.dsl.diag.DiagnosticRenderer;
import dev.moe.runtime.Backend;
import dev.moe.runtime.TrainableModel;
import dev.moe.runtime.cpu.CpuBackend;
import java.io.IOException;
import java.io.OutputStream;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.attribute.FileTime;
import java.util.ArrayList;
import java.util.List;
import javax.tools.JavaCompiler;
import javax.tools.ToolProvider;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/** The plugin's work without Maven: packages, diagnostics, incremental state, stale outputs. */
class GenerationTest {
    static final String LAYERS = """
            // Shared definitions, imported by the models.
            moe experts {
              routed 4 x swiglu(hidden: 16)
              router { top_k 2 }
            }
            """;

    static String model(String name) {
        return """
                import "layers.moe"

                model %s {
                  vocab 256
                  context 8
                  dim 16
                  heads 2
                  layers 1 {
                    all: attention, experts
                  }
                }
                """.formatted(name);
    }

    @TempDir
    Path dir;

    Path src;
    Path out;
    final List<String> log = new ArrayList<>();

    @BeforeEach
    void layout() throws IOException {
        src = dir.resolve("src/main/moe");
        out = dir.resolve("target/generated-sources/moe");
        Files.createDirectories(src.resolve("com/example"));
        Files.writeString(src.resolve("com/example/layers.moe"), LAYERS);
        Files.writeString(src.resolve("com/example/a.moe"), model("Alpha"));
        Files.writeString(src.resolve("com/example/b.moe"), model("Beta"));
        Files.writeString(src.resolve("c.moe"), """
                // Gamma: a dense model, for <tests> & @docs.
                /* It has no experts;
                 * none at all. */
                // A line comment may hold */.
                model Gamma {
                  vocab 256
                  context 8
                  dim 16
                  heads 2
                  layers 1 { all: attention, swiglu(hidden: 16) }
                }
                """);
    }

    Generation.Result run(boolean incremental) throws IOException {
        return Generation.run(new Generation.Request(src, out, dir.resolve("target/state.tsv"), incremental, "test"), new Generation.Listener() {
            @Override
            public void checking(Path source) {
                log.add("checking " + src.relativize(source));
            }

            @Override
            public void diagnostic(Path file, Diagnostic d) {
                log.add("diagnostic " + file.getFileName() + " " + DiagnosticRenderer.render(d));
            }

            @Override
            public void problem(Path file, String message) {
                log.add("problem " + message);
            }

            @Override
            public OutputStream newOutputStream(Path file) throws IOException {
                return Files.newOutputStream(file);
            }
        });
    }

    @Test
    void packageFollowsTheSubdirectoryAndTheSourcesCompileAndRun() throws Exception {
        Generation.Result r = run(true);
        assertWithMessage("%s", log).that(r.errors()).isEqualTo(0);
        assertThat(r.sources()).isEqualTo(4);
        assertThat(r.written()).containsExactly(out.resolve("com/example/Alpha.java"), out.resolve("com/example/Beta.java"), out.resolve("Gamma.java"));
        assertThat(Files.readString(out.resolve("com/example/Alpha.java"))).contains("package com.example;");
        assertThat(Files.readString(out.resolve("Gamma.java"))).doesNotContain("package ");
        // The recipe's comments on the model, made safe for Javadoc.
        assertThat(Files.readString(out.resolve("Gamma.java"))).contains("""
                 * <p>From c.moe:
                 * <pre>
                 * Gamma: a dense model, for &lt;tests&gt; &amp; &#64;docs.
                 * It has no experts;
                 * none at all.
                 * A line comment may hold *&#47;.
                 * </pre>
                """);

        // What was written is ordinary Java that compiles against the runtime and trains.
        JavaCompiler javac = ToolProvider.getSystemJavaCompiler();
        Path classes = Files.createDirectories(dir.resolve("classes"));
        int rc = javac.run(null, null, null, "-d", classes.toString(), "-cp", System.getProperty("java.class.path"), "-proc:none",
                out.resolve("com/example/Alpha.java").toString());
        assertThat(rc).isEqualTo(0);
        try (var loader = new java.net.URLClassLoader(new java.net.URL[] {classes.toUri().toURL()}, getClass().getClassLoader())) {
            TrainableModel m = (TrainableModel) loader.loadClass("com.example.Alpha").getConstructor(Backend.class)
                    .newInstance(new CpuBackend(1, false));
            m.initialize(1);
            double loss = m.forward(new int[] {1, 2, 3, 4}, new int[] {2, 3, 4, 5}, 1, 4);
            assertThat(loss).isWithin(1.0).of(Math.log(256));
        }
    }

    @Test
    void aRunWithNothingChangedChecksAndWritesNothing() throws IOException {
        run(true);
        Path alpha = out.resolve("com/example/Alpha.java");
        FileTime old = FileTime.fromMillis(1_000_000_000L);
        Files.setLastModifiedTime(alpha, old);
        log.clear();
        Generation.Result r = run(true);
        assertThat(log).isEmpty();
        assertThat(r.checked()).isEqualTo(0);
        assertThat(r.upToDate()).isEqualTo(4);
        assertThat(r.written()).isEmpty();
        assertThat(Files.getLastModifiedTime(alpha)).isEqualTo(old);

        // Without the incremental state every file is checked again, but identical outputs are not rewritten.
        r = run(false);
        assertThat(r.checked()).isEqualTo(4);
        assertThat(r.written()).isEmpty();
        assertThat(Files.getLastModifiedTime(alpha)).isEqualTo(old);
    }

    @Test
    void changingAnImportedFileRechecksTheFilesThatImportItOnly() throws IOException {
        run(true);
        log.clear();
        Files.writeString(src.resolve("com/example/layers.moe"), LAYERS.replace("routed 4", "routed 6"));
        Generation.Result r = run(true);
        assertThat(log).containsExactly("checking com/example/a.moe", "checking com/example/b.moe", "checking com/example/layers.moe");
        assertThat(r.written()).containsExactly(out.resolve("com/example/Alpha.java"), out.resolve("com/example/Beta.java"));
        assertThat(Files.readString(out.resolve("com/example/Alpha.java"))).contains("[6, 16]");
    }

    @Test
    void changingAPlacementFileRechecksTheFileThatReadsIt() throws IOException {
        Files.writeString(src.resolve("com/example/placement.json"), placement(0, 1, 2, 3));
        Files.writeString(src.resolve("com/example/a.moe"), model("Alpha") + """

                train Alpha {
                  steps 10
                  parallel { ranks 1  experts file("placement.json") }
                }
                """);
        Generation.Result r = run(true);
        assertWithMessage("%s", log).that(r.errors()).isEqualTo(0);
        log.clear();
        // a placement that no longer fits the model (expert 9 of 4): the file is checked again, and the error reported
        Files.writeString(src.resolve("com/example/placement.json"), placement(0, 1, 2, 9));
        r = run(true);
        assertThat(log).contains("checking com/example/a.moe");
        assertThat(log).doesNotContain("checking com/example/b.moe");
        assertThat(r.errors()).isEqualTo(1);
        assertThat(String.join("\n", log)).contains("MOE0612");
    }

    private static String placement(int... experts) {
        return "{\"ranks\": 1, \"layers\": [{\"moe_layer\": 0, \"imbalance_contiguous\": 1.0, \"imbalance_balanced\": 1.0, \"experts_of_rank\": [["
                + java.util.Arrays.stream(experts).mapToObj(String::valueOf).collect(java.util.stream.Collectors.joining(", ")) + "]]}]}";
    }

    @Test
    void anErrorInASharedImportIsReportedOnceWithTheCliText() throws IOException {
        Files.writeString(src.resolve("com/example/layers.moe"), LAYERS.replace("top_k 2", "top_k 9"));
        Generation.Result r = run(true);
        List<String> diagnostics = log.stream().filter(l -> l.startsWith("diagnostic")).toList();
        assertWithMessage("%s", log).that(diagnostics).hasSize(1);
        String shown = shown(src.resolve("com/example/layers.moe"));
        assertThat(diagnostics.getFirst()).startsWith("diagnostic layers.moe " + shown + ":4:18: error: `top_k` (9) exceeds the routed experts (4) [MOE0301]\n");
        assertThat(r.errors()).isEqualTo(1);
        assertThat(Files.exists(out.resolve("com/example/Alpha.java"))).isFalse();
        assertThat(Files.exists(out.resolve("Gamma.java"))).isTrue();

        // A file with errors is not recorded as done: the next run checks it (and reports it) again.
        log.clear();
        r = run(true);
        assertThat(r.errors()).isEqualTo(1);
        assertThat(log).contains("checking com/example/a.moe");
        assertThat(log).doesNotContain("checking c.moe");
    }

    @Test
    void aSyntaxErrorIsADiagnostic() throws IOException {
        Files.writeString(src.resolve("c.moe"), "model Gamma {\n  vocab 256 256\n}\n");
        Generation.Result r = run(true);
        assertThat(r.errors()).isAtLeast(1);
        assertThat(log.stream().filter(l -> l.startsWith("diagnostic c.moe ")).findFirst().orElseThrow()).containsMatch("c.moe:2:\\d+: error: .*\\[MOE00\\d\\d]");
    }

    @Test
    void outputsOfRemovedSourcesAndModelsAreDeleted() throws IOException {
        run(true);
        Files.delete(src.resolve("com/example/b.moe"));
        Files.writeString(src.resolve("c.moe"), Files.readString(src.resolve("c.moe")).replace("Gamma", "Delta"));
        Generation.Result r = run(true);
        assertThat(r.deleted()).containsExactly(out.resolve("com/example/Beta.java"), out.resolve("Gamma.java"));
        assertThat(Files.exists(out.resolve("Delta.java"))).isTrue();
        assertThat(Files.exists(out.resolve("com/example/Alpha.java"))).isTrue();
    }

    @Test
    void twoModelsOfOneNameInOnePackageAreAnError() throws IOException {
        Files.writeString(src.resolve("com/example/b.moe"), model("Alpha"));
        Generation.Result r = run(true);
        assertThat(r.errors()).isEqualTo(1);
        assertThat(log).contains("problem " + shown(src.resolve("com/example/b.moe"))
                + ": error: model `Alpha` is also generated from com/example/a.moe (com/example/Alpha.java): rename one of them");
    }

    @Test
    void aDirectoryThatIsNotAPackageNameIsAnError() throws IOException {
        Files.createDirectories(src.resolve("my-models"));
        Files.writeString(src.resolve("my-models/d.moe"), model("Delta").replace("import \"layers.moe\"", ""));
        Generation.Result r = run(true);
        assertThat(r.errors()).isEqualTo(1);
        assertThat(String.join("\n", log)).contains("is not a Java package name (my-models)");
    }

    /** Paths are shown relative to the working directory when they are under it, as the CLI shows them. */
    static String shown(Path file) {
        Path cwd = Path.of("").toAbsolutePath();
        return (file.startsWith(cwd) ? cwd.relativize(file) : file).toString();
    }

    @Test
    void packageNames() {
        assertThat(Generation.packageOf(Path.of("x.moe"))).isEmpty();
        assertThat(Generation.packageOf(Path.of("com/example/x.moe"))).isEqualTo("com.example");
        assertThat(Generation.packageOf(Path.of("com/class/x.moe"))).isNull();
        assertThat(Generation.packageOf(Path.of("9lives/x.moe"))).isNull();
    }

}
