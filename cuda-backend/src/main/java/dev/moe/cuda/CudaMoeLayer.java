package dev.moe.cuda;

import dev.moe.cuda.CublasLt.Type;
import dev.moe.cuda.kernels.MoeKernelSource;
import dev.moe.cuda.kernels.MoeKernelSource.Precision;
import dev.moe.cuda.kernels.MoeKernelSource.Spec;
import java.lang.foreign.MemorySegment;
import java.util.ArrayList;
import java.util.List;

/**
 * One MoE layer on the GPU, forward and backward: the router and the permutation run as kernels
 * generated for the layer's declaration ({@link MoeKernelSource}), the expert FFNs as cuBLASLt GEMMs
 * over each expert's contiguous rows (tokens sorted by expert). The experts are SwiGLU or GEGLU
 * (gated) or ReLU or GELU (ungated), as the spec's options say; with a capacity factor, training
 * forwards ({@link #setTraining}) drop the slots over each expert's capacity, by position or by
 * routing weight, as the CPU class does; otherwise the layer is dropless.
 *
 * <p>Weights use the CPU backend's layout: router {@code [E, D]}, gate and up projections packed
 * as {@code w13 [E, 2F, D]} (gate rows first; {@code [E, F, D]} of up rows for ungated experts),
 * down projection {@code w2 [E, D, F]}. MoLE's latent experts read another input than the router's,
 * {@code spec.expertIn()} wide (the latent rank; {@code w13 [E, 2F, expertIn]}): the layer then takes
 * the router's input apart ({@link #forward(long, long, int)}) and its backward gives the two input
 * gradients apart too. Weights and
 * activations are stored in the spec's precision (bf16, or fp32 for parity runs); gradients of
 * the weights are fp32 (the master copy's type) or, with {@code gradsInActivationType}, the
 * activation type, as PyTorch does for bf16 parameters.
 *
 * <p>MoE++: zero, copy and constant experts follow the FFN experts in the router's rows and are folded
 * into the combine; constant experts' weights ({@link #setConstantExperts}, {@link #setConstantWeights})
 * and their gradients are fp32 in both precisions, summed over tokens in a fixed order. A gating residual
 * ({@link #setResidualFrom}) adds the previous layer's fp32 logits through a map to this router's and
 * sends the logit gradient back to that layer. Extra logits ({@link #setExtraLogits}: RMoE's recurrent
 * router, whose GRU the caller runs) join the router's, and the backward hands their fp32 gradient back
 * ({@link #lastLogitGradient}).
 */
public final class CudaMoeLayer implements AutoCloseable {
    private static final int THREADS = 256;
    /** Rows per block of the rank kernels (RANK_TILE in the kernel source). */
    private static final int RANK_TILE = 256;

    public final Spec spec;
    private final CudaContext ctx;
    private final String source;
    private final Type act;
    private final Type gradType;
    private final int actBytes;
    /** The rows of w13 per expert: 2F for gated experts (gate, then up), F for ungated ones (up only). */
    private final int gw;
    /** The seed of the next training forward's random drop priorities (a capacity factor dropping at random). */
    private long dropSeed;
    /** Whether forwards drop slots over capacity (training); inference forwards are dropless. */
    private boolean training = true;
    /** The weight blocks this layer allocated itself (null when it works on external weights). */
    private final DeviceAllocator.Block routerBlock, biasBlock, w13Block, w2Block, dRouterBlock, dW13Block, dW2Block;
    /**
     * In bf16 on external weights, the experts' bf16 copies on reserved addresses where the GPU supports it, so that an
     * expert-parallel rank can give back the copies of other ranks' experts ({@link #keepExpertCopiesOnly}); else null.
     */
    private ReservedMemory w13Copies, w2Copies;
    private final long router, bias, w13, w2, dRouter, dW13, dW2;
    /** Whether backward adds to the weight gradients (a model accumulating micro-batches) or overwrites them. */
    private final boolean accumulateGrads;
    /** The fp32 master weights the bf16 copies are refreshed from (bf16 on external weights only). */
    private final ExternalWeights master;
    /** fp32 boundary buffers in the activation type: the input, and the output gradient. */
    private DeviceAllocator.Block inAct, dOutAct;
    private final List<DeviceAllocator.Block> saved = new ArrayList<>();
    private final List<DeviceAllocator.Block> backwardBlocks = new ArrayList<>();
    private int tokens;
    private int[] offsets;
    /** Slots per routed expert in the last forward pass. */
    private int[] routedCounts;
    /** Page-locked host copy of the counts, and the event that says the copy has landed. */
    private MemorySegment countsHost;
    private MemorySegment countsCopied;
    /** When profiling, an event recorded after each phase of the forward pass. */
    private final List<String> phaseNames = new ArrayList<>();
    private final List<MemorySegment> phaseEvents = new ArrayList<>();
    private final List<Long> phaseHostNanos = new ArrayList<>();
    /** The phases marked since the last forward's "start", in order (a forward without a backward leaves the backward's events stale). */
    private final List<Integer> markedThisPass = new ArrayList<>();
    /** The routing's graph ({@link #route}), or null with graphs off (the default, {@link LaunchGraph#enabled}). */
    private final LaunchGraph graph;
    private boolean profiling;
    private long x, logits, probs, idx, weight, pos, h, g, a, y, out;
    /** What the router read in the last forward pass: x, or (pre-gating) another input. */
    private long routerX;
    /** The router's own input in the activation type, when it is not x (bf16 pre-gating). */
    private DeviceAllocator.Block routerInAct;
    /** The gradient of the router's own input after a pre-gating backward (activation type). */
    private long dRouterX;
    /** The router's temperature for the next forward pass (a spec with a temperature only). */
    private float temperature = 1f;
    private boolean dropping;
    /** Tokens per sequence (expert choice, named gates). */
    private int sequenceLength;
    /** Several named gates: each gate's fp32 router weights and gradients, their copies in the activation type, and each sequence's gate. */
    private long[] gateRouters, gateGrads, gateActs;
    private final List<DeviceAllocator.Block> gateBlocks = new ArrayList<>();
    private int[] gateOfSequence;
    /**
     * MoE++ constant experts (fp32 whatever the precision): vectors {@code v [C, D]}, mix weights {@code W_c [C, 2, D]} and their
     * gradients; the blocks when this layer allocated them itself.
     */
    private long cv, wc, dCv, dWc;
    private DeviceAllocator.Block cvBlock, wcBlock, dCvBlock, dWcBlock;
    /** The last forward's [a1, a2] per slot (constant experts' slots only), fp32 {@code [tokens · k, 2]}. */
    private long mix;
    /** MoE++ gating residual: the previous MoE layer whose logits this router adds through {@code residualG [routed, previous.routed]}. */
    private CudaMoeLayer residualFrom;
    private long residualG, residualDG;
    /** Whether the next MoE layer's gating residual reads this layer's logits (and sends their gradient back into {@link #dLogitsIn}). */
    private boolean feedsResidual;
    /** fp32 {@code [tokens, routed]}: the logit gradient the next layer's gating residual sent back, zeroed at each forward. */
    private long dLogitsIn;
    /** fp32 copy of this layer's logit gradient in the last backward (a layer with a gating residual or extra logits). */
    private long dLogits32;
    /** fp32 {@code [tokens, routed]} the caller adds to the router's logits (a spec with extra logits), 0 until set. */
    private long extraLogits;
    /** The FFN experts' GEMMs over all this layer's experts (null with an expert stage). */
    private final ExpertGemms gemms;
    /** Where the FFN experts run when not here (expert parallelism), else null. */
    private ExpertStage stage;
    /**
     * The stage's {@link ExpertStage#rowOrder} when it is not the experts' own order: h's rows sorted by slot, the expert in each
     * slot on the host and on the device (for expert_offsets_ordered); else null and 0, and the rows sorted by expert id.
     */
    private int[] rowOrder;
    private DeviceAllocator.Block rowOrderBlock;
    /**
     * The caller's work to queue beside this layer's experts in the pass under way (the MoE's shared experts): an expert stage runs
     * it while its rows travel between ranks; without one it runs after the experts' GEMMs. Once per pass, then null.
     */
    private Runnable beside;

    public CudaMoeLayer(CudaContext ctx, Spec spec, boolean gradsInActivationType) {
        this(ctx, spec, gradsInActivationType, null, null);
    }

