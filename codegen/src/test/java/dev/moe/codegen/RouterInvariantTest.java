package dev.moe.codegen;

import static com.google.common.truth.Truth.assertThat;
import static com.google.common.truth.Truth.assertWithMessage;

import dev.moe.runtime.Init;
import dev.moe.runtime.Parameter;
import dev.moe.runtime.TrainableModel;
import java.util.Arrays;
import org.junit.jupiter.api.Test;

/** Invariants of the generated routers, over many seeded inputs. */
class RouterInvariantTest {
    static final int CASES = 1000;

    static String model(String router, String balance) {
        return """
                model R {
                  vocab 13  context 8  dim 8  heads 2
                  moe m {
                    routed 6 x swiglu(hidden: 4)
                    router { %s }
                    %s
                  }
                  layers 2 { all: attention, m }
                }
                """.formatted(router, balance);
    }

    private static int[] tokens(Init.SplitMix rng, int n) {
        int[] t = new int[n];
        for (int i = 0; i < n; i++) {
            t[i] = (int) Long.remainderUnsigned(rng.nextLong(), 13);
        }
        return t;
    }

    @Test
    void everyTokenTakesExactlyKDistinctExperts() {
        for (String router : new String[] {"top_k 2", "top_k 3  order topk_then_softmax", "score sigmoid  top_k 2  normalize true  bias aux_free(rate: 0.1)",
                "top_k 2  temperature anneal(start: 3, end: 0.25, steps: 500)  activation tanh", "top_k 2  pregate true", "mode soft"}) {
            TrainableModel m = Generated.instantiate(Generated.model(model(router, "")));
            m.initialize(1);
            int k = router.equals("mode soft") ? 6 : Integer.parseInt(router.replaceAll(".*top_k (\\d).*", "$1"));
            Init.SplitMix rng = new Init.SplitMix(42);
            for (int c = 0; c < CASES; c++) {
                int batch = 1 + (int) Long.remainderUnsigned(rng.nextLong(), 3);
                int seq = 1 + (int) Long.remainderUnsigned(rng.nextLong(), 8);
                m.setStep(c); // annealed temperatures move through their schedule
                m.beginStep();
                m.forward(tokens(rng, batch * seq), tokens(rng, batch * seq), batch, seq);
                for (int[] layer : m.expertLoads()) {
                    assertWithMessage("case %s (%s): loads %s", c, router, Arrays.toString(layer)).that(Arrays.stream(layer).sum())
                            .isEqualTo(batch * seq * k);
                    for (int load : layer) {
                        // k distinct experts per token: no expert can take more slots than there are tokens
                        assertThat(load).isAtMost(batch * seq);
                    }
                }
            }
        }
    }

    @Test
    void groupLimitedRoutingKeepsTheChosenExpertsInTheTopGroups() {
        // 3 groups of 2 experts, one group kept: a single token's 2 experts share a group
        for (String router : new String[] {"top_k 2  groups limited(groups: 3, top: 1)",
                "score sigmoid  top_k 2  bias aux_free(rate: 0.1)  groups limited(groups: 3, top: 1)"}) {
            TrainableModel m = Generated.instantiate(Generated.model(model(router, "")));
            m.initialize(2);
            Init.SplitMix rng = new Init.SplitMix(43);
            for (int c = 0; c < CASES; c++) {
                m.beginStep();
                m.forward(tokens(rng, 1), tokens(rng, 1), 1, 1);
                for (int[] layer : m.expertLoads()) {
                    assertThat(Arrays.stream(layer).sum()).isEqualTo(2);
                    int groups = 0;
                    for (int g = 0; g < 3; g++) {
                        groups += layer[2 * g] + layer[2 * g + 1] > 0 ? 1 : 0;
                    }
                    assertWithMessage("case %s (%s): loads %s", c, router, Arrays.toString(layer)).that(groups).isEqualTo(1);
                }
            }
        }
    }

