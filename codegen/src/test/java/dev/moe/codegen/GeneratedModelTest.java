package dev.moe.codegen;

import static com.google.common.truth.Truth.assertThat;
import static com.google.common.truth.Truth.assertWithMessage;

import dev.moe.compiler.ir.Model;
import dev.moe.compiler.ir.Param;
import dev.moe.runtime.Init;
import dev.moe.runtime.Parameter;
import dev.moe.runtime.TrainableModel;
import dev.moe.runtime.cpu.CpuBackend;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.MethodSource;
import org.junit.jupiter.api.Test;

/**
 * The generated forward and backward passes, run: parameters as the IR declares them, the whole
 * model's backward against finite differences of its forward, and determinism.
 */
class GeneratedModelTest {
    /** Tiny models covering what the generator supports: norms, attention options, dense and MoE layers, router variants, losses. */
    static List<String> tinyModels() {
        String header = """
                model Tiny {
                  vocab 11  context 6  dim 8  heads 2  kv_heads 1
                """;
        return List.of(
                header + """
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
                header + """
                  norm layer(eps: 1e-5)
                  qk_norm true
                  qkv_bias true
                  tie_embeddings true
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
                // OLMoE's qk-norm: one RMSNorm over all heads of q and of k.
                header + """
                  qk_norm full
                  moe m {
                    routed 4 x swiglu(hidden: 5)
                    router { top_k 2 }
                  }
                  layers 1 { all: attention, m }
                }
                """,
                header + """
                  moe m {
                    shared 1 x geglu(hidden: 4, gate: sigmoid)
                    routed 4 x swiglu(hidden: 5)
                    router { score sigmoid  top_k 2  normalize true  scale 2.5  bias aux_free(rate: 0.01) }
                    balance aux(coef: 0.1, scope: global_batch)
                  }
                  layers 2 { all: attention, m }
                }
                """,
                // MoE++ zero-computation experts among FFN experts, declared out of order: the
                // dispatch puts the FFN experts' slots first; tau weights the others' aux loss.
                header + """
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
                // MoE++ gating residual over three MoE layers (the first without; a dense layer
                // between; experts counts differ, so the residual maps are not square).
                header + """
                  moe g(residual = true, n = 4) {
                    routed n x swiglu(hidden: 5)
                    routed 1 x zero
                    routed 1 x constant
                    router { top_k 2  gating_residual residual }
                    balance aux(coef: 0.1, tau: 0.75)
                  }
                  layers 4 {
                    first 1: attention, g(residual: false, n: 3)
                    1: attention, swiglu(hidden: 12)
                    rest: attention, g
                  }
                }
                """,
                // DeepSeek-V3 group-limited top-k: 3 groups of 2, the best 2 groups by the sum of their top-2 scores (with bias)
                header + """
                  moe m {
                    shared 1 x swiglu(hidden: 4)
                    routed 6 x swiglu(hidden: 5)
                    router { score sigmoid  top_k 2  normalize true  scale 1.5  bias aux_free(rate: 0.01)  groups limited(groups: 3, top: 2) }
                    balance aux(coef: 0.1)
                  }
                  layers 2 { all: attention, m }
                }
                """,
                // MoGE grouped experts: 2 groups of 3, top-1 in each
                header + """
                  moe m {
                    routed 6 x swiglu(hidden: 5)
                    router { top_k 2  normalize true  groups quota(2) }
                    balance aux(coef: 0.1)
                    balance z_loss(coef: 0.01)
                  }
                  layers 2 { all: attention, m }
                }
                """,
                // router temperature: softmax(logits / 0.5); then tanh before a temperature of 0.25, top-k of the logits first
                header + """
                  moe m {
                    routed 4 x swiglu(hidden: 5)
                    router { top_k 2  normalize true  temperature 0.5 }
                    balance aux(coef: 0.1)
                    balance z_loss(coef: 0.01)
                  }
                  moe t {
                    routed 4 x swiglu(hidden: 5)
                    router { order topk_then_softmax  top_k 2  temperature 0.25  activation tanh }
                    balance z_loss(coef: 0.01)
                  }
                  layers 2 { first 1: attention, m  rest: attention, t }
                }
                """,
                // sigmoid before the softmax (temperature 1)
                header + """
                  moe m {
                    routed 4 x swiglu(hidden: 5)
                    router { top_k 2  activation sigmoid }
                    balance aux(coef: 0.1, scope: sequence)
                  }
                  layers 2 { all: attention, m }
                }
                """,
                // top-p routing: between 1 and max_k experts per token, with the entropy loss
                header + """
                  moe m {
                    shared 1 x swiglu(hidden: 4)
                    routed 5 x swiglu(hidden: 5)
                    router { top_p 0.5  max_k 3  normalize true }
                    balance aux(coef: 0.1)
                    balance entropy(coef: 0.05)
                    balance z_loss(coef: 0.01)
                  }
                  layers 2 { all: attention, m }
                }
                """,
                // top-p among FFN and zero-computation experts (keyed dispatch), unnormalised and scaled, sequence-scope aux
                header + """
                  moe m {
                    routed 1 x zero
                    routed 4 x swiglu(hidden: 5)
                    routed 1 x copy
                    router { top_p 0.7  max_k 4  scale 2  temperature 0.5 }
                    balance aux(coef: 0.1, scope: sequence, tau: 0.5)
                    balance entropy(coef: 0.1)
                  }
                  layers 2 { all: attention, m }
                }
                """,
                // router input jitter (training forwards; the same noise within a step's first micro-batch)
                header + """
                  moe m {
                    routed 4 x swiglu(hidden: 5)
                    router { top_k 2  normalize true  jitter 0.2 }
                    balance aux(coef: 0.1)
                    balance z_loss(coef: 0.01)
                  }
                  layers 2 { all: attention, m }
                }
                """,
                // PR-MoE residual blocks: a top-1 MoE and a dense FFN mixed per token by softmax(residual_mix · h)
                header + """
                  ffn d = swiglu(hidden: 6)
                  moe m {
                    shared 1 x swiglu(hidden: 4)
                    routed 4 x swiglu(hidden: 5)
                    router { top_k 1 }
                    balance aux(coef: 0.1)
                    balance z_loss(coef: 0.01)
                  }
                  layers 2 { first 1: attention, swiglu(hidden: 12)  rest: residual(attention, d, m) }
                }
                """,
                // LongCat shortcut-connected blocks: the MoE reads norm(stream) after the first attention, its output joins at the end
                header + """
                  ffn d = swiglu(hidden: 6)
                  moe m {
                    shared 1 x swiglu(hidden: 4)
                    routed 4 x swiglu(hidden: 5)
                    router { top_k 2  normalize true }
                    balance aux(coef: 0.1)
                  }
                  layers 2 { all: shortcut(attention, d, m) }
                }
                """,
                // capacity factors: slots over an expert's capacity are dropped (by position, by weight)
                header + """
                  moe m {
                    routed 4 x swiglu(hidden: 5)
                    router { top_k 2  normalize true  capacity factor(0.75, drop: position) }
                    balance aux(coef: 0.1)
                    balance z_loss(coef: 0.01)
                  }
                  moe p {
                    shared 1 x swiglu(hidden: 4)
                    routed 4 x swiglu(hidden: 5)
                    router { top_k 2  capacity factor(1.0, drop: probability) }
                    balance aux(coef: 0.1, scope: sequence)
                  }
                  layers 2 { first 1: attention, m  rest: attention, p }
                }
                """,
                // random drop priorities (seeded by step, micro-batch and layer) with a zero expert among FFN experts (keyed dispatch)
                header + """
                  moe m {
                    routed 1 x zero
                    routed 3 x swiglu(hidden: 5)
                    router { top_k 2  normalize true  capacity factor(0.75, drop: random) }
                    balance aux(coef: 0.1, tau: 0.5)
                  }
                  layers 2 { all: attention, m }
                }
                """,
                // expert-choice routing: in each sequence, each expert picks its best ceil(1.0 * seq / 4) tokens
                header + """
                  moe m {
                    shared 1 x swiglu(hidden: 4)
                    routed 4 x swiglu(hidden: 5)
                    router { mode expert_choice  capacity factor(1.0) }
                    balance z_loss(coef: 0.01)
                  }
                  layers 2 { first 1: attention, swiglu(hidden: 12)  rest: attention, m }
                }
                """,
                // MoLE latent experts: a down-projection to rank 3 shared by the group, then per-expert FFNs from rank 3; a copy expert declared first
                header + """
                  moe m {
                    shared 1 x swiglu(hidden: 4)
                    routed 1 x copy
                    routed 4 x latent(rank: 3, ffn: swiglu(hidden: 5))
                    router { top_k 2  normalize true }
                    balance aux(coef: 0.1)
                    balance z_loss(coef: 0.01)
                  }
                  layers 2 { all: attention, m }
                }
                """,
                // MoLA LoRA experts: a frozen swiglu base for every token, each selected expert adding weight · alpha/rank · B A to each projection
                header + """
                  moe m {
                    shared 1 x swiglu(hidden: 4)
                    routed 4 x lora(rank: 2, alpha: 4, base: swiglu(hidden: 5))
                    router { top_k 2  normalize true }
                    balance aux(coef: 0.1)
                  }
                  layers 2 { first 1: attention, swiglu(hidden: 12)  rest: attention, m }
                }
                """,
                // RMoE recurrent routers: one GRU cell whose state runs through layers 1 and 3 (past a dense layer); layer 0's router is plain
                header + """
                  moe plain {
                    routed 4 x swiglu(hidden: 5)
                    router { top_k 2  normalize true }
                    balance aux(coef: 0.1)
                  }
                  moe rec {
                    shared 1 x swiglu(hidden: 4)
                    routed 4 x swiglu(hidden: 5)
                    router { top_k 2  normalize true  recurrent gru(width: 3) }
                    balance aux(coef: 0.1)
                    balance z_loss(coef: 0.01)
                  }
                  layers 4 { first 1: attention, plain  2: attention, swiglu(hidden: 12)  rest: attention, rec }
                }
                """,
                // Read-ME pre-gating: every layer's router reads the embeddings (one with jitter, one sigmoid)
                header + """
                  moe m {
                    routed 4 x swiglu(hidden: 5)
                    router { top_k 2  normalize true  pregate true  jitter 0.1 }
                    balance aux(coef: 0.1)
                  }
                  moe s {
                    routed 4 x swiglu(hidden: 5)
                    router { score sigmoid  top_k 2  pregate true }
                    balance z_loss(coef: 0.01)
                  }
                  layers 2 { first 1: attention, m  rest: parallel(attention, s) }
                }
                """,
                // JetMoE attention experts: top-2 of 3 (two of 2 heads of 2, one of 1 head of 4, each with its own keys and values), a shared one, before an MoE
                header + """
                  moe heads {
                    shared 1 x attention(heads: 1, head_dim: 4)
                    routed 2 x attention(heads: 2, head_dim: 2)
                    routed 1 x attention(heads: 1, head_dim: 4)
                    router { order topk_then_softmax  top_k 2 }
                    balance aux(coef: 0.1)
                    balance z_loss(coef: 0.01)
                  }
                  moe m {
                    routed 4 x swiglu(hidden: 5)
                    router { top_k 2  normalize true }
                    balance aux(coef: 0.1)
                  }
                  layers 2 { first 1: heads, m  rest: attention, swiglu(hidden: 12) }
                }
                """,
                // BAM: a soft mixture of attention experts sharing keys and values, in parallel with a soft MoE of FFN experts
                header + """
                  moe bam {
                    routed 3 x attention(heads: 2, head_dim: 4, shared_kv: true)
                    router { mode soft }
                    balance z_loss(coef: 0.01)
                  }
                  moe soft {
                    routed 3 x swiglu(hidden: 5)
                    router { mode soft  temperature 0.5 }
                    balance aux(coef: 0.1)
                  }
                  layers 2 { all: parallel(bam, soft) }
                }
                """,
                // LoRA experts among zero-computation ones (declared first: keyed dispatch): a token may skip the adapters
                header + """
                  moe m {
                    routed 1 x zero
                    routed 3 x lora(rank: 2, alpha: 4, base: swiglu(hidden: 5))
                    routed 1 x copy
                    router { top_k 2  normalize true }
                    balance aux(coef: 0.1, tau: 0.5)
                  }
                  layers 2 { all: attention, m }
                }
                """,
                // LoRA over an ungated base
                header + """
                  moe m {
                    routed 3 x lora(rank: 2, alpha: 3, base: gelu(hidden: 5))
                    router { top_k 2 }
                    balance z_loss(coef: 0.01)
                  }
                  layers 2 { all: attention, m }
                }
                """);
    }

    @ParameterizedTest
    @MethodSource("tinyModels")
    void parametersAreTheIrs(String text) {
        Model ir = Generated.model(text);
        TrainableModel m = Generated.instantiate(ir);
        List<String> generated = m.parameters().stream().map(p -> p.name() + Arrays.toString(p.shape()) + (p.isBuffer() ? " buffer" : "")).toList();
        List<String> declared = ir.params().stream()
                .map(p -> p.name() + p.shape().stream().map(Long::intValue).toList().toString().replace(" ", "").replace(",", ", ")
                        + (p.kind() == Param.Kind.BUFFER ? " buffer" : "")).toList();
        assertThat(generated).containsExactlyElementsIn(declared).inOrder();
    }

    @ParameterizedTest
    @MethodSource("tinyModels")
    void backwardMatchesFiniteDifferences(String text) {
        checkGradients(text, 0);
    }

    /** The whole model's backward against central differences of its forward, at optimiser step {@code step}. */
    static void checkGradients(String text, long step) {
        checkGradients(text, step, List.of());
    }

    /** The same, with the two sequences' data domains (for models with named gates). */
    static void checkGradients(String text, long step, List<String> domains) {
        checkGradients(text, step, domains, null, 2e-3);
    }

    /**
     * With {@code focus}, only the parameters it accepts are checked, every element of them, against
     * the absolute tolerance {@code absolute}; they are drawn from Normal(0, 0.5), vectors included.
     */
    static void checkGradients(String text, long step, List<String> domains, java.util.function.Predicate<String> focus, double absolute) {
        checkGradients(text, step, domains, focus, absolute, null);
    }

    /** The same, with a padding mask over the batch's 2 x 5 tokens (null: none). */
    static void checkGradients(String text, long step, List<String> domains, java.util.function.Predicate<String> focus, double absolute,
            boolean[] keep) {
        TrainableModel m = Generated.instantiate(Generated.model(text));
        m.setDomains(domains);
        m.setMask(keep);
        m.initialize(7);
        // Larger weights than the default init make every path's gradient visible above fp32 noise.
        for (Parameter p : m.parameters()) {
            if (!p.isBuffer() && focus != null && focus.test(p.name())) {
                Init.normal(p, 13, 0.5);
            } else if (!p.isBuffer() && p.shape().length > 1) {
                Init.normal(p, 11, 0.3);
            }
        }
        int batch = 2;
        int seq = 5;
        int[] inputs = new int[batch * seq];
        int[] targets = new int[batch * seq];
        var rng = new Init.SplitMix(3);
        for (int i = 0; i < inputs.length; i++) {
            inputs[i] = (int) Long.remainderUnsigned(rng.nextLong(), 11);
            targets[i] = (int) Long.remainderUnsigned(rng.nextLong(), 11);
        }
        m.parameters().forEach(Parameter::zeroGrad);
        m.setStep(step);
        m.beginStep();
        m.forward(inputs, targets, batch, seq);
        m.backward(1f);
        int[][] routing = m.expertLoads();
        int checked = 0;
        List<String> failures = new ArrayList<>();
        for (Parameter p : m.parameters()) {
            if (p.isBuffer() || (focus != null && !focus.test(p.name()))) {
                continue;
            }
            for (int probe = 0; probe < (focus == null ? 3 : p.size()); probe++) {
                int i = p.offset() + (focus == null ? (int) Long.remainderUnsigned(rng.nextLong(), p.size()) : probe);
                double analytic = p.grad()[i];
                float saved = p.value()[i];
                double h = 1e-2;
                p.value()[i] = (float) (saved + h);
                m.beginStep();
                double up = m.forward(inputs, targets, batch, seq);
                boolean sameRoutingUp = Arrays.deepEquals(routing, m.expertLoads());
                p.value()[i] = (float) (saved - h);
                m.beginStep();
                double down = m.forward(inputs, targets, batch, seq);
                boolean sameRoutingDown = Arrays.deepEquals(routing, m.expertLoads());
                p.value()[i] = saved;
                if (!sameRoutingUp || !sameRoutingDown) {
                    continue; // the probe moved a token across a top-k boundary: the loss is not differentiable there
                }
                double numeric = (up - down) / (2 * h);
                checked++;
                if (Math.abs(analytic - numeric) > absolute + 3e-2 * Math.abs(numeric)) {
                    failures.add(String.format("%s[%d]: analytic %.6g numeric %.6g", p.name(), i - p.offset(), analytic, numeric));
                }
            }
        }
        assertWithMessage("gradient mismatches").that(failures).isEmpty();
        assertThat(checked).isGreaterThan(20);
    }

    @ParameterizedTest
    @MethodSource("tinyModels")
    void aBatchSplitInTwoGivesTheSameOutputsBitwise(String text) {
        TrainableModel m = Generated.instantiate(Generated.model(text), new CpuBackend(2, true));
        m.initialize(9);
        int[] both = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10};
        float[] together = m.lastLogits(both, 2, 5);
        float[] first = m.lastLogits(Arrays.copyOfRange(both, 0, 5), 1, 5);
        float[] second = m.lastLogits(Arrays.copyOfRange(both, 5, 10), 1, 5);
        float[] apart = new float[together.length];
        System.arraycopy(first, 0, apart, 0, first.length);
        System.arraycopy(second, 0, apart, first.length, second.length);
        assertThat(apart).isEqualTo(together);
    }

    @Test
    void sameSeedSameLossOnOneAndTwoThreads() {
        Model ir = Generated.model(tinyModels().getFirst());
        double[] losses = new double[2];
        for (int threads = 1; threads <= 2; threads++) {
            TrainableModel m = Generated.instantiate(ir, new CpuBackend(threads, true));
            m.initialize(5);
            int[] inputs = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10};
            int[] targets = {2, 3, 4, 5, 6, 7, 8, 9, 10, 0};
            m.beginStep();
            losses[threads - 1] = m.forward(inputs, targets, 2, 5);
        }
        assertThat(losses[0]).isEqualTo(losses[1]);
        assertThat(losses[0]).isWithin(0.5).of(Math.log(11));
    }
}
