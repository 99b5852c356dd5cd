package dev.moe.dsl.ast;

import dev.moe.dsl.Span;

/** {@code const NAME = expression} */
public record ConstDecl(Span span, Trivia trivia, Name name, Expr value) implements TopLevel {
}
