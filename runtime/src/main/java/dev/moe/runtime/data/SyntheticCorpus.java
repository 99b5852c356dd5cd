package dev.moe.runtime.data;

import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Set;

/**
 * The embedded corpus: documents generated from a seed, no download. Each domain has its own
 * structure, so that experts have something to specialise on; every document is ASCII and ends
 * with {@code '\n'}.
 *
 * <ul>
 *   <li>{@code arithmetic}: {@code 37+58=95}, {@code 412-87=325}, {@code 12*34=408} (sums and
 *       differences of 1–3 digit numbers, products of 1–2 digit numbers; differences may be negative);
 *   <li>{@code copy}: {@code copy: xkqz -> xkqz} (1–8 lowercase letters);
 *   <li>{@code reverse}: {@code rev: abcd -> dcba};
 *   <li>{@code sort}: {@code sort: 3 1 2 -> 1 2 3} (2–8 digits, repeats allowed);
 *   <li>{@code markov}: {@code the old man sees the river.} — sentences from a fixed random Markov
 *       chain over {@value #MARKOV_WORDS} words (the chain is the same for every seed);
 *   <li>{@code brackets}: {@code brackets: ([]{( -> )})} — close the still-open brackets;
 *   <li>{@code lookup}: {@code lookup: a=3 k=7 z=1 | k -> 7} — the value of a key;
 *   <li>{@code synthetic}: an equal mixture of all the above, one part per sequence.
 * </ul>
 */
public final class SyntheticCorpus {
    /** The domains with their own generator, in a fixed order. */
    public static final List<String> PARTS = List.of("arithmetic", "copy", "reverse", "sort", "markov", "brackets", "lookup");
    /** The name of the equal mixture of {@link #PARTS}. */
    public static final String SYNTHETIC = "synthetic";
    /** Every built-in domain name: {@link #PARTS} and {@link #SYNTHETIC}. */
    public static final Set<String> DOMAINS;

    static final int MARKOV_WORDS = 40;
    private static final String[] WORDS = {
        "the", "a", "cat", "dog", "sees", "runs", "big", "small", "red", "blue",
        "tree", "house", "river", "over", "under", "and", "quickly", "slowly", "bird", "sings",
        "moon", "sun", "light", "dark", "old", "young", "man", "child", "eats", "bread",
        "stone", "falls", "wind", "blows", "cold", "warm", "near", "far", "boat", "sails",
    };
    private static final int SUCCESSORS = 4;
    /** successor[w][k] and cumulative weight cumulative[w][k] of the chain, built from a fixed seed. */
    private static final int[][] SUCCESSOR = new int[MARKOV_WORDS][SUCCESSORS];
    private static final int[][] CUMULATIVE = new int[MARKOV_WORDS][SUCCESSORS];

    private static final Map<String, Domain> BY_NAME = new LinkedHashMap<>();

    static {
        SplitMix64 chain = new SplitMix64(0x6D61726B6F76L); // "markov"
        for (int w = 0; w < MARKOV_WORDS; w++) {
            boolean[] used = new boolean[MARKOV_WORDS];
            int total = 0;
            for (int k = 0; k < SUCCESSORS; k++) {
                int next;
                do {
                    next = chain.nextInt(MARKOV_WORDS);
                } while (used[next]);
                used[next] = true;
                SUCCESSOR[w][k] = next;
                total += 1 + chain.nextInt(8);
                CUMULATIVE[w][k] = total;
            }
        }
        List<Domain> parts = new ArrayList<>();
        for (String name : PARTS) {
            Domain d = new Generated(name);
            parts.add(d);
            BY_NAME.put(name, d);
        }
        BY_NAME.put(SYNTHETIC, new Mixed(List.copyOf(parts)));
        DOMAINS = java.util.Collections.unmodifiableSet(new java.util.LinkedHashSet<>(BY_NAME.keySet()));
    }

    private SyntheticCorpus() {}

    /** Whether {@code name} is a built-in domain. */
    public static boolean isDomain(String name) {
        return BY_NAME.containsKey(name);
    }

