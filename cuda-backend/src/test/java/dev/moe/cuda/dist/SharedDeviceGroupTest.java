package dev.moe.cuda.dist;

import static com.google.common.truth.Truth.assertThat;
import static org.junit.jupiter.api.Assertions.assertThrows;

import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import org.junit.jupiter.api.Test;

/** The host side of the simulated ranks' exchange (the counts all-to-all touches no GPU); the device copies are GPU-checked. */
class SharedDeviceGroupTest {

    @Test
    void theCountsAllToAllDeliversBlockRToRankR() throws Exception {
        SharedDeviceGroup group = new SharedDeviceGroup(3, 10_000);
        List<int[]> got = onEveryRank(group, ex -> {
            int me = ex.rank();
            // rank s sends 10·s + r to rank r, two ints each
            int[] send = new int[6];
            for (int r = 0; r < 3; r++) {
                send[2 * r] = 10 * me + r;
                send[2 * r + 1] = -(10 * me + r);
            }
            return ex.allToAll(send, 2);
        });
        assertThat(got.get(1)).asList().containsExactly(1, -1, 11, -11, 21, -21).inOrder();
        assertThat(got.get(2)).asList().containsExactly(2, -2, 12, -12, 22, -22).inOrder();
    }

    @Test
    void aBlockOfTheWrongSizeFailsEveryRankWithAMessage() {
        SharedDeviceGroup group = new SharedDeviceGroup(2, 10_000);
        ExecutionException e = assertThrows(ExecutionException.class, () -> onEveryRank(group, ex -> ex.allToAll(new int[ex.rank() == 0 ? 2 : 4],
                ex.rank() == 0 ? 1 : 2)));
        assertThat(e).hasCauseThat().hasMessageThat().contains("all-to-all block of");
        assertThat(assertThrows(IllegalArgumentException.class, () -> group.rank(0, null).allToAll(new int[3], 2))).hasMessageThat()
                .isEqualTo("all-to-all of 3 ints is not 2 blocks of 2");
    }

    @Test
    void aRankThatNeverComesTimesTheOthersOut() {
        SharedDeviceGroup group = new SharedDeviceGroup(2, 200);
        IllegalStateException e = assertThrows(IllegalStateException.class, () -> group.rank(0, null).allToAll(new int[2], 1));
        assertThat(e).hasMessageThat().isEqualTo("rank 0: all-to-all did not complete: another rank failed or did not arrive within 200 ms");
        assertThat(assertThrows(IllegalArgumentException.class, () -> group.rank(2, null))).hasMessageThat().isEqualTo("rank 2 of a group of 2");
    }

    private interface RankWork<T> {
        T run(DeviceExchange ex);
    }

    private static <T> List<T> onEveryRank(SharedDeviceGroup group, RankWork<T> work) throws Exception {
        ExecutorService pool = Executors.newFixedThreadPool(group.size());
        try {
            List<Future<T>> futures = new ArrayList<>();
            for (int r = 0; r < group.size(); r++) {
                DeviceExchange ex = group.rank(r, null);
                futures.add(pool.submit(() -> work.run(ex)));
            }
            List<T> out = new ArrayList<>();
            for (Future<T> f : futures) {
                out.add(f.get());
            }
            return out;
        } finally {
            pool.shutdownNow();
        }
    }
}
