package dev.moe.runtime.cpu;

import static com.google.common.truth.Truth.assertThat;
import static dev.moe.runtime.cpu.OpsTesting.assertBitwise;
import static dev.moe.runtime.cpu.OpsTesting.assertForward;
import static dev.moe.runtime.cpu.OpsTesting.assertGradient;
import static dev.moe.runtime.cpu.OpsTesting.assertThreadCountInvariant;
import static dev.moe.runtime.cpu.OpsTesting.assertVectorMatchesScalar;
import static dev.moe.runtime.cpu.OpsTesting.d;
import static dev.moe.runtime.cpu.OpsTesting.filled;
import static dev.moe.runtime.cpu.OpsTesting.numericGradient;
import static dev.moe.runtime.cpu.OpsTesting.ops;
import static dev.moe.runtime.cpu.OpsTesting.plus;
import static dev.moe.runtime.cpu.OpsTesting.randn;

import java.util.ArrayList;
import java.util.List;
import java.util.Random;
import java.util.function.Function;
import java.util.stream.Stream;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.Arguments;
import org.junit.jupiter.params.provider.MethodSource;
import org.junit.jupiter.params.provider.ValueSource;

/** Grouped-query scaled dot-product attention with causal and sliding-window masks, and its backward. */
class AttentionTest {
    private static final int B = 2;
    private static final int S = 5;
    private static final int H = 4;
    private static final int KV = 2;
    private static final int HD = 8;

    /** Whether key j is visible to query i: causal hides j > i, a window w > 0 hides j <= i - w. */
    static boolean visible(int i, int j, boolean causal, int window) {
        return (!causal || j <= i) && (window <= 0 || j > i - window);
    }

    /** float64 attention; fills {@code lse} (length B*S*H) when not null. */
    static double[] attentionRef(double[] q, double[] k, double[] v, double[] lse, int batch, int seq, int heads, int kvHeads, int hd,
            boolean causal, int window) {
        return attentionRef(q, k, v, lse, batch, seq, heads, kvHeads, hd, causal, window, null);
    }

    /** The same with a padding mask: a query sees a dropped key only when it is its own row. */
    static double[] attentionRef(double[] q, double[] k, double[] v, double[] lse, int batch, int seq, int heads, int kvHeads, int hd,
            boolean causal, int window, boolean[] keep) {
        double[] out = new double[batch * seq * heads * hd];
        double scale = 1 / Math.sqrt(hd);
        for (int b = 0; b < batch; b++) {
            for (int h = 0; h < heads; h++) {
                int g = h / (heads / kvHeads);
                for (int i = 0; i < seq; i++) {
                    double[] s = new double[seq];
                    double max = Double.NEGATIVE_INFINITY;
                    for (int j = 0; j < seq; j++) {
                        if (!(visible(i, j, causal, window) && (keep == null || j == i || keep[b * seq + j]))) {
                            continue;
                        }
                        double dot = 0;
                        for (int e = 0; e < hd; e++) {
                            dot += q[((b * seq + i) * heads + h) * hd + e] * k[((b * seq + j) * kvHeads + g) * hd + e];
                        }
                        s[j] = dot * scale;
                        max = Math.max(max, s[j]);
                    }
                    double z = 0;
                    for (int j = 0; j < seq; j++) {
                        if ((visible(i, j, causal, window) && (keep == null || j == i || keep[b * seq + j]))) {
                            z += Math.exp(s[j] - max);
                        }
                    }
                    for (int j = 0; j < seq; j++) {
                        if (!(visible(i, j, causal, window) && (keep == null || j == i || keep[b * seq + j]))) {
                            continue;
                        }
                        double p = Math.exp(s[j] - max) / z;
                        for (int e = 0; e < hd; e++) {
                            out[((b * seq + i) * heads + h) * hd + e] += p * v[((b * seq + j) * kvHeads + g) * hd + e];
                        }
                    }
                    if (lse != null) {
                        lse[(b * seq + i) * heads + h] = max + Math.log(z);
                    }
                }
            }
        }
        return out;
    }

    static Stream<Arguments> masks() {
        List<Arguments> args = new ArrayList<>();
        for (boolean vector : new boolean[] {false, true}) {
            for (boolean causal : new boolean[] {true, false}) {
                for (int window : new int[] {0, 2, 3}) {
                    args.add(Arguments.of(causal, window, vector));
                }
            }
        }
        return args.stream();
    }

