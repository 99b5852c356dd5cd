package dev.moe.runtime.cpu;

import static com.google.common.truth.Truth.assertWithMessage;

import java.util.Random;
import java.util.function.Function;

/** Shared helpers of the CpuOps tests: random data, float64 finite differences and tolerant comparisons. */
final class OpsTesting {
    /** Central-difference step on the float64 reference. */
    static final double FD_EPS = 1e-6;

    private OpsTesting() {}

    static CpuOps ops(int threads, boolean vector) {
        return new CpuOps(threads, vector);
    }

    static float[] randn(Random r, int n, double scale) {
        float[] a = new float[n];
        for (int i = 0; i < n; i++) {
            a[i] = (float) (r.nextGaussian() * scale);
        }
        return a;
    }

    /** Values in {@code ±[min, max]}: away from zero, for functions with a kink there. */
    static float[] awayFromZero(Random r, int n, double min, double max) {
        float[] a = new float[n];
        for (int i = 0; i < n; i++) {
            double m = min + r.nextDouble() * (max - min);
            a[i] = (float) (r.nextBoolean() ? m : -m);
        }
        return a;
    }

    static float[] filled(int n, float value) {
        float[] a = new float[n];
        java.util.Arrays.fill(a, value);
        return a;
    }

    static double[] d(float[] a) {
        double[] out = new double[a.length];
        for (int i = 0; i < a.length; i++) {
            out[i] = a[i];
        }
        return out;
    }

    static double dot(double[] a, double[] b) {
        double s = 0;
        for (int i = 0; i < a.length; i++) {
            s += a[i] * b[i];
        }
        return s;
    }

    /**
     * The gradient of {@code Σ dy · f(inputs)} with respect to {@code inputs[which]} by central
     * differences on the float64 function {@code f} (which must read its inputs afresh each call).
     */
    static double[] numericGradient(Function<double[][], double[]> f, double[][] inputs, int which, double[] dy) {
        double[] x = inputs[which];
        double[] g = new double[x.length];
        for (int i = 0; i < x.length; i++) {
            double saved = x[i];
            x[i] = saved + FD_EPS;
            double plus = dot(dy, f.apply(inputs));
            x[i] = saved - FD_EPS;
            double minus = dot(dy, f.apply(inputs));
            x[i] = saved;
            g[i] = (plus - minus) / (2 * FD_EPS);
        }
        return g;
    }

    /** Every element within {@code 1e-5 + 1e-3 · |numeric|} of the finite-difference gradient. */
    static void assertGradient(String what, float[] analytic, double[] numeric) {
        assertWithMessage("%s length", what).that(analytic.length).isEqualTo(numeric.length);
        for (int i = 0; i < numeric.length; i++) {
            double tol = 1e-5 + 1e-3 * Math.abs(numeric[i]);
            if (!(Math.abs(analytic[i] - numeric[i]) <= tol)) {
                assertWithMessage("%s[%s]: analytic %s vs numeric %s (tolerance %s)", what, i, analytic[i], numeric[i], tol).fail();
            }
        }
    }

    /** Every element within {@code abs + rel · |expected|} of the float64 reference. */
    static void assertClose(String what, float[] actual, double[] expected, double abs, double rel) {
        assertWithMessage("%s length", what).that(actual.length).isEqualTo(expected.length);
        for (int i = 0; i < expected.length; i++) {
            double tol = abs + rel * Math.abs(expected[i]);
            if (!(Math.abs(actual[i] - expected[i]) <= tol)) {
                assertWithMessage("%s[%s]: %s vs reference %s (tolerance %s)", what, i, actual[i], expected[i], tol).fail();
            }
        }
    }

    /** The forward tolerance against float64: fp32 rounding of O(1) values. */
    static void assertForward(String what, float[] actual, double[] expected) {
        assertClose(what, actual, expected, 1e-5, 1e-5);
    }

    /** Vector against scalar path: within {@code 1e-5} relative, relative to {@code max(|scalar|, floor)}. */
    static void assertRelative(String what, float[] vector, float[] scalar, double floor) {
        assertWithMessage("%s length", what).that(vector.length).isEqualTo(scalar.length);
        for (int i = 0; i < scalar.length; i++) {
            double tol = 1e-5 * Math.max(Math.abs(scalar[i]), floor);
            if (!(Math.abs(vector[i] - scalar[i]) <= tol)) {
                assertWithMessage("%s[%s]: vector %s vs scalar %s (tolerance %s)", what, i, vector[i], scalar[i], tol).fail();
            }
        }
    }

    /** Each array of {@code vector} within 1e-5 relative (floor 1) of the same array of {@code scalar}. */
    static void assertRelative(String what, float[][] vector, float[][] scalar) {
        assertWithMessage("%s arrays", what).that(vector.length).isEqualTo(scalar.length);
        for (int a = 0; a < scalar.length; a++) {
            assertRelative(what + " #" + a, vector[a], scalar[a], 1.0);
        }
    }

    /** Bit for bit (NaNs included). */
    static void assertBitwise(String what, float[] actual, float[] expected) {
        assertWithMessage("%s length", what).that(actual.length).isEqualTo(expected.length);
        for (int i = 0; i < expected.length; i++) {
            if (Float.floatToRawIntBits(actual[i]) != Float.floatToRawIntBits(expected[i])) {
                assertWithMessage("%s[%s]: %s vs %s", what, i, actual[i], expected[i]).fail();
            }
        }
    }

    static void assertBitwise(String what, float[][] actual, float[][] expected) {
        assertWithMessage("%s arrays", what).that(actual.length).isEqualTo(expected.length);
        for (int a = 0; a < expected.length; a++) {
            assertBitwise(what + " #" + a, actual[a], expected[a]);
        }
    }

    /** {@code a + b} elementwise in fp32: what an accumulating op must leave in a gradient that held {@code a}. */
    static float[] plus(float[] a, float[] b) {
        float[] out = new float[a.length];
        for (int i = 0; i < a.length; i++) {
            out[i] = a[i] + b[i];
        }
        return out;
    }

    /** An op's full result for one backend configuration: every output and gradient array. */
    @FunctionalInterface
    interface Run {
        float[][] apply(CpuOps ops);
    }

    /** (c) the vector path agrees with the scalar path, single-threaded. */
    static void assertVectorMatchesScalar(String what, Run run) {
        assertRelative(what, run.apply(ops(1, true)), run.apply(ops(1, false)));
    }

    /**
     * (d) two and three threads give the very bits of one thread, on both paths. The threaded backends
     * split work of any size ({@code minWork} 1), so that small shapes are cut into several chunks.
     */
    static void assertThreadCountInvariant(String what, Run run) {
        for (boolean vector : new boolean[] {false, true}) {
            float[][] one = run.apply(ops(1, vector));
            for (int threads : new int[] {2, 3}) {
                assertBitwise(what + " vector=" + vector + " threads=" + threads, run.apply(new CpuOps(threads, vector, 1)), one);
            }
        }
    }
}