    /**
     * A layer that routes, sorts and combines its tokens but runs its FFN experts through {@code stage} (expert parallelism): it
     * holds the router (and selection bias) only; {@link #setRouterWeights} uploads them. The stage is the caller's to close.
     */
    public static CudaMoeLayer withExpertStage(CudaContext ctx, Spec spec, boolean gradsInActivationType, ExpertStage stage) {
        if (stage == null) {
            throw new IllegalArgumentException("no expert stage given");
        }
        if (spec.constantExperts() > 0) {
            throw new IllegalArgumentException("an expert stage with MoE++ constant experts is not supported");
        }
        return new CudaMoeLayer(ctx, spec, gradsInActivationType, null, stage);
    }

    /**
     * Where a layer on external weights keeps all its FFN experts for the GEMMs: {@code w13 [E, GW, DIN]} and {@code w2 [E, D, F]} in
     * the activation type (the fp32 arena's, or in bf16 the layer's copies refreshed from it at each forward), and their fp32
     * gradients in the arena, which a backward adds to.
     */
    public record ExpertWeights(long w13, long w2, long dW13, long dW2) {}

    /** The experts' weights and gradients of a layer on external weights, for an expert stage that reads them there. */
    public ExpertWeights expertWeights() {
        if (!accumulateGrads || w13 == 0) {
            throw new IllegalStateException("only a layer on external weights lends its experts' weights to a stage");
        }
        return new ExpertWeights(w13, w2, dW13, dW2);
    }

    /**
     * Keeps the bf16 copies of {@code experts} only (an expert-parallel rank's, {@link ExpertStage#weightsRead}): the others' pages
     * are given back. A bf16 layer on external weights whose copies are on reserved addresses; false (nothing done) otherwise.
     */
    public boolean keepExpertCopiesOnly(int[] experts) {
        if (w13Copies == null) {
            return false;
        }
        long per13 = (long) gw * spec.expertIn() * actBytes, per2 = (long) spec.dim() * spec.hidden() * actBytes;
        List<long[]> keep13 = new ArrayList<>(), keep2 = new ArrayList<>();
        for (int ex : experts) {
            keep13.add(new long[] {ex * per13, (ex + 1) * per13});
            keep2.add(new long[] {ex * per2, (ex + 1) * per2});
        }
        ctx.synchronize();
        w13Copies.backOnly(keep13);
        w2Copies.backOnly(keep2);
        return true; // the copies are refreshed from the masters at each forward
    }

    /** Device bytes of the experts' bf16 copies (0 without). */
    public long expertCopyBytes() {
        if (w13Copies != null) {
            return w13Copies.backedBytes() + w2Copies.backedBytes();
        }
        return (w13Block != null && master != null ? w13Block.bytes + w2Block.bytes : 0);
    }

    /**
     * Runs this layer's FFN experts through {@code stage} from now on (expert parallelism over a model's arena: the stage reads and
     * accumulates into the slices of {@link #expertWeights} its rank holds). A layer on external weights only, without MoE++
     * constant experts; set between passes. The stage is the caller's to close.
     */
    public void useExpertStage(ExpertStage stage) {
        if (!accumulateGrads || w13 == 0) {
            throw new IllegalStateException("an expert stage is set on a layer on external weights (withExpertStage builds one of its own)");
        }
        if (spec.constantExperts() > 0) {
            throw new IllegalArgumentException("an expert stage with MoE++ constant experts is not supported");
        }
        this.stage = stage;
        setRowOrder(stage.rowOrder());
    }

    /**
     * Device pointers of weights and gradients that a caller owns (a device-resident model's
     * parameter arena), fp32, in this layer's layout: router {@code [routed, D]}, selection bias
     * {@code [routed]} (0 without one), {@code w13 [E, 2F, D]} ({@code [E, F, D]} ungated), {@code w2 [E, D, F]}.
     */
    public record ExternalWeights(long router, long bias, long w13, long w2, long dRouter, long dW13, long dW2) {}

    /**
     * A layer on external fp32 weights whose backward ADDS to the external fp32 gradients, so a model
     * can accumulate micro-batches. In bf16 the layer keeps bf16 copies of the router and expert
     * weights, refreshed from the fp32 masters at each {@link #forwardInto}.
     */
    public static CudaMoeLayer onExternalWeights(CudaContext ctx, Spec spec, ExternalWeights weights) {
        if (spec.bias() != (weights.bias() != 0)) {
            throw new IllegalArgumentException("the spec " + (spec.bias() ? "has" : "has no") + " selection bias; the weights do not agree");
        }
        return new CudaMoeLayer(ctx, spec, false, weights, null);
    }

    private CudaMoeLayer(CudaContext ctx, Spec spec, boolean gradsInActivationType, ExternalWeights external, ExpertStage stage) {
        this.ctx = ctx;
        this.spec = spec;
        this.source = MoeKernelSource.generate(spec);
        this.act = spec.precision() == Precision.BF16 ? Type.BF16 : Type.F32;
        this.gradType = gradsInActivationType ? act : Type.F32;
        this.actBytes = act.bytes;
        this.gw = spec.options().activation().gated ? 2 * spec.hidden() : spec.hidden();
        if (spec.options().capacityFactor() > 0 && spec.routed() != spec.experts()) {
            throw new IllegalArgumentException("a capacity factor with zero or copy experts is not supported on the GPU");
        }
        long e = spec.experts(), er = spec.routed(), d = spec.dim(), in = spec.expertIn(), f = spec.hidden(), gw = this.gw;
        this.stage = stage;
        this.gemms = stage == null ? new ExpertGemms(ctx, spec, source, gradType) : null;
        if (stage != null) {
            // the stage holds the experts' weights: only the router's here
            routerBlock = ctx.allocator.allocate(er * d * actBytes);
            biasBlock = spec.bias() ? ctx.allocator.allocate(er * 4) : null;
            dRouterBlock = ctx.allocator.allocate(er * d * gradType.bytes);
            w13Block = w2Block = dW13Block = dW2Block = null;
            router = routerBlock.pointer;
            bias = biasBlock == null ? 0 : biasBlock.pointer;
            dRouter = dRouterBlock.pointer;
            w13 = w2 = dW13 = dW2 = 0;
            accumulateGrads = false;
        } else if (external == null) {
            routerBlock = ctx.allocator.allocate(er * d * actBytes);
            biasBlock = spec.bias() ? ctx.allocator.allocate(er * 4) : null;
            w13Block = ctx.allocator.allocate(e * gw * in * actBytes);
            w2Block = ctx.allocator.allocate(e * d * f * actBytes);
            dRouterBlock = ctx.allocator.allocate(er * d * gradType.bytes);
            dW13Block = ctx.allocator.allocate(e * gw * in * gradType.bytes);
            dW2Block = ctx.allocator.allocate(e * d * f * gradType.bytes);
            router = routerBlock.pointer;
            bias = biasBlock == null ? 0 : biasBlock.pointer;
            w13 = w13Block.pointer;
            w2 = w2Block.pointer;
            dRouter = dRouterBlock.pointer;
            dW13 = dW13Block.pointer;
            dW2 = dW2Block.pointer;
            accumulateGrads = false;
        } else if (act == Type.F32) {
            routerBlock = biasBlock = w13Block = w2Block = dRouterBlock = dW13Block = dW2Block = null;
            router = external.router();
            bias = external.bias();
            w13 = external.w13();
            w2 = external.w2();
            dRouter = external.dRouter();
            dW13 = external.dW13();
            dW2 = external.dW2();
            accumulateGrads = true;
        } else {
            // bf16 copies of the fp32 masters for the GEMMs; gradients go straight to the fp32 masters' arena
            routerBlock = ctx.allocator.allocate(er * d * actBytes);
            if (ReservedMemory.supported(ctx)) {
                w13Copies = new ReservedMemory(ctx, e * gw * in * actBytes);
                w2Copies = new ReservedMemory(ctx, e * d * f * actBytes);
                w13Block = w2Block = null;
                w13 = w13Copies.pointer;
                w2 = w2Copies.pointer;
            } else {
                w13Block = ctx.allocator.allocate(e * gw * in * actBytes);
                w2Block = ctx.allocator.allocate(e * d * f * actBytes);
                w13 = w13Block.pointer;
                w2 = w2Block.pointer;
            }
            biasBlock = dRouterBlock = dW13Block = dW2Block = null;
            router = routerBlock.pointer;
            bias = external.bias();
            dRouter = external.dRouter();
            dW13 = external.dW13();
            dW2 = external.dW2();
            accumulateGrads = true;
        }
        this.master = external != null && act != Type.F32 ? external : null;
        // random drops draw with a new seed every step: a graph keyed by it would never be replayed
        this.graph = LaunchGraph.enabled() && spec.options().drop() != MoeKernelSource.Drop.RANDOM ? LaunchGraph.on(ctx) : null;
        // Compile (or load from the disk cache) before any timing starts.
        for (String k : List.of("router_topk", "rank_tile_counts", "rank_tile_scan", "rank_tile_ranks", "expert_offsets", "permute_gather", "combine",
                "combine_backward", "unpermute_sum", "router_backward")) {
            ctx.kernel(source, k);
        }
        if (spec.options().capacityFactor() > 0) {
            for (String k : List.of("capacity_order", "capacity_keep")) {
                ctx.kernel(source, k);
            }
            if (spec.options().drop() == MoeKernelSource.Drop.RANDOM) {
                ctx.kernel(source, "random_priority");
            }
        }
        if (spec.constantExperts() > 0) {
            ctx.kernel(source, "constant_mix");
            ctx.kernel(source, "constant_grads");
            if (external == null) {
                long c = spec.constantExperts();
                cvBlock = ctx.allocator.allocate(c * d * 4);
                wcBlock = ctx.allocator.allocate(c * 2 * d * 4);
                dCvBlock = ctx.allocator.allocate(c * d * 4);
                dWcBlock = ctx.allocator.allocate(c * 2 * d * 4);
                cv = cvBlock.pointer;
                wc = wcBlock.pointer;
                dCv = dCvBlock.pointer;
                dWc = dWcBlock.pointer;
            }
        }
        ctx.kernel(source, "cast_from_float");
        ctx.kernel(source, "add_to_float");
        if (spec.options().extraLogits()) {
            ctx.kernel(source, "add_floats");
        }
        if (spec.score() == MoeKernelSource.Score.SOFTMAX) {
            ctx.kernel(source, "router_balance_stats");
        }
        ctx.kernel(source, "router_sequence_stats");
        ctx.kernel(source, "router_backward_balance");
        if (stage != null) {
            setRowOrder(stage.rowOrder());
        }
    }