    /** The built-in domain {@code name}. */
    public static Domain domain(String name) {
        Domain d = BY_NAME.get(name);
        if (d == null) {
            throw new IllegalArgumentException("unknown synthetic domain `" + name + "`; one of " + DOMAINS);
        }
        return d;
    }

    /** One document of {@code domain} (a part, or {@code synthetic} for a uniformly chosen part). */
    public static String document(String domain, SplitMix64 rng) {
        StringBuilder sb = new StringBuilder(48);
        switch (domain) {
            case "arithmetic" -> arithmetic(rng, sb);
            case "copy" -> {
                String s = letters(rng, 1, 8);
                sb.append("copy: ").append(s).append(" -> ").append(s);
            }
            case "reverse" -> {
                String s = letters(rng, 1, 8);
                sb.append("rev: ").append(s).append(" -> ").append(new StringBuilder(s).reverse());
            }
            case "sort" -> sort(rng, sb);
            case "markov" -> markov(rng, sb);
            case "brackets" -> brackets(rng, sb);
            case "lookup" -> lookup(rng, sb);
            case SYNTHETIC -> {
                return document(PARTS.get(rng.nextInt(PARTS.size())), rng);
            }
            default -> throw new IllegalArgumentException("unknown synthetic domain `" + domain + "`; one of " + DOMAINS);
        }
        return sb.append('\n').toString();
    }

    /** {@code documents} consecutive documents of {@code domain} from {@code seed}, for previews and tests. */
    public static String text(String domain, long seed, int documents) {
        SplitMix64 rng = new SplitMix64(seed);
        StringBuilder sb = new StringBuilder();
        for (int i = 0; i < documents; i++) {
            sb.append(document(domain, rng));
        }
        return sb.toString();
    }

    private static int number(SplitMix64 rng, int maxDigits) {
        int digits = rng.nextInt(1, maxDigits);
        if (digits == 1) {
            return rng.nextInt(10);
        }
        int lo = (int) Math.pow(10, digits - 1);
        return rng.nextInt(lo, lo * 10 - 1);
    }

    private static void arithmetic(SplitMix64 rng, StringBuilder sb) {
        int op = rng.nextInt(3);
        int maxDigits = op == 2 ? 2 : 3;
        int a = number(rng, maxDigits);
        int b = number(rng, maxDigits);
        int c = switch (op) {
            case 0 -> a + b;
            case 1 -> a - b;
            default -> a * b;
        };
        sb.append(a).append("+-*".charAt(op)).append(b).append('=').append(c);
    }

    private static String letters(SplitMix64 rng, int min, int max) {
        int n = rng.nextInt(min, max);
        char[] cs = new char[n];
        for (int i = 0; i < n; i++) {
            cs[i] = (char) ('a' + rng.nextInt(26));
        }
        return new String(cs);
    }

    private static void sort(SplitMix64 rng, StringBuilder sb) {
        int n = rng.nextInt(2, 8);
        int[] xs = new int[n];
        for (int i = 0; i < n; i++) {
            xs[i] = rng.nextInt(10);
        }
        sb.append("sort:");
        for (int x : xs) {
            sb.append(' ').append(x);
        }
        sb.append(" ->");
        java.util.Arrays.sort(xs);
        for (int x : xs) {
            sb.append(' ').append(x);
        }
    }

    private static void markov(SplitMix64 rng, StringBuilder sb) {
        int n = rng.nextInt(4, 12);
        int w = rng.nextInt(MARKOV_WORDS);
        sb.append(WORDS[w]);
        for (int i = 1; i < n; i++) {
            int[] cum = CUMULATIVE[w];
            int r = rng.nextInt(cum[SUCCESSORS - 1]);
            int k = 0;
            while (r >= cum[k]) {
                k++;
            }
            w = SUCCESSOR[w][k];
            sb.append(' ').append(WORDS[w]);
        }
        sb.append('.');
    }

    private static final String OPEN = "([{<";
    private static final String CLOSE = ")]}>";

