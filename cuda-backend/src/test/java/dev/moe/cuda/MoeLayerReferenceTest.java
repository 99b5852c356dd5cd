package dev.moe.cuda;

import static com.google.common.truth.Truth.assertThat;
import static com.google.common.truth.Truth.assertWithMessage;

import dev.moe.cuda.kernels.MoeKernelSource.Drop;
import dev.moe.cuda.kernels.MoeKernelSource.ExpertActivation;
import dev.moe.cuda.kernels.MoeKernelSource.Options;
import dev.moe.cuda.kernels.MoeKernelSource.Precision;
import dev.moe.cuda.kernels.MoeKernelSource.Score;
import dev.moe.cuda.kernels.MoeKernelSource.Spec;
import java.util.ArrayList;
import java.util.List;
import java.util.Random;
import org.junit.jupiter.api.Test;

/** The float64 reference that GPU results are judged by must itself be right: central differences. */
class MoeLayerReferenceTest {

    @Test
    void softmaxNormalizedGradientsMatchCentralDifferences() {
        check(new Spec(6, 5, 4, 2, Score.SOFTMAX, true, 1f, false, Precision.FP32), 3);
    }

    /**
     * GpuChecks' balancing-loss reference: its logit gradient is that of Σ_t Σ_e aux[t / seq, e] · score[t, e] (the scores as the
     * aux loss sees them: softmax, or sigmoid over each token's sum), by central differences, and its scores sum to 1 per token.
     */
    @Test
    void theBalanceReferenceGradientMatchesCentralDifferences() {
        for (Spec s : GpuChecks.balanceSpecs()) {
            int tokens = 6, seq = 3, er = s.routed(), k = s.topK();
            Random r = new Random(er);
            double[] logits = gaussian(r, tokens * er);
            float[] aux = new float[tokens / seq * er];
            for (int i = 0; i < aux.length; i++) {
                aux[i] = (float) r.nextGaussian();
            }
            int[] selected = new int[tokens * k];
            for (int i = 0; i < selected.length; i++) {
                selected[i] = (i * 7 + i / k) % er;
            }
            GpuChecks.BalanceReference ref = GpuChecks.balanceReference(s, tokens, seq, logits, selected, aux);
            double total = 0;
            for (double v : ref.scores()) {
                total += v;
            }
            assertWithMessage("%s: scores", s).that(total).isWithin(1e-9).of(tokens);
            assertThat(java.util.Arrays.stream(ref.counts()).sum()).isEqualTo(tokens * k);
            double h = 1e-6;
            for (int i = 0; i < logits.length; i++) {
                double keep = logits[i];
                logits[i] = keep + h;
                double up = weighted(s, tokens, seq, logits, aux);
                logits[i] = keep - h;
                double down = weighted(s, tokens, seq, logits, aux);
                logits[i] = keep;
                assertWithMessage("%s: d/dlogit %s", s, i).that(ref.dLogits()[i]).isWithin(1e-6).of((up - down) / (2 * h));
            }
        }
    }

    /** Σ_t Σ_e aux[t / seq, e] · score[t, e], each token's scores recomputed from its logits as the reference sees them. */
    private static double weighted(Spec s, int tokens, int seq, double[] logits, float[] aux) {
        int er = s.routed();
        double sum = 0;
        for (int t = 0; t < tokens; t++) {
            double[] one = java.util.Arrays.copyOfRange(logits, t * er, (t + 1) * er);
            float[] row = java.util.Arrays.copyOfRange(aux, t / seq * er, (t / seq + 1) * er);
            double[] q = GpuChecks.balanceReference(s, 1, 1, one, new int[s.topK()], row).scores();
            for (int e = 0; e < er; e++) {
                sum += row[e] * q[e];
            }
        }
        return sum;
    }

    @Test
    void sigmoidScaledWithBiasGradientsMatchCentralDifferences() {
        check(new Spec(5, 4, 6, 3, Score.SIGMOID, true, 2.5f, true, Precision.FP32), 3);
    }

