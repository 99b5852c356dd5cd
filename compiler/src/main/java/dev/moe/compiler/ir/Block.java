package dev.moe.compiler.ir;

/** What a layer computes. */
public sealed interface Block {
    /** {@code attention, ffn}: x += mixer(norm x); x += ffn(norm x). */
    record PreNorm(Part mixer, Part ffn) implements Block {}

    /** {@code parallel(attention, ffn)}: x += mixer(norm x) + ffn(norm x). */
    record Parallel(Part mixer, Part ffn) implements Block {}

    /**
     * {@code shortcut(attention, dense, moe)} (LongCat-Flash): two attention and two dense FFN
     * sub-blocks in sequence; the MoE reads the output of the first attention and its result is
     * added at the end, so its dispatch overlaps the dense compute.
     */
    record Shortcut(Part mixer, Ffn dense, Moe moe) implements Block {}

    /** {@code residual(attention, dense, moe)} (PR-MoE): x += mixer(norm x); x += dense(h) + moe(h), top-1. */
    record Residual(Part mixer, Ffn dense, Moe moe) implements Block {}

    /** One slot of a block: the model's attention, a dense FFN, or an MoE. */
    sealed interface Part {
        record Attention() implements Part {}

        record Dense(String name, Ffn ffn) implements Part {}

        record MoePart(Moe moe) implements Part {}
    }

    /**
     * The MoE in the ffn slot, if any: the layers that count as MoE layers for a run's expert loads
     * and for expert parallelism (an MoE of attention experts in the mixer slot does not).
     */
    default java.util.Optional<Moe> ffnMoe() {
        return switch (this) {
            case PreNorm p -> p.ffn() instanceof Part.MoePart m ? java.util.Optional.of(m.moe()) : java.util.Optional.empty();
            case Parallel p -> p.ffn() instanceof Part.MoePart m ? java.util.Optional.of(m.moe()) : java.util.Optional.empty();
            case Shortcut s -> java.util.Optional.of(s.moe());
            case Residual r -> java.util.Optional.of(r.moe());
        };
    }

    default String describe() {
        return switch (this) {
            case PreNorm p -> part(p.mixer()) + ", " + part(p.ffn());
            case Parallel p -> "parallel(" + part(p.mixer()) + ", " + part(p.ffn()) + ")";
            case Shortcut s -> "shortcut(" + part(s.mixer()) + ", " + s.dense() + ", " + s.moe().name() + ")";
            case Residual r -> "residual(" + part(r.mixer()) + ", " + r.dense() + ", " + r.moe().name() + ")";
        };
    }

    private static String part(Part p) {
        return switch (p) {
            case Part.Attention a -> "attention";
            case Part.Dense d -> d.name();
            case Part.MoePart m -> m.moe().name();
        };
    }
}
