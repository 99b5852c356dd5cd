package dev.moe.cli;

import static com.google.common.truth.Truth.assertThat;
import static com.google.common.truth.Truth.assertWithMessage;

import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import java.util.stream.Stream;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

class CheckCommandTest {
    @TempDir
    Path dir;

    @Test
    void validFileExitsZeroWithASummaryLine() throws IOException {
        Path valid = Samples.write(dir, "valid.moe", Samples.VALID);

        Cli.Run run = Cli.run("check", valid.toString());

        assertWithMessage("%s", run).that(run.exit()).isEqualTo(0);
        assertThat(run.out()).startsWith(valid + ": ok (");
        assertThat(run.out().lines().count()).isEqualTo(1);
        assertThat(run.err()).isEmpty();
    }

    @Test
    void syntaxErrorExitsOneWithTheDiagnosticOnStderr() throws IOException {
        Path broken = Samples.write(dir, "broken.moe", Samples.SYNTAX_ERROR);

        Cli.Run run = Cli.run("check", broken.toString());

        assertWithMessage("%s", run).that(run.exit()).isEqualTo(1);
        assertThat(run.out()).isEmpty();
        assertThat(run.err()).contains(broken + ":2:9: error: ");
        assertThat(run.err()).contains("[MOE0001]");
        assertThat(run.err()).contains("  2 |   vocab = 256");
        assertThat(run.err()).doesNotContain("Exception");
    }

    @Test
    void severalFilesEndWithATally() throws IOException {
        Path valid = Samples.write(dir, "valid.moe", Samples.VALID);
        Path broken = Samples.write(dir, "broken.moe", Samples.SYNTAX_ERROR);

        Cli.Run run = Cli.run("check", valid.toString(), broken.toString());

        assertWithMessage("%s", run).that(run.exit()).isEqualTo(1);
        assertThat(run.out()).contains(valid + ": ok (");
        assertThat(run.out()).doesNotContain(broken + ": ok");
        assertThat(run.out()).containsMatch("(?m)^2 files checked, [1-9][0-9]* errors?, 0 warnings$");
    }

    @Test
    void missingFileIsAnErrorNotAUsageError() {
        Cli.Run run = Cli.run("check", dir.resolve("nope.moe").toString());

        assertWithMessage("%s", run).that(run.exit()).isEqualTo(1);
        assertThat(run.err()).contains("[MOE0010]");
    }

    @Test
    void usageErrorsExitTwo() {
        Cli.Run none = Cli.run("check");
        assertWithMessage("%s", none).that(none.exit()).isEqualTo(2);
        assertThat(none.err()).contains("Missing required parameter");
        assertThat(none.err()).contains("Usage: moe check");

        Cli.Run badOption = Cli.run("check", "--frobnicate", "x.moe");
        assertWithMessage("%s", badOption).that(badOption.exit()).isEqualTo(2);
        assertThat(badOption.err()).contains("Unknown option: '--frobnicate'");
    }

    @Test
    void everyRecipeChecks() throws IOException {
        Path recipes = Path.of("..", "recipes");
        List<String> files;
        try (Stream<Path> s = Files.list(recipes)) {
            files = s.filter(p -> p.toString().endsWith(".moe")).sorted().map(Path::toString).toList();
        }
        assertThat(files).isNotEmpty();

        Cli.Run run = Cli.run(Stream.concat(Stream.of("check"), files.stream()).toArray(String[]::new));

        assertWithMessage("%s", run).that(run.exit()).isEqualTo(0);
        for (String f : files) {
            assertThat(run.out()).contains(f + ": ok (");
        }
    }

    @Test
    void summaryGivesParamsActiveAndFlopsOfEachModel() {
        CheckCommand check = new CheckCommand(TestModels.compilerReturning(List.of(TestModels.mixtralTiny()), List.of()));

        Cli.Run run = Cli.runCommand(check, "recipes/mixtral.moe");

        assertWithMessage("%s", run).that(run.exit()).isEqualTo(0);
        assertThat(run.out()).isEqualTo("recipes/mixtral.moe: ok (1 model: MixtralTiny 3.41M params, 1.05M active, 2.57 MFLOP/token)\n");
    }

    @Test
    void summarySaysWhenAFileHasTrainingRecipes() {
        CheckCommand check = new CheckCommand(
                TestModels.compilerReturning(List.of(TestModels.mixtralTiny(), TestModels.topP()), List.of(TestModels.training())));

        Cli.Run run = Cli.runCommand(check, "two.moe");

        assertThat(run.out()).isEqualTo("two.moe: ok (2 models: MixtralTiny 3.41M params, 1.05M active, 2.57 MFLOP/token;"
                + " DynTiny 903K params, 214K–509K active (expected 313K), 363–953 KFLOP/token (expected 560 KFLOP);"
                + " 1 training recipe)\n");
    }

    @Test
    void fileWithoutModelsIsOk() {
        CheckCommand check = new CheckCommand(TestModels.compilerReturning(List.of(), List.of()));

        Cli.Run run = Cli.runCommand(check, "lib.moe");

        assertThat(run.out()).isEqualTo("lib.moe: ok (no models)\n");
    }
}