    @Test
    void zeroAndCopyExpertsGradientsMatchCentralDifferences() {
        check(new Spec(5, 4, 3, 2, 2, 3, Score.SOFTMAX, true, 1f, false, Precision.FP32), 4);
        check(new Spec(4, 3, 2, 1, 3, 2, Score.SIGMOID, false, 1f, true, Precision.FP32), 4);
    }

    /** MoE++: constant experts after zero and copy experts (a1 x + a2 v, [a1, a2] = softmax(W_c x)); enough tokens that every kind is chosen. */
    @Test
    void constantExpertsGradientsMatchCentralDifferences() {
        Spec s = new Spec(5, 4, 3, 1, 1, 2, 2, Score.SOFTMAX, false, 1f, false, Precision.FP32, Options.NONE);
        check(s, 8);
        check(new Spec(4, 3, 2, 0, 1, 3, 3, Score.SIGMOID, true, 1f, true, Precision.FP32, Options.NONE.withActivation(ExpertActivation.RELU)), 6);
        // every constant expert gets a slot, so each one's vector and mix gradients are checked for real
        Random r = new Random(7);
        double[] x = gaussian(r, 8 * 5), router = gaussian(r, 7 * 5), gateUp = gaussian(r, 3 * 8 * 5), down = gaussian(r, 3 * 5 * 4),
                dOut = gaussian(r, 8 * 5), vectors = gaussian(r, 2 * 5), mix = gaussian(r, 2 * 2 * 5);
        MoeLayerReference.Result res = MoeLayerReference.run(s, 8, true, x, router, null, gateUp, down, vectors, mix, dOut);
        assertThat(res.counts()[5]).isGreaterThan(0);
        assertThat(res.counts()[6]).isGreaterThan(0);
        assertThat(java.util.Arrays.stream(res.dMix()).allMatch(v -> v != 0)).isTrue();
    }

    /**
     * MoLE's latent experts: the experts read x ({@code expertIn} wide, narrower or wider than D) and the router its own
     * input; both input gradients, the router's and the experts', against central differences.
     */
    @Test
    void latentExpertsGradientsMatchCentralDifferences() {
        checkLatent(new Spec(6, 5, 4, 2, Score.SOFTMAX, true, 1f, false, Precision.FP32).withExpertIn(3), 4);
        checkLatent(new Spec(4, 3, 3, 1, 0, 2, Score.SIGMOID, false, 2f, true, Precision.FP32).with(Options.NONE.withActivation(ExpertActivation.RELU))
                .withExpertIn(7), 6);
        checkLatent(new Spec(5, 3, 4, 2, Score.SOFTMAX, true, 1f, false, Precision.FP32).with(Options.NONE.withCapacity(0.75f, Drop.PROBABILITY))
                .withExpertIn(2), 12);
    }

    /** A router input apart from x, equal to it, splits the input gradient in two: the experts' part and the router's. */
    @Test
    void aRouterInputOfItsOwnSplitsTheInputGradient() {
        Spec s = new Spec(5, 4, 4, 1, 0, 2, Score.SOFTMAX, true, 1f, false, Precision.FP32);
        Random r = new Random(5);
        int t = 6;
        double[] x = gaussian(r, t * 5), router = gaussian(r, s.routed() * 5), gateUp = gaussian(r, 4 * 8 * 5), down = gaussian(r, 4 * 5 * 4),
                dOut = gaussian(r, t * 5);
        MoeLayerReference.Result whole = MoeLayerReference.run(s, t, x, router, null, gateUp, down, dOut);
        MoeLayerReference.Result split = MoeLayerReference.runWithRouterInput(s, t, true, x, x.clone(), router, null, gateUp, down, dOut);
        assertThat(whole.dRouterX()).isNull();
        assertThat(split.out()).usingTolerance(0).containsExactly(whole.out()).inOrder();
        assertThat(split.dRouter()).usingTolerance(1e-12).containsExactly(whole.dRouter()).inOrder();
        double[] sum = new double[t * 5];
        for (int i = 0; i < sum.length; i++) {
            sum[i] = split.dx()[i] + split.dRouterX()[i];
        }
        assertThat(sum).usingTolerance(1e-12).containsExactly(whole.dx()).inOrder();
        assertThat(java.util.Arrays.stream(split.dRouterX()).anyMatch(v -> v != 0)).isTrue();
        // copy experts output x: they need the experts' input as wide as the output
        org.junit.jupiter.api.Assertions.assertThrows(IllegalArgumentException.class,
                () -> new Spec(5, 4, 4, 0, 1, 2, Score.SOFTMAX, true, 1f, false, Precision.FP32).withExpertIn(3));
    }

