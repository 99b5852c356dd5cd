package dev.moe.dsl.ast;

import dev.moe.dsl.Span;
import java.util.List;

/** Values: literals, references, calls, lists, arithmetic and {@code count x spec}. */
public sealed interface Expr extends Node {
    /** A number as written ({@code 1e-6}, {@code 10_000}); {@code value} is what it denotes. */
    record NumberLit(Span span, String text, double value) implements Expr {
        public boolean isInteger() {
            return value == Math.rint(value) && !text.contains(".") && !text.contains("e") && !text.contains("E");
        }
    }

    /** A string; {@code value} has its escapes resolved. */
    record StringLit(Span span, String value) implements Expr {}

    /** A name: a constant, a definition, a parameter, or a word such as {@code softmax} or {@code true}. */
    record Ref(Span span, String name) implements Expr {}

    record Call(Span span, Name callee, List<Argument> arguments) implements Expr {
        public Call {
            arguments = List.copyOf(arguments);
        }
    }

    record ListExpr(Span span, List<Expr> items) implements Expr {
        public ListExpr {
            items = List.copyOf(items);
        }
    }

    record Unary(Span span, char operator, Expr operand) implements Expr {}

    record Binary(Span span, char operator, Expr left, Expr right) implements Expr {}

    /** {@code 8 x swiglu(hidden: 256)}: an expert group of {@code count} experts of one kind. */
    record Repeat(Span span, Expr count, Expr spec) implements Expr {}
}
