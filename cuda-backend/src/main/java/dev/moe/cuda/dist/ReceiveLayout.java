package dev.moe.cuda.dist;

/**
 * The receiving side of a dispatch, known once the per-expert counts have been exchanged: rows
 * arrive rank-major (all of source 0's rows, grouped by local expert, then source 1's, ...), and the
 * expert GEMMs want them expert-major (all of local expert 0's rows, from source 0, then source 1,
 * ...). {@link #chunkOffset} says where each (source, expert) chunk goes in the expert-major buffer,
 * so that a transport that receives chunk by chunk can write there directly; otherwise
 * {@link #toExpertMajor} permutes a rank-major buffer.
 */
public final class ReceiveLayout {
    /** [sources][localExperts] rows from each source for each local expert. */
    private final int[][] counts;
    /** [sources + 1] first rank-major row of each source. */
    private final int[] recvOffsets;
    /** [localExperts + 1] first expert-major row of each local expert. */
    private final int[] expertOffsets;
    /** [sources][localExperts] first expert-major row of each chunk. */
    private final int[][] chunkOffsets;

    private ReceiveLayout(int[][] counts) {
        this.counts = counts;
        int sources = counts.length;
        int local = sources == 0 ? 0 : counts[0].length;
        recvOffsets = new int[sources + 1];
        expertOffsets = new int[local + 1];
        for (int s = 0; s < sources; s++) {
            int sum = 0;
            for (int e = 0; e < local; e++) {
                if (counts[s][e] < 0) {
                    throw new IllegalArgumentException("rank " + s + " announced " + counts[s][e] + " rows for local expert " + e);
                }
                sum += counts[s][e];
                expertOffsets[e + 1] += counts[s][e];
            }
            recvOffsets[s + 1] = recvOffsets[s] + sum;
        }
        for (int e = 0; e < local; e++) {
            expertOffsets[e + 1] += expertOffsets[e];
        }
        chunkOffsets = new int[sources][local];
        for (int e = 0; e < local; e++) {
            int at = expertOffsets[e];
            for (int s = 0; s < sources; s++) {
                chunkOffsets[s][e] = at;
                at += counts[s][e];
            }
        }
    }

    /**
     * From the counts all-to-all's result: block s (of {@code block} ints) came from rank s, and its
     * first {@code localExperts} ints are the rows it sends to each of this rank's experts.
     */
    public static ReceiveLayout fromCountsMessage(int[] received, int sources, int block, int localExperts) {
        if (received.length != sources * block || localExperts > block) {
            throw new IllegalArgumentException("counts message of " + received.length + " ints for " + sources + " ranks of "
                    + block + " (local experts " + localExperts + ")");
        }
        int[][] counts = new int[sources][localExperts];
        for (int s = 0; s < sources; s++) {
            System.arraycopy(received, s * block, counts[s], 0, localExperts);
        }
        return new ReceiveLayout(counts);
    }

    public int sources() {
        return counts.length;
    }

    public int localExperts() {
        return expertOffsets.length - 1;
    }

    public int rows() {
        return recvOffsets[recvOffsets.length - 1];
    }

    public int recvCount(int source) {
        return recvOffsets[source + 1] - recvOffsets[source];
    }

    public int[] recvCounts() {
        int[] out = new int[sources()];
        for (int s = 0; s < out.length; s++) {
            out[s] = recvCount(s);
        }
        return out;
    }

    public int recvOffset(int source) {
        return recvOffsets[source];
    }

    public int count(int source, int local) {
        return counts[source][local];
    }

    /** The first expert-major row of local expert {@code local}; {@code expertOffset(localExperts())} is the row count. */
    public int expertOffset(int local) {
        return expertOffsets[local];
    }

    public int expertCount(int local) {
        return expertOffsets[local + 1] - expertOffsets[local];
    }

    public int chunkOffset(int source, int local) {
        return chunkOffsets[source][local];
    }

    /** [rows] the expert-major row of each rank-major row. */
    public int[] rankMajorToExpertMajor() {
        int[] out = new int[rows()];
        int row = 0;
        for (int s = 0; s < sources(); s++) {
            for (int e = 0; e < localExperts(); e++) {
                for (int i = 0; i < counts[s][e]; i++) {
                    out[row++] = chunkOffsets[s][e] + i;
                }
            }
        }
        return out;
    }

    /** A rank-major buffer of rows of {@code width}, permuted expert-major. */
    public float[] toExpertMajor(float[] rankMajor, int width) {
        int[] perm = rankMajorToExpertMajor();
        float[] out = new float[rankMajor.length];
        for (int i = 0; i < perm.length; i++) {
            System.arraycopy(rankMajor, i * width, out, perm[i] * width, width);
        }
        return out;
    }

    /** The inverse of {@link #toExpertMajor}: for sending results back to their sources. */
    public float[] toRankMajor(float[] expertMajor, int width) {
        int[] perm = rankMajorToExpertMajor();
        float[] out = new float[expertMajor.length];
        for (int i = 0; i < perm.length; i++) {
            System.arraycopy(expertMajor, perm[i] * width, out, i * width, width);
        }
        return out;
    }
}
