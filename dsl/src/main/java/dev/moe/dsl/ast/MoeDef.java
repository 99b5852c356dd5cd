package dev.moe.dsl.ast;

import dev.moe.dsl.Span;
import java.util.List;

/**
 * {@code moe name(params) { routed 8 x swiglu(hidden: 256)  router { top_k 2 } ... }}
 *
 * @param parameters empty when the definition takes none (with or without {@code ()})
 */
public record MoeDef(Span span, Trivia trivia, Name name, List<Parameter> parameters, List<MoeMember> members,
        List<String> closingComments) implements TopLevel, ModelMember {
    public MoeDef {
        parameters = List.copyOf(parameters);
        members = List.copyOf(members);
        closingComments = List.copyOf(closingComments);
    }
}
