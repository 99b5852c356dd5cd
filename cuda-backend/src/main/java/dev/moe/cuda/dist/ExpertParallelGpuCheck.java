package dev.moe.cuda.dist;

import dev.moe.cuda.Bf16;
import dev.moe.cuda.CudaContext;
import dev.moe.cuda.CudaMoeLayer;
import dev.moe.cuda.DeviceAllocator;
import dev.moe.cuda.kernels.MoeKernelSource.Drop;
import dev.moe.cuda.kernels.MoeKernelSource.ExpertActivation;
import dev.moe.cuda.kernels.MoeKernelSource.Options;
import dev.moe.cuda.kernels.MoeKernelSource.Precision;
import dev.moe.cuda.kernels.MoeKernelSource.Score;
import dev.moe.cuda.kernels.MoeKernelSource.Spec;
import dev.moe.cuda.nccl.Communicator;
import dev.moe.cuda.nccl.Nccl;
import dev.moe.cuda.nccl.NcclDeviceExchange;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.Random;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import java.util.concurrent.TimeUnit;

/**
 * The GPU check of expert parallelism on one GPU: for each case, N simulated ranks ({@link SharedDeviceGroup}: a context and a
 * thread each, exchanging by device copies) run an expert-parallel layer ({@link CudaMoeLayer#withExpertStage} with an
 * {@link ExpertParallelStage}), each on its own batch of tokens, and one {@link CudaMoeLayer} holding every expert runs each
 * batch in turn. Every rank's output, input gradient and router gradient must match the reference's on its batch; the router
 * gradient summed over the ranks ({@link DeviceExchange#allReduceSum}) the sum of the reference's, the same bits on every rank;
 * each expert's weight gradients, on the rank that holds it, the sum over the batches of the reference's; the routing (counts
 * per expert) the reference's exactly. Relative error at most 1e-4 in fp32, 2e-2 in bf16. Then, when NCCL loads, a world of one
 * over NCCL ({@link NcclDeviceExchange}). Prints a table; exits 1 on any failure.
 *
 * <pre>
 * java --enable-native-access=ALL-UNNAMED --add-modules jdk.incubator.vector -cp '.device/lib/*' dev.moe.cuda.dist.ExpertParallelGpuCheck
 * </pre>
 */
public final class ExpertParallelGpuCheck {
    private static final long TIMEOUT_MS = 30_000;

    private ExpertParallelGpuCheck() {}

    /** A case: the layer, each rank's tokens, and each rank's experts (null: {@link ExpertPlacement#contiguous}). */
    public record Case(Spec spec, int[] tokens, int[][] experts) {
        public int ranks() {
            return tokens.length;
        }

        public ExpertPlacement placement() {
            return experts == null ? ExpertPlacement.contiguous(spec.experts(), ranks()) : ExpertPlacement.explicit(spec.experts(), experts);
        }

        @Override
        public String toString() {
            Options o = spec.options();
            return String.format("D=%d F=%d E=%d%s k=%d %s%s%s%s R=%d T=%s%s %s", spec.dim(), spec.hidden(), spec.experts(),
                    spec.routed() > spec.experts() ? "+" + spec.zeroExperts() + "z+" + spec.copyExperts() + "c" : "", spec.topK(),
                    spec.score() == Score.SOFTMAX ? "softmax" : "sigmoid", spec.bias() ? " bias" : "",
                    o.activation() == ExpertActivation.SWIGLU ? "" : " " + o.activation().name().toLowerCase(java.util.Locale.ROOT),
                    o.capacityFactor() > 0 ? " cap=" + o.capacityFactor() : "", ranks(), Arrays.toString(tokens).replace(" ", ""),
                    experts == null ? "" : (ExpertOrder.of(placement()).identity() ? " E/rank=" : " permuted E/rank=") + Arrays.stream(experts)
                            .map(e -> String.valueOf(e.length)).reduce((a, b) -> a + "," + b).orElse(""),
                    spec.precision().name().toLowerCase(java.util.Locale.ROOT));
        }
    }

