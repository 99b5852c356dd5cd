package dev.moe.compiler.ir;

import java.util.Optional;

/**
 * The model-wide settings, checked and with defaults filled in.
 *
 * @param slidingWindow 0 when attention sees the whole context
 * @param qkNormFull with {@code qkNorm}: one RMSNorm over all of q (and of k) instead of one per head (OLMoE)
 * @param mla multi-head latent attention instead of multi-head / grouped-query attention; {@code headDim}
 *     is then its query/key width per head
 */
public record ModelConfig(
        int vocab,
        int context,
        int dim,
        int heads,
        int kvHeads,
        int headDim,
        Norm norm,
        Position position,
        boolean causal,
        boolean qkNorm,
        boolean qkvBias,
        int slidingWindow,
        boolean tieEmbeddings,
        boolean qkNormFull,
        Optional<Mla> mla) {

    /** Settings with multi-head or grouped-query attention. */
    public ModelConfig(int vocab, int context, int dim, int heads, int kvHeads, int headDim, Norm norm, Position position, boolean causal,
            boolean qkNorm, boolean qkvBias, int slidingWindow, boolean tieEmbeddings, boolean qkNormFull) {
        this(vocab, context, dim, heads, kvHeads, headDim, norm, position, causal, qkNorm, qkvBias, slidingWindow, tieEmbeddings, qkNormFull,
                Optional.empty());
    }

    /** Settings without {@code qkNormFull} (per-head qk-norm, as before it existed). */
    public ModelConfig(int vocab, int context, int dim, int heads, int kvHeads, int headDim, Norm norm, Position position, boolean causal,
            boolean qkNorm, boolean qkvBias, int slidingWindow, boolean tieEmbeddings) {
        this(vocab, context, dim, heads, kvHeads, headDim, norm, position, causal, qkNorm, qkvBias, slidingWindow, tieEmbeddings, false);
    }

    public enum NormKind { RMS, LAYER }

    public record Norm(NormKind kind, double eps) {
        /** Parameters of one norm over {@code width} features (LayerNorm has a bias too). */
        public long params(long width) {
            return kind == NormKind.LAYER ? 2 * width : width;
        }
    }

    public enum PositionKind { ROPE, NONE }

    /** @param fraction the share of each head's dimensions that rotate (partial rotary) */
    public record Position(PositionKind kind, double theta, double fraction) {
        public int rotaryDims(int headDim) {
            return kind == PositionKind.NONE ? 0 : (int) Math.round(fraction * headDim);
        }
    }

    /**
     * Multi-head latent attention (DeepSeek-V2/V3), per token x: the query is {@code q_b · rms(q_a · x)}
     * (or {@code q · x} when {@code qRank} is 0), each head's {@code ropeDim} rotary dimensions first,
     * then its {@code nopeDim} others; the latent {@code c = rms(kv_a · x)} gives through {@code kv_b}
     * each head's {@code nopeDim} key and {@code vDim} value dimensions; one rotary key
     * {@code k_rope · x} of {@code ropeDim} dimensions serves every head. Scores scale by
     * {@code 1/sqrt(nopeDim + ropeDim)}; the output projection reads {@code heads · vDim}.
     *
     * @param qRank 0: a direct query projection
     * @param eps of the two latent RMSNorms
     */
    public record Mla(int qRank, int kvRank, int nopeDim, int ropeDim, int vDim, double eps) {
        public int qkDim() {
            return nopeDim + ropeDim;
        }
    }
}
