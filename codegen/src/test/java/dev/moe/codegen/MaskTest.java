package dev.moe.codegen;

import static com.google.common.truth.Truth.assertThat;
import static com.google.common.truth.Truth.assertWithMessage;
import static org.junit.jupiter.api.Assertions.assertThrows;

import dev.moe.runtime.Init;
import dev.moe.runtime.Parameter;
import dev.moe.runtime.TrainableModel;
import dev.moe.runtime.cpu.CpuBackend;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.MethodSource;

/**
 * Padding masks: a dropped token's id changes no other token's logits, the loss, the expert loads or
 * the expert bias, bit for bit; an all-kept mask is no mask; gradients under a mask are still right.
 */
class MaskTest {
    private static final String HEADER = """
            model Tiny {
              vocab 11  context 6  dim 8  heads 2  kv_heads 1
            """;

    static List<String> models() {
        return List.of(
                // dense
                HEADER + """
                  layers 2 { all: attention, swiglu(hidden: 12) }
                }
                """,
                // top-k with aux and z losses and a shared expert
                HEADER + """
                  moe m {
                    shared 1 x swiglu(hidden: 6)
                    routed 4 x swiglu(hidden: 5)
                    router { top_k 2  normalize true }
                    balance aux(coef: 0.1)
                    balance z_loss(coef: 0.01)
                  }
                  layers 2 { first 1: attention, swiglu(hidden: 12)  rest: attention, m }
                }
                """,
                // capacity factors that drop: by position, and by a seeded random priority with jitter
                HEADER + """
                  moe m {
                    routed 4 x swiglu(hidden: 5)
                    router { top_k 2  normalize true  capacity factor(0.5, drop: position) }
                    balance aux(coef: 0.1)
                  }
                  moe r {
                    routed 4 x swiglu(hidden: 5)
                    router { top_k 2  jitter 0.1  capacity factor(0.75, drop: random) }
                    balance aux(coef: 0.1, scope: sequence)
                  }
                  layers 2 { first 1: attention, m  rest: attention, r }
                }
                """,
                // expert choice
                HEADER + """
                  moe m {
                    routed 4 x swiglu(hidden: 5)
                    router { mode expert_choice  capacity factor(1.0) }
                    balance z_loss(coef: 0.01)
                  }
                  layers 2 { all: attention, m }
                }
                """,
                // sigmoid scores with an aux-free expert bias and a global-batch aux loss
                HEADER + """
                  moe m {
                    shared 1 x geglu(hidden: 4, gate: sigmoid)
                    routed 4 x swiglu(hidden: 5)
                    router { score sigmoid  top_k 2  normalize true  scale 2.5  bias aux_free(rate: 0.01) }
                    balance aux(coef: 0.1, scope: global_batch)
                  }
                  layers 2 { all: attention, m }
                }
                """,
                // MoE++ zero-computation experts, sequence-scope aux with tau
                HEADER + """
                  moe m {
                    routed 1 x copy
                    routed 3 x swiglu(hidden: 5)
                    routed 1 x zero
                    routed 2 x constant
                    router { top_k 3  normalize true }
                    balance aux(coef: 0.1, scope: sequence, tau: 0.5)
                    balance z_loss(coef: 0.01)
                  }
                  layers 2 { all: attention, m }
                }
                """,
                // sliding-window attention with rope, qk-norm, parallel blocks; top-k of the logits
                HEADER + """
                  qk_norm true
                  position rope(theta: 100, fraction: 0.5)
                  sliding_window 3
                  moe m {
                    routed 4 x gelu(hidden: 5)
                    router { order topk_then_softmax  top_k 2 }
                    balance aux(coef: 0.1, scope: sequence)
                  }
                  layers 2 { all: parallel(attention, m) }
                }
                """,
                // top-p
                HEADER + """
                  moe m {
                    routed 4 x swiglu(hidden: 5)
                    router { top_p 0.5  max_k 3  normalize true }
                    balance aux(coef: 0.1, scope: sequence)
                    balance entropy(coef: 0.05)
                  }
                  layers 2 { all: attention, m }
                }
                """,
                // JetMoE: top-k attention experts with shared keys and values, aux and z losses, beside top-k FFN experts
                HEADER + """
                  moe moa {
                    routed 3 x attention(heads: 2, head_dim: 2, shared_kv: true)
                    router { order topk_then_softmax  top_k 2 }
                    balance aux(coef: 0.1)
                    balance z_loss(coef: 0.01)
                  }
                  moe m {
                    routed 4 x swiglu(hidden: 5)
                    router { order topk_then_softmax  top_k 2 }
                    balance aux(coef: 0.1)
                  }
                  layers 2 { all: moa, m }
                }
                """,
                // BAM: a soft mixture of attention experts in a parallel block, a shared one; top-p attention experts below
                HEADER + """
                  moe attend {
                    shared 1 x attention(heads: 1, head_dim: 4)
                    routed 3 x attention(heads: 2, head_dim: 2)
                    router { mode soft }
                    balance z_loss(coef: 0.01)
                  }
                  moe pick {
                    routed 3 x attention(heads: 1, head_dim: 4)
                    router { top_p 0.6  max_k 2 }
                    balance aux(coef: 0.1, scope: sequence)
                    balance entropy(coef: 0.05)
                  }
                  layers 2 { first 1: pick, swiglu(hidden: 12)  rest: parallel(attend, swiglu(hidden: 12)) }
                }
                """);
    }

