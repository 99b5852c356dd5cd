package dev.moe.dsl;

import static com.google.common.truth.Truth.assertThat;
import static com.google.common.truth.Truth.assertWithMessage;

import dev.moe.dsl.diag.Code;
import dev.moe.dsl.diag.Diagnostic;
import dev.moe.dsl.diag.DiagnosticRenderer;
import dev.moe.dsl.grammar.MoeLexer;
import java.io.IOException;
import java.io.UncheckedIOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.stream.Stream;
import org.antlr.v4.runtime.CharStreams;
import org.antlr.v4.runtime.CommonTokenStream;
import org.antlr.v4.runtime.Token;
import org.antlr.v4.runtime.misc.IntervalSet;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.Arguments;
import org.junit.jupiter.params.provider.MethodSource;

/**
 * Golden tests for lexical and syntax errors: each input and the exact text the renderer prints for
 * its diagnostics (position, found token, complete expected set, notes).
 */
class SyntaxErrorTest {
    static String render(String text) {
        return DiagnosticRenderer.renderAll(DslParser.parse(new SourceFile("t.moe", text)).diagnostics());
    }

    static Stream<Arguments> cases() {
        return Stream.of(
                Arguments.of("setting with =", "model M { vocab = 256 }\n", """
                t.moe:1:17: error: found `=`, expected <expression> [MOE0001]
                  1 | model M { vocab = 256 }
                    |                 ^
                """),
                Arguments.of("setting with = in a moe", "moe m {\n  routed = 8 x expert\n}\n", """
                t.moe:2:10: error: found `=`, expected <expression> [MOE0001]
                  2 |   routed = 8 x expert
                    |          ^
                """),
                Arguments.of("missing closing brace", "model M {\n  vocab 256\n", """
                t.moe:3:1: error: found end of file, expected one of: <identifier>, `*`, `+`, `-`, `/`, `ffn`, `layers`, `moe`, `x`, `}` [MOE0001]
                  3 |\s
                    | ^
                """),
                Arguments.of("missing closing brace of a nested block", "model M {\n  layers 4 {\n    all: attention, fine\n}\n", """
                t.moe:5:1: error: found end of file, expected one of: <identifier>, `ffn`, `layers`, `moe`, `}` [MOE0001]
                  5 |\s
                    | ^
                """),
                Arguments.of("number at top level", "model M { vocab 256 }\n256\n", """
                t.moe:2:1: error: found `256`, expected one of: `const`, `ffn`, `import`, `model`, `moe`, `train`, end of file [MOE0001]
                  2 | 256
                    | ^^^
                """),
                Arguments.of("name at top level", "model M { vocab 256 }\nfoo bar\n", """
                t.moe:2:1: error: found `foo`, expected one of: `const`, `ffn`, `import`, `model`, `moe`, `train`, end of file [MOE0001]
                  2 | foo bar
                    | ^^^
                """),
                Arguments.of("stray closing brace at top level", "model M { vocab 256 }\n}\n", """
                t.moe:2:1: error: found `}`, expected one of: `const`, `ffn`, `import`, `model`, `moe`, `train`, end of file [MOE0001]
                  2 | }
                    | ^
                """),
                Arguments.of("call with trailing comma", "model M {\n  norm rms(eps: 1e-6, )\n}\n", """
                t.moe:2:23: error: found `)`, expected <argument> [MOE0001]
                  2 |   norm rms(eps: 1e-6, )
                    |                       ^
                """),
                Arguments.of("call with trailing comma, unnamed", "const A = f(a: 1, )\n", """
                t.moe:1:19: error: found `)`, expected <argument> [MOE0001]
                  1 | const A = f(a: 1, )
                    |                   ^
                """),
                Arguments.of("list with double comma", "const A = [1, 2,, 3]\n", """
                t.moe:1:17: error: found `,`, expected one of: <expression>, `]` [MOE0001]
                  1 | const A = [1, 2,, 3]
                    |                 ^
                """),
                Arguments.of("operator at end of file", "const A = 2 +\n", """
                t.moe:2:1: error: found end of file, expected <expression> [MOE0001]
                  2 |\s
                    | ^
                """),
                Arguments.of("operator before closing parenthesis", "model M {\n  norm rms(eps: 1e-6 + )\n}\n", """
                t.moe:2:24: error: found `)`, expected <expression> [MOE0001]
                  2 |   norm rms(eps: 1e-6 + )
                    |                        ^
                """),
                Arguments.of("unclosed parenthesis", "const A = (1 + 2\nconst B = 3\n", """
                t.moe:2:1: error: found `const`, expected one of: `)`, `*`, `+`, `-`, `/`, `x` [MOE0001]
                  2 | const B = 3
                    | ^^^^^
                """),
                Arguments.of("reserved word as name", "ffn model = swiglu(hidden: 64)\n", """
                t.moe:1:5: error: found `model`, expected <identifier> [MOE0001]
                  1 | ffn model = swiglu(hidden: 64)
                    |     ^^^^^
                """),
                Arguments.of("domain without name", "train M {\n  domain = file(\"a.txt\")\n}\n", """
                t.moe:2:10: error: found `=`, expected <identifier> [MOE0001]
                  2 |   domain = file("a.txt")
                    |          ^
                """),
                Arguments.of("router with two names", "moe m {\n  router a b { top_k 2 }\n}\n", """
                t.moe:2:12: error: found `b`, expected `{` [MOE0001]
                  2 |   router a b { top_k 2 }
                    |            ^
                """),
                Arguments.of("selector: missing colon after first", "model M {\n  layers 4 {\n    first 1 attention\n  }\n}\n", """
                t.moe:3:13: error: found `attention`, expected one of: `*`, `+`, `-`, `/`, `:`, `x` [MOE0001]
                  3 |     first 1 attention
                    |             ^^^^^^^^^
                """),
                Arguments.of("selector: missing colon after rest", "model M {\n  layers 4 {\n    rest attention\n  }\n}\n", """
                t.moe:3:10: error: found `attention`, expected one of: `..`, `:` [MOE0001]
                  3 |     rest attention
                    |          ^^^^^^^^^
                """),
                Arguments.of("selector: every ... from without start", "model M {\n  layers 4 {\n    every 2 from: attention\n  }\n}\n", """
                t.moe:3:17: error: found `:`, expected <expression> [MOE0001]
                  3 |     every 2 from: attention
                    |                 ^
                """),
                Arguments.of("selector: open range", "model M {\n  layers 4 {\n    2..: attention\n  }\n}\n", """
                t.moe:3:8: error: found `:`, expected one of: <identifier>, <number>, `(` [MOE0001]
                  3 |     2..: attention
                    |        ^
                """),
                Arguments.of("selector: empty body", "model M {\n  layers 4 {\n    all:\n  }\n}\n", """
                t.moe:4:3: error: found `}`, expected <expression> [MOE0001]
                  4 |   }
                    |   ^
                """),
                Arguments.of("selector: reserved word", "model M {\n  layers 4 { model: attention }\n}\nmodel N { vocab = 1 }\n", """
                t.moe:2:14: error: found `model`, expected one of: <identifier>, <number>, `(`, `}` [MOE0001]
                  2 |   layers 4 { model: attention }
                    |              ^^^^^
                t.moe:4:17: error: found `=`, expected <expression> [MOE0001]
                  4 | model N { vocab = 1 }
                    |                 ^
                """),
                Arguments.of("unterminated string", "import \"common.moe\n", """
                t.moe:1:8: error: unterminated string [MOE0002]
                  1 | import "common.moe
                    |        ^^^^^^^^^^^
                    = help: close the string with `"` on the same line
                """),
                Arguments.of("invalid escape", "import \"a\\qb.moe\"\n", """
                t.moe:1:10: error: invalid escape `\\q` in string [MOE0006]
                  1 | import "a\\qb.moe"
                    |          ^^
                    = help: the escapes are \\" \\\\ \\n \\t
                """),
                Arguments.of("unterminated block comment", "model M { vocab 256 }\n/* never closed\n", """
                t.moe:2:1: error: unterminated block comment [MOE0003]
                  2 | /* never closed
                    | ^
                    = help: close it with `*/`
                """),
                Arguments.of("invalid character", "model M { vocab 256 $ }\n", """
                t.moe:1:21: error: invalid character `$` [MOE0004]
                  1 | model M { vocab 256 $ }
                    |                     ^
                """),
                Arguments.of("invalid non-ASCII character", "model M { vocab 256 é }\n", """
                t.moe:1:21: error: invalid character `é` [MOE0004]
                  1 | model M { vocab 256 é }
                    |                     ^
                """),
                Arguments.of("invalid character after a tab", "model M {\n\tvocab 256 #\n}\n", """
                t.moe:2:12: error: invalid character `#` [MOE0004]
                  2 | \tvocab 256 #
                    | \t          ^
                """),
                Arguments.of("NUL byte", "model M {\0 vocab 256 }\n", """
                t.moe:1:10: error: invalid character U+0000 (a control character; is this a binary file?) [MOE0004]
                  1 | model M {\uFFFD vocab 256 }
                    |          ^
                """),
                Arguments.of("float out of range", "const A = 1e999\n", """
                t.moe:1:11: error: number `1e999` is out of range (larger than the largest 64-bit float) [MOE0008]
                  1 | const A = 1e999
                    |           ^^^^^
                """),
                Arguments.of("integer out of range", "const A = 99999999999999999999\n", """
                t.moe:1:11: error: integer `99999999999999999999` is out of range (the largest is 2^53 = 9007199254740992) [MOE0008]
                  1 | const A = 99999999999999999999
                    |           ^^^^^^^^^^^^^^^^^^^^
                """),
                Arguments.of("integer one past 2^53", "const A = 9007199254740993\n", """
                t.moe:1:11: error: integer `9007199254740993` is out of range (the largest is 2^53 = 9007199254740992) [MOE0008]
                  1 | const A = 9007199254740993
                    |           ^^^^^^^^^^^^^^^^
                """),
                Arguments.of("float that rounds to zero", "const A = 1e-999\n", """
                t.moe:1:11: error: number `1e-999` is too small to represent (it rounds to 0) [MOE0008]
                  1 | const A = 1e-999
                    |           ^^^^^^
                """),
                Arguments.of("empty file", "", """
                t.moe:1:1: error: file is empty: it declares nothing [MOE0009]
                  1 |\s
                    | ^
                    = help: declare a `model`, or `ffn`/`moe` definitions for other files to import
                """),
                Arguments.of("whitespace only", "  \n\t\n", """
                t.moe:1:1: error: file is empty: it declares nothing [MOE0009]
                  1 |  \s
                    | ^
                    = help: declare a `model`, or `ffn`/`moe` definitions for other files to import
                """),
                Arguments.of("comments only", "// just a comment\n/* and a block */\n", """
                t.moe:1:1: error: file is empty: it declares nothing [MOE0009]
                  1 | // just a comment
                    | ^
                    = help: declare a `model`, or `ffn`/`moe` definitions for other files to import
                """),
                Arguments.of("errors in two declarations", "model M { vocab = 256 }\ntrain M { steps = 5 }\n", """
                t.moe:1:17: error: found `=`, expected <expression> [MOE0001]
                  1 | model M { vocab = 256 }
                    |                 ^
                t.moe:2:17: error: found `=`, expected <expression> [MOE0001]
                  2 | train M { steps = 5 }
                    |                 ^
                """),
                Arguments.of("missing value, then a declaration on the next line", "const A =\nmodel M { vocab = 256 }\n", """
                t.moe:2:1: error: found `model`, expected <expression> [MOE0001]
                  2 | model M { vocab = 256 }
                    | ^^^^^
                t.moe:2:17: error: found `=`, expected <expression> [MOE0001]
                  2 | model M { vocab = 256 }
                    |                 ^
                """),
                Arguments.of("stray closing brace after an error", "model M { vocab = 1 }\n}\n", """
                t.moe:1:17: error: found `=`, expected <expression> [MOE0001]
                  1 | model M { vocab = 1 }
                    |                 ^
                t.moe:2:1: error: found `}`, expected one of: `const`, `ffn`, `import`, `model`, `moe`, `train`, end of file [MOE0001]
                  2 | }
                    | ^
                """),
                Arguments.of("unclosed block swallows the next declaration", "model M {\n  vocab = 1\n\nmodel N { dim = 2 }\n", """
                t.moe:2:9: error: found `=`, expected <expression> [MOE0001]
                  2 |   vocab = 1
                    |         ^
                """),
                Arguments.of("CRLF line endings", "model M {\r\n  vocab = 1\r\n}\r\n", """
                t.moe:2:9: error: found `=`, expected <expression> [MOE0001]
                  2 |   vocab = 1
                    |         ^
                """),
                Arguments.of("lone carriage returns are not line breaks", "model M {\r  vocab = 1\r}\r", """
                t.moe:1:19: error: found `=`, expected <expression> [MOE0001]
                  1 | model M {\uFFFD  vocab = 1\uFFFD}
                    |                   ^
                """),
                Arguments.of("cascade within one declaration", "model M {\n  vocab = 256\n  dim = 128\n  heads ) 4\n}\n", """
                t.moe:2:9: error: found `=`, expected <expression> [MOE0001]
                  2 |   vocab = 256
                    |         ^
                """),
                Arguments.of("lexical errors are all reported", "const A = \"a\\q\"\nconst B = 1e999 $\n", """
                t.moe:1:13: error: invalid escape `\\q` in string [MOE0006]
                  1 | const A = "a\\q"
                    |             ^^
                    = help: the escapes are \\" \\\\ \\n \\t
                t.moe:2:11: error: number `1e999` is out of range (larger than the largest 64-bit float) [MOE0008]
                  2 | const B = 1e999 $
                    |           ^^^^^
                t.moe:2:17: error: invalid character `$` [MOE0004]
                  2 | const B = 1e999 $
                    |                 ^
                """));
    }