    /**
     * Sorts h's rows by {@code order} (the expert in each slot; null or the identity: by expert id, as without a stage). Only
     * the experts' offsets change: the routing, the counts and each row's rank within its expert keep the expert ids.
     */
    private void setRowOrder(int[] order) {
        int e = spec.experts();
        boolean identity = true;
        if (order != null) {
            if (order.length != e) {
                throw new IllegalArgumentException("a row order of " + order.length + " slots for " + e + " FFN experts");
            }
            boolean[] seen = new boolean[e];
            for (int sl = 0; sl < e; sl++) {
                int ex = order[sl];
                if (ex < 0 || ex >= e || seen[ex]) {
                    throw new IllegalArgumentException("a row order is not a permutation of the " + e + " FFN experts: " + java.util.Arrays.toString(order));
                }
                seen[ex] = true;
                identity &= ex == sl;
            }
        }
        if (rowOrderBlock != null) {
            rowOrderBlock.close();
            rowOrderBlock = null;
        }
        rowOrder = null;
        if (!identity) {
            ctx.kernel(source, "expert_offsets_ordered");
            rowOrderBlock = ctx.allocator.allocate((long) e * 4);
            ctx.upload(order, rowOrderBlock.pointer);
            rowOrder = order.clone();
        }
    }

    /**
     * Uploads weights given in fp32 (rounded to bf16 in bf16 mode): the router {@code [routed, D]}
     * (FFN experts' rows first, then zero, then copy experts'), the selection bias {@code [routed]}
     * or null, and the FFN experts' {@code gateUp} ({@code [E, 2F, expertIn]}, or {@code [E, F, expertIn]} of up rows
     * only for ungated experts) and {@code down}.
     */
    public void setWeights(float[] routerWeights, float[] expertBias, float[] gateUp, float[] down) {
        if (stage != null) {
            throw new IllegalStateException("this layer's experts are its expert stage's: setRouterWeights uploads the router");
        }
        int e = spec.experts(), er = spec.routed(), d = spec.dim(), f = spec.hidden();
        check(routerWeights.length == er * d, "router weights");
        check(gateUp.length == (long) e * gw * spec.expertIn(), "gate/up weights");
        check(down.length == (long) e * d * f, "down weights");
        upload(routerWeights, router);
        upload(gateUp, w13);
        upload(down, w2);
        if (spec.bias()) {
            check(expertBias != null && expertBias.length == er, "expert bias");
            ctx.upload(expertBias, bias);
        }
    }

    /** Uploads the router {@code [routed, D]} and the selection bias {@code [routed]} (or null) of a layer with an expert stage. */
    public void setRouterWeights(float[] routerWeights, float[] expertBias) {
        if (stage == null) {
            throw new IllegalStateException("setRouterWeights is for a layer with an expert stage: setWeights uploads every weight");
        }
        check(routerWeights.length == spec.routed() * spec.dim(), "router weights");
        upload(routerWeights, router);
        if (spec.bias()) {
            check(expertBias != null && expertBias.length == spec.routed(), "expert bias");
            ctx.upload(expertBias, bias);
        }
    }

    /**
     * Points a layer on external weights at its MoE++ constant experts' fp32 weights in the caller's arena: the vectors
     * {@code v [C, D]} (contiguous, in router order) and the mix weights {@code W_c [C, 2, D]}, and their fp32 gradients, which
     * backward ADDS to. The constant experts read these fp32 values in bf16 mode too (no bf16 copies).
     */
    public void setConstantExperts(long vectors, long mixWeights, long dVectors, long dMixWeights) {
        if (spec.constantExperts() == 0) {
            throw new IllegalStateException("this layer has no constant experts");
        }
        if (cvBlock != null) {
            throw new IllegalStateException("this layer owns its constant experts' weights: upload them with setConstantWeights");
        }
        cv = vectors;
        wc = mixWeights;
        dCv = dVectors;
        dWc = dMixWeights;
    }

    /** Uploads the constant experts' fp32 weights of a layer that owns them: vectors {@code [C, D]}, mix weights {@code [C, 2, D]}. */
    public void setConstantWeights(float[] vectors, float[] mixWeights) {
        int c = spec.constantExperts(), d = spec.dim();
        check(cvBlock != null, "constant experts' own weights (none on external weights)");
        check(vectors.length == c * d, "constant vectors");
        check(mixWeights.length == c * 2 * d, "constant mix weights");
        ctx.upload(vectors, cv);
        ctx.upload(mixWeights, wc);
    }

    /** The constant experts' vector gradients {@code [C, D]} (fp32). */
    public float[] constantVectorGrad() {
        return ctx.downloadFloats(dCv, spec.constantExperts() * spec.dim());
    }

    /** The constant experts' mix-weight gradients {@code [C, 2, D]} (fp32). */
    public float[] constantMixGrad() {
        return ctx.downloadFloats(dWc, spec.constantExperts() * 2 * spec.dim());
    }

    /**
     * MoE++'s gating residual: from the next forward on, this router's fp32 logits add {@code previous}'s logits (the raw
     * logits its router scored, residual included) times {@code g [routed, previous.routed]}ᵀ (fp32), and the backward adds
     * {@code dLogitsᵀ · previous logits} to {@code dG} and sends {@code dLogits · g} back into {@code previous}'s logit gradient,
     * which its own backward (run after this one's) adds to its router's. Both specs need {@link MoeKernelSource.Options#gatingResidual}.
     * {@code previous} must run its forward, on the same tokens, before this layer's, and its backward after.
     */
    public void setResidualFrom(CudaMoeLayer previous, long g, long dG) {
        if (previous == this || previous.ctx != ctx) {
            throw new IllegalArgumentException("a gating residual reads another layer on the same context");
        }
        if (!spec.options().gatingResidual() || !previous.spec.options().gatingResidual()) {
            throw new IllegalArgumentException("a gating residual needs both layers' specs with gatingResidual");
        }
        residualFrom = previous;
        residualG = g;
        residualDG = dG;
        previous.feedsResidual = true;
    }

