package dev.moe.compiler;

import java.util.ArrayList;
import java.util.List;
import java.util.function.Predicate;
import java.util.regex.Pattern;

/**
 * Parameter-name patterns of {@code trainable}: {@code *} within one dot-separated segment,
 * {@code **} across segments, {@code {a..b}} a number in a range. The checker and the trainer use the
 * same matcher, so a pattern selects at run time exactly what {@code moe check} validated.
 */
public final class Patterns {
    private Patterns() {}

    public static Pattern compile(String pattern) {
        StringBuilder re = new StringBuilder();
        for (int i = 0; i < pattern.length(); i++) {
            char c = pattern.charAt(i);
            if (c == '*' && i + 1 < pattern.length() && pattern.charAt(i + 1) == '*') {
                re.append(".*");
                i++;
            } else if (c == '*') {
                re.append("[^.]*");
            } else if (c == '{') {
                int close = pattern.indexOf('}', i);
                String inner = close < 0 ? "" : pattern.substring(i + 1, close);
                String[] bounds = inner.split("\\.\\.");
                if (close > 0 && bounds.length == 2 && bounds[0].matches("\\d{1,6}") && bounds[1].matches("\\d{1,6}")) {
                    int lo = Integer.parseInt(bounds[0]);
                    int hi = Integer.parseInt(bounds[1]);
                    List<String> alts = new ArrayList<>();
                    for (int k = lo; k <= hi && alts.size() < 10_000; k++) {
                        alts.add(Integer.toString(k));
                    }
                    re.append("(?:").append(String.join("|", alts)).append(")");
                    i = close;
                } else {
                    re.append(Pattern.quote(String.valueOf(c)));
                }
            } else {
                re.append(Pattern.quote(String.valueOf(c)));
            }
        }
        return Pattern.compile(re.toString());
    }

    /** Whether a name matches any of {@code patterns}; an empty list (a stage's default) matches every name. */
    public static Predicate<String> anyOf(List<String> patterns) {
        if (patterns.isEmpty()) {
            return name -> true;
        }
        List<Pattern> compiled = patterns.stream().map(Patterns::compile).toList();
        return name -> compiled.stream().anyMatch(p -> p.matcher(name).matches());
    }
}