    private static final int BATCH = 3;
    private static final int SEQ = 6;

    /** One training forward (and endStep) from a fresh initialisation: the loss, all logits, the loads and every parameter after endStep. */
    private record Run(double loss, float[] logits, int[][] loads, int[][][] bySequence, List<float[]> params) {}

    private static Run run(TrainableModel m, int[] inputs, int[] targets, boolean[] keep) {
        m.initialize(5);
        for (Parameter p : m.parameters()) {
            if (!p.isBuffer() && p.shape().length > 1) {
                Init.normal(p, 11, 0.3); // larger weights: routing and attention depend visibly on every input
            }
        }
        m.setMask(keep);
        m.setStep(0);
        m.beginStep();
        double loss = m.forward(inputs, targets, BATCH, SEQ);
        float[] logits = logits(m);
        int[][] loads = m.expertLoads();
        int[][][] bySequence = m.expertLoadsBySequence();
        m.endStep();
        List<float[]> params = new ArrayList<>();
        for (Parameter p : m.parameters()) {
            params.add(Arrays.copyOfRange(p.value(), p.offset(), p.offset() + p.size()));
        }
        return new Run(loss, logits, loads, bySequence, params);
    }

    /** All of the last forward's logits, [rows, vocab] (a private field of the generated class). */
    private static float[] logits(TrainableModel m) {
        try {
            var f = m.getClass().getDeclaredField("logits");
            f.setAccessible(true);
            return ((float[]) f.get(m)).clone();
        } catch (ReflectiveOperationException e) {
            throw new AssertionError(e);
        }
    }

    private static boolean sameKeptLogits(float[] a, float[] b, boolean[] keep, int vocab) {
        for (int t = 0; t < keep.length; t++) {
            for (int v = 0; keep[t] && v < vocab; v++) {
                if (Float.floatToRawIntBits(a[t * vocab + v]) != Float.floatToRawIntBits(b[t * vocab + v])) {
                    return false;
                }
            }
        }
        return true;
    }

