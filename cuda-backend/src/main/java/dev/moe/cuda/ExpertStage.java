package dev.moe.cuda;

/**
 * Where a {@link CudaMoeLayer}'s FFN experts run. The layer routes and sorts its tokens' rows by expert ({@code h}) and combines
 * the experts' outputs ({@code y}, laid out as h); a stage turns h into y and, backward, the output gradient {@code dy} into the
 * input gradient {@code dh}. A layer without a stage runs every expert itself ({@link ExpertGemms}); an expert-parallel stage
 * ({@code dev.moe.cuda.dist.ExpertParallelStage}) sends the rows to the ranks that hold their experts. Work is queued on the
 * layer's context's stream, in stream order with the layer's own.
 */
public interface ExpertStage extends AutoCloseable {
    /**
     * {@code y [rows, D]} for {@code h [rows, DIN]}, whose first {@code counts[0]} rows are expert 0's, then expert 1's, and so on
     * ({@code counts.length} is the layer's FFN experts; rows = their sum); with a {@link #rowOrder}, slot 0's, then slot 1's, and
     * the counts are per slot. Both pointers stay valid until the layer's next forward.
     */
    void forward(long h, int[] counts, long y);

    /**
     * {@link #forward(long, int[], long)}, queuing {@code beside} (work of the caller's that touches neither h nor y, such as the
     * MoE's shared experts) on the stream where it can run while the rows travel; by default after the experts.
     */
    default void forward(long h, int[] counts, long y, Runnable beside) {
        forward(h, counts, y);
        beside.run();
    }

    /**
     * The order of the experts' rows in h this stage wants: slot s holds expert {@code rowOrder()[s]} (an expert-parallel
     * placement whose ranks do not hold contiguous ranges in rank order, renumbered so that they do); null for the experts' own
     * order, as without a stage. The layer reads it when the stage is set.
     */
    default int[] rowOrder() {
        return null;
    }

    /**
     * The experts whose weights this stage reads from the layer's {@link CudaMoeLayer#expertWeights} (ascending ids); null for all
     * of them. In bf16 the layer refreshes the bf16 copies of these only: another rank's experts may have no memory behind them.
     */
    default int[] weightsRead() {
        return null;
    }

    /** The backward of the last {@link #forward}: {@code dh} (laid out as h) for {@code dy} (laid out as y), and the weight gradients. */
    void backward(long dy, long dh);

    /** {@link #backward(long, long)}, queuing {@code beside} where it can run while the gradients travel (by default after). */
    default void backward(long dy, long dh, Runnable beside) {
        backward(dy, dh);
        beside.run();
    }

    @Override
    void close();
}
