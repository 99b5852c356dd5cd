package dev.moe.cli;

import static com.google.common.truth.Truth.assertThat;
import static com.google.common.truth.Truth.assertWithMessage;

import java.io.ByteArrayInputStream;
import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/** {@code moe repl} driven by a piped script, as a user would pipe one in. */
class ReplCommandTest {
    @TempDir
    Path dir;

    static Cli.Run repl(String script, String... args) {
        ReplCommand command = new ReplCommand(new ByteArrayInputStream(script.getBytes(StandardCharsets.UTF_8)));
        return Cli.runCommand(command, args);
    }

    Path recipe() throws IOException {
        Path recipe = dir.resolve("tiny.moe");
        Files.writeString(recipe, TrainCommandTest.RECIPE);
        return recipe;
    }

    @Test
    void aScriptTrainsGeneratesAndShowsErrorsAndExceptionsInOneLine() throws IOException {
        Cli.Run r = repl("""
                train(3)
                generate("12+3=", 4)
                loads()
                double e = evaluate();
                e > 0 && e < 10
                int broken = ;
                Integer.parseInt("zz")
                model.step()
                moe.generated.Tiny.DIM
                for (int i = 0; i < 2; i++) {
                  System.out.println("line " + i);
                }
                /exit
                model.step()
                """, recipe().toString(), "--threads", "1");
        assertWithMessage("%s", r).that(r.exit()).isEqualTo(0);
        String out = r.out();
        assertThat(out).contains("moe repl: Tiny from " + recipe() + " (");
        assertThat(out).contains("bound to `model`");
        assertThat(out).containsMatch("step 3  loss [0-9.]+\nloss [0-9.]+ -> [0-9.]+ over 3 steps");
        assertThat(out).containsMatch("\n12\\+3=.{0,16}\n");
        assertThat(out).containsMatch("layer 1: \\d+ \\(\\d+%\\) \\d+ \\(\\d+%\\) \\d+ \\(\\d+%\\) \\d+ \\(\\d+%\\)");
        assertThat(out).containsMatch("\\$\\d+ ==> true");
        assertThat(out).contains("|  Error:\n|  illegal start of expression\n|  int broken = ;\n|               ^\n");
        assertThat(out).contains("|  Exception java.lang.NumberFormatException: For input string: \"zz\"\n");
        assertThat(out).doesNotContain("\tat ");
        assertThat(out).doesNotContain("|        at ");
        assertThat(out).containsMatch("\\$\\d+ ==> 3\n");
        assertThat(out).containsMatch("\\$\\d+ ==> 16\n");
        assertThat(out).contains("line 0\nline 1\n");
        // Nothing after /exit runs.
        assertThat(out.split("==> 3\n", -1)).hasLength(2);
    }

    @Test
    void reloadPicksUpAnEditedRecipeAndStackTracesAreShownWhenAsked() throws IOException {
        Path recipe = recipe();
        Cli.Run r = repl("""
                Files.writeString(Path.of("%s"), Files.readString(Path.of("%s")).replace("dim 16", "dim 32"));
                reload()
                moe.generated.Tiny.DIM
                model.model().name()
                train(1)
                Objects.requireNonNull(null, "boom")
                """.formatted(recipe, recipe), recipe.toString(), "--threads", "1", "--stack-traces");
        assertWithMessage("%s", r).that(r.exit()).isEqualTo(0);
        assertThat(r.out()).contains("reloading " + recipe);
        assertThat(r.out()).containsMatch("\\$\\d+ ==> 32\n");
        assertThat(r.out()).containsMatch("\\$\\d+ ==> \"Tiny\"\n");
        assertThat(r.out()).contains("|  Exception java.lang.NullPointerException: boom\n|        at ");
    }

    @Test
    void withoutAFileTheRuntimeIsLoadedAndOpenCompilesARecipe() throws IOException {
        Cli.Run r = repl("""
                train(1)
                open("%s")
                model.model().vocab()
                """.formatted(recipe()), "--threads", "1");
        assertWithMessage("%s", r).that(r.exit()).isEqualTo(0);
        assertThat(r.out()).contains("moe repl: the runtime is loaded; open(\"file.moe\") compiles a recipe");
        assertThat(r.out()).contains("|  Exception java.lang.IllegalStateException: no model is loaded: open(\"file.moe\")");
        assertThat(r.out()).contains("moe repl: Tiny from ");
        assertThat(r.out()).containsMatch("\\$\\d+ ==> 256\n");
    }

    @Test
    void aRecipeWithErrorsExitsWithItsDiagnostics() throws IOException {
        Path bad = dir.resolve("bad.moe");
        Files.writeString(bad, TrainCommandTest.RECIPE.replace("top_k 2", "top_k 9"));
        Cli.Run r = repl("", bad.toString());
        assertThat(r.exit()).isEqualTo(1);
        assertThat(r.err()).contains("error: `top_k` (9) exceeds the routed experts (4) [MOE0301]");
        assertThat(r.out()).isEmpty();

        Cli.Run unknown = repl("", recipe().toString(), "--backend", "tpu");
        assertThat(unknown.exit()).isEqualTo(1);
        assertThat(unknown.err()).contains("moe: error: unknown backend `tpu`: use cpu, cuda or cuda-hybrid");
    }
}