    @ParameterizedTest(name = "{0}")
    @MethodSource("cases")
    void rendersExactDiagnostics(String name, String input, String expected) {
        ParseResult result = DslParser.parse(new SourceFile("t.moe", input));
        assertThat(result.ok()).isFalse();
        assertThat(result.file()).isEmpty();
        assertThat(DiagnosticRenderer.renderAll(result.diagnostics())).isEqualTo(expected);
    }

    @Test
    void lexicalProblemsStopAfterTwentyWithANote() {
        ParseResult result = DslParser.parse(new SourceFile("t.moe", "const A = 1 " + "$ ".repeat(25) + "\n"));
        List<Diagnostic> diagnostics = result.diagnostics();
        assertThat(diagnostics).hasSize(20);
        assertThat(diagnostics.stream().map(Diagnostic::code).distinct().toList()).containsExactly(Code.INVALID_CHARACTER);
        assertThat(DiagnosticRenderer.render(diagnostics.getLast())).endsWith("    = note: further problems in this file are not shown\n");
    }

    @Test
    void syntaxIsNotCheckedWhenThereAreLexicalProblems() {
        // `=` would be a syntax error; the unterminated string is reported alone.
        assertThat(render("model M { vocab = \"x }\n")).isEqualTo("""
                t.moe:1:19: error: unterminated string [MOE0002]
                  1 | model M { vocab = "x }
                    |                   ^^^^
                    = help: close the string with `"` on the same line
                """);
    }