    @ParameterizedTest(name = "causal={0} window={1} vector={2}")
    @MethodSource("masks")
    void forwardMatchesFloat64Reference(boolean causal, int window, boolean vector) {
        Random r = new Random(1);
        float[] q = randn(r, B * S * H * HD, 1);
        float[] k = randn(r, B * S * KV * HD, 1);
        float[] v = randn(r, B * S * KV * HD, 1);
        float[] out = filled(q.length, Float.NaN);
        float[] lse = filled(B * S * H, Float.NaN);
        ops(1, vector).attention(q, k, v, out, lse, B, S, H, KV, HD, causal, window);
        double[] lseRef = new double[B * S * H];
        assertForward("out", out, attentionRef(d(q), d(k), d(v), lseRef, B, S, H, KV, HD, causal, window));
        assertForward("lse", lse, lseRef);
    }

    @ParameterizedTest(name = "causal={0} window={1} vector={2}")
    @MethodSource("masks")
    void backwardMatchesFiniteDifferences(boolean causal, int window, boolean vector) {
        Random r = new Random(2);
        float[] q = randn(r, B * S * H * HD, 1);
        float[] k = randn(r, B * S * KV * HD, 1);
        float[] v = randn(r, B * S * KV * HD, 1);
        float[] dOut = randn(r, q.length, 1);
        CpuOps ops = ops(1, vector);
        float[] out = new float[q.length];
        float[] lse = new float[B * S * H];
        ops.attention(q, k, v, out, lse, B, S, H, KV, HD, causal, window);
        float[] dq = new float[q.length];
        float[] dk = new float[k.length];
        float[] dv = new float[v.length];
        ops.attentionBackward(q, k, v, out, lse, dOut, dq, dk, dv, B, S, H, KV, HD, causal, window);

        Function<double[][], double[]> f = in -> attentionRef(in[0], in[1], in[2], null, B, S, H, KV, HD, causal, window);
        double[][] in = {d(q), d(k), d(v)};
        assertGradient("dq", dq, numericGradient(f, in, 0, d(dOut)));
        assertGradient("dk", dk, numericGradient(f, in, 1, d(dOut)));
        assertGradient("dv", dv, numericGradient(f, in, 2, d(dOut)));
    }

    /** Rows 1 and 3 of the first sequence and row 0 of the second are dropped. */
    private static final boolean[] KEEP = {true, false, true, false, true, false, true, true, true, true};

    @ParameterizedTest(name = "causal={0} window={1} vector={2}")
    @MethodSource("masks")
    void paddingMaskMatchesFloat64ReferenceForwardAndBackward(boolean causal, int window, boolean vector) {
        Random r = new Random(4);
        float[] q = randn(r, B * S * H * HD, 1);
        float[] k = randn(r, B * S * KV * HD, 1);
        float[] v = randn(r, B * S * KV * HD, 1);
        float[] dOut = randn(r, q.length, 1);
        CpuOps ops = ops(1, vector);
        float[] out = filled(q.length, Float.NaN);
        float[] lse = filled(B * S * H, Float.NaN);
        ops.attention(q, k, v, out, lse, B, S, H, KV, HD, causal, window, KEEP);
        double[] lseRef = new double[B * S * H];
        assertForward("out", out, attentionRef(d(q), d(k), d(v), lseRef, B, S, H, KV, HD, causal, window, KEEP));
        assertForward("lse", lse, lseRef);
        float[] dq = new float[q.length];
        float[] dk = new float[k.length];
        float[] dv = new float[v.length];
        ops.attentionBackward(q, k, v, out, lse, dOut, dq, dk, dv, B, S, H, KV, HD, causal, window, KEEP);
        Function<double[][], double[]> f = in -> attentionRef(in[0], in[1], in[2], null, B, S, H, KV, HD, causal, window, KEEP);
        double[][] in = {d(q), d(k), d(v)};
        assertGradient("dq", dq, numericGradient(f, in, 0, d(dOut)));
        assertGradient("dk", dk, numericGradient(f, in, 1, d(dOut)));
        assertGradient("dv", dv, numericGradient(f, in, 2, d(dOut)));
    }

    /** Query rows (attention experts' routed tokens): some kept rows, not all; row 0 of the second sequence is dropped and no query. */
    private static final boolean[] QUERIES = {true, false, false, false, true, false, false, true, false, true};

