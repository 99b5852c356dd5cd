package dev.moe.runtime.cpu;

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
import static dev.moe.runtime.cpu.OpsTesting.randn;
import static org.junit.jupiter.api.Assertions.assertThrows;

import java.util.Random;
import java.util.function.Function;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.ValueSource;

/** Row movement: embedding lookup and its backward, gatherRows, scatterAddRows (the MoE dispatch and combine). */
class RowsTest {
    private static final int VOCAB = 6;
    private static final int DIM = 19;
    /** Token 2 three times, token 5 never: repeated rows must add up. */
    private static final int[] TOKENS = {2, 0, 2, 4, 1, 2, 3, 0};

    static double[] embeddingRef(int[] tokens, double[] table, int dim) {
        double[] out = new double[tokens.length * dim];
        for (int t = 0; t < tokens.length; t++) {
            for (int c = 0; c < dim; c++) {
                out[t * dim + c] = table[tokens[t] * dim + c];
            }
        }
        return out;
    }

    /** {@code dst + Σ_i scale[i] · src[i]} into row {@code rows[i]}. */
    static double[] scatterRef(double[] src, int[] rows, double[] scale, int dim, double[] dst) {
        double[] out = dst.clone();
        for (int i = 0; i < rows.length; i++) {
            for (int c = 0; c < dim; c++) {
                out[rows[i] * dim + c] += (scale == null ? 1 : scale[i]) * src[i * dim + c];
            }
        }
        return out;
    }

    // ---- embedding ----

    @ParameterizedTest(name = "vector={0}")
    @ValueSource(booleans = {false, true})
    void embeddingLooksUpRows(boolean vector) {
        float[] table = randn(new Random(1), VOCAB * DIM, 1);
        float[] out = filled(TOKENS.length * DIM, Float.NaN);
        ops(1, vector).embedding(TOKENS, table, out, TOKENS.length, DIM);
        assertForward("out", out, embeddingRef(TOKENS, d(table), DIM));
    }

    @ParameterizedTest(name = "vector={0}")
    @ValueSource(booleans = {false, true})
    void embeddingBackwardMatchesFiniteDifferences(boolean vector) {
        Random r = new Random(2);
        float[] table = randn(r, VOCAB * DIM, 1);
        float[] dOut = randn(r, TOKENS.length * DIM, 1);
        float[] dTable = new float[table.length];
        ops(1, vector).embeddingBackward(TOKENS, dOut, dTable, TOKENS.length, DIM);
        Function<double[][], double[]> f = in -> embeddingRef(TOKENS, in[0], DIM);
        assertGradient("dTable", dTable, numericGradient(f, new double[][] {d(table)}, 0, d(dOut)));
    }

    @ParameterizedTest(name = "vector={0}")
    @ValueSource(booleans = {false, true})
    void embeddingBackwardAccumulates(boolean vector) {
        Random r = new Random(3);
        float[] dOut = randn(r, TOKENS.length * DIM, 1);
        float[] g = randn(r, VOCAB * DIM, 1);
        float[] dTable = g.clone();
        ops(1, vector).embeddingBackward(TOKENS, dOut, dTable, TOKENS.length, DIM);
        // The same sums, in token order, starting from g.
        float[] expected = g.clone();
        for (int t = 0; t < TOKENS.length; t++) {
            for (int c = 0; c < DIM; c++) {
                expected[TOKENS[t] * DIM + c] += dOut[t * DIM + c];
            }
        }
        assertBitwise("dTable", dTable, expected);
    }

    @Test
    void tokensOutOfRangeAreRejected() {
        float[] table = new float[VOCAB * DIM];
        assertThrows(IndexOutOfBoundsException.class,
                () -> ops(1, true).embedding(new int[] {VOCAB}, table, new float[DIM], 1, DIM));
        assertThrows(IndexOutOfBoundsException.class,
                () -> ops(1, true).embeddingBackward(new int[] {-1}, new float[DIM], table, 1, DIM));
    }

    // ---- gatherRows / scatterAddRows ----

