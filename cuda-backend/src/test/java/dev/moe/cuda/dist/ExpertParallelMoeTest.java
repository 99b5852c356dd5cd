package dev.moe.cuda.dist;

import static com.google.common.truth.Truth.assertThat;

import dev.moe.cuda.MoeLayerReference;
import dev.moe.cuda.kernels.MoeKernelSource.Precision;
import dev.moe.cuda.kernels.MoeKernelSource.Score;
import dev.moe.cuda.kernels.MoeKernelSource.Spec;
import java.util.Arrays;
import java.util.List;
import java.util.Random;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.MethodSource;

/**
 * The expert-parallel layer on N simulated ranks against the same layer on one rank (bit for bit:
 * each row's expert computation and each token's combine do not depend on where they run) and
 * against the float64 reference on the concatenated batch.
 */
class ExpertParallelMoeTest {

    record Case(String name, Spec spec, int[] tokensPerRank, String placement) {
        @Override
        public String toString() {
            return name;
        }
    }

    static List<Case> cases() {
        return List.of(
                new Case("2 ranks, softmax top-2", spec(16, 24, 8, 2, Score.SOFTMAX, true, false), new int[] {9, 7}, "contiguous"),
                new Case("3 ranks, uneven blocks, a rank without tokens", spec(12, 8, 7, 3, Score.SOFTMAX, false, false), new int[] {6, 0, 5},
                        "contiguous"),
                new Case("4 ranks, sigmoid with bias, experts without tokens", spec(8, 12, 16, 2, Score.SIGMOID, true, true),
                        new int[] {2, 1, 3, 2}, "contiguous"),
                new Case("2 ranks, balanced placement", spec(10, 6, 6, 2, Score.SOFTMAX, true, false), new int[] {8, 8}, "balanced"),
                new Case("3 ranks, one rank holds no expert", spec(8, 8, 4, 1, Score.SOFTMAX, false, false), new int[] {5, 4, 6}, "explicit"),
                new Case("1 rank", spec(8, 8, 4, 2, Score.SOFTMAX, true, false), new int[] {7}, "contiguous"));
    }

    static Spec spec(int d, int f, int e, int k, Score score, boolean normalize, boolean bias) {
        return new Spec(d, f, e, k, score, normalize, score == Score.SIGMOID ? 2.5f : 1f, bias, Precision.FP32);
    }

    record RankResult(float[] out, float[] dx, float[] dRouter, float[] dGateUp, float[] dDown, int[] counts) {}

