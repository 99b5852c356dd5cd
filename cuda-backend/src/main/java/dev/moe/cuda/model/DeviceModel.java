package dev.moe.cuda.model;

import dev.moe.cuda.CublasLt.Type;
import dev.moe.cuda.CudaContext;
import dev.moe.cuda.CudaLoraMoeLayer;
import dev.moe.cuda.CudaMoeLayer;
import dev.moe.cuda.DeviceAllocator;
import dev.moe.cuda.DeviceOps;
import dev.moe.cuda.Runs;
import dev.moe.cuda.dist.DeviceExchange;
import dev.moe.cuda.dist.ExpertParallelStage;
import dev.moe.cuda.dist.ExpertPlacement;
import dev.moe.runtime.Init;
import dev.moe.runtime.Parameter;
import dev.moe.runtime.TrainableModel;
import dev.moe.runtime.train.AdamW;
import dev.moe.runtime.train.Collective;
import dev.moe.runtime.train.DeviceTrainable;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;

/**
 * What every device-resident generated model shares (the classes {@code CudaModelGenerator}
 * writes extend it): the host model it mirrors, the parameter arena, activation buffers sized per
 * batch shape, the matrix products and the {@link TrainableModel} and {@link DeviceTrainable}
 * plumbing. The generated subclass holds the forward and backward passes, written for its model.
 *
 * <p>The host model (the CPU-generated class of the same declaration) owns the parameters, their
 * names, initialisation and checkpoints; the device copy is refreshed from it before a forward
 * pass when the host may have changed (the parameters were handed out or initialised) and the
 * device does not hold newer weights (after {@link #clipAndStep}, until {@link #pullToHost}).
 */
public abstract class DeviceModel implements TrainableModel, DeviceTrainable, AutoCloseable {
    protected final TrainableModel host;
    protected final CudaContext ctx;
    protected final DeviceOps ops;
    protected final DeviceWeights w;
    protected int batch;
    protected int seq;
    protected int rows;
    /** Device {@code int[rows]} token ids and targets of the current batch. */
    protected long tokens;
    protected long targets;
    protected double lastCrossEntropy;
    /** False outside training (evaluation, sampling): routing counts are not accumulated into the step's. */
    protected boolean counting = true;
    private int capacity;
    private final List<DeviceAllocator.Block> activations = new ArrayList<>();
    /** The device holds newer weights than the host (after {@link #clipAndStep}, until {@link #pullToHost}). */
    private boolean deviceAhead;
    /** The host weights may differ from the device's (at first, and after {@link #parameters()} or {@link #initialize}). */
    private boolean hostMayDiffer = true;
    private boolean gradsStay;
    /** The world whose gradient sum the next backward starts layer by layer ({@link #overlapGradientSum}), or null. */
    private Collective overlapWorld;
    private boolean layersSummed;
    private java.util.SortedMap<Integer, List<long[]>> gradientRuns;
    /** With MOE_PROFILE=1: milliseconds per phase (the GPU synchronised at each mark), printed every 10 steps. */
    private final java.util.Map<String, Double> profile = "1".equals(System.getenv("MOE_PROFILE")) ? new java.util.LinkedHashMap<>() : null;
    private long markedAt;
    private int profiledSteps;
    /** The expert-parallel stages of the MoE layers ({@link #useExpertParallel}), empty without. */
    private final List<ExpertParallelStage> stages = new ArrayList<>();
    /** The exchange of {@link #useExpertParallel}, or null. */
    private DeviceExchange exchange;
    private boolean forwarded;
    /** One float for summing the experts' share of the gradient norm over the ranks (local experts only). */
    private DeviceAllocator.Block normScratch;

    protected DeviceModel(CudaContext ctx, TrainableModel host, List<String> placedFirst) {
        this.host = host;
        this.ctx = ctx;
        this.ops = new DeviceOps(ctx);
        this.w = new DeviceWeights(ctx, ops, host.parameters(), placedFirst);
    }

    /** The context of the GPU this model lives on. */
    public final CudaContext cudaContext() {
        return ctx;
    }

    @Override
    public String name() {
        return host.name();
    }

