package dev.moe.cuda.dist;

import java.util.concurrent.BrokenBarrierException;
import java.util.concurrent.CyclicBarrier;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.TimeoutException;

/**
 * N ranks in one process, one thread each, exchanging through shared mailboxes: the CPU stand-in for
 * NCCL that the expert-parallel logic is tested with. A rank that does not arrive within the timeout
 * breaks the barrier, and every rank fails with a message instead of hanging, as NCCL's timeouts make
 * the real ranks do. Sizes are checked: a receiver that expects other counts than were sent fails.
 */
public final class LocalGroup {
    private final int size;
    private final long timeoutMillis;
    private final CyclicBarrier barrier;
    /** [source][destination] the payload in flight. */
    private final Object[][] mailbox;

    public LocalGroup(int size, long timeoutMillis) {
        if (size < 1) {
            throw new IllegalArgumentException("a group needs at least one rank");
        }
        this.size = size;
        this.timeoutMillis = timeoutMillis;
        this.barrier = new CyclicBarrier(size);
        this.mailbox = new Object[size][size];
    }

    public int size() {
        return size;
    }

    /** Rank {@code rank}'s end; use each from one thread. */
    public Exchange rank(int rank) {
        if (rank < 0 || rank >= size) {
            throw new IllegalArgumentException("rank " + rank + " of a group of " + size);
        }
        return new Member(rank);
    }

    private void await(int rank, String op) {
        try {
            barrier.await(timeoutMillis, TimeUnit.MILLISECONDS);
        } catch (TimeoutException | BrokenBarrierException e) {
            barrier.reset();
            throw new IllegalStateException("rank " + rank + ": " + op + " did not complete: another rank failed or did not arrive within "
                    + timeoutMillis + " ms", e);
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
            throw new IllegalStateException("rank " + rank + ": interrupted in " + op, e);
        }
    }

    private final class Member implements Exchange {
        private final int rank;

        Member(int rank) {
            this.rank = rank;
        }

        @Override
        public int rank() {
            return rank;
        }

        @Override
        public int size() {
            return size;
        }

        @Override
        public int[] allToAll(int[] send, int block) {
            if (send.length != size * block) {
                throw new IllegalArgumentException("all-to-all of " + send.length + " ints is not " + size + " blocks of " + block);
            }
            for (int r = 0; r < size; r++) {
                int[] part = new int[block];
                System.arraycopy(send, r * block, part, 0, block);
                mailbox[rank][r] = part;
            }
            await(rank, "all-to-all");
            int[] out = new int[size * block];
            for (int s = 0; s < size; s++) {
                int[] part = (int[]) mailbox[s][rank];
                if (part.length != block) {
                    throw new IllegalStateException("rank " + rank + ": all-to-all block of " + block + " but rank " + s + " sent " + part.length);
                }
                System.arraycopy(part, 0, out, s * block, block);
            }
            await(rank, "all-to-all");
            return out;
        }

        @Override
        public float[] allToAllV(float[] send, int[] sendCounts, int[] recvCounts, int width) {
            int at = 0;
            for (int r = 0; r < size; r++) {
                float[] part = new float[sendCounts[r] * width];
                System.arraycopy(send, at, part, 0, part.length);
                at += part.length;
                mailbox[rank][r] = part;
            }
            if (at != send.length) {
                throw new IllegalArgumentException("rank " + rank + ": send counts cover " + at / width + " rows of " + send.length / width);
            }
            await(rank, "all-to-all-v");
            int total = 0;
            for (int c : recvCounts) {
                total += c;
            }
            float[] out = new float[total * width];
            at = 0;
            String mismatch = null;
            for (int s = 0; s < size; s++) {
                float[] part = (float[]) mailbox[s][rank];
                if (part.length != recvCounts[s] * width) {
                    mismatch = "rank " + rank + " expected " + recvCounts[s] + " rows from rank " + s + ", which sent " + part.length / width;
                    break;
                }
                System.arraycopy(part, 0, out, at, part.length);
                at += part.length;
            }
            await(rank, "all-to-all-v");
            if (mismatch != null) {
                throw new IllegalStateException(mismatch);
            }
            return out;
        }

        @Override
        public float[] allReduceSum(float[] values) {
            mailbox[rank][0] = values.clone();
            await(rank, "all-reduce");
            float[] out = new float[values.length];
            // Rank order on every rank, so that every rank gets the same bits.
            for (int s = 0; s < size; s++) {
                float[] part = (float[]) mailbox[s][0];
                if (part.length != out.length) {
                    throw new IllegalStateException("rank " + rank + ": all-reduce of " + out.length + " values but rank " + s + " sent " + part.length);
                }
                for (int i = 0; i < out.length; i++) {
                    out[i] += part[i];
                }
            }
            await(rank, "all-reduce");
            return out;
        }
    }
}