    /** The GPU checks' latent cases route to every kind of slot their spec has, and their capacity case drops some. */
    @Test
    void theGpuLatentCasesAreWellFormed() {
        long seed = 1;
        int latentCases = 0;
        for (GpuChecks.Case c : GpuChecks.cases()) {
            GpuChecks.Inputs in = GpuChecks.inputs(c, seed++);
            Spec s = c.spec();
            if (s.expertIn() == s.dim()) {
                assertThat(in.routerX()).isNull();
                continue;
            }
            latentCases++;
            assertThat(in.x()).hasLength(c.tokens() * s.expertIn());
            assertThat(in.routerX()).hasLength(c.tokens() * s.dim());
            assertThat(in.ref().dx()).hasLength(c.tokens() * s.expertIn());
            assertWithMessage("%s", c).that(java.util.Arrays.stream(in.ref().dRouterX()).anyMatch(v -> v != 0)).isTrue();
            for (int ex = 0; ex < s.routed(); ex++) {
                assertWithMessage("%s expert %s", c, ex).that(in.ref().counts()[ex]).isGreaterThan(0);
            }
        }
        assertThat(latentCases).isEqualTo(2 * 4);
    }

    @Test
    void unnormalizedTopOneGradientsMatchCentralDifferences() {
        check(new Spec(4, 3, 3, 1, Score.SOFTMAX, false, 1f, false, Precision.FP32), 4);
    }

    @Test
    void gatedAndUngatedActivationsGradientsMatchCentralDifferences() {
        Spec base = new Spec(5, 4, 4, 2, Score.SOFTMAX, true, 1f, false, Precision.FP32);
        for (ExpertActivation a : ExpertActivation.values()) {
            check(base.with(Options.NONE.withActivation(a)), 4);
        }
        check(new Spec(4, 3, 3, 1, 2, 2, Score.SIGMOID, false, 1f, true, Precision.FP32).with(Options.NONE.withActivation(ExpertActivation.GEGLU)), 4);
    }

    @Test
    void capacityDropsGradientsMatchCentralDifferences() {
        // 12 tokens, k = 2 over 4 experts at factor 0.75: each expert keeps 5 of its slots; some are over
        Spec base = new Spec(5, 3, 4, 2, Score.SOFTMAX, true, 1f, false, Precision.FP32);
        for (Drop drop : Drop.values()) {
            for (ExpertActivation a : new ExpertActivation[] {ExpertActivation.SWIGLU, ExpertActivation.RELU}) {
                Spec s = base.with(Options.NONE.withActivation(a).withCapacity(0.75f, drop));
                assertThat(anyDropped(s, 12)).isTrue();
                check(s, 12);
            }
        }
        // switch-like: top-1 unnormalised softmax, ungated relu, by position (factor 1.25 over 16 tokens: 5 each)
        Spec sw = new Spec(6, 4, 4, 1, Score.SOFTMAX, false, 1f, false, Precision.FP32)
                .with(Options.NONE.withActivation(ExpertActivation.RELU).withCapacity(1.25f, Drop.POSITION));
        assertThat(anyDropped(sw, 16)).isTrue();
        check(sw, 16);
    }