    /**
     * Extra logits (RMoE's recurrent router: its GRU state through an output map, computed by the caller): from the next forward
     * on, the router's fp32 logits add {@code logits [tokens, routed]} (fp32, read during each forward, before a gating
     * residual's term), and each backward keeps the fp32 gradient of the logits for {@link #lastLogitGradient}. The spec needs
     * {@link MoeKernelSource.Options#extraLogits}.
     */
    public void setExtraLogits(long logits) {
        if (!spec.options().extraLogits()) {
            throw new IllegalArgumentException("extra logits need a spec with extraLogits");
        }
        extraLogits = logits;
    }

    /**
     * The fp32 gradient of the router's logits {@code [tokens, routed]} in the last backward (what a gating residual of the next
     * layer sent back included): the gradient of {@link #setExtraLogits}'s term. Valid until the next forward or backward.
     */
    public long lastLogitGradient() {
        if (dLogits32 == 0) {
            throw new IllegalStateException("no fp32 logit gradient: the spec has no extra logits or gating residual, or no backward ran");
        }
        return dLogits32;
    }

    private static void check(boolean ok, String what) {
        if (!ok) {
            throw new IllegalArgumentException(what + " have the wrong size");
        }
    }

    /** Uploads fp32 values as this layer's activation type. */
    public void upload(float[] values, long device) {
        if (act == Type.F32) {
            ctx.upload(values, device);
        } else {
            ctx.upload(Bf16.fromFloats(values), device);
        }
    }

    /** Downloads {@code n} values of this layer's activation type as fp32. */
    public float[] download(long device, int n) {
        return act == Type.F32 ? ctx.downloadFloats(device, n) : Bf16.toFloats(ctx.downloadShorts(device, n));
    }

    private float[] downloadGrad(long device, int n) {
        return gradType == Type.F32 ? ctx.downloadFloats(device, n) : Bf16.toFloats(ctx.downloadShorts(device, n));
    }

    public float[] routerGrad() {
        return downloadGrad(dRouter, spec.routed() * spec.dim());
    }

    public float[] gateUpGrad() {
        requireOwnExperts();
        return downloadGrad(dW13, spec.experts() * gw * spec.expertIn());
    }

    public float[] downGrad() {
        requireOwnExperts();
        return downloadGrad(dW2, spec.experts() * spec.dim() * spec.hidden());
    }

    private void requireOwnExperts() {
        if (stage != null) {
            throw new IllegalStateException("this layer's experts are its expert stage's: ask the stage for their gradients");
        }
    }

    private long boundary(boolean input, long floats) {
        DeviceAllocator.Block b = input ? inAct : dOutAct;
        if (b == null || b.bytes < floats * actBytes) {
            if (b != null) {
                b.close();
            }
            b = ctx.allocator.allocate(floats * actBytes);
            if (input) {
                inAct = b;
            } else {
                dOutAct = b;
            }
        }
        return b.pointer;
    }

    private void cast(long srcFloat, long dst, long n) {
        launch("cast_from_float", elementwiseGrid(n), THREADS, srcFloat, dst, n);
    }

    /**
     * The layer on an fp32 input {@code x [tokens, D]}, its output ADDED to the fp32 {@code target}
     * (a residual stream). In bf16 the weights' bf16 copies are refreshed from the masters first.
     */
    public void forwardInto(long x, int tokens, long target) {
        forwardInto(x, x, tokens, target);
    }

    /**
     * {@link #forwardInto(long, int, long)} with a router that reads {@code routerX [tokens, D]} (fp32) instead of x:
     * Read-ME's pre-gating, whose routers all read the embeddings; or MoLE's latent experts, which read
     * {@code x [tokens, expertIn]} while the router reads the layer's input.
     */
    public void forwardInto(long x, long routerX, int tokens, long target) {
        forwardInto(x, routerX, tokens, target, null);
    }

    /**
     * {@link #forwardInto(long, long, int, long)} with {@code beside} (null: none) queued where it can overlap the experts' work:
     * while an expert-parallel stage's rows travel, else after the experts' GEMMs; always before this layer's output is added to
     * {@code target}, so that {@code beside} may add to target too and the sum's order is the same with or without a stage.
     */
    public void forwardInto(long x, long routerX, int tokens, long target, Runnable beside) {
        this.beside = beside;
        try {
            forwardIntoTarget(x, routerX, tokens, target);
        } finally {
            this.beside = null;
        }
    }

    private void runBeside() {
        Runnable r = beside;
        beside = null;
        if (r != null) {
            r.run();
        }
    }

    private void forwardIntoTarget(long x, long routerX, int tokens, long target) {
        long in = x;
        if (act != Type.F32) {
            if (master != null) {
                long e = spec.experts(), er = spec.routed(), d = spec.dim(), f = spec.hidden();
                cast(master.router(), router, er * d);
                if (gateRouters != null) {
                    for (int gi = 0; gi < gateRouters.length; gi++) {
                        cast(gateRouters[gi], gateActs[gi], er * d);
                    }
                }
                int[] read = stage == null ? null : stage.weightsRead();
                if (read == null) {
                    cast(master.w13(), w13, e * gw * spec.expertIn());
                    cast(master.w2(), w2, e * d * f);
                } else {
                    // an expert-parallel stage reads its rank's experts only (the others may have no memory behind them)
                    long per13 = (long) gw * spec.expertIn(), per2 = d * f;
                    for (int ex : read) {
                        cast(master.w13() + ex * per13 * 4, w13 + ex * per13 * actBytes, per13);
                        cast(master.w2() + ex * per2 * 4, w2 + ex * per2 * actBytes, per2);
                    }
                }
            }
            in = boundary(true, (long) tokens * spec.expertIn());
            cast(x, in, (long) tokens * spec.expertIn());
        }
        long rin = in;
        if (routerX != x) {
            rin = routerX;
            if (act != Type.F32) {
                long n = (long) tokens * spec.dim();
                if (routerInAct == null || routerInAct.bytes < n * actBytes) {
                    if (routerInAct != null) {
                        routerInAct.close();
                    }
                    routerInAct = ctx.allocator.allocate(n * actBytes);
                }
                rin = routerInAct.pointer;
                cast(routerX, rin, n);
            }
        }
        long out = forward(in, rin, tokens);
        runBeside(); // not yet run if the forward had no experts' work to run it beside
        long n = (long) tokens * spec.dim();
        launch("add_to_float", elementwiseGrid(n), THREADS, target, out, n);
    }

    /**
     * Backward of {@link #forwardInto} for the fp32 output gradient {@code dOut}: the input gradient
     * is ADDED to the fp32 {@code dIn}; the weight gradients are added to the masters'.
     */
    public void backwardInto(long dOut, float[] aux, float zc, long dIn) {
        backwardInto(dOut, aux, zc, 0f, dIn);
    }

    /**
     * {@link #backwardInto(long, float[], float, long)} with an entropy loss on the router probabilities: {@code ent} is its
     * coefficient already divided by the rows and times the loss scale (0: none).
     */
    public void backwardInto(long dOut, float[] aux, float zc, float ent, long dIn) {
        backwardInto(dOut, aux, zc, ent, dIn, dIn);
    }

    /**
     * Backward of {@link #forwardInto(long, long, int, long)}: the gradient of the router's input is ADDED to the fp32
     * {@code dRouterIn} (which may be {@code dIn}), that of x ({@code [tokens, expertIn]}) to {@code dIn}.
     */
    public void backwardInto(long dOut, float[] aux, float zc, float ent, long dIn, long dRouterIn) {
        backwardInto(dOut, aux, zc, ent, dIn, dRouterIn, null);
    }

    /**
     * {@link #backwardInto(long, float[], float, float, long, long)} with {@code beside} (null: none) queued where it can overlap
     * the experts' backward: while an expert-parallel stage's output gradients travel, else after the experts' GEMMs; always
     * before this layer adds its input gradients to {@code dIn} (beside may add to dIn too: the same order either way).
     */
    public void backwardInto(long dOut, float[] aux, float zc, float ent, long dIn, long dRouterIn, Runnable beside) {
        this.beside = beside;
        try {
            backwardIntoInput(dOut, aux, zc, ent, dIn, dRouterIn);
        } finally {
            this.beside = null;
        }
    }

    private void backwardIntoInput(long dOut, float[] aux, float zc, float ent, long dIn, long dRouterIn) {
        long g = dOut;
        long n = (long) tokens * spec.dim();
        if (act != Type.F32) {
            g = boundary(false, n);
            cast(dOut, g, n);
        }
        long dx = backward(g, aux, zc, ent);
        runBeside();
        long nx = (long) tokens * spec.expertIn();
        launch("add_to_float", elementwiseGrid(nx), THREADS, dIn, dx, nx);
        if (routerX != x) {
            launch("add_to_float", elementwiseGrid(n), THREADS, dRouterIn, dRouterX, n);
        }
    }

