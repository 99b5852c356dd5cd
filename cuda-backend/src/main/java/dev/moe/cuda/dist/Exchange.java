package dev.moe.cuda.dist;

/**
 * The collectives that expert parallelism needs, on host arrays: implemented in-process by
 * {@link LocalGroup} for tests, and over NCCL by the GPU code. Every rank calls each method in the
 * same order (they are collective).
 */
public interface Exchange {
    int rank();

    int size();

    /** Fixed-size all-to-all: block r of {@code send} ({@code block} ints) goes to rank r; block s of the result came from rank s. */
    int[] allToAll(int[] send, int block);

    /**
     * Variable-size all-to-all of rows of {@code width} floats: {@code sendCounts[r]} consecutive rows to
     * rank r, in rank order; the result holds {@code recvCounts[s]} rows from each rank s, in rank order.
     */
    float[] allToAllV(float[] send, int[] sendCounts, int[] recvCounts, int width);

    /** The element-wise sum over ranks, the same on every rank. */
    float[] allReduceSum(float[] values);
}