    /**
     * Every case in each precision: 2 and 4 ranks, uneven placements (a rank without experts), k = 1, odd sizes, few tokens; and
     * placements that are not contiguous in rank order (interleaved, balanced-like, with capacity drops, with zero and copy experts).
     */
    public static List<Case> cases() {
        List<Case> out = new ArrayList<>();
        for (Precision p : Precision.values()) {
            out.add(new Case(new Spec(64, 128, 8, 2, Score.SOFTMAX, true, 1f, false, p), new int[] {64, 48}, null));
            // k = 1, odd sizes, sigmoid scores with a bias, a rank of one token. Not normalised: one normalised score is s / s = 1,
            // whose router gradient is zero, so both sides would be rounding noise (fp32 compared noise with noise)
            out.add(new Case(new Spec(40, 24, 8, 1, Score.SIGMOID, false, 2.5f, true, p), new int[] {33, 7, 1, 20}, null));
            // uneven: 5, 1, 0 and 4 experts; E not a power of two
            out.add(new Case(new Spec(48, 80, 10, 3, Score.SOFTMAX, false, 1f, false, p), new int[] {17, 40, 5, 29},
                    new int[][] {{0, 1, 2, 3, 4}, {5}, {}, {6, 7, 8, 9}}));
            // few tokens on rank 0: most experts get none from it; 13 and 3 experts
            out.add(new Case(new Spec(32, 48, 16, 4, Score.SOFTMAX, true, 1f, false, p), new int[] {3, 50},
                    new int[][] {{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12}, {13, 14, 15}}));
            // ungated experts; as many ranks as experts
            out.add(new Case(new Spec(64, 96, 4, 2, Score.SOFTMAX, true, 1f, false, p).with(Options.NONE.withActivation(ExpertActivation.RELU)),
                    new int[] {25, 31, 16, 9}, null));
            out.add(new Case(new Spec(40, 24, 8, 2, Score.SOFTMAX, true, 1f, false, p).with(Options.NONE.withActivation(ExpertActivation.GEGLU)),
                    new int[] {30, 30}, null));
            // MoE++ zero and copy experts: routed slots without rows
            out.add(new Case(new Spec(64, 96, 8, 2, 2, 2, Score.SOFTMAX, true, 1f, false, p), new int[] {40, 21}, null));
            // a capacity factor: each rank drops over its own batch's capacity, as the reference on that batch
            out.add(new Case(new Spec(48, 64, 8, 2, Score.SOFTMAX, true, 1f, false, p).with(Options.NONE.withCapacity(1f, Drop.POSITION)),
                    new int[] {80, 45, 60}, null));
            // placements not contiguous in rank order: the layer sorts its rows by slot (ExpertOrder), the stage's experts are
            // scattered. Interleaved:
            out.add(new Case(new Spec(64, 128, 8, 2, Score.SOFTMAX, true, 1f, false, p), new int[] {64, 48}, new int[][] {{0, 2, 4, 6}, {1, 3, 5, 7}}));
            // as a balanced placement might be: a rank of one expert (7), one of three (0, 5, 6); k = 1, sigmoid with a bias
            out.add(new Case(new Spec(40, 24, 8, 1, Score.SIGMOID, false, 2.5f, true, p), new int[] {33, 7, 1, 20},
                    new int[][] {{2, 4}, {7}, {0, 5, 6}, {1, 3}}));
            // a rank without experts, and capacity drops (per expert id, by routing weight) before the sort by slot
            out.add(new Case(new Spec(48, 64, 8, 2, Score.SOFTMAX, true, 1f, false, p).with(Options.NONE.withCapacity(1f, Drop.PROBABILITY)),
                    new int[] {80, 45, 60}, new int[][] {{5, 1}, {}, {0, 2, 3, 4, 6, 7}}));
            // MoE++ zero and copy experts with the FFN experts' ranges in reverse rank order
            out.add(new Case(new Spec(64, 96, 8, 2, 2, 2, Score.SOFTMAX, true, 1f, false, p), new int[] {40, 21},
                    new int[][] {{4, 5, 6, 7}, {0, 1, 2, 3}}));
        }
        return out;
    }

    /** The worst relative errors of a case, the (rank, expert) pairs that sent no rows, and whether it passed. */
    public record Outcome(double out, double dx, double dRouter, double dRouterSum, double dGateUp, double dDown, int emptyPairs, boolean pass) {}

    private record Inputs(float[] router, float[] bias, float[] gateUp, float[] down, float[][] x, float[][] dOut) {}

