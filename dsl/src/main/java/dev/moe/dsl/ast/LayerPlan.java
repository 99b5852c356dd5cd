package dev.moe.dsl.ast;

import dev.moe.dsl.Span;
import java.util.List;

/** {@code layers 24 { first 1: attention, dense   rest: attention, fine }} */
public record LayerPlan(Span span, Trivia trivia, Expr count, List<LayerEntry> entries, List<String> closingComments)
        implements ModelMember {
    public LayerPlan {
        entries = List.copyOf(entries);
        closingComments = List.copyOf(closingComments);
    }
}
