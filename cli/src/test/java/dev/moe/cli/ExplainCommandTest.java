package dev.moe.cli;

import static com.google.common.truth.Truth.assertThat;
import static com.google.common.truth.Truth.assertWithMessage;

import dev.moe.dsl.diag.Code;
import org.junit.jupiter.api.Test;

class ExplainCommandTest {
    @Test
    void knownCodePrintsTitleThenExplanation() {
        Cli.Run run = Cli.run("explain", "MOE0301");

        assertWithMessage("%s", run).that(run.exit()).isEqualTo(0);
        assertThat(run.out()).isEqualTo("MOE0301: " + Code.TOP_K_EXCEEDS_EXPERTS.title() + "\n\n" + Code.TOP_K_EXCEEDS_EXPERTS.explanation());
        assertThat(run.err()).isEmpty();
    }

    @Test
    void acceptsTheShortForms() {
        String expected = Cli.run("explain", "MOE0301").out();
        assertThat(Cli.run("explain", "moe0301").out()).isEqualTo(expected);
        assertThat(Cli.run("explain", "0301").out()).isEqualTo(expected);
        assertThat(Cli.run("explain", "301").out()).isEqualTo(expected);
    }

    @Test
    void unknownCodeSaysHowCodesLookAndExitsTwo() {
        Cli.Run run = Cli.run("explain", "MOE9999");

        assertWithMessage("%s", run).that(run.exit()).isEqualTo(2);
        assertThat(run.out()).isEmpty();
        assertThat(run.err()).contains("unknown code `MOE9999`");
        assertThat(run.err()).contains("Codes look like MOE0301");
        assertThat(run.err()).contains("moe explain --list");
    }

    @Test
    void listGivesEveryCodeAndTitle() {
        Cli.Run run = Cli.run("explain", "--list");

        assertWithMessage("%s", run).that(run.exit()).isEqualTo(0);
        assertThat(run.out().lines().count()).isEqualTo(Code.values().length);
        for (Code c : Code.values()) {
            assertThat(run.out()).contains(c.id() + "  " + c.title() + "\n");
        }
    }

    @Test
    void needsExactlyOneOfCodeAndList() {
        assertThat(Cli.run("explain").exit()).isEqualTo(2);
        assertThat(Cli.run("explain", "--list", "MOE0301").exit()).isEqualTo(2);
    }
}
