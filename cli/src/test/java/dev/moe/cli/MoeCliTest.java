package dev.moe.cli;

import static com.google.common.truth.Truth.assertThat;
import static com.google.common.truth.Truth.assertWithMessage;

import java.util.concurrent.Callable;
import org.junit.jupiter.api.Test;
import picocli.CommandLine;
import picocli.CommandLine.Command;

class MoeCliTest {
    @Test
    void versionNamesTheProjectVersion() {
        Cli.Run run = Cli.run("--version");

        assertThat(run.exit()).isEqualTo(0);
        assertThat(run.out()).startsWith("moe 0.1.0-SNAPSHOT\n");
    }

    @Test
    void noCommandIsAUsageError() {
        Cli.Run run = Cli.run();

        assertThat(run.exit()).isEqualTo(2);
        assertThat(run.err()).contains("Missing required command");
        assertThat(run.err()).contains("Usage: moe");
    }

    @Test
    void unknownCommandSuggestsTheNearest() {
        Cli.Run run = Cli.run("chek", "x.moe");

        assertThat(run.exit()).isEqualTo(2);
        assertThat(run.err()).contains("Did you mean: moe check");
    }

    @Command(name = "boom")
    static final class Boom implements Callable<Integer> {
        @Override
        public Integer call() {
            throw new IllegalStateException("the checker fell over");
        }
    }

    @Test
    void internalErrorsExitSeventyWithoutAStackTrace() {
        Cli.Run run = Cli.run(MoeCli.configure(new CommandLine(new Boom()), false));

        assertWithMessage("%s", run).that(run.exit()).isEqualTo(70);
        assertThat(run.err()).startsWith("moe: internal error: the checker fell over\n");
        assertThat(run.err()).contains("please report it");
        assertThat(run.err()).doesNotContain("\tat ");
    }

    @Test
    void debugShowsTheStackTrace() {
        Cli.Run run = Cli.run(MoeCli.configure(new CommandLine(new Boom()), true));

        assertThat(run.exit()).isEqualTo(70);
        assertThat(run.err()).startsWith("moe: internal error: the checker fell over\n");
        assertThat(run.err()).contains("java.lang.IllegalStateException: the checker fell over");
        assertThat(run.err()).contains("\tat dev.moe.cli.MoeCliTest$Boom.call");
    }
}
