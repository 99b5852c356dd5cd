package dev.moe.dsl;

import dev.moe.dsl.ast.MoeFile;
import dev.moe.dsl.diag.Code;
import dev.moe.dsl.diag.Diagnostic;
import dev.moe.dsl.diag.Diagnostics;
import dev.moe.dsl.grammar.MoeLexer;
import dev.moe.dsl.grammar.MoeParser;
import java.util.ArrayList;
import java.util.List;
import java.util.Optional;
import java.util.concurrent.atomic.AtomicReference;
import org.antlr.v4.runtime.BailErrorStrategy;
import org.antlr.v4.runtime.BaseErrorListener;
import org.antlr.v4.runtime.CharStreams;
import org.antlr.v4.runtime.CommonToken;
import org.antlr.v4.runtime.CommonTokenStream;
import org.antlr.v4.runtime.DefaultErrorStrategy;
import org.antlr.v4.runtime.InputMismatchException;
import org.antlr.v4.runtime.ListTokenSource;
import org.antlr.v4.runtime.NoViableAltException;
import org.antlr.v4.runtime.Parser;
import org.antlr.v4.runtime.ParserRuleContext;
import org.antlr.v4.runtime.RecognitionException;
import org.antlr.v4.runtime.Recognizer;
import org.antlr.v4.runtime.Token;
import org.antlr.v4.runtime.atn.ATN;
import org.antlr.v4.runtime.atn.ATNConfigSet;
import org.antlr.v4.runtime.atn.ParserATNSimulator;
import org.antlr.v4.runtime.atn.PredictionMode;
import org.antlr.v4.runtime.misc.IntervalSet;
import org.antlr.v4.runtime.misc.ParseCancellationException;

/**
 * The one entry point from text to syntax tree. ANTLR's console listeners are removed, the parser
 * never invents or silently drops tokens, and every problem becomes a {@link Diagnostic}:
 *
 * <ul>
 *   <li>lexical problems (bad characters, unterminated strings or comments, numbers out of range,
 *       nesting deeper than {@value #MAX_NESTING}) are found on the token stream before parsing;
 *   <li>a syntax error names what was found and the complete, sorted set of what would have been
 *       valid there, computed exactly by trying each kind of token at that position.
 * </ul>
 *
 * Parsing runs on its own thread with a fixed stack, so the caller's {@code -Xss} does not matter.
 */
public final class DslParser {
    /** Brackets, braces, parentheses and unary signs nest at most this deep (language limit). */
    public static final int MAX_NESTING = 64;

    private static final long PARSER_STACK_BYTES = 16L << 20;
    private static final int MAX_LEXICAL_DIAGNOSTICS = 20;
    /** Past this many tokens before the error, the exact expected-set search is skipped (it reparses). */
    private static final int EXACT_EXPECTED_LIMIT = 50_000;
    private static final double MAX_EXACT_INTEGER = 9007199254740992.0;

    private DslParser() {}

    public static ParseResult parse(SourceFile source) {
        AtomicReference<ParseResult> result = new AtomicReference<>();
        AtomicReference<Throwable> failure = new AtomicReference<>();
        Thread worker = new Thread(null, () -> {
            try {
                result.set(parseOnThisThread(source));
            } catch (Throwable t) {
                failure.set(t);
            }
        }, "moe-parser", PARSER_STACK_BYTES);
        worker.start();
        try {
            worker.join();
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
            throw new IllegalStateException("interrupted while parsing " + source.name(), e);
        }
        if (failure.get() instanceof StackOverflowError) {
            return new ParseResult(source, Optional.empty(), List.of(Diagnostic.error(Code.NESTING_TOO_DEEP, source, Span.START,
                    "file is nested too deeply to parse (stack overflow)")));
        }
        if (failure.get() instanceof RuntimeException e) {
            throw e;
        }
        if (failure.get() instanceof Error e) {
            throw e;
        }
        return result.get();
    }

