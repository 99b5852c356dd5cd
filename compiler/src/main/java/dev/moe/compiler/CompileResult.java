package dev.moe.compiler;

import dev.moe.compiler.ir.CompiledFile;
import dev.moe.dsl.diag.Diagnostic;
import java.util.List;
import java.util.Optional;

/**
 * The outcome of checking one file: its models and recipes when there were no errors, and every
 * diagnostic (warnings may come with a successful result).
 */
public record CompileResult(String file, Optional<CompiledFile> output, List<Diagnostic> diagnostics) {
    public CompileResult {
        diagnostics = List.copyOf(diagnostics);
    }

    public boolean ok() {
        return output.isPresent();
    }

    public long errorCount() {
        return diagnostics.stream().filter(Diagnostic::isError).count();
    }

    /** The checked file, or a {@link CompileFailure} carrying the diagnostics. */
    public CompiledFile orThrow() {
        return output.orElseThrow(() -> new CompileFailure(diagnostics));
    }
}
