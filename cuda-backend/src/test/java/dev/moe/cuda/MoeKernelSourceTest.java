package dev.moe.cuda;

import static com.google.common.truth.Truth.assertThat;
import static org.junit.jupiter.api.Assertions.assertThrows;

import dev.moe.cuda.kernels.MoeKernelSource;
import dev.moe.cuda.kernels.MoeKernelSource.Drop;
import dev.moe.cuda.kernels.MoeKernelSource.ExpertActivation;
import dev.moe.cuda.kernels.MoeKernelSource.LogitActivation;
import dev.moe.cuda.kernels.MoeKernelSource.Options;
import dev.moe.cuda.kernels.MoeKernelSource.Precision;
import dev.moe.cuda.kernels.MoeKernelSource.Score;
import dev.moe.cuda.kernels.MoeKernelSource.Spec;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.Assumptions;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

class MoeKernelSourceTest {
    static final Spec DEEPSEEK = new Spec(2048, 1408, 64, 6, Score.SOFTMAX, true, 1f, false, Precision.BF16);
    static final Spec V3 = new Spec(64, 32, 256, 8, Score.SIGMOID, true, 2.5f, true, Precision.FP32);

    /** Top-p with max_k 8, an annealed tanh temperature and an entropy loss (EvoMoE's dense-to-sparse gate). */
    static final Spec TOP_P = new Spec(128, 256, 8, 0, 0, 8, Score.SOFTMAX, false, 1f, false, Precision.FP32,
            Options.NONE.withTopP(0.8f).withTemperature(LogitActivation.TANH).withEntropy());
    /** MoGE: one expert from each of 4 groups of 4. */
    static final Spec QUOTA = new Spec(128, 64, 16, 4, Score.SOFTMAX, false, 1f, false, Precision.BF16).with(Options.NONE.withQuotaGroups(4));
    /** DeepSeek-V3: the best 4 of 8 groups, then top-8 among their experts. */
    static final Spec LIMITED = V3.with(Options.NONE.withGroupLimit(8, 4));
    /** Expert choice over 8 experts (k = E). */
    static final Spec EXPERT_CHOICE = new Spec(64, 32, 8, 8, Score.SOFTMAX, false, 1f, false, Precision.BF16).with(Options.NONE.withExpertChoice(2f));
    /** MoE++: 8 FFN experts, 1 zero, 1 copy and 2 constant experts, top-2, a gating residual. */
    static final Spec MOEPP = new Spec(128, 256, 8, 1, 1, 2, 2, Score.SOFTMAX, false, 1f, false, Precision.BF16,
            Options.NONE.withGatingResidual());

    @Test
    void constantExpertsAndTheGatingResidualAreBakedIn() {
        String src = MoeKernelSource.generate(MOEPP);
        assertThat(MOEPP.routed()).isEqualTo(12);
        assertThat(MOEPP.firstConstant()).isEqualTo(10);
        assertThat(src).contains("#define ER 12 ");
        assertThat(src).contains("#define CONST 2 ");
        assertThat(src).contains("#define CONST0 10\n");
        assertThat(src).contains("#define FP32_DLOGITS 1 ");
        assertThat(src).contains("extern \"C\" __global__ void constant_mix(");
        assertThat(src).contains("extern \"C\" __global__ void constant_grads(");
        // a layer without them compiles the new code out
        String plain = MoeKernelSource.generate(DEEPSEEK);
        assertThat(plain).contains("#define CONST 0\n");
        assertThat(plain).contains("#define FP32_DLOGITS 0 ");
        // a recurrent router's extra logits need the same fp32 logit gradient
        assertThat(MoeKernelSource.generate(DEEPSEEK.with(Options.NONE.withExtraLogits()))).contains("#define FP32_DLOGITS 1 ");
        assertThat(plain).doesNotContain("#define CONST0");
        assertThat(MoeKernelSource.generate(new Spec(8, 8, 4, 1, 1, 2, Score.SOFTMAX, true, 1f, false, Precision.FP32, Options.NONE)))
                .isEqualTo(MoeKernelSource.generate(new Spec(8, 8, 4, 1, 1, 0, 2, Score.SOFTMAX, true, 1f, false, Precision.FP32, Options.NONE)));
        assertThrows(IllegalArgumentException.class, () -> new Spec(8, 8, 1, 0, 0, 1, 3, Score.SOFTMAX, true, 1f, false, Precision.FP32, Options.NONE));
        assertThrows(IllegalArgumentException.class, () -> MOEPP.withConstantExperts(-1));
    }

