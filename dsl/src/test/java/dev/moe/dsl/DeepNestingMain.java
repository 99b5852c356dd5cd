package dev.moe.dsl;

import dev.moe.dsl.diag.Diagnostic;

/**
 * Run by {@link BadInputTest} in a child JVM with a tiny main-thread stack ({@code -Xss256k}): parses
 * 10^5-deep nestings of each kind and prints, per kind, the codes of the diagnostics. The parser
 * must not depend on the caller's stack size.
 */
public final class DeepNestingMain {
    static final int DEPTH = 100_000;

    private DeepNestingMain() {}

    static String nested(String open, String close) {
        return "const A = " + open.repeat(DEPTH) + "1" + close.repeat(DEPTH) + "\n";
    }

    public static void main(String[] args) {
        String[][] kinds = {{"(", ")"}, {"[", "]"}, {"{", "}"}, {"-", ""}, {"-(", ")"}};
        for (String[] kind : kinds) {
            ParseResult result = DslParser.parse(new SourceFile("deep.moe", nested(kind[0], kind[1])));
            StringBuilder line = new StringBuilder(kind[0]).append(':');
            for (Diagnostic d : result.diagnostics()) {
                line.append(' ').append(d.code().id());
            }
            System.out.println(line);
        }
    }
}
