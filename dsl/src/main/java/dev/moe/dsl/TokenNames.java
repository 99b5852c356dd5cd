package dev.moe.dsl;

import dev.moe.dsl.grammar.MoeLexer;
import java.util.ArrayList;
import java.util.List;
import java.util.Set;
import java.util.TreeSet;
import org.antlr.v4.runtime.Token;
import org.antlr.v4.runtime.misc.IntervalSet;

/** Friendly names for tokens in syntax errors: `{`, `model`, {@code <number>}, {@code <expression>}. */
final class TokenNames {
    private TokenNames() {}

    private static final Set<Integer> IDENTIFIER_START = Set.of(
            MoeLexer.IDENTIFIER, MoeLexer.FIRST, MoeLexer.EVERY, MoeLexer.FROM, MoeLexer.REST, MoeLexer.ALL, MoeLexer.PARALLEL);

    private static final Set<Integer> EXPRESSION_START = union(IDENTIFIER_START, Set.of(
            MoeLexer.LPAREN, MoeLexer.LBRACKET, MoeLexer.MINUS, MoeLexer.PLUS, MoeLexer.NUMBER, MoeLexer.STRING));

    private static final Set<Integer> ARGUMENT_START = union(EXPRESSION_START, Set.of(
            MoeLexer.IMPORT, MoeLexer.CONST, MoeLexer.FFN, MoeLexer.MOE, MoeLexer.MODEL, MoeLexer.TRAIN,
            MoeLexer.ROUTER, MoeLexer.LAYERS, MoeLexer.STAGE, MoeLexer.DOMAIN));

    /** Token kinds the parser can see (the lexer's error and hidden kinds never reach it). */
    static boolean isGrammarToken(int type) {
        return switch (type) {
            case MoeLexer.UNTERMINATED_STRING, MoeLexer.BAD_ESCAPE_STRING, MoeLexer.LINE_COMMENT, MoeLexer.BLOCK_COMMENT,
                    MoeLexer.WS, MoeLexer.INVALID_CHARACTER -> false;
            default -> true;
        };
    }

    static String found(Token t) {
        if (t.getType() == Token.EOF) {
            return "end of file";
        }
        String text = t.getText();
        if (text.length() > 40) {
            text = text.substring(0, 40) + "...";
        }
        return "`" + text + "`";
    }

    /** Sorted display names, with the starts of an argument, expression or identifier folded into one name. */
    static List<String> expected(IntervalSet set) {
        Set<Integer> types = new TreeSet<>(set.toList());
        TreeSet<String> names = new TreeSet<>();
        if (types.containsAll(ARGUMENT_START)) {
            types.removeAll(ARGUMENT_START);
            names.add("<argument>");
        } else if (types.containsAll(EXPRESSION_START)) {
            types.removeAll(EXPRESSION_START);
            names.add("<expression>");
        } else if (types.containsAll(IDENTIFIER_START)) {
            types.removeAll(IDENTIFIER_START);
            names.add("<identifier>");
        }
        for (int type : types) {
            names.add(name(type));
        }
        return new ArrayList<>(names);
    }

    static String name(int type) {
        return switch (type) {
            case Token.EOF -> "end of file";
            case MoeLexer.IDENTIFIER -> "<identifier>";
            case MoeLexer.NUMBER -> "<number>";
            case MoeLexer.STRING -> "<string>";
            default -> {
                String literal = MoeLexer.VOCABULARY.getLiteralName(type);
                yield literal == null ? "<" + MoeLexer.VOCABULARY.getSymbolicName(type) + ">"
                        : "`" + literal.substring(1, literal.length() - 1) + "`";
            }
        };
    }

    private static Set<Integer> union(Set<Integer> a, Set<Integer> b) {
        Set<Integer> u = new java.util.HashSet<>(a);
        u.addAll(b);
        return Set.copyOf(u);
    }
}