    private static Inputs inputs(Case c, long seed) {
        Spec s = c.spec();
        int d = s.dim(), f = s.hidden(), e = s.experts(), er = s.routed();
        int gw = s.options().activation().gated ? 2 * f : f;
        boolean bf16 = s.precision() == Precision.BF16;
        Random rnd = new Random(seed);
        float[] router = gaussian(rnd, er * d, (float) (1 / Math.sqrt(d)), bf16);
        float[] bias = s.bias() ? gaussian(rnd, er, 0.05f, false) : null;
        float[] gateUp = gaussian(rnd, e * gw * d, (float) (1 / Math.sqrt(d)), bf16);
        float[] down = gaussian(rnd, e * d * f, (float) (1 / Math.sqrt(f)), bf16);
        float[][] x = new float[c.ranks()][], dOut = new float[c.ranks()][];
        for (int r = 0; r < c.ranks(); r++) {
            x[r] = gaussian(rnd, c.tokens()[r] * d, 1f, bf16);
            dOut[r] = gaussian(rnd, c.tokens()[r] * d, 1f, bf16);
        }
        return new Inputs(router, bias, gateUp, down, x, dOut);
    }

    /** What one rank (or the reference on one batch) computed. */
    private record Result(float[] out, float[] dx, float[] dRouter, float[] dRouterSum, float[] gateUp, float[] down, int[] counts) {}

    /**
     * Runs case {@code c} with rank r on {@code contexts[r]} exchanging through {@code exchanges[r]}, against the reference on
     * {@code refCtx}.
     */
    public static Outcome check(CudaContext refCtx, CudaContext[] contexts, DeviceExchange[] exchanges, Case c, long seed) throws Exception {
        Spec s = c.spec();
        int n = c.ranks(), d = s.dim(), e = s.experts(), f = s.hidden();
        int gw = s.options().activation().gated ? 2 * f : f;
        Inputs in = inputs(c, seed);
        ExpertPlacement placement = c.placement();

        // the reference: every expert on one layer, each batch in turn; its expert gradients summed over the batches
        Result[] ref = new Result[n];
        double[] refGateUp = new double[e * gw * d], refDown = new double[e * d * f], refRouterSum = new double[s.routed() * d];
        refCtx.makeCurrent();
        try (CudaMoeLayer layer = new CudaMoeLayer(refCtx, s, false)) {
            layer.setWeights(in.router(), in.bias(), in.gateUp(), in.down());
            for (int r = 0; r < n; r++) {
                ref[r] = run(refCtx, layer, null, null, c.tokens()[r], in.x()[r], in.dOut()[r]);
                add(refGateUp, layer.gateUpGrad());
                add(refDown, layer.downGrad());
                add(refRouterSum, ref[r].dRouter());
            }
        }

        // the ranks: layers built here (their kernels compiled or loaded one at a time), run on a thread each
        CudaMoeLayer[] layers = new CudaMoeLayer[n];
        ExpertParallelStage[] stages = new ExpertParallelStage[n];
        Result[] got = new Result[n];
        ExecutorService pool = Executors.newFixedThreadPool(n);
        try {
            for (int r = 0; r < n; r++) {
                contexts[r].makeCurrent();
                stages[r] = new ExpertParallelStage(contexts[r], s, placement, exchanges[r], false);
                stages[r].setWeights(in.gateUp(), in.down());
                layers[r] = CudaMoeLayer.withExpertStage(contexts[r], s, false, stages[r]);
                layers[r].setRouterWeights(in.router(), in.bias());
            }
            List<Future<Result>> futures = new ArrayList<>();
            for (int r = 0; r < n; r++) {
                int rank = r;
                futures.add(pool.submit(() -> {
                    contexts[rank].makeCurrent();
                    return run(contexts[rank], layers[rank], stages[rank], exchanges[rank], c.tokens()[rank], in.x()[rank], in.dOut()[rank]);
                }));
            }
            for (int r = 0; r < n; r++) {
                got[r] = futures.get(r).get(2 * TIMEOUT_MS, TimeUnit.MILLISECONDS);
            }
        } finally {
            pool.shutdownNow();
            for (int r = 0; r < n; r++) {
                if (layers[r] != null) {
                    layers[r].close();
                }
                if (stages[r] != null) {
                    stages[r].close();
                }
            }
        }

        double out = 0, dx = 0, dRouter = 0, dRouterSum = 0;
        boolean sameRouting = true, sameSums = true;
        int emptyPairs = 0;
        float[][] gateUpShards = new float[n][], downShards = new float[n][];
        for (int r = 0; r < n; r++) {
            out = Math.max(out, rel(got[r].out(), ref[r].out()));
            dx = Math.max(dx, rel(got[r].dx(), ref[r].dx()));
            dRouter = Math.max(dRouter, rel(got[r].dRouter(), ref[r].dRouter()));
            dRouterSum = Math.max(dRouterSum, rel(got[r].dRouterSum(), refRouterSum));
            sameSums &= Arrays.equals(got[r].dRouterSum(), got[0].dRouterSum());
            sameRouting &= Arrays.equals(got[r].counts(), ref[r].counts());
            for (int ex = 0; ex < e; ex++) {
                emptyPairs += ref[r].counts()[ex] == 0 ? 1 : 0;
            }
            gateUpShards[r] = got[r].gateUp();
            downShards[r] = got[r].down();
        }
        float[] gateUp = ExpertShards.assemble(gateUpShards, gw * d, placement);
        float[] down = ExpertShards.assemble(downShards, d * f, placement);
        // each expert on its own: a small expert's error is not hidden by a large one's norm
        double dGateUp = 0, dDown = 0;
        for (int ex = 0; ex < e; ex++) {
            dGateUp = Math.max(dGateUp, rel(Arrays.copyOfRange(gateUp, ex * gw * d, (ex + 1) * gw * d), Arrays.copyOfRange(refGateUp, ex * gw * d,
                    (ex + 1) * gw * d)));
            dDown = Math.max(dDown, rel(Arrays.copyOfRange(down, ex * d * f, (ex + 1) * d * f), Arrays.copyOfRange(refDown, ex * d * f, (ex + 1) * d * f)));
        }
        double tol = s.precision() == Precision.BF16 ? 2e-2 : 1e-4;
        boolean pass = sameRouting && sameSums && out <= tol && dx <= tol && dRouter <= tol && dRouterSum <= tol && dGateUp <= tol && dDown <= tol;
        return new Outcome(out, dx, dRouter, dRouterSum, dGateUp, dDown, emptyPairs, pass);
    }

