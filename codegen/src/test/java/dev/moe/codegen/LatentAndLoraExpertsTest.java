package dev.moe.codegen;

import static com.google.common.truth.Truth.assertThat;
import static com.google.common.truth.Truth.assertWithMessage;

import dev.moe.runtime.Init;
import dev.moe.runtime.Parameter;
import dev.moe.runtime.TrainableModel;
import org.junit.jupiter.api.Test;

/** MoLE latent experts and MoLA LoRA experts: frozen bases, and gradients reaching every shared and per-expert tensor. */
class LatentAndLoraExpertsTest {
    private static final String HEADER = """
            model Tiny {
              vocab 11  context 6  dim 8  heads 2  kv_heads 1
            """;

    private static TrainableModel trained(String text) {
        TrainableModel m = Generated.instantiate(Generated.model(text));
        m.initialize(7);
        for (Parameter p : m.parameters()) {
            if (!p.isBuffer() && p.shape().length > 1) {
                Init.normal(p, 11, 0.3);
            }
        }
        int[] inputs = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10};
        int[] targets = {2, 3, 4, 5, 6, 7, 8, 9, 10, 0};
        m.parameters().forEach(Parameter::zeroGrad);
        m.beginStep();
        m.forward(inputs, targets, 2, 5);
        m.backward(1f);
        return m;
    }

    private static boolean anyGradient(Parameter p) {
        for (int i = p.offset(); i < p.offset() + p.size(); i++) {
            if (p.grad()[i] != 0f) {
                return true;
            }
        }
        return false;
    }

    @Test
    void loraExpertsAmongZeroComputationOnesMatchFiniteDifferencesEverywhere() {
        GeneratedModelTest.checkGradients(HEADER + """
                  moe m {
                    routed 1 x zero
                    routed 3 x lora(rank: 2, alpha: 4, base: swiglu(hidden: 5))
                    routed 1 x copy
                    router { top_k 2  normalize true }
                    balance aux(coef: 0.1, tau: 0.5)
                  }
                  layers 1 { all: attention, m }
                }
                """, 0, java.util.List.of(), n -> !n.contains(".base."), 1e-4);
    }

    @Test
    void loraBaseIsFrozenAndEveryTensorGetsAGradient() {
        TrainableModel m = trained(HEADER + """
                  moe m {
                    routed 4 x lora(rank: 2, alpha: 4, base: swiglu(hidden: 5))
                    router { top_k 2  normalize true }
                  }
                  layers 1 { all: attention, m }
                }
                """);
        int base = 0;
        int adapters = 0;
        for (Parameter p : m.parameters()) {
            if (p.name().contains(".base.")) {
                base++;
                assertWithMessage(p.name()).that(p.trainable()).isFalse();
                assertWithMessage(p.name()).that(anyGradient(p)).isTrue();
            } else if (p.name().matches("layers\\.0\\.moe\\.experts\\.\\d+\\..*_[ab]")) {
                adapters++;
                assertWithMessage(p.name()).that(p.trainable()).isTrue();
                if (m.expertLoads()[0][Integer.parseInt(p.name().split("\\.")[4])] > 0) {
                    assertWithMessage(p.name()).that(anyGradient(p)).isTrue();
                }
            } else {
                assertWithMessage(p.name()).that(p.trainable()).isTrue();
            }
        }
        assertThat(base).isEqualTo(3);
        assertThat(adapters).isEqualTo(4 * 6);
    }

    @Test
    void latentDownProjectionGetsAGradient() {
        TrainableModel m = trained(HEADER + """
                  moe m {
                    routed 4 x latent(rank: 3, ffn: swiglu(hidden: 5))
                    router { top_k 2  normalize true }
                  }
                  layers 1 { all: attention, m }
                }
                """);
        Parameter down = m.parameters().stream().filter(p -> p.name().equals("layers.0.moe.group0.latent_down")).findFirst().orElseThrow();
        assertThat(down.shape()).isEqualTo(new int[] {3, 8});
        assertThat(down.trainable()).isTrue();
        assertThat(anyGradient(down)).isTrue();
        Parameter up = m.parameters().stream().filter(p -> p.name().equals("layers.0.moe.experts.0.up")).findFirst().orElseThrow();
        assertThat(up.shape()).isEqualTo(new int[] {5, 3});
    }
}