    /** The GPU the model lives on, as the driver names it (e.g. "NVIDIA H200"). */
    public String deviceName() {
        return ctx.deviceName;
    }

    @Override
    public int vocab() {
        return host.vocab();
    }

    @Override
    public int context() {
        return host.context();
    }

    /**
     * Hands out the host parameters, whose values the caller may change (a checkpoint load, an
     * upcycling step): unless the device holds newer weights, the next forward pass uploads them.
     */
    @Override
    public List<Parameter> parameters() {
        if (!deviceAhead) {
            hostMayDiffer = true;
        }
        return host.parameters();
    }

    @Override
    public void initialize(long seed) {
        host.initialize(seed);
        deviceAhead = false;
        hostMayDiffer = true;
    }

    /** Each sequence's data domain (or task), which an MoE of several named gates routes by. */
    protected List<String> domains = List.of();

    @Override
    public void setDomains(List<String> domains) {
        this.domains = domains == null ? List.of() : List.copyOf(domains);
    }

    /** The gate of each of {@code batch} sequences: the one named after its domain, else the first (as the CPU classes choose). */
    protected final int[] gatesOfSequences(String[] gates, int batch) {
        int[] out = new int[batch];
        for (int b = 0; b < batch && b < domains.size(); b++) {
            for (int g = 0; g < gates.length; g++) {
                if (gates[g].equals(domains.get(b))) {
                    out[b] = g;
                    break;
                }
            }
        }
        return out;
    }

    @Override
    public void setTraining(boolean training) {
        counting = training;
    }

    @Override
    public void setMask(boolean[] keep) {
        if (keep != null) {
            throw new UnsupportedOperationException(name() + " on the GPU does not take padding masks yet (use --backend cpu)");
        }
    }

    @Override
    public double lastCrossEntropy() {
        return lastCrossEntropy;
    }

    @Override
    public void beginStep() {
        w.zeroGrads();
        resetStepCounts();
    }

    @Override
    public double forward(int[] inputs, int[] targets, int batch, int seq) {
        if (seq < 1 || seq > context() || batch < 1 || inputs.length < batch * seq || targets.length < batch * seq) {
            throw new IllegalArgumentException("bad batch " + batch + " x " + seq + " (context is " + context() + ")");
        }
        for (int i = 0; i < batch * seq; i++) {
            if (inputs[i] < 0 || inputs[i] >= vocab()) {
                throw new IllegalArgumentException("token " + inputs[i] + " at " + i + " is outside the vocabulary (" + vocab() + ")");
            }
        }
        ctx.makeCurrent();
        forwarded = true;
        if (!deviceAhead && hostMayDiffer) {
            w.uploadValues();
            hostMayDiffer = false;
        }
        this.batch = batch;
        this.seq = seq;
        this.rows = batch * seq;
        if (rows > capacity) {
            for (DeviceAllocator.Block b : activations) {
                b.close();
            }
            activations.clear();
            capacity = rows;
            this.tokens = allocate(rows);
            this.targets = allocate(rows);
            allocateActivations(rows);
        }
        ctx.upload(Arrays.copyOf(inputs, rows), this.tokens);
        ctx.upload(Arrays.copyOf(targets, rows), this.targets);
        mark(null);
        double loss = forwardPass();
        mark("forward: head and loss");
        return loss;
    }

    /** Profiling: charges the GPU time since the previous mark to {@code phase} (null: starts timing). */
    protected final void mark(String phase) {
        if (profile == null) {
            return;
        }
        ctx.synchronize();
        long now = System.nanoTime();
        if (phase != null) {
            profile.merge(phase, (now - markedAt) / 1e6, Double::sum);
        }
        markedAt = now;
    }

    @Override
    public void backward(float scale) {
        ctx.makeCurrent();
        mark(null);
        backwardPass(scale);
        mark("backward: embedding");
        if (!gradsStay) {
            w.downloadGrads();
        }
    }

