package dev.moe.cuda.dist;

import static com.google.common.truth.Truth.assertThat;
import static org.junit.jupiter.api.Assertions.assertThrows;

import java.util.Arrays;
import java.util.Random;
import org.junit.jupiter.api.Test;

class ExpertPlacementTest {

    @Test
    void contiguousBlocksGiveTheRemainderToTheFirstRanks() {
        ExpertPlacement p = ExpertPlacement.contiguous(8, 3);
        assertThat(p.expertsOf(0)).asList().containsExactly(0, 1, 2).inOrder();
        assertThat(p.expertsOf(1)).asList().containsExactly(3, 4, 5).inOrder();
        assertThat(p.expertsOf(2)).asList().containsExactly(6, 7).inOrder();
        assertThat(p.rankOf(5)).isEqualTo(1);
        assertThat(p.localIndex(5)).isEqualTo(2);
        assertThat(p.globalExpert(2, 1)).isEqualTo(7);
    }

    @Test
    void moreRanksThanExpertsLeavesSomeRanksWithout() {
        ExpertPlacement p = ExpertPlacement.contiguous(2, 4);
        assertThat(p.localExperts(0)).isEqualTo(1);
        assertThat(p.localExperts(3)).isEqualTo(0);
    }

    @Test
    void anExplicitPlacementIsSortedPerRankAndValidated() {
        ExpertPlacement p = ExpertPlacement.explicit(4, new int[][] {{3, 0}, {2, 1}});
        assertThat(p.expertsOf(0)).asList().containsExactly(0, 3).inOrder();
        assertThat(p.localIndex(3)).isEqualTo(1);
        assertThat(assertThrows(IllegalArgumentException.class, () -> ExpertPlacement.explicit(3, new int[][] {{0, 1}, {1, 2}})))
                .hasMessageThat().isEqualTo("expert 1 is placed on both rank 0 and rank 1");
        assertThat(assertThrows(IllegalArgumentException.class, () -> ExpertPlacement.explicit(3, new int[][] {{0}, {2}})))
                .hasMessageThat().isEqualTo("expert 1 is placed on no rank");
        assertThat(assertThrows(IllegalArgumentException.class, () -> ExpertPlacement.explicit(3, new int[][] {{0, 1, 2, 3}})))
                .hasMessageThat().contains("expert 3, but the experts are 0..2");
        assertThat(assertThrows(IllegalArgumentException.class, () -> ExpertPlacement.contiguous(0, 2))).hasMessageThat()
                .contains("at least one expert");
    }

    @Test
    void balancedSpreadsTheHotExpertsThatContiguousBlocksPutTogether() {
        long[] loads = {100, 90, 80, 70, 10, 10, 5, 5};
        ExpertPlacement blocks = ExpertPlacement.contiguous(8, 2);
        ExpertPlacement balanced = ExpertPlacement.balanced(loads, 2);
        assertThat(blocks.rankLoads(loads)).asList().containsExactly(340L, 30L).inOrder();
        // LPT: 100→0, 90→1, 80→1, 70→0, then ties go to the lower rank: 10→0, 10→1, 5→0, 5→1
        assertThat(balanced.expertsOf(0)).asList().containsExactly(0, 3, 4, 6).inOrder();
        assertThat(balanced.rankLoads(loads)).asList().containsExactly(185L, 185L).inOrder();
        assertThat(balanced.imbalance(loads)).isEqualTo(1.0);
        assertThat(blocks.imbalance(loads)).isWithin(1e-12).of(340.0 * 2 / 370);
    }

    @Test
    void balancedKeepsExpertsPerRankEvenAndStaysNearTheOptimum() {
        Random rnd = new Random(7);
        for (int trial = 0; trial < 200; trial++) {
            int ranks = 2 + rnd.nextInt(2);
            int experts = ranks * (1 + rnd.nextInt(3));
            long[] loads = new long[experts];
            for (int e = 0; e < experts; e++) {
                loads[e] = rnd.nextInt(4) == 0 ? 0 : (long) Math.exp(rnd.nextDouble() * 6);
            }
            ExpertPlacement p = ExpertPlacement.balanced(loads, ranks);
            for (int r = 0; r < ranks; r++) {
                assertThat(p.localExperts(r)).isEqualTo(experts / ranks);
            }
            long max = Arrays.stream(p.rankLoads(loads)).max().orElseThrow();
            long best = bestMakespan(loads, ranks, experts / ranks);
            // LPT with a cardinality limit is within 2 - 1/m of the optimum (it is usually much closer).
            assertThat((double) max).isAtMost((2.0 - 1.0 / ranks) * best + 1e-9);
        }
    }

    /** Brute force over every assignment with equal expert counts per rank. */
    private static long bestMakespan(long[] loads, int ranks, int perRank) {
        return search(loads, 0, new long[ranks], new int[ranks], perRank);
    }

    private static long search(long[] loads, int e, long[] sum, int[] n, int perRank) {
        if (e == loads.length) {
            return Arrays.stream(sum).max().orElseThrow();
        }
        long best = Long.MAX_VALUE;
        for (int r = 0; r < sum.length; r++) {
            if (n[r] < perRank) {
                sum[r] += loads[e];
                n[r]++;
                best = Math.min(best, search(loads, e + 1, sum, n, perRank));
                sum[r] -= loads[e];
                n[r]--;
            }
        }
        return best;
    }
}
