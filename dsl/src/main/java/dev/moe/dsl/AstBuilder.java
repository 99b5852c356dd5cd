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
import dev.moe.dsl.ast.ModelMember;
import dev.moe.dsl.ast.MoeDef;
import dev.moe.dsl.ast.MoeFile;
import dev.moe.dsl.ast.MoeMember;
import dev.moe.dsl.ast.Name;
import dev.moe.dsl.ast.Parameter;
import dev.moe.dsl.ast.RouterBlock;
import dev.moe.dsl.ast.Selector;
import dev.moe.dsl.ast.Setting;
import dev.moe.dsl.ast.ParallelBlock;
import dev.moe.dsl.ast.StageBlock;
import dev.moe.dsl.ast.TopLevel;
import dev.moe.dsl.ast.TrainDecl;
import dev.moe.dsl.ast.TrainMember;
import dev.moe.dsl.ast.Trivia;
import dev.moe.dsl.grammar.MoeLexer;
import dev.moe.dsl.grammar.MoeParser;
import java.util.ArrayList;
import java.util.List;
import java.util.Optional;
import org.antlr.v4.runtime.CommonTokenStream;
import org.antlr.v4.runtime.ParserRuleContext;
import org.antlr.v4.runtime.Token;
import org.antlr.v4.runtime.tree.TerminalNode;

/**
 * Parse tree to syntax tree, for a file that parsed without errors. Statements are built in source
 * order so that comments can be attached as they are met (see {@link Trivia}).
 */
final class AstBuilder {
    private final SourceFile source;
    private final List<Token> tokens;
    private final boolean[] claimed;

    AstBuilder(SourceFile source, CommonTokenStream stream) {
        this.source = source;
        this.tokens = stream.getTokens();
        this.claimed = new boolean[tokens.size()];
    }

    MoeFile build(MoeParser.StandaloneFileContext ctx) {
        List<TopLevel> declarations = new ArrayList<>();
        for (MoeParser.TopLevelContext t : ctx.topLevel()) {
            declarations.add(topLevel(t));
        }
        List<String> trailing = commentsBefore(ctx.EOF().getSymbol().getTokenIndex());
        // Never lose a comment: anything the rules above did not place goes to the end of the file.
        for (int i = 0; i < tokens.size(); i++) {
            if (isComment(tokens.get(i)) && !claimed[i]) {
                claimed[i] = true;
                trailing.add(tokens.get(i).getText());
            }
        }
        return new MoeFile(span(ctx), declarations, trailing);
    }

    private TopLevel topLevel(MoeParser.TopLevelContext ctx) {
        return switch (ctx) {
            case MoeParser.ImportDeclarationContext c -> {
                Trivia trivia = trivia(c, c.stop);
                yield new ImportDecl(span(c), trivia, stringLit(c.path));
            }
            case MoeParser.ConstDeclarationContext c -> {
                Trivia trivia = trivia(c, c.stop);
                yield new ConstDecl(span(c), trivia, name(c.name), expr(c.value));
            }
            case MoeParser.DefinitionDeclarationContext c -> (TopLevel) definition(c.definition());
            case MoeParser.ModelDeclarationContext c -> {
                Trivia trivia = trivia(c, c.LBRACE().getSymbol());
                List<ModelMember> members = new ArrayList<>();
                for (MoeParser.ModelMemberContext m : c.modelMember()) {
                    members.add(modelMember(m));
                }
                yield new ModelDecl(span(c), trivia, name(c.name), members, closing(c.RBRACE()));
            }
            case MoeParser.TrainDeclarationContext c -> {
                Trivia trivia = trivia(c, c.LBRACE().getSymbol());
                List<TrainMember> members = new ArrayList<>();
                for (MoeParser.TrainMemberContext m : c.trainMember()) {
                    members.add(trainMember(m));
                }
                yield new TrainDecl(span(c), trivia, name(c.model), members, closing(c.RBRACE()));
            }
            default -> throw new IllegalStateException("unhandled declaration " + ctx.getClass().getSimpleName());
        };
    }

