package dev.moe.cuda.dist;

import static com.google.common.truth.Truth.assertThat;
import static org.junit.jupiter.api.Assertions.assertThrows;

import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.Random;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import org.junit.jupiter.api.Test;

class SortedDispatchTest {

    @Test
    void contiguousRangesInRankOrderAreAcceptedEmptyRanksToo() {
        SortedDispatch.requireContiguous(ExpertPlacement.contiguous(10, 4));
        SortedDispatch.requireContiguous(ExpertPlacement.contiguous(2, 4)); // ranks 2 and 3 hold none
        SortedDispatch s = new SortedDispatch(ExpertPlacement.explicit(10, new int[][] {{0, 1, 2, 3, 4}, {5}, {}, {6, 7, 8, 9}}));
        assertThat(s.firstExpert(3)).isEqualTo(6);
        assertThat(s.firstExpert(4)).isEqualTo(10);
        assertThat(s.countsBlock()).isEqualTo(5);
    }

    @Test
    void aPlacementTheSortedRowsCannotBeSlicedForIsRejectedWithTheRankAndExpert() {
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class,
                () -> new SortedDispatch(ExpertPlacement.explicit(4, new int[][] {{0, 3}, {1, 2}})));
        assertThat(e).hasMessageThat().isEqualTo("expert parallelism on the GPU needs each rank's experts contiguous, in rank order: rank 0 holds "
                + "expert 3 where expert 1 was due (rank 0: [0, 3] rank 1: [1, 2])");
        // contiguous ranges, but not in rank order
        assertThat(assertThrows(IllegalArgumentException.class, () -> SortedDispatch.requireContiguous(ExpertPlacement.explicit(4,
                new int[][] {{2, 3}, {0, 1}})))).hasMessageThat().contains("rank 0 holds expert 2 where expert 0 was due");
    }

    @Test
    void sendCountsAndTheCountsMessageFollowTheRanksRanges() {
        SortedDispatch s = new SortedDispatch(ExpertPlacement.explicit(5, new int[][] {{0, 1, 2}, {}, {3, 4}}));
        int[] counts = {4, 0, 2, 7, 1};
        assertThat(s.sendCounts(counts)).asList().containsExactly(6, 0, 8).inOrder();
        // blocks of 3 ints, zero-padded
        assertThat(s.countsMessage(counts)).asList().containsExactly(4, 0, 2, 0, 0, 0, 7, 1, 0).inOrder();
        assertThat(assertThrows(IllegalArgumentException.class, () -> s.sendCounts(new int[] {1, 2}))).hasMessageThat()
                .isEqualTo("2 expert counts for 5 experts");
        assertThat(assertThrows(IllegalArgumentException.class, () -> s.countsMessage(new int[] {1, 2, -1, 0, 0}))).hasMessageThat()
                .isEqualTo("expert 2 has -1 rows");
    }

    @Test
    void chunksReorderRankMajorRowsExpertMajor() {
        // rank 1 holds experts 2 and 3; two sources send (2 of expert 2, 1 of 3) and (0 of 2, 3 of 3)
        SortedDispatch s = new SortedDispatch(ExpertPlacement.contiguous(4, 2));
        ReceiveLayout layout = s.receiveLayout(new int[] {2, 1, 0, 3}, 1);
        assertThat(SortedDispatch.chunks(layout)).containsExactly(new SortedDispatch.Chunk(0, 0, 2), new SortedDispatch.Chunk(2, 2, 1),
                new SortedDispatch.Chunk(3, 3, 3)).inOrder();
        assertThat(SortedDispatch.expertOffsets(layout)).asList().containsExactly(0, 2, 6).inOrder();
    }

    /**
     * The stage's dispatch on the host, for random routings and placements: each rank's rows sorted by expert are sliced by
     * {@link SortedDispatch#sendCounts}, exchanged (counts, then rows) through a {@link LocalGroup}, reordered by the chunks; every
     * local expert's rows must be exactly its rows from each source in rank order, and the way back must rebuild each rank's rows.
     */
    @Test
    void randomDispatchesDeliverEachExpertItsRowsAndBringThemBack() throws Exception {
        Random rnd = new Random(5);
        for (int trial = 0; trial < 200; trial++) {
            int ranks = 1 + rnd.nextInt(4), experts = 1 + rnd.nextInt(9);
            ExpertPlacement p = rnd.nextBoolean() ? ExpertPlacement.contiguous(experts, ranks) : randomRanges(rnd, experts, ranks);
            int[][] counts = new int[ranks][experts];
            for (int[] c : counts) {
                for (int e = 0; e < experts; e++) {
                    c[e] = rnd.nextInt(3) == 0 ? 0 : rnd.nextInt(5);
                }
            }
            LocalGroup group = new LocalGroup(ranks, 10_000);
            ExecutorService pool = Executors.newFixedThreadPool(ranks);
            try {
                List<Future<?>> done = new ArrayList<>();
                for (int r = 0; r < ranks; r++) {
                    int rank = r;
                    done.add(pool.submit(() -> {
                        roundTrip(new SortedDispatch(p), group.rank(rank), counts);
                        return null;
                    }));
                }
                for (Future<?> f : done) {
                    f.get();
                }
            } finally {
                pool.shutdownNow();
            }
        }
    }

    /** A row: (source rank, expert, index within the source's rows of that expert). */
    private static void roundTrip(SortedDispatch s, Exchange ex, int[][] counts) {
        int me = ex.rank(), experts = counts[0].length;
        List<Float> mine = new ArrayList<>();
        for (int e = 0; e < experts; e++) {
            for (int i = 0; i < counts[me][e]; i++) {
                mine.add(label(me, e, i));
            }
        }
        float[] h = new float[mine.size()];
        for (int i = 0; i < h.length; i++) {
            h[i] = mine.get(i);
        }
        int[] send = s.sendCounts(counts[me]);
        ReceiveLayout layout = s.receiveLayout(ex.allToAll(s.countsMessage(counts[me]), s.countsBlock()), me);
        float[] rankMajor = ex.allToAllV(h, send, layout.recvCounts(), 1);
        float[] expertMajor = new float[rankMajor.length];
        for (SortedDispatch.Chunk c : SortedDispatch.chunks(layout)) {
            System.arraycopy(rankMajor, c.from(), expertMajor, c.to(), c.rows());
        }
        int[] offsets = SortedDispatch.expertOffsets(layout);
        for (int l = 0; l < layout.localExperts(); l++) {
            int e = s.firstExpert(me) + l, at = offsets[l];
            for (int src = 0; src < ex.size(); src++) {
                for (int i = 0; i < counts[src][e]; i++) {
                    assertThat(expertMajor[at++]).isEqualTo(label(src, e, i));
                }
            }
            assertThat(at).isEqualTo(offsets[l + 1]);
        }
        // the outputs' way: expert-major back to rank-major, and back to the sources into h's layout
        float[] back = new float[expertMajor.length];
        for (SortedDispatch.Chunk c : SortedDispatch.chunks(layout)) {
            System.arraycopy(expertMajor, c.to(), back, c.from(), c.rows());
        }
        assertThat(ex.allToAllV(back, layout.recvCounts(), send, 1)).isEqualTo(h);
    }

    private static float label(int rank, int expert, int i) {
        return rank * 10_000 + expert * 100 + i;
    }

    /** Contiguous ranges of random sizes (some empty), in rank order. */
    private static ExpertPlacement randomRanges(Random rnd, int experts, int ranks) {
        int[] sizes = new int[ranks];
        for (int e = 0; e < experts; e++) {
            sizes[rnd.nextInt(ranks)]++;
        }
        int[][] lists = new int[ranks][];
        int next = 0;
        for (int r = 0; r < ranks; r++) {
            lists[r] = new int[sizes[r]];
            for (int i = 0; i < sizes[r]; i++) {
                lists[r][i] = next++;
            }
        }
        ExpertPlacement p = ExpertPlacement.explicit(experts, lists);
        assertThat(Arrays.stream(lists).mapToInt(l -> l.length).sum()).isEqualTo(experts);
        return p;
    }
}