    private static ParseResult parseOnThisThread(SourceFile source) {
        Diagnostics diagnostics = new Diagnostics();
        MoeLexer lexer = new MoeLexer(CharStreams.fromString(source.text(), source.name()));
        lexer.removeErrorListeners();
        CommonTokenStream tokens = new CommonTokenStream(lexer);
        tokens.fill();

        checkTokens(source, tokens.getTokens(), diagnostics);
        if (diagnostics.hasErrors()) {
            return new ParseResult(source, Optional.empty(), diagnostics.all());
        }
        if (tokens.getTokens().stream().allMatch(t -> t.getType() == Token.EOF || t.getChannel() != Token.DEFAULT_CHANNEL)) {
            diagnostics.error(Code.EMPTY_FILE, source, Span.START, "file is empty: it declares nothing");
            diagnostics.replaceLast(diagnostics.all().getLast().withHelp("declare a `model`, or `ffn`/`moe` definitions for other files to import"));
            return new ParseResult(source, Optional.empty(), diagnostics.all());
        }

        MoeParser parser = newParser(tokens);
        MoeParser.StandaloneFileContext tree;
        try {
            // Fast path: SLL, give up at the first error.
            parser.getInterpreter().setPredictionMode(PredictionMode.SLL);
            parser.setErrorHandler(new BailErrorStrategy());
            tree = parser.standaloneFile();
        } catch (ParseCancellationException sllFailed) {
            tokens.seek(0);
            parser.reset();
            parser.getInterpreter().setPredictionMode(PredictionMode.LL);
            parser.setErrorHandler(new NoInventionStrategy());
            SyntaxErrorCollector collector = new SyntaxErrorCollector(source, tokens.getTokens(), diagnostics);
            parser.addErrorListener(collector);
            tree = parser.standaloneFile();
            if (!diagnostics.hasErrors()) {
                // SLL can fail where LL succeeds; LL's verdict stands.
                return build(source, tree, tokens, diagnostics);
            }
            return new ParseResult(source, Optional.empty(), diagnostics.all());
        }
        return build(source, tree, tokens, diagnostics);
    }

    /** A parser without console listeners whose syntax errors are reported where the input stops matching. */
    private static MoeParser newParser(org.antlr.v4.runtime.TokenStream tokens) {
        MoeParser parser = new MoeParser(tokens);
        parser.removeErrorListeners();
        parser.setInterpreter(new ExactErrorSimulator(parser));
        return parser;
    }

    /**
     * When no alternative of a decision matches the lookahead, ANTLR by default picks an alternative
     * that leaves the current rule (judged by SLL's context-free lookahead) and lets the caller fail.
     * That reports the error too early: in {@code const A = 2 +} it blames the {@code +} (as if an
     * expression could not continue with {@code +}) instead of the missing operand at the end of the
     * file, and it hides {@code +}, {@code -} and {@code (} from the exact expected sets. Instead,
     * the decision is redone with full context, which either predicts the one alternative full LL
     * would have taken, or fails at the token where the input really stops matching. Only the
     * error path changes: on valid input this method is never called.
     */
    private static final class ExactErrorSimulator extends ParserATNSimulator {
        ExactErrorSimulator(MoeParser parser) {
            super(parser, parser.getATN(), parser.getInterpreter().decisionToDFA, parser.getInterpreter().getSharedContextCache());
        }

        @Override
        protected int getSynValidOrSemInvalidAltThatFinishedDecisionEntryRule(ATNConfigSet configs, ParserRuleContext outerContext) {
            if (!configs.fullCtx && _dfa != null && getPredictionMode() != PredictionMode.SLL) {
                ParserRuleContext context = outerContext == null ? ParserRuleContext.EMPTY : outerContext;
                ATNConfigSet start = computeStartState(_dfa.atnStartState, context, true);
                // Throws NoViableAltException at the exact token, or returns full LL's prediction.
                return execATNWithFullContext(_dfa, null, start, _input, _startIndex, context);
            }
            return ATN.INVALID_ALT_NUMBER;
        }
    }

    private static ParseResult build(SourceFile source, MoeParser.StandaloneFileContext tree, CommonTokenStream tokens, Diagnostics diagnostics) {
        MoeFile file = new AstBuilder(source, tokens).build(tree);
        return new ParseResult(source, Optional.of(file), diagnostics.all());
    }