    private ModelMember definition(MoeParser.DefinitionContext ctx) {
        return switch (ctx) {
            case MoeParser.FfnDefinitionContext c -> {
                Trivia trivia = trivia(c, c.stop);
                yield new FfnDef(span(c), trivia, name(c.name), expr(c.value));
            }
            case MoeParser.MoeDefinitionContext c -> {
                Trivia trivia = trivia(c, c.LBRACE().getSymbol());
                List<Parameter> parameters = new ArrayList<>();
                if (c.parameterList() != null) {
                    for (MoeParser.ParameterContext p : c.parameterList().parameter()) {
                        parameters.add(new Parameter(span(p), name(p.name), Optional.ofNullable(p.defaultValue).map(this::expr)));
                    }
                }
                List<MoeMember> members = new ArrayList<>();
                for (MoeParser.MoeMemberContext m : c.moeMember()) {
                    members.add(moeMember(m));
                }
                yield new MoeDef(span(c), trivia, name(c.name), parameters, members, closing(c.RBRACE()));
            }
            default -> throw new IllegalStateException("unhandled definition " + ctx.getClass().getSimpleName());
        };
    }

    private ModelMember modelMember(MoeParser.ModelMemberContext ctx) {
        return switch (ctx) {
            case MoeParser.ModelDefinitionContext c -> definition(c.definition());
            case MoeParser.LayerPlanContext c -> {
                Trivia trivia = trivia(c, c.LBRACE().getSymbol());
                Expr count = expr(c.count);
                List<LayerEntry> entries = new ArrayList<>();
                for (MoeParser.LayerEntryContext e : c.layerEntry()) {
                    Trivia entryTrivia = trivia(e, e.stop);
                    List<Expr> body = e.expression().stream().map(this::expr).toList();
                    entries.add(new LayerEntry(span(e), entryTrivia, selector(e.selector()), body));
                }
                yield new LayerPlan(span(c), trivia, count, entries, closing(c.RBRACE()));
            }
            case MoeParser.ModelSettingContext c -> setting(c.setting());
            default -> throw new IllegalStateException("unhandled model member " + ctx.getClass().getSimpleName());
        };
    }

    private Selector selector(MoeParser.SelectorContext ctx) {
        return switch (ctx) {
            case MoeParser.FirstSelectorContext c -> new Selector.First(span(c), expr(c.count));
            case MoeParser.EverySelectorContext c -> new Selector.Every(span(c), expr(c.step), Optional.ofNullable(c.start).map(this::expr));
            case MoeParser.RestSelectorContext c -> new Selector.Rest(span(c));
            case MoeParser.AllSelectorContext c -> new Selector.All(span(c));
            case MoeParser.IndexSelectorContext c -> new Selector.Index(span(c), bound(c.from), Optional.ofNullable(c.to).map(this::bound));
            default -> throw new IllegalStateException("unhandled selector " + ctx.getClass().getSimpleName());
        };
    }

    private Expr bound(MoeParser.SelectorBoundContext ctx) {
        return switch (ctx) {
            case MoeParser.NumberBoundContext c -> {
                String text = c.NUMBER().getText();
                yield new Expr.NumberLit(span(c), text, Double.parseDouble(text.replace("_", "")));
            }
            case MoeParser.NameBoundContext c -> new Expr.Ref(span(c), c.identifier().getText());
            case MoeParser.ExpressionBoundContext c -> expr(c.expression());
            default -> throw new IllegalStateException("unhandled selector bound " + ctx.getClass().getSimpleName());
        };
    }

    private MoeMember moeMember(MoeParser.MoeMemberContext ctx) {
        return switch (ctx) {
            case MoeParser.RouterBlockContext c -> {
                Trivia trivia = trivia(c, c.LBRACE().getSymbol());
                List<Setting> settings = c.setting().stream().map(this::setting).toList();
                yield new RouterBlock(span(c), trivia, Optional.ofNullable(c.name).map(this::name), settings, closing(c.RBRACE()));
            }
            case MoeParser.MoeSettingContext c -> setting(c.setting());
            default -> throw new IllegalStateException("unhandled moe member " + ctx.getClass().getSimpleName());
        };
    }

