package dev.moe.cuda;

import dev.moe.cuda.CublasLt.Type;
import dev.moe.cuda.kernels.LoraKernelSource;
import dev.moe.cuda.kernels.MoeKernelSource;
import dev.moe.cuda.kernels.MoeKernelSource.Precision;
import dev.moe.cuda.kernels.MoeKernelSource.Spec;
import java.lang.foreign.MemorySegment;
import java.util.ArrayList;
import java.util.List;

/**
 * One MoE layer of MoLA's LoRA experts on the GPU, forward and backward, as the CPU-generated class
 * computes it: a frozen base FFN runs for every token, and each routed slot adds its routing weight
 * times {@code scale · B_e A_e} (scale = alpha / rank) to each projection of the base, the
 * nonlinearity reading the mixed pre-activations:
 * <pre>
 *  gate[t] = x_t Wgᵀ + Σ_slots w · scale · B_g,e A_g,e x_t      (up likewise; ungated bases have up only)
 *  a[t]    = act(gate[t]) · up[t]                                (or act(up[t]))
 *  out[t]  = a_t Wdᵀ + Σ_slots w · scale · B_d,e A_d,e a_t
 * </pre>
 * The routing (router GEMM, top-k, counting sort of the slots by expert, the combine of the down
 * projection's updates and the router backward with the balancing losses) runs on the MoE layer's
 * own kernels ({@link MoeKernelSource}), the base projections as cuBLASLt GEMMs over all tokens, the
 * low-rank products as two small GEMMs per expert over its sorted rows, and the moves between token
 * rows and slot rows on {@link LoraKernelSource}'s kernels. The base still gets its gradients (the
 * CPU class computes them too); whether it trains is the optimiser's business (frozen parameters
 * are not trainable).
 *
 * <p>Everything is fp32, whatever the context's expert precision; the weights and gradients are a
 * model's parameter arena ({@link Weights}), and the backward ADDS to the gradients, so a model can
 * accumulate micro-batches. Every slot has a row: the spec must be dropless token choice without
 * top-p, zero, copy or constant experts.
 */
public final class CudaLoraMoeLayer implements AutoCloseable {
    private static final int THREADS = 256;

    public final Spec spec;
    public final int rank;
    /** alpha / rank, as a float (the CPU class's literal). */
    public final float scale;
    private final CudaContext ctx;
    private final String source;
    private final String loraSource;
    private final Weights weights;
    /** The base's gate then up columns per token: 2H for a gated base, H (up only) for an ungated one. */
    private final int gw;
    private final boolean gated;
    private final List<DeviceAllocator.Block> saved = new ArrayList<>();
    private final List<DeviceAllocator.Block> backwardBlocks = new ArrayList<>();
    private int tokens;
    private int[] offsets;
    private int[] routedCounts;
    private float temperature = 1f;
    /** The last forward's input and the activations it saved for the backward. */
    private long x, logits, probs, idx, weight, pos, xs, g, a, lat, lb, ah, y, out;

    /** One projection of the base (gate, up or down) and its experts' low-rank factors, with the gradients: device pointers, fp32. */
    public record Projection(long base, long dBase, long[] a, long[] dA, long[] b, long[] dB) {
        public Projection {
            if (a.length != dA.length || a.length != b.length || a.length != dB.length) {
                throw new IllegalArgumentException("one A and one B (and their gradients) per expert");
            }
            a = a.clone();
            dA = dA.clone();
            b = b.clone();
            dB = dB.clone();
        }
    }

    /**
     * The layer's weights in a caller's arena: the router {@code [E, D]} and its gradient, the selection bias {@code [E]}
     * (0 without one), and the projections: gate (null for an ungated base) and up, whose base is {@code [H, D]}, A {@code [rank, D]}
     * and B {@code [H, rank]} per expert, and down, whose base is {@code [D, H]}, A {@code [rank, H]} and B {@code [D, rank]}.
     */
    public record Weights(long router, long dRouter, long bias, Projection gate, Projection up, Projection down) {}

