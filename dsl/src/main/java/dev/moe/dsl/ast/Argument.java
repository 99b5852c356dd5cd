package dev.moe.dsl.ast;

import dev.moe.dsl.Span;
import java.util.Optional;

/** {@code hidden: 512} or, positionally, {@code 512}. */
public record Argument(Span span, Optional<Name> name, Expr value) implements Node {
}