    @Test
    void largestExactIntegerIsAccepted() {
        for (String n : List.of("9007199254740992", "0009007199254740992", "9_007_199_254_740_992", "1e300", "4.9e-324")) {
            ParseResult result = DslParser.parse(new SourceFile("t.moe", "const A = " + n + "\n"));
            assertWithMessage("%s: %s", n, result.diagnostics()).that(result.ok()).isTrue();
        }
        assertThat(DslParser.numberProblem("9007199254740993")).contains("out of range");
        assertThat(DslParser.numberProblem("00000000000000000000000001")).isNull();
        // Zero written with an exponent is zero, not an underflow.
        for (String zero : List.of("0e-9", "0.0e-5", "0_0.0_0E-1_2", "0e-999")) {
            assertWithMessage(zero).that(DslParser.numberProblem(zero)).isNull();
        }
        assertThat(DslParser.numberProblem("1e-400")).contains("too small");
        assertThat(DslParser.numberProblem("0.1e-400")).contains("too small");
    }

    @Test
    void everyDiagnosticHasASpanInsideTheFile() {
        cases().forEach(arguments -> {
            String input = (String) arguments.get()[1];
            SourceFile source = new SourceFile("t.moe", input);
            for (Diagnostic d : DslParser.parse(source).diagnostics()) {
                assertWithMessage("%s", d).that(d.span()).isNotNull();
                assertWithMessage("%s", d).that(d.source()).isSameInstanceAs(source);
                assertWithMessage("%s", d).that(d.span().line()).isAtMost(source.lineCount());
                assertWithMessage("%s", d).that(d.span().column()).isAtMost(source.line(d.span().line()).length() + 1);
            }
        });
    }