    /** Lexical checks on the whole token stream, so that the parser only sees well-formed tokens. */
    private static void checkTokens(SourceFile source, List<Token> tokens, Diagnostics diagnostics) {
        int lexical = 0;
        int depth = 0;
        int signRun = 0;
        boolean nestingReported = false;
        for (Token t : tokens) {
            if (lexical >= MAX_LEXICAL_DIAGNOSTICS) {
                Diagnostic last = diagnostics.all().getLast();
                diagnostics.replaceLast(last.withNote("further problems in this file are not shown"));
                return;
            }
            Span span = AstBuilder.spanOf(t);
            switch (t.getType()) {
                case MoeLexer.INVALID_CHARACTER -> {
                    diagnostics.error(Code.INVALID_CHARACTER, source, span, "invalid character %s", describeChar(t.getText()));
                    lexical++;
                }
                case MoeLexer.UNTERMINATED_STRING -> {
                    diagnostics.error(Code.UNTERMINATED_STRING, source, span, "unterminated string");
                    diagnostics.replaceLast(diagnostics.all().getLast().withHelp("close the string with `\"` on the same line"));
                    lexical++;
                }
                case MoeLexer.BAD_ESCAPE_STRING -> {
                    diagnostics.error(Code.INVALID_ESCAPE, source, badEscapeSpan(t), "invalid escape `%s` in string", badEscape(t.getText()));
                    diagnostics.replaceLast(diagnostics.all().getLast().withHelp("the escapes are \\\" \\\\ \\n \\t"));
                    lexical++;
                }
                case MoeLexer.BLOCK_COMMENT -> {
                    String text = t.getText();
                    if (text.length() < 4 || !text.endsWith("*/")) {
                        diagnostics.error(Code.UNTERMINATED_COMMENT, source, Span.point(t.getLine(), t.getCharPositionInLine() + 1),
                                "unterminated block comment");
                        diagnostics.replaceLast(diagnostics.all().getLast().withHelp("close it with `*/`"));
                        lexical++;
                    }
                }
                case MoeLexer.NUMBER -> {
                    String problem = numberProblem(t.getText());
                    if (problem != null) {
                        diagnostics.error(Code.NUMBER_OUT_OF_RANGE, source, span, "%s", problem);
                        lexical++;
                    }
                }
                default -> { }
            }
            if (t.getChannel() != Token.DEFAULT_CHANNEL || nestingReported) {
                continue;
            }
            switch (t.getType()) {
                case MoeLexer.LPAREN, MoeLexer.LBRACKET, MoeLexer.LBRACE -> depth++;
                case MoeLexer.RPAREN, MoeLexer.RBRACKET, MoeLexer.RBRACE -> depth = Math.max(0, depth - 1);
                default -> { }
            }
            signRun = (t.getType() == MoeLexer.MINUS || t.getType() == MoeLexer.PLUS) ? signRun + 1 : 0;
            if (depth + signRun > MAX_NESTING) {
                diagnostics.error(Code.NESTING_TOO_DEEP, source, span, "nesting deeper than %d levels", MAX_NESTING);
                diagnostics.replaceLast(diagnostics.all().getLast().withNote("the language limits nesting of brackets, braces, parentheses and signs to " + MAX_NESTING));
                nestingReported = true;
                lexical++;
            }
        }
    }

    private static String describeChar(String text) {
        int cp = text.codePointAt(0);
        if (cp < 0x20 || cp == 0x7f || Character.isISOControl(cp)) {
            return String.format("U+%04X (a control character; is this a binary file?)", cp);
        }
        return "`" + text + "`";
    }

    private static String badEscape(String literal) {
        for (int i = 1; i < literal.length() - 1; i++) {
            if (literal.charAt(i) == '\\') {
                char next = literal.charAt(i + 1);
                if ("\"\\nt".indexOf(next) < 0) {
                    return "\\" + next;
                }
                i++;
            }
        }
        return "\\";
    }

    private static Span badEscapeSpan(Token t) {
        String literal = t.getText();
        for (int i = 1; i < literal.length() - 1; i++) {
            if (literal.charAt(i) == '\\') {
                if ("\"\\nt".indexOf(literal.charAt(i + 1)) < 0) {
                    int col = t.getCharPositionInLine() + 1 + i;
                    return new Span(t.getLine(), col, t.getLine(), col + 2);
                }
                i++;
            }
        }
        return AstBuilder.spanOf(t);
    }

    /** Null when the literal is fine. */
    static String numberProblem(String text) {
        String digits = text.replace("_", "");
        double value;
        try {
            value = Double.parseDouble(digits);
        } catch (NumberFormatException e) {
            return "malformed number `" + text + "`";
        }
        if (Double.isInfinite(value)) {
            return "number `" + text + "` is out of range (larger than the largest 64-bit float)";
        }
        boolean integer = !digits.contains(".") && !digits.contains("e") && !digits.contains("E");
        if (integer && exceedsMaxExactInteger(digits)) {
            return "integer `" + text + "` is out of range (the largest is 2^53 = 9007199254740992)";
        }
        if (!integer && value == 0.0 && mantissa(digits).chars().anyMatch(c -> c >= '1' && c <= '9') && exponentNegative(digits)) {
            return "number `" + text + "` is too small to represent (it rounds to 0)";
        }
        return null;
    }

