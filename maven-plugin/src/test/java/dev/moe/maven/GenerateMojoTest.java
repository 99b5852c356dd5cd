package dev.moe.maven;

import static com.google.common.truth.Truth.assertThat;
import static org.junit.jupiter.api.Assertions.assertThrows;

import dev.moe.compiler.MoeCompiler;
import dev.moe.dsl.diag.DiagnosticRenderer;
import java.io.File;
import java.io.FileOutputStream;
import java.io.IOException;
import java.lang.reflect.Proxy;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import org.apache.maven.plugin.MojoExecution;
import org.apache.maven.plugin.MojoExecutionException;
import org.apache.maven.plugin.MojoFailureException;
import org.apache.maven.plugin.descriptor.MojoDescriptor;
import org.apache.maven.plugin.logging.Log;
import org.apache.maven.project.MavenProject;
import org.codehaus.plexus.build.BuildContext;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/** The mojos with a recording log and IDE build context: messages, markers, source roots, failure kinds. */
class GenerateMojoTest {
    static final String BAD = """
            moe experts {
              routed 4 x swiglu(hidden: 16)
              router {
                top_k 9
              }
            }

            model Routed {
              vocab 256
              context 8
              dim 16
              heads 2
              layers 1 { all: attention, experts }
            }
            """;

    @TempDir
    Path dir;

    final List<String> log = new ArrayList<>();
    final List<String> context = new ArrayList<>();

    @BeforeEach
    void project() throws IOException {
        Files.createDirectories(dir.resolve("src/main/moe/dev/it"));
        Files.writeString(dir.resolve("src/main/moe/dev/it/good.moe"), GenerationTest.model("Good").replace("import \"layers.moe\"", "")
                .replace("all: attention, experts", "all: attention, swiglu(hidden: 16)"));
    }

    <T extends AbstractGenerateMojo> T configure(T mojo, String goal) {
        MavenProject project = new MavenProject();
        project.setFile(dir.resolve("pom.xml").toFile());
        project.getBuild().setDirectory(dir.resolve("target").toString());
        mojo.project = project;
        MojoDescriptor descriptor = new MojoDescriptor();
        descriptor.setGoal(goal);
        mojo.mojoExecution = new MojoExecution(descriptor, "default");
        mojo.incremental = true;
        mojo.buildContext = (BuildContext) Proxy.newProxyInstance(getClass().getClassLoader(), new Class<?>[] {BuildContext.class},
                (proxy, method, args) -> switch (method.getName()) {
                    case "addMessage" -> context.add("marker " + new File(dir.toFile(), "").toPath().relativize(((File) args[0]).toPath()) + " "
                            + args[1] + ":" + args[2] + " " + args[3] + " " + (((int) args[4]) == BuildContext.SEVERITY_ERROR ? "error" : "warning"));
                    case "removeMessages" -> context.add("clear " + dir.relativize(((File) args[0]).toPath()));
                    case "refresh" -> context.add("refresh " + dir.relativize(((File) args[0]).toPath()));
                    case "newFileOutputStream" -> new FileOutputStream((File) args[0]);
                    case "isIncremental" -> false;
                    default -> throw new UnsupportedOperationException(method.getName());
                });
        mojo.setLog((Log) Proxy.newProxyInstance(getClass().getClassLoader(), new Class<?>[] {Log.class}, (proxy, method, args) -> {
            if (method.getName().startsWith("is")) {
                return true;
            }
            log.add(method.getName() + " " + args[0]);
            return null;
        }));
        return mojo;
    }

    GenerateMojo generate() {
        GenerateMojo m = configure(new GenerateMojo(), "generate");
        m.sourceDirectory = dir.resolve("src/main/moe").toFile();
        m.outputDirectory = dir.resolve("target/generated-sources/moe").toFile();
        return m;
    }

    @Test
    void generatesAndRegistersTheCompileSourceRoot() throws Exception {
        GenerateMojo m = generate();
        m.execute();
        assertThat(m.project.getCompileSourceRoots()).contains(dir.resolve("target/generated-sources/moe").toString());
        assertThat(Files.readString(dir.resolve("target/generated-sources/moe/dev/it/Good.java"))).contains("package dev.it;");
        assertThat(context).containsExactly("clear src/main/moe/dev/it/good.moe");
        assertThat(log).containsExactly("info moe: checked 1 .moe file, wrote 1 Java file to " + dir.resolve("target/generated-sources/moe"));
        assertThat(Files.exists(dir.resolve("target/moe-maven-plugin/generate/default/state.tsv"))).isTrue();

        log.clear();
        context.clear();
        generate().execute();
        assertThat(log).containsExactly("info moe: 1 .moe file up to date");
        assertThat(context).isEmpty();

        Files.delete(dir.resolve("src/main/moe/dev/it/good.moe"));
        log.clear();
        generate().execute();
        assertThat(context).containsExactly("refresh target/generated-sources/moe/dev/it/Good.java");
        assertThat(log).contains("info moe: deleted 1 stale Java file");
    }

