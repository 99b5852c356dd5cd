package dev.moe.runtime.cpu;

import static com.google.common.truth.Truth.assertWithMessage;

import java.util.SplittableRandom;

/**
 * Helpers shared by {@link LinearKernelTest} and {@link GroupedMatmulTest}: random data, float64
 * reference products, and the error bound the fp32 kernels are held to.
 *
 * <p>The bound is the classical one for a dot product summed in floating point (Higham, <i>Accuracy
 * and Stability of Numerical Algorithms</i>, §3.1): computing {@code s = c + Σ_{k<n} a_k b_k} in any
 * order of n roundings of unit {@code u = 2^-24} (fused or not) gives {@code |ŝ - s| ≤ γ_{n+1} (|c| +
 * Σ |a_k| |b_k|)} with {@code γ_m = m u / (1 - m u)}. It holds for every input, cancellation included,
 * so a failure is a real bug, not an unlucky draw. The float64 references are exact to about 1e-16
 * relative, far inside it.
 */
final class LinearTestSupport {
    static final double U = 0x1p-24;

    private LinearTestSupport() {}

    static float[] random(SplittableRandom rnd, int n) {
        float[] a = new float[n];
        for (int i = 0; i < n; i++) {
            a[i] = (float) rnd.nextDouble(-1, 1);
        }
        return a;
    }

    /** γ_{terms} for {@code terms} roundings, padded by a hair for the float64 reference's own error. */
    static double gamma(int terms) {
        return 1.0001 * terms * U / (1 - terms * U) + 1e-300;
    }

    /** A reference value and the bound |Σ| that the error of an fp32 evaluation is measured against. */
    record Ref(double[] value, double[] magnitude) {}

    /** {@code y[r][o] = Σ_i x[r][i] w[o][i]} in float64. */
    static Ref forward(float[] x, int xOff, float[] w, int wOff, int rows, int in, int out) {
        double[] v = new double[rows * out];
        double[] m = new double[rows * out];
        for (int r = 0; r < rows; r++) {
            for (int o = 0; o < out; o++) {
                double s = 0;
                double a = 0;
                for (int i = 0; i < in; i++) {
                    double p = (double) x[xOff + r * in + i] * w[wOff + o * in + i];
                    s += p;
                    a += Math.abs(p);
                }
                v[r * out + o] = s;
                m[r * out + o] = a;
            }
        }
        return new Ref(v, m);
    }

    /** {@code dx0[r][i] + Σ_o dy[r][o] w[o][i]} in float64 (dx0 may be null for zeros). */
    static Ref dx(float[] w, int wOff, float[] dy, int dyOff, float[] dx0, int dxOff, int rows, int in, int out) {
        double[] v = new double[rows * in];
        double[] m = new double[rows * in];
        for (int r = 0; r < rows; r++) {
            for (int i = 0; i < in; i++) {
                double c = dx0 == null ? 0 : dx0[dxOff + r * in + i];
                double s = c;
                double a = Math.abs(c);
                for (int o = 0; o < out; o++) {
                    double p = (double) dy[dyOff + r * out + o] * w[wOff + o * in + i];
                    s += p;
                    a += Math.abs(p);
                }
                v[r * in + i] = s;
                m[r * in + i] = a;
            }
        }
        return new Ref(v, m);
    }

    /** {@code dw0[o][i] + Σ_r dy[r][o] x[r][i]} in float64 (dw0 may be null for zeros). */
    static Ref dw(float[] x, int xOff, float[] dy, int dyOff, float[] dw0, int dwOff, int rows, int in, int out) {
        double[] v = new double[out * in];
        double[] m = new double[out * in];
        for (int o = 0; o < out; o++) {
            for (int i = 0; i < in; i++) {
                double c = dw0 == null ? 0 : dw0[dwOff + o * in + i];
                double s = c;
                double a = Math.abs(c);
                for (int r = 0; r < rows; r++) {
                    double p = (double) dy[dyOff + r * out + o] * x[xOff + r * in + i];
                    s += p;
                    a += Math.abs(p);
                }
                v[o * in + i] = s;
                m[o * in + i] = a;
            }
        }
        return new Ref(v, m);
    }

    /**
     * Asserts {@code |actual[off + j] - ref[j]| ≤ γ_terms · magnitude[j]} for every j, where {@code
     * terms} is the number of roundings in each element's chain.
     */
    static void assertWithinBound(String what, float[] actual, int off, Ref ref, int terms) {
        double g = gamma(terms);
        for (int j = 0; j < ref.value().length; j++) {
            double err = Math.abs(actual[off + j] - ref.value()[j]);
            double bound = g * ref.magnitude()[j];
            if (!(err <= bound)) {
                assertWithMessage("%s[%s]: got %s, float64 reference %s, |error| %s > bound %s", what, j, actual[off + j], ref.value()[j], err,
                        bound).fail();
            }
        }
    }

    /** Asserts that a[from, to) is bitwise the same as b[from, to). */
    static void assertBitwiseEqual(String what, float[] a, float[] b) {
        assertWithMessage("%s length", what).that(a.length).isEqualTo(b.length);
        for (int j = 0; j < a.length; j++) {
            if (Float.floatToRawIntBits(a[j]) != Float.floatToRawIntBits(b[j])) {
                assertWithMessage("%s[%s] differs: %s vs %s", what, j, a[j], b[j]).fail();
            }
        }
    }
}
