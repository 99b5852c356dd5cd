package dev.moe.dsl.ast;

import dev.moe.dsl.Span;
import java.util.List;

/** A whole file: its declarations in order, and comments after the last one. */
public record MoeFile(Span span, List<TopLevel> declarations, List<String> trailingComments) implements Node {
    public MoeFile {
        declarations = List.copyOf(declarations);
        trailingComments = List.copyOf(trailingComments);
    }
}
