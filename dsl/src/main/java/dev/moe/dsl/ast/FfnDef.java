package dev.moe.dsl.ast;

import dev.moe.dsl.Span;

/** {@code ffn name = swiglu(hidden: 512)}, at the top level or inside a model. */
public record FfnDef(Span span, Trivia trivia, Name name, Expr value) implements TopLevel, ModelMember {
}
