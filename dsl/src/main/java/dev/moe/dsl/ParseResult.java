package dev.moe.dsl;

import dev.moe.dsl.ast.MoeFile;
import dev.moe.dsl.diag.Diagnostic;
import java.util.List;
import java.util.Optional;

/** A syntax tree when the file parsed, and every diagnostic found on the way. */
public record ParseResult(SourceFile source, Optional<MoeFile> file, List<Diagnostic> diagnostics) {
    public ParseResult {
        diagnostics = List.copyOf(diagnostics);
    }

    public boolean ok() {
        return file.isPresent() && diagnostics.stream().noneMatch(Diagnostic::isError);
    }
}
