package dev.moe.cuda.nccl;

import dev.moe.cuda.CudaContext;
import dev.moe.cuda.DeviceAllocator;
import dev.moe.cuda.dist.GradientBuckets;
import dev.moe.cuda.nccl.Nccl.DataType;
import dev.moe.cuda.nccl.Nccl.RedOp;
import dev.moe.runtime.Parameter;
import dev.moe.runtime.train.Collective;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;

/**
 * Data-parallel training's {@link Collective} over NCCL: host arrays are staged through one device
 * buffer on the context's stream, reduced with ncclAllReduce and waited for with the communicator's
 * watchdog, so that a dead or hung peer ends this rank with a message (and an aborted communicator)
 * instead of a hang.
 *
 * <p>Host gradients go as DDP's buckets ({@link GradientBuckets}, last layer first, a small first bucket):
 * the flat gradient is uploaded once and one all-reduce is enqueued per bucket, all waited for
 * together. A device-resident model's gradients are summed where they are: layer by layer during its
 * backward pass ({@link #startAllReduceDeviceFloats} on a stream of its own, joined by
 * {@link #awaitDeviceFloats}), or the whole arena at once ({@link #allReduceDeviceFloats}).
 */
public final class NcclCollective implements Collective, AutoCloseable {
    /** DDP's defaults: a 1 MiB first bucket, 25 MiB after it (in floats). */
    static final long FIRST_BUCKET = (1L << 20) / 4, BUCKET = (25L << 20) / 4;

    private final CudaContext ctx;
    private final Communicator comm;
    private final Duration timeout;
    private List<Parameter> planned;
    private GradientBuckets buckets;
    private List<Parameter> order;
    /** The stream gradient sums overlapped with the backward run on, and its events (created at the first overlapped sum). */
    private MemorySegment sumStream, ready, summed;
    /** The expert-parallel exchange's own communicator ({@link #deviceExchange}); null until asked for. */
    private Communicator exchangeComm;
    private int started;

    public NcclCollective(CudaContext ctx, Communicator comm, Duration timeout) {
        this.ctx = ctx;
        this.comm = comm;
        this.timeout = timeout;
    }