    @Test
    void theRouterOptionsAreBakedInAsConstants() {
        String topP = MoeKernelSource.generate(TOP_P);
        assertThat(topP).contains("#define HAS_TOP_P 1\n#define TOP_P 0.8\n");
        assertThat(topP).contains("#define TEMPERATURE 1\n");
        assertThat(topP).contains("#define LOGIT_ACT 1 ");
        assertThat(topP).contains("#define ENTROPY 1\n");
        // an unused top-p slot holds no expert, so the combine must check each slot's kind
        assertThat(topP).contains("#define SLOT_KINDS (ER != E || CAPACITY || HAS_TOP_P || EXPERT_CHOICE)");
        String quota = MoeKernelSource.generate(QUOTA);
        assertThat(quota).contains("#define QUOTA 4\n");
        assertThat(quota).contains("#define HAS_TOP_P 0\n");
        assertThat(quota).contains("#define CAPACITY 0 ");
        String limited = MoeKernelSource.generate(LIMITED);
        assertThat(limited).contains("#define LIMIT_GROUPS 8\n");
        assertThat(limited).contains("#define LIMIT_TOP 4\n");
        assertThat(MoeKernelSource.generate(DEEPSEEK)).contains("#define TEMPERATURE 0\n");
        String ec = MoeKernelSource.generate(EXPERT_CHOICE);
        assertThat(ec).contains("#define EXPERT_CHOICE 1 ");
        assertThat(ec).contains("expert_choice_keep");
        assertThat(MoeKernelSource.generate(DEEPSEEK)).contains("#define EXPERT_CHOICE 0 ");
        // expert choice ranks every expert: k must be E
        assertThrows(IllegalArgumentException.class, () -> new Spec(64, 32, 8, 2, Score.SOFTMAX, false, 1f, false, Precision.BF16)
                .with(Options.NONE.withExpertChoice(2f)));
    }

    @Test
    void routerOptionsTheKernelsCannotRunAreRefused() {
        // quota groups must divide E and k; limited groups must divide E, at most 32, keeping 1 to all of them
        assertThrows(IllegalArgumentException.class, () -> QUOTA.with(Options.NONE.withQuotaGroups(3)));
        assertThrows(IllegalArgumentException.class, () -> new Spec(8, 8, 8, 3, Score.SOFTMAX, true, 1f, false, Precision.FP32).with(
                Options.NONE.withQuotaGroups(2)));
        assertThrows(IllegalArgumentException.class, () -> V3.with(Options.NONE.withGroupLimit(64, 4)));
        assertThrows(IllegalArgumentException.class, () -> V3.with(Options.NONE.withGroupLimit(8, 9)));
        assertThrows(IllegalArgumentException.class, () -> Options.NONE.withTopP(1.5f));
    }

    @Test
    void theDeclarationIsBakedInAsConstants() {
        String src = MoeKernelSource.generate(DEEPSEEK);
        assertThat(src).contains("#define E 64 ");
        assertThat(src).contains("#define ER 64 ");
        assertThat(src).contains("#define K 6\n");
        assertThat(src).contains("#define EPT 2 ");
        assertThat(src).contains("#define SOFTMAX 1\n");
        assertThat(src).contains("typedef unsigned short act_t;");
        String v3 = MoeKernelSource.generate(V3);
        assertThat(v3).contains("#define SOFTMAX 0\n");
        assertThat(v3).contains("#define SCALE 2.5f\n");
        assertThat(v3).contains("#define HAS_BIAS 1\n");
        assertThat(v3).contains("#define EPT 8 ");
        assertThat(v3).contains("typedef float act_t;");
    }

