package dev.moe.runtime.cpu;

import static com.google.common.truth.Truth.assertThat;
import static com.google.common.truth.Truth.assertWithMessage;
import static dev.moe.runtime.cpu.LinearTestSupport.assertBitwiseEqual;
import static dev.moe.runtime.cpu.LinearTestSupport.assertWithinBound;
import static dev.moe.runtime.cpu.LinearTestSupport.random;
import static org.junit.jupiter.api.Assertions.assertThrows;

import dev.moe.runtime.cpu.LinearTestSupport.Ref;
import java.util.Arrays;
import java.util.SplittableRandom;
import java.util.concurrent.atomic.AtomicIntegerArray;
import java.util.stream.Stream;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.Arguments;
import org.junit.jupiter.params.provider.MethodSource;
import org.junit.jupiter.params.provider.ValueSource;

/**
 * {@link CpuLinear#matmul} and {@link CpuLinear#matmulBackward}: both paths (scalar and Vector API)
 * on 1, 2 and 3 threads against float64 references (within the rigorous dot-product bound of
 * {@link LinearTestSupport}), bitwise equality across thread counts, the backward against central
 * finite differences, accumulation, {@code dx == null}, operand offsets, and {@link Parallel}.
 */
class LinearKernelTest {
    /** A guard value around every operand: anything written outside its range shows up. */
    private static final float GUARD = 12345.5f;

    /** rows, in, out: empty, tiny, not multiples of any vector width, both split orientations, large-ish. */
    static Stream<Arguments> shapes() {
        int[][] shapes = {
            {0, 5, 7}, {0, 0, 0}, {3, 0, 4}, {4, 6, 0}, {1, 1, 1}, {1, 1, 17}, {1, 17, 1}, {2, 3, 4}, {3, 7, 5}, {4, 16, 16},
            {5, 15, 17}, {7, 31, 33}, {8, 48, 48}, {9, 49, 47}, {13, 64, 96}, {16, 97, 50}, {17, 128, 3}, {31, 5, 129},
            {2, 300, 300}, {3, 257, 1000}, {64, 256, 128}, {100, 33, 257}, {130, 200, 70}, {1, 1000, 1}, {300, 257, 129},
        };
        return Arrays.stream(shapes).map(s -> Arguments.of(s[0], s[1], s[2]));
    }

    /** Kernels that split every call over threads, however small, so that small shapes test the splits too. */
    static CpuLinear eager(int threads, boolean vector) {
        return new CpuLinear(threads, vector, 1);
    }

    /** An operand of n values at offset {@code off} in a guarded array. */
    private static float[] guarded(int off, float[] values, int n) {
        float[] a = new float[off + n + 7];
        Arrays.fill(a, GUARD);
        if (values != null) {
            System.arraycopy(values, 0, a, off, n);
        }
        return a;
    }

    private static void assertGuards(String what, float[] a, int off, int n) {
        for (int j = 0; j < a.length; j++) {
            if ((j < off || j >= off + n) && a[j] != GUARD) {
                assertWithMessage("%s: wrote outside its range at %s (range %s..%s)", what, j, off, off + n).fail();
            }
        }
    }

    @ParameterizedTest(name = "rows={0} in={1} out={2}")
    @MethodSource("shapes")
    void forwardMatchesFloat64OnBothPathsAndIsThreadCountInvariant(int rows, int in, int out) {
        SplittableRandom rnd = new SplittableRandom(31L * rows + 7L * in + out);
        int xOff = 3;
        int wOff = 5;
        int yOff = 1;
        float[] x = guarded(xOff, random(rnd, rows * in), rows * in);
        float[] w = guarded(wOff, random(rnd, out * in), out * in);
        Ref ref = LinearTestSupport.forward(x, xOff, w, wOff, rows, in, out);
        for (boolean vector : new boolean[] {false, true}) {
            float[] first = null;
            for (int threads : new int[] {1, 2, 3}) {
                String what = (vector ? "vector" : "scalar") + " y, " + threads + " threads";
                float[] y = guarded(yOff, random(rnd, rows * out), rows * out); // stale values: forward overwrites
                eager(threads, vector).matmul(x, xOff, w, wOff, y, yOff, rows, in, out);
                assertWithinBound(what, y, yOff, ref, in + 1);
                assertGuards(what, y, yOff, rows * out);
                if (first == null) {
                    first = y;
                } else {
                    assertBitwiseEqual(what + " vs 1 thread", y, first);
                }
            }
            // The default grain (no split for small work) gives the same bits as the eager split.
            float[] y = guarded(yOff, null, rows * out);
            new CpuLinear(2, vector).matmul(x, xOff, w, wOff, y, yOff, rows, in, out);
            assertBitwiseEqual((vector ? "vector" : "scalar") + " y, default grain", y, first);
        }
    }