    @Override
    public float[] lastLogits(int[] inputs, int batch, int seq) {
        boolean training = counting;
        counting = false;
        try {
            forward(inputs, new int[batch * seq], batch, seq);
        } finally {
            counting = training;
        }
        float[] last = new float[batch * vocab()];
        for (int b = 0; b < batch; b++) {
            float[] row = ctx.downloadFloats(logits() + ((long) (b + 1) * seq - 1) * vocab() * 4, vocab());
            System.arraycopy(row, 0, last, b * vocab(), vocab());
        }
        return last;
    }

    @Override
    public void gradientsStayOnDevice(boolean stay) {
        gradsStay = stay;
    }

    @Override
    public double clipAndStep(AdamW adam, List<Parameter> parameters, double lr, double maxNorm) {
        ctx.makeCurrent();
        mark(null);
        double norm = w.clipAndStep(adam, parameters, lr, maxNorm);
        deviceAhead = true;
        mark("clip and AdamW");
        if (profile != null && ++profiledSteps % 10 == 0) {
            double total = profile.values().stream().mapToDouble(Double::doubleValue).sum();
            StringBuilder b = new StringBuilder("moe: GPU time per step over the last 10 steps (ms):");
            profile.forEach((k, v) -> b.append(String.format(java.util.Locale.ROOT, "%n  %-28s %8.2f  %5.1f%%", k, v / 10, 100 * v / total)));
            System.err.println(b);
            profile.clear();
        }
        return norm;
    }

    @Override
    public void allReduceGradients(Collective world) {
        if (world == Collective.SINGLE) {
            return;
        }
        // NCCL's world of one sums too: the one-GPU check runs the real path
        ctx.makeCurrent();
        if (overlapWorld == world && layersSummed) {
            // the layers' gradients are being summed already (layerGradientsDone): the rest, then wait for all
            for (long[] r : gradientRuns().get(-1)) {
                world.startAllReduceDeviceFloats(w.gradients() + 4 * r[0], r[1] - r[0]);
            }
            world.awaitDeviceFloats();
        } else {
            if (w.expertsSharded()) {
                // each expert's gradient is on the rank that holds it, complete: the replicated parameters' only are summed
                for (long[] r : w.replicatedRuns()) {
                    world.allReduceDeviceFloats(w.gradients() + 4 * r[0], r[1] - r[0]);
                }
            } else {
                world.allReduceDeviceFloats(w.gradients(), w.size());
            }
        }
        overlapWorld = null;
        layersSummed = false;
    }

    @Override
    public void overlapGradientSum(Collective world) {
        // gradients copied to the host right after the backward must not race the sums: then the sum waits for allReduceGradients.
        // Expert parallelism's all-to-alls run during the backward over the same ranks: sums on the side stream beside them may
        // only run when the exchange has a communicator of its own (two streams of collectives on one communicator could be
        // ordered differently on different ranks); otherwise the sum waits for the end.
        boolean apart = exchange == null || exchange.apartFromGradientSums();
        overlapWorld = world == Collective.SINGLE || !gradsStay || !apart ? null : world;
        layersSummed = false;
    }

    /**
     * Called by the generated backward pass after layer {@code layer}'s backward has been queued: no later work writes that
     * layer's parameters' gradients (parameters shared by layers are not named after one), so when {@link #overlapGradientSum}
     * asked for it their sum over the ranks starts now, beside the rest of the backward.
     */
    protected final void layerGradientsDone(int layer) {
        if (overlapWorld == null) {
            return;
        }
        for (long[] r : gradientRuns().getOrDefault(layer, List.of())) {
            overlapWorld.startAllReduceDeviceFloats(w.gradients() + 4 * r[0], r[1] - r[0]);
        }
        layersSummed = true;
    }

    private java.util.SortedMap<Integer, List<long[]>> gradientRuns() {
        if (gradientRuns == null) {
            gradientRuns = w.runsByLayer();
            if (w.expertsSharded()) {
                // each rank's experts stay its own: only the replicated parameters are summed
                List<long[]> replicated = w.replicatedRuns();
                gradientRuns.replaceAll((layer, runs) -> Runs.intersect(runs, replicated));
            }
        }
        return gradientRuns;
    }

    @Override
    public void pullToHost(AdamW adam) {
        ctx.makeCurrent();
        if (deviceAhead) {
            w.pullToHost(adam);
            deviceAhead = false;
            hostMayDiffer = false;
        }
    }

