package dev.moe.runtime.data;

import java.util.ArrayDeque;
import java.util.Arrays;
import java.util.Deque;
import java.util.regex.Matcher;
import java.util.regex.Pattern;

/** Independent checkers: whether one line (without its {@code '\n'}) is a correct document of a domain. */
final class Documents {
    private static final Pattern ARITHMETIC = Pattern.compile("(\\d{1,3})([+*-])(\\d{1,3})=(-?\\d+)");
    private static final Pattern COPY = Pattern.compile("copy: ([a-z]{1,8}) -> ([a-z]{1,8})");
    private static final Pattern REVERSE = Pattern.compile("rev: ([a-z]{1,8}) -> ([a-z]{1,8})");
    private static final Pattern SORT = Pattern.compile("sort: ([0-9](?: [0-9]){1,7}) -> ([0-9](?: [0-9]){1,7})");
    private static final Pattern MARKOV = Pattern.compile("[a-z]+(?: [a-z]+){3,11}\\.");
    private static final Pattern BRACKETS = Pattern.compile("brackets: ([(\\[{<)\\]}>]+) -> ([)\\]}>]+)");
    private static final Pattern LOOKUP = Pattern.compile("lookup: ((?:[a-z]=[0-9] ?){2,6}) \\| ([a-z]) -> ([0-9])");

    private Documents() {}

    static boolean valid(String domain, String line) {
        return switch (domain) {
            case "arithmetic" -> arithmetic(line);
            case "copy" -> {
                Matcher m = COPY.matcher(line);
                yield m.matches() && m.group(1).equals(m.group(2));
            }
            case "reverse" -> {
                Matcher m = REVERSE.matcher(line);
                yield m.matches() && new StringBuilder(m.group(1)).reverse().toString().equals(m.group(2));
            }
            case "sort" -> {
                Matcher m = SORT.matcher(line);
                if (!m.matches()) {
                    yield false;
                }
                String[] in = m.group(1).split(" ");
                Arrays.sort(in);
                yield String.join(" ", in).equals(m.group(2));
            }
            case "markov" -> MARKOV.matcher(line).matches();
            case "brackets" -> brackets(line);
            case "lookup" -> lookup(line);
            default -> throw new IllegalArgumentException(domain);
        };
    }

    private static boolean arithmetic(String line) {
        Matcher m = ARITHMETIC.matcher(line);
        if (!m.matches()) {
            return false;
        }
        long a = Long.parseLong(m.group(1));
        long b = Long.parseLong(m.group(3));
        long c = Long.parseLong(m.group(4));
        long expected = switch (m.group(2)) {
            case "+" -> a + b;
            case "-" -> a - b;
            default -> a * b;
        };
        boolean canonical = (m.group(1).length() == 1 || m.group(1).charAt(0) != '0') && (m.group(3).length() == 1 || m.group(3).charAt(0) != '0');
        return canonical && c == expected && Long.toString(c).equals(m.group(4));
    }

    private static boolean brackets(String line) {
        Matcher m = BRACKETS.matcher(line);
        if (!m.matches()) {
            return false;
        }
        String open = "([{<";
        String close = ")]}>";
        Deque<Character> stack = new ArrayDeque<>();
        for (char c : m.group(1).toCharArray()) {
            int o = open.indexOf(c);
            if (o >= 0) {
                stack.push(close.charAt(o));
            } else if (stack.isEmpty() || stack.pop() != c) {
                return false;
            }
        }
        StringBuilder rest = new StringBuilder();
        while (!stack.isEmpty()) {
            rest.append(stack.pop());
        }
        return !rest.isEmpty() && rest.toString().equals(m.group(2));
    }

    private static boolean lookup(String line) {
        Matcher m = LOOKUP.matcher(line);
        if (!m.matches()) {
            return false;
        }
        String[] pairs = m.group(1).trim().split(" ");
        String answer = null;
        boolean[] seen = new boolean[26];
        for (String p : pairs) {
            int k = p.charAt(0) - 'a';
            if (seen[k]) {
                return false;
            }
            seen[k] = true;
            if (p.charAt(0) == m.group(2).charAt(0)) {
                answer = p.substring(2);
            }
        }
        return m.group(3).equals(answer);
    }
}
