package dev.moe.cli;

import static com.google.common.truth.Truth.assertThat;
import static com.google.common.truth.Truth.assertWithMessage;

import java.io.IOException;
import java.nio.file.Path;
import java.util.List;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

class InfoCommandTest {
    @TempDir
    Path dir;

    @Test
    void printsOneSectionPerModel() {
        InfoCommand info = new InfoCommand(TestModels.compilerReturning(List.of(TestModels.mixtralTiny(), TestModels.topP()), List.of()));

        Cli.Run run = Cli.runCommand(info, "two.moe");

        assertWithMessage("%s", run).that(run.exit()).isEqualTo(0);
        assertThat(run.out()).isEqualTo(InfoTable.render(TestModels.mixtralTiny()) + "\n" + InfoTable.render(TestModels.topP()));
    }

    @Test
    void paramsOptionListsTensors() {
        InfoCommand info = new InfoCommand(TestModels.compilerReturning(List.of(TestModels.mixtralTiny()), List.of()));

        Cli.Run run = Cli.runCommand(info, "m.moe", "--params");

        assertThat(run.out()).isEqualTo(InfoTable.render(TestModels.mixtralTiny(), true));
        assertThat(run.out()).contains("layers.0.moe.router");
    }

    @Test
    void fileWithErrorsPrintsDiagnosticsAndExitsOne() throws IOException {
        Path broken = Samples.write(dir, "broken.moe", Samples.SYNTAX_ERROR);

        Cli.Run run = Cli.run("info", broken.toString());

        assertWithMessage("%s", run).that(run.exit()).isEqualTo(1);
        assertThat(run.out()).isEmpty();
        assertThat(run.err()).contains("[MOE0001]");
    }

    @Test
    void validFileExitsZero() throws IOException {
        Path valid = Samples.write(dir, "valid.moe", Samples.VALID);

        Cli.Run run = Cli.run("info", valid.toString());

        assertWithMessage("%s", run).that(run.exit()).isEqualTo(0);
        assertThat(run.err()).isEmpty();
    }

    @Test
    void latentAttentionShowsInTheSettingsAndTheTensors() throws IOException {
        Path mla = Samples.write(dir, "mla.moe", """
                model Tiny {
                  vocab 128  context 64  dim 64  heads 4
                  attention mla(q_rank: 32, kv_rank: 16, nope_dim: 8, rope_dim: 8, v_dim: 16)
                  layers 1 { all: attention, swiglu(hidden: 128) }
                }
                """);

        Cli.Run run = Cli.run("info", mla.toString(), "--params");

        assertWithMessage("%s", run).that(run.exit()).isEqualTo(0);
        assertThat(run.out()).contains("attention mla(q_rank: 32, kv_rank: 16, nope_dim: 8, rope_dim: 8, v_dim: 16)");
        assertThat(run.out()).contains("layers.0.attn.kv_b");
    }

    @Test
    void takesExactlyOneFile() {
        assertThat(Cli.run("info").exit()).isEqualTo(2);
        assertThat(Cli.run("info", "a.moe", "b.moe").exit()).isEqualTo(2);
    }
}
