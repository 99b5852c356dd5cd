package dev.moe.cuda;

import static com.google.common.truth.Truth.assertWithMessage;

import dev.moe.cuda.kernels.ModelKernelSource;
import dev.moe.cuda.model.DeviceModel;
import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.Assumptions;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * The device models draw router jitter's noise on the GPU ({@code jitter_noise}) and must get the CPU class's floats bit for
 * bit. The kernel's arithmetic lives in a {@code __host__ __device__} function; here nvcc compiles that very text for the host
 * and its output is compared with {@link DeviceModel#jitterNoise}, the CPU class's draw (checked against the CPU class itself
 * in CudaModelGeneratorTest). On a GPU, DeviceOpsParity compares the kernel's output too.
 */
class JitterNoiseKernelTest {

    @Test
    void theKernelsNoiseIsTheCpuClasssBitForBit(@TempDir Path dir) throws IOException, InterruptedException {
        Path nvcc = Path.of("/usr/local/cuda/bin/nvcc");
        if (!Files.isExecutable(nvcc)) {
            nvcc = Path.of("/usr/local/bin/nvcc");
        }
        Assumptions.assumeTrue(Files.isExecutable(nvcc), "nvcc is not installed: the noise is compared on the GPU machine (DeviceOpsParity)");
        String source = ModelKernelSource.generate();
        int from = source.indexOf("__host__ __device__ inline float jitter_factor(");
        int to = source.indexOf("extern \"C\" __global__ void jitter_noise(");
        assertWithMessage("the kernel source's jitter_factor").that(from >= 0 && to > from).isTrue();
        String program = """
                #include <cstdio>
                #include <cstdlib>
                #include <cstring>
                %s
                int main(int argc, char** argv) {
                  unsigned long long seed = strtoull(argv[1], nullptr, 10);
                  long long n = atoll(argv[2]);
                  float eps = strtof(argv[3], nullptr);
                  for (long long i = 0; i < n; i++) {
                    float f = jitter_factor(seed, i, eps);
                    unsigned u;
                    memcpy(&u, &f, 4);
                    printf("%%08x\\n", u);
                  }
                  return 0;
                }
                """.formatted(source.substring(from, to));
        Path cu = dir.resolve("jitter.cu");
        Files.writeString(cu, program);
        Path exe = dir.resolve("jitter");
        run(List.of(nvcc.toString(), "-std=c++17", "-o", exe.toString(), cu.toString()));
        int n = 4096;
        int cases = 0;
        for (long step : new long[] {0, 1, 41, 123_456_789_012L}) {
            for (int micro : new int[] {0, 3}) {
                for (int layer : new int[] {0, 7}) {
                    for (float eps : new float[] {0.2f, 0.01f, 0.3333f}) {
                        long seed = DeviceModel.jitterSeed(step, micro, layer);
                        List<String> lines = run(List.of(exe.toString(), Long.toUnsignedString(seed), Integer.toString(n), Float.toString(eps)));
                        float[] want = DeviceModel.jitterNoise(n, eps, step, micro, layer);
                        assertWithMessage("outputs").that(lines).hasSize(n);
                        for (int i = 0; i < n; i++) {
                            int got = Integer.parseUnsignedInt(lines.get(i), 16);
                            if (got != Float.floatToRawIntBits(want[i])) {
                                assertWithMessage("step %s micro-batch %s layer %s eps %s element %s", step, micro, layer, eps, i)
                                        .that(Float.intBitsToFloat(got)).isEqualTo(want[i]);
                            }
                        }
                        cases++;
                    }
                }
            }
        }
        assertWithMessage("cases").that(cases).isEqualTo(48);
    }

    private static List<String> run(List<String> command) throws IOException, InterruptedException {
        Process p = new ProcessBuilder(command).redirectErrorStream(true).start();
        String out = new String(p.getInputStream().readAllBytes(), StandardCharsets.UTF_8);
        assertWithMessage("%s", command).that(p.waitFor(180, TimeUnit.SECONDS)).isTrue();
        assertWithMessage("%s: %s", command.getFirst(), out).that(p.exitValue()).isEqualTo(0);
        return out.lines().toList();
    }
}
