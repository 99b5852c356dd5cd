package dev.moe.dsl;

import com.code_intelligence.jazzer.junit.DictionaryEntries;
import com.code_intelligence.jazzer.junit.FuzzTest;
import dev.moe.dsl.ast.AstEquivalence;
import dev.moe.dsl.ast.MoeFile;
import dev.moe.dsl.diag.Diagnostic;
import dev.moe.dsl.diag.DiagnosticRenderer;
import java.util.List;

/**
 * Any bytes: decoding and parsing end in a syntax tree or in diagnostics, never in a throwable; every
 * diagnostic about a file's text points into it; and a file that parses formats to text that parses
 * to the same tree, and formats again to the same text.
 *
 * <p>{@code ./mvnw -pl dsl test} replays the seeds in {@code ParserFuzzTestInputs} (next to this class
 * under {@code src/test/resources}); {@code JAZZER_FUZZ=1 ./mvnw -pl dsl test -Dtest=ParserFuzzTest}
 * fuzzes for {@code maxDuration}, and a crashing input is saved under {@code ParserFuzzTestInputs/fuzz/}.
 */
class ParserFuzzTest {
    @FuzzTest(maxDuration = "60s")
    @DictionaryEntries({"import", "const", "ffn", "moe", "model", "train", "router", "layers", "stage", "domain", " x ",
            "first", "every", "from", "rest", "all", "parallel", "{", "}", "(", ")", "[", "]", ",", ":", "=", "..", "+", "-", "*", "/",
            "//", "/*", "*/", "\"", "\\", "\\\"", "1e-6", "1_000", "2.5E+3", "9007199254740993", "1e999", "swiglu(hidden: 64)",
            "8 x ", "router {", "layers 4 {", "rest: ", "every 2 from 1: "})
    void fuzz(byte[] input) {
        switch (SourceFile.decode("fuzz.moe", input)) {
            case SourceFile.ReadResult.Failed failed -> check(List.of(failed.diagnostic()));
            case SourceFile.ReadResult.Ok ok -> parseAndFormat(ok.source());
        }
    }

    private static void parseAndFormat(SourceFile source) {
        ParseResult result = DslParser.parse(source);
        check(result.diagnostics());
        if (result.file().isEmpty() && result.diagnostics().stream().noneMatch(Diagnostic::isError)) {
            throw new AssertionError("no syntax tree and no error for:\n" + source.text());
        }
        if (!result.ok()) {
            return;
        }
        MoeFile file = result.file().orElseThrow();
        String formatted = MoeFormatter.format(file);
        ParseResult again = DslParser.parse(new SourceFile("formatted.moe", formatted));
        if (!again.ok()) {
            throw new AssertionError("formatted text does not parse:\n" + formatted + "\n" + DiagnosticRenderer.renderAll(again.diagnostics())
                    + "\nfrom:\n" + source.text());
        }
        if (!AstEquivalence.equivalent(file, again.file().orElseThrow())) {
            throw new AssertionError("formatting changed the meaning:\n" + source.text() + "\n--- formatted:\n" + formatted);
        }
        String twice = MoeFormatter.format(again.file().orElseThrow());
        if (!twice.equals(formatted)) {
            throw new AssertionError("formatting is not idempotent:\n" + formatted + "\n--- then:\n" + twice);
        }
    }

    /** Every diagnostic is complete, and one about the file's text has a span inside it. */
    private static void check(List<Diagnostic> diagnostics) {
        for (Diagnostic d : diagnostics) {
            if (d.code() == null || d.message() == null || d.message().isEmpty() || d.file() == null) {
                throw new AssertionError("incomplete diagnostic: " + d.headline());
            }
            SourceFile source = d.source();
            if (source != null) {
                if (d.span() == null) {
                    throw new AssertionError("diagnostic with a source but no span: " + d.headline());
                }
                if (d.span().line() > source.lineCount() || d.span().column() > source.line(d.span().line()).length() + 1) {
                    throw new AssertionError("span outside the file: " + d.headline());
                }
            }
            DiagnosticRenderer.render(d);
        }
    }
}