    /**
     * The MoE layers of routed FFN experts, by the model's layer index: those whose experts {@link #useExpertParallel} may spread
     * over ranks (the generated class lists them; attention experts and LoRA experts are not among them).
     */
    protected java.util.SortedMap<Integer, CudaMoeLayer> expertLayers() {
        return new java.util.TreeMap<>();
    }

    /** The routed FFN experts of each MoE layer that expert parallelism takes, by the model's layer index. */
    public final java.util.SortedMap<Integer, Integer> expertsByLayer() {
        java.util.SortedMap<Integer, Integer> out = new java.util.TreeMap<>();
        expertLayers().forEach((l, layer) -> out.put(l, layer.spec.experts()));
        return out;
    }

    /**
     * Runs every MoE layer's routed FFN experts expert-parallel over {@code exchange}'s ranks, {@code placements} saying which
     * of each layer's experts (by the model's layer index, every layer of {@link #expertsByLayer}) this rank runs. In this form
     * every rank keeps every expert in its arena: a layer's stage reads its rank's experts there, and the tokens routed to them
     * come from every rank by all-to-all. So an expert's gradient is complete on its owner (the sum over every rank's tokens,
     * each rank's loss weight inside its output gradients) and zero on the other ranks, and the data-parallel sum of the gradient
     * arena ({@link #allReduceGradients}) gives every rank the whole batch's gradient, as without. Every rank calls it, before
     * the first forward pass, and then runs the same passes (the all-to-alls are collective); the gradient sum overlaps the
     * backward only when the exchange has a communicator of its own ({@link DeviceExchange#apartFromGradientSums}).
     */
    public void useExpertParallel(DeviceExchange exchange, java.util.Map<Integer, ExpertPlacement> placements) {
        useExpertParallel(exchange, placements, false);
    }

    /**
     * {@link #useExpertParallel(DeviceExchange, java.util.Map)}, and with {@code localExpertsOnly} each rank keeps only its own
     * experts' weights, gradients and AdamW moments in device memory ({@link DeviceWeights#keepExpertsOnly}; the addresses of the
     * others stay reserved but unbacked): the memory of expert parallelism. Then the gradient sum carries the replicated
     * parameters only, the gradient norm adds the ranks' shares of the experts', and {@link #pullToHost} is collective (every rank
     * calls it; rank 0's host gets every expert). Refused on a GPU without virtual memory management
     * ({@link #canKeepLocalExpertsOnly}).
     */
    public void useExpertParallel(DeviceExchange exchange, java.util.Map<Integer, ExpertPlacement> placements, boolean localExpertsOnly) {
        if (localExpertsOnly && !canKeepLocalExpertsOnly()) {
            throw new IllegalStateException(ctx.deviceName + " cannot give back other ranks' experts (no virtual memory management)");
        }
        if (forwarded || !stages.isEmpty()) {
            throw new IllegalStateException("expert parallelism is set once, before the first forward pass");
        }
        java.util.SortedMap<Integer, CudaMoeLayer> layers = expertLayers();
        if (layers.isEmpty()) {
            throw new IllegalArgumentException(name() + " has no MoE layer of routed FFN experts to run expert-parallel");
        }
        if (!placements.keySet().equals(layers.keySet())) {
            throw new IllegalArgumentException("placements for layers " + new java.util.TreeSet<>(placements.keySet()) + ", but the MoE layers of "
                    + name() + " are " + layers.keySet());
        }
        for (var e : layers.entrySet()) {
            CudaMoeLayer layer = e.getValue();
            if (layer.spec.constantExperts() > 0) {
                throw new IllegalArgumentException("layer " + e.getKey() + "'s MoE++ constant experts do not run expert-parallel");
            }
            if (layer.spec.expertIn() != layer.spec.dim()) {
                throw new IllegalArgumentException("layer " + e.getKey() + "'s latent experts do not run expert-parallel");
            }
            ExpertPlacement p = placements.get(e.getKey());
            if (p.experts() != layer.spec.experts() || p.ranks() != exchange.size()) {
                throw new IllegalArgumentException("layer " + e.getKey() + ": a placement of " + p.experts() + " experts on " + p.ranks()
                        + " ranks, but the layer has " + layer.spec.experts() + " FFN experts and the exchange " + exchange.size() + " ranks");
            }
        }
        ctx.makeCurrent();
        try {
            for (var e : layers.entrySet()) {
                CudaMoeLayer layer = e.getValue();
                ExpertParallelStage stage = ExpertParallelStage.onArena(ctx, layer.spec, placements.get(e.getKey()), exchange, layer.expertWeights());
                stages.add(stage);
                layer.useExpertStage(stage);
            }
            if (localExpertsOnly) {
                keepLocalExperts(exchange, layers, placements);
            }
            this.exchange = exchange;
            gradientRuns = null;
        } catch (RuntimeException ex) {
            stages.forEach(ExpertParallelStage::close);
            stages.clear();
            throw ex;
        }
    }

