package dev.moe.cuda.model;

import dev.moe.cuda.CudaContext;
import dev.moe.cuda.DeviceAllocator;
import dev.moe.cuda.DeviceOps;
import dev.moe.cuda.ReservedMemory;
import dev.moe.cuda.Runs;
import dev.moe.runtime.Parameter;
import dev.moe.runtime.train.AdamW;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/**
 * A device-resident model's parameters: one fp32 arena each for the values, the gradients and
 * (once training starts) AdamW's two moments, every parameter at the same offset in all four, so
 * that AdamW, the gradient norm and clipping run over contiguous ranges. The host {@link Parameter}s
 * stay the master copy for checkpoints: {@link #uploadValues()} and {@link #pullToHost} move the
 * whole arena in one copy through a pinned staging buffer.
 *
 * <p>Callers may ask for some parameters to be contiguous in a given order (an MoE layer's experts
 * are packed as the GPU layer expects: gate and up rows of expert 0, of expert 1, ..., then the
 * down projections); the others follow in the model's order.
 */
public final class DeviceWeights implements AutoCloseable {
    private final CudaContext ctx;
    private final DeviceOps ops;
    /** The parameters in arena order, and their float offsets there. */
    private final List<Parameter> order = new ArrayList<>();
    private final Map<String, Long> offsets = new HashMap<>();
    private final long floats;
    private final Storage values;
    private final Storage grads;
    private final DeviceAllocator.Block scalar;
    private Storage first;
    private Storage second;
    /**
     * Float runs {start, end} of the arena that are backed on this device: all of it, unless {@link #keepExpertsOnly} gave back
     * the experts other ranks hold. Every whole-arena operation works on these runs only.
     */
    private List<long[]> resident;
    /** The float runs of experts held by one rank each (empty unless {@link #keepExpertsOnly}), and those this rank holds. */
    private List<long[]> sharded = List.of();
    private List<long[]> localSharded = List.of();
    /** Sums a value over the ranks (the sharded experts' share of the gradient norm). */
    private java.util.function.DoubleUnaryOperator overRanks;
    private ExpertGather gather;
    private AdamW moments;
    private MemorySegment staging;

    /**
     * @param parameters the model's parameters (names unique)
     * @param placedFirst names to lay out first, contiguously, in this order
     */
    public DeviceWeights(CudaContext ctx, DeviceOps ops, List<Parameter> parameters, List<String> placedFirst) {
        this.ctx = ctx;
        this.ops = ops;
        Map<String, Parameter> byName = new LinkedHashMap<>();
        for (Parameter p : parameters) {
            if (byName.put(p.name(), p) != null) {
                throw new IllegalArgumentException("two parameters named " + p.name());
            }
        }
        long at = 0;
        for (String name : placedFirst) {
            Parameter p = byName.remove(name);
            if (p == null) {
                throw new IllegalArgumentException("no parameter " + name + " to place");
            }
            at = place(p, at);
        }
        for (Parameter p : byName.values()) {
            at = place(p, at);
        }
        floats = Math.max(at, 1);
        resident = List.of(new long[] {0, floats});
        // reserved addresses where the GPU supports them, so that expert parallelism can give back other ranks' experts later
        // without moving any parameter (the generated model holds their addresses)
        boolean reserve = ReservedMemory.supported(ctx);
        values = Storage.allocate(ctx, floats * 4, reserve);
        grads = Storage.allocate(ctx, floats * 4, reserve);
        scalar = ctx.allocator.allocate(16);
        ctx.driver.memsetZero(grads.pointer, floats * 4, ctx.stream);
    }

    /**
     * An arena's memory: a {@link ReservedMemory} whose pages can be given back, or (on a GPU without virtual memory management)
     * one allocation.
     */
    private record Storage(long pointer, ReservedMemory reserved, DeviceAllocator.Block block) implements AutoCloseable {
        static Storage allocate(CudaContext ctx, long bytes, boolean reserve) {
            if (reserve) {
                ReservedMemory r = new ReservedMemory(ctx, bytes);
                return new Storage(r.pointer, r, null);
            }
            DeviceAllocator.Block b = ctx.allocator.allocate(bytes);
            return new Storage(b.pointer, null, b);
        }