    @Test
    void quotaRoutingGivesEveryGroupItsShare() {
        // 2 groups of 3 experts, top_k 4: every token takes 2 experts in each group
        TrainableModel m = Generated.instantiate(Generated.model(model("top_k 4  normalize true  groups quota(2)", "")));
        m.initialize(4);
        Init.SplitMix rng = new Init.SplitMix(44);
        for (int c = 0; c < CASES; c++) {
            int batch = 1 + (int) Long.remainderUnsigned(rng.nextLong(), 3);
            int seq = 1 + (int) Long.remainderUnsigned(rng.nextLong(), 8);
            m.beginStep();
            m.forward(tokens(rng, batch * seq), tokens(rng, batch * seq), batch, seq);
            for (int[] layer : m.expertLoads()) {
                assertWithMessage("case %s: loads %s", c, Arrays.toString(layer)).that(layer[0] + layer[1] + layer[2]).isEqualTo(2 * batch * seq);
                assertWithMessage("case %s: loads %s", c, Arrays.toString(layer)).that(layer[3] + layer[4] + layer[5]).isEqualTo(2 * batch * seq);
                for (int load : layer) {
                    assertThat(load).isAtMost(batch * seq);
                }
            }
        }
    }

    /** A field of the generated model's MoE state {@code moe<layer>}, read by reflection (routing internals are not in the API). */
    private static Object state(TrainableModel m, int layer, String field) throws ReflectiveOperationException {
        java.lang.reflect.Field f = m.getClass().getDeclaredField("moe" + layer);
        f.setAccessible(true);
        Object s = f.get(m);
        java.lang.reflect.Field g = s.getClass().getDeclaredField(field);
        g.setAccessible(true);
        return g.get(s);
    }

    @Test
    void topPTakesBetweenOneAndMaxKExpertsHoldingTheMass() throws ReflectiveOperationException {
        int experts = 6;
        int maxK = 3;
        double p = 0.7;
        TrainableModel m = Generated.instantiate(Generated.model(model("top_p 0.7  max_k 3  normalize true", "balance entropy(coef: 0.01)")));
        m.initialize(1);
        // larger router weights: a spread of confident and unsure tokens
        for (Parameter q : m.parameters()) {
            if (q.name().endsWith("router.weight")) {
                Init.normal(q, 3, 1.0);
            }
        }
        Init.SplitMix rng = new Init.SplitMix(45);
        int[] seen = new int[maxK + 1];
        for (int c = 0; c < CASES; c++) {
            int batch = 1 + (int) Long.remainderUnsigned(rng.nextLong(), 3);
            int seq = 1 + (int) Long.remainderUnsigned(rng.nextLong(), 8);
            int rows = batch * seq;
            m.beginStep();
            m.forward(tokens(rng, rows), tokens(rng, rows), batch, seq);
            int[][] loads = m.expertLoads();
            for (int layer = 0; layer < 2; layer++) {
                int[] kept = (int[]) state(m, layer, "kept");
                int[] selected = (int[]) state(m, layer, "selected");
                float[] probs = (float[]) state(m, layer, "probs");
                float[] weight = (float[]) state(m, layer, "weight");
                int used = 0;
                for (int t = 0; t < rows; t++) {
                    assertThat(kept[t]).isIn(com.google.common.collect.Range.closed(1, maxK));
                    seen[kept[t]]++;
                    used += kept[t];
                    double mass = 0;
                    double weights = 0;
                    boolean[] chosen = new boolean[experts];
                    for (int r = 0; r < maxK; r++) {
                        int ex = selected[t * maxK + r];
                        if (r < kept[t]) {
                            assertThat(chosen[ex]).isFalse();
                            chosen[ex] = true;
                            mass += probs[t * experts + ex];
                            weights += weight[t * maxK + r];
                        } else {
                            assertThat(ex).isEqualTo(experts);
                            assertThat(weight[t * maxK + r]).isEqualTo(0f);
                        }
                    }
                    assertThat(weights).isWithin(1e-5).of(1.0);
                    if (kept[t] < maxK) {
                        assertWithMessage("case %s token %s: mass %s", c, t, mass).that(mass).isAtLeast(p);
                    }
                    // the fewest: without the smallest chosen probability the mass falls short
                    float smallest = Float.MAX_VALUE;
                    for (int ex = 0; ex < experts; ex++) {
                        if (chosen[ex]) {
                            smallest = Math.min(smallest, probs[t * experts + ex]);
                        }
                    }
                    assertThat(kept[t] == 1 || mass - smallest < p).isTrue();
                    for (int ex = 0; ex < experts; ex++) {
                        if (!chosen[ex]) {
                            assertThat(probs[t * experts + ex]).isAtMost(smallest);
                        }
                    }
                }
                assertWithMessage("loads count only the used slots").that(Arrays.stream(loads[layer]).sum()).isEqualTo(used);
            }
        }
        for (int k = 1; k <= maxK; k++) {
            assertWithMessage("tokens with %s experts: %s", k, Arrays.toString(seen)).that(seen[k]).isGreaterThan(0);
        }
    }

