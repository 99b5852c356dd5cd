package dev.moe.cuda.model;

import dev.moe.compiler.MoeCompiler;
import dev.moe.compiler.ir.Model;
import dev.moe.cuda.CudaContext;
import dev.moe.cuda.codegen.CudaModelGenerator;
import dev.moe.cuda.dist.DeviceExchange;
import dev.moe.cuda.dist.ExpertPlacement;
import dev.moe.cuda.dist.SharedDeviceGroup;
import dev.moe.cuda.kernels.MoeKernelSource.Precision;
import dev.moe.dsl.SourceFile;
import dev.moe.runtime.Parameter;
import dev.moe.runtime.cpu.CpuBackend;
import dev.moe.runtime.train.AdamW;
import dev.moe.runtime.train.Collective;
import java.nio.charset.StandardCharsets;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.Locale;
import java.util.SortedMap;
import java.util.SplittableRandom;
import java.util.TreeMap;
import java.util.concurrent.CyclicBarrier;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import java.util.concurrent.TimeUnit;

/**
 * The GPU check of {@code moe train --expert-parallel}'s path ({@link DeviceModel#useExpertParallel}): N simulated ranks on one GPU
 * ({@link SharedDeviceGroup}: a context and a thread each), each a generated device model whose MoE layers run their rank's
 * contiguous range of experts from its arena, train three AdamW steps of two micro-batches as the Trainer does (each rank its
 * shard of every batch, its loss weighted by its share, the gradient arena summed over the ranks, the step's expert loads summed),
 * against one device model without expert parallelism that runs every rank's shard in turn into the same gradient arena (so a
 * balance loss or capacity computed per rank's batch is the same on both sides). Checked: every step's loss (1e-4 relative),
 * the first step's expert loads (exactly; a later step's may flip a near-tie, reported), before the sum each rank's gradients of
 * the experts it does not hold (exactly zero), after it every parameter's gradient (per tensor ‖got − want‖ / ‖want‖ within
 * 1e-4) and the same bits on every rank, and the weights after the three steps (within 1e-4, or all but 0.1% of them: AdamW
 * moves a weight whose gradient is rounding noise by about lr either way; the same bits on every rank). A world of one must give
 * the gradients and weights of the model without expert parallelism bit for bit, the losses within 1e-8 ({@code --gpus 1}). Then the same
 * with bf16 experts in worlds of one and two (2e-2; the weights not compared). Then, with the same criteria, placements that are
 * not contiguous in rank order ({@link #permuted}: interleaved, uneven with a rank of one expert and a rank of none), whose
 * layers sort their rows by slot and whose stages read and write each expert at its own place in the arena: fp32 in worlds of
 * two and four, bf16 in a world of two. Every world of several ranks runs twice: every expert on every rank, then each rank's
 * experts only ({@link DeviceModel#useExpertParallel(DeviceExchange, java.util.Map, boolean)}: the other experts' memory given
 * back), where each gradient is compared on the rank that holds it and rank 0's weights and AdamW moments after the gathering
 * {@code pullToHost} (what a checkpoint saves) against the reference's (moments within 1e-3 per tensor); no rank may hold more
 * parameter memory than the model, and a model of 3 MiB experts ({@link #MEMORY_MODEL}) in a world of four must hold under half.
 * Prints a table; exits 1 on any failure.
 *
 * <pre>
 * java --enable-native-access=ALL-UNNAMED --add-modules jdk.incubator.vector -cp '.device/lib/*' dev.moe.cuda.model.ExpertParallelTrainCheck
 * </pre>
 */
public final class ExpertParallelTrainCheck {
    private static final long TIMEOUT_MS = 60_000;
    private static final int BATCH = 5, MICRO = 2, STEPS = 3;
    private static final double TOLERANCE = 1e-4;
    private static final double LR = 1e-3;

    private ExpertParallelTrainCheck() {}

