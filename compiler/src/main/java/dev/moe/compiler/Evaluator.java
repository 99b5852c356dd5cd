package dev.moe.compiler;

import dev.moe.dsl.SourceFile;
import dev.moe.dsl.ast.ConstDecl;
import dev.moe.dsl.ast.Expr;
import dev.moe.dsl.diag.Code;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.LinkedHashSet;
import java.util.List;
import java.util.Map;
import java.util.Optional;

/**
 * Evaluates expressions: substitutes constants (lazily, with cycle detection) and parameters, and
 * folds arithmetic. Reports arithmetic on non-numbers, division by zero and cyclic constants.
 */
final class Evaluator {
    private final Reporter reporter;
    private final Map<String, Program.Declared<ConstDecl>> constants;
    private final Map<String, Value> constantValues = new HashMap<>();
    private final LinkedHashSet<String> evaluating = new LinkedHashSet<>();

    Evaluator(Reporter reporter, Map<String, Program.Declared<ConstDecl>> constants) {
        this.reporter = reporter;
        this.constants = constants;
    }

    Value eval(Expr e, SourceFile source) {
        return eval(e, source, Map.of());
    }

    /** @param bound parameter values of the moe definition being instantiated */
    Value eval(Expr e, SourceFile source, Map<String, Value> bound) {
        return switch (e) {
            case Expr.NumberLit n -> new Value.Num(n.span(), source, n.value(), n.isInteger());
            case Expr.StringLit s -> new Value.Str(s.span(), source, s.value());
            case Expr.Ref r -> {
                if (bound.containsKey(r.name())) {
                    yield bound.get(r.name()).at(r.span());
                }
                if (constants.containsKey(r.name())) {
                    yield constant(r.name()).at(r.span());
                }
                yield new Value.Word(r.span(), source, r.name());
            }
            case Expr.Call c -> {
                List<Value.Arg> args = new ArrayList<>();
                for (var a : c.arguments()) {
                    args.add(new Value.Arg(a.span(), a.name().map(n -> n.text()), a.name().map(n -> n.span()), eval(a.value(), source, bound)));
                }
                yield new Value.Call(c.span(), source, c.callee().text(), c.callee().span(), args);
            }
            case Expr.ListExpr l -> new Value.ListV(l.span(), source, l.items().stream().map(i -> eval(i, source, bound)).toList());
            case Expr.Repeat r -> new Value.Repeat(r.span(), source, eval(r.count(), source, bound), eval(r.spec(), source, bound));
            case Expr.Unary u -> {
                Value v = eval(u.operand(), source, bound);
                if (v instanceof Value.Num n) {
                    yield new Value.Num(u.span(), source, u.operator() == '-' ? -n.value() : n.value(), n.integral());
                }
                yield arithmeticError(u.span(), source, v, u.operator());
            }
            case Expr.Binary b -> {
                Value l = eval(b.left(), source, bound);
                Value r = eval(b.right(), source, bound);
                if (!(l instanceof Value.Num ln)) {
                    yield arithmeticError(b.span(), source, l, b.operator());
                }
                if (!(r instanceof Value.Num rn)) {
                    yield arithmeticError(b.span(), source, r, b.operator());
                }
                double x = ln.value();
                double y = rn.value();
                if (b.operator() == '/' && y == 0) {
                    reporter.error(Code.OUT_OF_RANGE, source, b.right().span(), "division by zero");
                    yield new Value.Invalid(b.span(), source);
                }
                double result = switch (b.operator()) {
                    case '+' -> x + y;
                    case '-' -> x - y;
                    case '*' -> x * y;
                    default -> x / y;
                };
                if (Double.isInfinite(result) || Double.isNaN(result)) {
                    reporter.error(Code.NUMBER_OUT_OF_RANGE, source, b.span(), "result of `%s` is out of range", b.operator());
                    yield new Value.Invalid(b.span(), source);
                }
                boolean integral = ln.integral() && rn.integral() && result == Math.rint(result);
                yield new Value.Num(b.span(), source, result, integral);
            }
        };
    }

    private Value arithmeticError(dev.moe.dsl.Span span, SourceFile source, Value operand, char operator) {
        if (operand instanceof Value.Invalid) {
            return new Value.Invalid(span, source);
        }
        if (operand instanceof Value.Word w) {
            var d = reporter.error(Code.UNKNOWN_NAME, operand, "unknown constant `%s`", w.name());
            String s = Reporter.suggestion(w.name(), constants.keySet());
            if (s != null && Reporter.closest(w.name(), constants.keySet()).isPresent()) {
                reporter.help(d, s);
            }
        } else {
            reporter.error(Code.WRONG_TYPE, operand, "`%s` needs numbers, found %s", operator, operand.kind());
        }
        return new Value.Invalid(span, source);
    }

    private Value constant(String name) {
        Value known = constantValues.get(name);
        if (known != null) {
            return known;
        }
        Program.Declared<ConstDecl> decl = constants.get(name);
        if (!evaluating.add(name)) {
            List<String> cycle = new ArrayList<>(evaluating);
            cycle = cycle.subList(cycle.indexOf(name), cycle.size());
            var d = reporter.error(Code.CYCLIC_CONSTANT, decl.source(), decl.node().name().span(),
                    "constant `%s` is defined in terms of itself", name);
            reporter.note(d, "cycle: " + String.join(" -> ", cycle) + " -> " + name);
            Value invalid = new Value.Invalid(decl.node().name().span(), decl.source());
            constantValues.put(name, invalid);
            return invalid;
        }
        Value v = eval(decl.node().value(), decl.source());
        evaluating.remove(name);
        constantValues.putIfAbsent(name, v);
        return constantValues.get(name);
    }

    /** Evaluates every constant once, so that errors in unused constants are reported too. */
    void checkAllConstants() {
        for (String name : constants.keySet()) {
            constant(name);
        }
    }

    Optional<Value> constantValue(String name) {
        return constants.containsKey(name) ? Optional.of(constant(name)) : Optional.empty();
    }
}
