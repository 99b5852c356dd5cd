package dev.moe.cli;

import static com.google.common.truth.Truth.assertThat;
import static com.google.common.truth.Truth.assertWithMessage;
import static org.junit.jupiter.api.Assertions.fail;

import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.stream.Stream;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.MethodSource;

/**
 * The help of every command, compared with {@code src/test/resources/help/<command>.txt} ({@code moe.txt}
 * for the top command). After changing a command on purpose, rewrite the files with
 * {@code ./mvnw -pl cli test -Dtest=HelpGoldenTest -Dbless=true} and review the diff.
 */
class HelpGoldenTest {
    private static final Path GOLDEN = Path.of("src", "test", "resources", "help");
    private static final boolean BLESS = Boolean.getBoolean("bless");

    /** "moe" and every subcommand's name. */
    static Stream<String> commands() {
        List<String> names = new ArrayList<>();
        names.add("moe");
        names.addAll(MoeCli.newCommandLine(false).getSubcommands().keySet());
        return names.stream();
    }

    private static String[] helpArgs(String command, String flag) {
        return command.equals("moe") ? new String[] {flag} : new String[] {command, flag};
    }

    @ParameterizedTest(name = "{0} --help")
    @MethodSource("commands")
    void helpMatchesGolden(String command) throws IOException {
        Cli.Run run = Cli.run(helpArgs(command, "--help"));
        assertWithMessage("%s", run).that(run.exit()).isEqualTo(0);
        assertThat(run.err()).isEmpty();

        Path golden = GOLDEN.resolve(command + ".txt");
        if (BLESS) {
            Files.createDirectories(GOLDEN);
            Files.writeString(golden, run.out(), StandardCharsets.UTF_8);
            return;
        }
        if (!Files.exists(golden)) {
            fail("missing golden file cli/" + golden.toString().replace('\\', '/') + " for `" + String.join(" ", helpArgs(command, "--help"))
                    + "`; create it with ./mvnw -pl cli test -Dtest=HelpGoldenTest -Dbless=true and review it");
        }
        assertWithMessage("`%s` differs from cli/%s; if the change is intended, rerun with -Dbless=true and review the diff",
                String.join(" ", helpArgs(command, "--help")), golden)
                .that(run.out()).isEqualTo(Files.readString(golden, StandardCharsets.UTF_8));
    }

    @ParameterizedTest(name = "{0} -h")
    @MethodSource("commands")
    void shortFlagPrintsTheSameHelp(String command) {
        assertThat(Cli.run(helpArgs(command, "-h")).out()).isEqualTo(Cli.run(helpArgs(command, "--help")).out());
    }

    @Test
    void helpCommandPrintsACommandsHelp() {
        assertThat(Cli.run("help", "check").out()).isEqualTo(Cli.run("check", "--help").out());
    }
}