    /** MoLE's latent experts: the experts' rows (gathered, and their input gradient) are DIN wide, the router's D. */
    @Test
    void theExpertsInputWidthIsBakedIn() {
        assertThat(MoeKernelSource.generate(V3)).contains("#define DIN 64 ");
        String latent = MoeKernelSource.generate(V3.withExpertIn(20));
        assertThat(latent).startsWith("// Generated by moe for an MoE layer: D=64 DIN=20 F=32");
        assertThat(latent).contains("#define D 64\n#define DIN 20 ");
        assertThat(latent).contains("const act_t* src = x + (long) t * DIN;");
        assertThat(latent).contains("st(dx, (long) t * DIN + c, acc);");
        assertThat(V3.withExpertIn(20).with(Options.NONE).expertIn()).isEqualTo(20);
        assertThat(V3.withExpertIn(20).withConstantExperts(0).expertIn()).isEqualTo(20);
        // copy and constant experts output the experts' input: it must be as wide as the output
        assertThrows(IllegalArgumentException.class, () -> MOEPP.withExpertIn(32));
        assertThrows(IllegalArgumentException.class, () -> V3.withExpertIn(0));
    }

    @Test
    void theExpertActivationAndCapacityAreBakedIn() {
        String none = MoeKernelSource.generate(DEEPSEEK);
        assertThat(none).contains("#define ACT 0 ");
        assertThat(none).contains("#define GATED 1 ");
        assertThat(none).contains("#define GW 2816\n");
        assertThat(none).contains("#define CAPACITY 0 ");
        assertThat(none).contains("#define DROP_BY_PROBABILITY 0 ");
        assertThat(none).contains("#define RANDOM_DROP 0\n");
        assertThat(none).contains("extern \"C\" __global__ void expert_act(");
        assertThat(none).contains("extern \"C\" __global__ void expert_act_backward(");
        // the capacity kernels exist only where a capacity factor is declared
        assertThat(none).contains("#if CAPACITY\n");
        String geglu = MoeKernelSource.generate(DEEPSEEK.with(Options.NONE.withActivation(ExpertActivation.GEGLU)));
        assertThat(geglu).contains("#define ACT 1 ");
        assertThat(geglu).contains("#define GATED 1 ");
        String relu = MoeKernelSource.generate(DEEPSEEK.with(Options.NONE.withActivation(ExpertActivation.RELU)));
        assertThat(relu).contains("#define ACT 2 ");
        assertThat(relu).contains("#define GATED 0 ");
        assertThat(relu).contains("#define GW 1408\n");
        String gelu = MoeKernelSource.generate(DEEPSEEK.with(Options.NONE.withActivation(ExpertActivation.GELU).withCapacity(1.25f, Drop.PROBABILITY)));
        assertThat(gelu).contains("#define ACT 1 ");
        assertThat(gelu).contains("#define GATED 0 ");
        assertThat(gelu).contains("#define CAPACITY 1 ");
        assertThat(gelu).contains("#define DROP_BY_PROBABILITY 1 ");
        String position = MoeKernelSource.generate(DEEPSEEK.with(Options.NONE.withCapacity(1.25f, Drop.POSITION)));
        assertThat(position).contains("#define CAPACITY 1 ");
        assertThat(position).contains("#define DROP_BY_PROBABILITY 0 ");
        // random drops: the probability path's kernel with seeded priorities as keys
        String random = MoeKernelSource.generate(DEEPSEEK.with(Options.NONE.withCapacity(1.25f, Drop.RANDOM)));
        assertThat(random).contains("#define DROP_BY_PROBABILITY 1 ");
        assertThat(random).contains("#define RANDOM_DROP 1\n");
        assertThat(random).contains("extern \"C\" __global__ void random_priority(");
        // a dropped slot has no row (rank -1, pos -1) and the combine treats it as a zero expert's
        assertThat(position).contains("int p = e < E && r >= 0 ? offsets[e] + r : -1;");
        assertThat(position).contains("#define SLOT_KIND(e, p) ((e) < E ? ((p) >= 0 ? 0 : 1) : ((e) < E + ZERO || (e) >= ER ? 1 : 2))");
        assertThat(position).contains("sk[threadIdx.x] = SLOT_KIND(e, pos[i]);");
        assertThat(position).contains("#define SLOT_KINDS (ER != E || CAPACITY || HAS_TOP_P || EXPERT_CHOICE)");
        for (String k : new String[] {"capacity_order", "capacity_keep"}) {
            assertThat(position).contains("extern \"C\" __global__ void " + k + "(");
        }
        // the other options leave the source of a plain layer as it was
        assertThat(MoeKernelSource.generate(DEEPSEEK.with(Options.NONE))).isEqualTo(none);
    }

