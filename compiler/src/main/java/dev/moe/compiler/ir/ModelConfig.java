package dev.moe.compiler.ir;

/**
 * The model-wide settings, checked and with defaults filled in.
 *
 * @param slidingWindow 0 when attention sees the whole context
 * @param qkNormFull with {@code qkNorm}: one RMSNorm over all of q (and of k) instead of one per head (OLMoE)
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
        boolean qkNormFull) {

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
}
