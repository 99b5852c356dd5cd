package dev.moe.compiler;

import dev.moe.dsl.SourceFile;
import dev.moe.dsl.Span;
import java.util.List;
import java.util.Optional;

/**
 * An evaluated expression: constants and parameters substituted, arithmetic done. Names that are
 * not constants or parameters stay {@link Word}s (a definition's name or a word like {@code softmax}).
 * Each value keeps where it was written, for diagnostics.
 */
sealed interface Value {
    Span span();

    SourceFile source();

    record Num(Span span, SourceFile source, double value, boolean integral) implements Value {}

    record Str(Span span, SourceFile source, String value) implements Value {}

    record Word(Span span, SourceFile source, String name) implements Value {}

    record Call(Span span, SourceFile source, String callee, Span calleeSpan, List<Arg> args) implements Value {}

    record Arg(Span span, Optional<String> name, Optional<Span> nameSpan, Value value) {}

    record ListV(Span span, SourceFile source, List<Value> items) implements Value {}

    record Repeat(Span span, SourceFile source, Value count, Value spec) implements Value {}

    /** An expression whose error is already reported: readers stay silent about it. */
    record Invalid(Span span, SourceFile source) implements Value {}

    /** The same value, reported at another place (a constant's value at the point of use). */
    default Value at(Span where) {
        return switch (this) {
            case Num n -> new Num(where, n.source(), n.value(), n.integral());
            case Str s -> new Str(where, s.source(), s.value());
            case Word w -> new Word(where, w.source(), w.name());
            case Call c -> new Call(where, c.source(), c.callee(), where, c.args());
            case ListV l -> new ListV(where, l.source(), l.items());
            case Repeat r -> new Repeat(where, r.source(), r.count(), r.spec());
            case Invalid i -> new Invalid(where, i.source());
        };
    }

    /** How the value reads in a message: {@code 3}, {@code "a.txt"}, {@code softmax}, {@code swiglu(...)}. */
    default String show() {
        return switch (this) {
            case Num n -> n.integral() ? Long.toString((long) n.value()) : trimDouble(n.value());
            case Str s -> "\"" + s.value() + "\"";
            case Word w -> w.name();
            case Call c -> c.callee() + "(...)";
            case ListV l -> "[...]";
            case Repeat r -> r.count().show() + " x " + r.spec().show();
            case Invalid i -> "<invalid>";
        };
    }

    /** What kind of value this is, for "expected an integer, found a string". */
    default String kind() {
        return switch (this) {
            case Num n -> n.integral() ? "an integer" : "a number";
            case Str s -> "a string";
            case Word w -> "the name `" + w.name() + "`";
            case Call c -> "a call to `" + c.callee() + "`";
            case ListV l -> "a list";
            case Repeat r -> "an expert group (`n x kind`)";
            case Invalid i -> "an invalid value";
        };
    }

    static String trimDouble(double v) {
        if (v == Math.rint(v) && Math.abs(v) < 1e15) {
            return Long.toString((long) v);
        }
        return Double.toString(v);
    }
}
