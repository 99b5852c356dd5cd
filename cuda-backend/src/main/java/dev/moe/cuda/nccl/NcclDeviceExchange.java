package dev.moe.cuda.nccl;

import dev.moe.cuda.CudaContext;
import dev.moe.cuda.DeviceAllocator;
import dev.moe.cuda.dist.DeviceExchange;
import dev.moe.cuda.nccl.Nccl.DataType;
import dev.moe.cuda.nccl.Nccl.RedOp;
import java.time.Duration;

/**
 * {@link DeviceExchange} over NCCL, one process per rank: the rows all-to-all is one group of ncclSend/ncclRecv on the
 * context's stream, the all-reduce an ncclAllReduce. Each call waits for the stream with the communicator's watchdog, so that
 * a dead peer ends this rank with a message instead of a hang. {@link #startAllToAllV} runs the rows on a side stream instead
 * (after the work queued so far on the context's stream), so that the work queued next (an MoE layer's shared experts) runs beside
 * them; {@link #awaitAllToAllV} waits for them with the watchdog and orders the context's stream after them.
 */
public final class NcclDeviceExchange implements DeviceExchange {
    private final CudaContext ctx;
    private final Communicator comm;
    private final Duration timeout;
    /** The side stream of {@link #startAllToAllV} and its two events (queued work done; rows arrived), made on first use. */
    private java.lang.foreign.MemorySegment side, queued, arrived;
    private boolean inFlight;

    /** Whether {@link #comm} is this exchange's own (not the gradient sums' too). */
    private final boolean ownCommunicator;

    public NcclDeviceExchange(CudaContext ctx, Communicator comm, Duration timeout) {
        this(ctx, comm, timeout, false);
    }

    /** An exchange on {@code comm}, which with {@code ownCommunicator} carries no other collectives (a split of the world's). */
    public NcclDeviceExchange(CudaContext ctx, Communicator comm, Duration timeout, boolean ownCommunicator) {
        this.ctx = ctx;
        this.comm = comm;
        this.timeout = timeout;
        this.ownCommunicator = ownCommunicator;
    }

    @Override
    public boolean apartFromGradientSums() {
        return ownCommunicator;
    }

    @Override
    public int rank() {
        return comm.rank;
    }

    @Override
    public int size() {
        return comm.ranks;
    }

    @Override
    public int[] allToAll(int[] send, int block) {
        if (send.length != size() * block) {
            throw new IllegalArgumentException("all-to-all of " + send.length + " ints is not " + size() + " blocks of " + block);
        }
        int[] counts = new int[size()];
        java.util.Arrays.fill(counts, block);
        try (DeviceAllocator.Block s = ctx.allocator.allocate(4L * send.length);
                DeviceAllocator.Block r = ctx.allocator.allocate(4L * send.length)) {
            if (send.length == 0) {
                return new int[0];
            }
            ctx.upload(send, s.pointer);
            comm.allToAllV(s.pointer, counts, r.pointer, counts, DataType.INT32, ctx.stream);
            comm.await(ctx.stream, timeout, "the expert counts all-to-all");
            return ctx.downloadInts(r.pointer, send.length);
        }
    }

    @Override
    public void allToAllV(long send, int[] sendRows, long recv, int[] recvRows, int rowBytes) {
        DataType unit = unit(rowBytes);
        int perRow = rowBytes / unit.bytes;
        comm.allToAllV(send, elements(sendRows, perRow), recv, elements(recvRows, perRow), unit, ctx.stream);
        comm.await(ctx.stream, timeout, "the expert rows all-to-all");
    }

    @Override
    public void startAllToAllV(long send, int[] sendRows, long recv, int[] recvRows, int rowBytes) {
        if (inFlight) {
            throw new IllegalStateException("an all-to-all is already in flight");
        }
        if (side == null) {
            side = ctx.driver.createStream();
            queued = ctx.driver.createEvent();
            arrived = ctx.driver.createEvent();
        }
        DataType unit = unit(rowBytes);
        int perRow = rowBytes / unit.bytes;
        ctx.driver.record(queued, ctx.stream);
        ctx.driver.streamWaitEvent(side, queued);
        comm.allToAllV(send, elements(sendRows, perRow), recv, elements(recvRows, perRow), unit, side);
        ctx.driver.record(arrived, side);
        inFlight = true;
    }

    @Override
    public void awaitAllToAllV() {
        if (!inFlight) {
            return;
        }
        inFlight = false;
        comm.await(side, timeout, "the expert rows all-to-all");
        ctx.driver.streamWaitEvent(ctx.stream, arrived);
    }

    /** The widest NCCL type that divides a row: the rows only move, so any type of their size will do. */
    static DataType unit(int rowBytes) {
        if (rowBytes <= 0) {
            throw new IllegalArgumentException("rows of " + rowBytes + " bytes");
        }
        return rowBytes % 4 == 0 ? DataType.FLOAT32 : rowBytes % 2 == 0 ? DataType.BFLOAT16 : DataType.UINT8;
    }

    /** Rows as elements of {@code perRow} each; NCCL's counts here are ints. */
    static int[] elements(int[] rows, int perRow) {
        int[] out = new int[rows.length];
        for (int p = 0; p < rows.length; p++) {
            long n = (long) rows[p] * perRow;
            if (n > Integer.MAX_VALUE) {
                throw new IllegalArgumentException(rows[p] + " rows of " + perRow + " elements for rank " + p + ": more than an all-to-all's int count");
            }
            out[p] = (int) n;
        }
        return out;
    }

    @Override
    public void allReduceSum(long buffer, long count) {
        if (count == 0) {
            return;
        }
        comm.allReduce(buffer, buffer, count, DataType.FLOAT32, RedOp.SUM, ctx.stream);
        comm.await(ctx.stream, timeout, "the all-reduce of " + count + " floats");
    }
}
