package dev.moe.runtime.train;

import dev.moe.runtime.Parameter;
import java.util.List;

/**
 * The collectives that data-parallel training needs, one rank's end. Every rank of a world calls each
 * method in the same order with arrays of the same length (they are collective): NCCL implements them
 * across GPUs in the CUDA backend; {@link #SINGLE}, a world of one, makes each an identity. Sums are
 * the same on every rank, so that every rank applies the same optimiser update and the replicas stay
 * equal.
 */
public interface Collective {
    /** A world of one rank: nothing to exchange. */
    Collective SINGLE = new Collective() {
        @Override
        public int rank() {
            return 0;
        }

        @Override
        public int size() {
            return 1;
        }

        @Override
        public void allReduceSum(float[] values, int offset, int length) {}

        @Override
        public void allReduceSum(double[] values) {}

        @Override
        public void allReduceSum(long[] values) {}

        @Override
        public void allReduceGradients(List<Parameter> params) {}

        @Override
        public void allReduceDeviceFloats(long pointer, long count) {}

        @Override
        public void startAllReduceDeviceFloats(long pointer, long count) {}
    };

    int rank();

    int size();

    /** Replaces {@code values[offset, offset + length)} on every rank by its element-wise sum over the ranks. */
    void allReduceSum(float[] values, int offset, int length);

    /** Replaces {@code values} by its element-wise sum over the ranks. */
    void allReduceSum(double[] values);

    /** Replaces {@code values} by its element-wise sum over the ranks (exact). */
    void allReduceSum(long[] values);

    /**
     * Replaces {@code count} floats of accelerator memory at {@code pointer} (a device address, on this
     * rank's GPU) by their sum over the ranks, in place: the gradients of a model that keeps them on
     * the device ({@link DeviceTrainable}). Only a collective over the GPU can; others refuse.
     */
    default void allReduceDeviceFloats(long pointer, long count) {
        throw new UnsupportedOperationException("this collective sums host arrays; a model that keeps its gradients on a GPU needs NCCL");
    }

    /**
     * Starts {@link #allReduceDeviceFloats} on accelerator memory whose values are final once the work queued so far has run,
     * without waiting for it: the backward pass goes on while finished layers' gradients are summed. The sums are complete
     * after {@link #awaitDeviceFloats}, which every rank calls after its last start. By default the sum is done at once.
     */
    default void startAllReduceDeviceFloats(long pointer, long count) {
        allReduceDeviceFloats(pointer, count);
    }

    /** Waits for every {@link #startAllReduceDeviceFloats} issued so far (work queued after this sees the sums). */
    default void awaitDeviceFloats() {}

    /**
     * Sums the gradients of the trainable parameters over the ranks, in place. Implementations may
     * bucket them (NCCL does); this default reduces one parameter at a time.
     */
    default void allReduceGradients(List<Parameter> params) {
        for (Parameter p : params) {
            if (p.trainable()) {
                allReduceSum(p.grad(), p.offset(), p.size());
            }
        }
    }

    /**
     * The rows {@code [from, to)} of a batch of {@code rows} sequences that rank {@code rank} of
     * {@code size} trains on: contiguous, in rank order, sizes differing by at most one, so that the
     * ranks together cover the batch exactly once.
     */
    record Shard(int from, int to) {
        public static Shard of(int rows, int rank, int size) {
            if (size < 1 || rank < 0 || rank >= size) {
                throw new IllegalArgumentException("rank " + rank + " of a world of " + size);
            }
            if (rows < size) {
                throw new IllegalArgumentException("a batch of " + rows + " sequences cannot be split over " + size
                        + " ranks: every rank needs at least one (raise `batch` in the recipe or use fewer GPUs)");
            }
            return new Shard((int) ((long) rows * rank / size), (int) ((long) rows * (rank + 1) / size));
        }

        public int rows() {
            return to - from;
        }
    }
}
