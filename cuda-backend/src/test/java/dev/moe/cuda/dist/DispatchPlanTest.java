package dev.moe.cuda.dist;

import static com.google.common.truth.Truth.assertThat;
import static org.junit.jupiter.api.Assertions.assertThrows;

import java.util.ArrayList;
import java.util.List;
import java.util.Random;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import org.junit.jupiter.api.Test;

class DispatchPlanTest {

    @Test
    void sendOrderGroupsByRankThenLocalExpertThenToken() {
        // 4 experts on 2 ranks: rank 0 holds 0 and 1, rank 1 holds 2 and 3. Three tokens, top-2.
        ExpertPlacement p = ExpertPlacement.contiguous(4, 2);
        int[] experts = {3, 0, 1, 3, 0, 2};
        DispatchPlan plan = DispatchPlan.buildTopK(p, 3, 2, experts);
        // assignment a = token*2 + slot; rank 0: expert 0 (a=1, a=4), expert 1 (a=2); rank 1: expert 2 (a=5), expert 3 (a=0, a=3)
        assertThat(plan.sendOrder()).asList().containsExactly(1, 4, 2, 5, 0, 3).inOrder();
        assertThat(plan.sendCounts()).asList().containsExactly(3, 3).inOrder();
        assertThat(plan.sendOffset(1)).isEqualTo(3);
        assertThat(plan.sendSplit(0, 0)).isEqualTo(2);
        assertThat(plan.sendSplit(1, 1)).isEqualTo(2);
        assertThat(plan.countsMessage()).asList().containsExactly(2, 1, 1, 2).inOrder();
        assertThat(plan.sendPosition(0)).isEqualTo(4);
        float[] rows = {10, 11, 12};
        assertThat(plan.gather(rows, 1)).usingExactEquality().containsExactly(10f, 12f, 11f, 12f, 10f, 11f).inOrder();
    }

    @Test
    void tokenOrderWinsOverInputOrderAndSlotsBreakTies() {
        ExpertPlacement p = ExpertPlacement.contiguous(2, 1);
        // given out of order: (token 2, slot 0), (token 0, slot 1), (token 0, slot 0), all to expert 1
        DispatchPlan plan = DispatchPlan.build(p, 3, new int[] {2, 0, 0}, new int[] {0, 1, 0}, new int[] {1, 1, 1});
        assertThat(plan.sendOrder()).asList().containsExactly(2, 1, 0).inOrder();
    }

    @Test
    void badAssignmentsAreRejectedWithTheirIndex() {
        ExpertPlacement p = ExpertPlacement.contiguous(4, 2);
        assertThat(assertThrows(IllegalArgumentException.class, () -> DispatchPlan.buildTopK(p, 2, 1, new int[] {0, 4})))
                .hasMessageThat().isEqualTo("assignment 1 names expert 4 of 4");
        assertThat(assertThrows(IllegalArgumentException.class, () -> DispatchPlan.build(p, 1, new int[] {1}, new int[] {0}, new int[] {0})))
                .hasMessageThat().isEqualTo("assignment 0 names token 1 of 1");
        assertThat(assertThrows(IllegalArgumentException.class, () -> DispatchPlan.buildTopK(p, 2, 2, new int[] {0})))
                .hasMessageThat().contains("expected 2×2 expert choices, got 1");
    }

    @Test
    void randomRoutingsGiveAConsistentPlan() {
        Random rnd = new Random(11);
        for (int trial = 0; trial < 300; trial++) {
            int experts = 1 + rnd.nextInt(12), ranks = 1 + rnd.nextInt(5);
            ExpertPlacement p = rnd.nextBoolean() ? ExpertPlacement.contiguous(experts, ranks) : ExpertPlacement.balanced(loads(rnd, experts), ranks);
            int tokens = rnd.nextInt(20), k = 1 + rnd.nextInt(experts);
            int[] choice = routing(rnd, tokens, k, experts);
            DispatchPlan plan = DispatchPlan.buildTopK(p, tokens, k, choice);
            int n = tokens * k;
            boolean[] seen = new boolean[n];
            int prevKey = -1, prevToken = -1;
            for (int pos = 0; pos < n; pos++) {
                int a = plan.sendOrder(pos);
                assertThat(seen[a]).isFalse();
                seen[a] = true;
                assertThat(plan.sendPosition(a)).isEqualTo(pos);
                int r = p.rankOf(choice[a]);
                assertThat(pos).isAtLeast(plan.sendOffset(r));
                assertThat(pos).isLessThan(plan.sendOffset(r + 1));
                int key = r * experts + p.localIndex(choice[a]);
                assertThat(key).isAtLeast(prevKey);
                if (key == prevKey) {
                    assertThat(a / k).isGreaterThan(prevToken); // a token picks an expert at most once
                }
                prevKey = key;
                prevToken = a / k;
            }
            for (int r = 0; r < ranks; r++) {
                int sum = 0;
                for (int l = 0; l < p.localExperts(r); l++) {
                    sum += plan.sendSplit(r, l);
                }
                assertThat(sum).isEqualTo(plan.sendCount(r));
            }
        }
    }