    /** The capacity is the CPU class's ceil(factor · tokens · k / E) with the recipe's decimal factor (1.1, not 1.1f widened). */
    @Test
    void capacityIsTheCpuFormula() {
        Spec s = new Spec(4, 4, 11, 1, Score.SOFTMAX, false, 1f, false, Precision.FP32);
        assertThat(CudaMoeLayer.capacity(s.with(Options.NONE.withCapacity(1.25f, Drop.POSITION)), 64)).isEqualTo((int) Math.ceil(1.25 * 64 * 1 / 11));
        assertThat(CudaMoeLayer.capacity(s.with(Options.NONE.withCapacity(1.1f, Drop.POSITION)), 10)).isEqualTo((int) Math.ceil(1.1 * 10 * 1 / 11));
        Spec k2 = new Spec(4, 4, 8, 2, Score.SOFTMAX, true, 1f, false, Precision.FP32).with(Options.NONE.withCapacity(1.25f, Drop.PROBABILITY));
        assertThat(CudaMoeLayer.capacity(k2, 256)).isEqualTo(80);
    }

    /** Which slots are dropped, the counts, and what dropping does to the output: as the CPU class's dropOverCapacity. */
    @Test
    void capacityKeepsTheEarliestTheHeaviestOrTheHighestPrioritySlots() {
        int tokens = 24;
        Spec base = new Spec(6, 4, 4, 2, Score.SOFTMAX, true, 1f, false, Precision.FP32);
        Random r = new Random(3);
        double[] x = gaussian(r, tokens * 6), router = gaussian(r, 4 * 6), gateUp = gaussian(r, 4 * 8 * 6), down = gaussian(r, 4 * 6 * 4),
                dOut = gaussian(r, tokens * 6);
        MoeLayerReference.Result dropless = MoeLayerReference.run(base, tokens, x, router, null, gateUp, down, dOut);
        for (Drop drop : Drop.values()) {
            Spec s = base.with(Options.NONE.withCapacity(0.75f, drop));
            int cap = CudaMoeLayer.capacity(s, tokens);
            assertThat(cap).isEqualTo(9);
            MoeLayerReference.Result res = MoeLayerReference.run(s, tokens, x, router, null, gateUp, down, dOut);
            assertThat(res.selected()).isEqualTo(dropless.selected());
            int[] kept = new int[4];
            boolean anyDrop = false;
            for (int ex = 0; ex < 4; ex++) {
                List<Integer> slots = new ArrayList<>();
                for (int i = 0; i < tokens * 2; i++) {
                    if (res.selected()[i] == ex) {
                        slots.add(i);
                    }
                }
                List<Integer> keptSlots = new ArrayList<>(slots);
                if (drop == Drop.PROBABILITY) {
                    // the weights of a normalised top-2 are p_i / (p_1 + p_2): recompute them from the dropless output's routing
                    keptSlots.sort((a, b) -> Double.compare(weight(base, x, router, b), weight(base, x, router, a)));
                } else if (drop == Drop.RANDOM) {
                    // the priorities of the layer's default seed, highest first (a stable sort: ties keep the earlier slot)
                    float[] priority = CudaMoeLayer.dropPriorities(0L, tokens * 2);
                    keptSlots.sort((a, b) -> Float.compare(priority[b], priority[a]));
                }
                keptSlots = keptSlots.subList(0, Math.min(cap, keptSlots.size()));
                for (int i : slots) {
                    assertWithMessage("%s slot %s", drop, i).that(res.dropped()[i]).isEqualTo(!keptSlots.contains(i));
                    anyDrop |= res.dropped()[i];
                }
                kept[ex] = keptSlots.size();
            }
            assertThat(anyDrop).isTrue();
            assertThat(res.counts()).isEqualTo(kept);
            // a token whose both slots are kept is as dropless; an inference run is dropless
            for (int t = 0; t < tokens; t++) {
                if (!res.dropped()[2 * t] && !res.dropped()[2 * t + 1]) {
                    for (int c = 0; c < 6; c++) {
                        assertThat(res.out()[t * 6 + c]).isWithin(1e-12).of(dropless.out()[t * 6 + c]);
                    }
                }
            }
            MoeLayerReference.Result inference = MoeLayerReference.run(s, tokens, false, x, router, null, gateUp, down, dOut);
            assertThat(inference.out()).usingTolerance(0).containsExactly(dropless.out()).inOrder();
            assertThat(inference.counts()).isEqualTo(dropless.counts());
        }
        // a factor large enough drops nothing
        MoeLayerReference.Result roomy = MoeLayerReference.run(base.with(Options.NONE.withCapacity(4f, Drop.POSITION)), tokens, x, router, null,
                gateUp, down, dOut);
        assertThat(roomy.out()).usingTolerance(0).containsExactly(dropless.out()).inOrder();
        assertThat(roomy.dRouter()).usingTolerance(0).containsExactly(dropless.dRouter()).inOrder();
    }