    /** Whether this GPU can keep only a rank's experts in memory ({@link #useExpertParallel} with {@code localExpertsOnly}). */
    public boolean canKeepLocalExpertsOnly() {
        return dev.moe.cuda.ReservedMemory.supported(ctx);
    }

    /**
     * Device bytes of the parameters when training: values, gradients and AdamW's two moments (counted before the first step
     * allocates them), and in bf16 the experts' bf16 copies.
     */
    public long trainingParameterBytes() {
        long sum = w.trainingBytes();
        for (CudaMoeLayer layer : expertLayers().values()) {
            sum += layer.expertCopyBytes();
        }
        return sum;
    }

    /** Device bytes of the parameter arenas: values, gradients and (once training has stepped) AdamW's moments. */
    public long parameterBytes() {
        long sum = w.backedBytes();
        for (CudaMoeLayer layer : expertLayers().values()) {
            sum += layer.expertCopyBytes(); // bf16 copies of the experts
        }
        return sum;
    }

    /** Where one layer's experts lie in the arena (floats): {@code w13 [E, per13]} from off13, {@code w2 [E, per2]} from off2. */
    private record ExpertRuns(int layer, ExpertPlacement placement, long off13, long per13, long off2, long per2) {}

    private void keepLocalExperts(DeviceExchange exchange, java.util.SortedMap<Integer, CudaMoeLayer> layers, java.util.Map<Integer, ExpertPlacement> placements) {
        List<ExpertRuns> runs = new ArrayList<>();
        List<long[]> all = new ArrayList<>(), local = new ArrayList<>();
        for (var e : layers.entrySet()) {
            CudaMoeLayer layer = e.getValue();
            CudaMoeLayer.ExpertWeights ew = layer.expertWeights();
            long gw = layer.spec.options().activation().gated ? 2L * layer.spec.hidden() : layer.spec.hidden();
            // the gradients are fp32 arena addresses in every precision (the values may be the layer's bf16 copies)
            ExpertRuns r = new ExpertRuns(e.getKey(), placements.get(e.getKey()), (ew.dW13() - w.gradients()) / 4, gw * layer.spec.expertIn(),
                    (ew.dW2() - w.gradients()) / 4, (long) layer.spec.dim() * layer.spec.hidden());
            runs.add(r);
            for (int x = 0; x < layer.spec.experts(); x++) {
                long[] a = {r.off13 + x * r.per13, r.off13 + (x + 1) * r.per13}, b = {r.off2 + x * r.per2, r.off2 + (x + 1) * r.per2};
                all.add(a);
                all.add(b);
                if (r.placement.rankOf(x) == exchange.rank()) {
                    local.add(a);
                    local.add(b);
                }
            }
        }
        DeviceAllocator.Block two = ctx.allocator.allocate(8);
        normScratch = two;
        w.keepExpertsOnly(all, local, value -> {
            // the experts' share of the squared gradient norm, summed over the ranks as two floats (the value and its rounding
            // error: about 48 bits, so that a world of one clips as without expert parallelism)
            float hi = (float) value, lo = (float) (value - hi);
            ctx.upload(new float[] {hi, lo}, two.pointer);
            exchange.allReduceSum(two.pointer, 2);
            int[] bits = ctx.downloadInts(two.pointer, 2);
            return (double) Float.intBitsToFloat(bits[0]) + Float.intBitsToFloat(bits[1]);
        }, (arena, staging) -> gatherExperts(exchange, runs, arena, staging));
        hostMayDiffer = true; // the values' pages were given back and mapped again: upload before the next forward
        // in bf16, the layers' bf16 copies of other ranks' experts go too
        for (int s = 0; s < stages.size(); s++) {
            CudaMoeLayer layer = layers.get(runs.get(s).layer());
            layer.keepExpertCopiesOnly(stages.get(s).weightsRead());
        }
    }

