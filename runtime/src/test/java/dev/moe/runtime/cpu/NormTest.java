package dev.moe.runtime.cpu;

import static com.google.common.truth.Truth.assertThat;
import static dev.moe.runtime.cpu.OpsTesting.assertBitwise;
import static dev.moe.runtime.cpu.OpsTesting.assertClose;
import static dev.moe.runtime.cpu.OpsTesting.assertForward;
import static dev.moe.runtime.cpu.OpsTesting.assertGradient;
import static dev.moe.runtime.cpu.OpsTesting.assertThreadCountInvariant;
import static dev.moe.runtime.cpu.OpsTesting.assertVectorMatchesScalar;
import static dev.moe.runtime.cpu.OpsTesting.d;
import static dev.moe.runtime.cpu.OpsTesting.filled;
import static dev.moe.runtime.cpu.OpsTesting.numericGradient;
import static dev.moe.runtime.cpu.OpsTesting.ops;
import static dev.moe.runtime.cpu.OpsTesting.plus;
import static dev.moe.runtime.cpu.OpsTesting.randn;

import java.util.Random;
import java.util.function.Function;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.ValueSource;
import org.junit.jupiter.api.Test;

/** RMSNorm and LayerNorm (HF conventions: rsqrt(mean(x²) + eps); biased variance). */
class NormTest {
    private static final int ROWS = 3;
    /** Two 16-lane vectors and a tail. */
    private static final int DIM = 37;
    private static final float EPS = 1e-5f;

    // ---- float64 references ----

    static double[] rmsNormRef(double[] x, double[] w, int rows, int dim, double eps) {
        double[] y = new double[rows * dim];
        for (int r = 0; r < rows; r++) {
            double ms = 0;
            for (int j = 0; j < dim; j++) {
                ms += x[r * dim + j] * x[r * dim + j];
            }
            double inv = 1 / Math.sqrt(ms / dim + eps);
            for (int j = 0; j < dim; j++) {
                y[r * dim + j] = x[r * dim + j] * inv * w[j];
            }
        }
        return y;
    }

    static double[] layerNormRef(double[] x, double[] w, double[] b, int rows, int dim, double eps) {
        double[] y = new double[rows * dim];
        for (int r = 0; r < rows; r++) {
            double mean = 0;
            for (int j = 0; j < dim; j++) {
                mean += x[r * dim + j];
            }
            mean /= dim;
            double var = 0;
            for (int j = 0; j < dim; j++) {
                var += (x[r * dim + j] - mean) * (x[r * dim + j] - mean);
            }
            var /= dim;
            for (int j = 0; j < dim; j++) {
                y[r * dim + j] = (x[r * dim + j] - mean) / Math.sqrt(var + eps) * w[j] + (b == null ? 0 : b[j]);
            }
        }
        return y;
    }

    private static float[] weight(Random r, int dim) {
        float[] w = randn(r, dim, 0.3);
        for (int j = 0; j < dim; j++) {
            w[j] += 1f;
        }
        return w;
    }

    // ---- RMSNorm ----

    @ParameterizedTest(name = "vector={0}")
    @ValueSource(booleans = {false, true})
    void rmsNormForwardMatchesFloat64Reference(boolean vector) {
        Random r = new Random(1);
        float[] x = randn(r, ROWS * DIM, 1.5);
        float[] w = weight(r, DIM);
        float[] y = filled(ROWS * DIM, Float.NaN);
        float[] rstd = filled(ROWS, Float.NaN);
        ops(1, vector).rmsNorm(x, w, y, rstd, ROWS, DIM, EPS);
        assertForward("y", y, rmsNormRef(d(x), d(w), ROWS, DIM, EPS));
        for (int row = 0; row < ROWS; row++) {
            double ms = 0;
            for (int j = 0; j < DIM; j++) {
                ms += (double) x[row * DIM + j] * x[row * DIM + j];
            }
            assertThat((double) rstd[row]).isWithin(1e-6).of(1 / Math.sqrt(ms / DIM + EPS));
        }
    }

    @ParameterizedTest(name = "vector={0}")
    @ValueSource(booleans = {false, true})
    void rmsNormBackwardMatchesFiniteDifferences(boolean vector) {
        Random r = new Random(2);
        float[] x = randn(r, ROWS * DIM, 1.5);
        float[] w = weight(r, DIM);
        float[] dy = randn(r, ROWS * DIM, 1);
        CpuOps ops = ops(1, vector);
        float[] y = new float[ROWS * DIM];
        float[] rstd = new float[ROWS];
        ops.rmsNorm(x, w, y, rstd, ROWS, DIM, EPS);
        float[] dx = new float[ROWS * DIM];
        float[] dw = new float[DIM];
        ops.rmsNormBackward(x, w, rstd, dy, dx, dw, ROWS, DIM);

        Function<double[][], double[]> f = in -> rmsNormRef(in[0], in[1], ROWS, DIM, EPS);
        double[][] in = {d(x), d(w)};
        assertGradient("dx", dx, numericGradient(f, in, 0, d(dy)));
        assertGradient("dw", dw, numericGradient(f, in, 1, d(dy)));
    }

