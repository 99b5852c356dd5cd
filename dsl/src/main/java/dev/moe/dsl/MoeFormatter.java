package dev.moe.dsl;

import dev.moe.dsl.ast.Argument;
import dev.moe.dsl.ast.ConstDecl;
import dev.moe.dsl.ast.DomainDef;
import dev.moe.dsl.ast.Expr;
import dev.moe.dsl.ast.FfnDef;
import dev.moe.dsl.ast.ImportDecl;
import dev.moe.dsl.ast.LayerEntry;
import dev.moe.dsl.ast.LayerPlan;
import dev.moe.dsl.ast.ModelDecl;
import dev.moe.dsl.ast.MoeDef;
import dev.moe.dsl.ast.MoeFile;
import dev.moe.dsl.ast.Parameter;
import dev.moe.dsl.ast.RouterBlock;
import dev.moe.dsl.ast.Selector;
import dev.moe.dsl.ast.Setting;
import dev.moe.dsl.ast.ParallelBlock;
import dev.moe.dsl.ast.StageBlock;
import dev.moe.dsl.ast.Statement;
import dev.moe.dsl.ast.TopLevel;
import dev.moe.dsl.ast.TrainDecl;
import java.util.List;
import java.util.stream.Collectors;

/**
 * The canonical layout of a {@code .moe} file: two-space indents, one statement per line, one space
 * around binary operators, comments kept where they were attached, at most one blank line in a row,
 * and a blank line around every block at the top level. {@code parse(format(parse(s)))} equals
 * {@code parse(s)} ignoring layout, and formatting is idempotent.
 */
public final class MoeFormatter {
    private static final String INDENT = "  ";

    private static final int REPEAT = 1;
    private static final int ADDITIVE = 2;
    private static final int MULTIPLICATIVE = 3;
    private static final int UNARY = 4;
    private static final int ATOM = 5;

    private final StringBuilder out = new StringBuilder();

    private MoeFormatter() {}

    public static String format(MoeFile file) {
        return BigStack.call("moe-format", () -> {
            MoeFormatter f = new MoeFormatter();
            f.file(file);
            return f.out.toString();
        });
    }

    private void file(MoeFile file) {
        TopLevel previous = null;
        for (TopLevel d : file.declarations()) {
            if (previous != null) {
                boolean bothOneLine = isOneLine(previous) && isOneLine(d) && previous.getClass() == d.getClass();
                if (!bothOneLine || d.trivia().blankLineBefore()) {
                    out.append('\n');
                }
            }
            topLevel(d);
            previous = d;
        }
        if (!file.trailingComments().isEmpty()) {
            if (previous != null) {
                out.append('\n');
            }
            for (String c : file.trailingComments()) {
                comment(0, c);
            }
        }
    }

    private static boolean isOneLine(TopLevel d) {
        return d instanceof ImportDecl || d instanceof ConstDecl || d instanceof FfnDef;
    }

    private void topLevel(TopLevel d) {
        switch (d) {
            case ImportDecl i -> line(0, i, "import " + expr(i.path()));
            case ConstDecl c -> line(0, c, "const " + c.name().text() + " = " + expr(c.value()));
            case FfnDef f -> ffn(0, f);
            case MoeDef m -> moe(0, m);
            case ModelDecl m -> {
                open(0, m, "model " + m.name().text());
                members(1, m.members());
                close(0, m, m.closingComments(), m.members().isEmpty());
            }
            case TrainDecl t -> {
                open(0, t, "train " + t.model().text());
                members(1, t.members());
                close(0, t, t.closingComments(), t.members().isEmpty());
            }
        }
    }

    private void ffn(int depth, FfnDef f) {
        line(depth, f, "ffn " + f.name().text() + " = " + expr(f.value()));
    }

    private void moe(int depth, MoeDef m) {
        String params = m.parameters().isEmpty() ? "" : m.parameters().stream().map(this::parameter).collect(Collectors.joining(", ", "(", ")"));
        open(depth, m, "moe " + m.name().text() + params);
        members(depth + 1, m.members());
        close(depth, m, m.closingComments(), m.members().isEmpty());
    }

    private String parameter(Parameter p) {
        return p.name().text() + p.defaultValue().map(v -> " = " + expr(v)).orElse("");
    }

    private void members(int depth, List<? extends Statement> members) {
        boolean first = true;
        for (Statement s : members) {
            if (!first && s.trivia().blankLineBefore()) {
                out.append('\n');
            }
            first = false;
            member(depth, s);
        }
    }

    private void member(int depth, Statement s) {
        switch (s) {
            case Setting st -> line(depth, st, st.key().text() + " " + expr(st.value()));
            case FfnDef f -> ffn(depth, f);
            case MoeDef m -> moe(depth, m);
            case LayerPlan p -> {
                open(depth, p, "layers " + expr(p.count()));
                members(depth + 1, p.entries());
                close(depth, p, p.closingComments(), p.entries().isEmpty());
            }
            case LayerEntry e -> line(depth, e, selector(e.selector()) + ": "
                    + e.body().stream().map(this::expr).collect(Collectors.joining(", ")));
            case RouterBlock r -> {
                open(depth, r, "router" + r.name().map(n -> " " + n.text()).orElse(""));
                members(depth + 1, r.settings());
                close(depth, r, r.closingComments(), r.settings().isEmpty());
            }
            case StageBlock st -> {
                open(depth, st, "stage " + st.name().text());
                members(depth + 1, st.settings());
                close(depth, st, st.closingComments(), st.settings().isEmpty());
            }
            case ParallelBlock p -> {
                open(depth, p, "parallel");
                members(depth + 1, p.settings());
                close(depth, p, p.closingComments(), p.settings().isEmpty());
            }
            case DomainDef d -> line(depth, d, "domain " + d.name().text() + " = " + expr(d.value()));
            default -> throw new IllegalStateException("not a member: " + s.getClass().getSimpleName());
        }
    }

