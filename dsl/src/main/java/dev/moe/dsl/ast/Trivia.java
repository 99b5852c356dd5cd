package dev.moe.dsl.ast;

import java.util.List;
import java.util.Optional;

/**
 * What surrounds a statement but does not change its meaning: comments (kept, so that {@code moe fmt}
 * loses nothing) and whether a blank line preceded it (layout, ignored by {@link AstEquivalence}).
 *
 * <p>Comments are attached to the statement they precede; a comment inside an expression is moved
 * in front of its statement; a comment after the last statement of a block belongs to the block.
 */
public record Trivia(List<String> leadingComments, Optional<String> trailingComment, boolean blankLineBefore) {
    public static final Trivia NONE = new Trivia(List.of(), Optional.empty(), false);

    public Trivia {
        leadingComments = List.copyOf(leadingComments);
    }
}
