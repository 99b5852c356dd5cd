package dev.moe.dsl.ast;

import dev.moe.dsl.Span;
import java.util.List;

/** {@code stage warmup { steps 200  trainable ["**.router.*"]  lr 1e-3 }} */
public record StageBlock(Span span, Trivia trivia, Name name, List<Setting> settings, List<String> closingComments)
        implements TrainMember {
    public StageBlock {
        settings = List.copyOf(settings);
        closingComments = List.copyOf(closingComments);
    }
}
