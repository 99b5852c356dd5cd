package dev.moe.compiler;

import static com.google.common.truth.Truth.assertThat;

import dev.moe.compiler.ir.Model;
import org.junit.jupiter.api.Test;

/**
 * Zero-computation experts (zero, copy) cost no FLOPs under every router that can pick them: the
 * least a token costs is the layer without routed compute, counted by hand.
 */
class ZeroComputeFlopsTest {
    /** Width of the model below (vocab 10, 1 head, context 8, tied embeddings, one layer). */
    static final long D = 4;

    static Model model(String experts, String router) {
        return ParameterCountTest.compileOne("""
                model M {
                  vocab 10  context 8  dim 4  heads 1  tie_embeddings true
                  moe m {
                    %s
                    router { %s }
                  }
                  layers 1 { all: attention, m }
                }
                """.formatted(experts, router));
    }

    /** Forward FLOPs of the fixed parts (norms, attention, head, a router of {@code experts} rows), 2 per weight used. */
    static long fixed(long experts) {
        long norms = 2 * (3 * D); // two layer norms and the final one, 2 per weight
        long attention = 2 * 4 * D * D + 4 * D * 8;
        long head = 2 * 10 * D;
        long router = 2 * experts * D;
        return norms + attention + head + router;
    }

    @Test
    void theFixedPartsAreWhatAnAllZeroLayerCosts() {
        assertThat(model("routed 4 x zero", "top_k 2").flopsPerToken().max()).isEqualTo(fixed(4));
        assertThat(model("routed 4 x copy", "top_k 2").flopsPerToken().max()).isEqualTo(fixed(4));
    }

    @Test
    void tokensThatPickOnlyZeroComputationExpertsCostTheFixedParts() {
        long relu = 2 * (2 * D * 8); // up and down, 2 per weight
        String mix = "routed 4 x relu(hidden: 8)\n routed 1 x zero\n routed 1 x copy";
        for (String router : new String[] {"top_k 2", "top_k 2  normalize true  bias aux_free(rate: 0.01)", "top_p 0.5  max_k 3",
                "top_k 2  capacity factor(1.0)"}) {
            Model m = model(mix, router);
            int maxK = router.startsWith("top_p") ? 3 : 2;
            // a token may take only zero-computation experts: then it costs the fixed parts
            assertThat(m.flopsPerToken().min()).isEqualTo(fixed(6));
            assertThat(m.flopsPerToken().max()).isEqualTo(fixed(6) + maxK * relu);
        }
        // with top-2 of 4 FFN and 2 zero-computation experts, uniform routing runs 2 · 4/6 FFN experts a token
        assertThat(model(mix, "top_k 2").flopsPerToken().expected()).isWithin(1e-9).of(fixed(6) + 2 * 4.0 / 6 * relu);
    }

    @Test
    void latentExpertsBesideFfnExpertsCountTheirOwnCostAndTheSharedProjectionForEveryToken() {
        // what generated code computes: z = x · latent_downᵀ for every token, then the chosen expert's own FFN
        long relu = 2 * (2 * D * 8); // an FFN expert: up [8, D] and down [D, 8]
        long latent = 2 * (2 * 3 + D * 3); // a latent expert's FFN over rank 2: up [3, 2] and down [D, 3]
        long down = 2 * (2 * D); // the group's latent_down [2, D]
        Model none = model("routed 4 x zero", "top_k 1");
        Model m = model("routed 2 x relu(hidden: 8)\n routed 2 x latent(rank: 2, ffn: relu(hidden: 3))", "top_k 1");
        assertThat(m.flopsPerToken().min()).isEqualTo(none.flopsPerToken().max() + down + latent);
        assertThat(m.flopsPerToken().max()).isEqualTo(none.flopsPerToken().max() + down + relu);
        assertThat(m.flopsPerToken().expected()).isWithin(1e-9).of(none.flopsPerToken().max() + down + (relu + latent) / 2.0);
        assertThat(m.activeParams().min()).isEqualTo(none.activeParams().max() + down / 2 + latent / 2);
        assertThat(m.activeParams().max()).isEqualTo(none.activeParams().max() + down / 2 + relu / 2);
        assertThat(m.totalParams()).isEqualTo(none.totalParams() + down / 2 + relu + latent);
    }

    @Test
    void loraExpertsBesideFfnExpertsCountTheFrozenBaseForEveryToken() {
        long relu = 2 * (2 * D * 8);
        long base = 2 * (2 * D * 3); // the frozen base relu(hidden: 3) runs for every token
        long lora = 2 * (D + 3 + 3 + D); // up_a [1, D], up_b [3, 1], down_a [1, 3], down_b [D, 1]
        Model none = model("routed 4 x zero", "top_k 1");
        Model m = model("routed 2 x relu(hidden: 8)\n routed 2 x lora(rank: 1, alpha: 1.0, base: relu(hidden: 3))", "top_k 1");
        assertThat(m.flopsPerToken().min()).isEqualTo(none.flopsPerToken().max() + base + lora);
        assertThat(m.flopsPerToken().max()).isEqualTo(none.flopsPerToken().max() + base + relu);
    }

    @Test
    void severalLoraGroupsCountEachTheirOwnFrozenBaseForEveryToken() {
        long baseRelu = 2 * (2 * D * 3); // relu(hidden: 3): up, down
        long baseSwiglu = 2 * (3 * D * 3); // swiglu(hidden: 3): gate, up, down
        long loraRelu = 2 * (D + 3 + 3 + D); // rank 1: up_a [1, D], up_b [3, 1], down_a [1, 3], down_b [D, 1]
        long loraSwiglu = 2 * (2 * D + 6 + 2 * D + 6 + 6 + 2 * D); // rank 2: gate_a [2, D], gate_b [3, 2], up_a, up_b, down_a [2, 3], down_b [D, 2]
        Model none = model("routed 4 x zero", "top_k 1");
        Model m = model("routed 2 x lora(rank: 1, alpha: 1.0, base: relu(hidden: 3))\n routed 2 x lora(rank: 2, alpha: 2.0, base: swiglu(hidden: 3))",
                "top_k 1");
        assertThat(m.flopsPerToken().min()).isEqualTo(none.flopsPerToken().max() + baseRelu + baseSwiglu + loraRelu);
        assertThat(m.flopsPerToken().max()).isEqualTo(none.flopsPerToken().max() + baseRelu + baseSwiglu + loraSwiglu);
        // both bases are weights of the model (frozen) and run for every token; the updates count as selected
        assertThat(m.totalParams() - none.totalParams()).isEqualTo((baseRelu + baseSwiglu + 2 * loraRelu + 2 * loraSwiglu) / 2);
        assertThat(m.activeParams().min() - none.activeParams().max()).isEqualTo((baseRelu + baseSwiglu + loraRelu) / 2);
    }

    @Test
    void ffnExpertsOfDifferentShapesCountEachTheirOwn() {
        long wide = 2 * (2 * D * 8);
        long narrow = 2 * (2 * D * 2);
        Model none = model("routed 4 x zero", "top_k 2");
        Model m = model("routed 1 x relu(hidden: 8)\n routed 3 x relu(hidden: 2)", "top_k 2");
        assertThat(m.flopsPerToken().min()).isEqualTo(none.flopsPerToken().max() + 2 * narrow);
        assertThat(m.flopsPerToken().max()).isEqualTo(none.flopsPerToken().max() + wide + narrow);
        assertThat(m.flopsPerToken().expected()).isWithin(1e-9).of(none.flopsPerToken().max() + 2 * (wide + 3 * narrow) / 4.0);
    }
}