    public CudaLoraMoeLayer(CudaContext ctx, Spec spec, int rank, float scale, Weights weights) {
        MoeKernelSource.Options o = spec.options();
        if (spec.precision() != Precision.FP32 || spec.routed() != spec.experts() || o.capacityFactor() > 0 || o.topP() > 0 || o.expertChoice() > 0
                || o.gatingResidual()) {
            throw new IllegalArgumentException("LoRA experts on the GPU take fp32, dropless top-k routing over the LoRA experts alone: " + spec);
        }
        this.gated = o.activation().gated;
        if (rank <= 0 || (weights.gate() == null) == gated || weights.up() == null || weights.down() == null) {
            throw new IllegalArgumentException("a rank and the projections of a " + (gated ? "gated" : "ungated") + " base");
        }
        for (Projection p : gated ? List.of(weights.gate(), weights.up(), weights.down()) : List.of(weights.up(), weights.down())) {
            if (p.a().length != spec.experts()) {
                throw new IllegalArgumentException("one low-rank pair per expert: " + spec.experts() + ", not " + p.a().length);
            }
        }
        if (spec.bias() != (weights.bias() != 0)) {
            throw new IllegalArgumentException("the spec " + (spec.bias() ? "has" : "has no") + " selection bias; the weights do not agree");
        }
        this.ctx = ctx;
        this.spec = spec;
        this.rank = rank;
        this.scale = scale;
        this.weights = weights;
        this.gw = gated ? 2 * spec.hidden() : spec.hidden();
        this.source = MoeKernelSource.generate(spec);
        this.loraSource = LoraKernelSource.generate(spec.topK());
        // Compile (or load from the disk cache) before any timing starts.
        for (String k : List.of("router_topk", "rank_tile_counts", "rank_tile_scan", "rank_tile_ranks", "expert_offsets", "permute_gather", "expert_act", "combine", "combine_backward",
                "expert_act_backward", "router_backward")) {
            ctx.kernel(source, k);
        }
        if (spec.score() == MoeKernelSource.Score.SOFTMAX) {
            ctx.kernel(source, "router_balance_stats");
            ctx.kernel(source, "router_backward_balance");
        }
        for (String k : List.of("lora_add_updates", "lora_gather", "lora_scatter_add", "lora_updates_backward", "lora_scale")) {
            ctx.kernel(loraSource, k);
        }
    }

    /** The router's temperature from the next forward pass on (a layer whose spec has one). */
    public void setTemperature(float tau) {
        if (!spec.options().temperature()) {
            throw new IllegalStateException("this layer's router has no temperature");
        }
        temperature = tau;
    }

    /**
     * The row stride of the low-rank activations x·Aᵀ: the rank rounded up to 4 floats, so that every expert's first row is
     * 16-byte aligned for cuBLASLt (whose algorithms are chosen for aligned pointers) whatever the rank.
     */
    private int latentStride() {
        return (rank + 3) & ~3;
    }

    /** The projections in the order of the columns of lb and g: gate then up, or up alone. */
    private List<Projection> inputProjections() {
        return gated ? List.of(weights.gate(), weights.up()) : List.of(weights.up());
    }

