package dev.moe.runtime.cpu;

import static com.google.common.truth.Truth.assertWithMessage;
import static dev.moe.runtime.cpu.LinearTestSupport.assertBitwiseEqual;
import static dev.moe.runtime.cpu.LinearTestSupport.assertWithinBound;
import static dev.moe.runtime.cpu.LinearTestSupport.random;

import java.util.Arrays;
import java.util.SplittableRandom;
import java.util.stream.Stream;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.Arguments;
import org.junit.jupiter.params.provider.MethodSource;

/**
 * {@link CpuLinear#groupedMatmul} and {@link CpuLinear#groupedMatmulBackward}: on both paths and 1, 2
 * and 3 threads, bitwise equal to looping {@link CpuLinear#matmul} / {@link CpuLinear#matmulBackward}
 * over the experts (outputs, dx and dw), within the float64 bound per expert, untouched dw for experts
 * without rows, {@code dx == null}, and row ranges that do not start at 0.
 */
class GroupedMatmulTest {
    /**
     * name, rows per expert, in, out, first row. Zero-row experts first, last, in the middle and
     * everywhere; odd sizes; the fine-grained MoE shape (in=256, out=128, ~192 rows each).
     */
    static Stream<Arguments> cases() {
        return Stream.of(
                Arguments.of("one expert", new int[] {5}, 7, 9, 0),
                Arguments.of("one expert, no rows", new int[] {0}, 7, 9, 0),
                Arguments.of("all experts empty", new int[] {0, 0, 0}, 16, 8, 0),
                Arguments.of("empty first and last", new int[] {0, 3, 1, 0}, 13, 17, 0),
                Arguments.of("empty in the middle", new int[] {4, 0, 0, 9, 2}, 33, 20, 0),
                Arguments.of("single rows", new int[] {1, 1, 0, 1, 1}, 1, 1, 0),
                Arguments.of("one busy expert", new int[] {0, 0, 150, 1, 0, 0}, 40, 50, 0),
                Arguments.of("rows not starting at 0", new int[] {3, 0, 6}, 19, 23, 5),
                Arguments.of("wide out, few rows", new int[] {2, 3, 0, 1}, 9, 300, 0),
                Arguments.of("wide in, few rows", new int[] {1, 0, 2}, 301, 7, 0),
                Arguments.of("in = 0", new int[] {2, 0, 3}, 0, 5, 0),
                Arguments.of("out = 0", new int[] {2, 0, 3}, 5, 0, 0),
                Arguments.of("uneven", new int[] {17, 0, 5, 64, 3, 0, 29, 1}, 48, 49, 0),
                Arguments.of("fine-grained MoE", fineGrained(16, 24 * 6, new SplittableRandom(9)), 256, 128, 0));
    }

    /** Row counts of {@code rows} top-k assignments spread at random over {@code experts}, a few left empty. */
    private static int[] fineGrained(int experts, int rows, SplittableRandom rnd) {
        int[] counts = new int[experts];
        for (int r = 0; r < rows; r++) {
            int e = rnd.nextInt(experts - 3) + 3; // experts 0..2 get no rows
            counts[e]++;
        }
        return counts;
    }

    private static int[] offsets(int[] counts, int first) {
        int[] offsets = new int[counts.length + 1];
        offsets[0] = first;
        for (int e = 0; e < counts.length; e++) {
            offsets[e + 1] = offsets[e] + counts[e];
        }
        return offsets;
    }