    @ParameterizedTest(name = "causal={0} window={1} vector={2}")
    @MethodSource("masks")
    void queryRowsMatchTheFloat64ReferenceOnThoseRows(boolean causal, int window, boolean vector) {
        Random r = new Random(6);
        float[] q = randn(r, B * S * H * HD, 1);
        float[] k = randn(r, B * S * KV * HD, 1);
        float[] v = randn(r, B * S * KV * HD, 1);
        float[] dOut = randn(r, q.length, 1);
        int width = H * HD;
        for (int row = 0; row < B * S; row++) {
            if (!QUERIES[row]) {
                java.util.Arrays.fill(dOut, row * width, (row + 1) * width, 0f); // the contract: no gradient at rows that are no queries
            }
        }
        CpuOps ops = ops(2, vector);
        float[] out = filled(q.length, Float.NaN);
        float[] lse = filled(B * S * H, Float.NaN);
        ops.attention(q, k, v, out, lse, B, S, H, KV, HD, causal, window, KEEP, QUERIES);
        double[] lseRef = new double[B * S * H];
        double[] outRef = attentionRef(d(q), d(k), d(v), lseRef, B, S, H, KV, HD, causal, window, KEEP);
        for (int row = 0; row < B * S; row++) {
            for (int x = 0; x < width; x++) {
                if (QUERIES[row]) {
                    assertThat((double) out[row * width + x]).isWithin(1e-5).of(outRef[row * width + x]);
                } else {
                    assertThat(out[row * width + x]).isNaN(); // not computed
                }
            }
        }
        float[] dq = new float[q.length];
        float[] dk = new float[k.length];
        float[] dv = new float[v.length];
        ops.attentionBackward(q, k, v, out, lse, dOut, dq, dk, dv, B, S, H, KV, HD, causal, window, KEEP, QUERIES);
        Function<double[][], double[]> f = in -> attentionRef(in[0], in[1], in[2], null, B, S, H, KV, HD, causal, window, KEEP);
        double[][] in = {d(q), d(k), d(v)};
        assertGradient("dq", dq, numericGradient(f, in, 0, d(dOut)));
        assertGradient("dk", dk, numericGradient(f, in, 1, d(dOut)));
        assertGradient("dv", dv, numericGradient(f, in, 2, d(dOut)));
    }

    @ParameterizedTest(name = "vector={0}")
    @ValueSource(booleans = {false, true})
    void anAllKeptMaskIsBitwiseNoMask(boolean vector) {
        Random r = new Random(5);
        int seq = 19;
        float[] q = randn(r, B * seq * H * HD, 1.5);
        float[] k = randn(r, B * seq * KV * HD, 1.5);
        float[] v = randn(r, B * seq * KV * HD, 1);
        float[] dOut = randn(r, q.length, 1);
        boolean[] all = new boolean[B * seq];
        java.util.Arrays.fill(all, true);
        CpuOps ops = ops(2, vector);
        float[][] none = run(ops, q, k, v, dOut, B, seq, H, KV, HD, true, 5);
        float[] out = new float[q.length];
        float[] lse = new float[B * seq * H];
        ops.attention(q, k, v, out, lse, B, seq, H, KV, HD, true, 5, all);
        float[] dq = new float[q.length];
        float[] dk = new float[k.length];
        float[] dv = new float[v.length];
        ops.attentionBackward(q, k, v, out, lse, dOut, dq, dk, dv, B, seq, H, KV, HD, true, 5, all);
        assertThat(new float[][] {out, lse, dq, dk, dv}).isEqualTo(none);
    }

    @ParameterizedTest(name = "vector={0}")
    @ValueSource(booleans = {false, true})
    void backwardAccumulates(boolean vector) {
        Random r = new Random(3);
        float[] q = randn(r, B * S * H * HD, 1);
        float[] k = randn(r, B * S * KV * HD, 1);
        float[] v = randn(r, B * S * KV * HD, 1);
        float[] dOut = randn(r, q.length, 1);
        CpuOps ops = ops(1, vector);
        float[] out = new float[q.length];
        float[] lse = new float[B * S * H];
        ops.attention(q, k, v, out, lse, B, S, H, KV, HD, true, 3);
        float[] dq0 = new float[q.length];
        float[] dk0 = new float[k.length];
        float[] dv0 = new float[v.length];
        ops.attentionBackward(q, k, v, out, lse, dOut, dq0, dk0, dv0, B, S, H, KV, HD, true, 3);

        float[] gq = randn(r, q.length, 1);
        float[] gk = randn(r, k.length, 1);
        float[] gv = randn(r, v.length, 1);
        float[] dq = gq.clone();
        float[] dk = gk.clone();
        float[] dv = gv.clone();
        ops.attentionBackward(q, k, v, out, lse, dOut, dq, dk, dv, B, S, H, KV, HD, true, 3);
        assertBitwise("dq", dq, plus(gq, dq0));
        assertBitwise("dk", dk, plus(gk, dk0));
        assertBitwise("dv", dv, plus(gv, dv0));
    }