    private TrainMember trainMember(MoeParser.TrainMemberContext ctx) {
        return switch (ctx) {
            case MoeParser.StageBlockContext c -> {
                Trivia trivia = trivia(c, c.LBRACE().getSymbol());
                List<Setting> settings = c.setting().stream().map(this::setting).toList();
                yield new StageBlock(span(c), trivia, name(c.name), settings, closing(c.RBRACE()));
            }
            case MoeParser.ParallelBlockContext c -> {
                Trivia trivia = trivia(c, c.LBRACE().getSymbol());
                List<Setting> settings = c.setting().stream().map(this::setting).toList();
                yield new ParallelBlock(span(c), trivia, settings, closing(c.RBRACE()));
            }
            case MoeParser.DomainDefinitionContext c -> {
                Trivia trivia = trivia(c, c.stop);
                yield new DomainDef(span(c), trivia, name(c.name), expr(c.value));
            }
            case MoeParser.TrainSettingContext c -> setting(c.setting());
            default -> throw new IllegalStateException("unhandled train member " + ctx.getClass().getSimpleName());
        };
    }

    private Setting setting(MoeParser.SettingContext ctx) {
        Trivia trivia = trivia(ctx, ctx.stop);
        return new Setting(span(ctx), trivia, name(ctx.key), expr(ctx.value));
    }

    private Expr expr(MoeParser.ExpressionContext ctx) {
        return switch (ctx) {
            case MoeParser.ParenthesizedContext c -> expr(c.inner);
            case MoeParser.CallContext c -> new Expr.Call(span(c), name(c.name), c.argument().stream().map(this::argument).toList());
            case MoeParser.ListContext c -> new Expr.ListExpr(span(c), c.expression().stream().map(this::expr).toList());
            case MoeParser.UnaryContext c -> new Expr.Unary(span(c), c.op.getText().charAt(0), expr(c.operand));
            case MoeParser.MultiplicativeContext c -> new Expr.Binary(span(c), c.op.getText().charAt(0), expr(c.left), expr(c.right));
            case MoeParser.AdditiveContext c -> new Expr.Binary(span(c), c.op.getText().charAt(0), expr(c.left), expr(c.right));
            case MoeParser.RepeatContext c -> new Expr.Repeat(span(c), expr(c.count), expr(c.spec));
            case MoeParser.NumberContext c -> {
                String text = c.NUMBER().getText();
                yield new Expr.NumberLit(span(c), text, Double.parseDouble(text.replace("_", "")));
            }
            case MoeParser.StringContext c -> stringLit(c.STRING().getSymbol());
            case MoeParser.ReferenceContext c -> new Expr.Ref(span(c), c.identifier().getText());
            default -> throw new IllegalStateException("unhandled expression " + ctx.getClass().getSimpleName());
        };
    }

    private Argument argument(MoeParser.ArgumentContext ctx) {
        Optional<Name> name = ctx.name == null ? Optional.empty() : Optional.of(new Name(span(ctx.name), ctx.name.getText()));
        return new Argument(span(ctx), name, expr(ctx.value));
    }

    private Name name(MoeParser.IdentifierContext ctx) {
        return new Name(span(ctx), ctx.getText());
    }

    private Expr.StringLit stringLit(Token t) {
        String raw = t.getText();
        StringBuilder value = new StringBuilder(raw.length());
        for (int i = 1; i < raw.length() - 1; i++) {
            char c = raw.charAt(i);
            if (c == '\\') {
                char next = raw.charAt(++i);
                value.append(switch (next) {
                    case 'n' -> '\n';
                    case 't' -> '\t';
                    default -> next;
                });
            } else {
                value.append(c);
            }
        }
        return new Expr.StringLit(spanOf(t), value.toString());
    }

    // ---- comments ----

