package dev.moe.dsl.ast;

import dev.moe.dsl.Span;
import java.util.Optional;

/** A parameter of an moe definition: {@code n} or {@code n = 4}. */
public record Parameter(Span span, Name name, Optional<Expr> defaultValue) implements Node {
}