    @ParameterizedTest(name = "{0}")
    @MethodSource("cases")
    void nRanksEqualOneRankAndTheFloat64Reference(Case c) throws Exception {
        Spec s = c.spec();
        int d = s.dim(), f = s.hidden(), e = s.experts(), ranks = c.tokensPerRank().length;
        int total = Arrays.stream(c.tokensPerRank()).sum();
        Random rnd = new Random(name(c));
        float[] x = gaussian(rnd, total * d, 1);
        float[] router = gaussian(rnd, e * d, (float) (1 / Math.sqrt(d)));
        float[] bias = s.bias() ? gaussian(rnd, e, 0.05f) : null;
        float[] gateUp = gaussian(rnd, e * 2 * f * d, (float) (1 / Math.sqrt(d)));
        float[] down = gaussian(rnd, e * d * f, (float) (1 / Math.sqrt(f)));
        float[] dOut = gaussian(rnd, total * d, 1);
        ExpertPlacement placement = switch (c.placement()) {
            case "balanced" -> ExpertPlacement.balanced(new long[] {50, 40, 30, 5, 3, 1}, ranks);
            case "explicit" -> ExpertPlacement.explicit(e, new int[][] {{3, 1}, {}, {0, 2}});
            default -> ExpertPlacement.contiguous(e, ranks);
        };

        RankResult[] multi = run(s, placement, c.tokensPerRank(), x, router, bias, gateUp, down, dOut);
        RankResult single = run(s, ExpertPlacement.contiguous(e, 1), new int[] {total}, x, router, bias, gateUp, down, dOut)[0];

        float[] out = concat(multi, RankResult::out), dx = concat(multi, RankResult::dx);
        assertThat(out).usingExactEquality().containsExactly(single.out()).inOrder();
        assertThat(dx).usingExactEquality().containsExactly(single.dx()).inOrder();
        float[] dGateUp = new float[e * 2 * f * d], dDown = new float[e * d * f];
        for (int r = 0; r < ranks; r++) {
            assertThat(multi[r].counts()).asList().containsExactlyElementsIn(Arrays.stream(single.counts()).boxed().toList()).inOrder();
            assertThat(multi[r].dRouter()).usingTolerance(1e-5).containsExactly(single.dRouter()).inOrder();
            for (int l = 0; l < placement.localExperts(r); l++) {
                int g = placement.globalExpert(r, l);
                System.arraycopy(multi[r].dGateUp(), l * 2 * f * d, dGateUp, g * 2 * f * d, 2 * f * d);
                System.arraycopy(multi[r].dDown(), l * d * f, dDown, g * d * f, d * f);
            }
        }
        assertThat(dGateUp).usingExactEquality().containsExactly(single.dGateUp()).inOrder();
        assertThat(dDown).usingExactEquality().containsExactly(single.dDown()).inOrder();

        MoeLayerReference.Result ref = MoeLayerReference.run(s, total, doubles(x), doubles(router), bias == null ? null : doubles(bias),
                doubles(gateUp), doubles(down), doubles(dOut));
        assertThat(rel(out, ref.out())).isAtMost(1e-5);
        assertThat(rel(dx, ref.dx())).isAtMost(1e-5);
        assertThat(rel(multi[0].dRouter(), ref.dRouter())).isAtMost(1e-5);
        assertThat(rel(dGateUp, ref.dGateUp())).isAtMost(1e-5);
        assertThat(rel(dDown, ref.dDown())).isAtMost(1e-5);
        assertThat(single.counts()).asList().containsExactlyElementsIn(Arrays.stream(ref.counts()).boxed().toList()).inOrder();
    }

    private static long name(Case c) {
        return c.name().hashCode();
    }

    private static RankResult[] run(Spec s, ExpertPlacement placement, int[] tokensPerRank, float[] x, float[] router, float[] bias,
            float[] gateUp, float[] down, float[] dOut) throws Exception {
        int ranks = tokensPerRank.length, d = s.dim();
        int[] start = new int[ranks + 1];
        for (int r = 0; r < ranks; r++) {
            start[r + 1] = start[r] + tokensPerRank[r];
        }
        LocalGroup group = new LocalGroup(ranks, 30_000);
        return DispatchPlanTest.runRanks(ranks, rank -> {
            ExpertParallelMoe layer = new ExpertParallelMoe(s, placement, group.rank(rank), router, bias, gateUp, down);
            float[] xr = Arrays.copyOfRange(x, start[rank] * d, start[rank + 1] * d);
            float[] out = layer.forward(xr, tokensPerRank[rank]);
            float[] dx = layer.backward(Arrays.copyOfRange(dOut, start[rank] * d, start[rank + 1] * d));
            return new RankResult(out, dx, layer.routerGrad(), layer.gateUpGrad(), layer.downGrad(), layer.globalCounts());
        }).toArray(RankResult[]::new);
    }

    private static float[] concat(RankResult[] rs, java.util.function.Function<RankResult, float[]> part) {
        int n = 0;
        for (RankResult r : rs) {
            n += part.apply(r).length;
        }
        float[] out = new float[n];
        int at = 0;
        for (RankResult r : rs) {
            float[] p = part.apply(r);
            System.arraycopy(p, 0, out, at, p.length);
            at += p.length;
        }
        return out;
    }

    static float[] gaussian(Random rnd, int n, float std) {
        float[] out = new float[n];
        for (int i = 0; i < n; i++) {
            out[i] = (float) (rnd.nextGaussian() * std);
        }
        return out;
    }

    static double[] doubles(float[] v) {
        double[] out = new double[v.length];
        for (int i = 0; i < v.length; i++) {
            out[i] = v[i];
        }
        return out;
    }

    static double rel(float[] got, double[] ref) {
        double num = 0, den = 0;
        for (int i = 0; i < ref.length; i++) {
            num += (got[i] - ref[i]) * (got[i] - ref[i]);
            den += ref[i] * ref[i];
        }
        return den == 0 ? Math.sqrt(num) : Math.sqrt(num / den);
    }
}