    /**
     * The values the balancing losses need from the last forward pass: the sum over tokens of each expert's score as the aux
     * loss sees it ({@code [routed]}: softmax probabilities, or sigmoid scores over each token's sum), then, for softmax scores,
     * Σ_t logsumexp(logits_t)² (of the logits the softmax read, after the temperature) and Σ_t of the probabilities' entropy
     * (0 for sigmoid scores, which have neither loss on the GPU). Waits for the GPU.
     */
    public float[] balanceStats() {
        int er = spec.routed();
        if (spec.score() != MoeKernelSource.Score.SOFTMAX) {
            // the whole batch as one sequence; the counts are not needed
            return java.util.Arrays.copyOf(sequenceStats(tokens, false).scores(), er + 2);
        }
        try (DeviceAllocator.Block stats = ctx.allocator.allocate((long) (er + 2) * 4)) {
            ctx.driver.memsetZero(stats.pointer, (long) (er + 2) * 4, ctx.stream);
            launch("router_balance_stats", ceilDiv(tokens * 32, THREADS), THREADS, logits, probs, tokens, temperature, stats.pointer);
            return ctx.downloadFloats(stats.pointer, er + 2);
        }
    }

    /**
     * The sequence-wise aux loss's statistics of the last forward pass, sequence by sequence ({@code seq} tokens each): the
     * slots that chose each expert (top-p's unused slots count for none; a slot dropped over capacity still counts, as in the
     * CPU class) and the sum of each expert's scores as the aux loss sees them. Waits for the GPU.
     */
    public SequenceStats sequenceBalanceStats(int seq) {
        if (seq <= 0 || tokens % seq != 0) {
            throw new IllegalArgumentException("sequences of " + seq + " tokens do not divide the " + tokens + " tokens");
        }
        return sequenceStats(seq, true);
    }

    private SequenceStats sequenceStats(int seq, boolean counted) {
        int er = spec.routed(), sequences = tokens / seq;
        long n = (long) sequences * er;
        // (a null resource is skipped at the close)
        try (DeviceAllocator.Block score = ctx.allocator.allocate(n * 4); DeviceAllocator.Block count = counted ? ctx.allocator.allocate(n * 4) : null) {
            ctx.driver.memsetZero(score.pointer, n * 4, ctx.stream);
            if (counted) {
                ctx.driver.memsetZero(count.pointer, n * 4, ctx.stream);
            }
            launch("router_sequence_stats", ceilDiv(tokens * 32, THREADS), THREADS, probs, idx, tokens, seq, score.pointer,
                    counted ? count.pointer : 0L);
            return new SequenceStats(sequences, er, counted ? ctx.downloadInts(count.pointer, (int) n) : new int[(int) n],
                    ctx.downloadFloats(score.pointer, (int) n));
        }
    }

    /**
     * Per sequence, the routed experts' slots ({@code counts [sequences, routed]}) and the sums of their scores as the aux loss
     * sees them ({@code scores [sequences, routed]}: softmax probabilities, or sigmoid scores over each token's sum).
     */
    public record SequenceStats(int sequences, int routed, int[] counts, float[] scores) {
        /**
         * The sequence-wise aux loss, as the CPU class computes it without a padding mask: {@code coef · E · mean over the
         * sequences of Σ_e f_e P_e}, f_e the share of the sequence's used slots that chose expert e and P_e the mean of its
         * scores over the sequence's tokens. Fills {@code grad [sequences, routed]} with its gradient with respect to each
         * token's score of each expert ({@code coef · E · f_e / rows}, the same for the tokens of a sequence) and returns the
         * loss. {@code k} is the slots per token of top-k routing, whose f the CPU class sums 1 / (seq · k) at a time in float
         * (done so here, so that the gradient is the CPU's to the bit), or 0 for top-p, whose f is count / used slots.
         */
        public double auxLoss(float coef, int k, int rows, float[] grad) {
            if (grad.length != sequences * routed || rows % sequences != 0) {
                throw new IllegalArgumentException("an aux gradient of " + grad.length + " values for " + sequences + " sequences of "
                        + routed + " experts over " + rows + " rows");
            }
            int seq = rows / sequences;
            float[] f = new float[routed];
            double loss = 0;
            for (int b = 0; b < sequences; b++) {
                int slots = 0;
                for (int e = 0; e < routed; e++) {
                    slots += counts[b * routed + e];
                }
                for (int e = 0; e < routed; e++) {
                    int n = counts[b * routed + e];
                    if (k > 0) {
                        f[e] = 0f;
                        for (int i = 0; i < n; i++) {
                            f[e] += 1f / (seq * k);
                        }
                    } else {
                        f[e] = (float) n / slots;
                    }
                    loss += coef * routed * f[e] * (double) scores[b * routed + e] / rows;
                    grad[b * routed + e] = coef * routed * f[e] / ((float) seq * sequences);
                }
            }
            return loss;
        }
    }

    /** The router's temperature from the next forward pass on (a layer whose spec has one; the annealed value of the step). */
    public void setTemperature(float tau) {
        if (!spec.options().temperature()) {
            throw new IllegalStateException("this layer's router has no temperature");
        }
        temperature = tau;
    }

    /** The experts each token chose in the last forward pass, {@code [tokens, k]}; an unused top-p slot holds {@code routed()}. Waits for the GPU. */
    public int[] lastSelection() {
        return ctx.downloadInts(idx, tokens * spec.topK());
    }

    /**
     * Training forwards (the default) drop the slots over an expert's capacity when the spec has a
     * capacity factor; inference forwards are dropless, as the CPU class's forwards when not counting.
     */
    public void setTraining(boolean training) {
        this.training = training;
    }

    /**
     * The capacity of each expert for {@code tokens} tokens, as the CPU class computes it:
     * ceil(factor · tokens · k / E) in double, the factor read back from its shortest decimal form
     * (the recipe's literal) so that a float factor such as 1.1f gives the CPU's double 1.1.
     */
    public static int capacity(Spec spec, int tokens) {
        double factor = Double.parseDouble(Float.toString(spec.options().capacityFactor()));
        return (int) Math.ceil(factor * tokens * spec.topK() / spec.experts());
    }

    /**
     * Several named gates (chosen per sequence by data domain or task): the fp32 router weights {@code [routed, D]} and gradients
     * of each gate, on a layer of external weights; the next forwards route sequence b with gate {@link #setSequenceGates}[b].
     * The gates' backward sends their input gradient into x's: their router reads the experts' input.
     */
    public void setGates(long[] routers, long[] grads) {
        if (!accumulateGrads || routers.length != grads.length || routers.length == 0) {
            throw new IllegalArgumentException("named gates need a layer on external weights and one gradient per gate");
        }
        if (spec.expertIn() != spec.dim()) {
            throw new IllegalArgumentException("named gates read the experts' input: not with latent experts");
        }
        gateRouters = routers.clone();
        gateGrads = grads.clone();
        gateActs = routers.clone();
        if (act != Type.F32) {
            for (int g = 0; g < routers.length; g++) {
                DeviceAllocator.Block b = ctx.allocator.allocate((long) spec.routed() * spec.dim() * actBytes);
                gateBlocks.add(b);
                gateActs[g] = b.pointer;
            }
        }
    }

    /** The gate of each sequence of the next forwards ({@code seq} tokens each). */
    public void setSequenceGates(int[] gateOf, int seq) {
        gateOfSequence = gateOf.clone();
        sequenceLength = seq;
    }

    private void checkGates(int tokens) {
        if (gateOfSequence == null || sequenceLength <= 0 || tokens % sequenceLength != 0 || gateOfSequence.length < tokens / sequenceLength) {
            throw new IllegalStateException("named gates need each sequence's gate (setSequenceGates) for " + tokens + " tokens");
        }
    }

    /** The tokens per sequence of the next forward passes (expert choice picks tokens per sequence). */
    public void setSequenceLength(int seq) {
        sequenceLength = seq;
    }

    /** Expert choice's tokens per expert and sequence, as the CPU class computes it: ceil(factor · seq / E) in double. */
    public static int expertChoiceCapacity(Spec spec, int seq) {
        double factor = Double.parseDouble(Float.toString(spec.options().expertChoice()));
        return (int) Math.ceil(factor * seq / spec.experts());
    }