    /**
     * Zero and copy experts beside FFN experts with a shared expert, then a layer of 3 experts under top-1 with an aux-free bias
     * (more ranks than experts at 4 ranks: a rank without experts), and a dense first layer.
     */
    public static final String ZERO_COPY_MODEL = """
            ffn dense = swiglu(hidden: 64)
            moe zc {
              shared 1 x swiglu(hidden: 32)
              routed 6 x swiglu(hidden: 48)
              routed 1 x zero
              routed 1 x copy
              router {
                score softmax
                top_k 2
                normalize true
              }
              balance aux(coef: 0.01, scope: micro_batch)
            }
            moe few {
              routed 3 x gelu(hidden: 40)
              router {
                score softmax
                top_k 1
                bias aux_free(rate: 0.01)
              }
            }
            model EpZeroCopyTiny {
              vocab 97
              context 64
              dim 48
              heads 4
              kv_heads 2
              norm rms(eps: 1e-6)
              position rope(theta: 10000)
              causal true
              layers 4 {
                first 1: attention, dense
                2: attention, few
                rest: attention, zc
              }
            }
            """;

    /**
     * A model whose experts span whole pages (16 experts of 3 MiB per layer), for the memory of keeping each rank's experts only:
     * checked in a world of four, where a rank must hold under half the parameter memory of the model.
     */
    public static final String MEMORY_MODEL = """
            moe wide {
              routed 16 x swiglu(hidden: 1024)
              router {
                score softmax
                top_k 2
                normalize true
              }
            }
            model EpMemory {
              vocab 256
              context 64
              dim 256
              heads 4
              norm rms(eps: 1e-6)
              position rope(theta: 10000)
              causal true
              layers 4 {
                all: attention, wide
              }
            }
            """;

    /** The models the check trains: the mixtral recipe (4 layers of 8 experts) and {@link #ZERO_COPY_MODEL}. */
    public static List<Model> models(Path recipes) {
        List<Model> out = new ArrayList<>(MoeCompiler.compile(recipes.resolve("mixtral.moe")).orThrow().models());
        SourceFile.ReadResult read = SourceFile.decode("ep-zero-copy.moe", ZERO_COPY_MODEL.getBytes(StandardCharsets.UTF_8));
        out.addAll(MoeCompiler.compile(((SourceFile.ReadResult.Ok) read).source()).orThrow().models());
        return out;
    }

    /** The worlds each model is checked in: fp32, and with bf16 experts. */
    public static final int[] RANKS = {1, 2, 4}, BF16_RANKS = {1, 2};
    private static final double BF16_TOLERANCE = 2e-2;

    /**
     * The worlds checked again with placements that are not contiguous in rank order (the layers sort their rows by slot,
     * {@link dev.moe.cuda.dist.ExpertOrder}); a world of one has only the identity.
     */
    public static final int[] PERMUTED_RANKS = {2, 4}, PERMUTED_BF16_RANKS = {2};

    /** Each rank's placement of each MoE layer's experts: contiguous, as {@code moe train --expert-parallel} without a declaration. */
    static SortedMap<Integer, ExpertPlacement> placements(SortedMap<Integer, Integer> expertsByLayer, int ranks) {
        return placements(expertsByLayer, ranks, false);
    }

    /** {@link #placements(SortedMap, int)}, or with {@code permuted} each layer's {@link #permuted} placement. */
    static SortedMap<Integer, ExpertPlacement> placements(SortedMap<Integer, Integer> expertsByLayer, int ranks, boolean permuted) {
        SortedMap<Integer, ExpertPlacement> out = new TreeMap<>();
        expertsByLayer.forEach((l, e) -> out.put(l, permuted ? permuted(e, ranks) : ExpertPlacement.contiguous(e, ranks)));
        return out;
    }

