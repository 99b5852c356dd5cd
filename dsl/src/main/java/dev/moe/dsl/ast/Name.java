package dev.moe.dsl.ast;

import dev.moe.dsl.Span;

/** An identifier as written, with where it was written. */
public record Name(Span span, String text) implements Node {
}
