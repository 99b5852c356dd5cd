package dev.moe.runtime.train;

import static com.google.common.truth.Truth.assertThat;
import static org.junit.jupiter.api.Assertions.assertThrows;

import org.junit.jupiter.api.Test;

/** How data parallelism splits a batch: every row exactly once, in order, shares differing by at most one. */
class ShardTest {

    @Test
    void theRanksCoverEveryRowOnceInOrderWithNearlyEqualShares() {
        for (int size = 1; size <= 9; size++) {
            for (int rows = size; rows <= 40; rows++) {
                int next = 0;
                int min = Integer.MAX_VALUE, max = 0;
                for (int rank = 0; rank < size; rank++) {
                    Collective.Shard s = Collective.Shard.of(rows, rank, size);
                    assertThat(s.from()).isEqualTo(next);
                    assertThat(s.rows()).isAtLeast(1);
                    min = Math.min(min, s.rows());
                    max = Math.max(max, s.rows());
                    next = s.to();
                }
                assertThat(next).isEqualTo(rows);
                assertThat(max - min).isAtMost(1);
            }
        }
    }

    @Test
    void worked() {
        // 5 rows over 3 ranks: floor(5r/3) boundaries 0, 1, 3, 5
        assertThat(Collective.Shard.of(5, 0, 3)).isEqualTo(new Collective.Shard(0, 1));
        assertThat(Collective.Shard.of(5, 1, 3)).isEqualTo(new Collective.Shard(1, 3));
        assertThat(Collective.Shard.of(5, 2, 3)).isEqualTo(new Collective.Shard(3, 5));
        assertThat(Collective.Shard.of(8, 0, 1)).isEqualTo(new Collective.Shard(0, 8));
    }

    @Test
    void aBatchSmallerThanTheWorldAndBadRanksAreRefused() {
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class, () -> Collective.Shard.of(3, 0, 4));
        assertThat(e).hasMessageThat().contains("a batch of 3 sequences cannot be split over 4 ranks");
        assertThrows(IllegalArgumentException.class, () -> Collective.Shard.of(8, 4, 4));
        assertThrows(IllegalArgumentException.class, () -> Collective.Shard.of(8, -1, 4));
    }
}
