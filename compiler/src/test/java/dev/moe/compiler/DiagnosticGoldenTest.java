package dev.moe.compiler;

import static com.google.common.truth.Truth.assertWithMessage;

import dev.moe.dsl.diag.Code;
import dev.moe.dsl.diag.DiagnosticRenderer;
import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import java.util.stream.Stream;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.MethodSource;

/**
 * One case per file under {@code src/test/resources/diagnostics}: {@code MOEnnnn-what.moe} is
 * compiled and its rendered diagnostics must equal {@code MOEnnnn-what.expected} exactly (run with
 * {@code -Dbless=true} to rewrite the expected files after a deliberate change). Files without a
 * code prefix ({@code lib-*.moe}) are imported helpers, not cases.
 */
class DiagnosticGoldenTest {
    static final Path DIR = Path.of("src/test/resources/diagnostics");

    static Stream<Path> cases() throws IOException {
        try (Stream<Path> files = Files.list(DIR)) {
            return files.filter(p -> p.getFileName().toString().matches("MOE\\d{4}-.*\\.moe")).sorted().toList().stream();
        }
    }

    static String render(Path file) {
        String text = DiagnosticRenderer.renderAll(MoeCompiler.compile(file).diagnostics());
        return text.replace(DIR + "/", "");
    }

    @ParameterizedTest(name = "{0}")
    @MethodSource("cases")
    void diagnosticsMatchGolden(Path file) throws IOException {
        String actual = render(file);
        Path expectedFile = file.resolveSibling(file.getFileName().toString().replaceAll("\\.moe$", ".expected"));
        if (Boolean.getBoolean("bless")) {
            Files.writeString(expectedFile, actual, StandardCharsets.UTF_8);
            return;
        }
        assertWithMessage("missing golden %s (run with -Dbless=true to create it)", expectedFile).that(Files.exists(expectedFile)).isTrue();
        assertWithMessage("diagnostics of %s", file).that(actual).isEqualTo(Files.readString(expectedFile, StandardCharsets.UTF_8));
        String code = file.getFileName().toString().substring(0, 7);
        assertWithMessage("%s must report its own code", file).that(actual).contains("[" + code + "]");
    }

    @Test
    void everyCodeHasAGoldenCase() throws IOException {
        List<String> names = cases().map(p -> p.getFileName().toString()).toList();
        for (Code code : Code.values()) {
            if (code == Code.CANNOT_READ || code == Code.INVALID_UTF8) {
                continue; // need a missing file or raw bytes: covered by CompilerBadInputTest
            }
            assertWithMessage("no golden case for %s (%s): add src/test/resources/diagnostics/%s-<what>.moe", code.id(), code.title(), code.id())
                    .that(names.stream().anyMatch(n -> n.startsWith(code.id() + "-")))
                    .isTrue();
        }
    }

    @Test
    void everyCodeIsExplained() {
        for (Code code : Code.values()) {
            assertWithMessage("explanation of %s", code.id()).that(code.explanation().strip().length()).isGreaterThan(40);
            assertWithMessage("round trip of %s", code.id()).that(Code.parse(code.id())).hasValue(code);
        }
    }
}
