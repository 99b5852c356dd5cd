package dev.moe.cuda.nccl;

import dev.moe.cuda.dist.DispatchPlan;
import dev.moe.cuda.dist.Exchange;
import dev.moe.cuda.dist.ExpertParallelMoe;
import dev.moe.cuda.dist.ExpertPlacement;
import dev.moe.cuda.dist.LocalGroup;
import dev.moe.cuda.dist.ReceiveLayout;
import dev.moe.cuda.kernels.MoeKernelSource.Precision;
import dev.moe.cuda.kernels.MoeKernelSource.Score;
import dev.moe.cuda.kernels.MoeKernelSource.Spec;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.Random;

/**
 * The checks {@link NcclCheck} runs on every rank, written against {@link Exchange} so that the CPU
 * tests run them over {@link LocalGroup} and the GPU run over NCCL. Every rank can regenerate every
 * other rank's inputs from the seed, so each one computes what it must receive without trusting the
 * transport.
 */
public final class ExchangeChecks {
    public record Outcome(String name, boolean pass, String detail) {}

    static final int EXPERTS = 16;
    static final int TOP_K = 3;
    /** An expert no token chooses: its rank runs it on zero rows. */
    static final int UNUSED_EXPERT = 5;

    private ExchangeChecks() {}

    public static List<Outcome> all(Exchange ex, long seed) {
        return List.of(allReduce(ex), dispatch(ex, seed), layer(ex, seed));
    }

    /** Integers small enough that every summation order gives the exact sum. */
    static Outcome allReduce(Exchange ex) {
        int n = 4099, size = ex.size();
        float[] mine = new float[n];
        for (int i = 0; i < n; i++) {
            mine[i] = (ex.rank() + 1) * (i % 97) - i % 5;
        }
        float[] got = ex.allReduceSum(mine);
        int bad = 0;
        for (int i = 0; i < n; i++) {
            float want = (float) (i % 97) * size * (size + 1) / 2 - (float) (i % 5) * size;
            bad += got[i] == want ? 0 : 1;
        }
        return new Outcome("all-reduce of " + n + " floats", bad == 0, bad == 0 ? "exact" : bad + " wrong values");
    }

    /** Tokens on a rank: uneven, and none on rank 1 when there are three ranks or more. */
    static int tokensOf(int rank, int size) {
        return size >= 3 && rank == 1 ? 0 : 40 + 23 * rank;
    }

    /** Rank r's top-k choices: distinct experts, never {@link #UNUSED_EXPERT}. */
    static int[] routingOf(int rank, int size, long seed) {
        Random rnd = new Random(seed * 1_000_003 + rank);
        int tokens = tokensOf(rank, size);
        int[] out = new int[tokens * TOP_K];
        for (int t = 0; t < tokens; t++) {
            List<Integer> pool = new ArrayList<>();
            for (int e = 0; e < EXPERTS; e++) {
                if (e != UNUSED_EXPERT) {
                    pool.add(e);
                }
            }
            for (int s = 0; s < TOP_K; s++) {
                out[t * TOP_K + s] = pool.remove(rnd.nextInt(pool.size()));
            }
        }
        return out;
    }

    /**
     * Counts then rows (source, token, expert, payload) to the experts' ranks; each rank checks it got
     * exactly its experts' rows, expert-major; the rows go back scaled by expert + 1 and each rank checks
     * that every assignment's result is where the plan says.
     */
    static Outcome dispatch(Exchange ex, long seed) {
        int me = ex.rank(), size = ex.size(), width = 4;
        ExpertPlacement placement = ExpertPlacement.contiguous(EXPERTS, size);
        int tokens = tokensOf(me, size);
        int[] choice = routingOf(me, size, seed);
        DispatchPlan plan = DispatchPlan.buildTopK(placement, tokens, TOP_K, choice);
        int block = DispatchPlan.countsBlock(placement);
        ReceiveLayout layout = ReceiveLayout.fromCountsMessage(ex.allToAll(plan.countsMessage(), block), size, block,
                placement.localExperts(me));
        float[] rows = new float[plan.assignments() * width];
        for (int a = 0; a < plan.assignments(); a++) {
            int p = plan.sendPosition(a);
            rows[p * width] = me;
            rows[p * width + 1] = a / TOP_K;
            rows[p * width + 2] = choice[a];
            rows[p * width + 3] = payload(me, a / TOP_K);
        }
        float[] got = layout.toExpertMajor(ex.allToAllV(rows, plan.sendCounts(), layout.recvCounts(), width), width);
        List<Float> want = new ArrayList<>();
        for (int e : placement.expertsOf(me)) {
            for (int s = 0; s < size; s++) {
                int[] theirs = routingOf(s, size, seed);
                for (int a = 0; a < theirs.length; a++) {
                    if (theirs[a] == e) {
                        want.addAll(List.of((float) s, (float) (a / TOP_K), (float) e, payload(s, a / TOP_K)));
                    }
                }
            }
        }
        int wrong = 0;
        if (want.size() != got.length) {
            return new Outcome("dispatch all-to-all", false, "received " + got.length / width + " rows, expected " + want.size() / width);
        }
        for (int i = 0; i < got.length; i++) {
            wrong += got[i] == want.get(i) ? 0 : 1;
        }
        int emptyHere = 0;
        for (int l = 0; l < layout.localExperts(); l++) {
            emptyHere += layout.expertCount(l) == 0 ? 1 : 0;
        }
        // The experts compute: scale the payload by expert + 1, on the rank that holds the expert.
        for (int row = 0; row < layout.rows(); row++) {
            int e = (int) got[row * width + 2];
            if (placement.rankOf(e) != me) {
                wrong++;
            }
            got[row * width + 3] *= e + 1;
        }
        float[] back = ex.allToAllV(layout.toRankMajor(got, width), layout.recvCounts(), plan.sendCounts(), width);
        int wrongBack = 0;
        for (int a = 0; a < plan.assignments(); a++) {
            int p = plan.sendPosition(a);
            boolean ok = back[p * width] == me && back[p * width + 1] == a / TOP_K && back[p * width + 2] == choice[a]
                    && back[p * width + 3] == payload(me, a / TOP_K) * (choice[a] + 1);
            wrongBack += ok ? 0 : 1;
        }
        boolean pass = wrong == 0 && wrongBack == 0;
        return new Outcome("dispatch all-to-all", pass, String.format("sent %s rows, received %s, %d local expert(s) got none; %s",
                Arrays.toString(plan.sendCounts()), Arrays.toString(layout.recvCounts()), emptyHere,
                pass ? "every row where the plan says, there and back" : wrong + " wrong rows received, " + wrongBack + " wrong after combine"));
    }

