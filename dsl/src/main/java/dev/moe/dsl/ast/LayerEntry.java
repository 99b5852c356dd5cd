package dev.moe.dsl.ast;

import dev.moe.dsl.Span;
import java.util.List;

/** {@code selector: block, ...} e.g. {@code 2..5: attention, fine} or {@code rest: parallel(attention, fine)} */
public record LayerEntry(Span span, Trivia trivia, Selector selector, List<Expr> body) implements Statement {
    public LayerEntry {
        body = List.copyOf(body);
    }
}
