package dev.moe.runtime.cpu;

import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.ForkJoinPool;
import java.util.concurrent.ForkJoinWorkerThread;
import java.util.concurrent.RecursiveAction;

/**
 * A tiny fork-join helper shared by the CPU kernels: {@link #forRange} splits an index range
 * {@code [0, n)} into at most {@link #threads()} contiguous chunks and runs them in parallel, the
 * calling thread taking the first chunk itself, and returns when all are done.
 *
 * <p>Chunk boundaries depend on the thread count, so a body must give the same results however its
 * range is cut: split only over independent outputs (rows, columns, experts), never a reduction, and
 * every output element then sees the same sequence of floating-point operations whether one thread
 * or many run it. That is what makes the CPU backend bitwise deterministic across thread counts.
 *
 * <p>The worker threads are daemons in a {@link ForkJoinPool} shared by every {@code Parallel} of the
 * same thread count (created on first use and never shut down), so creating many backends costs no
 * threads. With {@code threads == 1}, or when the range is too small to split, the body runs inline on
 * the calling thread with no synchronisation at all. An exception thrown by a chunk is rethrown to the
 * caller (after the other chunks have finished). Nested calls from inside a body are allowed.
 */
public final class Parallel {
    /** A body over the index range {@code [from, to)}. */
    @FunctionalInterface
    public interface IntRangeConsumer {
        void accept(int from, int to);
    }

    /** One pool per thread count, for the life of the JVM. */
    private static final ConcurrentHashMap<Integer, ForkJoinPool> POOLS = new ConcurrentHashMap<>();

    private final int threads;
    private final ForkJoinPool pool;

    /** @param threads how many threads (the caller included) share the work; at least 1 */
    public Parallel(int threads) {
        if (threads < 1) {
            throw new IllegalArgumentException("threads must be >= 1: " + threads);
        }
        this.threads = threads;
        this.pool = threads == 1 ? null : POOLS.computeIfAbsent(threads, Parallel::newPool);
    }

    private static ForkJoinPool newPool(int threads) {
        // The caller runs one chunk itself, so threads - 1 workers suffice.
        ForkJoinPool.ForkJoinWorkerThreadFactory factory = p -> {
            ForkJoinWorkerThread t = ForkJoinPool.defaultForkJoinWorkerThreadFactory.newThread(p);
            t.setDaemon(true);
            t.setName("moe-cpu-" + threads + "-" + t.getPoolIndex());
            return t;
        };
        return new ForkJoinPool(Math.max(1, threads - 1), factory, null, false);
    }

    /** The number of threads (the caller included) that {@link #forRange} spreads work over. */
    public int threads() {
        return threads;
    }

    /**
     * Runs {@code body} over {@code [0, n)} split into {@code min(threads, n)} contiguous chunks of
     * near-equal size (the first {@code n % chunks} one longer). Does nothing when {@code n <= 0}.
     */
    public void forRange(int n, IntRangeConsumer body) {
        forRange(n, 1, body);
    }

    /**
     * Like {@link #forRange(int, IntRangeConsumer)}, but no chunk is shorter than {@code grain}
     * indices (except when the whole range is): the range runs inline when {@code n < 2 * grain}.
     * Use a grain where one index is little work, so that small calls are not worth a hand-off.
     */
    public void forRange(int n, int grain, IntRangeConsumer body) {
        if (n <= 0) {
            return;
        }
        int chunks = Math.min(threads, n / Math.max(1, grain));
        if (chunks <= 1) {
            body.accept(0, n);
            return;
        }
        int base = n / chunks;
        int extra = n % chunks;
        Chunk[] tasks = new Chunk[chunks - 1];
        int start = base + (extra > 0 ? 1 : 0); // chunk 0 is [0, start), run here
        int from = start;
        for (int c = 1; c < chunks; c++) {
            int to = from + base + (c < extra ? 1 : 0);
            tasks[c - 1] = new Chunk(body, from, to);
            from = to;
        }
        boolean inPool = Thread.currentThread() instanceof ForkJoinWorkerThread w && w.getPool() == pool;
        for (Chunk t : tasks) {
            if (inPool) {
                t.fork();
            } else {
                pool.execute(t);
            }
        }
        Throwable failure = null;
        try {
            body.accept(0, start);
        } catch (Throwable t) {
            failure = t;
        }
        for (Chunk t : tasks) {
            t.join(); // never throws: a chunk keeps its own failure
            if (t.failure != null) {
                if (failure == null) {
                    failure = t.failure;
                } else if (failure != t.failure) {
                    failure.addSuppressed(t.failure);
                }
            }
        }
        if (failure instanceof RuntimeException e) {
            throw e;
        }
        if (failure instanceof Error e) {
            throw e;
        }
        if (failure != null) {
            throw new RuntimeException(failure);
        }
    }

    private static final class Chunk extends RecursiveAction {
        private final IntRangeConsumer body;
        private final int from;
        private final int to;
        /** What the body threw, rethrown as is by the caller (ForkJoinTask.join would wrap a copy). */
        Throwable failure;

        Chunk(IntRangeConsumer body, int from, int to) {
            this.body = body;
            this.from = from;
            this.to = to;
        }

        @Override
        protected void compute() {
            try {
                body.accept(from, to);
            } catch (Throwable t) {
                failure = t;
            }
        }
    }
}
