package dev.moe.dsl.ast;

import dev.moe.dsl.Span;

/** {@code key value}: the one form every setting takes, e.g. {@code top_k 2}, {@code norm rms(eps: 1e-6)}. */
public record Setting(Span span, Trivia trivia, Name key, Expr value) implements ModelMember, MoeMember, TrainMember {
}
