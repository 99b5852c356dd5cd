package dev.moe.cuda;

import static com.google.common.truth.Truth.assertThat;
import static org.junit.jupiter.api.Assertions.assertThrows;

import dev.moe.cuda.kernels.MoeKernelSource;
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

    @Test
    void theRouterOptionsAreBakedInAsConstants() {
        String topP = MoeKernelSource.generate(TOP_P);
        assertThat(topP).contains("#define HAS_TOP_P 1\n#define TOP_P 0.8\n");
        assertThat(topP).contains("#define TEMPERATURE 1\n");
        assertThat(topP).contains("#define LOGIT_ACT 1 ");
        assertThat(topP).contains("#define ENTROPY 1\n");
        // an unused top-p slot holds no expert, so the combine must check each slot's kind
        assertThat(topP).contains("#define HOLES 1\n");
        String quota = MoeKernelSource.generate(QUOTA);
        assertThat(quota).contains("#define QUOTA 4\n");
        assertThat(quota).contains("#define HAS_TOP_P 0\n");
        assertThat(quota).contains("#define HOLES 0\n");
        String limited = MoeKernelSource.generate(LIMITED);
        assertThat(limited).contains("#define LIMIT_GROUPS 8\n");
        assertThat(limited).contains("#define LIMIT_TOP 4\n");
        assertThat(MoeKernelSource.generate(DEEPSEEK)).contains("#define TEMPERATURE 0\n");
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
            new Spec(64, 32, 8, 2, 3, 2, Score.SOFTMAX, true, 1f, false, Precision.BF16), TOP_P, QUOTA, LIMITED}) {
            sources.add(MoeKernelSource.generate(spec));
        }
        sources.add(dev.moe.cuda.kernels.ModelKernelSource.generate());
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
