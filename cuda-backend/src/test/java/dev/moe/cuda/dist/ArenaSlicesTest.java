package dev.moe.cuda.dist;

import static com.google.common.truth.Truth.assertThat;
import static org.junit.jupiter.api.Assertions.assertThrows;

import org.junit.jupiter.api.Test;

/** Where each rank's experts lie in an arena that holds every expert: the slices an expert-parallel stage on a model reads. */
class ArenaSlicesTest {

    @Test
    void eachRankStartsWhereThePreviousRanksExpertsEnd() {
        // 10 gated experts (GW = 2F) over 4 ranks: 3, 3, 2, 2; fp32 weights and gradients
        ExpertPlacement p = ExpertPlacement.contiguous(10, 4);
        int gw = 2 * 24, in = 16, d = 16, f = 24;
        long per13 = (long) gw * in * 4, per2 = (long) d * f * 4;
        long[] first = {0, 3, 6, 8};
        long[] count = {3, 3, 2, 2};
        for (int r = 0; r < 4; r++) {
            ArenaSlices s = ArenaSlices.of(p, r, gw, in, d, f, 4, 4);
            assertThat(s.w13()).isEqualTo(first[r] * per13);
            assertThat(s.dW13()).isEqualTo(first[r] * per13);
            assertThat(s.w2()).isEqualTo(first[r] * per2);
            assertThat(s.dW2()).isEqualTo(first[r] * per2);
            assertThat(s.w13Bytes()).isEqualTo(count[r] * per13);
            assertThat(s.w2Bytes()).isEqualTo(count[r] * per2);
        }
        // the last rank's slices end where the arena's experts end
        ArenaSlices last = ArenaSlices.of(p, 3, gw, in, d, f, 4, 4);
        assertThat(last.w13() + last.w13Bytes()).isEqualTo(10 * per13);
        assertThat(last.w2() + last.w2Bytes()).isEqualTo(10 * per2);
    }

    @Test
    void bf16WeightsAndFp32GradientsHaveTheirOwnOffsets() {
        // bf16 copies of the weights (2 bytes), fp32 gradients in the arena (4 bytes); ungated experts (GW = F)
        ExpertPlacement p = ExpertPlacement.explicit(5, new int[][] {{0, 1}, {2, 3, 4}});
        ArenaSlices s = ArenaSlices.of(p, 1, 8, 6, 6, 8, 2, 4);
        assertThat(s.w13()).isEqualTo(2L * 8 * 6 * 2);
        assertThat(s.dW13()).isEqualTo(2L * 8 * 6 * 4);
        assertThat(s.w2()).isEqualTo(2L * 6 * 8 * 2);
        assertThat(s.dW2()).isEqualTo(2L * 6 * 8 * 4);
        assertThat(s.w13Bytes()).isEqualTo(3L * 8 * 6 * 2);
    }

    @Test
    void aRankWithoutExpertsHasEmptySlices() {
        ExpertPlacement p = ExpertPlacement.contiguous(3, 4);
        ArenaSlices s = ArenaSlices.of(p, 3, 4, 4, 4, 4, 4, 4);
        assertThat(s.w13Bytes()).isEqualTo(0);
        assertThat(s.w2Bytes()).isEqualTo(0);
        assertThat(s.w13()).isEqualTo(3L * 4 * 4 * 4);
    }

    @Test
    void aPlacementThatIsNotContiguousIsRefused() {
        ExpertPlacement p = ExpertPlacement.explicit(4, new int[][] {{0, 2}, {1, 3}});
        assertThat(assertThrows(IllegalArgumentException.class, () -> ArenaSlices.of(p, 1, 4, 4, 4, 4, 4, 4))).hasMessageThat()
                .contains("contiguous");
    }

    @Test
    void eachExpertOfAnyPlacementLiesAtItsOwnExpertsPlace() {
        // interleaved, bf16 weights and fp32 gradients, gated experts
        ExpertPlacement p = ExpertPlacement.explicit(8, new int[][] {{0, 2, 4, 6}, {1, 3, 5, 7}});
        int gw = 2 * 24, in = 16, d = 16, f = 24;
        long per13 = (long) gw * in, per2 = (long) d * f;
        ArenaSlices.Experts s = ArenaSlices.ofExperts(p, 1, gw, in, d, f, 2, 4);
        assertThat(s.w13()).asList().containsExactly(1 * per13 * 2, 3 * per13 * 2, 5 * per13 * 2, 7 * per13 * 2).inOrder();
        assertThat(s.dW13()).asList().containsExactly(1 * per13 * 4, 3 * per13 * 4, 5 * per13 * 4, 7 * per13 * 4).inOrder();
        assertThat(s.w2()).asList().containsExactly(1 * per2 * 2, 3 * per2 * 2, 5 * per2 * 2, 7 * per2 * 2).inOrder();
        assertThat(s.dW2()).asList().containsExactly(1 * per2 * 4, 3 * per2 * 4, 5 * per2 * 4, 7 * per2 * 4).inOrder();
        // a rank without experts has none
        assertThat(ArenaSlices.ofExperts(ExpertPlacement.contiguous(3, 4), 3, gw, in, d, f, 4, 4).w13()).isEmpty();
    }

    @Test
    void forAContiguousPlacementTheExpertsAreTheSliceOneAfterAnother() {
        ExpertPlacement p = ExpertPlacement.contiguous(10, 4);
        int gw = 24, in = 16, d = 16, f = 24;
        for (int r = 0; r < 4; r++) {
            ArenaSlices slice = ArenaSlices.of(p, r, gw, in, d, f, 2, 4);
            ArenaSlices.Experts s = ArenaSlices.ofExperts(p, r, gw, in, d, f, 2, 4);
            for (int l = 0; l < p.localExperts(r); l++) {
                assertThat(s.w13()[l]).isEqualTo(slice.w13() + l * slice.w13Bytes() / p.localExperts(r));
                assertThat(s.w2()[l]).isEqualTo(slice.w2() + l * slice.w2Bytes() / p.localExperts(r));
                assertThat(s.dW13()[l]).isEqualTo(slice.dW13() + (long) l * gw * in * 4);
                assertThat(s.dW2()[l]).isEqualTo(slice.dW2() + (long) l * d * f * 4);
            }
        }
    }
}
