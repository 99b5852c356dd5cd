package dev.moe.runtime.data;

import java.util.Arrays;
import java.util.Objects;

/**
 * One batch: {@code size} sequences of {@code context + 1} byte tokens, row-major in {@link #tokens}.
 * Row {@code r}'s inputs are its first {@code context} tokens and its targets the last
 * {@code context} (the inputs shifted by one).
 *
 * <p>The arrays are shared, not copied: treat them as read-only.
 *
 * @param index which batch of its stream this is
 * @param heldOut whether it comes from the evaluation stream
 * @param size sequences in the batch
 * @param context tokens the model sees per sequence
 * @param tokens {@code size * (context + 1)} tokens, each in {@code 0..255}
 * @param domains per row, the index of its domain in {@link DataStream#domains()} (the mixture's order)
 * @param sources per row, the index of its finer source in {@link DataStream#sources()} (for
 *     {@code synthetic}, the part it was drawn from; otherwise the domain itself)
 * @param lengths per row, how many of its {@code context + 1} tokens are real (2 or more); the rest
 *     is padding, token 0, which {@link #keep} masks out. Every row is full in a stream of windows.
 */
public record Batch(long index, boolean heldOut, int size, int context, int[] tokens, int[] domains, int[] sources, int[] lengths) {
    public Batch {
        Objects.requireNonNull(tokens);
        Objects.requireNonNull(domains);
        Objects.requireNonNull(sources);
        Objects.requireNonNull(lengths);
        if (size <= 0 || context <= 0) {
            throw new IllegalArgumentException("size and context must be positive: " + size + ", " + context);
        }
        if (tokens.length != (long) size * (context + 1) || domains.length != size || sources.length != size || lengths.length != size) {
            throw new IllegalArgumentException("array lengths do not match size " + size + " and context " + context);
        }
        for (int l : lengths) {
            if (l < 2 || l > context + 1) {
                throw new IllegalArgumentException("a row holds " + l + " real tokens; 2.." + (context + 1) + " expected");
            }
        }
    }

    /** A batch whose rows are all full (no padding). */
    public Batch(long index, boolean heldOut, int size, int context, int[] tokens, int[] domains, int[] sources) {
        this(index, heldOut, size, context, tokens, domains, sources, full(size, context));
    }

    private static int[] full(int size, int context) {
        int[] out = new int[Math.max(size, 0)];
        Arrays.fill(out, context + 1);
        return out;
    }

    /** Real tokens of row {@code row}: {@code context + 1} unless the row is a padded document. */
    public int length(int row) {
        return lengths[row];
    }

    /** Whether some row is padded. */
    public boolean padded() {
        for (int l : lengths) {
            if (l <= context) {
                return true;
            }
        }
        return false;
    }

    /**
     * The padding mask of the first {@code seq} inputs of each row, for
     * {@link dev.moe.runtime.TrainableModel#setMask}: input t of row r is kept when its target is real,
     * {@code t + 1 < length(r)}; null when no row is padded (every token kept).
     */
    public boolean[] keep(int seq) {
        if (seq < 1 || seq > context) {
            throw new IllegalArgumentException("seq " + seq + " is not in 1.." + context);
        }
        boolean any = false;
        for (int l : lengths) {
            any |= l - 1 < seq;
        }
        if (!any) {
            return null;
        }
        boolean[] keep = new boolean[size * seq];
        for (int r = 0; r < size; r++) {
            for (int t = 0; t < seq; t++) {
                keep[r * seq + t] = t + 1 < lengths[r];
            }
        }
        return keep;
    }

    /** Inputs of the first {@code seq} positions whose targets are real, over the batch. */
    public long keptTokens(int seq) {
        long n = 0;
        for (int l : lengths) {
            n += Math.min(seq, l - 1);
        }
        return n;
    }

    /** Tokens per row: {@code context + 1}. */
    public int stride() {
        return context + 1;
    }

    /** Token {@code position} ({@code 0..context}) of row {@code row}. */
    public int token(int row, int position) {
        Objects.checkIndex(row, size);
        Objects.checkIndex(position, context + 1);
        return tokens[row * (context + 1) + position];
    }

    /** Input {@code position} ({@code 0..context-1}) of row {@code row}. */
    public int input(int row, int position) {
        Objects.checkIndex(position, context);
        return token(row, position);
    }

    /** Target {@code position} of row {@code row}: the token after input {@code position}. */
    public int target(int row, int position) {
        Objects.checkIndex(position, context);
        return token(row, position + 1);
    }

    /** A copy of row {@code row}'s {@code context + 1} tokens. */
    public int[] sequence(int row) {
        Objects.checkIndex(row, size);
        return Arrays.copyOfRange(tokens, row * (context + 1), (row + 1) * (context + 1));
    }

    /** All inputs, {@code size * context}, row-major (a new array). */
    public int[] inputs() {
        return shifted(0);
    }

    /** All targets, {@code size * context}, row-major (a new array). */
    public int[] targets() {
        return shifted(1);
    }

    private int[] shifted(int by) {
        int[] out = new int[size * context];
        for (int r = 0; r < size; r++) {
            System.arraycopy(tokens, r * (context + 1) + by, out, r * context, context);
        }
        return out;
    }

    /** Row {@code row}'s domain index. */
    public int domain(int row) {
        return domains[row];
    }

    /** Row {@code row}'s source index. */
    public int source(int row) {
        return sources[row];
    }

    @Override
    public boolean equals(Object o) {
        return o instanceof Batch b && index == b.index && heldOut == b.heldOut && size == b.size && context == b.context
                && Arrays.equals(tokens, b.tokens) && Arrays.equals(domains, b.domains) && Arrays.equals(sources, b.sources)
                && Arrays.equals(lengths, b.lengths);
    }

    @Override
    public int hashCode() {
        return Objects.hash(index, heldOut, size, context, Arrays.hashCode(tokens), Arrays.hashCode(domains), Arrays.hashCode(sources),
                Arrays.hashCode(lengths));
    }

    @Override
    public String toString() {
        return "Batch[index=" + index + (heldOut ? ", held out" : "") + ", size=" + size + ", context=" + context + (padded() ? ", padded" : "") + "]";
    }
}
