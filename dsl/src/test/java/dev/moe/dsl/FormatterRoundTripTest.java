package dev.moe.dsl;

import static com.google.common.truth.Truth.assertThat;
import static com.google.common.truth.Truth.assertWithMessage;
import static org.quicktheories.QuickTheory.qt;

import dev.moe.dsl.ast.AstEquivalence;
import dev.moe.dsl.ast.MoeFile;
import dev.moe.dsl.diag.DiagnosticRenderer;
import dev.moe.dsl.grammar.MoeLexer;
import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import java.util.stream.Stream;
import org.antlr.v4.runtime.CharStreams;
import org.antlr.v4.runtime.Token;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.Arguments;
import org.junit.jupiter.params.provider.MethodSource;
import org.quicktheories.core.Gen;
import org.quicktheories.impl.Constraint;

/**
 * {@code parse(format(parse(s)))} is {@code parse(s)} up to layout, formatting is idempotent, and no
 * comment is lost or duplicated: for the recipes, for snippets that cover every construct and every
 * place a comment can stand, and for random valid sources.
 */
class FormatterRoundTripTest {
    private static final Path RECIPES = Path.of("../recipes");

    static MoeFile parseOk(String name, String text) {
        ParseResult result = DslParser.parse(new SourceFile(name, text));
        assertWithMessage("%s does not parse:\n%s\n%s", name, text, DiagnosticRenderer.renderAll(result.diagnostics()))
                .that(result.ok()).isTrue();
        return result.file().orElseThrow();
    }

    /** Every check of this test on one source; returns the formatted text. */
    static String assertRoundTrip(String name, String text) {
        MoeFile original = parseOk(name, text);
        String formatted = MoeFormatter.format(original);
        MoeFile reparsed = parseOk(name + " (formatted)", formatted);
        assertWithMessage("%s: the formatted text means something else\n--- input:\n%s\n--- formatted:\n%s\n--- before:\n%s\n--- after:\n%s",
                name, text, formatted, original, reparsed)
                .that(AstEquivalence.equivalent(original, reparsed)).isTrue();
        assertWithMessage("%s: formatting is not idempotent\n--- input:\n%s", name, text)
                .that(MoeFormatter.format(reparsed)).isEqualTo(formatted);
        assertWithMessage("%s: comments changed\n--- input:\n%s\n--- formatted:\n%s", name, text, formatted)
                .that(comments(formatted)).containsExactlyElementsIn(comments(text));
        return formatted;
    }

    /** The text of every comment token, in order. */
    static List<String> comments(String text) {
        return new MoeLexer(CharStreams.fromString(text)).getAllTokens().stream()
                .filter(t -> t.getType() == MoeLexer.LINE_COMMENT || t.getType() == MoeLexer.BLOCK_COMMENT)
                .map(Token::getText)
                .toList();
    }

    // ---- recipes ----

    static Stream<Path> recipes() throws IOException {
        try (Stream<Path> files = Files.list(RECIPES)) {
            List<Path> moe = files.filter(p -> p.getFileName().toString().endsWith(".moe")).sorted().toList();
            assertWithMessage("no recipes under %s", RECIPES.toAbsolutePath()).that(moe).isNotEmpty();
            return moe.stream();
        }
    }

    @ParameterizedTest(name = "{0}")
    @MethodSource("recipes")
    void recipesRoundTrip(Path recipe) throws IOException {
        String text = Files.readString(recipe);
        String formatted = assertRoundTrip(recipe.getFileName().toString(), text);
        assertWithMessage("%s is not in canonical layout (moe fmt would change it)", recipe).that(formatted).isEqualTo(text);
    }

    // ---- snippets ----

