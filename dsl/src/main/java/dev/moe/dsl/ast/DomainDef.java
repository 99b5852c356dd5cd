package dev.moe.dsl.ast;

import dev.moe.dsl.Span;

/** {@code domain code = file("corpus/code.txt")} */
public record DomainDef(Span span, Trivia trivia, Name name, Expr value) implements TrainMember {
}