    /** Compared on the digits: 2^53 + 1 rounds to 2^53 as a double and would pass a comparison of values. */
    private static boolean exceedsMaxExactInteger(String digits) {
        int start = 0;
        while (start < digits.length() - 1 && digits.charAt(start) == '0') {
            start++;
        }
        String significant = digits.substring(start);
        return significant.length() > 16 || Long.parseLong(significant) > (long) MAX_EXACT_INTEGER;
    }

    /** The digits before the exponent: `0e-9` is zero, written exactly, not a value that underflows. */
    private static String mantissa(String digits) {
        int e = Math.max(digits.indexOf('e'), digits.indexOf('E'));
        return e < 0 ? digits : digits.substring(0, e);
    }

    private static boolean exponentNegative(String digits) {
        int e = Math.max(digits.indexOf('e'), digits.indexOf('E'));
        return e >= 0 && e + 1 < digits.length() && digits.charAt(e + 1) == '-';
    }

    /** Error recovery that never inserts or deletes a token to carry on; it resynchronises instead. */
    private static final class NoInventionStrategy extends DefaultErrorStrategy {
        @Override
        public Token recoverInline(Parser recognizer) throws RecognitionException {
            throw new InputMismatchException(recognizer);
        }

        @Override
        protected Token singleTokenDeletion(Parser recognizer) {
            return null;
        }

        @Override
        protected boolean singleTokenInsertion(Parser recognizer) {
            return false;
        }
    }

    /** Turns ANTLR's syntax errors into diagnostics with exact, friendly expected sets. */
    private static final class SyntaxErrorCollector extends BaseErrorListener {
        private final SourceFile source;
        private final List<Token> allTokens;
        private final Diagnostics diagnostics;
        private boolean first = true;
        /** Start token of each top-level declaration that already has an error: one error each, no cascades. */
        private final java.util.Set<Integer> reportedDeclarations = new java.util.HashSet<>();
        /** Bracket depth before each token, computed on the first cascade check. */
        private int[] depthBefore;
        /** Index of the token the last reported error was found at. */
        private int lastReportedToken = -1;

        SyntaxErrorCollector(SourceFile source, List<Token> allTokens, Diagnostics diagnostics) {
            this.source = source;
            this.allTokens = allTokens;
            this.diagnostics = diagnostics;
        }

        @Override
        public void syntaxError(Recognizer<?, ?> recognizer, Object offendingSymbol, int line, int charPositionInLine, String msg,
                RecognitionException e) {
            Token offending = offendingSymbol instanceof Token t ? t : null;
            if (e instanceof NoViableAltException nva && nva.getOffendingToken() != null) {
                offending = nva.getOffendingToken();
            }
            Parser parser = (Parser) recognizer;
            int declaration = enclosingDeclaration(parser);
            int where = declaration >= 0 ? declaration : offending == null ? -1 : offending.getTokenIndex();
            if (!first && where >= 0 && insideBlock(where)) {
                // Recovery resynchronised inside a block that is still open (on `model` in
                // `layers 4 { model: ... }`, or on the `}` that closes it) and took it for the
                // start of a new declaration: a cascade of the error already reported.
                return;
            }
            if (!first && declaration >= 0 && declaration == lastReportedToken && !startsLine(declaration)) {
                // Recovery restarted at the very token just reported, in the middle of a line
                // (`ffn model = ...`): a misused keyword, not a new declaration.
                return;
            }
            if (!reportedDeclarations.add(declaration)) {
                return;
            }
            lastReportedToken = offending == null ? -1 : offending.getTokenIndex();
            IntervalSet expected = null;
            if (first && offending != null) {
                try {
                    expected = ExpectedTokens.exactly(allTokens, offending, EXACT_EXPECTED_LIMIT);
                } catch (RuntimeException ignored) {
                    expected = null; // fall back to ANTLR's own estimate below
                }
            }
            if (expected == null) {
                try {
                    expected = e != null && e.getExpectedTokens() != null ? e.getExpectedTokens() : parser.getExpectedTokens();
                } catch (RuntimeException ignored) {
                    expected = new IntervalSet();
                }
            }
            first = false;
            Span span = offending == null ? Span.point(line, charPositionInLine + 1) : AstBuilder.spanOf(offending);
            String found = offending == null ? "`" + msg + "`" : TokenNames.found(offending);
            List<String> names = TokenNames.expected(expected);
            String message;
            if (names.isEmpty()) {
                message = "unexpected " + found;
            } else if (names.size() == 1) {
                message = "found " + found + ", expected " + names.getFirst();
            } else {
                message = "found " + found + ", expected one of: " + String.join(", ", names);
            }
            diagnostics.error(Code.SYNTAX, source, span, "%s", message);
        }