    /**
     * Forward and backward of one batch on {@code layer}; with an exchange, also the router gradient summed over the ranks and the
     * stage's experts' gradients (else the layer's own are the caller's to read).
     */
    private static Result run(CudaContext ctx, CudaMoeLayer layer, ExpertParallelStage stage, DeviceExchange exchange, int tokens, float[] x,
            float[] dOut) {
        int d = layer.spec.dim();
        try (DeviceAllocator.Block xd = layer.allocateActivations((long) tokens * d);
                DeviceAllocator.Block gd = layer.allocateActivations((long) tokens * d)) {
            layer.upload(x, xd.pointer);
            layer.upload(dOut, gd.pointer);
            float[] out = layer.download(layer.forward(xd.pointer, tokens), tokens * d);
            int[] counts = Arrays.copyOf(layer.lastCounts(), layer.spec.experts());
            float[] dx = layer.download(layer.backward(gd.pointer), tokens * d);
            float[] dRouter = layer.routerGrad();
            if (exchange == null) {
                return new Result(out, dx, dRouter, null, null, null, counts);
            }
            float[] sum;
            try (DeviceAllocator.Block b = ctx.allocator.allocate(4L * dRouter.length)) {
                ctx.upload(dRouter, b.pointer);
                exchange.allReduceSum(b.pointer, dRouter.length);
                sum = ctx.downloadFloats(b.pointer, dRouter.length);
            }
            return new Result(out, dx, dRouter, sum, stage.gateUpGrad(), stage.downGrad(), counts);
        }
    }

    private static void add(double[] into, float[] v) {
        for (int i = 0; i < v.length; i++) {
            into[i] += v[i];
        }
    }

    private static float[] gaussian(Random rnd, int n, float std, boolean roundToBf16) {
        float[] out = new float[n];
        for (int i = 0; i < n; i++) {
            float v = (float) (rnd.nextGaussian() * std);
            out[i] = roundToBf16 ? Bf16.round(v) : v;
        }
        return out;
    }

