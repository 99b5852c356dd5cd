package dev.moe.runtime.cpu;

import static com.google.common.truth.Truth.assertWithMessage;
import static dev.moe.runtime.cpu.OpsTesting.assertBitwise;
import static dev.moe.runtime.cpu.OpsTesting.randn;

import dev.moe.runtime.Activation;
import java.util.Random;
import jdk.incubator.vector.FloatVector;
import jdk.incubator.vector.VectorSpecies;
import org.junit.jupiter.api.Test;

/**
 * The vector paths give the same bits before and after the JIT compiles them. Early calls run in the
 * interpreter or C1 (the Vector API's Java fallback), later ones in C2 (intrinsics), and a thread that
 * is still interpreting must agree with one that is not. The Vector API's own
 * {@code reduceLanes(ADD)} (unspecified order) and {@code EXP} (Math.exp per lane in the fallback, a
 * vector library in C2) change bits as the JIT warms up. CpuOps' lane sum and exp, which every
 * vector path reduces and exponentiates through, use only lane-wise IEEE arithmetic: here they must
 * equal a scalar replay of the same operations bit for bit, on every call, compiled or not.
 */
class OpsWarmupTest {
    private static final VectorSpecies<Float> F = FloatVector.SPECIES_PREFERRED;

    /** The tree order of {@code CpuOps.sumLanes}: add the lanes rotated by half, a quarter, ... 1. */
    static float sumLanesReplay(float[] lanes) {
        float[] a = lanes.clone();
        for (int half = a.length / 2; half >= 1; half /= 2) {
            float[] next = new float[a.length];
            for (int i = 0; i < a.length; i++) {
                next[i] = a[i] + a[(i + half) % a.length];
            }
            a = next;
        }
        return a[0];
    }

    /** The operations of {@code CpuOps.exp}, one lane at a time. */
    static float expReplay(float x) {
        float xc = Math.min(Math.max(x, -104f), 89f);
        float n = Math.fma(xc, 1.44269504088896341f, 12582912f) - 12582912f;
        float r = Math.fma(n, -0.693359375f, xc);
        r = Math.fma(n, 2.12194440e-4f, r);
        float p = Math.fma(r, 1.9875691500e-4f, 1.3981999507e-3f);
        p = Math.fma(p, r, 8.3334519073e-3f);
        p = Math.fma(p, r, 4.1665795894e-2f);
        p = Math.fma(p, r, 1.6666665459e-1f);
        p = Math.fma(p, r, 5.0000001201e-1f);
        p = p * (r * r) + r + 1f;
        int ni = (int) n;
        int n1 = ni >> 1;
        int n2 = ni - n1;
        float e = p * Float.intBitsToFloat((n1 + 127) << 23) * Float.intBitsToFloat((n2 + 127) << 23);
        if (x < -104f) {
            return 0f;
        }
        return x > 89f ? Float.POSITIVE_INFINITY : e;
    }

    @Test
    void laneSumAndExpReplayExactlyOnEveryCall() {
        // Many inputs, many calls: a tier whose rounding differs shows on some inputs within a few
        // hundred calls (the Vector API's reduceLanes and EXP do, here).
        int count = 64;
        Random r = new Random(1);
        FloatVector[] inputs = new FloatVector[count];
        float[] sums = new float[count];
        float[][] exps = new float[count][];
        for (int i = 0; i < count; i++) {
            float[] x = randn(r, F.length(), 10);
            if (i == 0) {
                float[] special = {-95f, 88.5f, -104.5f, 89.5f, Float.NaN, Float.NEGATIVE_INFINITY, Float.POSITIVE_INFINITY, -0f};
                System.arraycopy(special, 0, x, 0, Math.min(special.length, x.length));
            }
            inputs[i] = FloatVector.fromArray(F, x, 0);
            sums[i] = sumLanesReplay(x);
            exps[i] = new float[x.length];
            for (int j = 0; j < x.length; j++) {
                exps[i][j] = expReplay(x[j]);
                if (Float.isFinite(x[j]) && Math.abs(x[j]) < 87) {
                    assertWithMessage("exp(%s)", x[j]).that((double) exps[i][j]).isWithin(2.5e-7 * Math.exp(x[j])).of(Math.exp(x[j]));
                }
            }
        }
        long deadline = System.nanoTime() + 1_000_000_000L;
        for (int iteration = 0; iteration < 3_000 && System.nanoTime() < deadline; iteration++) {
            for (int i = 0; i < count; i++) {
                float s = CpuOps.sumLanes(inputs[i]);
                if (Float.floatToRawIntBits(s) != Float.floatToRawIntBits(sums[i])) {
                    assertWithMessage("sumLanes of input %s at call %s", i, iteration).that(s).isEqualTo(sums[i]);
                }
                assertBitwise("exp of input " + i + " at call " + iteration, CpuOps.exp(inputs[i]).toArray(), exps[i]);
            }
        }
    }

    /** Whole ops, call after call (best effort: if earlier tests already compiled them, this sees C2 only). */
    @Test
    void opsDoNotChangeAsTheJitWarmsUp() {
        Random r = new Random(2);
        int n = 64 + 7;
        float[] x = randn(r, n, 4);
        float[] up = randn(r, n, 1);
        int seq = 12;
        int heads = 2;
        int hd = 32;
        float[] q = randn(r, seq * heads * hd, 1);
        float[] k = randn(r, q.length, 1);
        float[] v = randn(r, q.length, 1);
        float[] dOut = randn(r, q.length, 1);
        float[] w = randn(r, heads * hd, 1);
        int rows = 4;
        int vocab = 61;
        float[] logits = randn(r, rows * vocab, 3);
        int[] targets = {0, 7, 60, 33};
        CpuOps ops = new CpuOps(1, true);

        float[][] first = null;
        long deadline = System.nanoTime() + 1_000_000_000L;
        for (int iteration = 0; iteration < 5000 && System.nanoTime() < deadline; iteration++) {
            float[] h = new float[n];
            float[] dGate = new float[n];
            float[] dUp = new float[n];
            ops.glu(Activation.SILU, x, up, h, n);
            ops.gluBackward(Activation.GELU, x, up, up, dGate, dUp, n);
            float[] out = new float[q.length];
            float[] lse = new float[seq * heads];
            ops.attention(q, k, v, out, lse, 1, seq, heads, heads, hd, true, 0);
            float[] dq = new float[q.length];
            float[] dk = new float[q.length];
            float[] dv = new float[q.length];
            ops.attentionBackward(q, k, v, out, lse, dOut, dq, dk, dv, 1, seq, heads, heads, hd, true, 0);
            float[] y = new float[q.length];
            float[] rstd = new float[seq];
            ops.rmsNorm(q, w, y, rstd, seq, heads * hd, 1e-5f);
            float[] dx = new float[q.length];
            ops.layerNormBackward(q, w, rstd, rstd, dOut, dx, null, null, seq, heads * hd);
            float[] dLogits = new float[logits.length];
            float loss = (float) ops.crossEntropy(logits, targets, dLogits, rows, vocab);
            float[][] now = {h, dGate, dUp, out, lse, dq, dk, dv, y, rstd, dx, dLogits, {loss}};
            if (first == null) {
                first = now;
            } else {
                assertBitwise("iteration " + iteration, now, first);
            }
        }
    }
}
