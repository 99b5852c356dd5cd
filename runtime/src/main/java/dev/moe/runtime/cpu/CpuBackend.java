package dev.moe.runtime.cpu;

import dev.moe.runtime.Activation;
import dev.moe.runtime.Backend;

/**
 * The CPU backend: pure Java, multi-threaded, with Vector API fast paths for the hot loops and a
 * scalar reference path ({@code -Dmoe.vectorApi=false}) that tests compare against. Linear algebra
 * lives in {@link CpuLinear}, the other ops in {@link CpuOps}.
 */
public final class CpuBackend implements Backend {
    /** Whether the Vector API paths are used (default true; {@code -Dmoe.vectorApi=false} turns them off). */
    public static final boolean VECTOR_API = !"false".equals(System.getProperty("moe.vectorApi"));

    private final CpuLinear linear;
    private final CpuOps ops;

    public CpuBackend() {
        this(Runtime.getRuntime().availableProcessors(), VECTOR_API);
    }

    public CpuBackend(int threads, boolean vectorApi) {
        this.linear = new CpuLinear(threads, vectorApi);
        this.ops = new CpuOps(threads, vectorApi);
    }

    @Override
    public void matmul(float[] x, int xOff, float[] w, int wOff, float[] y, int yOff, int rows, int in, int out) {
        linear.matmul(x, xOff, w, wOff, y, yOff, rows, in, out);
    }

    @Override
    public void matmulBackward(float[] x, int xOff, float[] w, int wOff, float[] dy, int dyOff, float[] dx, int dxOff, float[] dw, int dwOff,
            int rows, int in, int out) {
        linear.matmulBackward(x, xOff, w, wOff, dy, dyOff, dx, dxOff, dw, dwOff, rows, in, out);
    }

    @Override
    public void groupedMatmul(float[] x, float[] w, int wOff, float[] y, int[] offsets, int experts, int in, int out) {
        linear.groupedMatmul(x, w, wOff, y, offsets, experts, in, out);
    }

    @Override
    public void groupedMatmulBackward(float[] x, float[] w, int wOff, float[] dy, float[] dx, float[] dw, int dwOff, int[] offsets,
            int experts, int in, int out) {
        linear.groupedMatmulBackward(x, w, wOff, dy, dx, dw, dwOff, offsets, experts, in, out);
    }

    @Override
    public void embedding(int[] tokens, float[] table, float[] out, int tokensCount, int dim) {
        ops.embedding(tokens, table, out, tokensCount, dim);
    }

    @Override
    public void embeddingBackward(int[] tokens, float[] dOut, float[] dTable, int tokensCount, int dim) {
        ops.embeddingBackward(tokens, dOut, dTable, tokensCount, dim);
    }

    @Override
    public void rmsNorm(float[] x, float[] w, float[] y, float[] rstd, int rows, int dim, float eps) {
        ops.rmsNorm(x, w, y, rstd, rows, dim, eps);
    }

    @Override
    public void rmsNormBackward(float[] x, float[] w, float[] rstd, float[] dy, float[] dx, float[] dw, int rows, int dim) {
        ops.rmsNormBackward(x, w, rstd, dy, dx, dw, rows, dim);
    }

    @Override
    public void layerNorm(float[] x, float[] w, float[] b, float[] y, float[] mean, float[] rstd, int rows, int dim, float eps) {
        ops.layerNorm(x, w, b, y, mean, rstd, rows, dim, eps);
    }

    @Override
    public void layerNormBackward(float[] x, float[] w, float[] mean, float[] rstd, float[] dy, float[] dx, float[] dw, float[] db, int rows,
            int dim) {
        ops.layerNormBackward(x, w, mean, rstd, dy, dx, dw, db, rows, dim);
    }

    @Override
    public void rope(float[] x, int rows, int seqLen, int heads, int headDim, int rotaryDims, float theta, boolean inverse) {
        ops.rope(x, rows, seqLen, heads, headDim, rotaryDims, theta, inverse);
    }

    @Override
    public void attention(float[] q, float[] k, float[] v, float[] out, float[] lse, int batch, int seq, int heads, int kvHeads, int headDim,
            boolean causal, int window) {
        ops.attention(q, k, v, out, lse, batch, seq, heads, kvHeads, headDim, causal, window);
    }

    @Override
    public void attentionBackward(float[] q, float[] k, float[] v, float[] out, float[] lse, float[] dOut, float[] dq, float[] dk, float[] dv,
            int batch, int seq, int heads, int kvHeads, int headDim, boolean causal, int window) {
        ops.attentionBackward(q, k, v, out, lse, dOut, dq, dk, dv, batch, seq, heads, kvHeads, headDim, causal, window);
    }

    @Override
    public void attention(float[] q, float[] k, float[] v, float[] out, float[] lse, int batch, int seq, int heads, int kvHeads, int headDim,
            boolean causal, int window, boolean[] keep) {
        ops.attention(q, k, v, out, lse, batch, seq, heads, kvHeads, headDim, causal, window, keep, null);
    }

    @Override
    public void attentionBackward(float[] q, float[] k, float[] v, float[] out, float[] lse, float[] dOut, float[] dq, float[] dk, float[] dv,
            int batch, int seq, int heads, int kvHeads, int headDim, boolean causal, int window, boolean[] keep) {
        ops.attentionBackward(q, k, v, out, lse, dOut, dq, dk, dv, batch, seq, heads, kvHeads, headDim, causal, window, keep, null);
    }

    @Override
    public void attention(float[] q, float[] k, float[] v, float[] out, float[] lse, int batch, int seq, int heads, int kvHeads, int headDim,
            boolean causal, int window, boolean[] keep, boolean[] queries) {
        ops.attention(q, k, v, out, lse, batch, seq, heads, kvHeads, headDim, causal, window, keep, queries);
    }

    @Override
    public void attentionBackward(float[] q, float[] k, float[] v, float[] out, float[] lse, float[] dOut, float[] dq, float[] dk, float[] dv,
            int batch, int seq, int heads, int kvHeads, int headDim, boolean causal, int window, boolean[] keep, boolean[] queries) {
        ops.attentionBackward(q, k, v, out, lse, dOut, dq, dk, dv, batch, seq, heads, kvHeads, headDim, causal, window, keep, queries);
    }

    @Override
    public void glu(Activation act, float[] gate, float[] up, float[] h, int n) {
        ops.glu(act, gate, up, h, n);
    }

    @Override
    public void gluBackward(Activation act, float[] gate, float[] up, float[] dh, float[] dGate, float[] dUp, int n) {
        ops.gluBackward(act, gate, up, dh, dGate, dUp, n);
    }

    @Override
    public void activation(Activation act, float[] x, float[] y, int n) {
        ops.activation(act, x, y, n);
    }

    @Override
    public void activationBackward(Activation act, float[] x, float[] dy, float[] dx, int n) {
        ops.activationBackward(act, x, dy, dx, n);
    }

    @Override
    public void gatherRows(float[] src, int[] rows, int n, int dim, float[] dst) {
        ops.gatherRows(src, rows, n, dim, dst);
    }

    @Override
    public void scatterAddRows(float[] src, int[] rows, float[] scale, int n, int dim, float[] dst) {
        ops.scatterAddRows(src, rows, scale, n, dim, dst);
    }

    @Override
    public double crossEntropy(float[] logits, int[] targets, float[] dLogits, int rows, int vocab) {
        return ops.crossEntropy(logits, targets, dLogits, rows, vocab);
    }
}
