package dev.moe.cuda.nccl;

import dev.moe.cuda.CudaException;
import dev.moe.cuda.CudaLibraries;
import dev.moe.cuda.nccl.Nccl.DataType;
import dev.moe.cuda.nccl.Nccl.RedOp;
import java.lang.foreign.FunctionDescriptor;
import java.lang.foreign.Linker;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.lang.invoke.MethodHandle;
import java.time.Duration;

/**
 * One rank's NCCL communicator. Collectives are enqueued on a CUDA stream; {@link #await} waits for
 * them with a deadline and watches the communicator's asynchronous error, so that a peer that dies
 * or hangs makes this rank abort the communicator and fail with a message instead of waiting forever
 * (NCCL itself has no timeout).
 */
public final class Communicator implements AutoCloseable {
    private static final int CUDA_ERROR_NOT_READY = 600;
    private static MethodHandle cuStreamQuery;

    private final Nccl nccl;
    private final MemorySegment comm;
    public final int ranks;
    public final int rank;
    /**
     * Set for a communicator made by the nonblocking init: its calls may return ncclInProgress before
     * they are enqueued, and NCCL wants the state polled to success before the next call; this long.
     */
    private final Duration settleTimeout;
    private boolean closed;

    Communicator(Nccl nccl, MemorySegment comm, int ranks, int rank) {
        this(nccl, comm, ranks, rank, null);
    }

    Communicator(Nccl nccl, MemorySegment comm, int ranks, int rank, Duration settleTimeout) {
        this.nccl = nccl;
        this.comm = comm;
        this.ranks = ranks;
        this.rank = rank;
        this.settleTimeout = settleTimeout;
    }

    /** On a nonblocking communicator, waits until the last call is enqueued (its state leaves ncclInProgress). */
    private void settle(String what) {
        if (settleTimeout == null) {
            return;
        }
        long deadline = System.nanoTime() + settleTimeout.toNanos();
        while (true) {
            int state = nccl.asyncError(comm);
            if (state == Nccl.NCCL_SUCCESS) {
                return;
            }
            if (state != Nccl.NCCL_IN_PROGRESS) {
                String msg = Nccl.failure(what, state, nccl.errorString(state), nccl.lastError(comm));
                abort();
                throw new CudaException("rank " + rank + ": " + msg + " (a peer rank failed?)");
            }
            if (System.nanoTime() > deadline) {
                abort();
                throw new CudaException("rank " + rank + ": " + what + " was not enqueued within " + settleTimeout.toSeconds()
                        + " s: a peer rank died or hangs; aborted the communicator");
            }
            Thread.onSpinWait();
        }
    }

    /** What NCCL says this communicator is: {ranks, this rank, CUDA device}. */
    public int[] describe() {
        return new int[] {nccl.count(comm), nccl.userRank(comm), nccl.cuDevice(comm)};
    }

    public void allReduce(long send, long recv, long count, DataType type, RedOp op, MemorySegment stream) {
        nccl.allReduce(send, recv, count, type, op, comm, stream);
        settle("ncclAllReduce");
    }

    /**
     * The all-to-all with variable sizes: {@code sendCounts[p]} elements from {@code send} (peer after
     * peer, contiguous) go to peer p, and {@code recvCounts[p]} elements from peer p land in
     * {@code recv}, peer after peer. One group of point-to-point calls; empty ones are skipped on both
     * sides (each side knows the other's counts after the counts exchange).
     */
    public void allToAllV(long send, int[] sendCounts, long recv, int[] recvCounts, DataType type, MemorySegment stream) {
        if (sendCounts.length != ranks || recvCounts.length != ranks) {
            throw new IllegalArgumentException("all-to-all counts for " + sendCounts.length + "/" + recvCounts.length + " ranks in a world of " + ranks);
        }
        long[] sendAt = byteOffsets(sendCounts, type), recvAt = byteOffsets(recvCounts, type);
        nccl.groupStart();
        try {
            for (int p = 0; p < ranks; p++) {
                if (sendCounts[p] > 0) {
                    nccl.send(send + sendAt[p], sendCounts[p], type, p, comm, stream);
                }
                if (recvCounts[p] > 0) {
                    nccl.recv(recv + recvAt[p], recvCounts[p], type, p, comm, stream);
                }
            }
        } finally {
            nccl.groupEnd();
        }
        settle("the all-to-all's ncclGroupEnd");
    }

