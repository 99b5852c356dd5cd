package dev.moe.dsl.ast;

import dev.moe.dsl.Span;
import java.util.List;
import java.util.Optional;

/** {@code router { score softmax  top_k 2 }} or a named gate {@code router text { ... }} */
public record RouterBlock(Span span, Trivia trivia, Optional<Name> name, List<Setting> settings, List<String> closingComments)
        implements MoeMember {
    public RouterBlock {
        settings = List.copyOf(settings);
        closingComments = List.copyOf(closingComments);
    }
}