    /**
     * A placement of {@code experts} on {@code ranks} (2 or more) that is not contiguous in rank order, as a recipe's
     * {@code per_rank} lists or a balanced placement ({@code moe placement}) gives: the mixtral layers' 8 experts interleaved on
     * 2 ranks, and on 4 unevenly as a balanced placement might (a rank holding {7}, another {0, 5, 6}); the zero/copy model's 6
     * and 3 experts permuted, with a rank without experts at 4 ranks; otherwise the contiguous ranges in reverse rank order.
     */
    static ExpertPlacement permuted(int experts, int ranks) {
        int[][] lists = switch (experts * 10 + ranks) {
            case 82 -> new int[][] {{0, 2, 4, 6}, {1, 3, 5, 7}};
            case 84 -> new int[][] {{2, 4}, {7}, {0, 5, 6}, {1, 3}};
            case 62 -> new int[][] {{1, 3, 5}, {0, 2, 4}};
            case 64 -> new int[][] {{5}, {0, 3}, {}, {1, 2, 4}};
            case 32 -> new int[][] {{2}, {0, 1}};
            case 34 -> new int[][] {{}, {2}, {0}, {1}};
            default -> {
                ExpertPlacement c = ExpertPlacement.contiguous(experts, ranks);
                int[][] reversed = new int[ranks][];
                for (int r = 0; r < ranks; r++) {
                    reversed[r] = c.expertsOf(ranks - 1 - r);
                }
                yield reversed;
            }
        };
        return ExpertPlacement.explicit(experts, lists);
    }

    /** The names of the expert parameters (gate, up, down) of experts that {@code rank} does not hold under {@code placements}. */
    static List<String> foreignExperts(SortedMap<Integer, ExpertPlacement> placements, int rank, List<String> names) {
        List<String> out = new ArrayList<>();
        for (String n : names) {
            String[] p = n.split("\\.");
            // layers.L.moe.experts.E.(gate|up|down)
            if (p.length == 6 && p[0].equals("layers") && p[2].equals("moe") && p[3].equals("experts") && List.of("gate", "up", "down").contains(p[5])) {
                ExpertPlacement pl = placements.get(Integer.parseInt(p[1]));
                int e = Integer.parseInt(p[4]);
                if (pl != null && e < pl.experts() && pl.rankOf(e) != rank) {
                    out.add(n);
                }
            }
        }
        return out;
    }

    /** Every micro-batch's tokens and targets: [step * MICRO + micro][2][BATCH * seq]. */
    private static int[][][] batches(Model m, int seq) {
        SplittableRandom rng = new SplittableRandom(5);
        int[][][] out = new int[STEPS * MICRO][2][BATCH * seq];
        for (int[][] b : out) {
            for (int i = 0; i < BATCH * seq; i++) {
                b[0][i] = rng.nextInt(m.config().vocab());
                b[1][i] = rng.nextInt(m.config().vocab());
            }
        }
        return out;
    }

    /** What one run (a rank, or the reference) saw: the loss and expert loads of each step, the first step's gradients, the final weights. */
    private record Run(double[] losses, long[][] loads, List<float[]> grads, List<float[]> weights, String foreignNonZero, long parameterBytes,
            List<float[]> moments) {}

    /** AdamW's first and second moment of every parameter (in the host optimiser after pullToHost), first moments first. */
    private static List<float[]> moments(AdamW adam, List<Parameter> ps) {
        List<float[]> out = new ArrayList<>();
        for (java.util.Map<String, float[]> state : List.of(adam.firstMoments(), adam.secondMoments())) {
            for (Parameter p : ps) {
                float[] m = state.get(p.name());
                out.add(m == null ? new float[p.size()] : m.clone());
            }
        }
        return out;
    }

    private static List<float[]> copies(List<Parameter> ps, boolean grads) {
        List<float[]> out = new ArrayList<>();
        for (Parameter p : ps) {
            float[] src = grads ? p.grad() : p.value();
            out.add(src == null ? new float[p.size()] : Arrays.copyOfRange(src, p.offset(), p.offset() + p.size()));
        }
        return out;
    }