    /** The byte offset of each peer's part in a buffer laid out peer after peer. */
    static long[] byteOffsets(int[] counts, DataType type) {
        long[] out = new long[counts.length + 1];
        for (int p = 0; p < counts.length; p++) {
            if (counts[p] < 0) {
                throw new IllegalArgumentException("negative count " + counts[p] + " for rank " + p);
            }
            out[p + 1] = out[p] + (long) counts[p] * type.bytes;
        }
        return out;
    }

    /**
     * Waits until {@code stream} has finished, polling; aborts the communicator and throws when NCCL
     * reports an asynchronous error or the deadline passes.
     */
    public void await(MemorySegment stream, Duration timeout, String what) {
        long deadline = System.nanoTime() + timeout.toNanos();
        long sleep = 0;
        while (true) {
            // A nonblocking communicator may still be enqueueing (ncclInProgress): the stream is not yet the whole story.
            int state = settleTimeout != null ? nccl.asyncError(comm) : Nccl.NCCL_SUCCESS;
            int rc = state == Nccl.NCCL_IN_PROGRESS ? CUDA_ERROR_NOT_READY : streamQuery(stream);
            if (rc == 0) {
                return;
            }
            if (rc != CUDA_ERROR_NOT_READY) {
                abort();
                throw new CudaException("rank " + rank + ": " + what + ": the stream failed with CUDA error " + rc);
            }
            int async = nccl.asyncError(comm);
            if (async != Nccl.NCCL_SUCCESS && async != Nccl.NCCL_IN_PROGRESS) {
                String msg = Nccl.failure(what, async, nccl.errorString(async), "");
                abort();
                throw new CudaException("rank " + rank + ": " + msg + " (a peer rank failed?)");
            }
            if (System.nanoTime() > deadline) {
                abort();
                throw new CudaException("rank " + rank + ": " + what + " did not complete within " + timeout.toSeconds()
                        + " s: a peer rank died or hangs; aborted the communicator (MOE_NCCL_TIMEOUT_S sets the limit)");
            }
            // Spin briefly, then back off to 1 ms: collectives are usually done in microseconds.
            if (sleep < 1_000_000) {
                sleep = Math.max(1_000, sleep * 2);
            }
            try {
                Thread.sleep(Duration.ofNanos(sleep));
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
                abort();
                throw new CudaException("rank " + rank + ": interrupted while waiting for " + what, e);
            }
        }
    }

    private static synchronized int streamQuery(MemorySegment stream) {
        if (cuStreamQuery == null) {
            // Driver has no binding of it; one lookup here keeps the watchdog self-contained.
            MemorySegment symbol = CudaLibraries.load(CudaLibraries.DRIVER).find("cuStreamQuery")
                    .orElseThrow(() -> new CudaException("libcuda has no function cuStreamQuery"));
            cuStreamQuery = Linker.nativeLinker().downcallHandle(symbol, FunctionDescriptor.of(ValueLayout.JAVA_INT, ValueLayout.ADDRESS));
        }
        try {
            return (int) cuStreamQuery.invokeExact(stream);
        } catch (Throwable t) {
            throw new CudaException("cuStreamQuery failed: " + t, t);
        }
    }

    /** Tears the communicator down without waiting for peers (after a failure). */
    public void abort() {
        if (!closed) {
            closed = true;
            nccl.abort(comm);
        }
    }

    @Override
    public void close() {
        if (!closed) {
            closed = true;
            nccl.destroy(comm);
        }
    }
}
