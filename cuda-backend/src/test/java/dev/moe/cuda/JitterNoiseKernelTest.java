package dev.moe.cuda;

import static com.google.common.truth.Truth.assertWithMessage;

import dev.moe.compiler.ir.Model;
import dev.moe.cuda.kernels.ModelKernelSource;
import dev.moe.cuda.kernels.MoeKernelSource;
import dev.moe.cuda.kernels.MoeKernelSource.Drop;
import dev.moe.cuda.kernels.MoeKernelSource.Options;
import dev.moe.cuda.kernels.MoeKernelSource.Precision;
import dev.moe.cuda.kernels.MoeKernelSource.Score;
import dev.moe.cuda.kernels.MoeKernelSource.Spec;
import dev.moe.cuda.model.DeviceModels;
import dev.moe.runtime.TrainableModel;
import dev.moe.runtime.cpu.CpuBackend;
import java.lang.reflect.Field;
import java.lang.reflect.Method;
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
 * The device models draw router jitter's noise and random drop priorities on the GPU ({@code jitter_noise}) and must get the CPU class's floats bit for
 * bit. The kernel's arithmetic lives in a {@code __host__ __device__} function; here nvcc compiles that very text for the host
 * and its output is compared with {@link DeviceModel#jitterNoise}, the CPU class's draw (checked against the CPU class itself
 * in CudaModelGeneratorTest). On a GPU, DeviceOpsParity compares the kernel's output too.
 */
class JitterNoiseKernelTest {

    @Test
    void theKernelsNoiseIsTheCpuClasssBitForBit(@TempDir Path dir) throws IOException, InterruptedException {
        Path exe = hostProgram(dir, ModelKernelSource.generate(), "__host__ __device__ inline float jitter_factor(",
                "extern \"C\" __global__ void jitter_noise(", "jitter_factor(seed, i, strtof(argv[3], nullptr))");
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

    /**
     * Random capacity drops: the kernel's {@code drop_priority} (nvcc-compiled for the host) gives, slot by slot, the very floats
     * the CPU class's own {@code randomPriority} draws, for the seed the device model passes ({@code setDropSeed}).
     */
    @Test
    void theDropPrioritiesAreTheCpuClasss(@TempDir Path dir) throws Exception {
        Path exe = hostProgram(dir, MoeKernelSource.generate(new Spec(16, 16, 4, 2, Score.SOFTMAX, true, 1f, false, Precision.FP32)
                .with(Options.NONE.withCapacity(1f, Drop.RANDOM))), "__host__ __device__ inline float drop_priority(",
                "extern \"C\" __global__ void random_priority(", "drop_priority(seed, i)");
        Model m = dev.moe.cuda.model.DeviceModelParity.randomDropModels().getFirst();
        TrainableModel cpu = DeviceModels.compile(m, "random-drops.moe").createHost(new CpuBackend(1, CpuBackend.VECTOR_API));
        Method draw = cpu.getClass().getDeclaredMethod("randomPriority", int.class, int.class);
        draw.setAccessible(true);
        Field microBatch = cpu.getClass().getDeclaredField("microBatch");
        microBatch.setAccessible(true);
        int slots = 2048, cases = 0;
        for (long step : new long[] {0, 7, 90_001}) {
            for (int micro : new int[] {0, 2}) {
                for (int layer : new int[] {0, 2}) {
                    cpu.setStep(step);
                    microBatch.setInt(cpu, micro);
                    float[] want = (float[]) draw.invoke(cpu, slots, layer);
                    long seed = DeviceModel.jitterSeed(step, micro, layer) ^ 0x5DEECE66DL;
                    // the host twin GpuChecks' reference uses
                    assertWithMessage("CudaMoeLayer.dropPriorities").that(CudaMoeLayer.dropPriorities(seed, slots)).isEqualTo(want);
                    List<String> lines = run(List.of(exe.toString(), Long.toUnsignedString(seed), Integer.toString(slots)));
                    assertWithMessage("outputs").that(lines).hasSize(slots);
                    for (int i = 0; i < slots; i++) {
                        int got = Integer.parseUnsignedInt(lines.get(i), 16);
                        if (got != Float.floatToRawIntBits(want[i])) {
                            assertWithMessage("step %s micro-batch %s layer %s slot %s", step, micro, layer, i).that(Float.intBitsToFloat(got))
                                    .isEqualTo(want[i]);
                        }
                    }
                    cases++;
                }
            }
        }
        assertWithMessage("cases").that(cases).isEqualTo(12);
    }

    /**
     * Compiles for the host, with nvcc, the {@code __host__ __device__} function of {@code source} that starts at {@code from}
     * (up to {@code to}), in a program that prints {@code call} for i = 0 .. n - 1 as hex bits: {@code prog seed n [eps]}.
     * Skips the test where nvcc is not installed.
     */
    private static Path hostProgram(Path dir, String source, String from, String to, String call) throws IOException, InterruptedException {
        Path nvcc = Path.of("/usr/local/cuda/bin/nvcc");
        if (!Files.isExecutable(nvcc)) {
            nvcc = Path.of("/usr/local/bin/nvcc");
        }
        Assumptions.assumeTrue(Files.isExecutable(nvcc), "nvcc is not installed: the kernels are compared on the GPU machine");
        int start = source.indexOf(from), end = source.indexOf(to);
        assertWithMessage("the kernel source's %s", from).that(start >= 0 && end > start).isTrue();
        String program = """
                #include <cstdio>
                #include <cstdlib>
                #include <cstring>
                %s
                int main(int argc, char** argv) {
                  unsigned long long seed = strtoull(argv[1], nullptr, 10);
                  long long n = atoll(argv[2]);
                  for (long long i = 0; i < n; i++) {
                    float f = %s;
                    unsigned u;
                    memcpy(&u, &f, 4);
                    printf("%%08x\\n", u);
                  }
                  return 0;
                }
                """.formatted(source.substring(start, end), call);
        Path cu = dir.resolve("host.cu");
        Files.writeString(cu, program);
        Path exe = dir.resolve("host");
        run(List.of(nvcc.toString(), "-std=c++17", "-o", exe.toString(), cu.toString()));
        return exe;
    }

    private static List<String> run(List<String> command) throws IOException, InterruptedException {
        Process p = new ProcessBuilder(command).redirectErrorStream(true).start();
        String out = new String(p.getInputStream().readAllBytes(), StandardCharsets.UTF_8);
        assertWithMessage("%s", command).that(p.waitFor(180, TimeUnit.SECONDS)).isTrue();
        assertWithMessage("%s: %s", command.getFirst(), out).that(p.exitValue()).isEqualTo(0);
        return out.lines().toList();
    }
}