    /**
     * The layer on an fp32 input {@code x [tokens, D]}, its output ADDED to the fp32 {@code target}. Saves what the backward
     * needs until the next forward.
     */
    public void forwardInto(long x, int tokens, long target) {
        release(saved);
        release(backwardBlocks);
        this.x = x;
        this.tokens = tokens;
        int e = spec.experts(), k = spec.topK(), d = spec.dim(), h = spec.hidden(), r = rank, rp = latentStride();
        int m = tokens * k;
        logits = keep(saved, (long) tokens * e * 4);
        probs = keep(saved, (long) tokens * e * 4);
        idx = keep(saved, (long) m * 4);
        weight = keep(saved, (long) m * 4);
        long rankOf = keep(saved, (long) m * 4);
        long counts = keep(saved, (long) e * 4);
        long offs = keep(saved, (long) (e + 1) * 4);
        pos = keep(saved, (long) m * 4);
        xs = keep(saved, (long) m * d * 4);
        g = keep(saved, (long) tokens * gw * 4);
        a = keep(saved, (long) tokens * h * 4);
        // per slot row: x·Aᵀ of each projection ([projection][M, rank], rows latentStride() apart), B·(x·Aᵀ) of gate and
        // up side by side ([M, GW]), the token's activation row, and the down projection's scaled update
        lat = keep(saved, (long) 3 * m * rp * 4);
        lb = keep(saved, (long) m * gw * 4);
        ah = keep(saved, (long) m * h * 4);
        y = keep(saved, (long) m * d * 4);
        out = keep(saved, (long) tokens * d * 4);

        // routing, as the MoE layer's: logits[T, E] = x · routerᵀ, top-k, each expert's rows in token order
        ctx.blas.matmul(ctx.stream, true, false, e, tokens, d, weights.router(), Type.F32, d, x, Type.F32, d, logits, Type.F32, e, false);
        launch(source, "router_topk", ceilDiv(tokens * 32, THREADS), THREADS, logits, weights.bias(), tokens, idx, weight, probs, temperature);
        CudaMoeLayer.rankRows(ctx, source, idx, 0L, m, e, keep(saved, CudaMoeLayer.rankScratchBytes(m, e)), rankOf, counts);
        launch(source, "expert_offsets", 1, 32, counts, offs);
        launch(source, "permute_gather", tokens, THREADS, x, idx, rankOf, offs, pos, xs);
        // The per-expert GEMMs need each expert's row range on the host: the one device-to-host sync per layer.
        routedCounts = ctx.downloadInts(counts, e);
        offsets = new int[e + 1];
        for (int ex = 0; ex < e; ex++) {
            offsets[ex + 1] = offsets[ex] + routedCounts[ex];
        }

        // the base's pre-activations for every token: g[T, GW] = [x · Wgᵀ | x · Wuᵀ]
        List<Projection> in = inputProjections();
        for (int q = 0; q < in.size(); q++) {
            ctx.blas.matmul(ctx.stream, true, false, h, tokens, d, in.get(q).base(), Type.F32, d, x, Type.F32, d, g + (long) q * h * 4, Type.F32, gw,
                    false);
        }
        // each expert's rows: lat_q = xs · A_qᵀ, lb[:, q] = lat_q · B_qᵀ
        for (int ex = 0; ex < e; ex++) {
            int r0 = offsets[ex], n = offsets[ex + 1] - r0;
            if (n == 0) {
                continue;
            }
            for (int q = 0; q < in.size(); q++) {
                Projection p = in.get(q);
                long latQ = lat + ((long) q * m + r0) * rp * 4;
                ctx.blas.matmul(ctx.stream, true, false, r, n, d, p.a()[ex], Type.F32, d, xs + (long) r0 * d * 4, Type.F32, d, latQ, Type.F32, rp,
                        false);
                ctx.blas.matmul(ctx.stream, true, false, h, n, r, p.b()[ex], Type.F32, r, latQ, Type.F32, rp,
                        lb + ((long) r0 * gw + (long) q * h) * 4, Type.F32, gw, false);
            }
        }
        launch(loraSource, "lora_add_updates", tokens, THREADS, g, lb, pos, weight, scale, gw);
        long n = (long) tokens * h;
        launch(source, "expert_act", elementwiseGrid(n), THREADS, g, a, n);

        // down: each slot's row of a, then y = scale · (ah · A_dᵀ) · B_dᵀ per expert
        launch(loraSource, "lora_gather", m, 128, a, pos, h, ah);
        Projection down = weights.down();
        for (int ex = 0; ex < e; ex++) {
            int r0 = offsets[ex], rows = offsets[ex + 1] - r0;
            if (rows == 0) {
                continue;
            }
            long latD = lat + ((long) 2 * m + r0) * rp * 4;
            ctx.blas.matmul(ctx.stream, true, false, r, rows, h, down.a()[ex], Type.F32, h, ah + (long) r0 * h * 4, Type.F32, h, latD, Type.F32, rp,
                    false);
            ctx.blas.matmul(ctx.stream, true, false, d, rows, r, down.b()[ex], Type.F32, r, latD, Type.F32, rp, y + (long) r0 * d * 4, Type.F32, d,
                    false);
        }
        long ny = (long) offsets[e] * d;
        launch(loraSource, "lora_scale", elementwiseGrid(ny), THREADS, y, scale, ny);
        // out = Σ weight · y over the token's slots, plus the base's a · Wdᵀ
        launch(source, "combine", tokens, THREADS, y, x, idx, pos, weight, out);
        ctx.blas.matmul(ctx.stream, true, false, d, tokens, h, down.base(), Type.F32, h, a, Type.F32, h, out, Type.F32, d, true);
        launch(source, "add_to_float", elementwiseGrid((long) tokens * d), THREADS, target, out, (long) tokens * d);
    }

