package dev.moe.cuda.dist;

import dev.moe.cuda.Bf16;
import dev.moe.cuda.CublasLt.Type;
import dev.moe.cuda.CudaContext;
import dev.moe.cuda.DeviceAllocator;
import dev.moe.cuda.ExpertGemms;
import dev.moe.cuda.ExpertStage;
import dev.moe.cuda.kernels.MoeKernelSource.Precision;
import dev.moe.cuda.kernels.MoeKernelSource.Spec;
import java.util.ArrayList;
import java.util.List;

/**
 * One rank's experts of an expert-parallel MoE layer on the GPU: the {@link ExpertStage} of a
 * {@link dev.moe.cuda.CudaMoeLayer#withExpertStage layer} that routes this rank's tokens. The layer's rows, sorted by global
 * expert, go to the ranks that hold their experts ({@link SortedDispatch}: counts first, then the rows by an all-to-all); this
 * rank runs its experts on the rows it received, reordered expert-major, and the outputs go back into the layer's y. The backward
 * sends the output gradients the same way and brings the input gradients back; the experts' weight gradients stay on their rank
 * (they are the sum over every rank's tokens). The router is replicated: its gradient on each rank is that rank's tokens' share,
 * and summing it over the ranks (as data parallelism does for every replicated weight) is the caller's job
 * ({@link DeviceExchange#allReduceSum} does it).
 *
 * <p>Weights are this rank's experts' slices, in local order, in the layer's layout: {@code w13 [L, GW, DIN]},
 * {@code w2 [L, D, F]}; gradients fp32 or, with {@code gradsInActivationType}, the activation type. Backward overwrites them.
 * A stage {@link #onArena on a model's arena} owns no weights: it reads its experts' slices of buffers that hold every expert and
 * ADDS to the fp32 gradients' slices (a model accumulating micro-batches), leaving the other experts' gradients alone.
 *
 * <p>Any placement: when its ranks do not hold contiguous ranges in rank order, the layer sorts its rows by slot
 * ({@link ExpertOrder}, this stage's {@link #rowOrder}) so that each rank's rows are still one slice of h, and the dispatch runs
 * on the renumbered placement; this rank's local experts are its experts ascending (in slot order too), each read and written at
 * its own expert's place.
 */
public final class ExpertParallelStage implements ExpertStage {
    private final CudaContext ctx;
    private final Spec spec;
    private final DeviceExchange exchange;
    private final ExpertPlacement placement;
    /** The slots (the identity for a placement contiguous in rank order); the dispatch runs on the renumbered placement. */
    private final ExpertOrder order;
    private final SortedDispatch dispatch;
    private final ExpertGemms gemms;
    private final Type act, gradType;
    private final int actBytes, local, gw;
    /** The weight blocks this stage allocated itself (null on an arena). */
    private final DeviceAllocator.Block w13Block, w2Block, dW13Block, dW2Block;
    /** Each local expert's weights and gradients. */
    private final long[] w13, w2, dW13, dW2;
    /** Whether backward adds to the weight gradients (on an arena) or overwrites them. */
    private final boolean accumulate;
    private final List<DeviceAllocator.Block> saved = new ArrayList<>();
    private final List<DeviceAllocator.Block> backwardBlocks = new ArrayList<>();
    // the last forward's dispatch, for the backward
    private int[] sendRows, recvRows, offsets;
    private List<SortedDispatch.Chunk> chunks;
    private long hE, gE, aE;
    private int rows;

    public ExpertParallelStage(CudaContext ctx, Spec spec, ExpertPlacement placement, DeviceExchange exchange, boolean gradsInActivationType) {
        this(ctx, spec, placement, exchange, gradsInActivationType, null);
    }

    /**
     * A stage whose experts are this rank's slices ({@link ArenaSlices}) of {@code every}'s buffers, which hold all the layer's
     * experts: weights in the activation type (a layer's {@link dev.moe.cuda.CudaMoeLayer#expertWeights}), gradients fp32 and
     * added to. Every rank may hold every expert there (each rank's arena, as in data parallelism): this rank reads and writes
     * its own experts' slices only, so the others' gradients stay as they were (zero after the step's start).
     */
    public static ExpertParallelStage onArena(CudaContext ctx, Spec spec, ExpertPlacement placement, DeviceExchange exchange,
            dev.moe.cuda.CudaMoeLayer.ExpertWeights every) {
        return new ExpertParallelStage(ctx, spec, placement, exchange, false, every);
    }

