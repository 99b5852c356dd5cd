package dev.moe.runtime.cpu;

import static com.google.common.truth.Truth.assertThat;
import static dev.moe.runtime.cpu.OpsTesting.assertBitwise;
import static dev.moe.runtime.cpu.OpsTesting.assertClose;
import static dev.moe.runtime.cpu.OpsTesting.assertGradient;
import static dev.moe.runtime.cpu.OpsTesting.assertRelative;
import static dev.moe.runtime.cpu.OpsTesting.d;
import static dev.moe.runtime.cpu.OpsTesting.filled;
import static dev.moe.runtime.cpu.OpsTesting.numericGradient;
import static dev.moe.runtime.cpu.OpsTesting.ops;
import static dev.moe.runtime.cpu.OpsTesting.randn;
import static org.junit.jupiter.api.Assertions.assertThrows;

import java.util.Random;
import java.util.function.Function;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.ValueSource;

/** Mean cross-entropy over rows, and its gradient (softmax − onehot) / rows. */
class CrossEntropyTest {
    private static final int ROWS = 4;
    /** Three 16-lane vectors and a tail. */
    private static final int VOCAB = 53;

    static double lossRef(double[] logits, int[] targets, int rows, int vocab) {
        double total = 0;
        for (int r = 0; r < rows; r++) {
            double max = Double.NEGATIVE_INFINITY;
            for (int j = 0; j < vocab; j++) {
                max = Math.max(max, logits[r * vocab + j]);
            }
            double z = 0;
            for (int j = 0; j < vocab; j++) {
                z += Math.exp(logits[r * vocab + j] - max);
            }
            total += max + Math.log(z) - logits[r * vocab + targets[r]];
        }
        return total / rows;
    }

    private static int[] targets(Random r, int rows, int vocab) {
        int[] t = new int[rows];
        for (int i = 0; i < rows; i++) {
            t[i] = r.nextInt(vocab);
        }
        return t;
    }

    @ParameterizedTest(name = "vector={0}")
    @ValueSource(booleans = {false, true})
    void lossMatchesFloat64Reference(boolean vector) {
        Random r = new Random(1);
        float[] logits = randn(r, ROWS * VOCAB, 3);
        int[] targets = targets(r, ROWS, VOCAB);
        double loss = ops(1, vector).crossEntropy(logits, targets, new float[logits.length], ROWS, VOCAB);
        assertThat(loss).isWithin(1e-6).of(lossRef(d(logits), targets, ROWS, VOCAB));
    }

    @ParameterizedTest(name = "vector={0}")
    @ValueSource(booleans = {false, true})
    void gradientMatchesFiniteDifferencesAndTheClosedForm(boolean vector) {
        Random r = new Random(2);
        float[] logits = randn(r, ROWS * VOCAB, 3);
        int[] targets = targets(r, ROWS, VOCAB);
        float[] dLogits = new float[logits.length];
        ops(1, vector).crossEntropy(logits, targets, dLogits, ROWS, VOCAB);

        Function<double[][], double[]> f = in -> new double[] {lossRef(in[0], targets, ROWS, VOCAB)};
        assertGradient("dLogits", dLogits, numericGradient(f, new double[][] {d(logits)}, 0, new double[] {1}));

        double[] closed = new double[logits.length];
        for (int row = 0; row < ROWS; row++) {
            double max = Double.NEGATIVE_INFINITY;
            for (int j = 0; j < VOCAB; j++) {
                max = Math.max(max, logits[row * VOCAB + j]);
            }
            double z = 0;
            for (int j = 0; j < VOCAB; j++) {
                z += Math.exp(logits[row * VOCAB + j] - max);
            }
            for (int j = 0; j < VOCAB; j++) {
                double p = Math.exp(logits[row * VOCAB + j] - max) / z;
                closed[row * VOCAB + j] = (p - (j == targets[row] ? 1 : 0)) / ROWS;
            }
        }
        assertClose("dLogits", dLogits, closed, 1e-8, 1e-5);
    }

