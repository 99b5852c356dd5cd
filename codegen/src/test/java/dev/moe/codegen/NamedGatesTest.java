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

    /**
     * Gates of different capacities: over the sequences each gate routes, every expert holds at most
     * ceil(factor · the gate's rows · k / experts) slots, the dropless gate drops none, and the tight
     * gate's drops are the slots missing from its loads (with a padding mask too).
     */
    @Test
    void eachGateKeepsItsOwnCapacityOverTheSequencesItRoutes() {
        int k = 2;
        int experts = 6;
        String text = """
                model R {
                  vocab 13  context 8  dim 8  heads 2
                  moe m {
                    routed 6 x swiglu(hidden: 4)
                    router tight { top_k 2  capacity factor(0.5, drop: %s) }
                    router roomy { top_k 2  capacity factor(1.5, drop: probability) }
                    router free { top_k 2 }
                    balance aux(coef: 0.01)
                  }
                  layers 2 { all: attention, m }
                }
                """;
        List<String> gates = List.of("tight", "roomy", "free");
        for (String policy : List.of("position", "probability", "random")) {
            TrainableModel m = Generated.instantiate(Generated.model(text.formatted(policy)));
            m.initialize(3);
            dev.moe.runtime.Init.SplitMix rng = new dev.moe.runtime.Init.SplitMix(11);
            int tightDrops = 0;
            for (int c = 0; c < 200; c++) {
                int batch = 1 + (int) Long.remainderUnsigned(rng.nextLong(), 4);
                int seq = 1 + (int) Long.remainderUnsigned(rng.nextLong(), 8);
                int rows = batch * seq;
                List<String> domains = new java.util.ArrayList<>();
                for (int b = 0; b < batch; b++) {
                    domains.add(gates.get((int) Long.remainderUnsigned(rng.nextLong(), 3)));
                }
                boolean[] keep = new boolean[rows];
                for (int t = 0; t < rows; t++) {
                    keep[t] = c % 2 == 0 || Long.remainderUnsigned(rng.nextLong(), 4) != 0;
                }
                int[] in = new int[rows];
                for (int t = 0; t < rows; t++) {
                    in[t] = (int) Long.remainderUnsigned(rng.nextLong(), 13);
                }
                m.setDomains(domains);
                m.setTraining(true);
                keep[0] = true;
                m.setMask(c % 2 == 0 ? null : keep);
                m.beginStep();
                m.forward(in, in, batch, seq);
                int[][][] bySeq = m.expertLoadsBySequence();
                for (int l = 0; l < bySeq.length; l++) {
                    for (String gate : gates) {
                        int[] load = new int[experts];
                        int keptRows = 0;
                        for (int b = 0; b < batch; b++) {
                            if (domains.get(b).equals(gate)) {
                                for (int e = 0; e < experts; e++) {
                                    load[e] += bySeq[l][b][e];
                                }
                                for (int t = b * seq; t < (b + 1) * seq; t++) {
                                    keptRows += keep[t] || c % 2 == 0 ? 1 : 0;
                                }
                            }
                        }
                        int total = java.util.Arrays.stream(load).sum();
                        String what = policy + " case " + c + " layer " + l + " gate " + gate + ": loads " + java.util.Arrays.toString(load);
                        switch (gate) {
                            case "free" -> assertThat(total).isEqualTo(keptRows * k);
                            default -> {
                                int capacity = (int) Math.ceil((gate.equals("tight") ? 0.5 : 1.5) * keptRows * k / experts);
                                for (int x : load) {
                                    org.junit.jupiter.api.Assertions.assertTrue(x <= capacity, what + ", capacity " + capacity);
                                }
                                // slots are dropped only where an expert is full
                                int dropped = keptRows * k - total;
                                org.junit.jupiter.api.Assertions.assertTrue(dropped >= 0, what);
                                if (dropped > 0) {
                                    org.junit.jupiter.api.Assertions.assertTrue(java.util.Arrays.stream(load).anyMatch(x -> x == capacity), what);
                                }
                                if (gate.equals("tight")) {
                                    tightDrops += dropped;
                                }
                            }
                        }
                    }
                }
            }
            // the tight gate's experts hold half the slots: it must have dropped
            assertThat(tightDrops).isGreaterThan(200);
        }
    }

    /**
     * Gates with their own expert bias: a step's update moves each biased gate's bias by rate · sign(mean
     * load - load) over the loads of the sequences it routed, leaves a gate that routed nothing (and the
     * one without a bias) alone, and over steps balances the gate's loads.
     */
    @Test
    void eachGatesBiasBalancesTheLoadsOfItsOwnSequences() {
        String text = """
                model R {
                  vocab 13  context 8  dim 8  heads 2
                  moe m {
                    routed 6 x swiglu(hidden: 4)
                    router skewed { top_k 2  bias aux_free(rate: 0.001) }
                    router plain { top_k 2 }
                    router idle { top_k 2  bias aux_free(rate: 0.05) }
                    balance aux(coef: 0.01)
                  }
                  layers 2 { all: attention, m }
                }
                """;
        int experts = 6;
        TrainableModel m = Generated.instantiate(Generated.model(text));
        m.initialize(7);
        // a skewed start: the skewed gate's bias sends every token to experts 0 and 1
        for (Parameter p : m.parameters()) {
            if (p.name().endsWith("router.skewed.expert_bias")) {
                p.value()[p.offset()] = 0.05f;
                p.value()[p.offset() + 1] = 0.05f;
            }
        }
        int batch = 8;
        int seq = 8;
        int[] in = new int[batch * seq];
        for (int t = 0; t < in.length; t++) {
            in[t] = (t * 7 + 3) % 13;
        }
        List<String> domains = List.of("skewed", "plain", "skewed", "plain", "skewed", "plain", "skewed", "plain");
        m.setDomains(domains);
        m.setTraining(true);
        int[] moeLayers = m.moeLayers();
        double firstSpread = -1;
        double lastSpread = 0;
        for (int step = 0; step < 300; step++) {
            float[][] before = new float[moeLayers.length * 3][];
            for (int l = 0; l < moeLayers.length; l++) {
                for (int g = 0; g < 3; g++) {
                    String name = "layers." + moeLayers[l] + ".moe.router." + List.of("skewed", "plain", "idle").get(g) + ".expert_bias";
                    before[3 * l + g] = m.parameters().stream().anyMatch(p -> p.name().equals(name)) ? find(m, name).values() : null;
                }
            }
            m.beginStep();
            m.forward(in, in, batch, seq);
            int[][][] bySeq = m.expertLoadsBySequence();
            m.endStep();
            double spread = 0;
            for (int l = 0; l < moeLayers.length; l++) {
                long[] load = new long[experts];
                long slots = 0;
                for (int b = 0; b < batch; b++) {
                    if (domains.get(b).equals("skewed")) {
                        for (int e = 0; e < experts; e++) {
                            load[e] += bySeq[l][b][e];
                            slots += bySeq[l][b][e];
                        }
                    }
                }
                double mean = (double) slots / experts;
                float[] now = find(m, "layers." + moeLayers[l] + ".moe.router.skewed.expert_bias").values();
                for (int e = 0; e < experts; e++) {
                    assertThat(now[e]).isEqualTo(before[3 * l][e] + 0.001f * (float) Math.signum(mean - load[e]));
                    spread += Math.abs(load[e] - mean);
                }
                // the idle gate routed no sequence: its bias stays; the plain gate has none
                assertThat(find(m, "layers." + moeLayers[l] + ".moe.router.idle.expert_bias").values()).isEqualTo(before[3 * l + 2]);
                assertThat(before[3 * l + 1]).isNull();
            }
            if (step == 0) {
                firstSpread = spread;
            }
            if (step >= 250) {
                lastSpread += spread / 50;
            }
        }
        // the skewed gate started unbalanced (every slot on two experts), and its own bias balanced it
        assertThat(firstSpread).isGreaterThan(80.0);
        assertThat(lastSpread).isLessThan(firstSpread / 3);
    }

    /** Data parallelism: two ranks' summed step loads give each gate the bias update of one rank that saw both halves. */
    @Test
    void summedStepLoadsGiveEachGateTheWholeBatchesBiasUpdate() {
        String text = """
                model R {
                  vocab 13  context 8  dim 8  heads 2
                  moe m {
                    routed 6 x swiglu(hidden: 4)
                    router a { top_k 2  bias aux_free(rate: 0.01) }
                    router b { score sigmoid  top_k 2  normalize true  bias aux_free(rate: 0.03) }
                    balance aux(coef: 0.01)
                  }
                  layers 2 { all: attention, m }
                }
                """;
        int[] first = {1, 5, 2, 7, 3, 9, 4, 11, 6, 0, 8, 12};
        int[] second = {2, 2, 9, 4, 10, 1, 3, 3, 7, 5, 12, 6};
        List<String> domains = List.of("a", "b", "b");
        TrainableModel whole = Generated.instantiate(Generated.model(text));
        TrainableModel rank0 = Generated.instantiate(Generated.model(text));
        TrainableModel rank1 = Generated.instantiate(Generated.model(text));
        for (TrainableModel m : List.of(whole, rank0, rank1)) {
            m.initialize(5);
            m.setDomains(domains);
            m.setTraining(true);
            m.beginStep();
        }
        whole.forward(first, first, 3, 4);
        whole.forward(second, second, 3, 4);
        whole.endStep();
        rank0.forward(first, first, 3, 4);
        rank1.forward(second, second, 3, 4);
        long[] summed = rank0.stepLoads();
        long[] other = rank1.stepLoads();
        for (int i = 0; i < summed.length; i++) {
            summed[i] += other[i];
        }
        rank0.setStepLoads(summed);
        rank0.endStep();
        TrainableModel fresh = Generated.instantiate(Generated.model(text));
        fresh.initialize(5);
        for (String gate : List.of("a", "b")) {
            String name = "layers.0.moe.router." + gate + ".expert_bias";
            assertThat(find(rank0, name).values()).isEqualTo(find(whole, name).values());
            assertThat(find(rank0, name).values()).isNotEqualTo(find(fresh, name).values());
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
