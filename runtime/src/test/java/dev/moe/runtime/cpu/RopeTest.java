package dev.moe.runtime.cpu;

import static dev.moe.runtime.cpu.OpsTesting.assertBitwise;
import static dev.moe.runtime.cpu.OpsTesting.assertClose;
import static dev.moe.runtime.cpu.OpsTesting.assertForward;
import static dev.moe.runtime.cpu.OpsTesting.assertGradient;
import static dev.moe.runtime.cpu.OpsTesting.assertThreadCountInvariant;
import static dev.moe.runtime.cpu.OpsTesting.assertVectorMatchesScalar;
import static dev.moe.runtime.cpu.OpsTesting.d;
import static dev.moe.runtime.cpu.OpsTesting.numericGradient;
import static dev.moe.runtime.cpu.OpsTesting.ops;
import static dev.moe.runtime.cpu.OpsTesting.randn;
import static org.junit.jupiter.api.Assertions.assertThrows;

import java.util.ArrayList;
import java.util.List;
import java.util.Random;
import java.util.function.Function;
import java.util.stream.Stream;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.Arguments;
import org.junit.jupiter.params.provider.MethodSource;

/** Rotary position embedding in the GPT-NeoX / HF "rotate_half" layout. */
class RopeTest {
    private static final int BATCH = 2;
    private static final int SEQ = 5;
    private static final int HEADS = 3;
    private static final int HEAD_DIM = 8;

    /**
     * float64 RoPE written the way HF writes it: {@code emb = cat(freqs, freqs)}, {@code x * cos(emb) +
     * rotate_half(x) * sin(emb)} with {@code rotate_half(x) = cat(-x2, x1)}, on the first
     * {@code rotary} dims of each head (the rest pass through).
     */
    static double[] ropeRef(double[] x, int rows, int seq, int heads, int hd, int rotary, double theta) {
        double[] y = x.clone();
        int half = rotary / 2;
        for (int row = 0; row < rows; row++) {
            int pos = row % seq;
            for (int h = 0; h < heads; h++) {
                int o = (row * heads + h) * hd;
                double[] rotated = new double[rotary];
                for (int i = 0; i < rotary; i++) {
                    double emb = pos * Math.pow(theta, -2.0 * (i % half) / rotary);
                    double rotateHalf = i < half ? -x[o + i + half] : x[o + i - half];
                    rotated[i] = x[o + i] * Math.cos(emb) + rotateHalf * Math.sin(emb);
                }
                System.arraycopy(rotated, 0, y, o, rotary);
            }
        }
        return y;
    }

    static Stream<Arguments> configs() {
        List<Arguments> args = new ArrayList<>();
        for (boolean vector : new boolean[] {false, true}) {
            for (int rotary : new int[] {HEAD_DIM, 4}) {
                for (float theta : new float[] {10_000f, 500f}) {
                    args.add(Arguments.of(rotary, theta, vector));
                }
            }
        }
        return args.stream();
    }

    @ParameterizedTest(name = "rotary={0} theta={1} vector={2}")
    @MethodSource("configs")
    void forwardMatchesFloat64Reference(int rotary, float theta, boolean vector) {
        float[] x = randn(new Random(1), BATCH * SEQ * HEADS * HEAD_DIM, 1);
        float[] y = x.clone();
        ops(1, vector).rope(y, BATCH * SEQ, SEQ, HEADS, HEAD_DIM, rotary, theta, false);
        assertForward("y", y, ropeRef(d(x), BATCH * SEQ, SEQ, HEADS, HEAD_DIM, rotary, theta));
    }

    /** The backward of rope is rope with {@code inverse}: it must equal the gradient of Σ dy · rope(x). */
    @ParameterizedTest(name = "rotary={0} theta={1} vector={2}")
    @MethodSource("configs")
    void inverseIsTheBackwardByFiniteDifferences(int rotary, float theta, boolean vector) {
        Random r = new Random(2);
        float[] x = randn(r, BATCH * SEQ * HEADS * HEAD_DIM, 1);
        float[] dy = randn(r, x.length, 1);
        float[] dx = dy.clone();
        ops(1, vector).rope(dx, BATCH * SEQ, SEQ, HEADS, HEAD_DIM, rotary, theta, true);
        Function<double[][], double[]> f = in -> ropeRef(in[0], BATCH * SEQ, SEQ, HEADS, HEAD_DIM, rotary, theta);
        assertGradient("dx", dx, numericGradient(f, new double[][] {d(x)}, 0, d(dy)));
    }

    @Test
    void inverseUndoesRope() {
        int seq = 64;
        int hd = 64;
        float[] x = randn(new Random(3), 2 * seq * 4 * hd, 1);
        for (int rotary : new int[] {hd, 32}) {
            for (boolean vector : new boolean[] {false, true}) {
                float[] y = x.clone();
                CpuOps ops = ops(1, vector);
                ops.rope(y, 2 * seq, seq, 4, hd, rotary, 10_000f, false);
                ops.rope(y, 2 * seq, seq, 4, hd, rotary, 10_000f, true);
                assertClose("rotary " + rotary, y, d(x), 1e-6, 0);
            }
        }
    }

    @Test
    void dimsBeyondRotaryDimsPassThroughAndPositionZeroIsIdentity() {
        float[] x = randn(new Random(4), BATCH * SEQ * HEADS * HEAD_DIM, 1);
        float[] y = x.clone();
        ops(1, true).rope(y, BATCH * SEQ, SEQ, HEADS, HEAD_DIM, 4, 10_000f, false);
        for (int row = 0; row < BATCH * SEQ; row++) {
            for (int h = 0; h < HEADS; h++) {
                int o = (row * HEADS + h) * HEAD_DIM;
                int from = row % SEQ == 0 ? 0 : 4; // position 0 rotates by angle 0
                for (int e = from; e < HEAD_DIM; e++) {
                    assertBitwise("row " + row + " head " + h, new float[] {y[o + e]}, new float[] {x[o + e]});
                }
            }
        }
    }

    @Test
    void zeroRotaryDimsIsANoOpAndOddRotaryDimsAreRejected() {
        float[] x = randn(new Random(5), SEQ * HEADS * HEAD_DIM, 1);
        float[] y = x.clone();
        ops(1, true).rope(y, SEQ, SEQ, HEADS, HEAD_DIM, 0, 10_000f, false);
        assertBitwise("rotary 0", y, x);
        assertThrows(IllegalArgumentException.class, () -> ops(1, true).rope(y, SEQ, SEQ, HEADS, HEAD_DIM, 3, 10_000f, false));
        assertThrows(IllegalArgumentException.class, () -> ops(1, true).rope(y, SEQ, SEQ, HEADS, HEAD_DIM, 10, 10_000f, false));
    }

    @Test
    void vectorMatchesScalar() {
        assertVectorMatchesScalar("rope", ops -> run(ops, 48, 40));
    }

    @Test
    void threadCountInvariant() {
        assertThreadCountInvariant("rope", ops -> run(ops, 24, 16));
    }

    private static float[][] run(CpuOps ops, int hd, int rotary) {
        int seq = 9;
        Random r = new Random(6);
        float[] y = randn(r, 3 * seq * 2 * hd, 1);
        float[] dx = randn(r, y.length, 1);
        ops.rope(y, 3 * seq, seq, 2, hd, rotary, 10_000f, false);
        ops.rope(dx, 3 * seq, seq, 2, hd, rotary, 10_000f, true);
        return new float[][] {y, dx};
    }
}