    @ParameterizedTest(name = "{0}")
    @MethodSource("cases")
    void groupedEqualsPerExpertMatmulsOnOutputsAndGradients(String name, int[] counts, int in, int out, int first) {
        SplittableRandom rnd = new SplittableRandom(name.hashCode());
        int experts = counts.length;
        int[] offsets = offsets(counts, first);
        int end = offsets[experts];
        int wOff = 3;
        int dwOff = 2;
        float[] x = random(rnd, (end + 2) * in); // rows past the end and before the first stay unread/unwritten
        float[] w = random(rnd, wOff + experts * out * in);
        float[] dy = random(rnd, (end + 2) * out);
        float[] y0 = random(rnd, (end + 2) * out);
        float[] dx0 = random(rnd, (end + 2) * in);
        float[] dw0 = random(rnd, dwOff + experts * out * in + 1);
        for (boolean vector : new boolean[] {false, true}) {
            String path = vector ? "vector" : "scalar";
            // The per-expert loop, one thread.
            CpuLinear one = new CpuLinear(1, vector);
            float[] yLoop = y0.clone();
            float[] dxLoop = dx0.clone();
            float[] dwLoop = dw0.clone();
            for (int e = 0; e < experts; e++) {
                int rows = offsets[e + 1] - offsets[e];
                int we = wOff + e * out * in;
                one.matmul(x, offsets[e] * in, w, we, yLoop, offsets[e] * out, rows, in, out);
                if (rows > 0) {
                    one.matmulBackward(x, offsets[e] * in, w, we, dy, offsets[e] * out, dxLoop, offsets[e] * in, dwLoop, dwOff + e * out * in,
                            rows, in, out);
                }
            }
            for (int threads : new int[] {1, 2, 3}) {
                for (CpuLinear lin : new CpuLinear[] {new CpuLinear(threads, vector, 1), new CpuLinear(threads, vector)}) {
                    String what = path + ", " + threads + " threads: ";
                    float[] y = y0.clone();
                    float[] dx = dx0.clone();
                    float[] dw = dw0.clone();
                    lin.groupedMatmul(x, w, wOff, y, offsets, experts, in, out);
                    lin.groupedMatmulBackward(x, w, wOff, dy, dx, dw, dwOff, offsets, experts, in, out);
                    assertBitwiseEqual(what + "y vs per-expert matmul", y, yLoop);
                    assertBitwiseEqual(what + "dx vs per-expert matmulBackward", dx, dxLoop);
                    assertBitwiseEqual(what + "dw vs per-expert matmulBackward", dw, dwLoop);
                    float[] dwNoDx = dw0.clone();
                    lin.groupedMatmulBackward(x, w, wOff, dy, null, dwNoDx, dwOff, offsets, experts, in, out);
                    assertBitwiseEqual(what + "dw with dx == null", dwNoDx, dwLoop);
                }
            }
            // Rows outside offsets[0] .. offsets[experts] and weights of experts without rows are untouched.
            assertWithMessage("%s y before the first row", path).that(Arrays.copyOf(yLoop, first * out))
                    .isEqualTo(Arrays.copyOf(y0, first * out));
            assertWithMessage("%s y after the last row", path).that(Arrays.copyOfRange(yLoop, end * out, yLoop.length))
                    .isEqualTo(Arrays.copyOfRange(y0, end * out, y0.length));
            assertWithMessage("%s dx before the first row", path).that(Arrays.copyOf(dxLoop, first * in))
                    .isEqualTo(Arrays.copyOf(dx0, first * in));
            assertWithMessage("%s dx after the last row", path).that(Arrays.copyOfRange(dxLoop, end * in, dxLoop.length))
                    .isEqualTo(Arrays.copyOfRange(dx0, end * in, dx0.length));
            for (int e = 0; e < experts; e++) {
                if (counts[e] == 0) {
                    int from = dwOff + e * out * in;
                    assertWithMessage("%s dw of empty expert %s", path, e).that(Arrays.copyOfRange(dwLoop, from, from + out * in))
                            .isEqualTo(Arrays.copyOfRange(dw0, from, from + out * in));
                }
            }
            // And each expert's block against float64 (so the per-expert loop itself is right).
            for (int e = 0; e < experts; e++) {
                int r0 = offsets[e];
                int rows = counts[e];
                int we = wOff + e * out * in;
                int dwe = dwOff + e * out * in;
                assertWithinBound(path + " y of expert " + e, yLoop, r0 * out,
                        LinearTestSupport.forward(x, r0 * in, w, we, rows, in, out), in + 1);
                assertWithinBound(path + " dx of expert " + e, dxLoop, r0 * in,
                        LinearTestSupport.dx(w, we, dy, r0 * out, dx0, r0 * in, rows, in, out), out + 1);
                assertWithinBound(path + " dw of expert " + e, dwLoop, dwe,
                        LinearTestSupport.dw(x, r0 * in, dy, r0 * out, dw0, dwe, rows, in, out), rows + 1);
            }
        }
    }