    /**
     * Backward of {@link #forwardInto} for the fp32 output gradient {@code dOut}, with the balancing losses (softmax scores
     * only): {@code aux[e]} the aux loss's gradient with respect to every token's probability of expert e (null: none),
     * {@code zc} and {@code ent} the z-loss's and entropy loss's coefficients divided by the rows and times the loss scale
     * (0: none). The input gradient is ADDED to the fp32 {@code dIn}, the weight gradients to the arena's.
     */
    public void backwardInto(long dOut, float[] aux, float zc, float ent, long dIn) {
        if ((aux != null || zc != 0f || ent != 0f) && spec.score() != MoeKernelSource.Score.SOFTMAX) {
            throw new IllegalArgumentException("balancing losses on the GPU need softmax scores");
        }
        if (ent != 0f && !spec.options().entropy()) {
            throw new IllegalArgumentException("an entropy loss needs a spec with entropy");
        }
        release(backwardBlocks);
        int e = spec.experts(), k = spec.topK(), d = spec.dim(), h = spec.hidden(), r = rank, rp = latentStride();
        int m = tokens * k;
        long dy = keep(backwardBlocks, (long) m * d * 4);
        long dWeight = keep(backwardBlocks, (long) m * 4);
        long da = keep(backwardBlocks, (long) tokens * h * 4);
        long dg = keep(backwardBlocks, (long) tokens * gw * 4);
        long dLat = keep(backwardBlocks, (long) m * rp * 4);
        long dah = keep(backwardBlocks, (long) m * h * 4);
        long dlb = keep(backwardBlocks, (long) m * gw * 4);
        long dxs = keep(backwardBlocks, (long) m * d * 4);
        long dx = keep(backwardBlocks, (long) tokens * d * 4);
        long dLogits = keep(backwardBlocks, (long) tokens * e * 4);

        // combine: dy[pos] = weight · dOut[t], dWeight[slot] = dOut[t] · y[pos]; the base's down: da = dOut · Wd, dWd += dOutᵀ · a
        launch(source, "combine_backward", tokens, THREADS, dOut, y, x, idx, pos, weight, dy, dWeight);
        Projection down = weights.down();
        ctx.blas.matmul(ctx.stream, false, false, h, tokens, d, down.base(), Type.F32, h, dOut, Type.F32, d, da, Type.F32, h, false);
        ctx.blas.matmul(ctx.stream, false, true, h, d, tokens, a, Type.F32, h, dOut, Type.F32, d, down.dBase(), Type.F32, h, true);
        long ny = (long) offsets[e] * d;
        launch(loraSource, "lora_scale", elementwiseGrid(ny), THREADS, dy, scale, ny);
        for (int ex = 0; ex < e; ex++) {
            int r0 = offsets[ex], n = offsets[ex + 1] - r0;
            if (n == 0) {
                continue;
            }
            long latD = lat + ((long) 2 * m + r0) * rp * 4, dyE = dy + (long) r0 * d * 4, dLatE = dLat + (long) r0 * rp * 4;
            // dB_d += dyᵀ · latD;  dLat = dy · B_d;  dA_d += dLatᵀ · ah;  dah = dLat · A_d
            ctx.blas.matmul(ctx.stream, false, true, r, d, n, latD, Type.F32, rp, dyE, Type.F32, d, down.dB()[ex], Type.F32, r, true);
            ctx.blas.matmul(ctx.stream, false, false, r, n, d, down.b()[ex], Type.F32, r, dyE, Type.F32, d, dLatE, Type.F32, rp, false);
            ctx.blas.matmul(ctx.stream, false, true, h, r, n, ah + (long) r0 * h * 4, Type.F32, h, dLatE, Type.F32, rp, down.dA()[ex], Type.F32, h,
                    true);
            ctx.blas.matmul(ctx.stream, false, false, h, n, r, down.a()[ex], Type.F32, h, dLatE, Type.F32, rp, dah + (long) r0 * h * 4, Type.F32, h,
                    false);
        }
        // the slots' activation gradients join their tokens' (the routing weight is already in dy), then through the activation
        launch(loraSource, "lora_scatter_add", tokens, THREADS, dah, pos, h, da);
        long n = (long) tokens * h;
        launch(source, "expert_act_backward", elementwiseGrid(n), THREADS, g, da, dg, n);

        // the base's gate and up: dx = Σ_q dg_q · W_q, dW_q += dg_qᵀ · x
        List<Projection> in = inputProjections();
        for (int q = 0; q < in.size(); q++) {
            Projection p = in.get(q);
            long dgQ = dg + (long) q * h * 4;
            ctx.blas.matmul(ctx.stream, false, false, d, tokens, h, p.base(), Type.F32, d, dgQ, Type.F32, gw, dx, Type.F32, d, q > 0);
            ctx.blas.matmul(ctx.stream, false, true, d, h, tokens, x, Type.F32, d, dgQ, Type.F32, gw, p.dBase(), Type.F32, d, true);
        }
        // the updates of gate and up: dlb = weight · scale · dg[t], dWeight += scale · dg[t] · lb
        launch(loraSource, "lora_updates_backward", m, THREADS, dg, lb, pos, weight, scale, gw, dlb, dWeight);
        for (int ex = 0; ex < e; ex++) {
            int r0 = offsets[ex], rows = offsets[ex + 1] - r0;
            if (rows == 0) {
                continue;
            }
            long xsE = xs + (long) r0 * d * 4, dxsE = dxs + (long) r0 * d * 4, dLatE = dLat + (long) r0 * rp * 4;
            for (int q = 0; q < in.size(); q++) {
                Projection p = in.get(q);
                long latQ = lat + ((long) q * m + r0) * rp * 4, dlbQ = dlb + ((long) r0 * gw + (long) q * h) * 4;
                // dB_q += dlbᵀ · lat_q;  dLat = dlb · B_q;  dA_q += dLatᵀ · xs;  dxs (+)= dLat · A_q
                ctx.blas.matmul(ctx.stream, false, true, r, h, rows, latQ, Type.F32, rp, dlbQ, Type.F32, gw, p.dB()[ex], Type.F32, r, true);
                ctx.blas.matmul(ctx.stream, false, false, r, rows, h, p.b()[ex], Type.F32, r, dlbQ, Type.F32, gw, dLatE, Type.F32, rp, false);
                ctx.blas.matmul(ctx.stream, false, true, d, r, rows, xsE, Type.F32, d, dLatE, Type.F32, rp, p.dA()[ex], Type.F32, d, true);
                ctx.blas.matmul(ctx.stream, false, false, d, rows, r, p.a()[ex], Type.F32, d, dLatE, Type.F32, rp, dxsE, Type.F32, d, q > 0);
            }
        }
        launch(loraSource, "lora_scatter_add", tokens, THREADS, dxs, pos, d, dx);

        // the router, with the balancing losses: dx += dLogits · router, dRouter += dLogitsᵀ · x
        if (aux == null && zc == 0f && ent == 0f) {
            launch(source, "router_backward", ceilDiv(tokens * 32, THREADS), THREADS, probs, logits, idx, dWeight, tokens, temperature, dLogits);
        } else {
            long auxDevice = keep(backwardBlocks, (long) e * 4);
            ctx.upload(aux == null ? new float[e] : aux, auxDevice);
            launch(source, "router_backward_balance", ceilDiv(tokens * 32, THREADS), THREADS, probs, logits, idx, dWeight, tokens, auxDevice, tokens, zc,
                    ent, temperature, dLogits);
        }
        ctx.blas.matmul(ctx.stream, false, false, d, tokens, e, weights.router(), Type.F32, d, dLogits, Type.F32, e, dx, Type.F32, d, true);
        ctx.blas.matmul(ctx.stream, false, true, d, e, tokens, x, Type.F32, d, dLogits, Type.F32, e, weights.dRouter(), Type.F32, d, true);
        launch(source, "add_to_float", elementwiseGrid((long) tokens * d), THREADS, dIn, dx, (long) tokens * d);
    }

