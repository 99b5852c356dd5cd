package dev.moe.cli;

import static com.google.common.truth.Truth.assertThat;
import static com.google.common.truth.Truth.assertWithMessage;

import dev.moe.dsl.DslParser;
import dev.moe.dsl.MoeFormatter;
import dev.moe.dsl.SourceFile;
import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import java.util.stream.Stream;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

class FmtCommandTest {
    @TempDir
    Path dir;

    private static String canonical(String text) {
        return MoeFormatter.format(DslParser.parse(new SourceFile("t.moe", text)).file().orElseThrow());
    }

    @Test
    void checkListsFilesThatWouldChangeAndWritesNothing() throws IOException {
        Path messy = Samples.write(dir, "messy.moe", Samples.MESSY);
        Path tidy = Samples.write(dir, "tidy.moe", canonical(Samples.VALID));

        Cli.Run run = Cli.run("fmt", "--check", messy.toString(), tidy.toString());

        assertWithMessage("%s", run).that(run.exit()).isEqualTo(1);
        assertThat(run.out()).isEqualTo("would reformat " + messy + "\n");
        assertThat(Files.readString(messy)).isEqualTo(Samples.MESSY);
    }

    @Test
    void checkPassesOnFormattedFiles() throws IOException {
        Path tidy = Samples.write(dir, "tidy.moe", canonical(Samples.VALID));

        Cli.Run run = Cli.run("fmt", "--check", tidy.toString());

        assertWithMessage("%s", run).that(run.exit()).isEqualTo(0);
        assertThat(run.out()).isEmpty();
    }

    @Test
    void rewritesInPlaceKeepingComments() throws IOException {
        Path messy = Samples.write(dir, "messy.moe", Samples.MESSY);

        Cli.Run run = Cli.run("fmt", messy.toString());

        assertWithMessage("%s", run).that(run.exit()).isEqualTo(0);
        assertThat(run.out()).isEqualTo("reformatted " + messy + "\n");
        String after = Files.readString(messy);
        assertThat(after).isEqualTo(canonical(Samples.MESSY));
        assertThat(after).contains("// Mixtral-style: every layer an MoE of 8 SwiGLU experts, top-2.");
        assertThat(after).contains("// two experts per token");
        assertThat(after).contains("/* grouped-query attention */");
        assertThat(after).contains("  routed 8 x swiglu(hidden: 2 * DIM)\n");
        assertThat(Cli.run("fmt", "--check", messy.toString()).exit()).isEqualTo(0);
        assertNoTemporaryFilesLeft();
    }

    @Test
    void leavesFormattedFilesAlone() throws IOException {
        Path tidy = Samples.write(dir, "tidy.moe", canonical(Samples.VALID));
        var before = Files.getLastModifiedTime(tidy);

        Cli.Run run = Cli.run("fmt", tidy.toString());

        assertWithMessage("%s", run).that(run.exit()).isEqualTo(0);
        assertThat(run.out()).isEmpty();
        assertThat(Files.getLastModifiedTime(tidy)).isEqualTo(before);
    }

    @Test
    void syntaxErrorLeavesTheFileUntouched() throws IOException {
        Path broken = Samples.write(dir, "broken.moe", "// keep me\n" + Samples.SYNTAX_ERROR + "model   Ok {  }\n");
        byte[] before = Files.readAllBytes(broken);

        Cli.Run run = Cli.run("fmt", broken.toString());

        assertWithMessage("%s", run).that(run.exit()).isEqualTo(1);
        assertThat(run.err()).contains("[MOE0001]");
        assertThat(Files.readAllBytes(broken)).isEqualTo(before);
        assertNoTemporaryFilesLeft();
    }

    @Test
    void stdoutPrintsTheFormattedTextAndWritesNothing() throws IOException {
        Path messy = Samples.write(dir, "messy.moe", Samples.MESSY);

        Cli.Run run = Cli.run("fmt", "--stdout", messy.toString());

        assertWithMessage("%s", run).that(run.exit()).isEqualTo(0);
        assertThat(run.out()).isEqualTo(canonical(Samples.MESSY));
        assertThat(Files.readString(messy)).isEqualTo(Samples.MESSY);
    }

    @Test
    void refusesWhenTheFormattedTextMeansSomethingElse() throws IOException {
        Path messy = Samples.write(dir, "messy.moe", Samples.MESSY);
        // A broken formatter that loses every comment.
        FmtCommand fmt = new FmtCommand(file -> canonical(Samples.MESSY).lines()
                .filter(l -> !l.strip().startsWith("//") && !l.strip().startsWith("/*"))
                .map(l -> l.replaceAll("\\s*//.*", "") + "\n")
                .reduce("", String::concat));

        Cli.Run run = Cli.runCommand(fmt, messy.toString());

        assertWithMessage("%s", run).that(run.exit()).isEqualTo(1);
        assertThat(run.err()).contains("refusing to format " + messy);
        assertThat(Files.readString(messy)).isEqualTo(Samples.MESSY);
        assertNoTemporaryFilesLeft();
    }

    @Test
    void checkAndStdoutExcludeEachOther() {
        Cli.Run run = Cli.run("fmt", "--check", "--stdout", "x.moe");

        assertThat(run.exit()).isEqualTo(2);
        assertThat(run.err()).contains("mutually exclusive");
    }

    @Test
    void symbolicLinkStaysALink() throws IOException {
        Path real = Samples.write(dir, "real.moe", Samples.MESSY);
        Path link = Files.createSymbolicLink(dir.resolve("link.moe"), real.getFileName());

        Cli.Run run = Cli.run("fmt", link.toString());

        assertWithMessage("%s", run).that(run.exit()).isEqualTo(0);
        assertThat(Files.isSymbolicLink(link)).isTrue();
        assertThat(Files.readString(real)).isEqualTo(canonical(Samples.MESSY));
    }

    private void assertNoTemporaryFilesLeft() throws IOException {
        try (Stream<Path> s = Files.list(dir)) {
            List<String> names = s.map(p -> p.getFileName().toString()).toList();
            assertThat(names.stream().filter(n -> n.endsWith(".tmp")).toList()).isEmpty();
        }
    }
}
