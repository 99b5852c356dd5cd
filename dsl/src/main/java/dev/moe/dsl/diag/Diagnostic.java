package dev.moe.dsl.diag;

import dev.moe.dsl.SourceFile;
import dev.moe.dsl.Span;
import java.util.ArrayList;
import java.util.List;
import java.util.Objects;

/**
 * One problem in a {@code .moe} file. The same value feeds every renderer (terminal, Maven, tests).
 *
 * @param file the name the file is reported under
 * @param source the file's text, for the snippet; null when the file could not be read
 * @param span where; null when the problem concerns the whole file
 */
public record Diagnostic(Severity severity, Code code, String file, SourceFile source, Span span, String message, List<Note> notes) {
    public Diagnostic {
        Objects.requireNonNull(severity);
        Objects.requireNonNull(code);
        Objects.requireNonNull(file);
        Objects.requireNonNull(message);
        notes = List.copyOf(notes);
    }

    public static Diagnostic error(Code code, SourceFile source, Span span, String message) {
        return new Diagnostic(Severity.ERROR, code, source.name(), source, span, message, List.of());
    }

    public static Diagnostic warning(Code code, SourceFile source, Span span, String message) {
        return new Diagnostic(Severity.WARNING, code, source.name(), source, span, message, List.of());
    }

    /** A problem with the file as a whole (missing, unreadable), with no position in it. */
    public static Diagnostic fileError(Code code, String file, String message) {
        return new Diagnostic(Severity.ERROR, code, file, null, null, message, List.of());
    }

    public Diagnostic withNote(String text) {
        return with(Note.note(text));
    }

    public Diagnostic withHelp(String text) {
        return with(Note.help(text));
    }

    private Diagnostic with(Note note) {
        List<Note> more = new ArrayList<>(notes);
        more.add(note);
        return new Diagnostic(severity, code, file, source, span, message, more);
    }

    public boolean isError() {
        return severity == Severity.ERROR;
    }

    /** The first line alone: {@code path:line:col: error: message [MOEnnnn]}. */
    public String headline() {
        String where = span == null ? file : file + ":" + span.line() + ":" + span.column();
        return where + ": " + severity.label() + ": " + message + " [" + code.id() + "]";
    }

    @Override
    public String toString() {
        return DiagnosticRenderer.render(this);
    }
}
