package dev.moe.dsl;

import java.util.List;
import java.util.Set;
import java.util.function.IntUnaryOperator;

/**
 * Writes random, syntactically valid {@code .moe} text: every construct of the grammar, names that
 * include the soft words, and random layout (spaces, tabs, line breaks, blank lines) with line and
 * block comments between any two tokens. Driven by a choice function so that QuickTheories can
 * replay and shrink it; nesting stays far below {@link DslParser#MAX_NESTING}.
 */
final class RandomMoeSource {
    static final Set<String> RESERVED = Set.of(
            "import", "const", "ffn", "moe", "model", "train", "router", "layers", "stage", "domain", "x");

    private static final List<String> NAMES = List.of(
            "a", "b", "dim", "top_k", "routed", "shared", "balance", "swiglu", "attention", "fine", "dense",
            "softmax", "true", "_", "x1", "xx", "_x", "M", "Tiny2", "first", "every", "from", "rest", "all", "parallel");
    private static final List<String> ARGUMENT_KEYWORDS = List.of(
            "import", "const", "ffn", "moe", "model", "train", "router", "layers", "stage", "domain");
    private static final String NAME_START = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_";
    private static final String NAME_PART = NAME_START + "0123456789";
    private static final List<String> STRING_PIECES = List.of(
            "a", "b", "Z", " ", "0", ".", "/", "*", "-", "{", "}", "//", "/*", "*/", "é", "日本", "\uD83D\uDE00", "'",
            "\\\"", "\\\\", "\\n", "\\t");
    private static final List<String> COMMENT_PIECES = List.of(
            "a", "note", " ", "  ", "0", "é", "\"", "{", "}", "(", "*", "/", "-", "x", "`code`", "\t");

    private final IntUnaryOperator choose;
    private final StringBuilder out = new StringBuilder();

    /** @param choose given n > 0, returns a number in [0, n) */
    RandomMoeSource(IntUnaryOperator choose) {
        this.choose = choose;
    }

    static String generate(IntUnaryOperator choose) {
        RandomMoeSource g = new RandomMoeSource(choose);
        g.file();
        return g.out.toString();
    }

    private int pick(int n) {
        return n <= 1 ? 0 : Math.floorMod(choose.applyAsInt(n), n);
    }

    private boolean chance(int percent) {
        return pick(100) < percent;
    }

    private <T> T oneOf(List<T> items) {
        return items.get(pick(items.size()));
    }

    // ---- tokens and layout ----

    /** Appends a token, with random layout before it, and a space where the two would otherwise merge. */
    private void tok(String token) {
        if (!out.isEmpty()) {
            layout();
            char last = out.charAt(out.length() - 1);
            char next = token.charAt(0);
            boolean merge = (isWordChar(last) && isWordChar(next)) || (last == '/' && (next == '/' || next == '*'))
                    || (last == '.' && next == '.');
            if (merge) {
                out.append(' ');
            }
        }
        out.append(token);
    }

    private static boolean isWordChar(char c) {
        return Character.isLetterOrDigit(c) || c == '_';
    }

    private void layout() {
        int r = pick(100);
        if (r < 45) {
            out.append(' ');
        } else if (r < 55) {
            // nothing (tok() inserts a space if needed)
        } else if (r < 75) {
            out.append('\n').append("  ".repeat(pick(3)));
        } else if (r < 80) {
            out.append("\n\n");
        } else if (r < 83) {
            out.append('\t');
        } else if (r < 90) {
            blockComment();
        } else if (r < 96) {
            lineComment();
        } else {
            out.append("\n\n\n   ");
        }
    }

    /** A space before a comment that would otherwise swallow a preceding `/`. */
    private String commentGap(boolean optional) {
        boolean afterSlash = !out.isEmpty() && out.charAt(out.length() - 1) == '/';
        return afterSlash || (!out.isEmpty() && !optional) ? " " : "";
    }

    private void blockComment() {
        out.append(commentGap(chance(50))).append("/*");
        int n = pick(5);
        for (int i = 0; i < n; i++) {
            String piece = chance(15) ? "\n" : oneOf(COMMENT_PIECES);
            // never close early: avoid `*/` across pieces
            if (piece.startsWith("/") && out.charAt(out.length() - 1) == '*') {
                piece = " " + piece;
            }
            out.append(piece);
        }
        if (out.charAt(out.length() - 1) == '/') {
            out.append(' ');
        }
        out.append("*/");
        if (chance(30)) {
            out.append('\n');
        }
    }

    private void lineComment() {
        out.append(commentGap(chance(30))).append("//");
        int n = pick(5);
        for (int i = 0; i < n; i++) {
            out.append(oneOf(COMMENT_PIECES).replace("\t", " "));
        }
        out.append('\n');
    }

    // ---- names and literals ----

    private String name() {
        if (chance(70)) {
            return oneOf(NAMES);
        }
        StringBuilder b = new StringBuilder().append(NAME_START.charAt(pick(NAME_START.length())));
        int n = pick(6);
        for (int i = 0; i < n; i++) {
            b.append(NAME_PART.charAt(pick(NAME_PART.length())));
        }
        String s = b.toString();
        return RESERVED.contains(s) ? s + "_" : s;
    }

    private String number() {
        return switch (pick(8)) {
            case 0 -> "0";
            case 1 -> Integer.toString(pick(1000));
            case 2 -> "1_000_000";
            case 3 -> pick(10) + "." + pick(100);
            case 4 -> pick(10) + "e-" + pick(20);
            case 5 -> pick(10) + "." + pick(10) + "E+" + pick(5);
            case 6 -> "9007199254740992";
            default -> pick(100) + "e" + pick(3);
        };
    }