    @ParameterizedTest(name = "vector={0}")
    @ValueSource(booleans = {false, true})
    void gatherCopiesRowsAndScatterAddIsItsBackward(boolean vector) {
        Random r = new Random(4);
        float[] src = randn(r, VOCAB * DIM, 1);
        float[] dst = filled(TOKENS.length * DIM, Float.NaN);
        CpuOps ops = ops(1, vector);
        ops.gatherRows(src, TOKENS, TOKENS.length, DIM, dst);
        assertForward("gather", dst, embeddingRef(TOKENS, d(src), DIM));

        // d/dsrc Σ dy · gather(src) = scatterAdd(dy) into zeros.
        float[] dy = randn(r, dst.length, 1);
        float[] dSrc = new float[src.length];
        ops.scatterAddRows(dy, TOKENS, null, TOKENS.length, DIM, dSrc);
        Function<double[][], double[]> f = in -> embeddingRef(TOKENS, in[0], DIM);
        assertGradient("dSrc", dSrc, numericGradient(f, new double[][] {d(src)}, 0, d(dy)));
    }

    @ParameterizedTest(name = "vector={0}")
    @ValueSource(booleans = {false, true})
    void scatterAddAccumulatesWithAndWithoutScale(boolean vector) {
        Random r = new Random(5);
        float[] src = randn(r, TOKENS.length * DIM, 1);
        float[] scale = randn(r, TOKENS.length, 1);
        float[] dst0 = randn(r, VOCAB * DIM, 1);
        for (float[] s : new float[][] {null, scale}) {
            float[] dst = dst0.clone();
            ops(1, vector).scatterAddRows(src, TOKENS, s, TOKENS.length, DIM, dst);
            assertClose("scale=" + (s != null), dst, scatterRef(d(src), TOKENS, s == null ? null : d(s), DIM, d(dst0)), 1e-6, 1e-6);
        }
    }

    /** The backward of scatterAdd into the source is gather (times the scale): check against finite differences. */
    @ParameterizedTest(name = "vector={0}")
    @ValueSource(booleans = {false, true})
    void scatterAddBackwardIsGather(boolean vector) {
        Random r = new Random(6);
        float[] src = randn(r, TOKENS.length * DIM, 1);
        float[] scale = randn(r, TOKENS.length, 1);
        float[] dst0 = randn(r, VOCAB * DIM, 1);
        float[] dy = randn(r, dst0.length, 1);
        float[] dSrc = new float[src.length];
        ops(1, vector).gatherRows(dy, TOKENS, TOKENS.length, DIM, dSrc);
        for (int i = 0; i < TOKENS.length; i++) {
            for (int c = 0; c < DIM; c++) {
                dSrc[i * DIM + c] *= scale[i];
            }
        }
        Function<double[][], double[]> f = in -> scatterRef(in[0], TOKENS, d(scale), DIM, d(dst0));
        assertGradient("dSrc", dSrc, numericGradient(f, new double[][] {d(src)}, 0, d(dy)));
    }

    @Test
    void scatterRowsOutOfRangeAreRejected() {
        assertThrows(IndexOutOfBoundsException.class,
                () -> ops(1, true).scatterAddRows(new float[DIM], new int[] {VOCAB}, null, 1, DIM, new float[VOCAB * DIM]));
    }

    @Test
    void vectorMatchesScalar() {
        assertVectorMatchesScalar("rows", ops -> run(ops, 50));
    }

    @Test
    void threadCountInvariant() {
        assertThreadCountInvariant("rows", ops -> run(ops, 50));
    }

    private static float[][] run(CpuOps ops, int dim) {
        int vocab = 13;
        int n = 40;
        Random r = new Random(7);
        int[] tokens = new int[n];
        for (int i = 0; i < n; i++) {
            tokens[i] = r.nextInt(vocab);
        }
        float[] table = randn(r, vocab * dim, 1);
        float[] scale = randn(r, n, 1);
        float[] dOut = randn(r, n * dim, 1);
        float[] out = new float[n * dim];
        ops.embedding(tokens, table, out, n, dim);
        float[] dTable = randn(r, vocab * dim, 1);
        ops.embeddingBackward(tokens, dOut, dTable, n, dim);
        float[] gathered = new float[n * dim];
        ops.gatherRows(table, tokens, n, dim, gathered);
        float[] scattered = randn(r, vocab * dim, 1);
        ops.scatterAddRows(dOut, tokens, scale, n, dim, scattered);
        float[] scatteredPlain = new float[vocab * dim];
        ops.scatterAddRows(dOut, tokens, null, n, dim, scatteredPlain);
        return new float[][] {out, dTable, gathered, scattered, scatteredPlain};
    }
}