    /**
     * The GPU checks' capacity cases (with the seeds GpuChecks.main and GpuParityTest give them) really drop slots, but for
     * the roomy factor and the inference case, which must drop none.
     */
    @Test
    void theGpuCapacityCasesDropSlots() {
        long seed = 1;
        int capacityCases = 0;
        for (GpuChecks.Case c : GpuChecks.cases()) {
            GpuChecks.Inputs in = GpuChecks.inputs(c, seed++);
            if (c.spec().options().capacityFactor() == 0) {
                continue;
            }
            capacityCases++;
            int dropped = 0;
            for (boolean b : in.ref().dropped()) {
                dropped += b ? 1 : 0;
            }
            boolean roomy = !c.training() || c.spec().options().capacityFactor() >= 8;
            assertWithMessage("%s: %s slots dropped", c, dropped).that(roomy ? dropped == 0 : dropped > 0).isTrue();
        }
        assertThat(capacityCases).isEqualTo(2 * 13);
    }

    /**
     * The gating-residual pair reference (B's logits add A's through a map g) against central differences of
     * Σ outA · dOutA + Σ outB · dOutB: A's input and router (whose gradient includes what B sends back), the map, B's input and router.
     */
    @Test
    void gatingResidualPairGradientsMatchCentralDifferences() {
        Options o = Options.NONE.withGatingResidual();
        Spec a = new Spec(5, 4, 3, 1, 1, 2, 2, Score.SOFTMAX, false, 1f, false, Precision.FP32, o);
        Spec b = new Spec(5, 3, 4, 0, 1, 1, 3, Score.SIGMOID, true, 1.5f, true, Precision.FP32, o);
        int t = 6, d = 5, ea = a.routed(), eb = b.routed();
        Random r = new Random(11);
        double[] xa = gaussian(r, t * d), ra = gaussian(r, ea * d), gua = gaussian(r, 3 * 8 * d), dna = gaussian(r, 3 * d * 4),
                va = gaussian(r, 2 * d), ma = gaussian(r, 2 * 2 * d), doa = gaussian(r, t * d);
        double[] xb = gaussian(r, t * d), rb = gaussian(r, eb * d), bb = gaussian(r, eb), gub = gaussian(r, 4 * 6 * d), dnb = gaussian(r, 4 * d * 3),
                vb = gaussian(r, d), mb = gaussian(r, 2 * d), dob = gaussian(r, t * d);
        double[] g = gaussian(r, eb * ea);
        GpuChecks.ResidualReference ref = GpuChecks.residualReference(a, b, t, xa, ra, null, gua, dna, va, ma, doa, xb, rb, bb, gub, dnb, vb, mb, dob, g);
        java.util.function.DoubleSupplier loss = () -> {
            GpuChecks.ResidualReference x = GpuChecks.residualReference(a, b, t, xa, ra, null, gua, dna, va, ma, doa, xb, rb, bb, gub, dnb, vb, mb, dob, g);
            double l = 0;
            for (int i = 0; i < t * d; i++) {
                l += x.a().out()[i] * doa[i] + x.b().out()[i] * dob[i];
            }
            return l;
        };
        compare("dG", ref.dG(), g, loss);
        compare("dxA", ref.a().dx(), xa, loss);
        compare("dRouterA", ref.a().dRouter(), ra, loss);
        compare("dMixA", ref.a().dMix(), ma, loss);
        compare("dxB", ref.b().dx(), xb, loss);
        compare("dRouterB", ref.b().dRouter(), rb, loss);
        // the map matters: B's gradient sent back changes A's router gradient
        double[] alone = MoeLayerReference.run(a, t, true, xa, ra, null, gua, dna, va, ma, doa).dRouter();
        assertThat(java.util.Arrays.equals(alone, ref.a().dRouter())).isFalse();
    }

