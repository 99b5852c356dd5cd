package dev.moe.dsl.ast;

import dev.moe.dsl.Span;
import java.util.Optional;

/** Which layers a layer-plan entry applies to. */
public sealed interface Selector extends Node {
    /** {@code 3} or {@code 2..5} (inclusive). */
    record Index(Span span, Expr from, Optional<Expr> to) implements Selector {}

    /** {@code first 3}: layers 0, 1, 2 (the first-k-dense form). */
    record First(Span span, Expr count) implements Selector {}

    /** {@code every 2} (1, 3, 5, ...: every n-th layer) or {@code every 2 from 0} (0, 2, 4, ...). */
    record Every(Span span, Expr step, Optional<Expr> start) implements Selector {}

    /** {@code rest}: every layer no other entry selects. */
    record Rest(Span span) implements Selector {}

    /** {@code all}: every layer. */
    record All(Span span) implements Selector {}
}
