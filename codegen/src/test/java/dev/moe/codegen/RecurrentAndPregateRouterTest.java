package dev.moe.codegen;

import static com.google.common.truth.Truth.assertThat;

import dev.moe.runtime.Parameter;
import dev.moe.runtime.TrainableModel;
import java.util.List;
import org.junit.jupiter.api.Test;

/** RMoE's recurrent routers and Read-ME's pre-gating routers: every element of their own weights against finite differences, and what they read. */
class RecurrentAndPregateRouterTest {
    private static final String RECURRENT = """
            model Tiny {
              vocab 11  context 6  dim 8  heads 2  kv_heads 1
              moe plain {
                routed 4 x swiglu(hidden: 5)
                router { top_k 2  normalize true }
              }
              moe rec {
                routed 4 x swiglu(hidden: 5)
                router { top_k 2  normalize true  recurrent gru(width: 3) }
                balance aux(coef: 0.1)
              }
              layers 4 { first 1: attention, plain  2: attention, swiglu(hidden: 12)  rest: attention, rec }
            }
            """;

    private static final String PREGATE = """
            model Tiny {
              vocab 11  context 6  dim 8  heads 2  kv_heads 1
              moe m {
                routed 4 x swiglu(hidden: 5)
                router { top_k 2  normalize true  pregate true }
                balance aux(coef: 0.1)
              }
              layers 2 { all: attention, m }
            }
            """;

    @Test
    void theGruAndItsProjectionsMatchFiniteDifferencesEverywhere() {
        GeneratedModelTest.checkGradients(RECURRENT, 0, List.of(), n -> n.startsWith("router_gru.") || n.contains(".gru_"), 1e-4);
    }

    @Test
    void preGatingRoutersMatchFiniteDifferencesEverywhere() {
        GeneratedModelTest.checkGradients(PREGATE, 0, List.of(), n -> n.contains(".router.") || n.equals("embed.weight"), 1e-4);
    }

    @Test
    void aPreGatingRouterSeesOnlyTheEmbeddings() {
        // Changing layer 0's attention changes layer 1's input: its routing moves, unless it is pre-gated.
        assertThat(routingMovesWithLayer0Attention(PREGATE)).isFalse();
        assertThat(routingMovesWithLayer0Attention(PREGATE.replace("  pregate true", ""))).isTrue();
    }

    private static boolean routingMovesWithLayer0Attention(String text) {
        TrainableModel m = Generated.instantiate(Generated.model(text));
        m.initialize(4);
        int[] inputs = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10};
        m.lastLogits(inputs, 2, 5);
        int[][][] before = m.expertLoadsBySequence();
        for (Parameter p : m.parameters()) {
            if (p.name().startsWith("layers.0.attn.")) {
                dev.moe.runtime.Init.normal(p, 99, 3.0);
            }
        }
        m.lastLogits(inputs, 2, 5);
        return !java.util.Arrays.deepEquals(before, m.expertLoadsBySequence());
    }
}
