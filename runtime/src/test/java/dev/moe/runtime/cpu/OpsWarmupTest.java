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
 * {@code reduceLanes(ADD)} and {@code EXP} fail this; CpuOps' lane sum and exp, which every vector
 * path reduces and exponentiates through, use only lane-wise IEEE arithmetic. Best effort: the
 * loops are bounded in time, so on a very slow machine they may stop before C2 takes over.
 */
class OpsWarmupTest {
    private static final VectorSpecies<Float> F = FloatVector.SPECIES_PREFERRED;

    @Test
    void laneSumAndExpDoNotChangeAsTheJitWarmsUp() {
        // Many inputs: a tier's rounding differs on some of them, not all (about half of these for the
        // Vector API's own reduceLanes and EXP, within a fraction of a second).
        int count = 64;
        Random r = new Random(1);
        FloatVector[] inputs = new FloatVector[count];
        float[] sums = new float[count];
        float[][] exps = new float[count][];
        for (int i = 0; i < count; i++) {
            float[] x = randn(r, F.length(), 10);
            if (i == 0) {
                x[0] = -95f; // a subnormal result
                x[1] = 88.5f; // near the float maximum
            }
            inputs[i] = FloatVector.fromArray(F, x, 0);
            sums[i] = CpuOps.sumLanes(inputs[i]);
            exps[i] = CpuOps.exp(inputs[i]).toArray();
        }
        long deadline = System.nanoTime() + 1_000_000_000L;
        for (int iteration = 0; iteration < 5_000 && System.nanoTime() < deadline; iteration++) {
            for (int i = 0; i < count; i++) {
                float s = CpuOps.sumLanes(inputs[i]);
                if (Float.floatToRawIntBits(s) != Float.floatToRawIntBits(sums[i])) {
                    assertWithMessage("sumLanes of input %s at iteration %s", i, iteration).that(s).isEqualTo(sums[i]);
                }
                assertBitwise("exp of input " + i + " at iteration " + iteration, CpuOps.exp(inputs[i]).toArray(), exps[i]);
            }
        }
    }

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
        long deadline = System.nanoTime() + 1_500_000_000L;
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
