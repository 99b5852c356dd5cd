package dev.moe.runtime;

/**
 * The primitive ops that generated models are written in. Every array is fp32, row-major, and
 * every shape is explicit. Forward ops overwrite their output; backward ops ACCUMULATE ({@code +=})
 * into gradient arrays (so that gradients of values used twice add up), except where a method says
 * it overwrites. An offset argument ({@code xOff}, ...) is where the operand starts in its array, so
 * that an expert's slice of a packed weight or a group of gathered rows needs no copy.
 *
 * <p>Implementations: {@code dev.moe.runtime.cpu.CpuBackend} (threads, Vector API, with a scalar
 * reference path selected by {@code -Dmoe.vectorApi=false}).
 */
public interface Backend {
    // ---- linear algebra ----

    /** {@code y[rows, out] = x[rows, in] · w[out, in]ᵀ}. */
    void matmul(float[] x, int xOff, float[] w, int wOff, float[] y, int yOff, int rows, int in, int out);

    /** {@code dx[rows, in] += dy · w} (skipped when {@code dx} is null); {@code dw[out, in] += dyᵀ · x}. */
    void matmulBackward(float[] x, int xOff, float[] w, int wOff, float[] dy, int dyOff, float[] dx, int dxOff, float[] dw, int dwOff,
            int rows, int in, int out);

    /**
     * Grouped matmul over rows sorted by expert: for each expert e, rows {@code offsets[e] ..
     * offsets[e+1]} of x times expert e's weight {@code w[e, out, in]} (starting at {@code wOff}).
     * Experts with no rows cost nothing.
     */
    void groupedMatmul(float[] x, float[] w, int wOff, float[] y, int[] offsets, int experts, int in, int out);

    /** Backward of {@link #groupedMatmul}: {@code dx += dy · w_e} (when dx is not null), {@code dw[e] += dyᵀ · x}. */
    void groupedMatmulBackward(float[] x, float[] w, int wOff, float[] dy, float[] dx, float[] dw, int dwOff, int[] offsets, int experts,
            int in, int out);

    // ---- embedding and norms ----

    /** {@code out[t] = table[tokens[t]]}, D wide. */
    void embedding(int[] tokens, float[] table, float[] out, int tokensCount, int dim);

    /** {@code dTable[tokens[t]] += dOut[t]}. */
    void embeddingBackward(int[] tokens, float[] dOut, float[] dTable, int tokensCount, int dim);

    /** {@code y = x / rms(x) * w} per row; saves {@code rstd[t] = 1 / sqrt(mean(x²) + eps)}. */
    void rmsNorm(float[] x, float[] w, float[] y, float[] rstd, int rows, int dim, float eps);

    void rmsNormBackward(float[] x, float[] w, float[] rstd, float[] dy, float[] dx, float[] dw, int rows, int dim);

    /** {@code y = (x - mean) * rstd * w + b} per row; saves mean and rstd. */
    void layerNorm(float[] x, float[] w, float[] b, float[] y, float[] mean, float[] rstd, int rows, int dim, float eps);

    void layerNormBackward(float[] x, float[] w, float[] mean, float[] rstd, float[] dy, float[] dx, float[] dw, float[] db, int rows, int dim);

    // ---- attention ----

    /**
     * Rotary position embedding, in place, on {@code x[rows, heads * headDim]} where row r is at
     * position {@code r % seqLen}. The first {@code rotaryDims} of each head rotate, in pairs
     * (i, i + rotaryDims/2) (the GPT-NeoX / HF layout), by angle {@code pos * theta^(-2i/rotaryDims)}.
     * {@code inverse} rotates by the negative angle: the backward pass.
     */
    void rope(float[] x, int rows, int seqLen, int heads, int headDim, int rotaryDims, float theta, boolean inverse);

    /**
     * Scaled dot-product attention, grouped-query: q[B*S, H*hd], k and v[B*S, KV*hd], out[B*S, H*hd];
     * query head h reads key/value head h / (H / KV). Scale 1/sqrt(hd). Causal masks keys after the
     * query; a window w > 0 also masks keys more than w - 1 positions before it. Saves the log-sum-exp
     * of each query's scores in {@code lse[B*S*H]} for the backward pass.
     */
    void attention(float[] q, float[] k, float[] v, float[] out, float[] lse, int batch, int seq, int heads, int kvHeads, int headDim,
            boolean causal, int window);