    static Stream<Arguments> snippets() {
        return Stream.of(
                Arguments.of("imports", """
                        import "common.moe"
                        import "dir/with space/x.moe"
                        import "esc\\"aped\\\\\\n\\t.moe"
                        """),
                Arguments.of("const arithmetic and parentheses", """
                        const A = 2 * (3 + 4)
                        const B = (A - 1) / 2 - (1 - (2 - 3))
                        const C = 1_000 * 1e-6 + 2.5E+3 - 0.5
                        const D = -1
                        const E = - -1
                        const F = -(-(1))
                        const G = +-+1 * -(2 + 3)
                        const H = -A * B
                        const I = -(A * B)
                        const J = A / (B * C) * D
                        const K = [1, -2, "three", [4, [5]], f(6)]
                        const L = [1, 2, ]
                        const N = []
                        """),
                Arguments.of("strings with escapes", """
                        const S = "tab\\there, newline\\nthere, quote \\" and backslash \\\\"
                        const U = "unicode é 日本 😀 /* not a comment */ // nor this"
                        const E = ""
                        """),
                Arguments.of("ffn at top level and in a model", """
                        ffn expert = swiglu(hidden: 256)
                        ffn tiny = mlp(hidden: 2 * 32, activation: gelu)
                        model M {
                          ffn dense = swiglu(hidden: 512)
                          dim 128
                        }
                        """),
                Arguments.of("moe with parameters and defaults", """
                        moe plain {
                          routed 8 x swiglu(hidden: 64)
                        }
                        moe empty() {
                        }
                        moe moepp(residual = true, k, n = 2 * (4 + 4), scale = -0.5) {
                          routed n x expert
                          routed 1 x zero
                          routed 1 x copy
                          routed 2 x constant
                          shared 2 x swiglu(hidden: 64)
                          shared 1 x swiglu(hidden: 32, gate: sigmoid)
                          router {
                            score softmax
                            top_k k
                            gating_residual residual
                          }
                          balance aux(coef: 0.01, scope: micro_batch, tau: 0.75)
                          balance z_loss(coef: 1e-4)
                        }
                        """),
                Arguments.of("named and unnamed routers", """
                        moe gates {
                          routed 4 x e
                          router text { top_k 1 }
                          router audio {
                            top_k 2
                            score sigmoid
                          }
                          router { }
                          router {
                          }
                        }
                        """),
                Arguments.of("repeat expressions", """
                        moe r {
                          routed 8 x swiglu(hidden: 64)
                          routed 2 * 4 x swiglu(hidden: 64)
                          routed (2 x a) x b
                          routed 2 x (a x b)
                          routed 2 x a + b
                          routed (2 x a) + b
                          routed -(2 x a)
                        }
                        """),
                Arguments.of("layer plans", """
                        model M {
                          layers 24 {
                            3: attention, dense
                            2..5: attention, fine
                            first 2: attention, dense
                            every 2: attention, mixture(k: 2)
                            every 3 from 1: parallel(attention, fine)
                            rest: attention, fine
                          }
                          layers n * 2 {
                            all: attention, residual(attention, dense, fine)
                          }
                          layers 2 {
                          }
                          layers 4 {
                            (-1): a
                            ((a + b) * 2): c
                            (rest): d
                            (all)..3: e
                            ((first) + 1): f
                            (every - 2): g
                            (first(1)): h
                            first (1): i
                            every (2) from (1): j
                            rest_x: k
                            first: l
                            2..(N - 1): m
                            N..M: n
                            (N)..(2): o
                            ([1]): p
                          }
                        }
                        """),
                Arguments.of("soft words as names", """
                        const first = 1
                        const every = first + 1
                        ffn rest = all(from: every, first: first)
                        moe all(from = 1) {
                          first every
                          rest all
                        }
                        model from {
                          first 1
                          every rest
                        }
                        """),
                Arguments.of("reserved words as argument names", """
                        model Target {
                          init copy(model: Dense, from: "dense.safetensors", import: 1, const: 2, ffn: 3, moe: 4)
                          other f(train: 1, router: 2, layers: 3, stage: 4, domain: 5)
                        }
                        """),
                Arguments.of("train with domains and stages", """
                        train M {
                          optimizer adamw(lr: 3e-4, betas: [0.9, 0.95], weight_decay: 0.1)
                          domain code = file("corpus/code.txt")
                          domain prose = file("a \\"quoted\\" name.txt")
                          data mix(code: 0.25, prose: 0.75)
                          stage warmup {
                            steps 200
                            trainable ["**.router.*", "**.experts.{0..3}.*"]
                            lr 1e-3
                          }
                          stage main {
                            init previous
                          }
                          stage empty { }
                        }
                        """),
                Arguments.of("train with a parallel block, and parallel still a name", """
                        train M {
                          parallel {
                            ranks 2
                            experts per_rank([[0, 1, 2, 3], [4, 5, 6, 7]])
                            experts contiguous(layers: [1, 3])
                            experts file("placement.json")
                          }
                          parallel 3
                        }
                        model parallel {
                          layers 1 {
                            all: parallel(attention, dense)
                          }
                        }
                        """),
                Arguments.of("leading, trailing and end-of-file comments", """
                        // file header
                        // second line

                        /* block header
                           spanning lines */
                        const A = 1  // trailing
                        const B = 2  /* trailing block */
                        // leading B2
                        const B2 = 3
                        // after everything
                        /* and a block
                        */
                        """),
                Arguments.of("comments inside expressions", """
                        const A = 2 * /* inside */ (3 + // line inside
                            4)
                        ffn f = swiglu(/* arg */ hidden: 64 /* after */, // end of line
                            gate: sigmoid)
                        model M {
                          layers 4 {
                            first 1: attention, // between body items
                              dense
                            rest /* before colon */: attention, fine
                          }
                          norm rms(eps: /* eps */ 1e-6)  // trailing
                        }
                        """),
                Arguments.of("comments inside block headers", """
                        model /* name */ M /* before brace */ { // after brace
                          vocab 256
                        }
                        moe m /* params */ (a /* a */ = 1, // next param
                            b) { /* after brace */
                          router /* router */ text /* name */ { // router brace
                            top_k 1
                          }
                        }
                        train /* model */ M {
                          stage /* s */ s /* { */ {
                            lr 1
                          }
                          domain /* d */ d = /* value */ file("x")
                        }
                        model N {
                          layers /* count */ 4 /* { */ { // layers brace
                            all: a
                          }
                        }
                        """),
                Arguments.of("comments before closing braces", """
                        model M {
                          vocab 256
                          // before the model closes
                        }
                        model Empty {
                          // only a comment
                        }
                        moe m {
                          router {
                            top_k 2
                            // before the router closes
                          }
                          /* before the moe closes */
                        }
                        train M {
                          stage s {
                            // in an empty stage
                          }
                        } // after the train block
                        model L {
                          layers 2 {
                            all: a
                            // before the layers close
                          } // after the layers close
                        }
                        """),
                Arguments.of("blank lines", """


                        const A = 1


                        const B = 2
                        model M {

                          vocab 1



                          dim 2

                          // comment after blank lines

                          heads 4
                        }



                        train M {
                          steps 1
                        }


                        """),
                Arguments.of("everything on one line", "const A=1 ffn f=g(h:1) moe m(a=1){routed 2 x f router{top_k 1}} "
                        + "model M{vocab 1 layers 2{first 1:a,b rest:c}} train M{domain d=file(\"x\") stage s{lr 1}}"),
                Arguments.of("tabs and CRLF", "model M {\r\n\tvocab 256\r\n\tlayers 2 {\r\n\t\tall: a // c\r\n\t}\r\n}\r\n"),
                Arguments.of("comment at end of file without newline", "const A = 1\n// last"),
                Arguments.of("block comment at end of file", "const A = 1 /* a */ /* b */"));
    }

