package dev.moe.codegen;

import static com.google.common.truth.Truth.assertThat;

import dev.moe.runtime.Parameter;
import dev.moe.runtime.TrainableModel;
import java.util.List;
import org.junit.jupiter.api.Test;

/**
 * Several named gates in one MoE (UniMoE-Audio's modality gates, Uni-MoE's task gates): each sequence
 * is routed by the gate named after its data domain.
 */
class NamedGatesTest {
    private static final String GATED = """
            model Tiny {
              vocab 11  context 6  dim 8  heads 2  kv_heads 1
              moe m {
                shared 1 x swiglu(hidden: 4)
                routed 1 x zero
                routed 4 x swiglu(hidden: 5)
                router speech { top_p 0.6  max_k 3  jitter 0.1 }
                router music { top_p 0.6  max_k 3  jitter 0.1 }
                balance aux(coef: 0.1, tau: 0.5)
                balance entropy(coef: 0.05)
              }
              layers 2 { first 1: attention, swiglu(hidden: 12)  rest: attention, m }
            }
            """;

    private static final int[] INPUTS = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10};
    private static final int[] TARGETS = {2, 3, 4, 5, 6, 7, 8, 9, 10, 0};

    @Test
    void backwardMatchesFiniteDifferencesWithEachSequenceOnItsOwnGate() {
        GeneratedModelTest.checkGradients(GATED, 0, List.of("music", "speech"));
    }

    @Test
    void aSequenceIsRoutedByTheGateNamedAfterItsDomain() {
        TrainableModel gated = Generated.instantiate(Generated.model(GATED));
        gated.initialize(5);
        // The same model with one router, whose weights are the music gate's.
        TrainableModel single = Generated.instantiate(Generated.model(GATED.replace("router speech { top_p 0.6  max_k 3  jitter 0.1 }\n", "")
                .replace("router music", "router")));
        for (Parameter p : single.parameters()) {
            String from = p.name().replace(".router.weight", ".router.music.weight");
            p.load(find(gated, from).values());
        }
        gated.setDomains(List.of("music", "music"));
        assertThat(loss(gated)).isEqualTo(loss(single));
        // Unknown domains (and none) take the first gate, here speech: a different loss.
        gated.setDomains(List.of("text", "text"));
        double first = loss(gated);
        assertThat(first).isNotEqualTo(loss(single));
        gated.setDomains(List.of());
        assertThat(loss(gated)).isEqualTo(first);
        gated.setDomains(List.of("speech", "speech"));
        assertThat(loss(gated)).isEqualTo(first);
    }

    @Test
    void eachGateLearnsOnlyFromItsOwnSequences() {
        TrainableModel gated = Generated.instantiate(Generated.model(GATED));
        gated.initialize(5);
        gated.setDomains(List.of("speech", "speech"));
        gated.parameters().forEach(Parameter::zeroGrad);
        loss(gated);
        gated.backward(1f);
        assertThat(maxAbs(find(gated, "layers.1.moe.router.speech.weight"))).isGreaterThan(0f);
        assertThat(maxAbs(find(gated, "layers.1.moe.router.music.weight"))).isEqualTo(0f);
    }

    @Test
    void theTrainerTellsTheModelEachSequencesDomain() throws java.io.IOException {
        String text = GATED.replace("vocab 11", "vocab 256").replace("router speech", "router markov").replace("router music", "router brackets");
        TrainableModel m = Generated.instantiate(Generated.model(text));
        var data = dev.moe.runtime.data.DataStream.synthetic(java.util.Map.of("markov", 0.5, "brackets", 0.5), 4, 6, 1);
        var o = new dev.moe.runtime.train.Trainer.Options(2, 4, 1, 6, 1e-2, 0.9, 0.95, 1e-8, 0, "constant", 0, 0, 1.0, 1, dir, 0, false, 0,
                java.util.Map.of());
        new dev.moe.runtime.train.Trainer(m, data, o, new java.io.PrintStream(java.io.OutputStream.nullOutputStream())).run();
        TrainableModel init = Generated.instantiate(Generated.model(text));
        init.initialize(1);
        for (String gate : List.of("markov", "brackets")) {
            String name = "layers.1.moe.router." + gate + ".weight";
            assertThat(find(m, name).values()).isNotEqualTo(find(init, name).values());
        }
    }

    @org.junit.jupiter.api.io.TempDir
    java.nio.file.Path dir;

    private static double loss(TrainableModel m) {
        m.setStep(0);
        m.beginStep();
        return m.forward(INPUTS, TARGETS, 2, 5);
    }

    private static Parameter find(TrainableModel m, String name) {
        return m.parameters().stream().filter(p -> p.name().equals(name)).findFirst().orElseThrow(() -> new AssertionError("no " + name));
    }

    private static float maxAbs(Parameter p) {
        float max = 0;
        for (int i = 0; i < p.size(); i++) {
            max = Math.max(max, Math.abs(p.grad()[p.offset() + i]));
        }
        return max;
    }
}