    /**
     * The "per router, over 10^3 seeded cases": a thousand random masks and replacement ids per
     * model, forward only (the loss and the kept tokens' logits), on one initialisation.
     */
    @ParameterizedTest
    @MethodSource("models")
    void aThousandSeededMasksLeaveTheKeptTokensBitwiseUnchanged(String text) {
        TrainableModel m = Generated.instantiate(Generated.model(text), new CpuBackend(1, true));
        m.initialize(5);
        for (Parameter p : m.parameters()) {
            if (!p.isBuffer() && p.shape().length > 1) {
                Init.normal(p, 11, 0.3);
            }
        }
        var rng = new Init.SplitMix(1000);
        for (int trial = 0; trial < 1000; trial++) {
            int[] inputs = new int[BATCH * SEQ];
            int[] targets = new int[BATCH * SEQ];
            boolean[] keep = new boolean[BATCH * SEQ];
            for (int i = 0; i < inputs.length; i++) {
                inputs[i] = (int) Long.remainderUnsigned(rng.nextLong(), 11);
                targets[i] = (int) Long.remainderUnsigned(rng.nextLong(), 11);
                keep[i] = Long.remainderUnsigned(rng.nextLong(), 3) != 0;
            }
            keep[(int) Long.remainderUnsigned(rng.nextLong(), keep.length)] = true; // at least one kept token
            int[] other = inputs.clone();
            int[] otherTargets = targets.clone();
            for (int i = 0; i < inputs.length; i++) {
                if (!keep[i]) {
                    other[i] = (inputs[i] + 1 + (int) Long.remainderUnsigned(rng.nextLong(), 10)) % 11;
                    otherTargets[i] = (targets[i] + 3) % 11;
                }
            }
            m.setMask(keep);
            m.setStep(0);
            m.beginStep();
            double lossA = m.forward(inputs, targets, BATCH, SEQ);
            float[] logitsA = logits(m);
            m.beginStep();
            double lossB = m.forward(other, otherTargets, BATCH, SEQ);
            float[] logitsB = logits(m);
            String what = "trial " + trial + ", mask " + Arrays.toString(keep);
            assertWithMessage(what).that(Double.doubleToRawLongBits(lossB)).isEqualTo(Double.doubleToRawLongBits(lossA));
            assertWithMessage(what).that(sameKeptLogits(logitsA, logitsB, keep, 11)).isTrue();
        }
    }

    @ParameterizedTest
    @MethodSource("models")
    void droppedTokensLeaveTheOthersBitwiseUnchanged(String text) {
        TrainableModel m = Generated.instantiate(Generated.model(text), new CpuBackend(2, true));
        var rng = new Init.SplitMix(17);
        for (int trial = 0; trial < 3; trial++) {
            int[] inputs = new int[BATCH * SEQ];
            int[] targets = new int[BATCH * SEQ];
            boolean[] keep = new boolean[BATCH * SEQ];
            for (int i = 0; i < inputs.length; i++) {
                inputs[i] = (int) Long.remainderUnsigned(rng.nextLong(), 11);
                targets[i] = (int) Long.remainderUnsigned(rng.nextLong(), 11);
                keep[i] = Long.remainderUnsigned(rng.nextLong(), 3) != 0;
            }
            keep[0] = true;
            keep[1] = false; // a dropped token early in a sequence: every later token could attend to it
            int[] other = inputs.clone();
            int[] otherTargets = targets.clone();
            for (int i = 0; i < inputs.length; i++) {
                if (!keep[i]) {
                    other[i] = (inputs[i] + 1 + (int) Long.remainderUnsigned(rng.nextLong(), 10)) % 11;
                    otherTargets[i] = (targets[i] + 3) % 11;
                }
            }
            Run a = run(m, inputs, targets, keep);
            Run b = run(m, other, otherTargets, keep);
            String what = "trial " + trial + ", mask " + Arrays.toString(keep);
            assertWithMessage(what).that(Double.doubleToRawLongBits(b.loss())).isEqualTo(Double.doubleToRawLongBits(a.loss()));
            assertWithMessage(what).that(sameKeptLogits(a.logits(), b.logits(), keep, 11)).isTrue();
            assertWithMessage(what).that(b.loads()).isEqualTo(a.loads());
            assertWithMessage(what).that(b.bySequence()).isEqualTo(a.bySequence());
            for (int p = 0; p < a.params().size(); p++) {
                assertWithMessage(what + ", " + m.parameters().get(p).name() + " after endStep").that(b.params().get(p)).isEqualTo(a.params().get(p));
            }
            // the check can fail: without the mask the same change of ids does move the kept tokens' logits
            Run plainA = run(m, inputs, targets, null);
            Run plainB = run(m, other, otherTargets, null);
            assertWithMessage(what).that(sameKeptLogits(plainA.logits(), plainB.logits(), keep, 11)).isFalse();
        }
    }