        long backedBytes() {
            return reserved != null ? reserved.backedBytes() : block.bytes;
        }

        @Override
        public void close() {
            if (reserved != null) {
                reserved.close();
            } else {
                block.close();
            }
        }
    }

    /**
     * Fills, in a host copy of an arena ({@code staging}, the arena's layout), the experts this rank does not hold, from the
     * device arena at {@code arena} on every rank (a collective: every rank calls it, in the same order).
     */
    public interface ExpertGather {
        void fill(long arena, MemorySegment staging);
    }

    /**
     * Gives back the memory of the experts that other ranks hold (expert parallelism): {@code experts} are the float runs of every
     * expert that one rank holds alone, {@code local} those of this rank's experts (a subset). The other experts' addresses stay
     * reserved but unbacked; values, gradients and AdamW's moments are kept for the rest only, so the values must be uploaded
     * again (the model's next forward does) and the gradients start at zero. The gradient norm adds the sharded experts' share
     * over the ranks with {@code overRanks}; {@link #pullToHost} fills the other experts with {@code gather}. Once, before the
     * optimiser's first step.
     */
    public void keepExpertsOnly(List<long[]> experts, List<long[]> local, java.util.function.DoubleUnaryOperator overRanks, ExpertGather gather) {
        if (values.reserved() == null) {
            throw new IllegalStateException(ctx.deviceName + " cannot give back parts of an allocation (no virtual memory management)");
        }
        if (first != null || !sharded.isEmpty()) {
            throw new IllegalStateException("experts are given back once, before the optimiser's first step");
        }
        List<long[]> expertRuns = Runs.union(experts);
        List<long[]> localRuns = Runs.union(local);
        if (!Runs.subtract(localRuns, expertRuns).isEmpty()) {
            throw new IllegalArgumentException("this rank's experts must be among the sharded experts");
        }
        for (long[] r : expertRuns) {
            if (r[0] < 0 || r[1] > floats) {
                throw new IllegalArgumentException("expert run [" + r[0] + ", " + r[1] + ") outside an arena of " + floats + " floats");
            }
        }
        List<long[]> keep = Runs.subtract(List.of(new long[] {0, floats}), Runs.subtract(expertRuns, localRuns));
        ctx.synchronize();
        values.reserved().backOnly(Runs.scale(keep, 4));
        grads.reserved().backOnly(Runs.scale(keep, 4));
        resident = keep;
        sharded = expertRuns;
        localSharded = localRuns;
        this.overRanks = overRanks;
        this.gather = gather;
        zeroGrads();
    }

    /** Whether {@link #keepExpertsOnly} gave back other ranks' experts. */
    public boolean expertsSharded() {
        return !sharded.isEmpty();
    }

    /** The float runs every rank holds (the arena without the sharded experts), as {start, end}. */
    public List<long[]> replicatedRuns() {
        return Runs.subtract(List.of(new long[] {0, floats}), sharded);
    }

    /**
     * Device bytes of the arenas a training step needs: values, gradients and AdamW's two moments (before the first step, which
     * allocates the moments, counted as the values' bytes each, which they will take).
     */
    public long trainingBytes() {
        long moments = first != null ? first.backedBytes() + second.backedBytes() : 2 * values.backedBytes();
        return values.backedBytes() + grads.backedBytes() + moments;
    }

    /** Device bytes the arenas (values, gradients and, once allocated, AdamW's moments) hold. */
    public long backedBytes() {
        long sum = 0;
        for (Storage s : new Storage[] {values, grads, first, second}) {
            if (s != null) {
                sum += s.backedBytes();
            }
        }
        return sum;
    }

    private long place(Parameter p, long at) {
        // every parameter starts 16 bytes aligned: cuBLASLt's TF32 and bf16 algorithms refuse operands that do not (a
        // parameter of 30 floats would misalign every one after it); the gaps stay zero in all four arenas
        long start = (at + ALIGN_FLOATS - 1) / ALIGN_FLOATS * ALIGN_FLOATS;
        order.add(p);
        offsets.put(p.name(), start);
        return start + p.size();
    }

