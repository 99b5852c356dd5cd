package dev.moe.compiler.ir;

/** What one expert of a group computes. Sizes are per expert; shared weights are counted per group. */
public sealed interface Expert {
    /** A feed-forward expert. */
    record FeedForward(Ffn ffn) implements Expert {}

    /** Outputs 0 (MoE++ zero expert, UniMoE-Audio null expert). */
    record Zero() implements Expert {}

    /** Outputs its input (MoE++ copy expert, LongCat-Flash zero-computation expert). */
    record Copy() implements Expert {}

    /** MoE++ constant expert: {@code [a1, a2] = softmax(W_c x)}, output {@code a1 x + a2 v}. */
    record Constant() implements Expert {}

    /** MoLE latent expert: a down-projection dim→rank shared by the group, then an FFN rank→hidden→dim. */
    record Latent(int rank, Ffn ffn) implements Expert {}

    /** MoLA LoRA expert: low-rank updates (rank, alpha) to every projection of a frozen base FFN. */
    record Lora(int rank, double alpha, Ffn base) implements Expert {}

    /**
     * An attention expert: its own query and output projections for {@code heads} heads of
     * {@code headDim}; keys and values are its own too unless {@code sharedKv} (JetMoE, BAM).
     */
    record Attention(int heads, int headDim, boolean sharedKv) implements Expert {}

    /** Zero, copy and constant experts cost (almost) nothing: MoE++'s zero-computation experts. */
    default boolean zeroCompute() {
        return this instanceof Zero || this instanceof Copy || this instanceof Constant;
    }

    default String describe() {
        return switch (this) {
            case FeedForward f -> f.ffn().toString();
            case Zero z -> "zero";
            case Copy c -> "copy";
            case Constant c -> "constant";
            case Latent l -> "latent(rank: " + l.rank() + ", ffn: " + l.ffn() + ")";
            case Lora l -> "lora(rank: " + l.rank() + ", alpha: " + trim(l.alpha()) + ", base: " + l.base() + ")";
            case Attention a -> "attention(heads: " + a.heads() + ", head_dim: " + a.headDim() + (a.sharedKv() ? ", shared_kv: true" : "") + ")";
        };
    }

    private static String trim(double v) {
        return v == Math.rint(v) ? Long.toString((long) v) : Double.toString(v);
    }
}
