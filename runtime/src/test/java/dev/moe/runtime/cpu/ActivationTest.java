package dev.moe.runtime.cpu;

import static com.google.common.truth.Truth.assertThat;
import static dev.moe.runtime.cpu.OpsTesting.assertBitwise;
import static dev.moe.runtime.cpu.OpsTesting.assertForward;
import static dev.moe.runtime.cpu.OpsTesting.assertGradient;
import static dev.moe.runtime.cpu.OpsTesting.assertThreadCountInvariant;
import static dev.moe.runtime.cpu.OpsTesting.assertVectorMatchesScalar;
import static dev.moe.runtime.cpu.OpsTesting.awayFromZero;
import static dev.moe.runtime.cpu.OpsTesting.d;
import static dev.moe.runtime.cpu.OpsTesting.filled;
import static dev.moe.runtime.cpu.OpsTesting.numericGradient;
import static dev.moe.runtime.cpu.OpsTesting.ops;
import static dev.moe.runtime.cpu.OpsTesting.randn;

import dev.moe.runtime.Activation;
import java.util.ArrayList;
import java.util.List;
import java.util.Random;
import java.util.function.Function;
import java.util.stream.Stream;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.Arguments;
import org.junit.jupiter.params.provider.EnumSource;
import org.junit.jupiter.params.provider.MethodSource;

/** SiLU, GELU (tanh approximation), ReLU, alone and gated (GLU). */
class ActivationTest {
    /** Two 16-lane vectors and a tail. */
    private static final int N = 45;

    static double ref(Activation act, double x) {
        return switch (act) {
            case SILU -> x * (1 / (1 + Math.exp(-x)));
            case GELU -> 0.5 * x * (1 + Math.tanh(Math.sqrt(2 / Math.PI) * (x + 0.044715 * Math.pow(x, 3))));
            case RELU -> Math.max(x, 0);
        };
    }

    static double[] activationRef(Activation act, double[] x) {
        double[] y = new double[x.length];
        for (int i = 0; i < x.length; i++) {
            y[i] = ref(act, x[i]);
        }
        return y;
    }

    static double[] gluRef(Activation act, double[] gate, double[] up) {
        double[] h = new double[gate.length];
        for (int i = 0; i < gate.length; i++) {
            h[i] = ref(act, gate[i]) * up[i];
        }
        return h;
    }

    static Stream<Arguments> cases() {
        List<Arguments> args = new ArrayList<>();
        for (Activation act : Activation.values()) {
            for (boolean vector : new boolean[] {false, true}) {
                args.add(Arguments.of(act, vector));
            }
        }
        return args.stream();
    }

    /** Inputs over the interesting range, kept off ReLU's kink so that finite differences are smooth. */
    private static float[] inputs(Random r, int n) {
        return awayFromZero(r, n, 0.01, 6);
    }

    @ParameterizedTest(name = "{0} vector={1}")
    @MethodSource("cases")
    void activationForwardMatchesFloat64Reference(Activation act, boolean vector) {
        float[] x = inputs(new Random(1), N);
        float[] y = filled(N, Float.NaN);
        ops(1, vector).activation(act, x, y, N);
        assertForward("y", y, activationRef(act, d(x)));
    }

    @ParameterizedTest(name = "{0} vector={1}")
    @MethodSource("cases")
    void activationBackwardMatchesFiniteDifferencesAndOverwrites(Activation act, boolean vector) {
        Random r = new Random(2);
        float[] x = inputs(r, N);
        float[] dy = randn(r, N, 1);
        float[] dx = filled(N, 123f); // OVERWRITTEN, not accumulated
        ops(1, vector).activationBackward(act, x, dy, dx, N);
        Function<double[][], double[]> f = in -> activationRef(act, in[0]);
        assertGradient("dx", dx, numericGradient(f, new double[][] {d(x)}, 0, d(dy)));
    }

    @ParameterizedTest(name = "{0} vector={1}")
    @MethodSource("cases")
    void gluForwardMatchesFloat64Reference(Activation act, boolean vector) {
        Random r = new Random(3);
        float[] gate = inputs(r, N);
        float[] up = randn(r, N, 1);
        float[] h = filled(N, Float.NaN);
        ops(1, vector).glu(act, gate, up, h, N);
        assertForward("h", h, gluRef(act, d(gate), d(up)));
    }

