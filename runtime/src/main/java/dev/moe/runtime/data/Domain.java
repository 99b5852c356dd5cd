package dev.moe.runtime.data;

import java.util.List;

/**
 * A source of token sequences: one synthetic generator ({@link SyntheticCorpus#domain}) or a text
 * corpus ({@link TextCorpus}). Implementations are immutable and thread-safe, and
 * {@link #sample} is a pure function of its arguments.
 */
public interface Domain {
    /** The name the mixture knows it by. */
    String name();

    /**
     * The finer-grained sources this domain draws from, for statistics: the built-in
     * {@code synthetic} domain lists its parts; every other domain lists only itself.
     */
    default List<String> sources() {
        return List.of(name());
    }

    /**
     * Fills {@code out[offset..offset+length)} with byte tokens ({@code 0..255}), drawn with the
     * given seed alone. {@code heldOut} selects the evaluation split: a text corpus then reads from
     * its held-out tail, synthetic domains ignore it (their evaluation data comes from disjoint seeds).
     *
     * @return the index in {@link #sources()} of the source the sequence came from
     */
    int sample(long seed, boolean heldOut, int[] out, int offset, int length);

    /**
     * Identifies the content for resume checks: equal fingerprints mean equal samples for equal
     * arguments (up to hash collisions).
     */
    long fingerprint();
}