    /** The reference: one model, every rank's shard of each micro-batch in turn, into one gradient arena. */
    private static Run reference(DeviceModels.Classes classes, CudaContext ctx, CpuBackend backend, int[][][] data, int seq, int ranks) {
        try (DeviceModel m = classes.create(ctx, backend)) {
            m.initialize(11);
            List<Parameter> ps = m.parameters();
            AdamW adam = new AdamW(ps, 0.9, 0.95, 1e-8, 0.1);
            m.gradientsStayOnDevice(true);
            double[] losses = new double[STEPS];
            long[][] loads = new long[STEPS][];
            List<float[]> grads = null;
            for (int step = 0; step < STEPS; step++) {
                m.setStep(step);
                m.beginStep();
                for (int j = 0; j < MICRO; j++) {
                    int[][] b = data[step * MICRO + j];
                    for (int r = 0; r < ranks; r++) {
                        Collective.Shard s = Collective.Shard.of(BATCH, r, ranks);
                        double weight = (double) s.rows() / BATCH / MICRO;
                        losses[step] += weight * m.forward(Arrays.copyOfRange(b[0], s.from() * seq, s.to() * seq),
                                Arrays.copyOfRange(b[1], s.from() * seq, s.to() * seq), s.rows(), seq);
                        m.backward((float) weight);
                    }
                }
                loads[step] = m.stepLoads();
                m.endStep();
                if (step == 0) {
                    m.w.downloadGrads();
                    grads = copies(ps, true);
                }
                m.clipAndStep(adam, ps, LR, 1.0);
            }
            m.pullToHost(adam);
            return new Run(losses, loads, grads, copies(ps, false), "", m.parameterBytes(), moments(adam, ps));
        }
    }

    /** Sums over the simulated ranks on the host (the loss and the loads, which the Trainer sums through its collective). */
    private static final class HostSums {
        private final CyclicBarrier barrier;
        private final long[][] posted;
        private final double[] postedLoss;

        HostSums(int ranks) {
            barrier = new CyclicBarrier(ranks);
            posted = new long[ranks][];
            postedLoss = new double[ranks];
        }

        private void await() throws Exception {
            barrier.await(TIMEOUT_MS, TimeUnit.MILLISECONDS);
        }

        double sum(int rank, double loss) throws Exception {
            postedLoss[rank] = loss;
            await();
            double s = 0;
            for (double v : postedLoss) {
                s += v;
            }
            await();
            return s;
        }

        long[] sum(int rank, long[] loads) throws Exception {
            posted[rank] = loads;
            await();
            long[] s = new long[loads.length];
            for (long[] p : posted) {
                for (int i = 0; i < s.length; i++) {
                    s[i] += p[i];
                }
            }
            await();
            return s;
        }
    }

    /** The gradient arena's sum through the exchange, as the Trainer's NCCL collective sums it. */
    private record ExchangeCollective(DeviceExchange exchange) implements Collective {
        @Override
        public int rank() {
            return exchange.rank();
        }

        @Override
        public int size() {
            return exchange.size();
        }

        @Override
        public void allReduceSum(float[] values, int offset, int length) {
            throw new UnsupportedOperationException();
        }

        @Override
        public void allReduceSum(double[] values) {
            throw new UnsupportedOperationException();
        }

        @Override
        public void allReduceSum(long[] values) {
            throw new UnsupportedOperationException();
        }

        @Override
        public void allReduceDeviceFloats(long pointer, long count) {
            exchange.allReduceSum(pointer, count);
        }
    }