    /** The GPU checks' gating-residual pairs route B differently than without the map (so the residual is exercised). */
    @Test
    void theGpuResidualPairsAreWellFormed() {
        assertThat(GpuChecks.residualPairs()).hasSize(4);
        for (Spec[] pair : GpuChecks.residualPairs()) {
            assertThat(pair[0].options().gatingResidual()).isTrue();
            assertThat(pair[1].options().gatingResidual()).isTrue();
            assertThat(pair[0].dim()).isEqualTo(pair[1].dim());
        }
    }

    /** The GPU checks' constant-expert cases route slots to constant experts, so their gradients are compared for real. */
    @Test
    void theGpuConstantCasesRouteToConstantExperts() {
        long seed = 1;
        int constantCases = 0;
        for (GpuChecks.Case c : GpuChecks.cases()) {
            GpuChecks.Inputs in = GpuChecks.inputs(c, seed++);
            Spec s = c.spec();
            if (s.constantExperts() == 0) {
                continue;
            }
            constantCases++;
            int routedToConstants = 0;
            for (int j = s.firstConstant(); j < s.routed(); j++) {
                routedToConstants += in.ref().counts()[j];
            }
            assertWithMessage("%s", c).that(routedToConstants).isGreaterThan(0);
            assertWithMessage("%s", c).that(java.util.Arrays.stream(in.ref().dMix()).anyMatch(v -> v != 0)).isTrue();
            assertWithMessage("%s", c).that(java.util.Arrays.stream(in.ref().dVectors()).anyMatch(v -> v != 0)).isTrue();
        }
        assertThat(constantCases).isEqualTo(2 * 4);
    }

    /** Slot i's routing weight under a normalised softmax top-k (the order of the weights is all that matters here). */
    private static double weight(Spec s, double[] x, double[] router, int slot) {
        int d = s.dim(), e = s.routed(), k = s.topK(), t = slot / k;
        double[] z = new double[e];
        for (int ex = 0; ex < e; ex++) {
            for (int c = 0; c < d; c++) {
                z[ex] += x[t * d + c] * router[ex * d + c];
            }
        }
        Integer[] order = new Integer[e];
        for (int ex = 0; ex < e; ex++) {
            order[ex] = ex;
        }
        java.util.Arrays.sort(order, (a, b) -> z[a] != z[b] ? Double.compare(z[b], z[a]) : Integer.compare(a, b));
        double sum = 0;
        for (int r = 0; r < k; r++) {
            sum += Math.exp(z[order[r]]);
        }
        return Math.exp(z[order[slot % k]]) / sum;
    }

    private static boolean anyDropped(Spec s, int tokens) {
        Random r = new Random(7);
        double[] x = gaussian(r, tokens * s.dim()), router = gaussian(r, s.routed() * s.dim()),
                gateUp = gaussian(r, s.experts() * gateUpRows(s) * s.dim()), down = gaussian(r, s.experts() * s.dim() * s.hidden()),
                dOut = gaussian(r, tokens * s.dim());
        double[] bias = s.bias() ? gaussian(r, s.routed()) : null;
        for (boolean b : MoeLayerReference.run(s, tokens, x, router, bias, gateUp, down, dOut).dropped()) {
            if (b) {
                return true;
            }
        }
        return false;
    }

    private static int gateUpRows(Spec s) {
        return s.options().activation().gated ? 2 * s.hidden() : s.hidden();
    }