    @Test
    void jitterIsSeededByTheStepAndLeavesInferenceAlone() {
        TrainableModel plain = Generated.instantiate(Generated.model(model("top_k 2", "")));
        TrainableModel jittered = Generated.instantiate(Generated.model(model("top_k 2  jitter 0.5", "")));
        plain.initialize(6);
        jittered.initialize(6);
        Init.SplitMix rng = new Init.SplitMix(46);
        int[] in = tokens(rng, 16);
        int[] tg = tokens(rng, 16);
        jittered.beginStep();
        double first = jittered.forward(in, tg, 2, 8);
        jittered.beginStep();
        double again = jittered.forward(in, tg, 2, 8);
        double secondMicroBatch = jittered.forward(in, tg, 2, 8);
        jittered.endStep();
        jittered.beginStep();
        double nextStep = jittered.forward(in, tg, 2, 8);
        plain.beginStep();
        double none = plain.forward(in, tg, 2, 8);
        assertThat(again).isEqualTo(first);
        assertThat(secondMicroBatch).isNotEqualTo(first);
        assertThat(nextStep).isNotEqualTo(first);
        assertThat(first).isNotEqualTo(none);
        assertThat(jittered.lastLogits(in, 2, 8)).isEqualTo(plain.lastLogits(in, 2, 8));
    }

    @Test
    void auxCoefficientZeroChangesNothingAndPositiveChangesTheRouterGradient() {
        for (String router : new String[] {"top_k 2", "top_k 2  temperature anneal(start: 3, end: 0.25, steps: 500)", "top_k 2  pregate true", "mode soft"}) {
            float[] none = routerGradient(router, "");
            float[] zero = routerGradient(router, "balance aux(coef: 0)");
            float[] some = routerGradient(router, "balance aux(coef: 0.5)");
            assertWithMessage(router).that(zero).isEqualTo(none);
            assertWithMessage(router).that(some).isNotEqualTo(none);
        }
    }

    private static float[] routerGradient(String routerSettings, String balance) {
        TrainableModel m = Generated.instantiate(Generated.model(model(routerSettings, balance)));
        m.initialize(3);
        Init.SplitMix rng = new Init.SplitMix(5);
        m.parameters().forEach(Parameter::zeroGrad);
        m.beginStep();
        m.forward(tokens(rng, 16), tokens(rng, 16), 2, 8);
        m.backward(1f);
        Parameter router = m.parameters().stream().filter(p -> p.name().equals("layers.0.moe.router.weight")).findFirst().orElseThrow();
        return Arrays.copyOfRange(router.grad(), router.offset(), router.offset() + router.size());
    }

    @Test
    void expertBiasMovesLoadTowardBalance() {
        TrainableModel m = Generated.instantiate(Generated.model(model("score sigmoid  top_k 2  bias aux_free(rate: 0.01)", "")));
        m.initialize(7);
        Parameter bias = m.parameters().stream().filter(p -> p.name().equals("layers.0.moe.router.expert_bias")).findFirst().orElseThrow();
        Init.SplitMix rng = new Init.SplitMix(11);
        double firstImbalance = 0;
        double lastImbalance = 0;
        for (int step = 0; step < 300; step++) {
            float[] before = bias.values();
            m.beginStep();
            int[] in = tokens(rng, 32);
            m.forward(in, tokens(rng, 32), 4, 8);
            int[] load = m.expertLoads()[0];
            m.endStep();
            float[] after = bias.values();
            double mean = Arrays.stream(load).average().orElseThrow();
            for (int e = 0; e < load.length; e++) {
                double moved = after[e] - before[e];
                if (load[e] < mean) {
                    assertThat(moved).isGreaterThan(0);
                } else if (load[e] > mean) {
                    assertThat(moved).isLessThan(0);
                }
            }
            double imbalance = Arrays.stream(load).max().orElseThrow() / mean;
            if (step < 20) {
                firstImbalance += imbalance / 20;
            }
            if (step >= 280) {
                lastImbalance += imbalance / 20;
            }
        }
        assertWithMessage("mean max/mean load, first 20 steps %s, last 20 %s", firstImbalance, lastImbalance).that(lastImbalance)
                .isLessThan(firstImbalance);
    }
}