    @ParameterizedTest(name = "vector={0}")
    @ValueSource(booleans = {false, true})
    void rmsNormBackwardAccumulates(boolean vector) {
        Random r = new Random(3);
        float[] x = randn(r, ROWS * DIM, 1);
        float[] w = weight(r, DIM);
        float[] dy = randn(r, ROWS * DIM, 1);
        CpuOps ops = ops(1, vector);
        float[] rstd = new float[ROWS];
        ops.rmsNorm(x, w, new float[ROWS * DIM], rstd, ROWS, DIM, EPS);
        float[] dx0 = new float[ROWS * DIM];
        float[] dw0 = new float[DIM];
        ops.rmsNormBackward(x, w, rstd, dy, dx0, dw0, ROWS, DIM);

        float[] gx = randn(r, ROWS * DIM, 1);
        float[] gw = randn(r, DIM, 1);
        float[] dx = gx.clone();
        float[] dw = gw.clone();
        ops.rmsNormBackward(x, w, rstd, dy, dx, dw, ROWS, DIM);
        assertBitwise("dx", dx, plus(gx, dx0));
        assertBitwise("dw", dw, plus(gw, dw0));
    }

    @Test
    void rmsNormVectorMatchesScalar() {
        assertVectorMatchesScalar("rmsNorm", ops -> rmsNormRun(ops, 7, 301));
    }

    @Test
    void rmsNormThreadCountInvariant() {
        assertThreadCountInvariant("rmsNorm", ops -> rmsNormRun(ops, 20, 70));
    }

    private static float[][] rmsNormRun(CpuOps ops, int rows, int dim) {
        Random r = new Random(4);
        float[] x = randn(r, rows * dim, 2);
        float[] w = weight(r, dim);
        float[] dy = randn(r, rows * dim, 1);
        float[] y = new float[rows * dim];
        float[] rstd = new float[rows];
        ops.rmsNorm(x, w, y, rstd, rows, dim, EPS);
        float[] dx = new float[rows * dim];
        float[] dw = new float[dim];
        ops.rmsNormBackward(x, w, rstd, dy, dx, dw, rows, dim);
        return new float[][] {y, rstd, dx, dw};
    }

    // ---- LayerNorm ----

    @ParameterizedTest(name = "vector={0}")
    @ValueSource(booleans = {false, true})
    void layerNormForwardMatchesFloat64Reference(boolean vector) {
        Random r = new Random(11);
        float[] x = randn(r, ROWS * DIM, 1.5);
        for (int i = 0; i < x.length; i++) {
            x[i] += 0.7f; // a mean to subtract
        }
        float[] w = weight(r, DIM);
        float[] b = randn(r, DIM, 0.5);
        float[] y = filled(ROWS * DIM, Float.NaN);
        float[] mean = filled(ROWS, Float.NaN);
        float[] rstd = filled(ROWS, Float.NaN);
        ops(1, vector).layerNorm(x, w, b, y, mean, rstd, ROWS, DIM, EPS);
        assertForward("y", y, layerNormRef(d(x), d(w), d(b), ROWS, DIM, EPS));
        for (int row = 0; row < ROWS; row++) {
            double m = 0;
            for (int j = 0; j < DIM; j++) {
                m += x[row * DIM + j];
            }
            m /= DIM;
            double var = 0;
            for (int j = 0; j < DIM; j++) {
                var += (x[row * DIM + j] - m) * (x[row * DIM + j] - m);
            }
            assertThat((double) mean[row]).isWithin(1e-6).of(m);
            assertThat((double) rstd[row]).isWithin(1e-5).of(1 / Math.sqrt(var / DIM + EPS));
        }
    }

    @ParameterizedTest(name = "vector={0}")
    @ValueSource(booleans = {false, true})
    void layerNormWithoutBiasIsLayerNormWithZeroBias(boolean vector) {
        Random r = new Random(12);
        float[] x = randn(r, ROWS * DIM, 1);
        float[] w = weight(r, DIM);
        float[] y = new float[ROWS * DIM];
        ops(1, vector).layerNorm(x, w, null, y, new float[ROWS], new float[ROWS], ROWS, DIM, EPS);
        assertForward("y", y, layerNormRef(d(x), d(w), null, ROWS, DIM, EPS));
    }