    /** Whether the last forward dropped slots over capacity (a training forward with a capacity factor). */
    public boolean lastDropped() {
        return dropping;
    }

    /**
     * Each slot's row in the sorted expert rows of the last forward, {@code [tokens, k]}: -1 for a
     * zero or copy expert's slot and for a slot dropped over capacity. Waits for the GPU.
     */
    public int[] lastPositions() {
        return ctx.downloadInts(pos, tokens * spec.topK());
    }

    /** Slots per routed expert in the last forward pass ({@code routed()} of them: FFN, then zero, then copy experts; kept slots after any capacity drops). */
    public int[] lastCounts() {
        return routedCounts.clone();
    }

    /**
     * The random drop priorities of {@code n} slots for {@code seed}, drawn on the host as the CPU classes draw them (the
     * {@code random_priority} kernel computes the same floats on the GPU): the float of each SplitMix double in turn.
     */
    public static float[] dropPriorities(long seed, int n) {
        dev.moe.runtime.Init.SplitMix rng = new dev.moe.runtime.Init.SplitMix(seed);
        float[] out = new float[n];
        for (int i = 0; i < n; i++) {
            out[i] = (float) rng.nextDouble();
        }
        return out;
    }

    /** The seed of the next training forward's random drop priorities: the CPU class's for its step, micro-batch and layer. */
    public void setDropSeed(long seed) {
        dropSeed = seed;
    }

    /**
     * The routing: logits, top-k, the ranks of the rows by expert, the experts' offsets and the counts' copy to the host (into
     * {@code countsHost}); recorded into {@link #graph} when there is one, so it may only queue work (no waits).
     */
    private void route(int tokens, int e, int er, int k, int d, int m, long rank, long counts, long offs) {
        // logits[T, E] = x · routerᵀ, fp32 out.
        if (gateRouters == null) {
            ctx.blas.matmul(ctx.stream, true, false, er, tokens, d, router, act, d, routerX, act, d, logits, Type.F32, er, false);
        } else {
            // named gates: each sequence's logits from its gate's router
            checkGates(tokens);
            for (int sq = 0; sq < tokens / sequenceLength; sq++) {
                long r0 = (long) sq * sequenceLength;
                ctx.blas.matmul(ctx.stream, true, false, er, sequenceLength, d, gateActs[gateOfSequence[sq]], act, d, routerX + r0 * d * actBytes, act,
                        d, logits + r0 * er * 4, Type.F32, er, false);
            }
        }
        if (spec.options().extraLogits()) {
            if (extraLogits == 0) {
                throw new IllegalStateException("a layer with extra logits needs them set (setExtraLogits) before its forward");
            }
            // extra logits (a recurrent router's): logits[T, E] += the caller's fp32 term
            long n = (long) tokens * er;
            launch("add_floats", elementwiseGrid(n), THREADS, logits, extraLogits, n);
        }
        if (residualFrom != null) {
            if (residualFrom.tokens != tokens || residualFrom.logits == 0) {
                throw new IllegalStateException("the gating residual's previous layer has not run its forward on these " + tokens + " tokens");
            }
            // gating residual: logits[T, E] += previous logits[T, Ep] · Gᵀ (fp32)
            int ep = residualFrom.spec.routed();
            ctx.blas.matmul(ctx.stream, true, false, er, tokens, ep, residualG, Type.F32, ep, residualFrom.logits, Type.F32, ep, logits, Type.F32, er,
                    true);
        }
        if (feedsResidual) {
            dLogitsIn = keep(saved, (long) tokens * er * 4);
            long zeroed = dLogitsIn;
            queue(() -> ctx.driver.memsetZero(zeroed, (long) tokens * er * 4, ctx.stream), "memsetZero", zeroed, (long) tokens * er * 4);
        }
        mark("router gemm");
        launch("router_topk", ceilDiv(tokens * 32, THREADS), THREADS, logits, bias, tokens, idx, weight, probs, temperature);
        mark("top-k");
        // every routed expert is counted (zero and copy experts too, for the balancing); only FFN experts get rows
        rankRows(idx, 0L, m, er, rank, counts);
        dropping = training && spec.options().capacityFactor() > 0;
        if (dropping) {
            // the routed rows' offsets, each expert's rows in token order, which to keep; then rank and count the kept rows only
            long routedOffs = keep(saved, (long) (e + 1) * 4);
            long order = keep(saved, (long) m * 4);
            long kept = keep(saved, (long) m * 4);
            launch("expert_offsets", 1, 32, counts, routedOffs);
            launch("capacity_order", ceilDiv(m, THREADS), THREADS, idx, rank, routedOffs, m, order);
            long key = weight;
            if (spec.options().drop() == MoeKernelSource.Drop.RANDOM) {
                // the CPU class's seeded priorities (setDropSeed), drawn here slot by slot
                key = keep(saved, (long) m * 4);
                launch("random_priority", ceilDiv(m, THREADS), THREADS, key, m, dropSeed);
            }
            launch("capacity_keep", ceilDiv(m, THREADS), THREADS, idx, rank, key, routedOffs, order, m, capacity(spec, tokens), kept);
            rankRows(idx, kept, m, e, rank, counts);
        } else if (spec.options().expertChoice() > 0) {
            // expert choice (training and inference alike): in each sequence each expert keeps its best tokens
            if (sequenceLength <= 0 || sequenceLength > 8192 || tokens % sequenceLength != 0) {
                throw new IllegalStateException("expert choice needs the sequence length (1 to 8192, dividing the " + tokens + " tokens): got "
                        + sequenceLength);
            }
            dropping = true;
            long kept = keep(saved, (long) m * 4);
            launch("expert_choice_keep", tokens / sequenceLength * e, THREADS, idx, weight, sequenceLength, expertChoiceCapacity(spec, sequenceLength),
                    kept);
            rankRows(idx, kept, m, e, rank, counts);
        }
        if (rowOrder == null) {
            launch("expert_offsets", 1, 32, counts, offs);
        } else {
            // the stage's slots: each rank's experts' rows one slice of h (the capacity drops above are per expert id, unaffected)
            launch("expert_offsets_ordered", 1, 32, counts, rowOrderBlock.pointer, offs);
        }
        mark("rank+offsets");
        if (countsHost == null || countsHost.byteSize() < (long) er * 4) {
            freeCountsHost();
            countsHost = ctx.driver.hostAlloc((long) er * 4);
            countsCopied = ctx.driver.createEvent();
        }
        MemorySegment countsTo = countsHost;
        queue(() -> ctx.driver.copyToHost(countsTo, counts, (long) er * 4, ctx.stream), "copyToHost", countsTo.address(), counts, (long) er * 4);
    }

    /** Records an event after each forward phase, for {@link #phaseMillis()}; costs a little time. */
    public void setProfiling(boolean on) {
        profiling = on;
    }

    private void mark(String phase) {
        if (!profiling || (graph != null && graph.recording())) {
            return;
        }
        int i = phaseNames.indexOf(phase);
        if (i < 0) {
            phaseNames.add(phase);
            phaseEvents.add(ctx.driver.createEvent());
            phaseHostNanos.add(0L);
            i = phaseNames.size() - 1;
        }
        if (phase.equals("start")) {
            markedThisPass.clear();
        }
        markedThisPass.add(i);
        ctx.driver.record(phaseEvents.get(i), ctx.stream);
        phaseHostNanos.set(i, System.nanoTime());
    }

    /**
     * Milliseconds the host spent queueing each phase of the last profiled forward pass (between the marks, waits included).
     * A phase whose GPU time ({@link #phaseMillis()}) is about its host time ran as fast as the host launched it.
     */
    public java.util.LinkedHashMap<String, Float> phaseHostMillis() {
        var out = new java.util.LinkedHashMap<String, Float>();
        for (int j = 1; j < markedThisPass.size(); j++) {
            int i = markedThisPass.get(j), before = markedThisPass.get(j - 1);
            if (!phaseNames.get(i).endsWith("start")) { // the gap between the forward and the backward is not a phase
                out.put(phaseNames.get(i), (phaseHostNanos.get(i) - phaseHostNanos.get(before)) / 1e6f);
            }
        }
        return out;
    }

