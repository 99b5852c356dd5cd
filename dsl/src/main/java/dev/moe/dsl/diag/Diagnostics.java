package dev.moe.dsl.diag;

import dev.moe.dsl.SourceFile;
import dev.moe.dsl.Span;
import java.util.ArrayList;
import java.util.Comparator;
import java.util.List;
import java.util.Locale;

/**
 * Collects diagnostics and keeps going: a phase reports everything it finds, then the caller decides
 * whether the next phase can run ({@code errorCount() == before}).
 */
public final class Diagnostics {
    private final List<Diagnostic> all = new ArrayList<>();
    private int errors;

    public Diagnostic error(Code code, SourceFile source, Span span, String format, Object... args) {
        return add(Diagnostic.error(code, source, span, String.format(Locale.ROOT, format, args)));
    }

    public Diagnostic warning(Code code, SourceFile source, Span span, String format, Object... args) {
        return add(Diagnostic.warning(code, source, span, String.format(Locale.ROOT, format, args)));
    }

    public Diagnostic add(Diagnostic d) {
        all.add(d);
        if (d.isError()) {
            errors++;
        }
        return d;
    }

    /** Replaces the last diagnostic added (used to attach notes after the fact). */
    public void replaceLast(Diagnostic d) {
        Diagnostic old = all.set(all.size() - 1, d);
        if (old.isError() != d.isError()) {
            errors += d.isError() ? 1 : -1;
        }
    }

    public void addAll(List<Diagnostic> ds) {
        ds.forEach(this::add);
    }

    public int errorCount() {
        return errors;
    }

    public boolean hasErrors() {
        return errors > 0;
    }

    /** In file order, then by position, so output is stable whatever order the checks ran in. */
    public List<Diagnostic> sorted() {
        List<Diagnostic> copy = new ArrayList<>(all);
        copy.sort(Comparator.comparing(Diagnostic::file)
                .thenComparingInt(d -> d.span() == null ? 0 : d.span().line())
                .thenComparingInt(d -> d.span() == null ? 0 : d.span().column()));
        return List.copyOf(copy);
    }

    public List<Diagnostic> all() {
        return List.copyOf(all);
    }
}
