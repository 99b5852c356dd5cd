package dev.moe.cuda.dist;

import java.util.ArrayList;
import java.util.List;

/**
 * Data parallelism's gradient buckets, as PyTorch DDP forms them: the dense parameters, listed in the
 * order the backward pass finishes their gradients (last layer first), are packed into a flat buffer
 * and cut into buckets of at most {@code bucketElements} (a smaller first bucket starts the first
 * all-reduce early); a parameter larger than the cap gets a bucket of its own. A bucket's all-reduce
 * starts as soon as all its gradients are ready and every earlier bucket has started: every rank must
 * issue its collectives in the same order, whatever order its gradients finish in.
 */
public final class GradientBuckets {
    /** [params] each parameter's offset in the flat buffer. */
    private final long[] offsets;
    /** [params] each parameter's bucket. */
    private final int[] bucketOf;
    /** [buckets + 1] first element of each bucket. */
    private final long[] bucketStarts;
    /** [buckets] how many parameters each bucket holds. */
    private final int[] bucketParams;

    private GradientBuckets(long[] offsets, int[] bucketOf, long[] bucketStarts, int[] bucketParams) {
        this.offsets = offsets;
        this.bucketOf = bucketOf;
        this.bucketStarts = bucketStarts;
        this.bucketParams = bucketParams;
    }

    public static GradientBuckets plan(long[] sizes, long firstBucketElements, long bucketElements) {
        if (firstBucketElements < 1 || bucketElements < 1) {
            throw new IllegalArgumentException("bucket caps must be positive");
        }
        int n = sizes.length;
        long[] offsets = new long[n];
        int[] bucketOf = new int[n];
        List<Long> starts = new ArrayList<>(List.of(0L));
        List<Integer> counts = new ArrayList<>();
        long at = 0, inBucket = 0;
        int params = 0;
        for (int i = 0; i < n; i++) {
            if (sizes[i] < 0) {
                throw new IllegalArgumentException("parameter " + i + " has a negative size");
            }
            long cap = starts.size() == 1 ? firstBucketElements : bucketElements;
            if (params > 0 && inBucket + sizes[i] > cap) {
                counts.add(params);
                starts.add(at);
                inBucket = 0;
                params = 0;
            }
            offsets[i] = at;
            bucketOf[i] = starts.size() - 1;
            at += sizes[i];
            inBucket += sizes[i];
            params++;
        }
        if (params > 0) {
            counts.add(params);
            starts.add(at);
        }
        long[] s = starts.stream().mapToLong(Long::longValue).toArray();
        if (n == 0) {
            s = new long[] {0};
        }
        return new GradientBuckets(offsets, bucketOf, s, counts.stream().mapToInt(Integer::intValue).toArray());
    }

    public int buckets() {
        return bucketParams.length;
    }

    public int parameters() {
        return offsets.length;
    }

    public int bucketOf(int param) {
        return bucketOf[param];
    }

    public long offset(int param) {
        return offsets[param];
    }

    public long bucketStart(int bucket) {
        return bucketStarts[bucket];
    }

    public long bucketSize(int bucket) {
        return bucketStarts[bucket + 1] - bucketStarts[bucket];
    }

    public long totalElements() {
        return bucketStarts[bucketStarts.length - 1];
    }

    /** One backward pass's progress: which buckets may start their all-reduce. */
    public Tracker tracker() {
        return new Tracker();
    }

    public final class Tracker {
        private final int[] pending = bucketParams.clone();
        private final boolean[] ready = new boolean[offsets.length];
        private int launched;

        /** Marks a gradient ready; returns the buckets that may now start, in order (often none). */
        public List<Integer> ready(int param) {
            if (ready[param]) {
                throw new IllegalStateException("parameter " + param + "'s gradient was marked ready twice in one backward pass");
            }
            ready[param] = true;
            pending[bucketOf[param]]--;
            List<Integer> out = new ArrayList<>();
            while (launched < pending.length && pending[launched] == 0) {
                out.add(launched++);
            }
            return out;
        }

        public boolean done() {
            return launched == pending.length;
        }
    }

    /**
     * Averages {@code grads} (the flat buffer) over the ranks, bucket by bucket, marking gradients ready
     * in {@code readyOrder}: the CPU model of the overlapped all-reduce (on the GPU each bucket's
     * all-reduce runs on a side stream while the backward pass goes on).
     */
    public void allReduceMean(Exchange exchange, float[] grads, int[] readyOrder) {
        if (grads.length != totalElements()) {
            throw new IllegalArgumentException("a flat buffer of " + grads.length + " for " + totalElements() + " gradient elements");
        }
        Tracker t = tracker();
        for (int param : readyOrder) {
            for (int b : t.ready(param)) {
                int from = (int) bucketStart(b), n = (int) bucketSize(b);
                float[] part = new float[n];
                System.arraycopy(grads, from, part, 0, n);
                float[] sum = exchange.allReduceSum(part);
                for (int i = 0; i < n; i++) {
                    grads[from + i] = sum[i] / exchange.size();
                }
            }
        }
        if (!t.done()) {
            throw new IllegalStateException("the backward pass ended with gradients not marked ready");
        }
    }
}
