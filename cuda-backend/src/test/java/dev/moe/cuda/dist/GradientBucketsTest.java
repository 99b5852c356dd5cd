package dev.moe.cuda.dist;

import static com.google.common.truth.Truth.assertThat;
import static org.junit.jupiter.api.Assertions.assertThrows;

import java.util.ArrayList;
import java.util.Collections;
import java.util.List;
import java.util.Random;
import org.junit.jupiter.api.Test;

class GradientBucketsTest {

    @Test
    void bucketsRespectTheCapsAndABigParameterGetsItsOwn() {
        // first bucket at most 4, then at most 10
        GradientBuckets b = GradientBuckets.plan(new long[] {3, 2, 6, 3, 25, 1, 1}, 4, 10);
        assertThat(b.buckets()).isEqualTo(5);
        assertThat(List.of(b.bucketOf(0), b.bucketOf(1), b.bucketOf(2), b.bucketOf(3), b.bucketOf(4), b.bucketOf(5), b.bucketOf(6)))
                .containsExactly(0, 1, 1, 2, 3, 4, 4).inOrder();
        assertThat(List.of(b.bucketSize(0), b.bucketSize(1), b.bucketSize(2), b.bucketSize(3), b.bucketSize(4)))
                .containsExactly(3L, 8L, 3L, 25L, 2L).inOrder();
        assertThat(b.offset(4)).isEqualTo(14);
        assertThat(b.totalElements()).isEqualTo(41);
    }

    @Test
    void bucketsStartInOrderWhateverOrderTheGradientsFinishIn() {
        Random rnd = new Random(3);
        for (int trial = 0; trial < 200; trial++) {
            int n = rnd.nextInt(12);
            long[] sizes = new long[n];
            for (int i = 0; i < n; i++) {
                sizes[i] = rnd.nextInt(20);
            }
            long cap = 1 + rnd.nextInt(30);
            GradientBuckets b = GradientBuckets.plan(sizes, Math.max(1, cap / 3), cap);
            for (int k = 0; k < b.buckets(); k++) {
                // over the cap only when the bucket holds a single parameter
                long limit = k == 0 ? Math.max(1, cap / 3) : cap;
                int params = 0;
                for (int i = 0; i < n; i++) {
                    params += b.bucketOf(i) == k ? 1 : 0;
                }
                assertThat(b.bucketSize(k) <= limit || params == 1).isTrue();
            }
            GradientBuckets.Tracker t = b.tracker();
            List<Integer> launched = new ArrayList<>();
            for (int p : shuffled(rnd, n)) {
                launched.addAll(t.ready(p));
            }
            assertThat(t.done()).isTrue();
            List<Integer> expected = new ArrayList<>();
            for (int k = 0; k < b.buckets(); k++) {
                expected.add(k);
            }
            assertThat(launched).containsExactlyElementsIn(expected).inOrder();
        }
    }

    @Test
    void ranksAverageTheirGradientsEvenWhenTheyFinishInDifferentOrders() throws Exception {
        long[] sizes = {5, 1, 7, 3, 3, 9, 2};
        GradientBuckets b = GradientBuckets.plan(sizes, 4, 8);
        int ranks = 3, total = (int) b.totalElements();
        Random rnd = new Random(9);
        float[][] grads = new float[ranks][total];
        float[] mean = new float[total];
        for (int r = 0; r < ranks; r++) {
            for (int i = 0; i < total; i++) {
                grads[r][i] = rnd.nextInt(100) - 50; // integers: the sum is exact in any order
                mean[i] += grads[r][i] / ranks;
            }
        }
        int[][] orders = new int[ranks][];
        for (int r = 0; r < ranks; r++) {
            orders[r] = shuffled(rnd, sizes.length).stream().mapToInt(Integer::intValue).toArray();
        }
        LocalGroup group = new LocalGroup(ranks, 10_000);
        DispatchPlanTest.runRanks(ranks, r -> {
            b.allReduceMean(group.rank(r), grads[r], orders[r]);
            return null;
        });
        for (int r = 0; r < ranks; r++) {
            assertThat(grads[r]).usingTolerance(1e-5).containsExactly(mean).inOrder();
        }
    }

    @Test
    void aGradientMarkedTwiceIsABug() {
        GradientBuckets.Tracker t = GradientBuckets.plan(new long[] {1, 1}, 1, 1).tracker();
        t.ready(1);
        assertThat(assertThrows(IllegalStateException.class, () -> t.ready(1))).hasMessageThat()
                .isEqualTo("parameter 1's gradient was marked ready twice in one backward pass");
    }

    private static List<Integer> shuffled(Random rnd, int n) {
        List<Integer> out = new ArrayList<>();
        for (int i = 0; i < n; i++) {
            out.add(i);
        }
        Collections.shuffle(out, rnd);
        return out;
    }
}