    @ParameterizedTest(name = "vector={0}")
    @ValueSource(booleans = {false, true})
    void aWindowAsLongAsTheSequenceIsFullCausalAttention(boolean vector) {
        Random r = new Random(4);
        float[] q = randn(r, B * S * H * HD, 1);
        float[] k = randn(r, B * S * KV * HD, 1);
        float[] v = randn(r, B * S * KV * HD, 1);
        float[] dOut = randn(r, q.length, 1);
        float[][] full = run(ops(1, vector), q, k, v, dOut, B, S, H, KV, HD, true, 0);
        for (int window : new int[] {S, S + 1, 1000}) {
            assertBitwise("window " + window, run(ops(1, vector), q, k, v, dOut, B, S, H, KV, HD, true, window), full);
        }
    }

    @ParameterizedTest(name = "vector={0}")
    @ValueSource(booleans = {false, true})
    void aWindowOfOneAttendsOnlyToItself(boolean vector) {
        Random r = new Random(5);
        float[] q = randn(r, B * S * H * HD, 1);
        float[] k = randn(r, B * S * KV * HD, 1);
        float[] v = randn(r, B * S * KV * HD, 1);
        float[] out = new float[q.length];
        float[] lse = new float[B * S * H];
        ops(1, vector).attention(q, k, v, out, lse, B, S, H, KV, HD, true, 1);
        for (int row = 0; row < B * S; row++) {
            for (int h = 0; h < H; h++) {
                for (int e = 0; e < HD; e++) {
                    assertThat(out[(row * H + h) * HD + e]).isEqualTo(v[(row * KV + h / (H / KV)) * HD + e]);
                }
            }
        }
    }

    @Test
    void multiHeadAndMultiQueryMatchTheReference() {
        Random r = new Random(6);
        for (int kvHeads : new int[] {1, H}) {
            float[] q = randn(r, B * S * H * HD, 1);
            float[] k = randn(r, B * S * kvHeads * HD, 1);
            float[] v = randn(r, B * S * kvHeads * HD, 1);
            float[] out = new float[q.length];
            ops(1, true).attention(q, k, v, out, new float[B * S * H], B, S, H, kvHeads, HD, true, 0);
            assertForward("kvHeads " + kvHeads, out, attentionRef(d(q), d(k), d(v), null, B, S, H, kvHeads, HD, true, 0));
        }
    }

    @Test
    void vectorMatchesScalar() {
        // headDim 40 and 37 visible keys: full vectors and tails in the dot products and in the exp rows.
        for (boolean causal : new boolean[] {true, false}) {
            for (int window : new int[] {0, 11}) {
                assertVectorMatchesScalar("causal=" + causal + " window=" + window, ops -> randomRun(ops, 2, 37, 4, 2, 40, causal, window));
            }
        }
    }

    @Test
    void threadCountInvariant() {
        for (boolean causal : new boolean[] {true, false}) {
            for (int window : new int[] {0, 5}) {
                assertThreadCountInvariant("causal=" + causal + " window=" + window, ops -> randomRun(ops, 2, 19, 4, 2, 24, causal, window));
            }
        }
    }

    private static float[][] randomRun(CpuOps ops, int batch, int seq, int heads, int kvHeads, int hd, boolean causal, int window) {
        Random r = new Random(7);
        float[] q = randn(r, batch * seq * heads * hd, 1.5);
        float[] k = randn(r, batch * seq * kvHeads * hd, 1.5);
        float[] v = randn(r, batch * seq * kvHeads * hd, 1);
        float[] dOut = randn(r, q.length, 1);
        return run(ops, q, k, v, dOut, batch, seq, heads, kvHeads, hd, causal, window);
    }

    private static float[][] run(CpuOps ops, float[] q, float[] k, float[] v, float[] dOut, int batch, int seq, int heads, int kvHeads,
            int hd, boolean causal, int window) {
        float[] out = new float[q.length];
        float[] lse = new float[batch * seq * heads];
        ops.attention(q, k, v, out, lse, batch, seq, heads, kvHeads, hd, causal, window);
        float[] dq = new float[q.length];
        float[] dk = new float[k.length];
        float[] dv = new float[v.length];
        ops.attentionBackward(q, k, v, out, lse, dOut, dq, dk, dv, batch, seq, heads, kvHeads, hd, causal, window);
        return new float[][] {out, lse, dq, dk, dv};
    }
}
