package dev.moe.cuda;

import static com.google.common.truth.Truth.assertThat;
import static org.junit.jupiter.api.Assertions.assertThrows;

import java.util.List;
import org.junit.jupiter.api.Test;

/** Which pages of a reservation back what a rank keeps: whole pages, merged, a page shared by kept and dropped bytes kept. */
class ReservedMemoryTest {
    private static final long PAGE = 2L << 20;

    private static List<String> show(List<long[]> runs) {
        return runs.stream().map(r -> r[0] / (PAGE / 2) + ".." + r[1] / (PAGE / 2)).toList(); // in half pages
    }

    @Test
    void rangesWidenToWholePagesAndMerge() {
        List<long[]> keep = List.of(
                new long[] {5 * PAGE + 10, 6 * PAGE + 1}, // the end of page 5, a byte of page 6
                new long[] {0, 100}, // the first bytes of page 0
                new long[] {6 * PAGE + 200, 7 * PAGE}, // more of page 6: merges with the first
                new long[] {PAGE, PAGE}); // empty: no page
        assertThat(show(ReservedMemory.pages(keep, PAGE, 10 * PAGE))).containsExactly("0..2", "10..14").inOrder();
    }

    @Test
    void pagesNeverPassTheReservationAndRangesOutsideAreRefused() {
        assertThat(show(ReservedMemory.pages(List.of(new long[] {3 * PAGE - 1, 3 * PAGE}), PAGE, 3 * PAGE))).containsExactly("4..6");
        assertThrows(IllegalArgumentException.class, () -> ReservedMemory.pages(List.of(new long[] {0, 3 * PAGE + 1}), PAGE, 3 * PAGE));
    }
}