    private ExpertParallelStage(CudaContext ctx, Spec spec, ExpertPlacement placement, DeviceExchange exchange, boolean gradsInActivationType,
            dev.moe.cuda.CudaMoeLayer.ExpertWeights every) {
        if (placement.ranks() != exchange.size() || placement.experts() != spec.experts()) {
            throw new IllegalArgumentException("a placement of " + placement.experts() + " experts on " + placement.ranks() + " ranks for a layer of "
                    + spec.experts() + " FFN experts on " + exchange.size() + " ranks");
        }
        this.ctx = ctx;
        this.spec = spec;
        this.exchange = exchange;
        this.placement = placement;
        this.order = ExpertOrder.of(placement);
        this.dispatch = new SortedDispatch(order.renumbered());
        this.act = spec.precision() == Precision.BF16 ? Type.BF16 : Type.F32;
        this.gradType = gradsInActivationType ? act : Type.F32;
        this.actBytes = act.bytes;
        this.gemms = new ExpertGemms(ctx, spec, gradType);
        this.gw = gemms.gateUpRows();
        this.local = placement.localExperts(exchange.rank());
        long l = local, in = spec.expertIn(), d = spec.dim(), f = spec.hidden();
        if (every == null) {
            w13Block = ctx.allocator.allocate(l * gw * in * actBytes);
            w2Block = ctx.allocator.allocate(l * d * f * actBytes);
            dW13Block = ctx.allocator.allocate(l * gw * in * gradType.bytes);
            dW2Block = ctx.allocator.allocate(l * d * f * gradType.bytes);
            w13 = ExpertGemms.strided(w13Block.pointer, local, gw * in * actBytes);
            w2 = ExpertGemms.strided(w2Block.pointer, local, d * f * actBytes);
            dW13 = ExpertGemms.strided(dW13Block.pointer, local, gw * in * gradType.bytes);
            dW2 = ExpertGemms.strided(dW2Block.pointer, local, d * f * gradType.bytes);
            accumulate = false;
        } else {
            // each local expert at its own expert's place: one slice per rank for a contiguous placement, scattered otherwise
            ArenaSlices.Experts s = ArenaSlices.ofExperts(placement, exchange.rank(), gw, spec.expertIn(), spec.dim(), spec.hidden(), actBytes,
                    gradType.bytes);
            w13Block = w2Block = dW13Block = dW2Block = null;
            w13 = shifted(every.w13(), s.w13());
            w2 = shifted(every.w2(), s.w2());
            dW13 = shifted(every.dW13(), s.dW13());
            dW2 = shifted(every.dW2(), s.dW2());
            accumulate = true;
        }
    }

    private static long[] shifted(long base, long[] offsets) {
        long[] out = new long[offsets.length];
        for (int i = 0; i < out.length; i++) {
            out[i] = base + offsets[i];
        }
        return out;
    }

    @Override
    public int[] rowOrder() {
        return order.identity() ? null : order.order();
    }

    @Override
    public int[] weightsRead() {
        return placement.expertsOf(exchange.rank()).clone();
    }

    /** The slots this stage's layer sorts its rows by (the identity for a placement contiguous in rank order). */
    public ExpertOrder expertOrder() {
        return order;
    }

    /** The experts this rank holds. */
    public int localExperts() {
        return local;
    }

    /** Uploads this rank's slices of every expert's weights ({@code [E, GW, DIN]}, {@code [E, D, F]}, fp32; rounded to bf16 in bf16). */
    public void setWeights(float[] gateUpAll, float[] downAll) {
        if (w13Block == null) {
            throw new IllegalStateException("a stage on an arena reads its weights there");
        }
        int me = exchange.rank();
        upload(ExpertShards.local(gateUpAll, gw * spec.expertIn(), placement, me), w13Block.pointer);
        upload(ExpertShards.local(downAll, spec.dim() * spec.hidden(), placement, me), w2Block.pointer);
    }

    private void upload(float[] values, long device) {
        if (values.length == 0) {
            return;
        }
        if (act == Type.F32) {
            ctx.upload(values, device);
        } else {
            ctx.upload(Bf16.fromFloats(values), device);
        }
    }

    private float[] downloadGrad(long[] experts, int perExpert) {
        float[] out = new float[experts.length * perExpert];
        for (int l = 0; l < experts.length; l++) {
            System.arraycopy(downloadGrad(experts[l], perExpert), 0, out, l * perExpert, perExpert);
        }
        return out;
    }

    private float[] downloadGrad(long device, int n) {
        if (n == 0) {
            return new float[0];
        }
        return gradType == Type.F32 ? ctx.downloadFloats(device, n) : Bf16.toFloats(ctx.downloadShorts(device, n));
    }

    /** This rank's experts' gate/up gradients {@code [L, GW, DIN]} after the last backward. */
    public float[] gateUpGrad() {
        return downloadGrad(dW13, gw * spec.expertIn());
    }