    @ParameterizedTest(name = "rows={0} in={1} out={2}")
    @MethodSource("shapes")
    void backwardMatchesFloat64OnBothPathsAndIsThreadCountInvariant(int rows, int in, int out) {
        SplittableRandom rnd = new SplittableRandom(17L * rows + 5L * in + 3L * out);
        int xOff = 2;
        int wOff = 9;
        int dyOff = 4;
        int dxOff = 6;
        int dwOff = 1;
        float[] x = guarded(xOff, random(rnd, rows * in), rows * in);
        float[] w = guarded(wOff, random(rnd, out * in), out * in);
        float[] dy = guarded(dyOff, random(rnd, rows * out), rows * out);
        float[] dx0 = guarded(dxOff, random(rnd, rows * in), rows * in);
        float[] dw0 = guarded(dwOff, random(rnd, out * in), out * in);
        Ref dxRef = LinearTestSupport.dx(w, wOff, dy, dyOff, dx0, dxOff, rows, in, out);
        Ref dwRef = LinearTestSupport.dw(x, xOff, dy, dyOff, dw0, dwOff, rows, in, out);
        for (boolean vector : new boolean[] {false, true}) {
            float[] firstDx = null;
            float[] firstDw = null;
            for (int threads : new int[] {1, 2, 3}) {
                String what = (vector ? "vector" : "scalar") + ", " + threads + " threads: ";
                float[] dx = dx0.clone();
                float[] dw = dw0.clone();
                eager(threads, vector).matmulBackward(x, xOff, w, wOff, dy, dyOff, dx, dxOff, dw, dwOff, rows, in, out);
                assertWithinBound(what + "dx", dx, dxOff, dxRef, out + 1);
                assertWithinBound(what + "dw", dw, dwOff, dwRef, rows + 1);
                assertGuards(what + "dx", dx, dxOff, rows * in);
                assertGuards(what + "dw", dw, dwOff, out * in);
                if (firstDx == null) {
                    firstDx = dx;
                    firstDw = dw;
                } else {
                    assertBitwiseEqual(what + "dx vs 1 thread", dx, firstDx);
                    assertBitwiseEqual(what + "dw vs 1 thread", dw, firstDw);
                }
            }
            // dx == null skips dx and leaves dw exactly as it is with dx.
            float[] dw = dw0.clone();
            eager(2, vector).matmulBackward(x, xOff, w, wOff, dy, dyOff, null, 0, dw, dwOff, rows, in, out);
            assertBitwiseEqual((vector ? "vector" : "scalar") + " dw with dx == null", dw, firstDw);
        }
    }

    /** Small shapes for the finite-difference checks. */
    static Stream<Arguments> smallShapes() {
        return Stream.of(Arguments.of(1, 1, 1), Arguments.of(2, 3, 4), Arguments.of(3, 17, 5), Arguments.of(5, 4, 19),
                Arguments.of(4, 33, 20), Arguments.of(6, 20, 49));
    }

    /** {@code L = Σ g[r][o] · (x · wᵀ)[r][o]} in float64. */
    private static double loss(double[] x, double[] w, float[] g, int rows, int in, int out) {
        double l = 0;
        for (int r = 0; r < rows; r++) {
            for (int o = 0; o < out; o++) {
                double y = 0;
                for (int i = 0; i < in; i++) {
                    y += x[r * in + i] * w[o * in + i];
                }
                l += g[r * out + o] * y;
            }
        }
        return l;
    }

    private static double[] toDouble(float[] a) {
        double[] d = new double[a.length];
        for (int i = 0; i < a.length; i++) {
            d[i] = a[i];
        }
        return d;
    }

