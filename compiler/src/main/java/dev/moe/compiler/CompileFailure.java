package dev.moe.compiler;

import dev.moe.dsl.diag.Diagnostic;
import dev.moe.dsl.diag.DiagnosticRenderer;
import java.util.List;

/** Thrown by {@link CompileResult#orThrow()}: a user's file has errors. Always carries at least one. */
public final class CompileFailure extends RuntimeException {
    private final transient List<Diagnostic> diagnostics;

    public CompileFailure(List<Diagnostic> diagnostics) {
        super(diagnostics.isEmpty() ? "compilation failed" : DiagnosticRenderer.renderAll(diagnostics));
        if (diagnostics.stream().noneMatch(Diagnostic::isError)) {
            throw new IllegalArgumentException("a compile failure needs at least one error");
        }
        this.diagnostics = List.copyOf(diagnostics);
    }

    public List<Diagnostic> diagnostics() {
        return diagnostics;
    }
}
