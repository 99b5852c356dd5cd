package dev.moe.dsl.diag;

import dev.moe.dsl.Span;
import java.util.List;

/**
 * Renders diagnostics for people:
 *
 * <pre>
 * recipes/mixtral.moe:12:16: error: `top_k` (3) exceeds the routed experts (2) [MOE0301]
 *    12 |     top_k 3
 *       |           ^
 *    = help: set `top_k` to at most 2, or declare more routed experts
 * </pre>
 *
 * The caret line copies the source line's leading whitespace (tabs included) so the caret lines up.
 */
public final class DiagnosticRenderer {
    private DiagnosticRenderer() {}

    public static String render(Diagnostic d) {
        StringBuilder out = new StringBuilder(d.headline()).append('\n');
        String gutter = " ".repeat(3);
        if (d.span() != null && d.source() != null) {
            Span span = d.span();
            String number = Integer.toString(span.line());
            gutter = " ".repeat(Math.max(3, number.length() + 1));
            String line = d.source().line(span.line());
            String shown = line.length() > 240 ? line.substring(0, 240) + " ..." : line;
            out.append(padLeft(number, gutter.length())).append(" | ").append(sanitize(shown)).append('\n');
            // Columns count code points (as the lexer does); the line is indexed in UTF-16 chars.
            int start = charIndex(line, span.column() - 1);
            int end = span.endLine() == span.line() ? charIndex(line, span.endColumn() - 1) : line.length();
            int width = Math.max(1, Math.min(end - start, 240));
            StringBuilder indent = new StringBuilder();
            for (int i = 0; i < start && i < 240; i++) {
                indent.append(line.charAt(i) == '\t' ? '\t' : ' ');
            }
            out.append(gutter).append(" | ").append(indent).append("^".repeat(width)).append('\n');
        }
        for (Note note : d.notes()) {
            out.append(gutter).append(" = ").append(note.kind().label()).append(": ").append(note.text()).append('\n');
        }
        return out.toString();
    }

    public static String renderAll(List<Diagnostic> diagnostics) {
        StringBuilder out = new StringBuilder();
        for (Diagnostic d : diagnostics) {
            out.append(render(d));
        }
        return out.toString();
    }

    private static int charIndex(String line, int codePoints) {
        int cps = line.codePointCount(0, line.length());
        return codePoints >= cps ? line.length() : line.offsetByCodePoints(0, Math.max(0, codePoints));
    }

    private static String padLeft(String s, int width) {
        return " ".repeat(Math.max(0, width - s.length())) + s;
    }

    /** Control characters (from binary input) would garble a terminal: show them as U+FFFD. */
    private static String sanitize(String line) {
        StringBuilder b = new StringBuilder(line.length());
        for (int i = 0; i < line.length(); i++) {
            char c = line.charAt(i);
            b.append(c != '\t' && (Character.isISOControl(c)) ? '\uFFFD' : c);
        }
        return b.toString();
    }
}