    private static double centralDifference(double[] v, int j, double h, java.util.function.DoubleSupplier f) {
        double saved = v[j];
        v[j] = saved + h;
        double plus = f.getAsDouble();
        v[j] = saved - h;
        double minus = f.getAsDouble();
        v[j] = saved;
        return (plus - minus) / (2 * h);
    }

    @ParameterizedTest(name = "rows={0} in={1} out={2}")
    @MethodSource("smallShapes")
    void backwardMatchesCentralFiniteDifferences(int rows, int in, int out) {
        SplittableRandom rnd = new SplittableRandom(1000L + rows * in * out);
        float[] x = random(rnd, rows * in);
        float[] w = random(rnd, out * in);
        float[] g = random(rnd, rows * out); // the upstream gradient dL/dy
        double[] xd = toDouble(x);
        double[] wd = toDouble(w);
        double h = 1e-3;
        double[] numDx = new double[rows * in];
        double[] numDw = new double[out * in];
        for (int j = 0; j < numDx.length; j++) {
            numDx[j] = centralDifference(xd, j, h, () -> loss(xd, wd, g, rows, in, out));
        }
        for (int j = 0; j < numDw.length; j++) {
            numDw[j] = centralDifference(wd, j, h, () -> loss(xd, wd, g, rows, in, out));
        }
        for (boolean vector : new boolean[] {false, true}) {
            for (int threads : new int[] {1, 2}) {
                String what = (vector ? "vector" : "scalar") + ", " + threads + " threads: ";
                float[] dx = new float[rows * in];
                float[] dw = new float[out * in];
                eager(threads, vector).matmulBackward(x, 0, w, 0, g, 0, dx, 0, dw, 0, rows, in, out);
                assertCloseToNumeric(what + "dx", dx, numDx);
                assertCloseToNumeric(what + "dw", dw, numDw);
            }
        }
    }

    private static void assertCloseToNumeric(String what, float[] analytic, double[] numeric) {
        for (int j = 0; j < numeric.length; j++) {
            double tol = 1e-5 + 1e-3 * Math.abs(numeric[j]);
            if (!(Math.abs(analytic[j] - numeric[j]) <= tol)) {
                assertWithMessage("%s[%s]: analytic %s, numeric %s", what, j, analytic[j], numeric[j]).fail();
            }
        }
    }

    @ParameterizedTest(name = "vectorApi={0}")
    @ValueSource(booleans = {false, true})
    void backwardAccumulatesIntoPrefilledGradients(boolean vector) {
        SplittableRandom rnd = new SplittableRandom(77);
        int rows = 11;
        int in = 37;
        int out = 53;
        float[] x = random(rnd, rows * in);
        float[] w = random(rnd, out * in);
        float[] dy = random(rnd, rows * out);
        CpuLinear lin = eager(2, vector);
        float[] dxOnce = new float[rows * in];
        float[] dwOnce = new float[out * in];
        lin.matmulBackward(x, 0, w, 0, dy, 0, dxOnce, 0, dwOnce, 0, rows, in, out);
        // Starting from a first call's result, a second call adds the same gradient again.
        float[] dx = dxOnce.clone();
        float[] dw = dwOnce.clone();
        lin.matmulBackward(x, 0, w, 0, dy, 0, dx, 0, dw, 0, rows, in, out);
        for (int j = 0; j < dx.length; j++) {
            assertThat((double) dx[j]).isWithin(1e-5 + 1e-5 * Math.abs(dxOnce[j])).of(2.0 * dxOnce[j]);
        }
        for (int j = 0; j < dw.length; j++) {
            assertThat((double) dw[j]).isWithin(1e-5 + 1e-5 * Math.abs(dwOnce[j])).of(2.0 * dwOnce[j]);
        }
        // With a constant prefill c: result - c == the gradient from zero (within the rounding of one add).
        float c = 0.75f;
        float[] dxc = new float[rows * in];
        float[] dwc = new float[out * in];
        Arrays.fill(dxc, c);
        Arrays.fill(dwc, c);
        lin.matmulBackward(x, 0, w, 0, dy, 0, dxc, 0, dwc, 0, rows, in, out);
        for (int j = 0; j < dx.length; j++) {
            assertThat((double) dxc[j] - c).isWithin(1e-5).of(dxOnce[j]);
        }
        for (int j = 0; j < dw.length; j++) {
            assertThat((double) dwc[j] - c).isWithin(1e-5).of(dwOnce[j]);
        }
    }