    private static float payload(int rank, int token) {
        return rank * 1000 + token;
    }

    static final Spec LAYER = new Spec(32, 48, EXPERTS, 2, Score.SOFTMAX, true, 1f, false, Precision.FP32);

    /** The expert-parallel layer, forward and backward, against the same layer on one rank over the whole batch. */
    static Outcome layer(Exchange ex, long seed) {
        int me = ex.rank(), size = ex.size(), d = LAYER.dim(), f = LAYER.hidden(), e = LAYER.experts();
        Random w = new Random(seed);
        float[] router = gaussian(w, e * d, 0.3f), gateUp = gaussian(w, e * 2 * f * d, 0.2f), down = gaussian(w, e * d * f, 0.15f);
        int total = 0, start = 0;
        for (int r = 0; r < size; r++) {
            start += r < me ? tokensOf(r, size) : 0;
            total += tokensOf(r, size);
        }
        float[] x = new float[total * d], dOut = new float[total * d];
        for (int r = 0, at = 0; r < size; r++) {
            Random rr = new Random(seed * 31 + r);
            int n = tokensOf(r, size) * d;
            System.arraycopy(gaussian(rr, n, 1), 0, x, at, n);
            System.arraycopy(gaussian(rr, n, 1), 0, dOut, at, n);
            at += n;
        }
        int tokens = tokensOf(me, size);
        ExpertPlacement placement = ExpertPlacement.contiguous(e, size);
        ExpertParallelMoe layer = new ExpertParallelMoe(LAYER, placement, ex, router, null, gateUp, down);
        float[] out = layer.forward(Arrays.copyOfRange(x, start * d, (start + tokens) * d), tokens);
        float[] dx = layer.backward(Arrays.copyOfRange(dOut, start * d, (start + tokens) * d));

        ExpertParallelMoe one = new ExpertParallelMoe(LAYER, ExpertPlacement.contiguous(e, 1), new LocalGroup(1, 60_000).rank(0), router, null,
                gateUp, down);
        float[] refOut = one.forward(x, total);
        float[] refDx = one.backward(dOut);
        List<String> problems = new ArrayList<>();
        if (!Arrays.equals(out, Arrays.copyOfRange(refOut, start * d, (start + tokens) * d))) {
            problems.add("output differs");
        }
        if (!Arrays.equals(dx, Arrays.copyOfRange(refDx, start * d, (start + tokens) * d))) {
            problems.add("input gradient differs");
        }
        for (int l = 0; l < placement.localExperts(me); l++) {
            int g = placement.globalExpert(me, l);
            if (!Arrays.equals(Arrays.copyOfRange(layer.gateUpGrad(), l * 2 * f * d, (l + 1) * 2 * f * d),
                    Arrays.copyOfRange(one.gateUpGrad(), g * 2 * f * d, (g + 1) * 2 * f * d))
                    || !Arrays.equals(Arrays.copyOfRange(layer.downGrad(), l * d * f, (l + 1) * d * f),
                            Arrays.copyOfRange(one.downGrad(), g * d * f, (g + 1) * d * f))) {
                problems.add("expert " + g + "'s gradients differ");
            }
        }
        double routerErr = rel(layer.routerGrad(), one.routerGrad());
        if (routerErr > 1e-5) {
            problems.add(String.format("router gradient off by %.1e", routerErr));
        }
        if (!Arrays.equals(layer.globalCounts(), one.globalCounts())) {
            problems.add("all-reduced expert counts differ");
        }
        return new Outcome("expert-parallel MoE layer", problems.isEmpty(), problems.isEmpty()
                ? String.format("%d of %d tokens here; output, dx and expert gradients bit-identical to one rank, router gradient within %.1e",
                        tokens, total, routerErr)
                : String.join("; ", problems));
    }

    static float[] gaussian(Random rnd, int n, float std) {
        float[] out = new float[n];
        for (int i = 0; i < n; i++) {
            out[i] = (float) (rnd.nextGaussian() * std);
        }
        return out;
    }

    static double rel(float[] got, float[] ref) {
        double num = 0, den = 0;
        for (int i = 0; i < ref.length; i++) {
            num += ((double) got[i] - ref[i]) * ((double) got[i] - ref[i]);
            den += (double) ref[i] * ref[i];
        }
        return den == 0 ? Math.sqrt(num) : Math.sqrt(num / den);
    }
}