    /** Rank 0's host copy of an arena gets every layer's experts from their ranks, one layer's w13, then its w2, at a time. */
    private void gatherExperts(DeviceExchange exchange, List<ExpertRuns> runs, long arena, java.lang.foreign.MemorySegment staging) {
        int me = exchange.rank(), size = exchange.size();
        for (ExpertRuns r : runs) {
            for (int t = 0; t < 2; t++) {
                long off = t == 0 ? r.off13 : r.off2, per = t == 0 ? r.per13 : r.per2;
                if (per * 4 > Integer.MAX_VALUE) {
                    throw new IllegalStateException("an expert of layer " + r.layer + " is too large to gather in one row");
                }
                int[] mine = r.placement.expertsOf(me);
                int[] send = new int[size], recv = new int[size];
                send[0] = mine.length;
                int received = 0;
                if (me == 0) {
                    for (int s = 0; s < size; s++) {
                        recv[s] = r.placement.localExperts(s);
                        received += recv[s];
                    }
                }
                try (DeviceAllocator.Block out = ctx.allocator.allocate(Math.max(1, mine.length * per) * 4);
                        DeviceAllocator.Block in = ctx.allocator.allocate(Math.max(1, received * per) * 4)) {
                    for (int l = 0; l < mine.length; l++) {
                        ctx.driver.copyOnDevice(out.pointer + l * per * 4, arena + (off + mine[l] * per) * 4, per * 4, ctx.stream);
                    }
                    exchange.allToAllV(out.pointer, send, in.pointer, recv, (int) (per * 4));
                    int row = 0;
                    for (int s = 0; s < size && me == 0; s++) {
                        for (int l = 0; l < recv[s]; l++, row++) {
                            long x = r.placement.globalExpert(s, l);
                            ctx.driver.copyToHost(staging.asSlice((off + x * per) * 4), in.pointer + row * per * 4, per * 4, ctx.stream);
                        }
                    }
                    ctx.synchronize();
                }
            }
        }
    }

    @Override
    public boolean collectivePull() {
        return w.expertsSharded();
    }

    /** Whether {@link #useExpertParallel} was called. */
    public final boolean expertParallel() {
        return !stages.isEmpty();
    }

    /**
     * Copies one host parameter's values to the device (a buffer the model changes on the host,
     * such as an aux-free selection bias).
     */
    protected void uploadParameter(String name) {
        for (Parameter p : host.parameters()) {
            if (p.name().equals(name)) {
                ctx.upload(Arrays.copyOfRange(p.value(), p.offset(), p.offset() + p.size()), w.value(name));
                return;
            }
        }
        throw new IllegalArgumentException("no parameter " + name);
    }

    /** The host parameter's values (for host-side updates of buffers). */
    protected float[] hostValues(String name) {
        for (Parameter p : host.parameters()) {
            if (p.name().equals(name)) {
                return p.value();
            }
        }
        throw new IllegalArgumentException("no parameter " + name);
    }

    /**
     * One projection of a MoLA layer in the arena: the frozen base's {@code base} (gate, up or down) and, for each of
     * {@code experts} LoRA experts, {@code <expertPrefix><e>.<projection>_a} and {@code _b}, with their gradients.
     */
    protected final CudaLoraMoeLayer.Projection loraProjection(String base, String expertPrefix, int experts, String projection) {
        long[] a = new long[experts], dA = new long[experts], b = new long[experts], dB = new long[experts];
        for (int e = 0; e < experts; e++) {
            String p = expertPrefix + e + "." + projection;
            a[e] = w.value(p + "_a");
            dA[e] = w.grad(p + "_a");
            b[e] = w.value(p + "_b");
            dB[e] = w.grad(p + "_b");
        }
        return new CudaLoraMoeLayer.Projection(w.value(base), w.grad(base), a, dA, b, dB);
    }