    @Test
    void aMistakeIsLoggedAsTheCliPrintsItMarkedForTheIdeAndFailsTheBuild() throws Exception {
        Path bad = dir.resolve("src/main/moe/dev/it/bad.moe");
        Files.writeString(bad, BAD);
        MojoFailureException e = assertThrows(MojoFailureException.class, () -> generate().execute());
        assertThat(e).hasMessageThat().isEqualTo("moe: 1 error in the .moe files under " + dir.resolve("src/main/moe"));
        Path shown = Path.of(GenerationTest.shown(bad));
        String cli = DiagnosticRenderer.renderAll(MoeCompiler.compile(shown).diagnostics()).stripTrailing();
        assertThat(log).contains("error " + cli);
        assertThat(log.stream().filter(l -> l.startsWith("error")).count()).isEqualTo(1);
        assertThat(context).contains("marker src/main/moe/dev/it/bad.moe 4:11 `top_k` (9) exceeds the routed experts (4) [MOE0301] error");
        assertThat(context.indexOf("clear src/main/moe/dev/it/bad.moe")).isLessThan(context.indexOf(
                "marker src/main/moe/dev/it/bad.moe 4:11 `top_k` (9) exceeds the routed experts (4) [MOE0301] error"));
    }

    @Test
    void aMissingDefaultDirectoryIsNothingToDoButAMissingConfiguredOneFails() throws Exception {
        GenerateTestMojo t = configure(new GenerateTestMojo(), "generate-test");
        t.testSourceDirectory = dir.resolve("src/test/moe").toFile();
        t.testOutputDirectory = dir.resolve("target/generated-test-sources/moe").toFile();
        t.execute();
        assertThat(log).containsExactly("info moe: no .moe files to compile in " + dir.resolve("src/test/moe"));
        assertThat(t.project.getTestCompileSourceRoots()).isEmpty();

        GenerateMojo m = generate();
        m.sourceDirectory = dir.resolve("src/main/models").toFile();
        MojoFailureException e = assertThrows(MojoFailureException.class, m::execute);
        assertThat(e).hasMessageThat().contains("the configured source directory " + dir.resolve("src/main/models") + " does not exist");
    }

    @Test
    void theTestGoalRegistersATestSourceRootAndHonoursMavenTestSkip() throws Exception {
        Files.createDirectories(dir.resolve("src/test/moe"));
        Files.move(dir.resolve("src/main/moe/dev/it/good.moe"), dir.resolve("src/test/moe/good.moe"));
        GenerateTestMojo t = configure(new GenerateTestMojo(), "generate-test");
        t.testSourceDirectory = dir.resolve("src/test/moe").toFile();
        t.testOutputDirectory = dir.resolve("target/generated-test-sources/moe").toFile();
        t.skipTests = true;
        t.execute();
        assertThat(log).containsExactly("info moe: skipped");
        t.skipTests = false;
        t.execute();
        assertThat(t.project.getTestCompileSourceRoots()).containsExactly(dir.resolve("target/generated-test-sources/moe").toString());
        assertThat(t.project.getCompileSourceRoots()).doesNotContain(dir.resolve("target/generated-test-sources/moe").toString());
        assertThat(Files.exists(dir.resolve("target/generated-test-sources/moe/Good.java"))).isTrue();
    }

    @Test
    void anInputOutputFaultIsAnExecutionErrorNotABuildFailure() throws Exception {
        Files.createDirectories(dir.resolve("target"));
        Files.writeString(dir.resolve("target/generated-sources"), "a file where a directory should be");
        MojoExecutionException e = assertThrows(MojoExecutionException.class, () -> generate().execute());
        assertThat(e).isNotInstanceOf(MojoFailureException.class);
        assertThat(e).hasMessageThat().startsWith("moe: cannot generate sources from " + dir.resolve("src/main/moe"));
    }
}