    /** Accumulates dq, dk, dv. */
    void attentionBackward(float[] q, float[] k, float[] v, float[] out, float[] lse, float[] dOut, float[] dq, float[] dk, float[] dv,
            int batch, int seq, int heads, int kvHeads, int headDim, boolean causal, int window);

    /**
     * {@link #attention} with a padding mask: {@code keep[B*S]} (null = every row kept); a row not kept
     * is no key or value for any other query (it still sees itself, so its own output stays finite).
     * Backends without masks refuse a non-null one.
     */
    default void attention(float[] q, float[] k, float[] v, float[] out, float[] lse, int batch, int seq, int heads, int kvHeads, int headDim,
            boolean causal, int window, boolean[] keep) {
        if (keep != null) {
            throw new UnsupportedOperationException(getClass().getSimpleName() + " has no attention padding masks");
        }
        attention(q, k, v, out, lse, batch, seq, heads, kvHeads, headDim, causal, window);
    }

    /** {@link #attentionBackward} with the padding mask of {@link #attention(float[], float[], float[], float[], float[], int, int, int, int, int, boolean, int, boolean[])}. */
    default void attentionBackward(float[] q, float[] k, float[] v, float[] out, float[] lse, float[] dOut, float[] dq, float[] dk, float[] dv,
            int batch, int seq, int heads, int kvHeads, int headDim, boolean causal, int window, boolean[] keep) {
        if (keep != null) {
            throw new UnsupportedOperationException(getClass().getSimpleName() + " has no attention padding masks");
        }
        attentionBackward(q, k, v, out, lse, dOut, dq, dk, dv, batch, seq, heads, kvHeads, headDim, causal, window);
    }

    /**
     * {@link #attention(float[], float[], float[], float[], float[], int, int, int, int, int, boolean, int, boolean[])} for
     * the query rows that {@code queries[B*S]} marks (null = every row): the keys and values are still
     * every row's (under {@code keep}), but only the marked rows' {@code out} and {@code lse} are
     * computed; the others' are unspecified. Attention experts use it to attend for the tokens routed to
     * them only. The default computes every row.
     */
    default void attention(float[] q, float[] k, float[] v, float[] out, float[] lse, int batch, int seq, int heads, int kvHeads, int headDim,
            boolean causal, int window, boolean[] keep, boolean[] queries) {
        attention(q, k, v, out, lse, batch, seq, heads, kvHeads, headDim, causal, window, keep);
    }

    /**
     * Backward of the query-row attention above: only the marked rows are queries, so only their
     * {@code dq} is accumulated (the others' is left as it is) and only they contribute to {@code dk} and
     * {@code dv}. {@code dOut} must be 0 on the rows not marked. The default runs the full backward,
     * which with that {@code dOut} adds nothing for the rows not marked.
     */
    default void attentionBackward(float[] q, float[] k, float[] v, float[] out, float[] lse, float[] dOut, float[] dq, float[] dk, float[] dv,
            int batch, int seq, int heads, int kvHeads, int headDim, boolean causal, int window, boolean[] keep, boolean[] queries) {
        attentionBackward(q, k, v, out, lse, dOut, dq, dk, dv, batch, seq, heads, kvHeads, headDim, causal, window, keep);
    }

    // ---- activations ----

    /** {@code h = act(gate) * up}, n elements. */
    void glu(Activation act, float[] gate, float[] up, float[] h, int n);

    /** OVERWRITES {@code dGate} and {@code dUp} from {@code dh}. */
    void gluBackward(Activation act, float[] gate, float[] up, float[] dh, float[] dGate, float[] dUp, int n);

    /** {@code y = act(x)}. */
    void activation(Activation act, float[] x, float[] y, int n);

    /** OVERWRITES {@code dx = act'(x) * dy}. */
    void activationBackward(Activation act, float[] x, float[] dy, float[] dx, int n);

    // ---- rows ----

    /** {@code dst[i] = src[rows[i]]} for i < n, D wide. */
    void gatherRows(float[] src, int[] rows, int n, int dim, float[] dst);

    /** {@code dst[rows[i]] += scale[i] * src[i]} (scale may be null for 1). */
    void scatterAddRows(float[] src, int[] rows, float[] scale, int n, int dim, float[] dst);

    // ---- loss ----

    /**
     * Mean cross-entropy of {@code logits[rows, vocab]} against {@code targets}; OVERWRITES
     * {@code dLogits} with the gradient of that mean (softmax - onehot) / rows. Accumulates in double.
     */
    double crossEntropy(float[] logits, int[] targets, float[] dLogits, int rows, int vocab);
}