    /** The aux loss's kernels serve both score functions (the z-loss's and entropy's statistics softmax only). */
    @Test
    void theBalanceKernelsServeSigmoidScores() {
        for (Spec spec : new Spec[] {V3, DEEPSEEK}) {
            String src = MoeKernelSource.generate(spec);
            int softmaxOnly = src.indexOf("#if SOFTMAX\n// One warp per token: the column sums");
            assertThat(softmaxOnly).isGreaterThan(0);
            int end = src.indexOf("#endif\n", softmaxOnly);
            int stats = src.indexOf("extern \"C\" __global__ void router_balance_stats(");
            assertThat(stats).isGreaterThan(softmaxOnly);
            assertThat(stats).isLessThan(end);
            for (String k : new String[] {"router_sequence_stats", "router_backward_balance"}) {
                assertThat(src.indexOf("extern \"C\" __global__ void " + k + "(")).isGreaterThan(end);
            }
            assertThat(src).contains("__host__ __device__ inline void balance_row(");
        }
    }

    @Test
    void generationIsDeterministicSoTheDiskCacheHits() {
        assertThat(MoeKernelSource.generate(DEEPSEEK)).isEqualTo(MoeKernelSource.generate(DEEPSEEK));
    }

    @Test
    void declarationsTheKernelsCannotRunAreRefused() {
        assertThrows(IllegalArgumentException.class, () -> new Spec(8, 8, 4, 5, Score.SOFTMAX, true, 1f, false, Precision.BF16));
        assertThrows(IllegalArgumentException.class, () -> new Spec(8, 8, 2048, 2, Score.SOFTMAX, true, 1f, false, Precision.BF16));
        assertThrows(IllegalArgumentException.class, () -> new Spec(0, 8, 4, 2, Score.SOFTMAX, true, 1f, false, Precision.BF16));
    }

    @Test
    void theLoraKernelsBakeInK() {
        String src = dev.moe.cuda.kernels.LoraKernelSource.generate(3);
        assertThat(src).contains("#define K 3\n");
        for (String k : new String[] {"lora_add_updates", "lora_gather", "lora_scatter_add", "lora_updates_backward", "lora_scale"}) {
            assertThat(src).contains("extern \"C\" __global__ void " + k + "(");
        }
        assertThrows(IllegalArgumentException.class, () -> dev.moe.cuda.kernels.LoraKernelSource.generate(33));
        assertThrows(IllegalArgumentException.class, () -> dev.moe.cuda.kernels.LoraKernelSource.generate(0));
    }