    private static void brackets(SplitMix64 rng, StringBuilder sb) {
        int steps = rng.nextInt(1, 12);
        char[] stack = new char[steps + 1];
        int depth = 0;
        sb.append("brackets: ");
        for (int i = 0; i < steps; i++) {
            if (depth == 0 || (depth < 6 && rng.nextInt(5) < 3)) {
                int kind = rng.nextInt(OPEN.length());
                stack[depth++] = CLOSE.charAt(kind);
                sb.append(OPEN.charAt(kind));
            } else {
                sb.append(stack[--depth]);
            }
        }
        if (depth == 0) {
            int kind = rng.nextInt(OPEN.length());
            stack[depth++] = CLOSE.charAt(kind);
            sb.append(OPEN.charAt(kind));
        }
        sb.append(" ->");
        sb.append(' ');
        while (depth > 0) {
            sb.append(stack[--depth]);
        }
    }

    private static void lookup(SplitMix64 rng, StringBuilder sb) {
        int n = rng.nextInt(2, 6);
        boolean[] used = new boolean[26];
        char[] keys = new char[n];
        int[] values = new int[n];
        sb.append("lookup:");
        for (int i = 0; i < n; i++) {
            int k;
            do {
                k = rng.nextInt(26);
            } while (used[k]);
            used[k] = true;
            keys[i] = (char) ('a' + k);
            values[i] = rng.nextInt(10);
            sb.append(' ').append(keys[i]).append('=').append(values[i]);
        }
        int q = rng.nextInt(n);
        sb.append(" | ").append(keys[q]).append(" -> ").append(values[q]);
    }

    /** A part: documents back to back, starting at a random offset into the first. */
    private record Generated(String name) implements Domain {
        @Override
        public int sample(long seed, boolean heldOut, int[] out, int offset, int length) {
            java.util.Objects.checkFromIndexSize(offset, length, out.length);
            SplitMix64 rng = new SplitMix64(seed);
            byte[] doc = SyntheticCorpus.document(name, rng).getBytes(StandardCharsets.US_ASCII);
            int pos = rng.nextInt(doc.length);
            for (int i = 0; i < length; i++) {
                if (pos == doc.length) {
                    doc = SyntheticCorpus.document(name, rng).getBytes(StandardCharsets.US_ASCII);
                    pos = 0;
                }
                out[offset + i] = doc[pos++] & 0xFF;
            }
            return 0;
        }

        @Override
        public Drawn document(long seed, boolean heldOut, int[] out, int offset, int length) {
            java.util.Objects.checkFromIndexSize(offset, length, out.length);
            SplitMix64 rng = new SplitMix64(seed);
            byte[] doc = SyntheticCorpus.document(name, rng).getBytes(StandardCharsets.US_ASCII);
            int from = doc.length > length ? rng.nextInt(doc.length - length + 1) : 0;
            int n = Math.min(length, doc.length);
            for (int i = 0; i < n; i++) {
                out[offset + i] = doc[from + i] & 0xFF;
            }
            return new Drawn(0, n);
        }

        @Override
        public long fingerprint() {
            return SplitMix64.hash("synthetic-corpus/v1/" + name);
        }
    }

    /** {@code synthetic}: each sequence from one part, chosen uniformly. */
    private record Mixed(List<Domain> parts) implements Domain {
        @Override
        public String name() {
            return SYNTHETIC;
        }

        @Override
        public List<String> sources() {
            return PARTS;
        }

        @Override
        public int sample(long seed, boolean heldOut, int[] out, int offset, int length) {
            SplitMix64 rng = new SplitMix64(seed);
            int k = rng.nextInt(parts.size());
            parts.get(k).sample(rng.nextLong(), heldOut, out, offset, length);
            return k;
        }

        @Override
        public Drawn document(long seed, boolean heldOut, int[] out, int offset, int length) {
            SplitMix64 rng = new SplitMix64(seed);
            int k = rng.nextInt(parts.size());
            return new Drawn(k, parts.get(k).document(rng.nextLong(), heldOut, out, offset, length).length());
        }

        @Override
        public long fingerprint() {
            return SplitMix64.hash("synthetic-corpus/v1/" + SYNTHETIC);
        }
    }
}
