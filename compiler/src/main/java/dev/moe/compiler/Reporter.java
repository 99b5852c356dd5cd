package dev.moe.compiler;

import dev.moe.dsl.SourceFile;
import dev.moe.dsl.Span;
import dev.moe.dsl.diag.Code;
import dev.moe.dsl.diag.Diagnostic;
import dev.moe.dsl.diag.Diagnostics;
import java.util.ArrayList;
import java.util.Collection;
import java.util.Comparator;
import java.util.LinkedHashSet;
import java.util.List;
import java.util.Locale;
import java.util.Optional;
import java.util.Set;

/** Reports diagnostics for the checker, with "did you mean" suggestions. Counts and continues. */
final class Reporter {
    private final Diagnostics diagnostics = new Diagnostics();
    /** Parameterised moe definitions are checked once per use: report each problem once. */
    private final Set<String> seen = new LinkedHashSet<>();

    Diagnostic error(Code code, SourceFile source, Span span, String format, Object... args) {
        return add(Diagnostic.error(code, source, span, String.format(Locale.ROOT, format, args)));
    }

    Diagnostic warning(Code code, SourceFile source, Span span, String format, Object... args) {
        return add(Diagnostic.warning(code, source, span, String.format(Locale.ROOT, format, args)));
    }

    Diagnostic error(Code code, Value at, String format, Object... args) {
        return error(code, at.source(), at.span(), format, args);
    }

    /** Adds a diagnostic; returns it so that callers can build a variant with notes and {@link #replace} it. */
    Diagnostic add(Diagnostic d) {
        String key = d.code() + "|" + d.file() + "|" + d.span() + "|" + d.message();
        if (seen.add(key)) {
            diagnostics.add(d);
        }
        return d;
    }

    /** Adds notes to a diagnostic just reported: {@code r.help(r.error(...), "...")}. */
    void help(Diagnostic reported, String help) {
        replace(reported, reported.withHelp(help));
    }

    void note(Diagnostic reported, String note) {
        replace(reported, reported.withNote(note));
    }

    private void replace(Diagnostic old, Diagnostic updated) {
        List<Diagnostic> all = diagnostics.all();
        if (!all.isEmpty() && all.getLast().equals(old)) {
            diagnostics.replaceLast(updated);
        }
    }

    int errorCount() {
        return diagnostics.errorCount();
    }

    List<Diagnostic> sorted() {
        return diagnostics.sorted();
    }

    void addAll(List<Diagnostic> ds) {
        ds.forEach(this::add);
    }

    // ---- suggestions ----

    /** The closest candidates by edit distance, or by prefix; empty when nothing is close. */
    static Optional<String> closest(String word, Collection<String> candidates) {
        String best = null;
        int bestDistance = Integer.MAX_VALUE;
        for (String c : candidates.stream().sorted().toList()) {
            int d = distance(word.toLowerCase(Locale.ROOT), c.toLowerCase(Locale.ROOT));
            if (d < bestDistance) {
                bestDistance = d;
                best = c;
            }
        }
        if (best == null) {
            return Optional.empty();
        }
        int allowed = Math.max(1, Math.min(3, word.length() / 3));
        if (bestDistance <= allowed) {
            return Optional.of(best);
        }
        for (String c : candidates.stream().sorted().toList()) {
            if (word.length() >= 3 && (c.startsWith(word) || word.startsWith(c))) {
                return Optional.of(c);
            }
        }
        return Optional.empty();
    }

    /** "did you mean `x`?" or the list of valid choices when there are few. */
    static String suggestion(String word, Collection<String> candidates) {
        Optional<String> close = closest(word, candidates);
        if (close.isPresent()) {
            return "did you mean `" + close.get() + "`?";
        }
        if (candidates.isEmpty()) {
            return null;
        }
        return "expected one of: " + oneOf(candidates);
    }

    static String oneOf(Collection<String> candidates) {
        List<String> sorted = new ArrayList<>(candidates);
        sorted.sort(Comparator.naturalOrder());
        return String.join(", ", sorted.stream().map(s -> "`" + s + "`").toList());
    }

    /** Edit distance with adjacent transpositions (optimal string alignment): `dnese` is 1 from `dense`. */
    static int distance(String a, String b) {
        int[][] d = new int[a.length() + 1][b.length() + 1];
        for (int i = 0; i <= a.length(); i++) {
            d[i][0] = i;
        }
        for (int j = 0; j <= b.length(); j++) {
            d[0][j] = j;
        }
        for (int i = 1; i <= a.length(); i++) {
            for (int j = 1; j <= b.length(); j++) {
                int cost = a.charAt(i - 1) == b.charAt(j - 1) ? 0 : 1;
                d[i][j] = Math.min(Math.min(d[i - 1][j] + 1, d[i][j - 1] + 1), d[i - 1][j - 1] + cost);
                if (i > 1 && j > 1 && a.charAt(i - 1) == b.charAt(j - 2) && a.charAt(i - 2) == b.charAt(j - 1)) {
                    d[i][j] = Math.min(d[i][j], d[i - 2][j - 2] + 1);
                }
            }
        }
        return d[a.length()][b.length()];
    }
}