    /** Parameters start at multiples of this many floats (16 bytes). */
    private static final long ALIGN_FLOATS = 4;

    private long offset(String name) {
        Long o = offsets.get(name);
        if (o == null) {
            throw new IllegalArgumentException("no parameter " + name);
        }
        return o;
    }

    /** Device address of a parameter's values. */
    public long value(String name) {
        return values.pointer + offset(name) * 4;
    }

    /** Device address of a parameter's gradient (same layout as its values). */
    public long grad(String name) {
        return grads.pointer + offset(name) * 4;
    }

    /** Device address of the gradient arena ({@link #size} floats, every parameter's gradient). */
    public long gradients() {
        return grads.pointer;
    }

    /**
     * The arena cut by owner, as runs of floats {@code [start, end)}: under each layer index the parameters named
     * {@code layers.<index>.} (a layer's consecutive parameters, and the alignment gaps between them, as one run); under -1
     * everything else (other parameters and the gaps between owners). The runs cover the arena exactly once.
     */
    public java.util.SortedMap<Integer, List<long[]>> runsByLayer() {
        List<String> names = new ArrayList<>();
        long[] starts = new long[order.size()], sizes = new long[order.size()];
        for (int i = 0; i < order.size(); i++) {
            names.add(order.get(i).name());
            starts[i] = offsets.get(order.get(i).name());
            sizes[i] = order.get(i).size();
        }
        return runsByLayer(names, starts, sizes, floats);
    }

    /** {@link #runsByLayer()} of parameters {@code names} at {@code starts} (increasing) of {@code sizes}, in an arena of {@code floats}. */
    static java.util.SortedMap<Integer, List<long[]>> runsByLayer(List<String> names, long[] starts, long[] sizes, long floats) {
        java.util.SortedMap<Integer, List<long[]>> runs = new java.util.TreeMap<>();
        List<long[]> owned = new ArrayList<>();
        int current = Integer.MIN_VALUE;
        long[] run = null;
        for (int i = 0; i < names.size(); i++) {
            if (sizes[i] == 0) {
                continue;
            }
            int layer = layerOf(names.get(i));
            long start = starts[i], end = start + sizes[i];
            if (run != null && layer == current) {
                run[1] = end;
                continue;
            }
            run = new long[] {start, end};
            current = layer;
            if (layer >= 0) {
                runs.computeIfAbsent(layer, k -> new ArrayList<>()).add(run);
                owned.add(run);
            }
        }
        // -1: the complement of the layers' runs
        List<long[]> rest = new ArrayList<>();
        long at = 0;
        for (long[] r : owned) {
            if (r[0] > at) {
                rest.add(new long[] {at, r[0]});
            }
            at = r[1];
        }
        if (floats > at) {
            rest.add(new long[] {at, floats});
        }
        runs.put(-1, rest);
        return runs;
    }

    /** The layer index in a parameter name {@code layers.<index>....}, or -1. */
    static int layerOf(String name) {
        if (!name.startsWith("layers.")) {
            return -1;
        }
        int dot = name.indexOf('.', 7);
        try {
            return dot < 0 ? -1 : Integer.parseInt(name.substring(7, dot));
        } catch (NumberFormatException e) {
            return -1;
        }
    }

    /** Floats in the arena: the model's parameters and the alignment gaps between them. */
    public long size() {
        return floats;
    }

    private MemorySegment staging() {
        if (staging == null) {
            staging = ctx.driver.hostAlloc(floats * 4);
        }
        return staging;
    }

    /** Copies every host value to the device (one transfer per resident run). */
    public void uploadValues() {
        MemorySegment host = staging();
        for (Parameter p : order) {
            MemorySegment.copy(p.value(), p.offset(), host, ValueLayout.JAVA_FLOAT, offsets.get(p.name()) * 4, p.size());
        }
        toDevice(values.pointer, host);
        ctx.synchronize();
    }