    @Test
    void vectorPathIsBitwiseTheSameFusedChainForEveryTileAndRowPosition() {
        // Every element is fma(x[i], w[i], acc) over i from 0, wherever it falls in the tiling: the
        // same row computed alone or inside a big block gives identical bits.
        SplittableRandom rnd = new SplittableRandom(5);
        int rows = 37;
        int in = 301;
        int out = 71;
        float[] x = random(rnd, rows * in);
        float[] w = random(rnd, out * in);
        float[] y = new float[rows * out];
        CpuLinear lin = eager(2, true);
        lin.matmul(x, 0, w, 0, y, 0, rows, in, out);
        for (int r = 0; r < rows; r++) {
            float[] yr = new float[out];
            lin.matmul(x, r * in, w, 0, yr, 0, 1, in, out);
            for (int o = 0; o < out; o++) {
                float acc = 0f;
                for (int i = 0; i < in; i++) {
                    acc = Math.fma(x[r * in + i], w[o * in + i], acc);
                }
                assertWithMessage("y[%s][%s]", r, o).that(y[r * out + o]).isEqualTo(acc);
                assertWithMessage("y[%s][%s] alone", r, o).that(yr[o]).isEqualTo(acc);
            }
        }
    }

    @Test
    void rejectsOperandsTooSmallForTheShape() {
        CpuLinear lin = new CpuLinear(1, true);
        assertThrows(IndexOutOfBoundsException.class, () -> lin.matmul(new float[5], 0, new float[6], 0, new float[6], 0, 2, 3, 2));
        assertThrows(IllegalArgumentException.class, () -> lin.matmul(new float[0], 0, new float[0], 0, new float[0], 0, -1, 3, 2));
        assertThrows(IllegalArgumentException.class,
                () -> lin.groupedMatmul(new float[6], new float[6], 0, new float[4], new int[] {0, 2, 1}, 2, 3, 2));
    }

    // ---- Parallel ----

    @ParameterizedTest(name = "threads={0}")
    @ValueSource(ints = {1, 2, 3, 8})
    void parallelCoversTheRangeOnceInContiguousChunks(int threads) {
        Parallel p = new Parallel(threads);
        assertThat(p.threads()).isEqualTo(threads);
        for (int n : new int[] {0, 1, 2, 5, 64, 1001}) {
            AtomicIntegerArray hits = new AtomicIntegerArray(Math.max(1, n));
            int[] calls = new int[1];
            p.forRange(n, (from, to) -> {
                assertThat(from).isAtLeast(0);
                assertThat(to).isAtMost(n);
                assertThat(from).isLessThan(to);
                synchronized (calls) {
                    calls[0]++;
                }
                for (int i = from; i < to; i++) {
                    hits.incrementAndGet(i);
                }
            });
            for (int i = 0; i < n; i++) {
                assertWithMessage("n=%s index %s", n, i).that(hits.get(i)).isEqualTo(1);
            }
            assertThat(calls[0]).isEqualTo(Math.min(threads, n));
        }
    }

    @Test
    void parallelRunsSmallRangesInlineAndPropagatesExceptions() {
        Parallel p = new Parallel(2);
        Thread caller = Thread.currentThread();
        p.forRange(7, 4, (from, to) -> {
            assertThat(Thread.currentThread()).isSameInstanceAs(caller);
            assertThat(from).isEqualTo(0);
            assertThat(to).isEqualTo(7);
        });
        IllegalStateException e = assertThrows(IllegalStateException.class, () -> p.forRange(10, (from, to) -> {
            if (from > 0) {
                throw new IllegalStateException("chunk " + from);
            }
        }));
        assertThat(e).hasMessageThat().isEqualTo("chunk 5");
        // Nested use from inside a body works and still covers everything.
        AtomicIntegerArray hits = new AtomicIntegerArray(16);
        p.forRange(4, (a, b) -> {
            for (int i = a; i < b; i++) {
                int base = i * 4;
                p.forRange(4, (c, d) -> {
                    for (int j = c; j < d; j++) {
                        hits.incrementAndGet(base + j);
                    }
                });
            }
        });
        for (int i = 0; i < 16; i++) {
            assertThat(hits.get(i)).isEqualTo(1);
        }
        assertThrows(IllegalArgumentException.class, () -> new Parallel(0));
    }
}