    /** Where the CUDA toolkit's nvcc is installed (as on these machines), the generated C must compile for sm_90. */
    @Test
    void theGeneratedSourceCompilesWithNvcc(@TempDir Path dir) throws Exception {
        Path nvcc = Path.of("/usr/local/cuda/bin/nvcc");
        if (!Files.isExecutable(nvcc)) {
            nvcc = Path.of("/usr/local/bin/nvcc");
        }
        Assumptions.assumeTrue(Files.isExecutable(nvcc), "nvcc is not installed: the CUDA C is compiled only on the GPU machine");
        java.util.List<String> sources = new java.util.ArrayList<>();
        for (Spec spec : new Spec[] {DEEPSEEK, V3, new Spec(23, 17, 3, 1, Score.SOFTMAX, false, 1f, false, Precision.BF16),
            new Spec(64, 32, 8, 2, 3, 2, Score.SOFTMAX, true, 1f, false, Precision.BF16), TOP_P, QUOTA, LIMITED, MOEPP, EXPERT_CHOICE,
            MOEPP.with(Options.NONE), MOEPP.withConstantExperts(0), TOP_P.withConstantExperts(3)}) {
            sources.add(MoeKernelSource.generate(spec));
        }
        // every expert activation, with and without a capacity factor (by position and by probability), both precisions
        for (Precision p : Precision.values()) {
            for (ExpertActivation a : ExpertActivation.values()) {
                Spec base = new Spec(48, 40, 8, 2, Score.SOFTMAX, true, 1f, false, p).with(Options.NONE.withActivation(a));
                sources.add(MoeKernelSource.generate(base));
                for (Drop drop : Drop.values()) {
                    sources.add(MoeKernelSource.generate(base.with(base.options().withCapacity(1.25f, drop))));
                }
            }
            sources.add(MoeKernelSource.generate(new Spec(23, 17, 3, 1, Score.SIGMOID, false, 1f, true, p)
                    .with(Options.NONE.withActivation(ExpertActivation.RELU).withCapacity(1f, Drop.PROBABILITY))));
            sources.add(MoeKernelSource.generate(new Spec(64, 32, 8, 2, 3, 2, Score.SOFTMAX, true, 1f, false, p)
                    .with(Options.NONE.withActivation(ExpertActivation.GEGLU))));
            // MoE++: constant experts (an odd width, ungated experts), a gating residual, with a temperature and an entropy loss
            sources.add(MoeKernelSource.generate(new Spec(23, 17, 3, 1, 0, 3, 2, Score.SOFTMAX, true, 1f, false, p,
                    Options.NONE.withActivation(ExpertActivation.RELU).withGatingResidual().withTemperature(LogitActivation.SIGMOID).withEntropy())));
            sources.add(MoeKernelSource.generate(new Spec(23, 17, 3, 0, 0, 1, 2, Score.SIGMOID, false, 1f, true, p, Options.NONE.withGatingResidual())));
            // MoLE's latent experts: rows of the rank (16-byte copies or not), zero experts, a capacity factor
            sources.add(MoeKernelSource.generate(new Spec(128, 128, 8, 2, Score.SOFTMAX, true, 1f, false, p).withExpertIn(32)));
            sources.add(MoeKernelSource.generate(new Spec(40, 24, 16, 3, 0, 0, 4, Score.SIGMOID, true, 2.5f, true, p,
                    Options.NONE.withActivation(ExpertActivation.RELU)).withExpertIn(21)));
            sources.add(MoeKernelSource.generate(new Spec(48, 40, 8, 2, Score.SOFTMAX, true, 1f, false, p)
                    .with(Options.NONE.withCapacity(1f, Drop.POSITION)).withExpertIn(21)));
            // sigmoid scores' balancing kernels (the aux loss over scores normalised per token) through a temperature, with an fp32 logit gradient
            sources.add(MoeKernelSource.generate(new Spec(40, 24, 12, 3, Score.SIGMOID, true, 2.5f, true, p)
                    .with(Options.NONE.withTemperature(LogitActivation.TANH).withGatingResidual().withGroupLimit(4, 2))));
            // RMoE: extra logits (a recurrent router's), with a gating residual and an entropy loss, and alone
            sources.add(MoeKernelSource.generate(new Spec(23, 17, 3, 1, 0, 1, 2, Score.SOFTMAX, true, 1f, false, p,
                    Options.NONE.withExtraLogits().withGatingResidual().withEntropy())));
            sources.add(MoeKernelSource.generate(new Spec(48, 40, 8, 2, Score.SOFTMAX, true, 1f, false, p).with(Options.NONE.withExtraLogits())));
        }
        // attention experts' routers (CudaAttentionRouter): hidden 1 (no FFN runs), top-2 and soft (k = E) with an entropy loss
        sources.add(MoeKernelSource.generate(new Spec(128, 1, 4, 0, 0, 0, 2, Score.SOFTMAX, true, 1f, false, Precision.FP32, Options.NONE)));
        sources.add(MoeKernelSource.generate(new Spec(48, 1, 5, 0, 0, 0, 5, Score.SOFTMAX, false, 1f, false, Precision.FP32, Options.NONE.withEntropy())));
        sources.add(dev.moe.cuda.kernels.ModelKernelSource.generate());
        for (int k : new int[] {1, 2, 3, 32}) {
            sources.add(dev.moe.cuda.kernels.LoraKernelSource.generate(k));
        }
        for (int hd : new int[] {8, 32, 64, 128, 256}) {
            sources.add(dev.moe.cuda.kernels.AttentionKernelSource.generate(hd));
        }
        for (String source : sources) {
            Path cu = dir.resolve("k.cu");
            Files.writeString(cu, source);
            Process p = new ProcessBuilder(nvcc.toString(), "-arch=sm_90", "--ptx", "-std=c++17", "-o", dir.resolve("k.ptx").toString(),
                    cu.toString()).redirectErrorStream(true).start();
            String log = new String(p.getInputStream().readAllBytes());
            assertThat(p.waitFor(120, TimeUnit.SECONDS)).isTrue();
            assertThat(log).isEmpty();
            assertThat(p.exitValue()).isEqualTo(0);
            assertThat(Files.readString(dir.resolve("k.ptx"))).contains(".entry ");
        }
    }
}
