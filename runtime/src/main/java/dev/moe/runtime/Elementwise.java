package dev.moe.runtime;

import java.util.Arrays;

/**
 * Small element-wise and row helpers that generated code uses between backend ops. They are cheap
 * next to the matmuls and attention, so they stay scalar and single-threaded (and so bitwise
 * deterministic).
 */
public final class Elementwise {
    private Elementwise() {}

    /** {@code dst[0..n) += src[0..n)}. */
    public static void addInPlace(float[] dst, float[] src, int n) {
        for (int i = 0; i < n; i++) {
            dst[i] += src[i];
        }
    }

    public static void zero(float[] a, int n) {
        Arrays.fill(a, 0, n, 0f);
    }

    /** {@code y[r, j] += b[j]}. */
    public static void addBias(float[] y, float[] b, int bOff, int rows, int n) {
        for (int r = 0; r < rows; r++) {
            int o = r * n;
            for (int j = 0; j < n; j++) {
                y[o + j] += b[bOff + j];
            }
        }
    }

    /** {@code db[j] += Σ_r dy[r, j]}. */
    public static void biasBackward(float[] dy, float[] db, int dbOff, int rows, int n) {
        for (int j = 0; j < n; j++) {
            double s = 0;
            for (int r = 0; r < rows; r++) {
                s += dy[r * n + j];
            }
            db[dbOff + j] += (float) s;
        }
    }

    /** {@code a[r, :] *= s[r]}. */
    public static void scaleRows(float[] a, float[] s, int rows, int dim) {
        for (int r = 0; r < rows; r++) {
            float f = s[r];
            int o = r * dim;
            for (int j = 0; j < dim; j++) {
                a[o + j] *= f;
            }
        }
    }

    /** {@code out[i] = a[rowsA[i], :] · b[i, :]}, accumulated in double. */
    public static void dotGatheredRows(float[] a, int[] rowsA, float[] b, int n, int dim, float[] out) {
        for (int i = 0; i < n; i++) {
            int oa = rowsA[i] * dim;
            int ob = i * dim;
            double s = 0;
            for (int j = 0; j < dim; j++) {
                s += (double) a[oa + j] * b[ob + j];
            }
            out[i] = (float) s;
        }
    }

    /** {@code out[r] = Σ_j a[r, j] · b[r, j]}, accumulated in double. */
    public static void dotRows(float[] a, float[] b, int rows, int dim, float[] out) {
        for (int r = 0; r < rows; r++) {
            int o = r * dim;
            double s = 0;
            for (int j = 0; j < dim; j++) {
                s += (double) a[o + j] * b[o + j];
            }
            out[r] = (float) s;
        }
    }

    public static float sigmoid(float x) {
        return (float) (1.0 / (1.0 + Math.exp(-x)));
    }

    /** Grows an array to at least {@code n} elements (new arrays are zeroed). */
    public static float[] ensure(float[] a, int n) {
        return a != null && a.length >= n ? a : new float[n];
    }

    public static int[] ensure(int[] a, int n) {
        return a != null && a.length >= n ? a : new int[n];
    }
}
