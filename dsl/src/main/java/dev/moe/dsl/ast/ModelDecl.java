package dev.moe.dsl.ast;

import dev.moe.dsl.Span;
import java.util.List;

/** {@code model Name { settings, definitions, layers n { ... } }} */
public record ModelDecl(Span span, Trivia trivia, Name name, List<ModelMember> members, List<String> closingComments)
        implements TopLevel {
    public ModelDecl {
        members = List.copyOf(members);
        closingComments = List.copyOf(closingComments);
    }
}
