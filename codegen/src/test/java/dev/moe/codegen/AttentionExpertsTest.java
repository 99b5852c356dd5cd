package dev.moe.codegen;

import static com.google.common.truth.Truth.assertThat;

import dev.moe.runtime.Parameter;
import dev.moe.runtime.TrainableModel;
import java.util.List;
import org.junit.jupiter.api.Test;

/** Attention experts (JetMoE's top-k mixture of attention heads, BAM's soft mixture with shared keys and values). */
class AttentionExpertsTest {
    private static final String JETMOE = """
            model Tiny {
              vocab 11  context 6  dim 8  heads 2  kv_heads 1
              moe heads {
                shared 1 x attention(heads: 1, head_dim: 4)
                routed 3 x attention(heads: 2, head_dim: 2)
                router { order topk_then_softmax  top_k 2 }
                balance aux(coef: 0.1)
              }
              layers 2 { all: heads, swiglu(hidden: 12) }
            }
            """;

    private static final String BAM = """
            model Tiny {
              vocab 11  context 6  dim 8  heads 2  kv_heads 1
              moe bam {
                routed 3 x attention(heads: 2, head_dim: 4, shared_kv: true)
                router { mode soft }
                balance z_loss(coef: 0.01)
              }
              layers 2 { all: parallel(bam, swiglu(hidden: 12)) }
            }
            """;

    @Test
    void jetMoeExpertsMatchFiniteDifferencesEverywhere() {
        GeneratedModelTest.checkGradients(JETMOE, 0, List.of(), n -> n.startsWith("layers.0.attn_moe."), 1e-4);
    }

    @Test
    void bamExpertsMatchFiniteDifferencesEverywhere() {
        GeneratedModelTest.checkGradients(BAM, 0, List.of(), n -> n.startsWith("layers.1.attn_moe."), 1e-4);
    }

    @Test
    void oneAttentionExpertIsTheAttentionLayerBitwise() {
        String plain = """
                model Tiny {
                  vocab 11  context 6  dim 8  heads 2
                  layers 2 { all: attention, swiglu(hidden: 12) }
                }
                """;
        String experts = """
                model Tiny {
                  vocab 11  context 6  dim 8  heads 2
                  moe one {
                    routed 1 x attention(heads: 2, head_dim: 4)
                    router { top_k 1 }
                  }
                  layers 2 { all: one, swiglu(hidden: 12) }
                }
                """;
        TrainableModel a = Generated.instantiate(Generated.model(plain));
        a.initialize(3);
        TrainableModel b = Generated.instantiate(Generated.model(experts));
        b.initialize(5);
        for (Parameter p : b.parameters()) {
            String from = p.name().replace(".attn_moe.experts.0.", ".attn.");
            a.parameters().stream().filter(q -> q.name().equals(from)).findFirst().ifPresent(q -> p.load(q.values()));
        }
        int[] inputs = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10};
        assertThat(b.lastLogits(inputs, 2, 5)).isEqualTo(a.lastLogits(inputs, 2, 5));
    }

    @Test
    void aTokenOnlyUsesTheExpertsItChose() {
        // With top-1, perturbing an expert no token chose leaves the outputs bitwise unchanged.
        String text = JETMOE.replace("top_k 2", "top_k 1").replace("shared 1 x attention(heads: 1, head_dim: 4)\n", "");
        TrainableModel m = Generated.instantiate(Generated.model(text));
        m.initialize(8);
        int[] inputs = {1, 2}; // two tokens: at most two of the three experts
        float[] before = m.lastLogits(inputs, 1, 2);
        int[] loads = m.expertLoads()[0];
        int unused = -1;
        for (int e = 0; e < loads.length; e++) {
            if (loads[e] == 0) {
                unused = e;
            }
        }
        assertThat(unused).isAtLeast(0);
        String prefix = "layers.0.attn_moe.experts." + unused + ".";
        for (Parameter p : m.parameters()) {
            if (p.name().startsWith(prefix)) {
                dev.moe.runtime.Init.normal(p, 1, 1.0);
            }
        }
        assertThat(m.lastLogits(inputs, 1, 2)).isEqualTo(before);
    }
}
