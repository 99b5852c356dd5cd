package dev.moe.cuda.dist;

import java.util.ArrayList;
import java.util.List;

/**
 * The send side of one rank's expert-parallel dispatch when its rows are already sorted by global expert (a
 * {@link dev.moe.cuda.CudaMoeLayer}'s {@code h}): with each rank holding a contiguous range of experts, ranks in expert order
 * ({@link #requireContiguous}), the rows for each destination are one contiguous slice of h, in rank order, so the rows all-to-all
 * sends h as it is and the outputs come back into y laid out as h. The receive side is a {@link ReceiveLayout}: rows arrive
 * rank-major and {@link #chunks} reorders them expert-major for the GEMMs.
 */
public final class SortedDispatch {
    private final ExpertPlacement placement;
    /** [ranks + 1] each rank's first global expert. */
    private final int[] firstExpert;

    public SortedDispatch(ExpertPlacement placement) {
        requireContiguous(placement);
        this.placement = placement;
        firstExpert = new int[placement.ranks() + 1];
        for (int r = 0; r < placement.ranks(); r++) {
            firstExpert[r + 1] = firstExpert[r] + placement.localExperts(r);
        }
    }

    /**
     * Checks that rank 0 holds experts {@code [0, n0)}, rank 1 {@code [n0, n0 + n1)} and so on (ranks may hold none): what lets the
     * sorted rows travel without a permutation. {@link ExpertPlacement#contiguous} is; a {@link ExpertPlacement#balanced} one
     * usually is not, and runs renumbered ({@link ExpertOrder#renumbered}: the layer sorts its rows by slot).
     */
    public static void requireContiguous(ExpertPlacement placement) {
        int next = 0;
        for (int r = 0; r < placement.ranks(); r++) {
            for (int expert : placement.expertsOf(r)) {
                if (expert != next) {
                    throw new IllegalArgumentException("expert parallelism on the GPU needs each rank's experts contiguous, in rank order: rank "
                            + r + " holds expert " + expert + " where expert " + next + " was due (" + placement + ")");
                }
                next++;
            }
        }
    }

    public ExpertPlacement placement() {
        return placement;
    }

    /** Rank r's first global expert; {@code firstExpert(ranks)} is the number of experts. */
    public int firstExpert(int rank) {
        return firstExpert[rank];
    }

    /** The ints per rank of the counts message: the most experts any rank holds (at least 1, so that no message is empty). */
    public int countsBlock() {
        int block = 1;
        for (int r = 0; r < placement.ranks(); r++) {
            block = Math.max(block, placement.localExperts(r));
        }
        return block;
    }

    private void checkCounts(int[] expertCounts) {
        if (expertCounts.length != placement.experts()) {
            throw new IllegalArgumentException(expertCounts.length + " expert counts for " + placement.experts() + " experts");
        }
        for (int e = 0; e < expertCounts.length; e++) {
            if (expertCounts[e] < 0) {
                throw new IllegalArgumentException("expert " + e + " has " + expertCounts[e] + " rows");
            }
        }
    }

    /** The rows to each rank, in rank order: the sum of its experts' counts. */
    public int[] sendCounts(int[] expertCounts) {
        checkCounts(expertCounts);
        int[] out = new int[placement.ranks()];
        for (int r = 0; r < out.length; r++) {
            for (int e = firstExpert[r]; e < firstExpert[r + 1]; e++) {
                out[r] += expertCounts[e];
            }
        }
        return out;
    }

    /** The counts all-to-all's message: block r ({@link #countsBlock} ints) holds the rows for each of rank r's experts, zero-padded. */
    public int[] countsMessage(int[] expertCounts) {
        checkCounts(expertCounts);
        int block = countsBlock();
        int[] out = new int[placement.ranks() * block];
        for (int r = 0; r < placement.ranks(); r++) {
            for (int e = firstExpert[r]; e < firstExpert[r + 1]; e++) {
                out[r * block + e - firstExpert[r]] = expertCounts[e];
            }
        }
        return out;
    }

    /** What this rank receives, from the counts all-to-all's result. */
    public ReceiveLayout receiveLayout(int[] countsReceived, int rank) {
        return ReceiveLayout.fromCountsMessage(countsReceived, placement.ranks(), countsBlock(), placement.localExperts(rank));
    }

    /** A run of rows that moves as one copy: {@code rows} rows from {@code from} to {@code to}. */
    public record Chunk(int from, int to, int rows) {}

    /**
     * The non-empty (source, local expert) chunks of a receive buffer: {@code from} the rank-major row, {@code to} the expert-major
     * one. Copying each gives the expert-major rows; copying each back ({@code to} into {@code from}) the rank-major ones.
     */
    public static List<Chunk> chunks(ReceiveLayout layout) {
        List<Chunk> out = new ArrayList<>();
        for (int s = 0; s < layout.sources(); s++) {
            int at = layout.recvOffset(s);
            for (int l = 0; l < layout.localExperts(); l++) {
                int n = layout.count(s, l);
                if (n > 0) {
                    out.add(new Chunk(at, layout.chunkOffset(s, l), n));
                }
                at += n;
            }
        }
        return out;
    }

    /** [localExperts + 1] the expert-major offsets of the layout's local experts, for the GEMMs. */
    public static int[] expertOffsets(ReceiveLayout layout) {
        int[] out = new int[layout.localExperts() + 1];
        for (int l = 0; l <= layout.localExperts(); l++) {
            out[l] = layout.expertOffset(l);
        }
        return out;
    }
}
