package dev.moe.cuda;

import dev.moe.cuda.CublasLt.Type;
import dev.moe.cuda.kernels.MoeKernelSource;
import dev.moe.cuda.kernels.MoeKernelSource.Precision;
import dev.moe.cuda.kernels.MoeKernelSource.Spec;
import java.lang.foreign.MemorySegment;
import java.util.ArrayList;
import java.util.List;

/**
 * The router of a mixture of attention experts (JetMoE's MoA, BAM's soft mixture) on the GPU: the MoE layer's own router
 * kernels ({@link MoeKernelSource}: router GEMM, top-k or, with k = E, every expert, the counts per expert, the router backward
 * with the balancing losses), without expert FFNs. The caller runs the attention experts and combines their outputs by
 * {@link #route}'s dense gate rows, {@code gates [tokens, E]} (0 where a token did not choose an expert), and hands back the
 * gates' gradient to {@link #backwardInto}. The spec's hidden width is unused (no FFN kernel runs).
 *
 * <p>fp32 whatever the context's expert precision; the router weights and gradient are a model's parameter arena, and the
 * backward ADDS to the gradient, so a model can accumulate micro-batches. Dropless token choice only: no capacity factor,
 * expert choice, selection bias, gating residual or extra logits.
 */
public final class CudaAttentionRouter implements AutoCloseable {
    private static final int THREADS = 256;

    public final Spec spec;
    private final CudaContext ctx;
    private final DeviceOps ops;
    private final String source;
    /** fp32 {@code [E, D]} router weights and their gradient (device). */
    private final long router, dRouter;
    private final List<DeviceAllocator.Block> saved = new ArrayList<>();
    private final List<DeviceAllocator.Block> backwardBlocks = new ArrayList<>();
    private int tokens;
    private int[] routedCounts;
    private long x, logits, probs, idx, weight;

    public CudaAttentionRouter(CudaContext ctx, Spec spec, long router, long dRouter) {
        MoeKernelSource.Options o = spec.options();
        if (spec.precision() != Precision.FP32 || spec.routed() != spec.experts() || spec.bias() || o.capacityFactor() > 0 || o.expertChoice() > 0
                || o.gatingResidual() || o.extraLogits() || o.temperature()) {
            throw new IllegalArgumentException("attention experts' routers on the GPU take fp32, dropless token choice without a selection bias, "
                    + "gating residual, extra logits or temperature: " + spec);
        }
        this.ctx = ctx;
        this.spec = spec;
        this.ops = new DeviceOps(ctx);
        this.source = MoeKernelSource.generate(spec);
        this.router = router;
        this.dRouter = dRouter;
        // Compile (or load from the disk cache) before any timing starts.
        for (String k : List.of("router_topk", "rank_tile_counts", "rank_tile_scan", "rank_tile_ranks", "router_backward")) {
            ctx.kernel(source, k);
        }
        if (spec.score() == MoeKernelSource.Score.SOFTMAX) {
            ctx.kernel(source, "router_balance_stats");
            ctx.kernel(source, "router_backward_balance");
        }
    }

    /**
     * Routes the fp32 input {@code x [tokens, D]}: the router's slots (kept until the next call, for the backward) and each token's
     * weights as the dense row {@code gates [tokens, E]} (fp32, overwritten). Counts each expert's slots ({@link #lastCounts}): waits
     * for the GPU.
     */
    public void route(long x, int tokens, long gates) {
        release(saved);
        release(backwardBlocks);
        this.x = x;
        this.tokens = tokens;
        int e = spec.experts(), k = spec.topK(), d = spec.dim();
        int m = tokens * k;
        logits = keep(saved, (long) tokens * e * 4);
        probs = keep(saved, (long) tokens * e * 4);
        idx = keep(saved, (long) m * 4);
        weight = keep(saved, (long) m * 4);
        long rank = keep(saved, (long) m * 4);
        long counts = keep(saved, (long) e * 4);
        // logits[T, E] = x · routerᵀ, then the MoE layer's top-k (softmax or sigmoid scores, normalisation, scaling)
        ctx.blas.matmul(ctx.stream, true, false, e, tokens, d, router, Type.F32, d, x, Type.F32, d, logits, Type.F32, e, false);
        launch("router_topk", ceilDiv((long) tokens * 32, THREADS), THREADS, logits, 0L, tokens, idx, weight, probs, 1f);
        // the slots per expert, as the MoE layer counts them (the loads and the aux loss's f)
        CudaMoeLayer.rankRows(ctx, source, idx, 0L, m, e, keep(saved, CudaMoeLayer.rankScratchBytes(m, e)), rank, counts);
        routedCounts = ctx.downloadInts(counts, e);
        ops.moaGates(idx, weight, tokens, k, e, gates);
    }