    private static void check(Spec s, int tokens) {
        Random r = new Random(7);
        double[] x = gaussian(r, tokens * s.dim()), router = gaussian(r, s.routed() * s.dim()),
                gateUp = gaussian(r, s.experts() * gateUpRows(s) * s.dim()), down = gaussian(r, s.experts() * s.dim() * s.hidden()),
                dOut = gaussian(r, tokens * s.dim());
        double[] bias = s.bias() ? gaussian(r, s.routed()) : null;
        double[] vectors = gaussian(r, s.constantExperts() * s.dim()), mix = gaussian(r, s.constantExperts() * 2 * s.dim());
        MoeLayerReference.Result res = MoeLayerReference.run(s, tokens, true, x, router, bias, gateUp, down, vectors, mix, dOut);
        java.util.function.DoubleSupplier loss = () -> loss(s, tokens, x, router, bias, gateUp, down, vectors, mix, dOut);
        compare("dx", res.dx(), x, loss);
        compare("dRouter", res.dRouter(), router, loss);
        compare("dGateUp", res.dGateUp(), gateUp, loss);
        compare("dDown", res.dDown(), down, loss);
        compare("dVectors", res.dVectors(), vectors, loss);
        compare("dMix", res.dMix(), mix, loss);
    }

    private static void checkLatent(Spec s, int tokens) {
        Random r = new Random(9);
        double[] x = gaussian(r, tokens * s.expertIn()), routerX = gaussian(r, tokens * s.dim()), router = gaussian(r, s.routed() * s.dim()),
                gateUp = gaussian(r, s.experts() * gateUpRows(s) * s.expertIn()), down = gaussian(r, s.experts() * s.dim() * s.hidden()),
                dOut = gaussian(r, tokens * s.dim());
        double[] bias = s.bias() ? gaussian(r, s.routed()) : null;
        MoeLayerReference.Result res = MoeLayerReference.runWithRouterInput(s, tokens, true, x, routerX, router, bias, gateUp, down, dOut);
        java.util.function.DoubleSupplier loss = () -> {
            double[] out = MoeLayerReference.runWithRouterInput(s, tokens, true, x, routerX, router, bias, gateUp, down, dOut).out();
            double l = 0;
            for (int i = 0; i < out.length; i++) {
                l += out[i] * dOut[i];
            }
            return l;
        };
        assertThat(res.dx()).hasLength(tokens * s.expertIn());
        compare("dx", res.dx(), x, loss);
        compare("dRouterX", res.dRouterX(), routerX, loss);
        compare("dRouter", res.dRouter(), router, loss);
        compare("dGateUp", res.dGateUp(), gateUp, loss);
        compare("dDown", res.dDown(), down, loss);
    }

    private static double loss(Spec s, int tokens, double[] x, double[] router, double[] bias, double[] gateUp, double[] down,
            double[] vectors, double[] mix, double[] dOut) {
        double[] out = MoeLayerReference.run(s, tokens, true, x, router, bias, gateUp, down, vectors, mix, dOut).out();
        double l = 0;
        for (int i = 0; i < out.length; i++) {
            l += out[i] * dOut[i];
        }
        return l;
    }

    private static void compare(String what, double[] analytic, double[] param, java.util.function.DoubleSupplier loss) {
        double h = 1e-6;
        for (int i = 0; i < param.length; i++) {
            double saved = param[i];
            param[i] = saved + h;
            double up = loss.getAsDouble();
            param[i] = saved - h;
            double downV = loss.getAsDouble();
            param[i] = saved;
            double num = (up - downV) / (2 * h);
            assertWithMessage("%s[%s]", what, i).that(Math.abs(analytic[i] - num)).isAtMost(1e-5 + 1e-3 * Math.abs(num));
        }
    }

    private static double[] gaussian(Random r, int n) {
        double[] v = new double[n];
        for (int i = 0; i < n; i++) {
            v[i] = r.nextGaussian();
        }
        return v;
    }
}
