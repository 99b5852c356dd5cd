package dev.moe.dsl.ast;

import dev.moe.dsl.Span;
import java.util.List;

/** {@code parallel { ranks 2  experts contiguous }}: where expert parallelism puts each MoE layer's experts. */
public record ParallelBlock(Span span, Trivia trivia, List<Setting> settings, List<String> closingComments) implements TrainMember {
    public ParallelBlock {
        settings = List.copyOf(settings);
        closingComments = List.copyOf(closingComments);
    }
}