    /** N ranks exchange counts then rows through a {@link LocalGroup}: every expert gets exactly its rows. */
    @Test
    void exchangedRowsArriveExpertMajorAtTheirExpertsRanks() throws Exception {
        Random rnd = new Random(5);
        for (int trial = 0; trial < 20; trial++) {
            int ranks = 1 + rnd.nextInt(4), experts = 1 + rnd.nextInt(9), k = 1 + rnd.nextInt(Math.min(3, experts));
            ExpertPlacement p = trial % 2 == 0 ? ExpertPlacement.contiguous(experts, ranks) : ExpertPlacement.balanced(loads(rnd, experts), ranks);
            int[] tokens = new int[ranks];
            int[][] choice = new int[ranks][];
            for (int r = 0; r < ranks; r++) {
                tokens[r] = rnd.nextInt(4) == 0 ? 0 : rnd.nextInt(9);
                choice[r] = routing(rnd, tokens[r], k, experts);
            }
            LocalGroup group = new LocalGroup(ranks, 10_000);
            List<float[]> received = runRanks(ranks, rank -> {
                Exchange ex = group.rank(rank);
                DispatchPlan plan = DispatchPlan.buildTopK(p, tokens[rank], k, choice[rank]);
                int block = DispatchPlan.countsBlock(p);
                ReceiveLayout layout = ReceiveLayout.fromCountsMessage(ex.allToAll(plan.countsMessage(), block), ranks, block, p.localExperts(rank));
                // A row is (source rank, token, expert).
                float[] rows = new float[tokens[rank] * k * 3];
                for (int a = 0; a < tokens[rank] * k; a++) {
                    int pos = plan.sendPosition(a);
                    rows[pos * 3] = rank;
                    rows[pos * 3 + 1] = a / k;
                    rows[pos * 3 + 2] = choice[rank][a];
                }
                float[] got = layout.toExpertMajor(ex.allToAllV(rows, plan.sendCounts(), layout.recvCounts(), 3), 3);
                for (int l = 0; l < layout.localExperts(); l++) {
                    for (int s = 0; s < ranks; s++) {
                        assertThat(layout.chunkOffset(s, l) + layout.count(s, l))
                                .isEqualTo(s + 1 < ranks ? layout.chunkOffset(s + 1, l) : layout.expertOffset(l + 1));
                    }
                }
                return got;
            }).stream().map(o -> (float[]) o).toList();
            for (int r = 0; r < ranks; r++) {
                // Expected: for each local expert, for each source, the tokens that chose it, in token order.
                List<Float> want = new ArrayList<>();
                for (int e : p.expertsOf(r)) {
                    for (int s = 0; s < ranks; s++) {
                        for (int a = 0; a < tokens[s] * k; a++) {
                            if (choice[s][a] == e) {
                                want.add((float) s);
                                want.add((float) (a / k));
                                want.add((float) e);
                            }
                        }
                    }
                }
                assertThat(received.get(r)).usingExactEquality().containsExactlyElementsIn(want).inOrder();
            }
        }
    }

    @Test
    void aRankThatDoesNotArriveFailsTheOthersWithAMessage() {
        LocalGroup group = new LocalGroup(2, 200);
        IllegalStateException e = assertThrows(IllegalStateException.class, () -> group.rank(0).allReduceSum(new float[] {1}));
        assertThat(e).hasMessageThat().isEqualTo("rank 0: all-reduce did not complete: another rank failed or did not arrive within 200 ms");
    }

    interface RankBody {
        Object run(int rank) throws Exception;
    }

    /** Runs one body per rank on its own thread; the first failure is rethrown. */
    static List<Object> runRanks(int ranks, RankBody body) throws Exception {
        ExecutorService pool = Executors.newFixedThreadPool(ranks);
        try {
            List<Future<Object>> futures = new ArrayList<>();
            for (int r = 0; r < ranks; r++) {
                int rank = r;
                futures.add(pool.submit(() -> body.run(rank)));
            }
            List<Object> out = new ArrayList<>();
            for (Future<Object> f : futures) {
                try {
                    out.add(f.get());
                } catch (java.util.concurrent.ExecutionException e) {
                    if (e.getCause() instanceof Exception ex) {
                        throw ex;
                    }
                    throw (Error) e.getCause();
                }
            }
            return out;
        } finally {
            pool.shutdownNow();
        }
    }

    static long[] loads(Random rnd, int experts) {
        long[] out = new long[experts];
        for (int e = 0; e < experts; e++) {
            out[e] = rnd.nextInt(100);
        }
        return out;
    }

    /** k distinct experts per token, uniformly, in random slot order. */
    static int[] routing(Random rnd, int tokens, int k, int experts) {
        int[] out = new int[tokens * k];
        for (int t = 0; t < tokens; t++) {
            int[] perm = new int[experts];
            for (int e = 0; e < experts; e++) {
                perm[e] = e;
            }
            for (int i = 0; i < k; i++) {
                int j = i + rnd.nextInt(experts - i);
                int tmp = perm[i];
                perm[i] = perm[j];
                perm[j] = tmp;
                out[t * k + i] = perm[i];
            }
        }
        return out;
    }
}
