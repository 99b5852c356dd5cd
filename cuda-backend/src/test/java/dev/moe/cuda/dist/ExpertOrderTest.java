package dev.moe.cuda.dist;

import static com.google.common.truth.Truth.assertThat;

import org.junit.jupiter.api.Test;

/** The slots a layer sorts its rows by for a placement whose ranks do not hold contiguous ranges in rank order. */
class ExpertOrderTest {

    @Test
    void theSlotsAreTheRankMajorConcatenationOfThePlacementsLists() {
        // a balanced-like uneven placement: rank 1 holds {7} only, rank 2 {0, 5, 6}, rank 3 none
        ExpertPlacement p = ExpertPlacement.explicit(8, new int[][] {{4, 1, 3, 2}, {7}, {6, 0, 5}, {}});
        ExpertOrder o = ExpertOrder.of(p);
        assertThat(o.identity()).isFalse();
        assertThat(o.order()).asList().containsExactly(1, 2, 3, 4, 7, 0, 5, 6).inOrder();
        for (int s = 0; s < 8; s++) {
            assertThat(o.slotOf(o.expertAt(s))).isEqualTo(s);
            assertThat(o.expertAt(o.slotOf(s))).isEqualTo(s);
        }
        assertThat(o.slotOf(7)).isEqualTo(4);
        assertThat(o.slotOf(0)).isEqualTo(5);
        // the renumbered placement: the same sizes, contiguous in rank order, and each slot on its expert's rank
        ExpertPlacement r = o.renumbered();
        SortedDispatch.requireContiguous(r);
        for (int rank = 0; rank < 4; rank++) {
            assertThat(r.localExperts(rank)).isEqualTo(p.localExperts(rank));
        }
        for (int e = 0; e < 8; e++) {
            assertThat(r.rankOf(o.slotOf(e))).isEqualTo(p.rankOf(e));
            assertThat(r.localIndex(o.slotOf(e))).isEqualTo(p.localIndex(e));
        }
        int[] counts = {10, 11, 12, 13, 14, 15, 16, 17};
        assertThat(o.toSlots(counts)).asList().containsExactly(11, 12, 13, 14, 17, 10, 15, 16).inOrder();
        // each rank's rows: the sum of its experts' counts, whichever ids they have
        assertThat(new SortedDispatch(r).sendCounts(o.toSlots(counts))).asList().containsExactly(11 + 12 + 13 + 14, 17, 10 + 15 + 16, 0).inOrder();
    }

    @Test
    void aPlacementContiguousInRankOrderIsTheIdentity() {
        for (ExpertPlacement p : new ExpertPlacement[] {ExpertPlacement.contiguous(8, 2), ExpertPlacement.contiguous(3, 4),
            ExpertPlacement.explicit(10, new int[][] {{0, 1, 2, 3, 4}, {5}, {}, {6, 7, 8, 9}}), ExpertPlacement.contiguous(5, 1)}) {
            ExpertOrder o = ExpertOrder.of(p);
            assertThat(o.identity()).isTrue();
            assertThat(o.renumbered()).isSameInstanceAs(p);
            for (int e = 0; e < p.experts(); e++) {
                assertThat(o.slotOf(e)).isEqualTo(e);
            }
        }
        // contiguous ranges in the wrong rank order are not the identity
        ExpertOrder swapped = ExpertOrder.of(ExpertPlacement.explicit(4, new int[][] {{2, 3}, {0, 1}}));
        assertThat(swapped.identity()).isFalse();
        assertThat(swapped.order()).asList().containsExactly(2, 3, 0, 1).inOrder();
        // interleaved
        ExpertOrder interleaved = ExpertOrder.of(ExpertPlacement.explicit(8, new int[][] {{0, 2, 4, 6}, {1, 3, 5, 7}}));
        assertThat(interleaved.identity()).isFalse();
        assertThat(interleaved.order()).asList().containsExactly(0, 2, 4, 6, 1, 3, 5, 7).inOrder();
    }
}
