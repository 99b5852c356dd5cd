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
     * Fills {@code out[offset..)} with one whole document from its start, at most {@code length}
     * tokens, drawn with the given seed alone (for training on padded documents). A document longer
     * than {@code length} gives a window of {@code length} tokens at a random offset within it.
     * The default takes a {@link #sample} window as one document of {@code length} tokens.
     *
     * @return the source index (as {@link #sample} returns it) and the tokens written, at least 2
     *     when {@code length} is at least 2
     */
    default Drawn document(long seed, boolean heldOut, int[] out, int offset, int length) {
        return new Drawn(sample(seed, heldOut, out, offset, length), length);
    }

    /** What {@link #document} drew: the index in {@link #sources()} and the number of tokens written. */
    record Drawn(int source, int length) {}

    /**
     * Identifies the content for resume checks: equal fingerprints mean equal samples for equal
     * arguments (up to hash collisions).
     */
    long fingerprint();
}
