package dev.moe.cuda.nccl;

import dev.moe.cuda.CudaContext;
import dev.moe.cuda.DeviceAllocator;
import dev.moe.cuda.dist.Exchange;
import dev.moe.cuda.nccl.Nccl.DataType;
import dev.moe.cuda.nccl.Nccl.RedOp;
import java.time.Duration;

/**
 * {@link Exchange} over NCCL for host arrays: each call uploads, runs the collective on the
 * context's stream, waits with the watchdog and downloads. It carries the CPU-tested expert-parallel
 * logic onto real GPUs for the checks; the training path keeps its buffers on the device.
 */
public final class NcclExchange implements Exchange {
    private final CudaContext ctx;
    private final Communicator comm;
    private final Duration timeout;

    public NcclExchange(CudaContext ctx, Communicator comm, Duration timeout) {
        this.ctx = ctx;
        this.comm = comm;
        this.timeout = timeout;
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
        int[] counts = new int[size()];
        java.util.Arrays.fill(counts, block);
        try (DeviceAllocator.Block s = ctx.allocator.allocate(4L * send.length);
                DeviceAllocator.Block r = ctx.allocator.allocate(4L * size() * block)) {
            if (send.length > 0) {
                ctx.upload(send, s.pointer);
            }
            comm.allToAllV(s.pointer, counts, r.pointer, counts, DataType.INT32, ctx.stream);
            comm.await(ctx.stream, timeout, "the counts all-to-all");
            return size() * block == 0 ? new int[0] : ctx.downloadInts(r.pointer, size() * block);
        }
    }

    @Override
    public float[] allToAllV(float[] send, int[] sendCounts, int[] recvCounts, int width) {
        int[] sendElems = new int[size()], recvElems = new int[size()];
        long total = 0;
        for (int p = 0; p < size(); p++) {
            sendElems[p] = sendCounts[p] * width;
            recvElems[p] = recvCounts[p] * width;
            total += recvElems[p];
        }
        try (DeviceAllocator.Block s = ctx.allocator.allocate(4L * send.length);
                DeviceAllocator.Block r = ctx.allocator.allocate(4L * total)) {
            if (send.length > 0) {
                ctx.upload(send, s.pointer);
            }
            comm.allToAllV(s.pointer, sendElems, r.pointer, recvElems, DataType.FLOAT32, ctx.stream);
            comm.await(ctx.stream, timeout, "the rows all-to-all");
            return total == 0 ? new float[0] : ctx.downloadFloats(r.pointer, (int) total);
        }
    }

    @Override
    public float[] allReduceSum(float[] values) {
        if (values.length == 0) {
            return new float[0];
        }
        try (DeviceAllocator.Block b = ctx.allocator.allocate(4L * values.length)) {
            ctx.upload(values, b.pointer);
            comm.allReduce(b.pointer, b.pointer, values.length, DataType.FLOAT32, RedOp.SUM, ctx.stream);
            comm.await(ctx.stream, timeout, "the all-reduce");
            return ctx.downloadFloats(b.pointer, values.length);
        }
    }
}
