package dev.moe.cuda.dist;

/**
 * The collectives an expert-parallel layer on the GPU needs ({@link ExpertParallelStage}), on device buffers of the rank's
 * context, in that context's stream order: a call reads what was queued before it and what is queued after it sees its result.
 * {@link SharedDeviceGroup} runs simulated ranks on one GPU in one process; {@code dev.moe.cuda.nccl.NcclDeviceExchange} real ranks
 * over NCCL. Every rank calls each method in the same order (they are collective).
 */
public interface DeviceExchange {
    int rank();

    int size();

    /** Fixed-size all-to-all of host ints: block r of {@code send} ({@code block} ints) goes to rank r; block s of the result came from rank s. */
    int[] allToAll(int[] send, int block);

    /**
     * Variable-size all-to-all of rows of {@code rowBytes} bytes: {@code sendRows[r]} consecutive rows of {@code send} to rank r, in
     * rank order; {@code recv} gets {@code recvRows[s]} rows from each rank s, in rank order (the counts must agree with the senders').
     */
    void allToAllV(long send, int[] sendRows, long recv, int[] recvRows, int rowBytes);

    /**
     * {@link #allToAllV} begun so that work queued on the context's stream after this call (work that neither writes {@code send}
     * nor touches {@code recv}) may run beside the exchange; {@link #awaitAllToAllV} makes the stream wait for the rows. At most
     * one exchange is in flight, and no other collective is called before it is awaited. Without a side stream (the default)
     * the rows have arrived when this returns.
     */
    default void startAllToAllV(long send, int[] sendRows, long recv, int[] recvRows, int rowBytes) {
        allToAllV(send, sendRows, recv, recvRows, rowBytes);
    }

    /** Work queued on the context's stream after this call sees the rows of the last {@link #startAllToAllV}. */
    default void awaitAllToAllV() {}

    /**
     * Whether this exchange's collectives run on a communicator of their own, apart from the data-parallel gradient sums', so that
     * those may run beside them (on another stream) without two streams of collectives sharing one communicator.
     */
    default boolean apartFromGradientSums() {
        return false;
    }

    /** The element-wise sum over ranks of {@code count} floats at {@code buffer}, in place, the same on every rank. */
    void allReduceSum(long buffer, long count);
}
