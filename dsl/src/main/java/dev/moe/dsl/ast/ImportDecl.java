package dev.moe.dsl.ast;

import dev.moe.dsl.Span;

/** {@code import "relative/path.moe"} */
public record ImportDecl(Span span, Trivia trivia, Expr.StringLit path) implements TopLevel {
}