    /** This rank's experts' down gradients {@code [L, D, F]} after the last backward. */
    public float[] downGrad() {
        return downloadGrad(dW2, spec.dim() * spec.hidden());
    }

    /** Rows this rank's experts got in the last forward, from all ranks. */
    public int lastReceivedRows() {
        return rows;
    }

    @Override
    public void forward(long h, int[] counts, long y) {
        forward(h, counts, y, () -> {});
    }

    /** Sends h's rows, queues {@code beside} while they travel (the shared experts), then runs this rank's experts and sends back. */
    @Override
    public void forward(long h, int[] counts, long y, Runnable beside) {
        release(saved);
        release(backwardBlocks);
        int me = exchange.rank();
        int in = spec.expertIn(), d = spec.dim(), f = spec.hidden();
        sendRows = dispatch.sendCounts(counts);
        ReceiveLayout layout = dispatch.receiveLayout(exchange.allToAll(dispatch.countsMessage(counts), dispatch.countsBlock()), me);
        recvRows = layout.recvCounts();
        chunks = SortedDispatch.chunks(layout);
        offsets = SortedDispatch.expertOffsets(layout);
        rows = layout.rows();
        long n = rows;
        long hRecv = keep(saved, n * in * actBytes);
        hE = keep(saved, n * in * actBytes);
        gE = keep(saved, n * gw * actBytes);
        aE = keep(saved, n * f * actBytes);
        long yE = keep(saved, n * d * actBytes);
        long yRecv = keep(saved, n * d * actBytes);
        // h's rows for each rank are one slice of it, in rank order: h is the send buffer as it is
        exchange.startAllToAllV(h, sendRows, hRecv, recvRows, in * actBytes);
        beside.run();
        exchange.awaitAllToAllV();
        reorder(hRecv, hE, in * actBytes, true);
        gemms.forward(offsets, w13, w2, hE, gE, aE, yE, phase -> {});
        reorder(yRecv, yE, d * actBytes, false);
        exchange.allToAllV(yRecv, recvRows, y, sendRows, d * actBytes);
    }

    @Override
    public void backward(long dy, long dh) {
        backward(dy, dh, () -> {});
    }

    /** Sends dy's rows, queues {@code beside} while they travel (the shared experts' backward), then the experts' backward. */
    @Override
    public void backward(long dy, long dh, Runnable beside) {
        if (offsets == null) {
            throw new IllegalStateException("backward before any forward");
        }
        release(backwardBlocks);
        int in = spec.expertIn(), d = spec.dim(), f = spec.hidden();
        long n = rows;
        long dyRecv = keep(backwardBlocks, n * d * actBytes);
        long dyE = keep(backwardBlocks, n * d * actBytes);
        long da = keep(backwardBlocks, n * f * actBytes);
        long dg = keep(backwardBlocks, n * gw * actBytes);
        long dhE = keep(backwardBlocks, n * in * actBytes);
        long dhRecv = keep(backwardBlocks, n * in * actBytes);
        exchange.startAllToAllV(dy, sendRows, dyRecv, recvRows, d * actBytes);
        beside.run();
        exchange.awaitAllToAllV();
        reorder(dyRecv, dyE, d * actBytes, true);
        gemms.backward(offsets, w13, w2, dW13, dW2, accumulate, hE, gE, aE, dyE, da, dg, dhE);
        reorder(dhRecv, dhE, in * actBytes, false);
        exchange.allToAllV(dhRecv, recvRows, dh, sendRows, in * actBytes);
    }

    /** Copies each chunk between the rank-major and the expert-major buffer, in the direction {@code toExpertMajor} says. */
    private void reorder(long rankMajor, long expertMajor, long rowBytes, boolean toExpertMajor) {
        for (SortedDispatch.Chunk c : chunks) {
            long from = rankMajor + c.from() * rowBytes, to = expertMajor + c.to() * rowBytes;
            if (toExpertMajor) {
                ctx.driver.copyOnDevice(to, from, c.rows() * rowBytes, ctx.stream);
            } else {
                ctx.driver.copyOnDevice(from, to, c.rows() * rowBytes, ctx.stream);
            }
        }
    }

    private long keep(List<DeviceAllocator.Block> list, long bytes) {
        DeviceAllocator.Block b = ctx.allocator.allocate(bytes);
        list.add(b);
        return b.pointer;
    }

    private static void release(List<DeviceAllocator.Block> blocks) {
        for (DeviceAllocator.Block b : blocks) {
            b.close();
        }
        blocks.clear();
    }

    @Override
    public void close() {
        release(saved);
        release(backwardBlocks);
        for (DeviceAllocator.Block b : new DeviceAllocator.Block[] {w13Block, w2Block, dW13Block, dW2Block}) {
            if (b != null) {
                b.close();
            }
        }
    }
}