    /**
     * The exact expected set at any position of a valid file contains the token that is there. (ANTLR's
     * default error handling would drop `+`, `-` and `(` after a complete expression.)
     */
    @ParameterizedTest(name = "{0}")
    @MethodSource("validFiles")
    void exactExpectedSetContainsTheTokenThatWasThere(String name, String text) {
        assertWithMessage("%s does not parse", name).that(DslParser.parse(new SourceFile(name, text)).ok()).isTrue();
        CommonTokenStream stream = new CommonTokenStream(new MoeLexer(CharStreams.fromString(text)));
        stream.fill();
        List<Token> tokens = stream.getTokens();
        for (Token t : tokens) {
            if (t.getChannel() != Token.DEFAULT_CHANNEL) {
                continue;
            }
            IntervalSet expected = DslParser.ExpectedTokens.exactly(tokens, t, Integer.MAX_VALUE);
            assertWithMessage("%s: expected set before %s at %s:%s", name, t.getText(), t.getLine(), t.getCharPositionInLine() + 1)
                    .that(expected == null ? List.of() : expected.toList())
                    .contains(t.getType());
        }
    }

    static Stream<Arguments> validFiles() throws IOException {
        List<Arguments> files = new ArrayList<>();
        try (Stream<Path> recipes = Files.list(Path.of("../recipes"))) {
            recipes.filter(p -> p.toString().endsWith(".moe")).sorted()
                    .forEach(p -> files.add(Arguments.of(p.getFileName().toString(), read(p))));
        }
        files.add(Arguments.of("arithmetic", """
                const A = 2 * (3 + 4) - -1
                const B = A + f(1) - g(a: -2, b: [2, 3,]) x (4)
                """));
        files.add(Arguments.of("layers", """
                model M {
                  layers 4 - 1 {
                    first 1 + 1: attention, dense
                    (-1): attention
                    (rest): a + b, f(c)
                    every 2 from 1 - 1: g(y: 1) + 2
                    rest..2: h
                    N..(M - 1): i
                    all: f
                    (2): g
                  }
                }
                """));
        return files.stream();
    }

    private static String read(Path p) {
        try {
            return Files.readString(p);
        } catch (IOException e) {
            throw new UncheckedIOException(e);
        }
    }
}
