package dev.moe.cuda;

import java.util.ArrayList;
import java.util.Comparator;
import java.util.List;

/** Sets of half-open runs {@code {start, end}} of an arena (floats or bytes), kept sorted and disjoint. */
public final class Runs {
    private Runs() {}

    /** The runs sorted, empty ones dropped, overlapping or touching ones merged. */
    public static List<long[]> union(List<long[]> runs) {
        List<long[]> sorted = new ArrayList<>();
        for (long[] r : runs) {
            if (r[1] > r[0]) {
                sorted.add(new long[] {r[0], r[1]});
            }
        }
        sorted.sort(Comparator.comparingLong(r -> r[0]));
        List<long[]> out = new ArrayList<>();
        for (long[] r : sorted) {
            if (!out.isEmpty() && out.getLast()[1] >= r[0]) {
                out.getLast()[1] = Math.max(out.getLast()[1], r[1]);
            } else {
                out.add(r);
            }
        }
        return out;
    }

    /** What of {@code from} lies outside {@code minus}. */
    public static List<long[]> subtract(List<long[]> from, List<long[]> minus) {
        List<long[]> cut = union(minus);
        List<long[]> out = new ArrayList<>();
        for (long[] r : union(from)) {
            long at = r[0];
            for (long[] m : cut) {
                if (m[1] <= at || m[0] >= r[1]) {
                    continue;
                }
                if (m[0] > at) {
                    out.add(new long[] {at, m[0]});
                }
                at = Math.max(at, m[1]);
            }
            if (at < r[1]) {
                out.add(new long[] {at, r[1]});
            }
        }
        return out;
    }

    /** What {@code a} and {@code b} share. */
    public static List<long[]> intersect(List<long[]> a, List<long[]> b) {
        List<long[]> out = new ArrayList<>();
        for (long[] x : union(a)) {
            for (long[] y : union(b)) {
                long s = Math.max(x[0], y[0]), e = Math.min(x[1], y[1]);
                if (s < e) {
                    out.add(new long[] {s, e});
                }
            }
        }
        return union(out);
    }

    /** Every bound times {@code factor} (floats to bytes). */
    public static List<long[]> scale(List<long[]> runs, long factor) {
        return runs.stream().map(r -> new long[] {r[0] * factor, r[1] * factor}).toList();
    }
}