    /**
     * Backward of {@link #route} for the gates' gradient {@code dGates [tokens, E]} (fp32; only the chosen experts' entries are
     * read), with the balancing losses (softmax scores only): {@code aux[e]} the aux loss's gradient with respect to every token's
     * probability of expert e (null: none), {@code zc} and {@code ent} the z-loss's and the entropy loss's coefficients divided by
     * the rows and times the loss scale (0: none). The input gradient is ADDED to the fp32 {@code dIn}, the router's to the arena's.
     */
    public void backwardInto(long dGates, float[] aux, float zc, float ent, long dIn) {
        if ((aux != null || zc != 0f || ent != 0f) && spec.score() != MoeKernelSource.Score.SOFTMAX) {
            throw new IllegalArgumentException("balancing losses on the GPU need softmax scores");
        }
        if (ent != 0f && !spec.options().entropy()) {
            throw new IllegalArgumentException("an entropy loss needs a spec with entropy");
        }
        release(backwardBlocks);
        int e = spec.experts(), k = spec.topK(), d = spec.dim();
        long dWeight = keep(backwardBlocks, (long) tokens * k * 4);
        long dLogits = keep(backwardBlocks, (long) tokens * e * 4);
        ops.moaSlotGrads(dGates, idx, tokens, k, e, dWeight);
        if (aux == null && zc == 0f && ent == 0f) {
            launch("router_backward", ceilDiv((long) tokens * 32, THREADS), THREADS, probs, logits, idx, dWeight, tokens, 1f, dLogits);
        } else {
            long auxDevice = keep(backwardBlocks, (long) e * 4);
            ctx.upload(aux == null ? new float[e] : aux, auxDevice);
            // one aux row for the whole batch (auxSeq = tokens): the mixer's aux loss is micro- or global-batch
            launch("router_backward_balance", ceilDiv((long) tokens * 32, THREADS), THREADS, probs, logits, idx, dWeight, tokens, auxDevice,
                    tokens, zc, ent, 1f, dLogits);
        }
        // dIn += dLogits · router;  dRouter += dLogitsᵀ · x
        ctx.blas.matmul(ctx.stream, false, false, d, tokens, e, router, Type.F32, d, dLogits, Type.F32, e, dIn, Type.F32, d, true);
        ctx.blas.matmul(ctx.stream, false, true, d, e, tokens, x, Type.F32, d, dLogits, Type.F32, e, dRouter, Type.F32, d, true);
    }

    /**
     * The values the balancing losses need from the last {@link #route} (softmax scores): each expert's probability summed over
     * tokens ({@code [E]}), then Σ_t logsumexp(logits_t)² and Σ_t of the probabilities' entropy. Waits for the GPU.
     */
    public float[] balanceStats() {
        int e = spec.experts();
        try (DeviceAllocator.Block stats = ctx.allocator.allocate((long) (e + 2) * 4)) {
            ctx.driver.memsetZero(stats.pointer, (long) (e + 2) * 4, ctx.stream);
            launch("router_balance_stats", ceilDiv((long) tokens * 32, THREADS), THREADS, logits, probs, tokens, 1f, stats.pointer);
            return ctx.downloadFloats(stats.pointer, e + 2);
        }
    }

    /** The experts each token chose in the last {@link #route}, {@code [tokens, k]}. Waits for the GPU. */
    public int[] lastSelection() {
        return ctx.downloadInts(idx, tokens * spec.topK());
    }

    /** Slots per expert in the last {@link #route}. */
    public int[] lastCounts() {
        return routedCounts.clone();
    }

    private long keep(List<DeviceAllocator.Block> list, long bytes) {
        return ctx.allocator.allocateInto(list, bytes);
    }

    private void launch(String kernel, int grid, int block, Object... args) {
        MemorySegment fn = ctx.kernel(source, kernel);
        ctx.launch(fn, kernel, grid, 1, block, 0, args);
    }

    private static int ceilDiv(long a, long b) {
        return CudaMoeLayer.ceilDiv(a, b);
    }

    private static void release(List<DeviceAllocator.Block> blocks) {
        CudaMoeLayer.release(blocks);
    }

    @Override
    public void close() {
        release(saved);
        release(backwardBlocks);
    }
}