        /** Whether the token at {@code tokenIndex} is the first grammar token on its line. */
        private boolean startsLine(int tokenIndex) {
            Token token = allTokens.get(tokenIndex);
            for (int i = tokenIndex - 1; i >= 0; i--) {
                Token t = allTokens.get(i);
                if (t.getChannel() == Token.DEFAULT_CHANNEL) {
                    return t.getLine() < token.getLine();
                }
            }
            return true;
        }

        /** Whether the token at {@code tokenIndex} lies inside braces, brackets or parentheses left open before it. */
        private boolean insideBlock(int tokenIndex) {
            if (depthBefore == null) {
                depthBefore = new int[allTokens.size() + 1];
                int depth = 0;
                for (int i = 0; i < allTokens.size(); i++) {
                    depthBefore[i] = depth;
                    Token t = allTokens.get(i);
                    if (t.getChannel() == Token.DEFAULT_CHANNEL) {
                        switch (t.getType()) {
                            case MoeLexer.LPAREN, MoeLexer.LBRACKET, MoeLexer.LBRACE -> depth++;
                            case MoeLexer.RPAREN, MoeLexer.RBRACKET, MoeLexer.RBRACE -> depth = Math.max(0, depth - 1);
                            default -> { }
                        }
                    }
                }
                depthBefore[allTokens.size()] = depth;
            }
            return tokenIndex < depthBefore.length && depthBefore[tokenIndex] > 0;
        }
    }

    /** The start of the top-level declaration the parser is in (-1 between declarations). */
    private static int enclosingDeclaration(Parser parser) {
        ParserRuleContext ctx = parser.getContext();
        while (ctx != null && !(ctx instanceof MoeParser.TopLevelContext)) {
            ctx = ctx.getParent();
        }
        return ctx == null || ctx.start == null ? -1 : ctx.start.getTokenIndex();
    }

    /**
     * The exact set of token kinds that could continue the input just before {@code offending}:
     * each kind is put in its place and the prefix reparsed; the kinds the parser accepts there are
     * the expected set. Syntax errors are rare and files small, so the reparses are cheap.
     */
    static final class ExpectedTokens {
        static IntervalSet exactly(List<Token> allTokens, Token offending, int limit) {
            List<Token> prefix = new ArrayList<>();
            for (Token t : allTokens) {
                if (t.getTokenIndex() >= offending.getTokenIndex()) {
                    break;
                }
                if (t.getChannel() == Token.DEFAULT_CHANNEL) {
                    prefix.add(t);
                }
            }
            if (prefix.size() > limit) {
                return null;
            }
            IntervalSet expected = new IntervalSet();
            for (int type = 1; type <= MoeLexer.VOCABULARY.getMaxTokenType(); type++) {
                if (!TokenNames.isGrammarToken(type)) {
                    continue;
                }
                if (accepts(prefix, type)) {
                    expected.add(type);
                }
            }
            if (accepts(prefix, Token.EOF)) {
                expected.add(Token.EOF);
            }
            return expected.isNil() ? null : expected;
        }

        private static boolean accepts(List<Token> prefix, int type) {
            List<Token> trial = new ArrayList<>(prefix.size() + 2);
            trial.addAll(prefix);
            CommonToken probe = new CommonToken(type, type == Token.EOF ? "<EOF>" : "probe");
            probe.setTokenIndex(prefix.size());
            trial.add(probe);
            if (type != Token.EOF) {
                CommonToken eof = new CommonToken(Token.EOF, "<EOF>");
                eof.setTokenIndex(prefix.size() + 1);
                trial.add(eof);
            }
            MoeParser parser = newParser(new CommonTokenStream(new ListTokenSource(trial)));
            parser.setErrorHandler(new BailErrorStrategy());
            parser.getInterpreter().setPredictionMode(PredictionMode.LL);
            try {
                parser.standaloneFile();
                return true;
            } catch (ParseCancellationException failed) {
                Token at = failed.getCause() instanceof RecognitionException re ? re.getOffendingToken() : null;
                // The probe is accepted when the parse fails only after it (at the end of input).
                return at != null && at.getTokenIndex() > prefix.size();
            }
        }
    }
}