    private void toDevice(long arena, MemorySegment host) {
        for (long[] r : resident) {
            ctx.driver.copyToDevice(arena + r[0] * 4, host.asSlice(r[0] * 4), (r[1] - r[0]) * 4, ctx.stream);
        }
    }

    /** The resident runs of {@code arena} into {@code host}; other ranks' experts read as zero. */
    private void toHost(MemorySegment host, long arena) {
        if (expertsSharded()) {
            host.fill((byte) 0);
        }
        for (long[] r : resident) {
            ctx.driver.copyToHost(host.asSlice(r[0] * 4), arena + r[0] * 4, (r[1] - r[0]) * 4, ctx.stream);
        }
        ctx.synchronize();
    }

    /**
     * Overwrites every host gradient with the device's (one transfer per resident run); parameters without a gradient array are
     * skipped. Experts another rank holds read as zero.
     */
    public void downloadGrads() {
        MemorySegment host = staging();
        toHost(host, grads.pointer);
        for (Parameter p : order) {
            if (p.grad() != null) {
                MemorySegment.copy(host, ValueLayout.JAVA_FLOAT, offsets.get(p.name()) * 4, p.grad(), p.offset(), p.size());
            }
        }
    }

    public void zeroGrads() {
        for (long[] r : resident) {
            ctx.driver.memsetZero(grads.pointer + r[0] * 4, (r[1] - r[0]) * 4, ctx.stream);
        }
    }

    /** A contiguous arena range of parameters that AdamW treats alike. */
    private record Run(long offset, long size, boolean decay) {}

    /** The trainable parameters (by name, from {@code trainable}) as maximal contiguous runs of equal decay. */
    private List<Run> runs(List<Parameter> trainable, double weightDecay) {
        Map<String, Boolean> decay = new HashMap<>();
        for (Parameter p : trainable) {
            if (p.trainable() && offsets.containsKey(p.name())) {
                decay.put(p.name(), p.shape().length >= 2 && weightDecay > 0);
            }
        }
        List<Run> runs = new ArrayList<>();
        for (Parameter p : order) {
            Boolean d = decay.get(p.name());
            if (d == null || p.size() == 0) {
                continue;
            }
            long o = offsets.get(p.name());
            if (!runs.isEmpty()) {
                Run last = runs.getLast();
                long end = last.offset() + last.size();
                // a run may span the alignment gap before a parameter: its zeros have zero gradients and AdamW leaves them zero
                if (last.decay() == d && end <= o && o - end < ALIGN_FLOATS) {
                    runs.set(runs.size() - 1, new Run(last.offset(), o + p.size() - last.offset(), d));
                    continue;
                }
            }
            runs.add(new Run(o, p.size(), d));
        }
        return runs;
    }

    /** The parts of {@code runs} inside {@code within} (float runs), in order. */
    private static List<Run> restrict(List<Run> runs, List<long[]> within) {
        List<Run> out = new ArrayList<>();
        for (Run r : runs) {
            for (long[] part : Runs.intersect(List.of(new long[] {r.offset(), r.offset() + r.size()}), within)) {
                out.add(new Run(part[0], part[1] - part[0], r.decay()));
            }
        }
        return out;
    }