    /**
     * Router jitter's noise, drawn as the CPU classes draw it ({@code jitter} in the generated class): {@code n} factors uniform in
     * [1 - eps, 1 + eps] from a SplitMix seeded by the optimiser step, the micro-batch (training forwards since beginStep) and the
     * layer. Drawn on the host so that the device model multiplies its router input by the very same floats.
     */
    public static float[] jitterNoise(int n, float eps, long step, int microBatch, int layer) {
        Init.SplitMix rng = new Init.SplitMix(jitterSeed(step, microBatch, layer));
        float[] noise = new float[n];
        for (int i = 0; i < n; i++) {
            noise[i] = (float) (1 - eps + 2 * eps * rng.nextDouble());
        }
        return noise;
    }

    /** The seed of the CPU class's jitter noise for an optimiser step, a micro-batch and a layer ({@code DeviceOps.jitterNoise} draws it). */
    public static long jitterSeed(long step, int microBatch, int layer) {
        return step * 0x9E3779B97F4A7C15L + microBatch * 0xC2B2AE3D27D4EB4FL + layer * 0x165667B19E3779F9L;
    }

    /** A device buffer of {@code floats} floats (or ints), freed when the batch shape grows. */
    protected final long allocate(long floats) {
        DeviceAllocator.Block b = ctx.allocator.allocate(Math.max(floats, 1) * 4);
        activations.add(b);
        return b.pointer;
    }

    /** {@code y[rows, out] (+)= x[rows, in] · W[out, in]ᵀ}, row-major, fp32. */
    protected final void linear(long x, long weight, long y, int rows, int in, int out, boolean accumulate) {
        ctx.blas.matmul(ctx.stream, true, false, out, rows, in, weight, Type.F32, in, x, Type.F32, in, y, Type.F32, out, accumulate);
    }

    /**
     * The backward of {@link #linear}: {@code dx (+)= dy · W} (overwritten unless {@code accumulateDx})
     * and {@code dW += dyᵀ · x}.
     */
    protected final void linearBackward(long x, long weight, long dy, long dx, long dWeight, int rows, int in, int out, boolean accumulateDx) {
        ctx.blas.matmul(ctx.stream, false, false, in, rows, out, weight, Type.F32, in, dy, Type.F32, out, dx, Type.F32, in, accumulateDx);
        ctx.blas.matmul(ctx.stream, false, true, in, out, rows, x, Type.F32, in, dy, Type.F32, out, dWeight, Type.F32, in, true);
    }

    protected final void copy(long dst, long src, long floats) {
        ctx.driver.copyOnDevice(dst, src, floats * 4, ctx.stream);
    }

    protected final void zero(long dst, long floats) {
        ctx.driver.memsetZero(dst, floats * 4, ctx.stream);
    }

    /** Allocates the generated model's activation buffers for {@code rows} rows (with {@link #allocate}). */
    protected abstract void allocateActivations(int rows);

    /** Embedding, layers, head and loss on the device; returns the cross-entropy plus the balancing losses. */
    protected abstract double forwardPass();

    /** The backward of {@link #forwardPass}, adding into the gradient arena; {@code scale} scales the loss. */
    protected abstract void backwardPass(float scale);

    /** Device address of the logits {@code [rows, vocab]} of the last forward pass. */
    protected abstract long logits();

    /** Clears the routing counts accumulated over an optimiser step (global-batch balancing, aux-free bias). */
    protected abstract void resetStepCounts();

    @Override
    public void close() {
        stages.forEach(ExpertParallelStage::close);
        stages.clear();
        if (normScratch != null) {
            normScratch.close();
        }
        for (DeviceAllocator.Block b : activations) {
            b.close();
        }
        activations.clear();
        w.close();
    }
}
