package dev.moe.runtime.cpu;

import static dev.moe.runtime.cpu.OpsTesting.assertBitwise;
import static dev.moe.runtime.cpu.OpsTesting.randn;

import dev.moe.runtime.Activation;
import java.util.Random;
import org.junit.jupiter.api.Test;

/**
 * The vector paths give the same bits before and after the JIT compiles them: first calls run in the
 * interpreter, later ones in C2, and a thread that is still interpreting must agree with one that is
 * not. (The Vector API's own {@code reduceLanes(ADD)} and {@code EXP} do not.)
 */
class OpsWarmupTest {
    @Test
    void vectorResultsDoNotChangeAsTheJitWarmsUp() {
        Random r = new Random(1);
        int n = 4096 + 7;
        float[] x = randn(r, n, 4);
        float[] up = randn(r, n, 1);
        int rows = 8;
        int vocab = 509;
        float[] logits = randn(r, rows * vocab, 3);
        int[] targets = new int[rows];
        int batch = 1;
        int seq = 40;
        int heads = 2;
        int hd = 32;
        float[] q = randn(r, batch * seq * heads * hd, 1);
        float[] k = randn(r, q.length, 1);
        float[] v = randn(r, q.length, 1);
        float[] dOut = randn(r, q.length, 1);
        float[] w = randn(r, hd * heads, 1);
        CpuOps ops = new CpuOps(1, true);

        float[][] first = null;
        long deadline = System.nanoTime() + 1_500_000_000L;
        for (int iteration = 0; iteration < 300 && System.nanoTime() < deadline; iteration++) {
            float[] h = new float[n];
            float[] dGate = new float[n];
            float[] dUp = new float[n];
            ops.glu(Activation.SILU, x, up, h, n);
            ops.gluBackward(Activation.GELU, x, up, up, dGate, dUp, n);
            float[] dLogits = new float[logits.length];
            float loss = (float) ops.crossEntropy(logits, targets, dLogits, rows, vocab);
            float[] out = new float[q.length];
            float[] lse = new float[batch * seq * heads];
            ops.attention(q, k, v, out, lse, batch, seq, heads, heads, hd, true, 0);
            float[] dq = new float[q.length];
            float[] dk = new float[q.length];
            float[] dv = new float[q.length];
            ops.attentionBackward(q, k, v, out, lse, dOut, dq, dk, dv, batch, seq, heads, heads, hd, true, 0);
            float[] y = new float[q.length];
            float[] stat = new float[batch * seq];
            ops.layerNorm(q, w, w, y, stat, new float[batch * seq], batch * seq, heads * hd, 1e-5f);
            float[] z = new float[q.length];
            ops.rmsNorm(q, w, z, stat, batch * seq, heads * hd, 1e-5f);
            float[][] now = {h, dGate, dUp, dLogits, {loss}, out, lse, dq, dk, dv, y, z};
            if (first == null) {
                first = now;
            } else {
                assertBitwise("iteration " + iteration, now, first);
            }
        }
    }
}