    /** One rank's three steps, as the Trainer runs them with --expert-parallel. */
    private static Run rank(DeviceModel m, int rank, int ranks, DeviceExchange exchange, SortedMap<Integer, ExpertPlacement> placements, HostSums sums,
            int[][][] data, int seq) throws Exception {
        List<Parameter> ps = m.parameters();
        AdamW adam = new AdamW(ps, 0.9, 0.95, 1e-8, 0.1);
        m.gradientsStayOnDevice(true);
        Collective world = new ExchangeCollective(exchange);
        List<String> foreign = foreignExperts(placements, rank, ps.stream().map(Parameter::name).toList());
        double[] losses = new double[STEPS];
        long[][] loads = new long[STEPS][];
        List<float[]> grads = null;
        String foreignNonZero = "";
        Collective.Shard s = Collective.Shard.of(BATCH, rank, ranks);
        double weight = (double) s.rows() / BATCH / MICRO;
        for (int step = 0; step < STEPS; step++) {
            m.setStep(step);
            m.beginStep();
            double loss = 0;
            for (int j = 0; j < MICRO; j++) {
                int[][] b = data[step * MICRO + j];
                loss += weight * m.forward(Arrays.copyOfRange(b[0], s.from() * seq, s.to() * seq), Arrays.copyOfRange(b[1], s.from() * seq, s.to() * seq),
                        s.rows(), seq);
                m.backward((float) weight);
            }
            if (step == 0) {
                // before the sum: the experts this rank does not hold have exactly zero gradients here
                m.w.downloadGrads();
                for (Parameter p : ps) {
                    if (foreign.contains(p.name())) {
                        for (int i = 0; i < p.size(); i++) {
                            if (p.grad()[p.offset() + i] != 0f) {
                                foreignNonZero = p.name();
                                break;
                            }
                        }
                    }
                }
            }
            m.allReduceGradients(world);
            losses[step] = sums.sum(rank, loss);
            loads[step] = sums.sum(rank, m.stepLoads());
            m.setStepLoads(loads[step]);
            m.endStep();
            if (step == 0) {
                m.w.downloadGrads();
                grads = copies(ps, true);
            }
            m.clipAndStep(adam, ps, LR, 1.0);
        }
        m.pullToHost(adam);
        return new Run(losses, loads, grads, copies(ps, false), foreignNonZero, m.parameterBytes(), moments(adam, ps));
    }

    private static double rel(float[] got, float[] want) {
        double num = 0, den = 0;
        for (int i = 0; i < want.length; i++) {
            double d = (double) got[i] - want[i];
            num += d * d;
            den += (double) want[i] * want[i];
        }
        return den == 0 ? Math.sqrt(num) : Math.sqrt(num / den);
    }

    private static double maxAbs(List<float[]> a, List<float[]> b) {
        double worst = 0;
        for (int i = 0; i < a.size(); i++) {
            for (int j = 0; j < a.get(i).length; j++) {
                worst = Math.max(worst, Math.abs((double) a.get(i)[j] - b.get(i)[j]));
            }
        }
        return worst;
    }

    /** The share of elements whose absolute difference is above {@code tolerance}. */
    static double fractionBeyond(List<float[]> a, List<float[]> b, double tolerance) {
        long beyond = 0, total = 0;
        for (int i = 0; i < a.size(); i++) {
            for (int j = 0; j < a.get(i).length; j++) {
                beyond += Math.abs((double) a.get(i)[j] - b.get(i)[j]) > tolerance ? 1 : 0;
            }
            total += a.get(i).length;
        }
        return total == 0 ? 0 : (double) beyond / total;
    }

    private static boolean sameBits(List<float[]> a, List<float[]> b) {
        for (int i = 0; i < a.size(); i++) {
            if (!Arrays.equals(a.get(i), b.get(i))) {
                return false;
            }
        }
        return true;
    }

