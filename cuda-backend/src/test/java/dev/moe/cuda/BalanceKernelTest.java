package dev.moe.cuda;

import static com.google.common.truth.Truth.assertWithMessage;

import dev.moe.compiler.ir.Model;
import dev.moe.cuda.kernels.MoeKernelSource;
import dev.moe.cuda.kernels.MoeKernelSource.LogitActivation;
import dev.moe.cuda.kernels.MoeKernelSource.Options;
import dev.moe.cuda.kernels.MoeKernelSource.Precision;
import dev.moe.cuda.kernels.MoeKernelSource.Score;
import dev.moe.cuda.kernels.MoeKernelSource.Spec;
import dev.moe.cuda.model.DeviceModelParity;
import dev.moe.cuda.model.DeviceModels;
import dev.moe.runtime.TrainableModel;
import dev.moe.runtime.cpu.CpuBackend;
import java.io.IOException;
import java.lang.reflect.Field;
import java.lang.reflect.Method;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Arrays;
import java.util.List;
import java.util.SplittableRandom;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.Assumptions;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * The balancing losses' kernels against the CPU class, without a GPU: the per-token functions the kernels call
 * ({@code balance_stats_row}, {@code balance_row}, {@code balance_dlogit}) are {@code __host__ __device__}, so nvcc compiles
 * the layer's very kernel source for the host, with one lane taking all of a token's experts. Fed the router state of
 * {@link DeviceModelParity#SEQUENCE_AUX_MODEL}'s CPU class after a training forward and backward, they must give its
 * balancing loss (through {@link CudaMoeLayer.SequenceStats#auxLoss}, as the device model computes it), its aux gradient and
 * its router's logit gradient: a sequence-wise aux loss on DeepSeek-V3's sigmoid router (normalised, scaled, group-limited),
 * a micro-batch one on sigmoid scores through a sigmoid-activated temperature, and a sequence-wise one on top-p softmax
 * scores beside a z-loss. What is left to the GPU (DeviceModelParity) is the launch: a warp per token, atomics and uploads.
 */
class BalanceKernelTest {
    private static final int BATCH = 2, SEQ = 32, ROWS = BATCH * SEQ;

    /** One MoE layer of the model: its index, its router's name, its kernel spec, the device model's aux rows and k for auxLoss. */
    private record Layer(int index, String router, Spec spec, boolean sequence, int k, float coef, float zc, float tau) {}

    private static final List<Layer> LAYERS = List.of(
            new Layer(1, "Topp", new Spec(64, 40, 8, 4, Score.SOFTMAX, false, 1f, false, Precision.FP32).with(Options.NONE.withTopP(0.45f)), true,
                    0, 0.01f, 0.001f, 1f),
            new Layer(2, "Sig", new Spec(64, 40, 8, 2, Score.SIGMOID, false, 1f, false, Precision.FP32)
                    .with(Options.NONE.withTemperature(LogitActivation.SIGMOID)), false, 2, 0.01f, 0f, 1.5f),
            new Layer(3, "V3", new Spec(64, 48, 16, 4, Score.SIGMOID, true, 2.5f, true, Precision.FP32).with(Options.NONE.withGroupLimit(4, 2)), true,
                    4, 0.01f, 0f, 1f));

    @Test
    void theKernelsGiveTheCpuClasssLossesAndLogitGradients(@TempDir Path dir) throws Exception {
        Path nvcc = nvcc();
        Model m = DeviceModelParity.sequenceAuxModels().getFirst();
        TrainableModel cpu = DeviceModels.compile(m, "sequence-aux.moe").createHost(new CpuBackend(1, CpuBackend.VECTOR_API));
        cpu.initialize(11);
        SplittableRandom rng = new SplittableRandom(5);
        int[] in = new int[ROWS], tg = new int[ROWS];
        for (int i = 0; i < ROWS; i++) {
            in[i] = rng.nextInt(m.config().vocab());
            tg[i] = rng.nextInt(m.config().vocab());
        }
        cpu.beginStep();
        cpu.forward(in, tg, BATCH, SEQ);
        cpu.backward(1f);
        for (Layer layer : LAYERS) {
            Object state = field(cpu, "moe" + layer.index());
            int er = layer.spec().routed(), k = layer.spec().topK();
            // the state's arrays may be sized for more rows than this forward's
            float[] probs = Arrays.copyOf(floats(state, "probs"), ROWS * er), logits = Arrays.copyOf(floats(state, "logits"), ROWS * er);
            float[] auxGrad = Arrays.copyOf(floats(state, "auxGrad"), ROWS * er), dLogits = Arrays.copyOf(floats(state, "dLogits"), ROWS * er);
            float[] dWeight = Arrays.copyOf(floats(state, "dWeight"), ROWS * k);
            int[] idx = Arrays.copyOf(ints(state, "selected"), ROWS * k);
            if (layer.spec().options().topP() > 0) {
                // the device's unused top-p slots hold NONE (ER)
                int[] kept = ints(state, "kept");
                for (int t = 0; t < ROWS; t++) {
                    for (int r = kept[t]; r < k; r++) {
                        idx[t * k + r] = er;
                    }
                }
            }
            Path exe = hostProgram(nvcc, dir.resolve("l" + layer.index()), MoeKernelSource.generate(layer.spec()));
            String what = "layer " + layer.index() + " (" + layer.router() + ")";

            // the statistics: per sequence (or, micro-batch scope, over the whole batch) the slots and the aux loss's scores
            int seq = layer.sequence() ? SEQ : ROWS;
            List<String> stats = run(exe, dir, input("stats", seq, 0f, 0f, layer.tau(), probs, logits, idx, new float[ROWS * k], new float[ROWS / seq * er]));
            int sequences = ROWS / seq;
            int[] counts = new int[sequences * er];
            float[] scores = new float[sequences * er];
            for (int i = 0; i < sequences * er; i++) {
                counts[i] = Integer.parseInt(stats.get(i));
                scores[i] = Float.parseFloat(stats.get(sequences * er + i));
            }
            int[] want = new int[sequences * er];
            for (int t = 0; t < ROWS; t++) {
                for (int r = 0; r < k; r++) {
                    if (idx[t * k + r] < er) {
                        want[t / seq * er + idx[t * k + r]]++;
                    }
                }
            }
            assertWithMessage("%s: slots per sequence and expert", what).that(counts).isEqualTo(want);
            float[] aux = new float[sequences * er];
            double loss;
            if (layer.sequence()) {
                loss = new CudaMoeLayer.SequenceStats(sequences, er, counts, scores).auxLoss(layer.coef(), layer.k(), ROWS, aux);
                for (int t = 0; t < ROWS; t++) {
                    for (int e = 0; e < er; e++) {
                        // the very float the CPU class's aux loss takes per token
                        if (aux[t / SEQ * er + e] != auxGrad[t * er + e]) {
                            assertWithMessage("%s: aux gradient of token %s, expert %s", what, t, e).that(aux[t / SEQ * er + e])
                                    .isEqualTo(auxGrad[t * er + e]);
                        }
                    }
                }
            } else {
                // the device model's micro-batch aux loss: f from the slots, P the mean score (stats[e] / rows)
                loss = 0;
                for (int e = 0; e < er; e++) {
                    double fe = (double) counts[e] / (ROWS * k);
                    loss += layer.coef() * er * fe * scores[e] / ROWS;
                    aux[e] = (float) (Double.parseDouble(Float.toString(layer.coef())) * er * fe / ROWS);
                    assertWithMessage("%s: aux gradient of expert %s", what, e).that((double) aux[e]).isWithin(1e-6 * Math.abs(aux[e]))
                            .of(auxGrad[e]);
                }
            }
            double cpuLoss = balanceLoss(state, layer, logits);
            assertWithMessage("%s: aux loss", what).that(loss).isWithin(1e-5 * Math.abs(cpuLoss)).of(cpuLoss);
            assertWithMessage("%s: aux loss", what).that(cpuLoss).isGreaterThan(0.0);

            // the router's logit gradient, with the routing weights' gradient and then (the CPU's router backward run again)
            // without it, where the balancing losses' part stands alone
            float zc = layer.zc() / ROWS;
            float[] dl = dlogits(exe, dir, input("backward", layer.sequence() ? SEQ : ROWS, zc, 0f, layer.tau(), probs, logits, idx, dWeight, aux), er);
            compare(what + " logit gradient", dl, dLogits, 1e-5);
            Arrays.fill(floats(state, "dWeight"), 0f);
            Method backward = cpu.getClass().getDeclaredMethod("route" + layer.router() + "Backward", state.getClass(), float.class);
            backward.setAccessible(true);
            backward.invoke(cpu, state, 1f);
            float[] lossesOnly = Arrays.copyOf(floats(state, "dLogits"), ROWS * er);
            float[] dlLosses = dlogits(exe, dir, input("backward", layer.sequence() ? SEQ : ROWS, zc, 0f, layer.tau(), probs, logits, idx,
                    new float[ROWS * k], aux), er);
            compare(what + " balancing losses' logit gradient", dlLosses, lossesOnly, 1e-5);
            // a loss whose gradient left the logits alone (or the wrong sequence's aux row) would not pass the checks above
            Arrays.fill(aux, 0f);
            float[] none = dlogits(exe, dir, input("backward", layer.sequence() ? SEQ : ROWS, zc, 0f, layer.tau(), probs, logits, idx,
                    new float[ROWS * k], aux), er);
            assertWithMessage("%s: the aux loss moves the logits", what).that(maxDifference(none, lossesOnly)).isGreaterThan(0.05 * maxAbs(lossesOnly));
        }
    }

    /** The CPU class's balancing loss of a layer less its z-loss (which router_balance_stats computes, unchanged here). */
    private static double balanceLoss(Object state, Layer layer, float[] logits) throws ReflectiveOperationException {
        double loss = ((Number) field(state, "balanceLoss")).doubleValue();
        if (layer.zc() != 0f) {
            float[] lse = floats(state, "lse");
            for (int t = 0; t < ROWS; t++) {
                loss -= layer.zc() * (double) lse[t] * lse[t] / ROWS;
            }
        }
        return loss;
    }

    private static void compare(String what, float[] got, float[] want, double tolerance) {
        double scale = maxAbs(want);
        assertWithMessage("%s: the CPU's is not all zero", what).that(scale).isGreaterThan(0.0);
        for (int i = 0; i < want.length; i++) {
            if (Math.abs(got[i] - want[i]) > tolerance * scale) {
                assertWithMessage("%s [token %s, expert %s] (largest %s)", what, i / (want.length / ROWS), i % (want.length / ROWS), scale)
                        .that((double) got[i]).isWithin(tolerance * scale).of(want[i]);
            }
        }
    }

    private static double maxAbs(float[] v) {
        double m = 0;
        for (float x : v) {
            m = Math.max(m, Math.abs(x));
        }
        return m;
    }

    private static double maxDifference(float[] a, float[] b) {
        double m = 0;
        for (int i = 0; i < a.length; i++) {
            m = Math.max(m, Math.abs(a[i] - b[i]));
        }
        return m;
    }

    private static String input(String mode, int seq, float zc, float ent, float tau, float[] probs, float[] logits, int[] idx, float[] dWeight,
            float[] aux) {
        StringBuilder b = new StringBuilder().append(mode).append(' ').append(ROWS).append(' ').append(seq).append(' ').append(zc).append(' ')
                .append(ent).append(' ').append(tau).append('\n');
        for (float[] a : new float[][] {probs, logits}) {
            for (float v : a) {
                b.append(v).append('\n');
            }
        }
        for (int v : idx) {
            b.append(v).append('\n');
        }
        for (float[] a : new float[][] {dWeight, aux}) {
            for (float v : a) {
                b.append(v).append('\n');
            }
        }
        return b.toString();
    }

    private static float[] dlogits(Path exe, Path dir, String input, int er) throws IOException, InterruptedException {
        List<String> lines = run(exe, dir, input);
        assertWithMessage("logit gradients").that(lines).hasSize(ROWS * er);
        float[] out = new float[lines.size()];
        for (int i = 0; i < out.length; i++) {
            out[i] = Float.parseFloat(lines.get(i));
        }
        return out;
    }

    /**
     * The layer's kernel source compiled by nvcc with a host main that reads the router state ({@code mode T seq zc ent tau},
     * then probs and logits [T, ER], idx [T, K], dweight [T, K], aux [T / seq, ER]) and prints, for {@code stats}, each
     * sequence's slot counts then scores ({@code balance_stats_row}) or, for {@code backward}, the logit gradients
     * ({@code balance_row}, then {@code balance_dlogit} per expert), one per line; each token's rows found by the kernels' {@code seqRow}.
     */
    private static Path hostProgram(Path nvcc, Path dir, String source) throws IOException, InterruptedException {
        Files.createDirectories(dir);
        String program = source + """

                #include <cstdio>
                #include <vector>
                int main(int argc, char** argv) {
                  FILE* in = fopen(argv[1], "r");
                  char mode[16]; int T, seq; float zc, ent, tau;
                  if (fscanf(in, "%15s %d %d %f %f %f", mode, &T, &seq, &zc, &ent, &tau) != 6) return 2;
                  int S = T / seq;
                  std::vector<float> probs((size_t) T * ER), logits((size_t) T * ER), dweight((size_t) T * K), aux((size_t) S * ER);
                  std::vector<int> idx((size_t) T * K);
                  for (float& v : probs) if (fscanf(in, "%f", &v) != 1) return 3;
                  for (float& v : logits) if (fscanf(in, "%f", &v) != 1) return 3;
                  for (int& v : idx) if (fscanf(in, "%d", &v) != 1) return 3;
                  for (float& v : dweight) if (fscanf(in, "%f", &v) != 1) return 3;
                  for (float& v : aux) if (fscanf(in, "%f", &v) != 1) return 3;
                  if (mode[0] == 's') {
                    std::vector<float> score((size_t) S * ER, 0.f);
                    std::vector<int> count((size_t) S * ER, 0);
                    for (int t = 0; t < T; t++)
                      balance_stats_row(&probs[(size_t) t * ER], &idx[(size_t) t * K], 0, seqRow(score.data(), t, seq), seqRow(count.data(), t, seq));
                    for (int v : count) printf("%d\\n", v);
                    for (float v : score) printf("%.9g\\n", v);
                  } else {
                    for (int t = 0; t < T; t++) {
                      const float* p = &probs[(size_t) t * ER];
                      const float* row = &logits[(size_t) t * ER];
                      const float* a = seqRow((const float*) aux.data(), t, seq);
                      BalanceRow b;
                      balance_row(p, row, &idx[(size_t) t * K], &dweight[(size_t) t * K], a, ent, tau, 0, &b);
                      for (int e = 0; e < ER; e++) printf("%.9g\\n", balance_dlogit(e, p, row, a, zc, ent, tau, &b));
                    }
                  }
                  return 0;
                }
                """;
        Path cu = dir.resolve("host.cu");
        Files.writeString(cu, program);
        Path exe = dir.resolve("host");
        Process p = new ProcessBuilder(nvcc.toString(), "-std=c++17", "-arch=sm_90", "-o", exe.toString(), cu.toString()).redirectErrorStream(true)
                .start();
        String log = new String(p.getInputStream().readAllBytes(), StandardCharsets.UTF_8);
        assertWithMessage("nvcc").that(p.waitFor(300, TimeUnit.SECONDS)).isTrue();
        assertWithMessage("nvcc: %s", log).that(p.exitValue()).isEqualTo(0);
        return exe;
    }

    private static List<String> run(Path exe, Path dir, String input) throws IOException, InterruptedException {
        Path file = dir.resolve("input.txt");
        Files.writeString(file, input);
        Process p = new ProcessBuilder(exe.toString(), file.toString()).redirectErrorStream(true).start();
        String out = new String(p.getInputStream().readAllBytes(), StandardCharsets.UTF_8);
        assertWithMessage("%s", exe).that(p.waitFor(120, TimeUnit.SECONDS)).isTrue();
        assertWithMessage("%s: %s", exe, out).that(p.exitValue()).isEqualTo(0);
        return out.lines().toList();
    }

    private static Path nvcc() {
        Path nvcc = Path.of("/usr/local/cuda/bin/nvcc");
        if (!Files.isExecutable(nvcc)) {
            nvcc = Path.of("/usr/local/bin/nvcc");
        }
        Assumptions.assumeTrue(Files.isExecutable(nvcc), "nvcc is not installed: the kernels are compared on the GPU machine");
        return nvcc;
    }

    private static Object field(Object o, String name) throws ReflectiveOperationException {
        Field f = o.getClass().getDeclaredField(name);
        f.setAccessible(true);
        return f.get(o);
    }

    private static float[] floats(Object o, String name) throws ReflectiveOperationException {
        return (float[]) field(o, name);
    }

    private static int[] ints(Object o, String name) throws ReflectiveOperationException {
        return (int[]) field(o, name);
    }
}