    private String selector(Selector s) {
        return switch (s) {
            case Selector.Index i -> indexStart(bound(i.from())) + i.to().map(t -> ".." + bound(t)).orElse("");
            case Selector.First f -> "first " + expr(f.count());
            case Selector.Every e -> "every " + expr(e.step()) + e.start().map(v -> " from " + expr(v)).orElse("");
            case Selector.Rest r -> "rest";
            case Selector.All a -> "all";
        };
    }

    /**
     * A layer index that is a soft word would read back as another selector: the index {@code (rest)}
     * as {@code rest}, {@code (all)} as {@code all}. Such an index keeps parentheses.
     */
    private static String indexStart(String from) {
        return SOFT_SELECTOR_START.matcher(from).lookingAt() ? "(" + from + ")" : from;
    }

    private static final java.util.regex.Pattern SOFT_SELECTOR_START = java.util.regex.Pattern.compile("(first|every|rest|all)(?![A-Za-z0-9_])");

    /** A bound of a layer range: a number or name as is, anything else in parentheses. */
    private String bound(Expr e) {
        return e instanceof Expr.NumberLit || e instanceof Expr.Ref ? expr(e) : "(" + expr(e) + ")";
    }

    // ---- lines and blocks ----

    private void leading(int depth, Statement s) {
        for (String c : s.trivia().leadingComments()) {
            comment(depth, c);
        }
    }

    /** A comment on its own line; an empty string stands for a blank line between comments. */
    private void comment(int depth, String c) {
        if (!c.isEmpty()) {
            indent(depth);
            out.append(c);
        }
        out.append('\n');
    }

    private void line(int depth, Statement s, String text) {
        leading(depth, s);
        indent(depth);
        out.append(text);
        s.trivia().trailingComment().ifPresent(c -> out.append("  ").append(c));
        out.append('\n');
    }

    private void open(int depth, Statement s, String header) {
        leading(depth, s);
        indent(depth);
        out.append(header).append(" {\n");
    }

    private void close(int depth, Statement s, List<String> closingComments, boolean emptyBody) {
        if (!emptyBody && !closingComments.isEmpty()) {
            out.append('\n');
        }
        for (String c : closingComments) {
            comment(depth + 1, c);
        }
        indent(depth);
        out.append('}');
        s.trivia().trailingComment().ifPresent(c -> out.append("  ").append(c));
        out.append('\n');
    }

    private void indent(int depth) {
        out.append(INDENT.repeat(depth));
    }

    // ---- expressions ----

    public static String expression(Expr e) {
        return new MoeFormatter().expr(e);
    }

    private String expr(Expr e) {
        return switch (e) {
            case Expr.NumberLit n -> n.text();
            case Expr.StringLit s -> quote(s.value());
            case Expr.Ref r -> r.name();
            case Expr.Call c -> c.callee().text() + c.arguments().stream().map(this::argument).collect(Collectors.joining(", ", "(", ")"));
            case Expr.ListExpr l -> l.items().stream().map(this::expr).collect(Collectors.joining(", ", "[", "]"));
            case Expr.Unary u -> u.operator() + (u.operand() instanceof Expr.Unary ? "(" + expr(u.operand()) + ")" : child(u.operand(), UNARY));
            case Expr.Binary b -> {
                int level = b.operator() == '*' || b.operator() == '/' ? MULTIPLICATIVE : ADDITIVE;
                yield child(b.left(), level) + " " + b.operator() + " " + child(b.right(), level + 1);
            }
            case Expr.Repeat r -> child(r.count(), REPEAT) + " x " + child(r.spec(), REPEAT + 1);
        };
    }

    private String argument(Argument a) {
        return a.name().map(n -> n.text() + ": ").orElse("") + expr(a.value());
    }

    /** Prints {@code e}, in parentheses if it binds less tightly than {@code required}. */
    private String child(Expr e, int required) {
        String text = expr(e);
        return precedence(e) < required ? "(" + text + ")" : text;
    }

    private static int precedence(Expr e) {
        return switch (e) {
            case Expr.Repeat r -> REPEAT;
            case Expr.Binary b -> b.operator() == '*' || b.operator() == '/' ? MULTIPLICATIVE : ADDITIVE;
            case Expr.Unary u -> UNARY;
            default -> ATOM;
        };
    }

    static String quote(String value) {
        StringBuilder b = new StringBuilder("\"");
        for (int i = 0; i < value.length(); i++) {
            char c = value.charAt(i);
            switch (c) {
                case '"' -> b.append("\\\"");
                case '\\' -> b.append("\\\\");
                case '\n' -> b.append("\\n");
                case '\t' -> b.append("\\t");
                default -> b.append(c);
            }
        }
        return b.append('"').toString();
    }
}