    @ParameterizedTest
    @MethodSource("models")
    void anAllKeptMaskIsNoMask(String text) {
        TrainableModel m = Generated.instantiate(Generated.model(text), new CpuBackend(2, true));
        int[] inputs = new int[BATCH * SEQ];
        int[] targets = new int[BATCH * SEQ];
        for (int i = 0; i < inputs.length; i++) {
            inputs[i] = (i * 7 + 3) % 11;
            targets[i] = (i * 5 + 1) % 11;
        }
        boolean[] all = new boolean[BATCH * SEQ];
        Arrays.fill(all, true);
        Run none = run(m, inputs, targets, null);
        Run kept = run(m, inputs, targets, all);
        assertThat(Double.doubleToRawLongBits(kept.loss())).isEqualTo(Double.doubleToRawLongBits(none.loss()));
        assertThat(kept.logits()).isEqualTo(none.logits());
        assertThat(kept.loads()).isEqualTo(none.loads());
        for (int p = 0; p < none.params().size(); p++) {
            assertThat(kept.params().get(p)).isEqualTo(none.params().get(p));
        }
    }

    @ParameterizedTest
    @MethodSource("models")
    void gradientsUnderAMaskMatchFiniteDifferences(String text) {
        // 2 x 5 tokens, as checkGradients runs them; the first sequence loses a middle token, the second its first
        boolean[] keep = {true, true, false, true, true, false, true, true, false, true};
        GeneratedModelTest.checkGradients(text, 0, List.of(), null, 2e-3, keep);
    }

    @Test
    void badMasksAreRefusedWithAMessage() {
        TrainableModel m = Generated.instantiate(Generated.model(models().get(1)));
        m.initialize(1);
        int[] inputs = new int[BATCH * SEQ];
        m.setMask(new boolean[BATCH * SEQ - 1]);
        var wrongLength = assertThrows(IllegalArgumentException.class, () -> m.forward(inputs, inputs, BATCH, SEQ));
        assertThat(wrongLength).hasMessageThat().contains("padding mask has 17 entries");
        m.setMask(new boolean[BATCH * SEQ]);
        var none = assertThrows(IllegalArgumentException.class, () -> m.forward(inputs, inputs, BATCH, SEQ));
        assertThat(none).hasMessageThat().contains("keeps no token");
    }

    /** The JetMoE and BAM recipes as they are (only the context cut, for speed): a dropped token changes nothing else, bit for bit. */
    @ParameterizedTest
    @org.junit.jupiter.params.provider.ValueSource(strings = {"jetmoe.moe", "bam.moe"})
    void attentionExpertRecipesHonourAMask(String recipe) throws java.io.IOException {
        String text = java.nio.file.Files.readString(java.nio.file.Path.of("../recipes").resolve(recipe)).replace("context 256", "context 8");
        TrainableModel m = Generated.instantiate(Generated.model(text), new CpuBackend(2, true));
        int[] inputs = new int[BATCH * SEQ];
        int[] targets = new int[BATCH * SEQ];
        boolean[] keep = new boolean[BATCH * SEQ];
        for (int i = 0; i < inputs.length; i++) {
            inputs[i] = (i * 37 + 11) % 256;
            targets[i] = (i * 53 + 7) % 256;
            keep[i] = i % 4 != 1;
        }
        int[] other = inputs.clone();
        for (int i = 0; i < inputs.length; i++) {
            if (!keep[i]) {
                other[i] = (inputs[i] + 101) % 256;
            }
        }
        Run a = run(m, inputs, targets, keep);
        Run b = run(m, other, targets, keep);
        assertThat(Double.doubleToRawLongBits(b.loss())).isEqualTo(Double.doubleToRawLongBits(a.loss()));
        assertThat(sameKeptLogits(a.logits(), b.logits(), keep, 256)).isTrue();
        assertThat(b.loads()).isEqualTo(a.loads());
        for (int p = 0; p < a.params().size(); p++) {
            assertThat(b.params().get(p)).isEqualTo(a.params().get(p));
        }
        Run plainA = run(m, inputs, targets, null);
        Run plainB = run(m, other, targets, null);
        assertThat(sameKeptLogits(plainA.logits(), plainB.logits(), keep, 256)).isFalse();
        // the loads count the kept tokens only: top-2 attention experts in JetMoE's first MoE of each layer
        if (recipe.equals("jetmoe.moe")) {
            int kept = 0;
            for (boolean k : keep) {
                kept += k ? 1 : 0;
            }
            assertThat(java.util.Arrays.stream(a.loads()[0]).sum()).isEqualTo(2 * kept);
        }
    }
}