    /**
     * Milliseconds of each phase of the last profiled forward pass, in order (after the "start" mark), then of the backward's
     * ("backward: ...") when one followed it.
     */
    public java.util.LinkedHashMap<String, Float> phaseMillis() {
        var out = new java.util.LinkedHashMap<String, Float>();
        for (int j = 1; j < markedThisPass.size(); j++) {
            int i = markedThisPass.get(j), before = markedThisPass.get(j - 1);
            if (!phaseNames.get(i).endsWith("start")) {
                out.put(phaseNames.get(i), ctx.driver.elapsedMillis(phaseEvents.get(before), phaseEvents.get(i)));
            }
        }
        return out;
    }

    /** A device buffer of {@code n} activations, for inputs and output gradients. */
    public DeviceAllocator.Block allocateActivations(long n) {
        return ctx.allocator.allocate(n * actBytes);
    }

    private long keep(List<DeviceAllocator.Block> list, long bytes) {
        return ctx.allocator.allocateInto(list, bytes);
    }

    /**
     * The layer's output for {@code x [tokens, D]} (device, activation type); the pointer stays
     * valid until the next forward. Saves what the backward pass needs.
     */
    public long forward(long x, int tokens) {
        return forward(x, x, tokens);
    }

    /**
     * {@link #forward(long, int)} with the router reading {@code routerX [tokens, D]} (activation type) instead of x, which is
     * {@code [tokens, expertIn]}: pre-gating, or latent experts (whose router always reads another input than they do).
     */
    public long forward(long x, long routerX, int tokens) {
        if (spec.expertIn() != spec.dim() && routerX == x) {
            throw new IllegalArgumentException("latent experts (input " + spec.expertIn() + " wide) need the router's own input, " + spec.dim() + " wide");
        }
        release(saved);
        release(backwardBlocks);
        dLogits32 = 0;
        this.x = x;
        this.routerX = routerX;
        this.tokens = tokens;
        int e = spec.experts(), er = spec.routed(), k = spec.topK(), d = spec.dim(), in = spec.expertIn(), f = spec.hidden();
        int m = tokens * k;
        logits = keep(saved, (long) tokens * er * 4);
        probs = keep(saved, (long) tokens * er * 4);
        idx = keep(saved, (long) m * 4);
        weight = keep(saved, (long) m * 4);
        long rank = keep(saved, (long) m * 4);
        long counts = keep(saved, (long) er * 4);
        long offs = keep(saved, (long) (e + 1) * 4);
        pos = keep(saved, (long) m * 4);
        h = keep(saved, (long) m * in * actBytes);
        // an expert stage keeps its own intermediates
        g = stage == null ? keep(saved, (long) m * gw * actBytes) : 0;
        a = stage == null ? keep(saved, (long) m * f * actBytes) : 0;
        y = keep(saved, (long) m * d * actBytes);
        out = keep(saved, (long) tokens * d * actBytes);

        mark("start");
        // The routing up to the counts' copy is a fixed chain of short kernels: with graphs on, recorded and replayed as one graph
        if (graph != null) {
            ctx.beginGraph(graph);
            try {
                route(tokens, e, er, k, d, m, rank, counts, offs);
            } catch (RuntimeException ex) {
                ctx.abandonGraph(graph);
                throw ex;
            }
            ctx.runGraph(graph);
            mark("routing (graph)");
        } else {
            route(tokens, e, er, k, d, m, rank, counts, offs);
        }
        // The GEMMs need each expert's row range on the host: the one device-to-host copy per layer (in the graph when there is
        // one). It is queued before the gather, so the host reads the counts and queues the GEMMs while the gather runs.
        ctx.driver.record(countsCopied, ctx.stream);
        launch("permute_gather", tokens, THREADS, x, idx, rank, offs, pos, h);
        mark("gather");
        if (spec.constantExperts() > 0) {
            if (cv == 0 || wc == 0) {
                throw new IllegalStateException("the constant experts' weights are not set");
            }
            // [a1, a2] = softmax(W_c x) for each constant expert's slot
            mix = keep(saved, (long) m * 2 * 4);
            launch("constant_mix", ceilDiv((long) m * 32, THREADS), THREADS, x, idx, wc, m, mix);
        }
        ctx.driver.waitFor(countsCopied);
        routedCounts = countsHost.asSlice(0, (long) er * 4).toArray(java.lang.foreign.ValueLayout.JAVA_INT);
        offsets = new int[e + 1];
        for (int ex = 0; ex < e; ex++) {
            offsets[ex + 1] = offsets[ex] + routedCounts[ex];
        }
        mark("host offsets");
        if (stage == null) {
            gemms.forward(offsets, w13, w2, h, g, a, y, this::mark);
            runBeside();
        } else {
            int[] stageCounts = new int[e];
            for (int sl = 0; sl < e; sl++) {
                stageCounts[sl] = routedCounts[rowOrder == null ? sl : rowOrder[sl]];
            }
            stage.forward(h, stageCounts, y, this::runBeside);
            mark("expert stage");
        }
        if (spec.constantExperts() > 0) {
            launch("combine", tokens, THREADS, y, x, idx, pos, weight, out, mix, cv);
        } else {
            launch("combine", tokens, THREADS, y, x, idx, pos, weight, out);
        }
        mark("combine");
        return out;
    }

    /**
     * The gradient with respect to the last forward's input for the output gradient {@code dOut};
     * OVERWRITES the weight gradients (an expert that got no tokens gets zeros). With a router input
     * of its own (pre-gating, latent experts) this is x's gradient only ({@code [tokens, expertIn]});
     * {@link #backwardInto(long, float[], float, float, long, long)} gives the router input's too.
     */
    public long backward(long dOut) {
        return backward(dOut, null, 0f);
    }

    /**
     * Backward with the balancing losses: {@code aux} is the gradient of the aux loss with respect to the scores it saw (softmax
     * probabilities, or sigmoid scores over each token's sum), {@code [routed]} the same for every token, or {@code [sequences,
     * routed]} the same for the tokens of each sequence (a sequence-wise aux loss; null: none); {@code zc} the z-loss coefficient
     * already divided by the rows and times the loss scale (0: none; softmax scores only).
     */
    public long backward(long dOut, float[] aux, float zc) {
        return backward(dOut, aux, zc, 0f);
    }