    /**
     * The values the balancing losses need from the last forward pass (softmax scores): each expert's probability summed over
     * tokens ({@code [E]}), then Σ_t logsumexp(logits_t)² and Σ_t of the probabilities' entropy. Waits for the GPU.
     */
    public float[] balanceStats() {
        int e = spec.experts();
        try (DeviceAllocator.Block stats = ctx.allocator.allocate((long) (e + 2) * 4)) {
            ctx.driver.memsetZero(stats.pointer, (long) (e + 2) * 4, ctx.stream);
            launch(source, "router_balance_stats", ceilDiv(tokens * 32, THREADS), THREADS, logits, probs, tokens, temperature, stats.pointer);
            return ctx.downloadFloats(stats.pointer, e + 2);
        }
    }

    /** The experts each token chose in the last forward pass, {@code [tokens, k]}. Waits for the GPU. */
    public int[] lastSelection() {
        return ctx.downloadInts(idx, tokens * spec.topK());
    }

    /** Each slot's row in the sorted expert rows of the last forward, {@code [tokens, k]} (every slot has one). Waits for the GPU. */
    public int[] lastPositions() {
        return ctx.downloadInts(pos, tokens * spec.topK());
    }

    /** Slots per expert in the last forward pass. */
    public int[] lastCounts() {
        return routedCounts.clone();
    }

    private long keep(List<DeviceAllocator.Block> list, long bytes) {
        return ctx.allocator.allocateInto(list, bytes);
    }

    private void launch(String src, String kernel, int grid, int block, Object... args) {
        MemorySegment fn = ctx.kernel(src, kernel);
        ctx.launch(fn, kernel, grid, 1, block, 0, args);
    }

    private int elementwiseGrid(long n) {
        return (int) Math.max(1, Math.min(ceilDiv(n, THREADS), (long) ctx.multiprocessors * 16));
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