    /**
     * The trainer's step on the device: the global L2 norm of the trainable parameters' gradients,
     * clipping to {@code maxNorm} (0 = off), then one AdamW update with {@code adam}'s settings and
     * step count; moments live on the device (uploaded from {@code adam} when it is a new optimiser).
     * Returns the norm before clipping, as the CPU trainer does.
     */
    public double clipAndStep(AdamW adam, List<Parameter> trainable, double lr, double maxNorm) {
        List<Run> all = runs(trainable, adam.weightDecay());
        // with sharded experts: the replicated parameters, then this rank's experts, whose squares are added up apart (each rank
        // holds its own experts' gradients, and the ranks' shares are summed)
        List<Run> replicated = expertsSharded() ? restrict(all, replicatedRuns()) : all;
        List<Run> local = expertsSharded() ? restrict(all, localSharded) : List.of();
        if (moments != adam) {
            loadMoments(adam);
        }
        ctx.driver.memsetZero(scalar.pointer, 16, ctx.stream);
        for (Run r : replicated) {
            ops.sumSquares(grads.pointer + r.offset() * 4, r.size(), scalar.pointer);
        }
        for (Run r : local) {
            ops.sumSquares(grads.pointer + r.offset() * 4, r.size(), scalar.pointer + 8);
        }
        List<Run> runs = new ArrayList<>(replicated);
        runs.addAll(local);
        int[] bits = ctx.downloadInts(scalar.pointer, 4);
        double squares = Double.longBitsToDouble(((long) bits[1] << 32) | (bits[0] & 0xffffffffL));
        if (expertsSharded()) {
            squares += overRanks.applyAsDouble(Double.longBitsToDouble(((long) bits[3] << 32) | (bits[2] & 0xffffffffL)));
        }
        double norm = Math.sqrt(squares);
        // clipping scales the gradients inside the AdamW kernel: one pass over them fewer
        float clip = maxNorm > 0 && norm > maxNorm ? (float) (maxNorm / norm) : 1f;
        long step = adam.advance();
        for (Run r : runs) {
            long o = r.offset() * 4;
            ops.adamw(values.pointer + o, grads.pointer + o, first.pointer + o, second.pointer + o, r.size(), adam.beta1(), adam.beta2(),
                    adam.eps(), adam.weightDecay(), lr, step, r.decay(), clip);
        }
        return norm;
    }

    private void loadMoments(AdamW adam) {
        if (first == null) {
            first = Storage.allocate(ctx, floats * 4, values.reserved() != null);
            second = Storage.allocate(ctx, floats * 4, values.reserved() != null);
            if (expertsSharded()) {
                first.reserved().backOnly(Runs.scale(resident, 4));
                second.reserved().backOnly(Runs.scale(resident, 4));
            }
        }
        MemorySegment host = staging();
        for (int which = 0; which < 2; which++) {
            Map<String, float[]> state = which == 0 ? adam.firstMoments() : adam.secondMoments();
            host.fill((byte) 0);
            for (var e : state.entrySet()) {
                Long o = offsets.get(e.getKey());
                if (o != null) {
                    MemorySegment.copy(e.getValue(), 0, host, ValueLayout.JAVA_FLOAT, o * 4, e.getValue().length);
                }
            }
            toDevice((which == 0 ? first : second).pointer, host);
            ctx.synchronize();
        }
        moments = adam;
    }

    /**
     * Copies the device's values into the host parameters and, when {@code adam} is the optimiser stepping here, its moments. With
     * the experts sharded ({@link #keepExpertsOnly}) every rank must call it: the other ranks' experts are gathered (to rank 0).
     */
    public void pullToHost(AdamW adam) {
        MemorySegment host = staging();
        toHost(host, values.pointer);
        if (expertsSharded()) {
            gather.fill(values.pointer, host);
        }
        for (Parameter p : order) {
            MemorySegment.copy(host, ValueLayout.JAVA_FLOAT, offsets.get(p.name()) * 4, p.value(), p.offset(), p.size());
        }
        if (adam != null && adam == moments) {
            for (int which = 0; which < 2; which++) {
                long arena = (which == 0 ? first : second).pointer;
                toHost(host, arena);
                if (expertsSharded()) {
                    gather.fill(arena, host);
                }
                Map<String, float[]> state = which == 0 ? adam.firstMoments() : adam.secondMoments();
                for (var e : state.entrySet()) {
                    Long o = offsets.get(e.getKey());
                    if (o != null) {
                        MemorySegment.copy(host, ValueLayout.JAVA_FLOAT, o * 4, e.getValue(), 0, e.getValue().length);
                    }
                }
            }
        }
    }

    @Override
    public void close() {
        for (Storage s : new Storage[] {values, grads, first, second}) {
            if (s != null) {
                s.close();
            }
        }
        scalar.close();
        if (staging != null) {
            ctx.driver.freeHost(staging);
            staging = null;
        }
    }
}
