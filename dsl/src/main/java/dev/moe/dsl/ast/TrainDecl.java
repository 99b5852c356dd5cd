package dev.moe.dsl.ast;

import dev.moe.dsl.Span;
import java.util.List;

/** {@code train ModelName { settings, domain d = ..., stage s { ... } }} */
public record TrainDecl(Span span, Trivia trivia, Name model, List<TrainMember> members, List<String> closingComments)
        implements TopLevel {
    public TrainDecl {
        members = List.copyOf(members);
        closingComments = List.copyOf(closingComments);
    }
}
