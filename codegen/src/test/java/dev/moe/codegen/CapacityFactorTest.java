package dev.moe.codegen;

import static com.google.common.truth.Truth.assertThat;
import static com.google.common.truth.Truth.assertWithMessage;

import dev.moe.runtime.Init;
import dev.moe.runtime.TrainableModel;
import java.util.Arrays;
import org.junit.jupiter.api.Test;

/** Capacity factors with drop policies: loads never exceed capacity, and a factor below 1 drops slots. */
class CapacityFactorTest {
    static final int CASES = 300;

    private static int[] tokens(Init.SplitMix rng, int n) {
        int[] t = new int[n];
        for (int i = 0; i < n; i++) {
            t[i] = (int) Long.remainderUnsigned(rng.nextLong(), 13);
        }
        return t;
    }

    @Test
    void loadsNeverExceedCapacityAndAFactorBelowOneDrops() {
        for (String policy : new String[] {"position", "probability", "random"}) {
            for (double factor : new double[] {0.5, 1.25}) {
                int k = 2;
                int experts = 6;
                TrainableModel m = Generated.instantiate(Generated.model(
                        RouterInvariantTest.model("top_k 2  capacity factor(" + factor + ", drop: " + policy + ")", "balance aux(coef: 0.01)")));
                m.initialize(1);
                Init.SplitMix rng = new Init.SplitMix(17);
                int dropping = 0;
                for (int c = 0; c < CASES; c++) {
                    int batch = 1 + (int) Long.remainderUnsigned(rng.nextLong(), 3);
                    int seq = 1 + (int) Long.remainderUnsigned(rng.nextLong(), 8);
                    int rows = batch * seq;
                    int capacity = (int) Math.ceil(factor * rows * k / experts);
                    int[] in = tokens(rng, rows);
                    m.setTraining(true);
                    m.beginStep();
                    m.forward(in, tokens(rng, rows), batch, seq);
                    int[][] loads = m.expertLoads();
                    int[][][] bySeq = m.expertLoadsBySequence();
                    for (int l = 0; l < loads.length; l++) {
                        int[] layer = loads[l];
                        String what = String.format("%s %s case %d layer %d: loads %s, capacity %d", policy, factor, c, l, Arrays.toString(layer), capacity);
                        for (int load : layer) {
                            assertWithMessage(what).that(load).isAtMost(capacity);
                        }
                        int total = Arrays.stream(layer).sum();
                        assertWithMessage(what).that(total).isAtMost(rows * k);
                        if (total < rows * k) {
                            dropping++;
                        }
                        if (experts * capacity < rows * k) {
                            // the experts cannot hold every slot
                            assertWithMessage(what).that(total).isLessThan(rows * k);
                        }
                        int[] summed = new int[experts];
                        for (int[] s : bySeq[l]) {
                            for (int e = 0; e < experts; e++) {
                                summed[e] += s[e];
                            }
                        }
                        assertWithMessage(what).that(summed).isEqualTo(layer);
                    }
                    // deterministic: the same step and micro-batch drop the same slots
                    m.beginStep();
                    m.forward(in, in, batch, seq);
                    assertWithMessage("%s: same step, same loads", policy).that(m.expertLoads()).isEqualTo(loads);
                    // evaluation is dropless
                    m.setTraining(false);
                    m.forward(in, in, batch, seq);
                    for (int[] layer : m.expertLoads()) {
                        assertThat(Arrays.stream(layer).sum()).isEqualTo(rows * k);
                    }
                }
                if (factor < 1) {
                    assertWithMessage("%s: layers that dropped", policy).that(dropping).isGreaterThan(CASES);
                }
            }
        }
    }

    @Test
    void expertChoiceGivesEachExpertItsCapacityInEverySequence() {
        for (double factor : new double[] {0.5, 1.0, 2.0}) {
            int experts = 6;
            TrainableModel m = Generated.instantiate(Generated.model(
                    RouterInvariantTest.model("mode expert_choice  capacity factor(" + factor + ")", "balance z_loss(coef: 0.01)")));
            m.initialize(1);
            Init.SplitMix rng = new Init.SplitMix(5);
            for (int c = 0; c < CASES; c++) {
                int batch = 1 + (int) Long.remainderUnsigned(rng.nextLong(), 3);
                int seq = 1 + (int) Long.remainderUnsigned(rng.nextLong(), 8);
                int capacity = (int) Math.ceil(factor * seq / experts);
                m.beginStep();
                m.forward(tokens(rng, batch * seq), tokens(rng, batch * seq), batch, seq);
                for (int[][] layer : m.expertLoadsBySequence()) {
                    for (int[] sequence : layer) {
                        for (int load : sequence) {
                            // a token takes an expert at most once: each expert picks min(capacity, seq) distinct tokens
                            assertWithMessage("factor %s case %s: %s", factor, c, Arrays.toString(sequence)).that(load)
                                    .isEqualTo(Math.min(capacity, seq));
                        }
                    }
                }
            }
        }
    }
}
