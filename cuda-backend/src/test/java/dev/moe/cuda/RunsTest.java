package dev.moe.cuda;

import static com.google.common.truth.Truth.assertThat;

import java.util.ArrayList;
import java.util.List;
import java.util.SplittableRandom;
import org.junit.jupiter.api.Test;

/**
 * The run arithmetic behind an expert-parallel rank's arena (what it keeps, what the ranks sum, which squares are its experts'),
 * against sets of cells: random runs over a short line, every result sorted, disjoint, not touching, and holding exactly the
 * cells it should.
 */
class RunsTest {
    private static final int LINE = 40;

    private static List<long[]> random(SplittableRandom rng) {
        List<long[]> out = new ArrayList<>();
        for (int i = rng.nextInt(5); i > 0; i--) {
            long a = rng.nextInt(LINE + 1), b = rng.nextInt(LINE + 1);
            out.add(new long[] {Math.min(a, b), Math.max(a, b)}); // empty runs too
        }
        return out;
    }

    private static boolean[] cells(List<long[]> runs) {
        boolean[] out = new boolean[LINE];
        for (long[] r : runs) {
            for (long i = r[0]; i < r[1]; i++) {
                out[(int) i] = true;
            }
        }
        return out;
    }

    private static void assertCanonical(List<long[]> runs) {
        for (int i = 0; i < runs.size(); i++) {
            assertThat(runs.get(i)[0]).isLessThan(runs.get(i)[1]);
            if (i > 0) {
                assertThat(runs.get(i)[0]).isGreaterThan(runs.get(i - 1)[1]); // sorted, disjoint and not touching
            }
        }
    }

    @Test
    void unionSubtractAndIntersectHoldExactlyTheirCells() {
        SplittableRandom rng = new SplittableRandom(7);
        for (int trial = 0; trial < 2000; trial++) {
            List<long[]> a = random(rng), b = random(rng);
            boolean[] ca = cells(a), cb = cells(b);
            List<long[]> union = Runs.union(a), minus = Runs.subtract(a, b), both = Runs.intersect(a, b);
            assertCanonical(union);
            assertCanonical(minus);
            assertCanonical(both);
            boolean[] cu = cells(union), cm = cells(minus), ci = cells(both);
            for (int i = 0; i < LINE; i++) {
                assertThat(cu[i]).isEqualTo(ca[i]);
                assertThat(cm[i]).isEqualTo(ca[i] && !cb[i]);
                assertThat(ci[i]).isEqualTo(ca[i] && cb[i]);
            }
        }
    }

    @Test
    void aRankKeepsTheArenaWithoutOtherRanksExperts() {
        // an arena of 100 floats: experts at 10..20, 20..30 (this rank's), 30..40, 60..70 (this rank's)
        List<long[]> experts = List.of(new long[] {10, 20}, new long[] {20, 30}, new long[] {30, 40}, new long[] {60, 70});
        List<long[]> local = List.of(new long[] {20, 30}, new long[] {60, 70});
        List<long[]> keep = Runs.subtract(List.of(new long[] {0, 100}), Runs.subtract(experts, local));
        assertThat(keep.stream().map(r -> r[0] + ".." + r[1]).toList()).containsExactly("0..10", "20..30", "40..100").inOrder();
        List<long[]> replicated = Runs.subtract(List.of(new long[] {0, 100}), experts);
        assertThat(replicated.stream().map(r -> r[0] + ".." + r[1]).toList()).containsExactly("0..10", "40..60", "70..100").inOrder();
        assertThat(Runs.scale(local, 4).getLast()).asList().containsExactly(240L, 280L).inOrder();
    }
}