    @ParameterizedTest(name = "{0} vector={1}")
    @MethodSource("cases")
    void gluBackwardMatchesFiniteDifferencesAndOverwrites(Activation act, boolean vector) {
        Random r = new Random(4);
        float[] gate = inputs(r, N);
        float[] up = randn(r, N, 1);
        float[] dh = randn(r, N, 1);
        float[] dGate = filled(N, 123f);
        float[] dUp = filled(N, -7f);
        ops(1, vector).gluBackward(act, gate, up, dh, dGate, dUp, N);
        Function<double[][], double[]> f = in -> gluRef(act, in[0], in[1]);
        double[][] in = {d(gate), d(up)};
        assertGradient("dGate", dGate, numericGradient(f, in, 0, d(dh)));
        assertGradient("dUp", dUp, numericGradient(f, in, 1, d(dh)));
    }

    @ParameterizedTest(name = "{0}")
    @EnumSource(Activation.class)
    void backwardOverwritesWhateverTheGradientsHeld(Activation act) {
        Random r = new Random(5);
        float[] x = inputs(r, N);
        float[] up = randn(r, N, 1);
        float[] dy = randn(r, N, 1);
        for (boolean vector : new boolean[] {false, true}) {
            CpuOps ops = ops(1, vector);
            float[] clean = new float[N];
            float[] dirty = filled(N, Float.NaN);
            ops.activationBackward(act, x, dy, clean, N);
            ops.activationBackward(act, x, dy, dirty, N);
            assertBitwise("activation dx", dirty, clean);
            float[] cleanGate = new float[N];
            float[] cleanUp = new float[N];
            float[] dirtyGate = filled(N, Float.NaN);
            float[] dirtyUp = filled(N, 5f);
            ops.gluBackward(act, x, up, dy, cleanGate, cleanUp, N);
            ops.gluBackward(act, x, up, dy, dirtyGate, dirtyUp, N);
            assertBitwise("glu dGate", dirtyGate, cleanGate);
            assertBitwise("glu dUp", dirtyUp, cleanUp);
        }
    }

    @ParameterizedTest(name = "{0}")
    @EnumSource(Activation.class)
    void extremeInputsStayFinite(Activation act) {
        float[] x = {-1e4f, -200f, -90f, -88.5f, -30f, 30f, 88.5f, 90f, 200f, 1e4f, 0f, -0f, 1e-30f, -1e-30f, 3f, -3f};
        float[] dy = filled(x.length, 1f);
        for (boolean vector : new boolean[] {false, true}) {
            float[] y = new float[x.length];
            float[] dx = new float[x.length];
            ops(1, vector).activation(act, x, y, x.length);
            ops(1, vector).activationBackward(act, x, dy, dx, x.length);
            for (int i = 0; i < x.length; i++) {
                assertThat((double) y[i]).isWithin(1e-6 * Math.max(1, Math.abs(x[i]))).of(ref(act, x[i]));
                assertThat(Float.isFinite(dx[i])).isTrue();
            }
        }
    }

    @Test
    void vectorMatchesScalar() {
        for (Activation act : Activation.values()) {
            assertVectorMatchesScalar(act.name(), ops -> run(ops, act, 3001));
        }
    }

    @Test
    void threadCountInvariant() {
        // Three and a half element blocks of 1024: splits between blocks, vector tails at the end.
        for (Activation act : Activation.values()) {
            assertThreadCountInvariant(act.name(), ops -> run(ops, act, 3 * 1024 + 517));
        }
    }

    private static float[][] run(CpuOps ops, Activation act, int n) {
        Random r = new Random(6);
        float[] x = randn(r, n, 4);
        float[] up = randn(r, n, 1);
        float[] dy = randn(r, n, 1);
        float[] y = new float[n];
        float[] dx = new float[n];
        float[] h = new float[n];
        float[] dGate = new float[n];
        float[] dUp = new float[n];
        ops.activation(act, x, y, n);
        ops.activationBackward(act, x, dy, dx, n);
        ops.glu(act, x, up, h, n);
        ops.gluBackward(act, x, up, dy, dGate, dUp, n);
        return new float[][] {y, dx, h, dGate, dUp};
    }
}