    /**
     * Joins this process's rank to the world: the unique id through the {@link Rendezvous}, then the
     * communicator with the nonblocking init, both within the world's timeouts.
     */
    public static NcclCollective join(CudaContext ctx, WorldConfig world) {
        ctx.makeCurrent();
        Nccl nccl = Nccl.get();
        UniqueId id = Rendezvous.exchange(world, nccl::uniqueId);
        Communicator comm = "1".equals(System.getenv("MOE_NCCL_BLOCKING_INIT")) ? nccl.initRank(world.worldSize(), id, world.rank())
                : nccl.initRank(world.worldSize(), id, world.rank(), world.rendezvousTimeout());
        return new NcclCollective(ctx, comm, world.ncclTimeout());
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
    public void allReduceSum(float[] values, int offset, int length) {
        if (length == 0) {
            return;
        }
        try (Arena arena = Arena.ofConfined(); DeviceAllocator.Block b = ctx.allocator.allocate(4L * length)) {
            MemorySegment host = arena.allocate(4L * length, 64);
            MemorySegment.copy(values, offset, host, ValueLayout.JAVA_FLOAT, 0, length);
            reduce(host, b.pointer, length, DataType.FLOAT32, "the all-reduce of " + length + " floats");
            MemorySegment.copy(host, ValueLayout.JAVA_FLOAT, 0, values, offset, length);
        }
    }

    @Override
    public void allReduceSum(double[] values) {
        if (values.length == 0) {
            return;
        }
        try (Arena arena = Arena.ofConfined(); DeviceAllocator.Block b = ctx.allocator.allocate(8L * values.length)) {
            MemorySegment host = arena.allocateFrom(ValueLayout.JAVA_DOUBLE, values);
            reduce(host, b.pointer, values.length, DataType.FLOAT64, "the all-reduce of the step's losses");
            MemorySegment.copy(host, ValueLayout.JAVA_DOUBLE, 0, values, 0, values.length);
        }
    }

    @Override
    public void allReduceSum(long[] values) {
        if (values.length == 0) {
            return;
        }
        try (Arena arena = Arena.ofConfined(); DeviceAllocator.Block b = ctx.allocator.allocate(8L * values.length)) {
            MemorySegment host = arena.allocateFrom(ValueLayout.JAVA_LONG, values);
            reduce(host, b.pointer, values.length, DataType.INT64, "the all-reduce of the expert loads");
            MemorySegment.copy(host, ValueLayout.JAVA_LONG, 0, values, 0, values.length);
        }
    }

    /** Uploads {@code host}, sums it over the ranks in place on the device, waits and downloads it back into {@code host}. */
    private void reduce(MemorySegment host, long device, long count, DataType type, String what) {
        long bytes = count * type.bytes;
        ctx.makeCurrent();
        ctx.driver.copyToDevice(device, host, bytes, ctx.stream);
        comm.allReduce(device, device, count, type, RedOp.SUM, ctx.stream);
        ctx.driver.copyToHost(host, device, bytes, ctx.stream);
        comm.await(ctx.stream, timeout, what);
    }

    @Override
    public void allReduceGradients(List<Parameter> params) {
        if (params != planned) { // the trainer keeps one list per stage
            plan(params);
        }
        long total = buckets.totalElements();
        if (total == 0) {
            return;
        }
        ctx.makeCurrent();
        try (Arena arena = Arena.ofConfined(); DeviceAllocator.Block b = ctx.allocator.allocate(4L * total)) {
            MemorySegment host = arena.allocate(4L * total, 64);
            for (int i = 0; i < order.size(); i++) {
                Parameter p = order.get(i);
                MemorySegment.copy(p.grad(), p.offset(), host, ValueLayout.JAVA_FLOAT, 4L * buckets.offset(i), p.size());
            }
            ctx.driver.copyToDevice(b.pointer, host, 4L * total, ctx.stream);
            for (int k = 0; k < buckets.buckets(); k++) {
                long at = b.pointer + 4L * buckets.bucketStart(k);
                comm.allReduce(at, at, buckets.bucketSize(k), DataType.FLOAT32, RedOp.SUM, ctx.stream);
            }
            ctx.driver.copyToHost(host, b.pointer, 4L * total, ctx.stream);
            comm.await(ctx.stream, timeout, "the gradient all-reduce (" + buckets.buckets() + " buckets)");
            for (int i = 0; i < order.size(); i++) {
                Parameter p = order.get(i);
                MemorySegment.copy(host, ValueLayout.JAVA_FLOAT, 4L * buckets.offset(i), p.grad(), p.offset(), p.size());
            }
        }
    }

    /**
     * The gradient arena of a device-resident model, summed in place: one all-reduce per bucket of at
     * most {@link #BUCKET} floats, the arena's end first (the backward pass finishes the last layers
     * first), all waited for together.
     */
    @Override
    public void allReduceDeviceFloats(long pointer, long count) {
        if (count == 0) {
            return;
        }
        ctx.makeCurrent();
        int buckets = 0;
        for (long end = count; end > 0; end -= BUCKET) {
            long start = Math.max(0, end - BUCKET);
            comm.allReduce(pointer + 4 * start, pointer + 4 * start, end - start, DataType.FLOAT32, RedOp.SUM, ctx.stream);
            buckets++;
        }
        comm.await(ctx.stream, timeout, "the gradient all-reduce (" + buckets + " buckets)");
    }

    /**
     * Sums {@code count} floats at {@code pointer} on a stream of its own once the compute stream's work queued so far (the
     * layer backward that finished them) has run, so the backward pass goes on meanwhile; {@link #awaitDeviceFloats} joins.
     */
    @Override
    public void startAllReduceDeviceFloats(long pointer, long count) {
        if (count == 0) {
            return;
        }
        ctx.makeCurrent();
        if (sumStream == null) {
            sumStream = ctx.driver.createStream();
            ready = ctx.driver.createEvent();
            summed = ctx.driver.createEvent();
        }
        ctx.driver.record(ready, ctx.stream);
        ctx.driver.streamWaitEvent(sumStream, ready);
        comm.allReduce(pointer, pointer, count, DataType.FLOAT32, RedOp.SUM, sumStream);
        started++;
    }

    /** Waits (with the watchdog) for the sums started since the last call; the compute stream's later work sees them. */
    @Override
    public void awaitDeviceFloats() {
        if (started == 0) {
            return;
        }
        ctx.makeCurrent();
        ctx.driver.record(summed, sumStream);
        ctx.driver.streamWaitEvent(ctx.stream, summed);
        comm.await(sumStream, timeout, "the gradient all-reduce overlapped with the backward (" + started + " parts)");
        started = 0;
    }

    /** Trainable parameters in the order the backward pass finishes them (last first), cut into buckets. */
    private void plan(List<Parameter> params) {
        order = new ArrayList<>();
        for (Parameter p : params) {
            if (p.trainable()) {
                order.add(p);
            }
        }
        java.util.Collections.reverse(order);
        buckets = GradientBuckets.plan(order.stream().mapToLong(Parameter::size).toArray(), FIRST_BUCKET, BUCKET);
        planned = params;
    }

    /**
     * The device-buffer collectives of expert parallelism over this world's communicator, on the context's stream, with the same
     * watchdog ({@code moe train --expert-parallel}).
     */
    public dev.moe.cuda.dist.DeviceExchange deviceExchange() {
        if (exchangeComm == null) {
            // A communicator of its own, so that the gradient sums may run on their stream beside the all-to-alls instead of
            // waiting for the end of the backward (two streams of collectives must not share one). Collective: every rank asks for
            // the exchange. Rank 0's new id reaches the others through the world's communicator (they add zeros).
            ctx.makeCurrent();
            Nccl nccl = Nccl.get();
            long[] id = rank() == 0 ? nccl.uniqueId().toLongs() : new long[UniqueId.BYTES];
            allReduceSum(id);
            exchangeComm = "1".equals(System.getenv("MOE_NCCL_BLOCKING_INIT")) ? nccl.initRank(size(), UniqueId.fromLongs(id), rank())
                    : nccl.initRank(size(), UniqueId.fromLongs(id), rank(), timeout);
        }
        return new NcclDeviceExchange(ctx, exchangeComm, timeout, true);
    }

    /** Tears the communicators down without waiting for the peers: after this rank failed. */
    public void abort() {
        if (exchangeComm != null) {
            exchangeComm.abort();
        }
        comm.abort();
    }

    @Override
    public void close() {
        if (exchangeComm != null) {
            exchangeComm.close();
        }
        comm.close();
    }
}
