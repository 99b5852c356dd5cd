package dev.moe.cuda.dist;

import dev.moe.cuda.CudaContext;
import java.util.concurrent.BrokenBarrierException;
import java.util.concurrent.CyclicBarrier;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.TimeoutException;

/**
 * Simulated ranks that share one GPU in one process, for checking expert parallelism where only one GPU exists: each rank has
 * its own {@link CudaContext} on that GPU (its own stream, allocator and cuBLASLt handle; contexts of one device share its
 * primary context, so their device pointers are valid in each other's copies) and its own thread. An exchange publishes each
 * rank's buffers, and every rank pulls what it is sent with device-to-device copies on its own stream. The streams are not
 * linked by events: a rank finishes its stream before it publishes and again before it leaves, which is slow and simple, and
 * fine for a correctness check. As {@link LocalGroup}, a rank that does not arrive within the timeout fails every rank.
 */
public final class SharedDeviceGroup {
    private final int size;
    private final long timeoutMillis;
    private final CyclicBarrier barrier;
    /** [rank] what each rank published for the exchange in progress. */
    private final Object[] posted;

    public SharedDeviceGroup(int size, long timeoutMillis) {
        if (size < 1) {
            throw new IllegalArgumentException("a group needs at least one rank");
        }
        this.size = size;
        this.timeoutMillis = timeoutMillis;
        this.barrier = new CyclicBarrier(size);
        this.posted = new Object[size];
    }

    public int size() {
        return size;
    }

    /** Rank {@code rank}'s end, working on {@code ctx}; use it from one thread, which has made {@code ctx} current. */
    public DeviceExchange rank(int rank, CudaContext ctx) {
        if (rank < 0 || rank >= size) {
            throw new IllegalArgumentException("rank " + rank + " of a group of " + size);
        }
        return new Member(rank, ctx);
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

    private record Rows(long send, int[] sendRows, int rowBytes) {}

    private final class Member implements DeviceExchange {
        private final int rank;
        private final CudaContext ctx;

        Member(int rank, CudaContext ctx) {
            this.rank = rank;
            this.ctx = ctx;
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
            posted[rank] = send.clone();
            await(rank, "all-to-all");
            int[] out = new int[size * block];
            String mismatch = null;
            for (int s = 0; s < size; s++) {
                int[] part = (int[]) posted[s];
                if (part.length != size * block) {
                    mismatch = "rank " + rank + ": all-to-all block of " + block + " but rank " + s + " sent " + part.length / size;
                    break;
                }
                System.arraycopy(part, rank * block, out, s * block, block);
            }
            await(rank, "all-to-all");
            if (mismatch != null) {
                throw new IllegalStateException(mismatch);
            }
            return out;
        }

        @Override
        public void allToAllV(long send, int[] sendRows, long recv, int[] recvRows, int rowBytes) {
            if (sendRows.length != size || recvRows.length != size) {
                throw new IllegalArgumentException("all-to-all counts for " + sendRows.length + "/" + recvRows.length + " ranks in a group of " + size);
            }
            ctx.synchronize(); // the rows to send are written
            posted[rank] = new Rows(send, sendRows.clone(), rowBytes);
            await(rank, "all-to-all-v");
            String mismatch = null;
            long at = 0;
            for (int s = 0; s < size && mismatch == null; s++) {
                Rows from = (Rows) posted[s];
                if (from.rowBytes() != rowBytes || from.sendRows()[rank] != recvRows[s]) {
                    mismatch = "rank " + rank + " expected " + recvRows[s] + " rows of " + rowBytes + " bytes from rank " + s + ", which sent "
                            + from.sendRows()[rank] + " of " + from.rowBytes();
                    break;
                }
                long offset = 0;
                for (int r = 0; r < rank; r++) {
                    offset += from.sendRows()[r];
                }
                long bytes = (long) recvRows[s] * rowBytes;
                if (bytes > 0) {
                    ctx.driver.copyOnDevice(recv + at, from.send() + offset * rowBytes, bytes, ctx.stream);
                }
                at += bytes;
            }
            ctx.synchronize(); // the senders may reuse their buffers once every rank has copied
            await(rank, "all-to-all-v");
            if (mismatch != null) {
                throw new IllegalStateException(mismatch);
            }
        }

        @Override
        public void allReduceSum(long buffer, long count) {
            if (count > Integer.MAX_VALUE) {
                throw new IllegalArgumentException("an all-reduce of " + count + " floats in one process");
            }
            float[] mine = count == 0 ? new float[0] : ctx.downloadFloats(buffer, (int) count);
            posted[rank] = mine;
            await(rank, "all-reduce");
            float[] sum = new float[mine.length];
            String mismatch = null;
            // rank order on every rank, so that every rank gets the same bits
            for (int s = 0; s < size; s++) {
                float[] part = (float[]) posted[s];
                if (part.length != sum.length) {
                    mismatch = "rank " + rank + ": all-reduce of " + sum.length + " floats but rank " + s + " sent " + part.length;
                    break;
                }
                for (int i = 0; i < sum.length; i++) {
                    sum[i] += part[i];
                }
            }
            await(rank, "all-reduce");
            if (mismatch != null) {
                throw new IllegalStateException(mismatch);
            }
            if (count > 0) {
                ctx.upload(sum, buffer);
            }
        }
    }
}
