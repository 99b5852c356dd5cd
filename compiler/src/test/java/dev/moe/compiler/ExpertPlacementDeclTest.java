package dev.moe.compiler;

import static com.google.common.truth.Truth.assertThat;

import dev.moe.compiler.ir.Training;
import dev.moe.dsl.SourceFile;
import org.junit.jupiter.api.Test;

/** {@code experts_per_rank} in a train block: carried into the IR when every MoE layer's experts divide by it. */
class ExpertPlacementDeclTest {
    static final String RECIPE = """
            moe experts {
              routed 8 x swiglu(hidden: 64)
              router { top_k 2 }
            }
            moe small {
              routed 4 x swiglu(hidden: 64)
              router { top_k 1 }
            }
            model Tiny {
              vocab 256
              context 64
              dim 64
              heads 4
              layers 3 {
                first 1: attention, swiglu(hidden: 128)
                1: attention, experts
                2: attention, small
              }
            }
            train Tiny {
              steps 10
              %s
            }
            """;

    private static CompileResult compile(String placement) {
        return MoeCompiler.compile(new SourceFile("placed.moe", RECIPE.formatted(placement)));
    }

    @Test
    void aDivisorOfEveryLayersExpertsIsKept() {
        Training t = compile("experts_per_rank 4").orThrow().trainings().getFirst();
        assertThat(t.expertsPerRank()).isEqualTo(4);
        assertThat(compile("").orThrow().trainings().getFirst().expertsPerRank()).isEqualTo(0);
    }

    @Test
    void aCountThatDividesOneLayerButNotAnotherIsAnError() {
        CompileResult r = compile("experts_per_rank 8");
        assertThat(r.diagnostics().toString()).contains("does not divide the 4 routed experts of moe `small` (layer 2)");
        assertThat(r.diagnostics().toString()).contains("MOE0608");
    }
}