    /**
     * Leading comments (those just before the statement, plus any inside its header or expression,
     * which move in front of it), the comment on the same line after it, and whether a blank line
     * came before it.
     *
     * @param headerEnd the last token whose comments move in front: the statement's last token, or
     *     the {@code {} of a block (comments inside the block belong to its members)
     */
    private Trivia trivia(ParserRuleContext ctx, Token headerEnd) {
        int start = ctx.start.getTokenIndex();
        List<String> leading = commentsBefore(start);
        int firstIndex = start;
        for (int i = start - 1; i >= 0 && isComment(tokens.get(i)); i--) {
            firstIndex = i;
        }
        for (int i = start; i <= headerEnd.getTokenIndex(); i++) {
            if (isComment(tokens.get(i)) && !claimed[i]) {
                claimed[i] = true;
                leading.add(tokens.get(i).getText());
            }
        }
        Token closeOrStop = ctx.stop;
        Optional<String> trailing = Optional.empty();
        int next = closeOrStop.getTokenIndex() + 1;
        if (next < tokens.size() && isComment(tokens.get(next)) && !claimed[next]
                && tokens.get(next).getLine() == endLine(closeOrStop)) {
            claimed[next] = true;
            trailing = Optional.of(tokens.get(next).getText());
        }
        boolean blankLine = false;
        if (firstIndex > 0) {
            Token previous = tokens.get(firstIndex - 1);
            blankLine = previous.getType() != MoeLexer.LBRACE && tokens.get(firstIndex).getLine() - endLine(previous) >= 2;
        }
        return new Trivia(leading, trailing, blankLine);
    }

    /**
     * Unclaimed comments between the previous grammar token and {@code index}. A blank line between
     * two of them, or between the last and the token at {@code index}, is kept as an empty string,
     * so that {@code moe fmt} keeps a header comment apart from the declaration below it.
     */
    private List<String> commentsBefore(int index) {
        int first = index;
        while (first > 0 && tokens.get(first - 1).getChannel() != Token.DEFAULT_CHANNEL) {
            first--;
        }
        List<String> comments = new ArrayList<>();
        Token previous = null;
        for (int i = first; i < index; i++) {
            Token t = tokens.get(i);
            if (isComment(t) && !claimed[i]) {
                claimed[i] = true;
                if (previous != null && t.getLine() - endLine(previous) >= 2) {
                    comments.add("");
                }
                comments.add(t.getText());
                previous = t;
            }
        }
        if (previous != null && index < tokens.size() && tokens.get(index).getType() != Token.EOF
                && tokens.get(index).getType() != MoeLexer.RBRACE && tokens.get(index).getLine() - endLine(previous) >= 2) {
            comments.add("");
        }
        return comments;
    }

    private List<String> closing(TerminalNode closeBrace) {
        return commentsBefore(closeBrace.getSymbol().getTokenIndex());
    }

    private static boolean isComment(Token t) {
        return t.getType() == MoeLexer.LINE_COMMENT || t.getType() == MoeLexer.BLOCK_COMMENT;
    }

    private static int endLine(Token t) {
        String text = t.getText();
        int line = t.getLine();
        if (text != null) {
            for (int i = 0; i < text.length(); i++) {
                if (text.charAt(i) == '\n') {
                    line++;
                }
            }
        }
        return line;
    }

    // ---- spans ----

    private static Span span(ParserRuleContext ctx) {
        Token start = ctx.start;
        Token stop = ctx.stop == null || ctx.stop.getTokenIndex() < start.getTokenIndex() ? start : ctx.stop;
        Span first = spanOf(start);
        Span last = spanOf(stop);
        return first.to(last);
    }

    static Span spanOf(Token t) {
        int line = Math.max(1, t.getLine());
        int column = Math.max(0, t.getCharPositionInLine()) + 1;
        if (t.getType() == Token.EOF) {
            return Span.point(line, column);
        }
        String text = t.getText() == null ? "" : t.getText();
        int newline = text.indexOf('\n');
        int length = newline >= 0 ? newline : text.length();
        return new Span(line, column, line, column + Math.max(1, length));
    }
}