    /** One model in a world of {@code ranks}: prints its line, returns 1 on a failure. */
    private static int check(Model model, DeviceModels.Classes classes, CudaContext refCtx, CudaContext[] contexts, int ranks, double tolerance,
            boolean permuted, boolean localOnly, double maxMemory) throws Exception {
        boolean bf16 = refCtx.expertPrecision == Precision.BF16;
        int seq = Math.min(32, model.config().context());
        int[][][] data = batches(model, seq);
        CpuBackend backend = new CpuBackend(2, CpuBackend.VECTOR_API);
        refCtx.makeCurrent();
        Run ref = reference(classes, refCtx, backend, data, seq, ranks);
        List<String> names;
        SortedMap<Integer, ExpertPlacement> placements;
        DeviceModel[] models = new DeviceModel[ranks];
        Run[] got = new Run[ranks];
        SharedDeviceGroup group = new SharedDeviceGroup(ranks, TIMEOUT_MS);
        HostSums sums = new HostSums(ranks);
        ExecutorService pool = Executors.newFixedThreadPool(ranks);
        try {
            DeviceExchange[] exchanges = new DeviceExchange[ranks];
            SortedMap<Integer, ExpertPlacement> pl = null;
            for (int r = 0; r < ranks; r++) {
                contexts[r].makeCurrent();
                models[r] = classes.create(contexts[r], backend);
                models[r].initialize(11);
                exchanges[r] = group.rank(r, contexts[r]);
                pl = placements(models[r].expertsByLayer(), ranks, permuted);
                models[r].useExpertParallel(exchanges[r], pl, localOnly);
            }
            placements = pl;
            names = models[0].parameters().stream().map(Parameter::name).toList();
            List<Future<Run>> futures = new ArrayList<>();
            for (int r = 0; r < ranks; r++) {
                int rank = r;
                SortedMap<Integer, ExpertPlacement> p = pl;
                futures.add(pool.submit(() -> {
                    contexts[rank].makeCurrent();
                    return rank(models[rank], rank, ranks, exchanges[rank], p, sums, data, seq);
                }));
            }
            for (int r = 0; r < ranks; r++) {
                got[r] = futures.get(r).get(10 * TIMEOUT_MS, TimeUnit.MILLISECONDS);
            }
        } finally {
            pool.shutdownNow();
            for (DeviceModel m : models) {
                if (m != null) {
                    m.close();
                }
            }
        }
        double loss = 0;
        for (int step = 0; step < STEPS; step++) {
            loss = Math.max(loss, Math.abs(got[0].losses()[step] - ref.losses()[step]) / Math.abs(ref.losses()[step]));
        }
        // the first step's routing must be the reference's exactly; a later step's may flip a near-tie (an expert's GEMM over
        // every rank's rows rounds differently from one over a shard's), after which the weights are not comparable
        boolean sameLoads = Arrays.equals(got[0].loads()[0], ref.loads()[0]);
        int divergedAt = 0;
        for (int step = 1; step < STEPS && divergedAt == 0; step++) {
            divergedAt = Arrays.equals(got[0].loads()[step], ref.loads()[step]) ? 0 : step + 1;
        }
        String foreign = "";
        boolean ranksAgree = true;
        // With every expert on every rank, all ranks hold the same gradients and weights. With each rank's experts only
        // (localOnly), an expert's gradient is on its owner alone and rank 0's weights are every owner's, gathered by pullToHost:
        // the gradients compared are each tensor's owner's, and every rank must agree on what it holds.
        List<List<String>> foreignOf = new ArrayList<>();
        for (int r = 0; r < ranks; r++) {
            foreignOf.add(localOnly ? foreignExperts(placements, r, names) : List.of());
        }
        List<float[]> grads = new ArrayList<>();
        for (int i = 0; i < names.size(); i++) {
            int owner = 0;
            while (foreignOf.get(owner).contains(names.get(i))) {
                owner++;
            }
            grads.add(got[owner].grads().get(i));
        }
        for (int r = 0; r < ranks; r++) {
            if (!got[r].foreignNonZero().isEmpty() && foreign.isEmpty()) {
                foreign = "rank " + r + " " + got[r].foreignNonZero();
            }
            for (int i = 0; i < names.size(); i++) {
                if (!foreignOf.get(r).contains(names.get(i))) {
                    ranksAgree &= Arrays.equals(got[r].grads().get(i), grads.get(i)) && Arrays.equals(got[r].weights().get(i), got[0].weights().get(i));
                }
            }
            ranksAgree &= Arrays.equals(got[r].losses(), got[0].losses());
        }
        double grad = 0;
        String worst = "";
        for (int i = 0; i < names.size(); i++) {
            double e = rel(grads.get(i), ref.grads().get(i));
            if (e > grad) {
                grad = e;
                worst = names.get(i);
            }
        }
        double weights = maxAbs(got[0].weights(), ref.weights());
        // rank 0's optimiser state, which a checkpoint saves (with each rank's experts only, gathered from their owners): per tensor
        double moments = 0;
        for (int i = 0; i < ref.moments().size(); i++) {
            moments = Math.max(moments, rel(got[0].moments().get(i), ref.moments().get(i)));
        }
        double beyond = fractionBeyond(got[0].weights(), ref.weights(), tolerance);
        // A world of one runs every expert on its one rank: the gradients and weights of the model without expert parallelism, bit
        // for bit (the step's loss is summed in another order on the host, so it may differ in the last bits: 1e-8).
        boolean exactOne = ranks > 1 || (grad == 0 && weights == 0 && loss <= 1e-8);
        // In fp32, AdamW moves a weight whose gradient is rounding noise by about lr either way (its normalised step is the sign of
        // the noise), so as DeviceModelParity does, all but 0.1% of the weights within the tolerance; in bf16 the rounding of the
        // experts' small gradients does that to many weights: not compared.
        // each rank's parameter memory (values, gradients, moments) against the model's: never more, and with each rank's experts only
        // less wherever whole pages (2 MiB) hold nothing but other ranks' experts
        long most = 0;
        for (Run r : got) {
            most = Math.max(most, r.parameterBytes());
        }
        boolean memory = most <= maxMemory * ref.parameterBytes();
        boolean pass = loss <= tolerance && sameLoads && foreign.isEmpty() && ranksAgree && grad <= tolerance
                && (divergedAt > 0 || bf16 || weights <= tolerance || beyond <= 1e-3) && exactOne && memory
                && (divergedAt > 0 || bf16 || moments <= 1e-3);
        System.out.printf(Locale.ROOT, "%-16s %-4s R=%d %-5s %-22s %9.2e %5s %9.2e %-34s %9.2e %8.1e %8.1e %6s %6s %5.2f %s%n", model.name(), bf16 ? "bf16" : "fp32",
                ranks, localOnly ? "local" : "all", (permuted ? "permuted " : "E/rank ") + layout(placements.values().iterator().next()), loss,
                sameLoads ? "same" : "DIFF", grad, abbreviate(worst), weights, beyond, moments,
                foreign.isEmpty() ? "zero" : "NONZERO", ranksAgree ? "same" : "DIFF", (double) most / ref.parameterBytes(), (pass ? "ok" : "FAIL") + (foreign.isEmpty() ? "" : " (" + foreign + ")")
                        + (exactOne ? "" : " (world of one: gradients or weights not bitwise those without expert parallelism)")
                        + (divergedAt > 0 ? " (routing diverged at step " + divergedAt + ": weights not compared)" : ""));
        return pass ? 0 : 1;
    }