    @ParameterizedTest(name = "vector={0}")
    @ValueSource(booleans = {false, true})
    void gradientIsOverwritten(boolean vector) {
        Random r = new Random(3);
        float[] logits = randn(r, ROWS * VOCAB, 2);
        int[] targets = targets(r, ROWS, VOCAB);
        float[] clean = new float[logits.length];
        float[] dirty = filled(logits.length, Float.NaN);
        double a = ops(1, vector).crossEntropy(logits, targets, clean, ROWS, VOCAB);
        double b = ops(1, vector).crossEntropy(logits, targets, dirty, ROWS, VOCAB);
        assertThat(b).isEqualTo(a);
        assertBitwise("dLogits", dirty, clean);
    }

    @ParameterizedTest(name = "vector={0}")
    @ValueSource(booleans = {false, true})
    void uniformLogitsCostLnVocab(boolean vector) {
        for (int vocab : new int[] {2, 53, 1000}) {
            for (float level : new float[] {0f, 7.5f, -1000f}) {
                float[] logits = filled(3 * vocab, level);
                float[] dLogits = new float[logits.length];
                double loss = ops(1, vector).crossEntropy(logits, new int[] {0, vocab - 1, vocab / 2}, dLogits, 3, vocab);
                assertThat(loss).isWithin(1e-12).of(Math.log(vocab));
            }
        }
    }

    @ParameterizedTest(name = "vector={0}")
    @ValueSource(booleans = {false, true})
    void hugeLogitsAreStable(boolean vector) {
        float[] logits = {1e30f, -1e30f, 5e29f, 80f, 1000f, 1000f, 999f, 998f};
        float[] dLogits = new float[logits.length];
        double loss = ops(1, vector).crossEntropy(logits, new int[] {1, 2}, dLogits, 2, 4);
        // Row 0: lse = 1e30, minus logit -1e30; row 1 is lost next to it in double, so check it alone.
        assertThat(loss).isWithin(1e23).of(1e30);
        for (float g : dLogits) {
            assertThat(Float.isFinite(g)).isTrue();
        }
        assertThat((double) dLogits[0]).isWithin(1e-7).of(0.5);
        assertThat((double) dLogits[1]).isWithin(1e-7).of(-0.5);

        float[] row1 = java.util.Arrays.copyOfRange(logits, 4, 8);
        double loss1 = ops(1, vector).crossEntropy(row1, new int[] {2}, new float[4], 1, 4);
        assertThat(loss1).isWithin(1e-6).of(1000 + Math.log(2 + Math.exp(-1) + Math.exp(-2)) - 999);
    }

    @Test
    void targetsOutOfRangeAreRejected() {
        float[] logits = new float[2 * 5];
        assertThrows(IndexOutOfBoundsException.class, () -> ops(1, true).crossEntropy(logits, new int[] {0, 5}, new float[10], 2, 5));
        assertThrows(IndexOutOfBoundsException.class, () -> ops(1, true).crossEntropy(logits, new int[] {-1, 0}, new float[10], 2, 5));
    }

    @Test
    void vectorMatchesScalar() {
        int rows = 9;
        int vocab = 1013;
        Random r = new Random(4);
        float[] logits = randn(r, rows * vocab, 4);
        int[] targets = targets(r, rows, vocab);
        float[] scalar = new float[logits.length];
        float[] vector = new float[logits.length];
        double ls = ops(1, false).crossEntropy(logits, targets, scalar, rows, vocab);
        double lv = ops(1, true).crossEntropy(logits, targets, vector, rows, vocab);
        assertThat(lv).isWithin(1e-5 * Math.abs(ls)).of(ls);
        // The gradient is about 1 / (rows · vocab) per entry: relative to that scale.
        assertRelative("dLogits", vector, scalar, 1.0 / (rows * vocab));
    }

    @Test
    void threadCountInvariant() {
        int rows = 11;
        int vocab = 301;
        Random r = new Random(5);
        float[] logits = randn(r, rows * vocab, 4);
        int[] targets = targets(r, rows, vocab);
        for (boolean vector : new boolean[] {false, true}) {
            float[] one = new float[logits.length];
            double lossOne = ops(1, vector).crossEntropy(logits, targets, one, rows, vocab);
            for (int threads : new int[] {2, 3}) {
                float[] many = new float[logits.length];
                double lossMany = new CpuOps(threads, vector, 1).crossEntropy(logits, targets, many, rows, vocab);
                assertThat(Double.doubleToRawLongBits(lossMany)).isEqualTo(Double.doubleToRawLongBits(lossOne));
                assertBitwise("dLogits threads=" + threads, many, one);
            }
        }
    }
}