    @ParameterizedTest(name = "vector={0}")
    @ValueSource(booleans = {false, true})
    void layerNormBackwardMatchesFiniteDifferences(boolean vector) {
        Random r = new Random(13);
        float[] x = randn(r, ROWS * DIM, 1.5);
        float[] w = weight(r, DIM);
        float[] b = randn(r, DIM, 0.5);
        float[] dy = randn(r, ROWS * DIM, 1);
        CpuOps ops = ops(1, vector);
        float[] mean = new float[ROWS];
        float[] rstd = new float[ROWS];
        ops.layerNorm(x, w, b, new float[ROWS * DIM], mean, rstd, ROWS, DIM, EPS);
        float[] dx = new float[ROWS * DIM];
        float[] dw = new float[DIM];
        float[] db = new float[DIM];
        ops.layerNormBackward(x, w, mean, rstd, dy, dx, dw, db, ROWS, DIM);

        Function<double[][], double[]> f = in -> layerNormRef(in[0], in[1], in[2], ROWS, DIM, EPS);
        double[][] in = {d(x), d(w), d(b)};
        assertGradient("dx", dx, numericGradient(f, in, 0, d(dy)));
        assertGradient("dw", dw, numericGradient(f, in, 1, d(dy)));
        assertGradient("db", db, numericGradient(f, in, 2, d(dy)));
    }

    @ParameterizedTest(name = "vector={0}")
    @ValueSource(booleans = {false, true})
    void layerNormBackwardAccumulates(boolean vector) {
        Random r = new Random(14);
        float[] x = randn(r, ROWS * DIM, 1);
        float[] w = weight(r, DIM);
        float[] b = randn(r, DIM, 0.5);
        float[] dy = randn(r, ROWS * DIM, 1);
        CpuOps ops = ops(1, vector);
        float[] mean = new float[ROWS];
        float[] rstd = new float[ROWS];
        ops.layerNorm(x, w, b, new float[ROWS * DIM], mean, rstd, ROWS, DIM, EPS);
        float[] dx0 = new float[ROWS * DIM];
        float[] dw0 = new float[DIM];
        float[] db0 = new float[DIM];
        ops.layerNormBackward(x, w, mean, rstd, dy, dx0, dw0, db0, ROWS, DIM);

        float[] gx = randn(r, ROWS * DIM, 1);
        float[] gw = randn(r, DIM, 1);
        float[] gb = randn(r, DIM, 1);
        float[] dx = gx.clone();
        float[] dw = gw.clone();
        float[] db = gb.clone();
        ops.layerNormBackward(x, w, mean, rstd, dy, dx, dw, db, ROWS, DIM);
        assertBitwise("dx", dx, plus(gx, dx0));
        assertBitwise("dw", dw, plus(gw, dw0));
        assertBitwise("db", db, plus(gb, db0));
    }

    @Test
    void layerNormVectorMatchesScalar() {
        assertVectorMatchesScalar("layerNorm", ops -> layerNormRun(ops, 7, 301));
    }

    @Test
    void layerNormThreadCountInvariant() {
        assertThreadCountInvariant("layerNorm", ops -> layerNormRun(ops, 20, 70));
    }

    @Test
    void rmsNormOfAConstantRowIsTheWeight() {
        float[] x = filled(DIM, -3f);
        float[] w = weight(new Random(15), DIM);
        float[] y = new float[DIM];
        ops(1, true).rmsNorm(x, w, y, new float[1], 1, DIM, 0f);
        double[] expected = new double[DIM];
        for (int j = 0; j < DIM; j++) {
            expected[j] = -w[j];
        }
        assertClose("y", y, expected, 1e-6, 1e-6);
    }

    private static float[][] layerNormRun(CpuOps ops, int rows, int dim) {
        Random r = new Random(16);
        float[] x = randn(r, rows * dim, 2);
        float[] w = weight(r, dim);
        float[] b = randn(r, dim, 0.5);
        float[] dy = randn(r, rows * dim, 1);
        float[] y = new float[rows * dim];
        float[] mean = new float[rows];
        float[] rstd = new float[rows];
        ops.layerNorm(x, w, b, y, mean, rstd, rows, dim, EPS);
        float[] dx = new float[rows * dim];
        float[] dw = new float[dim];
        float[] db = new float[dim];
        ops.layerNormBackward(x, w, mean, rstd, dy, dx, dw, db, rows, dim);
        return new float[][] {y, mean, rstd, dx, dw, db};
    }
}