    @ParameterizedTest(name = "{0}")
    @MethodSource("snippets")
    void snippetsRoundTrip(String name, String text) {
        assertRoundTrip(name, text);
    }

    @Test
    void canonicalLayout() {
        String formatted = MoeFormatter.format(parseOk("t.moe", """
                // header
                const A=1
                const B = -(-1)
                moe m(a=2){routed a x f(h:1) router r{top_k 1}}
                model M{layers 2{every 2 from 1:x1,(rest)}}
                """));
        assertThat(formatted).isEqualTo("""
                // header
                const A = 1
                const B = -(-1)

                moe m(a = 2) {
                  routed a x f(h: 1)
                  router r {
                    top_k 1
                  }
                }

                model M {
                  layers 2 {
                    every 2 from 1: x1, rest
                  }
                }
                """);
    }

    // ---- random sources ----

    private static final long SEED = 0x5EED_0F_A11L;
    private static final int EXAMPLES = 2000;

    /** Random valid sources; QuickTheories draws each choice, so a failure shrinks. */
    static Gen<String> sources() {
        Gen<String> gen = in -> RandomMoeSource.generate(n -> (int) in.next(Constraint.between(0, n - 1)));
        return gen.describedAs(s -> "\n" + s);
    }

    @Test
    void randomSourcesRoundTrip() {
        qt().withFixedSeed(SEED)
                .withExamples(EXAMPLES)
                .withShrinkCycles(200)
                .forAll(sources())
                .checkAssert(source -> assertRoundTrip("random.moe", source));
    }

    @Test
    void randomSourcesAreVaried() {
        // Guards the generator: the property above is only as good as what it produces.
        java.util.Random random = new java.util.Random(SEED);
        String all = Stream.generate(() -> RandomMoeSource.generate(random::nextInt)).limit(300)
                .reduce("", String::concat);
        for (String construct : List.of("import ", "const ", "ffn ", "moe ", "model ", "train ", "router", "layers",
                "first", "every", "from", "rest", "all", "..", "stage", "parallel {", "domain", " x", "/*", "//", "\\\"", "[", "(")) {
            assertWithMessage("never generated: %s", construct).that(all).contains(construct);
        }
    }
}