    private static double rel(float[] got, float[] want) {
        double[] w = new double[want.length];
        for (int i = 0; i < w.length; i++) {
            w[i] = want[i];
        }
        return rel(got, w);
    }

    /** ‖got − want‖ / ‖want‖, or the absolute norm when {@code want} is zero (an expert that got no rows must get zeros). */
    static double rel(float[] got, double[] want) {
        if (got.length != want.length) {
            return Double.POSITIVE_INFINITY;
        }
        double num = 0, den = 0;
        for (int i = 0; i < want.length; i++) {
            double diff = got[i] - want[i];
            num += diff * diff;
            den += want[i] * want[i];
        }
        return den == 0 ? Math.sqrt(num) : Math.sqrt(num / den);
    }

    public static void main(String[] args) throws Exception {
        int failures = 0, total = 0;
        int maxRanks = cases().stream().mapToInt(Case::ranks).max().orElse(1);
        CudaContext refCtx = new CudaContext(0);
        CudaContext[] contexts = new CudaContext[maxRanks];
        for (int r = 0; r < maxRanks; r++) {
            contexts[r] = new CudaContext(0);
        }
        System.out.printf("Expert parallelism on %s (%s): simulated ranks on one GPU against one layer holding every expert%n", refCtx.deviceName,
                refCtx.arch);
        String header = String.format("%-78s %9s %9s %9s %9s %9s %9s %6s  %s", "case", "out", "dx", "dRouter", "ΣdRouter", "dGateUp", "dDown", "empty", "");
        System.out.println(header);
        long seed = 1;
        for (Case c : cases()) {
            SharedDeviceGroup group = new SharedDeviceGroup(c.ranks(), TIMEOUT_MS);
            DeviceExchange[] exchanges = new DeviceExchange[c.ranks()];
            for (int r = 0; r < c.ranks(); r++) {
                exchanges[r] = group.rank(r, contexts[r]);
            }
            long caseSeed = seed++;
            failures += report(c, () -> check(refCtx, Arrays.copyOf(contexts, c.ranks()), exchanges, c, caseSeed));
            total++;
        }
        // a world of one over NCCL: the same layer, its exchanges through ncclSend/ncclRecv to itself and ncclAllReduce
        Communicator comm = null;
        try {
            refCtx.makeCurrent();
            Nccl nccl = Nccl.get();
            comm = nccl.initRank(1, nccl.uniqueId(), 0);
        } catch (RuntimeException | LinkageError ex) {
            System.out.println("NCCL world of one: skipped, NCCL did not start (" + ex.getMessage() + ")");
        }
        if (comm != null) {
            try (Communicator open = comm) {
                for (Precision p : Precision.values()) {
                    Case c = new Case(new Spec(48, 80, 10, 3, Score.SOFTMAX, true, 1f, false, p), new int[] {37}, null);
                    DeviceExchange[] one = {new NcclDeviceExchange(contexts[0], open, Duration.ofSeconds(60))};
                    long caseSeed = seed++;
                    System.out.print("NCCL ");
                    failures += report(c, () -> check(refCtx, new CudaContext[] {contexts[0]}, one, c, caseSeed));
                    total++;
                }
            }
        }
        System.out.printf("%d of %d cases passed (tolerance 1e-4 fp32, 2e-2 bf16)%n", total - failures, total);
        for (CudaContext ctx : contexts) {
            ctx.close();
        }
        refCtx.close();
        System.exit(failures == 0 ? 0 : 1);
    }

    private interface Run {
        Outcome run() throws Exception;
    }

    /** Prints a case's line; 1 when it failed. */
    private static int report(Case c, Run run) {
        try {
            Outcome o = run.run();
            System.out.printf("%-78s %9.2e %9.2e %9.2e %9.2e %9.2e %9.2e %6d  %s%n", c, o.out(), o.dx(), o.dRouter(), o.dRouterSum(), o.dGateUp(),
                    o.dDown(), o.emptyPairs(), o.pass() ? "ok" : "FAIL");
            return o.pass() ? 0 : 1;
        } catch (Exception | Error ex) {
            System.out.printf("%-78s FAIL: %s%n", c, ex);
            ex.printStackTrace(System.out);
            return 1;
        }
    }
}