    private String string() {
        StringBuilder b = new StringBuilder("\"");
        int n = pick(5);
        for (int i = 0; i < n; i++) {
            b.append(oneOf(STRING_PIECES));
        }
        return b.append('"').toString();
    }

    // ---- expressions ----

    private void expr(int depth) {
        int kinds = depth >= 3 ? 3 : 10;
        switch (pick(kinds)) {
            case 0 -> tok(number());
            case 1 -> tok(name());
            case 2 -> tok(string());
            case 3 -> call(depth);
            case 4 -> {
                tok("[");
                int n = pick(4);
                for (int i = 0; i < n; i++) {
                    if (i > 0) {
                        tok(",");
                    }
                    expr(depth + 1);
                }
                if (n > 0 && chance(25)) {
                    tok(",");
                }
                tok("]");
            }
            case 5 -> {
                tok(chance(80) ? "-" : "+");
                expr(depth + 1);
            }
            case 6 -> {
                expr(depth + 1);
                tok(oneOf(List.of("+", "-", "*", "/")));
                expr(depth + 1);
            }
            case 7 -> {
                expr(depth + 1);
                tok("x");
                expr(depth + 1);
            }
            case 8 -> {
                tok("(");
                expr(depth + 1);
                tok(")");
            }
            default -> {
                tok(number());
                tok("x");
                call(depth);
            }
        }
    }

    private void call(int depth) {
        tok(name());
        tok("(");
        int n = pick(4);
        for (int i = 0; i < n; i++) {
            if (i > 0) {
                tok(",");
            }
            if (chance(70)) {
                tok(chance(15) ? oneOf(ARGUMENT_KEYWORDS) : name());
                tok(":");
            }
            expr(depth + 1);
        }
        tok(")");
    }

    // ---- declarations ----

    private void file() {
        if (chance(20)) {
            if (chance(50)) {
                lineComment();
            } else {
                blockComment();
            }
        }
        int n = 1 + pick(3);
        for (int i = 0; i < n; i++) {
            switch (pick(6)) {
                case 0 -> {
                    tok("import");
                    tok(string());
                }
                case 1 -> {
                    tok("const");
                    tok(name());
                    tok("=");
                    expr(0);
                }
                case 2 -> ffn();
                case 3 -> moe();
                case 4 -> model();
                default -> train();
            }
        }
        if (chance(30)) {
            layout();
        }
    }

    private void ffn() {
        tok("ffn");
        tok(name());
        tok("=");
        expr(0);
    }

    private void setting() {
        tok(name());
        expr(0);
    }

    private void moe() {
        tok("moe");
        tok(name());
        if (chance(60)) {
            tok("(");
            int n = pick(4);
            for (int i = 0; i < n; i++) {
                if (i > 0) {
                    tok(",");
                }
                tok(name());
                if (chance(50)) {
                    tok("=");
                    expr(1);
                }
            }
            tok(")");
        }
        tok("{");
        int n = pick(6);
        for (int i = 0; i < n; i++) {
            switch (pick(5)) {
                case 0 -> {
                    tok("router");
                    if (chance(50)) {
                        tok(name());
                    }
                    block(this::setting, 4);
                }
                case 1 -> {
                    tok(oneOf(List.of("routed", "shared")));
                    tok(Integer.toString(1 + pick(16)));
                    tok("x");
                    expr(1);
                }
                case 2 -> {
                    tok("balance");
                    call(1);
                }
                default -> setting();
            }
        }
        tok("}");
    }

    private void block(Runnable member, int max) {
        tok("{");
        int n = pick(max + 1);
        for (int i = 0; i < n; i++) {
            member.run();
        }
        tok("}");
    }

    private void model() {
        tok("model");
        tok(name());
        tok("{");
        int n = pick(6);
        for (int i = 0; i < n; i++) {
            switch (pick(6)) {
                case 0 -> ffn();
                case 1 -> moe();
                case 2 -> layers();
                default -> setting();
            }
        }
        tok("}");
    }

    private void layers() {
        tok("layers");
        expr(1);
        block(this::layerEntry, 4);
    }

    private void layerEntry() {
        switch (pick(7)) {
            case 0 -> {
                tok("first");
                expr(2);
            }
            case 1 -> {
                tok("every");
                expr(2);
            }
            case 2 -> {
                tok("every");
                expr(2);
                tok("from");
                expr(2);
            }
            case 3 -> tok("rest");
            case 4 -> tok("all");
            case 5 -> {
                selectorBound();
                tok("..");
                selectorBound();
            }
            default -> selectorBound();
        }
        tok(":");
        int n = 1 + pick(3);
        for (int i = 0; i < n; i++) {
            if (i > 0) {
                tok(",");
            }
            expr(2);
        }
    }

    /** A number, a name, or an expression in parentheses. */
    private void selectorBound() {
        switch (pick(3)) {
            case 0 -> tok(number());
            case 1 -> tok(name());
            default -> {
                tok("(");
                expr(2);
                tok(")");
            }
        }
    }

    private void train() {
        tok("train");
        tok(name());
        tok("{");
        int n = pick(6);
        for (int i = 0; i < n; i++) {
            switch (pick(5)) {
                case 0 -> {
                    tok("stage");
                    tok(name());
                    block(this::setting, 4);
                }
                case 1 -> {
                    tok("domain");
                    tok(name());
                    tok("=");
                    tok("file");
                    tok("(");
                    tok(string());
                    tok(")");
                }
                case 2 -> {
                    tok("parallel");
                    block(this::setting, 4);
                }
                default -> setting();
            }
        }
        tok("}");
    }
}