    /** {@link #backward(long, float[], float)} with the entropy loss's coefficient {@code ent} (divided by the rows, times the loss scale; 0: none). */
    public long backward(long dOut, float[] aux, float zc, float ent) {
        if ((zc != 0f || ent != 0f) && spec.score() != MoeKernelSource.Score.SOFTMAX) {
            throw new IllegalArgumentException("the z-loss and the entropy loss on the GPU need softmax scores");
        }
        int auxRows = aux == null ? 1 : aux.length / spec.routed();
        if (aux != null && (aux.length % spec.routed() != 0 || auxRows == 0 || tokens % auxRows != 0)) {
            throw new IllegalArgumentException("an aux gradient of " + aux.length + " values is not [sequences, " + spec.routed() + "] for "
                    + tokens + " tokens");
        }
        release(backwardBlocks);
        int e = spec.experts(), er = spec.routed(), k = spec.topK(), d = spec.dim(), in = spec.expertIn(), f = spec.hidden();
        int m = tokens * k;
        long dy = keep(backwardBlocks, (long) m * d * actBytes);
        long dWeight = keep(backwardBlocks, (long) m * 4);
        long da = stage == null ? keep(backwardBlocks, (long) m * f * actBytes) : 0;
        long dg = stage == null ? keep(backwardBlocks, (long) m * gw * actBytes) : 0;
        long dh = keep(backwardBlocks, (long) m * in * actBytes);
        long dx = keep(backwardBlocks, (long) tokens * in * actBytes);
        long dLogits = keep(backwardBlocks, (long) tokens * er * actBytes);
        mark("backward start");

        long dz = 0;
        if (spec.constantExperts() > 0) {
            // the constant experts' slots also get dz, the gradient of their mix logits
            dz = keep(backwardBlocks, (long) m * 2 * 4);
            launch("combine_backward", tokens, THREADS, dOut, y, x, idx, pos, weight, dy, dWeight, mix, cv, dz);
            int c = spec.constantExperts();
            MemorySegment fn = ctx.kernel(source, "constant_grads");
            ctx.launch(fn, "constant_grads", c, ceilDiv(d, THREADS), THREADS, 0, x, dOut, idx, weight, mix, dz, m, accumulateGrads ? 1 : 0, dCv, dWc);
        } else {
            launch("combine_backward", tokens, THREADS, dOut, y, x, idx, pos, weight, dy, dWeight);
        }
        mark("backward: combine");
        if (stage == null) {
            gemms.backward(offsets, w13, w2, dW13, dW2, accumulateGrads, h, g, a, dy, da, dg, dh);
            runBeside();
        } else {
            stage.backward(dy, dh, this::runBeside);
        }
        mark("backward: experts");
        if (spec.constantExperts() > 0) {
            launch("unpermute_sum", tokens, THREADS, dh, dOut, idx, pos, weight, dx, mix, dz, wc);
        } else {
            launch("unpermute_sum", tokens, THREADS, dh, dOut, idx, pos, weight, dx);
        }
        mark("backward: unpermute");
        if (ent != 0f && !spec.options().entropy()) {
            throw new IllegalArgumentException("an entropy loss needs a spec with entropy");
        }
        // gating residual: the router backward adds what the next layer sent back (dLogitsIn) and keeps an fp32 copy (dLogits32)
        // for its own residual or the caller's extra logits
        Object[] residualArgs = {};
        dLogits32 = 0;
        if (spec.options().fp32LogitGradient()) {
            dLogits32 = residualFrom == null && !spec.options().extraLogits() ? 0 : keep(backwardBlocks, (long) tokens * er * 4);
            residualArgs = new Object[] {feedsResidual ? dLogitsIn : 0L, dLogits32};
        }
        if (aux == null && zc == 0f && ent == 0f) {
            launch("router_backward", ceilDiv(tokens * 32, THREADS), THREADS, concat(new Object[] {probs, logits, idx, dWeight, tokens, temperature,
                dLogits}, residualArgs));
        } else {
            long auxDevice = keep(backwardBlocks, (long) auxRows * er * 4);
            ctx.upload(aux == null ? new float[er] : aux, auxDevice);
            launch("router_backward_balance", ceilDiv(tokens * 32, THREADS), THREADS, concat(new Object[] {probs, logits, idx, dWeight, tokens,
                auxDevice, tokens / auxRows, zc, ent, temperature, dLogits}, residualArgs));
        }
        if (gateRouters != null) {
            // named gates: per sequence, dx (or dRouterX, when the router read another input) += dlogits · its gate's router and
            // that gate's gradient += dlogitsᵀ · routerX
            long dTarget = dx;
            if (routerX != x) {
                dRouterX = keep(backwardBlocks, (long) tokens * d * actBytes);
                ctx.driver.memsetZero(dRouterX, (long) tokens * d * actBytes, ctx.stream);
                dTarget = dRouterX;
            }
            for (int sq = 0; sq < tokens / sequenceLength; sq++) {
                long r0 = (long) sq * sequenceLength;
                int gate = gateOfSequence[sq];
                ctx.blas.matmul(ctx.stream, false, false, d, sequenceLength, er, gateActs[gate], act, d, dLogits + r0 * er * actBytes, act, er,
                        dTarget + r0 * d * actBytes, act, d, true);
                ctx.blas.matmul(ctx.stream, false, true, d, er, sequenceLength, routerX + r0 * d * actBytes, act, d, dLogits + r0 * er * actBytes, act,
                        er, gateGrads[gate], gradType, d, true);
            }
            mark("backward: router");
            return dx;
        }
        // dx += dlogits · router (or, pre-gating, dRouterX = dlogits · router);  drouter[E, D] = dlogitsᵀ · routerX
        if (routerX == x) {
            ctx.blas.matmul(ctx.stream, false, false, d, tokens, er, router, act, d, dLogits, act, er, dx, act, d, true);
        } else {
            dRouterX = keep(backwardBlocks, (long) tokens * d * actBytes);
            ctx.blas.matmul(ctx.stream, false, false, d, tokens, er, router, act, d, dLogits, act, er, dRouterX, act, d, false);
        }
        ctx.blas.matmul(ctx.stream, false, true, d, er, tokens, routerX, act, d, dLogits, act, er, dRouter, gradType, d, accumulateGrads);
        if (residualFrom != null) {
            int ep = residualFrom.spec.routed();
            if (residualFrom.dLogitsIn == 0 || residualFrom.tokens != tokens) {
                throw new IllegalStateException("the gating residual's previous layer has not run its forward since setResidualFrom");
            }
            // the previous layer's incoming logit gradient += dLogits · G;  dG += dLogitsᵀ · previous logits (fp32)
            ctx.blas.matmul(ctx.stream, false, false, ep, tokens, er, residualG, Type.F32, ep, dLogits32, Type.F32, er, residualFrom.dLogitsIn,
                    Type.F32, ep, true);
            ctx.blas.matmul(ctx.stream, false, true, ep, er, tokens, residualFrom.logits, Type.F32, ep, dLogits32, Type.F32, er, residualDG,
                    Type.F32, ep, true);
        }
        mark("backward: router");
        return dx;
    }

    private static Object[] concat(Object[] a, Object[] b) {
        Object[] out = java.util.Arrays.copyOf(a, a.length + b.length);
        System.arraycopy(b, 0, out, a.length, b.length);
        return out;
    }

    /**
     * Ranks the routed rows {@code idx[0, n)} by expert in token order and counts them per expert, for experts below
     * {@code experts}; with {@code keep} (non-zero) only the kept rows, a dropped row's rank set to -1.
     */
    private void rankRows(long idx, long keep, int n, int experts, long rank, long counts) {
        rankRows(ctx, source, idx, keep, n, experts, keep(saved, rankScratchBytes(n, experts)), rank, counts);
    }

    /** The bytes of scratch {@link #rankRows(CudaContext, String, long, long, int, int, long, long, long)} needs. */
    static long rankScratchBytes(int n, int experts) {
        return (long) experts * ceilDiv(n, RANK_TILE) * 4;
    }

    /** The rank kernels of a layer's {@code source} (any MoE layer's), with {@code scratch} of {@link #rankScratchBytes} bytes. */
    static void rankRows(CudaContext ctx, String source, long idx, long keep, int n, int experts, long scratch, long rank, long counts) {
        int tiles = ceilDiv(n, RANK_TILE);
        ctx.launch(ctx.kernel(source, "rank_tile_counts"), "rank_tile_counts", tiles, 1, RANK_TILE, 0, idx, keep, n, experts, tiles, scratch);
        ctx.launch(ctx.kernel(source, "rank_tile_scan"), "rank_tile_scan", experts, 1, THREADS, 0, scratch, tiles, counts);
        ctx.launch(ctx.kernel(source, "rank_tile_ranks"), "rank_tile_ranks", tiles, 1, RANK_TILE, 0, idx, keep, n, experts, tiles, scratch, rank);
    }

    private void freeCountsHost() {
        if (countsHost != null) {
            ctx.driver.freeHost(countsHost);
            countsHost = null;
        }
    }

    /** Queues driver work other than a launch or a product: a step of the graph while recording, else at once. */
    private void queue(Runnable work, Object... args) {
        if (graph != null && graph.recording()) {
            graph.step(work, args);
        } else {
            work.run();
        }
    }

    /** The routing graph, for tests and benchmarks (null with graphs off). */
    public LaunchGraph routingGraph() {
        return graph;
    }

    private void launch(String kernel, int grid, int block, Object... args) {
        MemorySegment fn = ctx.kernel(source, kernel);
        ctx.launch(fn, kernel, grid, 1, block, 0, args);
    }

    private int elementwiseGrid(long n) {
        return (int) Math.min(ceilDiv(n, THREADS), (long) ctx.multiprocessors * 16);
    }

    static int ceilDiv(long a, long b) {
        return (int) ((a + b - 1) / b);
    }

    static void release(List<DeviceAllocator.Block> blocks) {
        for (DeviceAllocator.Block b : blocks) {
            b.close();
        }
        blocks.clear();
    }

    @Override
    public void close() {
        if (graph != null) {
            graph.close();
        }
        freeCountsHost();
        release(saved);
        release(backwardBlocks);
        release(gateBlocks);
        for (DeviceAllocator.Block b : new DeviceAllocator.Block[] {inAct, dOutAct, routerInAct, rowOrderBlock}) {
            if (b != null) {
                b.close();
            }
        }
        for (DeviceAllocator.Block b : new DeviceAllocator.Block[] {routerBlock, biasBlock, w13Block, w2Block, dRouterBlock, dW13Block, dW2Block,
            cvBlock, wcBlock, dCvBlock, dWcBlock}) {
            if (b != null) {
                b.close();
            }
        }
        for (ReservedMemory r : new ReservedMemory[] {w13Copies, w2Copies}) {
            if (r != null) {
                r.close();
            }
        }
    }
}
