package dev.moe.cuda;

import static com.google.common.truth.Truth.assertThat;
import static org.junit.jupiter.api.Assertions.assertThrows;

import dev.moe.cuda.kernels.MoeKernelSource;
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
            new Spec(64, 32, 8, 2, 3, 2, Score.SOFTMAX, true, 1f, false, Precision.BF16)}) {
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
