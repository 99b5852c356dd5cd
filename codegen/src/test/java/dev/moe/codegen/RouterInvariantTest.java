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
        for (String router : new String[] {"top_k 2", "top_k 3  order topk_then_softmax", "score sigmoid  top_k 2  normalize true  bias aux_free(rate: 0.1)"}) {
            TrainableModel m = Generated.instantiate(Generated.model(model(router, "")));
            m.initialize(1);
            int k = Integer.parseInt(router.replaceAll(".*top_k (\\d).*", "$1"));
            Init.SplitMix rng = new Init.SplitMix(42);
            for (int c = 0; c < CASES; c++) {
                int batch = 1 + (int) Long.remainderUnsigned(rng.nextLong(), 3);
                int seq = 1 + (int) Long.remainderUnsigned(rng.nextLong(), 8);
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
    void auxCoefficientZeroChangesNothingAndPositiveChangesTheRouterGradient() {
        float[] none = routerGradient("");
        float[] zero = routerGradient("balance aux(coef: 0)");
        float[] some = routerGradient("balance aux(coef: 0.5)");
        assertThat(zero).isEqualTo(none);
        assertThat(some).isNotEqualTo(none);
    }

    private static float[] routerGradient(String balance) {
        TrainableModel m = Generated.instantiate(Generated.model(model("top_k 2", balance)));
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