    @ParameterizedTest(name = "{0}")
    @MethodSource("cases")
    void bothPathsAgreeWithinTheBound(String name, int[] counts, int in, int out, int first) {
        // The scalar and vector paths differ only in rounding: each is within the float64 bound (so
        // within twice that of each other), checked directly on the grouped entry points from zeroed
        // gradients.
        SplittableRandom rnd = new SplittableRandom(~name.hashCode());
        int experts = counts.length;
        int[] offsets = offsets(counts, first);
        int end = offsets[experts];
        float[] x = random(rnd, end * in);
        float[] w = random(rnd, experts * out * in);
        float[] dy = random(rnd, end * out);
        float[] ys = new float[end * out];
        float[] yv = new float[end * out];
        float[] dxs = new float[end * in];
        float[] dxv = new float[end * in];
        float[] dws = new float[experts * out * in];
        float[] dwv = new float[experts * out * in];
        CpuLinear scalar = new CpuLinear(2, false, 1);
        CpuLinear vector = new CpuLinear(2, true, 1);
        scalar.groupedMatmul(x, w, 0, ys, offsets, experts, in, out);
        vector.groupedMatmul(x, w, 0, yv, offsets, experts, in, out);
        scalar.groupedMatmulBackward(x, w, 0, dy, dxs, dws, 0, offsets, experts, in, out);
        vector.groupedMatmulBackward(x, w, 0, dy, dxv, dwv, 0, offsets, experts, in, out);
        for (int e = 0; e < experts; e++) {
            int r0 = offsets[e];
            int rows = counts[e];
            LinearTestSupport.Ref yRef = LinearTestSupport.forward(x, r0 * in, w, e * out * in, rows, in, out);
            LinearTestSupport.Ref dxRef = LinearTestSupport.dx(w, e * out * in, dy, r0 * out, null, 0, rows, in, out);
            LinearTestSupport.Ref dwRef = LinearTestSupport.dw(x, r0 * in, dy, r0 * out, null, 0, rows, in, out);
            assertWithinBound("scalar y of expert " + e, ys, r0 * out, yRef, in + 1);
            assertWithinBound("vector y of expert " + e, yv, r0 * out, yRef, in + 1);
            assertWithinBound("scalar dx of expert " + e, dxs, r0 * in, dxRef, out + 1);
            assertWithinBound("vector dx of expert " + e, dxv, r0 * in, dxRef, out + 1);
            assertWithinBound("scalar dw of expert " + e, dws, e * out * in, dwRef, rows + 1);
            assertWithinBound("vector dw of expert " + e, dwv, e * out * in, dwRef, rows + 1);
        }
    }

    @Test
    void concurrentAndNestedCallsGiveTheSameBits() {
        // Calls made at the same time from several threads, including from inside the shared pool's
        // own workers (a nested Parallel), each get their own packing buffers and the same results.
        SplittableRandom rnd = new SplittableRandom(4242);
        int[] counts = fineGrained(24, 300, rnd);
        int experts = counts.length;
        int[] offsets = offsets(counts, 0);
        int n = offsets[experts];
        int in = 96;
        int out = 80;
        int calls = 6;
        float[][] xs = new float[calls][];
        float[][] dys = new float[calls][];
        for (int c = 0; c < calls; c++) {
            xs[c] = random(rnd, n * in);
            dys[c] = random(rnd, n * out);
        }
        float[] w = random(rnd, experts * out * in);
        CpuLinear lin = new CpuLinear(2, true, 1);
        float[][] expected = new float[calls][];
        for (int c = 0; c < calls; c++) {
            expected[c] = run(lin, xs[c], w, dys[c], offsets, experts, in, out);
        }
        float[][] actual = new float[calls][];
        new Parallel(2).forRange(calls, (from, to) -> {
            for (int c = from; c < to; c++) {
                actual[c] = run(lin, xs[c], w, dys[c], offsets, experts, in, out);
            }
        });
        for (int c = 0; c < calls; c++) {
            assertBitwiseEqual("call " + c, actual[c], expected[c]);
        }
    }

    /** y, dx and dw of one grouped forward and backward, concatenated. */
    private static float[] run(CpuLinear lin, float[] x, float[] w, float[] dy, int[] offsets, int experts, int in, int out) {
        int n = offsets[experts];
        float[] y = new float[n * out];
        float[] dx = new float[n * in];
        float[] dw = new float[experts * out * in];
        lin.groupedMatmul(x, w, 0, y, offsets, experts, in, out);
        lin.groupedMatmulBackward(x, w, 0, dy, dx, dw, 0, offsets, experts, in, out);
        float[] all = Arrays.copyOf(y, y.length + dx.length + dw.length);
        System.arraycopy(dx, 0, all, y.length, dx.length);
        System.arraycopy(dw, 0, all, y.length + dx.length, dw.length);
        return all;
    }
}