    /** How many experts each rank holds, e.g. {@code 3,3,2}. */
    static String layout(ExpertPlacement p) {
        StringBuilder b = new StringBuilder();
        for (int r = 0; r < p.ranks(); r++) {
            b.append(r == 0 ? "" : ",").append(p.localExperts(r));
        }
        return b.toString();
    }

    private static String abbreviate(String s) {
        return s.length() <= 34 ? s : "…" + s.substring(s.length() - 33);
    }

    public static void main(String[] args) throws Exception {
        Path recipes = Path.of(args.length > 0 ? args[0] : "recipes");
        int failures = 0, total = 0;
        int maxRanks = Arrays.stream(RANKS).max().orElse(1);
        CudaContext refCtx = new CudaContext(0);
        CudaContext[] contexts = new CudaContext[maxRanks];
        for (int r = 0; r < maxRanks; r++) {
            contexts[r] = new CudaContext(0);
        }
        System.out.printf("moe train --expert-parallel's path on %s (%s): simulated ranks on one GPU, %d steps of %d micro-batches of %d"
                + " sequences, against one model without expert parallelism on every rank's shard; fp32 within %.0e, bf16 experts within %.0e%n",
                refCtx.deviceName, refCtx.arch, STEPS, MICRO, BATCH, TOLERANCE, BF16_TOLERANCE);
        System.out.printf(Locale.ROOT, "%-16s %-4s %-3s %-5s %-22s %9s %5s %9s %-34s %9s %8s %8s %6s %6s %5s%n", "model", "", "", "holds", "placement (1st layer)",
                "loss", "loads", "grads", "worst tensor", "weights", ">1e-4", "moments", "others", "ranks", "mem");
        for (Model m : models(recipes)) {
            DeviceModels.Classes classes = DeviceModels.compile(m, m.name());
            // fp32 (1e-4), then bf16 experts (2e-2; weights not compared): a model reads its context's precision when built
            for (Precision precision : List.of(Precision.FP32, Precision.BF16)) {
                refCtx.expertPrecision = precision;
                for (CudaContext c : contexts) {
                    c.expertPrecision = precision;
                }
                for (boolean permuted : new boolean[] {false, true}) {
                    int[] worlds = precision == Precision.FP32 ? (permuted ? PERMUTED_RANKS : RANKS) : (permuted ? PERMUTED_BF16_RANKS : BF16_RANKS);
                    for (int ranks : worlds) {
                        // every expert on every rank, then (several ranks) each rank's experts only
                        for (boolean localOnly : ranks > 1 ? new boolean[] {false, true} : new boolean[] {false}) {
                            total++;
                            try {
                                failures += check(m, classes, refCtx, Arrays.copyOf(contexts, ranks), ranks, precision == Precision.FP32 ? TOLERANCE
                                        : BF16_TOLERANCE, permuted, localOnly, 1.0);
                            } catch (Exception | Error ex) {
                                System.out.printf("%-16s %-4s R=%d%s%s FAIL: %s%n", m.name(), precision.name().toLowerCase(Locale.ROOT), ranks,
                                        permuted ? " permuted" : "", localOnly ? " local" : "", ex);
                                ex.printStackTrace(System.out);
                                failures++;
                            }
                        }
                    }
                }
            }
        }
        // memory: a model of 3 MiB experts in a world of four, contiguous and permuted, every expert on every rank and each rank's only
        SourceFile.ReadResult read = SourceFile.decode("ep-memory.moe", MEMORY_MODEL.getBytes(StandardCharsets.UTF_8));
        Model big = MoeCompiler.compile(((SourceFile.ReadResult.Ok) read).source()).orThrow().models().getFirst();
        DeviceModels.Classes bigClasses = DeviceModels.compile(big, big.name());
        refCtx.expertPrecision = Precision.FP32;
        for (CudaContext c : contexts) {
            c.expertPrecision = Precision.FP32;
        }
        int memoryRanks = Math.min(4, contexts.length);
        for (boolean permuted : new boolean[] {false, true}) {
            for (boolean localOnly : new boolean[] {false, true}) {
                total++;
                try {
                    failures += check(big, bigClasses, refCtx, Arrays.copyOf(contexts, memoryRanks), memoryRanks, TOLERANCE, permuted, localOnly,
                            localOnly ? 0.5 : 1.0);
                } catch (Exception | Error ex) {
                    System.out.printf("%-16s fp32 R=%d%s%s FAIL: %s%n", big.name(), memoryRanks, permuted ? " permuted" : "", localOnly ? " local" : "", ex);
                    ex.printStackTrace(System.out);
                    failures++;
                }
            }
        }
        System.out.printf("%d of %d checks passed%n", total - failures, total);
        for (CudaContext ctx : contexts) {
            ctx.close();
        }
        refCtx.close();
        System.exit(failures == 0 ? 0 : 1);
    }

    /** Why a model of the check could not run expert-parallel (a CPU test asks): empty for each of {@link #models}. */
    static java.util.Optional<String> refusal(Model m) {
        return CudaModelGenerator.expertParallelRefusal(m);
    }
}
