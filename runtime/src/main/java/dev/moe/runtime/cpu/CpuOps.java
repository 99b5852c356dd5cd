package dev.moe.runtime.cpu;

import dev.moe.runtime.Activation;
import jdk.incubator.vector.FloatVector;
import jdk.incubator.vector.IntVector;
import jdk.incubator.vector.VectorMask;
import jdk.incubator.vector.VectorOperators;
import jdk.incubator.vector.VectorShuffle;
import jdk.incubator.vector.VectorSpecies;

/**
 * The CPU implementation of every {@link dev.moe.runtime.Backend} op except linear algebra:
 * embeddings, norms, RoPE, attention, activations, row gather/scatter and the loss. Shapes and
 * accumulation rules are those of {@link dev.moe.runtime.Backend}; the numerics follow HF
 * transformers (RMSNorm {@code x · rsqrt(mean(x²) + eps) · w}, LayerNorm with the biased variance,
 * NeoX "rotate_half" RoPE with fp32 angles, GELU's tanh approximation, attention scaled by
 * {@code 1/sqrt(headDim)}).
 *
 * <p>Every op has a scalar path, the reference, and the hot loops (norms, activations, attention,
 * the loss) have a Vector API path, chosen by the {@code vectorApi} flag. Vector results differ from
 * scalar ones by rounding only (about 1e-6 relative).
 *
 * <p>Determinism: the output is bitwise the same for any thread count. Work is split (through
 * {@link Parallel}) only over independent units: a row, a (batch, head, query), a (batch, kv head,
 * key), an aligned block of 1024 elements, a column of a sum over rows; each unit's sums run in a
 * fixed order. The vector code uses only lane-wise IEEE arithmetic (its own lane sum and exp instead
 * of {@code reduceLanes(ADD)} and {@code EXP}, whose results change as the JIT compiles them), so
 * the bits do not depend on JIT warm-up either.
 */
final class CpuOps {
    private static final VectorSpecies<Float> F = FloatVector.SPECIES_PREFERRED;

    /**
     * Elements per unit of element-wise ops: a multiple of every vector length, so that which elements
     * take the vector loop and which its scalar tail does not depend on the split.
     */
    private static final int BLOCK = 1024;
    /** The fewest columns in a chunk of a column-wise loop. */
    private static final int MIN_COLUMNS = 16;

    private static final double SQRT_2_OVER_PI = Math.sqrt(2.0 / Math.PI);
    private static final double GELU_K = 0.044715;

    /** The least work (in element operations) worth handing to another thread. */
    static final long MIN_WORK = 1 << 15;

    private final Parallel parallel;
    private final boolean vectorApi;
    private final long minWork;

    CpuOps(int threads, boolean vectorApi) {
        this(threads, vectorApi, MIN_WORK);
    }

    /** With {@code minWork}, the least work worth a thread: tests pass 1 to split even tiny shapes. */
    CpuOps(int threads, boolean vectorApi, long minWork) {
        this.parallel = new Parallel(threads);
        this.vectorApi = vectorApi;
        this.minWork = Math.max(1, minWork);
    }

    // ---------------------------------------------------------------------------------------------
    // threading

    /**
     * Runs {@code body} over units {@code [0, n)} through {@link Parallel}, where one unit costs about
     * {@code work} element operations; small calls run inline. The split never changes any unit's result.
     */
    private void forRange(int n, long work, Parallel.IntRangeConsumer body) {
        parallel.forRange(n, grain(work), body);
    }

    private int grain(long work) {
        return (int) Math.max(1, Math.min(Integer.MAX_VALUE, minWork / Math.max(1, work)));
    }

    /**
     * Runs {@code body} over column ranges {@code [c0, c1)} of {@code [0, dim)}, where each column
     * costs {@code rows}. For sums over rows into a column (dw, scattered rows): each column sums its
     * rows in order, so any split of the columns gives the same bits. Column loops have no vector
     * path (whose tail would depend on the split), only lane-wise scalar code.
     */
    private void forColumns(int dim, int rows, Parallel.IntRangeConsumer body) {
        parallel.forRange(dim, Math.max(MIN_COLUMNS, grain(rows)), body);
    }

    private static int blocks(int n, int block) {
        return (int) (((long) n + block - 1) / block);
    }

    // ---------------------------------------------------------------------------------------------
    // embedding

    void embedding(int[] tokens, float[] table, float[] out, int tokensCount, int dim) {
        int vocab = table.length / Math.max(dim, 1);
        forRange(tokensCount, dim, (from, to) -> {
            for (int t = from; t < to; t++) {
                int token = checkIndex(tokens[t], vocab, "token");
                System.arraycopy(table, token * dim, out, t * dim, dim);
            }
        });
    }

    void embeddingBackward(int[] tokens, float[] dOut, float[] dTable, int tokensCount, int dim) {
        int vocab = dTable.length / Math.max(dim, 1);
        for (int t = 0; t < tokensCount; t++) {
            checkIndex(tokens[t], vocab, "token");
        }
        // Tokens repeat, so split the columns: each column sums its tokens in order.
        forColumns(dim, tokensCount, (c0, c1) -> {
            for (int t = 0; t < tokensCount; t++) {
                int src = t * dim;
                int dst = tokens[t] * dim;
                for (int c = c0; c < c1; c++) {
                    dTable[dst + c] += dOut[src + c];
                }
            }
        });
    }

    // ---------------------------------------------------------------------------------------------
    // RMSNorm

    void rmsNorm(float[] x, float[] w, float[] y, float[] rstd, int rows, int dim, float eps) {
        forRange(rows, 4L * dim, (from, to) -> {
            for (int r = from; r < to; r++) {
                int o = r * dim;
                double ms = (vectorApi ? sumSquaresVector(x, o, dim) : sumSquaresScalar(x, o, dim)) / dim;
                float rs = (float) (1.0 / Math.sqrt(ms + eps));
                if (rstd != null) {
                    rstd[r] = rs;
                }
                int j = 0;
                if (vectorApi) {
                    for (int bound = F.loopBound(dim); j < bound; j += F.length()) {
                        FloatVector xv = FloatVector.fromArray(F, x, o + j);
                        xv.mul(rs).mul(FloatVector.fromArray(F, w, j)).intoArray(y, o + j);
                    }
                }
                for (; j < dim; j++) {
                    y[o + j] = x[o + j] * rs * w[j];
                }
            }
        });
    }

    void rmsNormBackward(float[] x, float[] w, float[] rstd, float[] dy, float[] dx, float[] dw, int rows, int dim) {
        if (dx != null) {
            forRange(rows, 4L * dim, (from, to) -> {
                for (int r = from; r < to; r++) {
                    int o = r * dim;
                    float rs = rstd[r];
                    // dx = rstd * (dy*w - x * rstd^2 * mean(dy*w*x))
                    double c = vectorApi ? dot3Vector(dy, o, w, 0, x, o, dim) : dot3Scalar(dy, o, w, 0, x, o, dim);
                    float k = (float) (c / dim * rs * rs);
                    int j = 0;
                    if (vectorApi) {
                        for (int bound = F.loopBound(dim); j < bound; j += F.length()) {
                            FloatVector g = FloatVector.fromArray(F, dy, o + j).mul(FloatVector.fromArray(F, w, j));
                            FloatVector xv = FloatVector.fromArray(F, x, o + j);
                            FloatVector d = g.sub(xv.mul(k)).mul(rs);
                            FloatVector.fromArray(F, dx, o + j).add(d).intoArray(dx, o + j);
                        }
                    }
                    for (; j < dim; j++) {
                        dx[o + j] += (dy[o + j] * w[j] - x[o + j] * k) * rs;
                    }
                }
            });
        }
        if (dw != null) {
            // dw[j] += sum over rows of dy * x * rstd, each column summed in row order (in double).
            forColumns(dim, rows, (c0, c1) -> {
                double[] acc = new double[c1 - c0];
                for (int r = 0; r < rows; r++) {
                    int o = r * dim;
                    float rs = rstd[r];
                    for (int c = c0; c < c1; c++) {
                        acc[c - c0] += dy[o + c] * (x[o + c] * rs);
                    }
                }
                for (int c = c0; c < c1; c++) {
                    dw[c] += (float) acc[c - c0];
                }
            });
        }
    }

    // ---------------------------------------------------------------------------------------------
    // LayerNorm

    void layerNorm(float[] x, float[] w, float[] b, float[] y, float[] mean, float[] rstd, int rows, int dim, float eps) {
        forRange(rows, 4L * dim, (from, to) -> {
            for (int r = from; r < to; r++) {
                int o = r * dim;
                float mu;
                double var;
                if (vectorApi) {
                    mu = (float) (sumVector(x, o, dim) / dim);
                    var = sumSquaredDeviationVector(x, o, dim, mu) / dim;
                } else {
                    mu = (float) (sumScalar(x, o, dim) / dim);
                    var = sumSquaredDeviationScalar(x, o, dim, mu) / dim;
                }
                float rs = (float) (1.0 / Math.sqrt(var + eps));
                if (mean != null) {
                    mean[r] = mu;
                }
                if (rstd != null) {
                    rstd[r] = rs;
                }
                int j = 0;
                if (vectorApi) {
                    for (int bound = F.loopBound(dim); j < bound; j += F.length()) {
                        FloatVector v = FloatVector.fromArray(F, x, o + j).sub(mu).mul(rs).mul(FloatVector.fromArray(F, w, j));
                        if (b != null) {
                            v = v.add(FloatVector.fromArray(F, b, j));
                        }
                        v.intoArray(y, o + j);
                    }
                }
                for (; j < dim; j++) {
                    y[o + j] = (x[o + j] - mu) * rs * w[j] + (b == null ? 0f : b[j]);
                }
            }
        });
    }

    void layerNormBackward(float[] x, float[] w, float[] mean, float[] rstd, float[] dy, float[] dx, float[] dw, float[] db, int rows,
            int dim) {
        if (dx != null) {
            forRange(rows, 4L * dim, (from, to) -> {
                for (int r = from; r < to; r++) {
                    int o = r * dim;
                    float mu = mean[r];
                    float rs = rstd[r];
                    // g = dy*w, xhat = (x-mu)*rstd; dx = rstd * (g - mean(g) - xhat * mean(g*xhat))
                    double sg = 0;
                    double sgx = 0;
                    int j = 0;
                    if (vectorApi) {
                        FloatVector accG = FloatVector.zero(F);
                        FloatVector accGx = FloatVector.zero(F);
                        for (int bound = F.loopBound(dim); j < bound; j += F.length()) {
                            FloatVector g = FloatVector.fromArray(F, dy, o + j).mul(FloatVector.fromArray(F, w, j));
                            FloatVector xh = FloatVector.fromArray(F, x, o + j).sub(mu).mul(rs);
                            accG = accG.add(g);
                            accGx = g.fma(xh, accGx);
                        }
                        sg = sumLanes(accG);
                        sgx = sumLanes(accGx);
                    }
                    for (; j < dim; j++) {
                        float g = dy[o + j] * w[j];
                        float xh = (x[o + j] - mu) * rs;
                        sg += g;
                        sgx += (double) g * xh;
                    }
                    float mg = (float) (sg / dim);
                    float mgx = (float) (sgx / dim);
                    j = 0;
                    if (vectorApi) {
                        for (int bound = F.loopBound(dim); j < bound; j += F.length()) {
                            FloatVector g = FloatVector.fromArray(F, dy, o + j).mul(FloatVector.fromArray(F, w, j));
                            FloatVector xh = FloatVector.fromArray(F, x, o + j).sub(mu).mul(rs);
                            FloatVector d = g.sub(mg).sub(xh.mul(mgx)).mul(rs);
                            FloatVector.fromArray(F, dx, o + j).add(d).intoArray(dx, o + j);
                        }
                    }
                    for (; j < dim; j++) {
                        float g = dy[o + j] * w[j];
                        float xh = (x[o + j] - mu) * rs;
                        dx[o + j] += (g - mg - xh * mgx) * rs;
                    }
                }
            });
        }
        if (dw != null || db != null) {
            forColumns(dim, rows, (c0, c1) -> {
                double[] accW = new double[c1 - c0];
                double[] accB = new double[c1 - c0];
                for (int r = 0; r < rows; r++) {
                    int o = r * dim;
                    float mu = mean[r];
                    float rs = rstd[r];
                    for (int c = c0; c < c1; c++) {
                        float g = dy[o + c];
                        accW[c - c0] += g * ((x[o + c] - mu) * rs);
                        accB[c - c0] += g;
                    }
                }
                for (int c = c0; c < c1; c++) {
                    if (dw != null) {
                        dw[c] += (float) accW[c - c0];
                    }
                    if (db != null) {
                        db[c] += (float) accB[c - c0];
                    }
                }
            });
        }
    }

    // ---------------------------------------------------------------------------------------------
    // RoPE

    void rope(float[] x, int rows, int seqLen, int heads, int headDim, int rotaryDims, float theta, boolean inverse) {
        if (rotaryDims <= 0 || rows <= 0) {
            return;
        }
        if (rotaryDims % 2 != 0 || rotaryDims > headDim) {
            throw new IllegalArgumentException("rotaryDims " + rotaryDims + " must be even and at most headDim " + headDim);
        }
        int half = rotaryDims / 2;
        int positions = Math.min(rows, seqLen);
        // As HF: inv_freq and the angle pos * inv_freq are fp32, cos and sin of that fp32 angle.
        float[] invFreq = new float[half];
        for (int i = 0; i < half; i++) {
            invFreq[i] = (float) (1.0 / Math.pow(theta, (double) (2 * i) / rotaryDims));
        }
        float[] cos = new float[positions * half];
        float[] sin = new float[positions * half];
        for (int p = 0; p < positions; p++) {
            for (int i = 0; i < half; i++) {
                float angle = (float) p * invFreq[i];
                cos[p * half + i] = (float) Math.cos(angle);
                sin[p * half + i] = (float) (inverse ? -Math.sin(angle) : Math.sin(angle));
            }
        }
        int width = heads * headDim;
        forRange(rows, 4L * heads * rotaryDims, (from, to) -> {
            for (int r = from; r < to; r++) {
                int t = (r % seqLen) * half;
                for (int h = 0; h < heads; h++) {
                    int o = r * width + h * headDim;
                    for (int i = 0; i < half; i++) {
                        float c = cos[t + i];
                        float s = sin[t + i];
                        float x1 = x[o + i];
                        float x2 = x[o + i + half];
                        x[o + i] = x1 * c - x2 * s;
                        x[o + i + half] = x2 * c + x1 * s;
                    }
                }
            }
        });
    }

    // ---------------------------------------------------------------------------------------------
    // attention

    /** Query i sees keys {@code [lo, hi]}: {@code lo = i - window + 1} with a window, {@code hi = i} when causal. */
    private static int firstKey(int i, int window) {
        return window > 0 ? Math.max(0, i - window + 1) : 0;
    }

    private static int lastKey(int i, int seq, boolean causal) {
        return causal ? i : seq - 1;
    }

    /** Unit u of n positions in an order that mixes early and late positions, so causal work balances over contiguous ranges. */
    private static int interleave(int u, int n) {
        return (u & 1) == 0 ? u >>> 1 : n - 1 - (u >>> 1);
    }

    private static void checkHeads(int heads, int kvHeads) {
        if (kvHeads <= 0 || heads % kvHeads != 0) {
            throw new IllegalArgumentException("heads " + heads + " is not a multiple of kvHeads " + kvHeads);
        }
    }

    void attention(float[] q, float[] k, float[] v, float[] out, float[] lse, int batch, int seq, int heads, int kvHeads, int headDim,
            boolean causal, int window) {
        attention(q, k, v, out, lse, batch, seq, heads, kvHeads, headDim, causal, window, null, null);
    }

    void attention(float[] q, float[] k, float[] v, float[] out, float[] lse, int batch, int seq, int heads, int kvHeads, int headDim,
            boolean causal, int window, boolean[] keep) {
        attention(q, k, v, out, lse, batch, seq, heads, kvHeads, headDim, causal, window, keep, null);
    }

    /**
     * With {@code keep} (per row, null = all): a query sees a dropped key only when it is that key's own
     * row. With {@code queries} (per row, null = all): only the marked rows are computed as queries.
     */
    void attention(float[] q, float[] k, float[] v, float[] out, float[] lse, int batch, int seq, int heads, int kvHeads, int headDim,
            boolean causal, int window, boolean[] keep, boolean[] queries) {
        checkHeads(heads, kvHeads);
        int group = heads / kvHeads;
        int qWidth = heads * headDim;
        int kvWidth = kvHeads * headDim;
        float scale = (float) (1.0 / Math.sqrt(headDim));
        // The vector path reads keys transposed, [b, kvHead, d, position], to score a run of keys per FMA.
        float[] kt = vectorApi ? transposeHeads(k, batch, seq, kvHeads, headDim) : null;
        forRange(batch * heads * seq, 4L * seq * headDim, (from, to) -> {
            float[] p = new float[seq];
            int[] seen = keep == null ? null : new int[seq];
            float[] acc = new float[headDim];
            for (int u = from; u < to; u++) {
                int bh = u / seq;
                int i = interleave(u % seq, seq);
                int b = bh / heads;
                int h = bh % heads;
                int kvh = h / group;
                int row = b * seq + i;
                if (queries != null && !queries[row]) {
                    continue;
                }
                int qo = row * qWidth + h * headDim;
                int lo = firstKey(i, window);
                int hi = lastKey(i, seq, causal);
                int n = hi - lo + 1;
                if (vectorApi) {
                    scoresTransposed(q, qo, kt, ((b * kvHeads + kvh) * headDim) * seq + lo, seq, headDim, n, scale, p);
                } else {
                    for (int j = lo; j <= hi; j++) {
                        p[j - lo] = dot(q, qo, k, (b * seq + j) * kvWidth + kvh * headDim, headDim) * scale;
                    }
                }
                if (keep != null) {
                    n = visibleKeys(p, null, seen, keep, b * seq, i, lo, n);
                }
                float max = Float.NEGATIVE_INFINITY;
                for (int t = 0; t < n; t++) {
                    max = Math.max(max, p[t]);
                }
                double sum = expShifted(p, n, max);
                java.util.Arrays.fill(acc, 0f);
                for (int t = 0; t < n; t++) {
                    int j = seen == null ? lo + t : seen[t];
                    axpy(p[t], v, (b * seq + j) * kvWidth + kvh * headDim, acc, 0, headDim);
                }
                float inv = (float) (1.0 / sum);
                for (int d = 0; d < headDim; d++) {
                    out[qo + d] = acc[d] * inv;
                }
                if (lse != null) {
                    lse[row * heads + h] = (float) (max + Math.log(sum));
                }
            }
        });
    }

    void attentionBackward(float[] q, float[] k, float[] v, float[] out, float[] lse, float[] dOut, float[] dq, float[] dk, float[] dv,
            int batch, int seq, int heads, int kvHeads, int headDim, boolean causal, int window) {
        attentionBackward(q, k, v, out, lse, dOut, dq, dk, dv, batch, seq, heads, kvHeads, headDim, causal, window, null, null);
    }

    void attentionBackward(float[] q, float[] k, float[] v, float[] out, float[] lse, float[] dOut, float[] dq, float[] dk, float[] dv,
            int batch, int seq, int heads, int kvHeads, int headDim, boolean causal, int window, boolean[] keep) {
        attentionBackward(q, k, v, out, lse, dOut, dq, dk, dv, batch, seq, heads, kvHeads, headDim, causal, window, keep, null);
    }

    /** With {@code queries}: only the marked rows are queries (their dq; their share of dk and dv). */
    void attentionBackward(float[] q, float[] k, float[] v, float[] out, float[] lse, float[] dOut, float[] dq, float[] dk, float[] dv,
            int batch, int seq, int heads, int kvHeads, int headDim, boolean causal, int window, boolean[] keep, boolean[] queries) {
        checkHeads(heads, kvHeads);
        int group = heads / kvHeads;
        int qWidth = heads * headDim;
        int kvWidth = kvHeads * headDim;
        float scale = (float) (1.0 / Math.sqrt(headDim));
        int rows = batch * seq;
        // delta[row, h] = dOut · out, the softmax backward's row term.
        float[] delta = new float[rows * heads];
        forRange(rows * heads, headDim, (from, to) -> {
            for (int u = from; u < to; u++) {
                delta[u] = dot(dOut, u * headDim, out, u * headDim, headDim);
            }
        });
        // dq: one unit per (b, h, query), over the keys it sees. P = exp(q·k * scale - lse), recomputed.
        if (dq != null) {
            float[] kt = vectorApi ? transposeHeads(k, batch, seq, kvHeads, headDim) : null;
            float[] vt = vectorApi ? transposeHeads(v, batch, seq, kvHeads, headDim) : null;
            forRange(batch * heads * seq, 6L * seq * headDim, (from, to) -> {
                float[] p = new float[seq];
                float[] dp = new float[seq];
                int[] seen = keep == null ? null : new int[seq];
                float[] acc = new float[headDim];
                for (int u = from; u < to; u++) {
                    int bh = u / seq;
                    int i = interleave(u % seq, seq);
                    int b = bh / heads;
                    int h = bh % heads;
                    int kvh = h / group;
                    int row = b * seq + i;
                    if (queries != null && !queries[row]) {
                        continue;
                    }
                    int qo = row * qWidth + h * headDim;
                    int lo = firstKey(i, window);
                    int hi = lastKey(i, seq, causal);
                    int n = hi - lo + 1;
                    float l = lse[row * heads + h];
                    if (vectorApi) {
                        int t0 = ((b * kvHeads + kvh) * headDim) * seq + lo;
                        scoresTransposed(q, qo, kt, t0, seq, headDim, n, scale, p);
                        scoresTransposed(dOut, qo, vt, t0, seq, headDim, n, 1f, dp);
                    } else {
                        for (int j = lo; j <= hi; j++) {
                            int kvo = (b * seq + j) * kvWidth + kvh * headDim;
                            p[j - lo] = dot(q, qo, k, kvo, headDim) * scale;
                            dp[j - lo] = dot(dOut, qo, v, kvo, headDim);
                        }
                    }
                    if (keep != null) {
                        n = visibleKeys(p, dp, seen, keep, b * seq, i, lo, n);
                    }
                    expShifted(p, n, l);
                    float dl = delta[row * heads + h];
                    java.util.Arrays.fill(acc, 0f);
                    for (int t = 0; t < n; t++) {
                        int j = seen == null ? lo + t : seen[t];
                        float ds = p[t] * (dp[t] - dl);
                        axpy(ds, k, (b * seq + j) * kvWidth + kvh * headDim, acc, 0, headDim);
                    }
                    for (int d = 0; d < headDim; d++) {
                        dq[qo + d] += acc[d] * scale;
                    }
                }
            });
        }
        // dk, dv: one unit per (b, kv head, key), over the queries of its group that see it.
        if (dk != null || dv != null) {
            float[] qt = vectorApi ? transposeHeads(q, batch, seq, heads, headDim) : null;
            float[] dOutT = vectorApi ? transposeHeads(dOut, batch, seq, heads, headDim) : null;
            forRange(batch * kvHeads * seq, 8L * group * seq * headDim, (from, to) -> {
                float[] p = new float[seq];
                float[] dp = new float[seq];
                float[] accK = new float[headDim];
                float[] accV = new float[headDim];
                for (int u = from; u < to; u++) {
                    int bk = u / seq;
                    int j = interleave(u % seq, seq);
                    int b = bk / kvHeads;
                    int kvh = bk % kvHeads;
                    int kvo = (b * seq + j) * kvWidth + kvh * headDim;
                    int lo = causal ? j : 0;
                    int hi = window > 0 ? Math.min(seq - 1, j + window - 1) : seq - 1;
                    if (keep != null && !keep[b * seq + j]) {
                        // a dropped key is seen by its own row only
                        lo = j;
                        hi = j;
                    }
                    int n = hi - lo + 1;
                    java.util.Arrays.fill(accK, 0f);
                    java.util.Arrays.fill(accV, 0f);
                    for (int h = kvh * group; h < (kvh + 1) * group; h++) {
                        if (vectorApi) {
                            int t0 = ((b * heads + h) * headDim) * seq + lo;
                            scoresTransposed(k, kvo, qt, t0, seq, headDim, n, scale, p);
                            scoresTransposed(v, kvo, dOutT, t0, seq, headDim, n, 1f, dp);
                        } else {
                            for (int i = lo; i <= hi; i++) {
                                if (queries != null && !queries[b * seq + i]) {
                                    continue;
                                }
                                int qo = (b * seq + i) * qWidth + h * headDim;
                                p[i - lo] = dot(q, qo, k, kvo, headDim) * scale;
                                dp[i - lo] = dot(dOut, qo, v, kvo, headDim);
                            }
                        }
                        for (int i = lo; i <= hi; i++) {
                            p[i - lo] -= lse[(b * seq + i) * heads + h];
                        }
                        expShifted(p, n, 0f);
                        for (int i = lo; i <= hi; i++) {
                            int row = b * seq + i;
                            if (queries != null && !queries[row]) {
                                continue; // not a query: its scores (and lse) are not defined
                            }
                            int qo = row * qWidth + h * headDim;
                            float pi = p[i - lo];
                            axpy(pi, dOut, qo, accV, 0, headDim);
                            float ds = pi * (dp[i - lo] - delta[row * heads + h]);
                            axpy(ds, q, qo, accK, 0, headDim);
                        }
                    }
                    for (int d = 0; d < headDim; d++) {
                        if (dk != null) {
                            dk[kvo + d] += accK[d] * scale;
                        }
                        if (dv != null) {
                            dv[kvo + d] += accV[d];
                        }
                    }
                }
            });
        }
    }

    /**
     * Keeps, in place and in order, the scores (and {@code dp}) of the keys lo .. lo + n - 1 that query i
     * sees under {@code keep}: the kept rows and its own. Their positions go to {@code seen}; returns how many.
     */
    private static int visibleKeys(float[] p, float[] dp, int[] seen, boolean[] keep, int rowBase, int i, int lo, int n) {
        int m = 0;
        for (int t = 0; t < n; t++) {
            int j = lo + t;
            if (j == i || keep[rowBase + j]) {
                p[m] = p[t];
                if (dp != null) {
                    dp[m] = dp[t];
                }
                seen[m++] = j;
            }
        }
        return m;
    }

    /** {@code x[b*seq + s, h*hd + d]} as {@code [b, h, d, s]}: each head's dims become rows over positions. */
    private float[] transposeHeads(float[] x, int batch, int seq, int heads, int headDim) {
        float[] t = new float[batch * seq * heads * headDim];
        forRange(batch * heads, (long) seq * headDim, (from, to) -> {
            for (int bh = from; bh < to; bh++) {
                int b = bh / heads;
                int h = bh % heads;
                int base = bh * headDim * seq;
                for (int s = 0; s < seq; s++) {
                    int o = ((b * seq + s) * heads + h) * headDim;
                    for (int d = 0; d < headDim; d++) {
                        t[base + d * seq + s] = x[o + d];
                    }
                }
            }
        });
        return t;
    }

    /**
     * {@code s[t] = scale · Σ_d a[ao + d] · mt[base + d·seq + t]} for {@code t < n}: dot products of one
     * vector with n consecutive positions of a transposed head, a vector of positions per FMA, so no
     * lane reductions. Every s[t] is the same fused chain over d, in the vector loop or in the tail.
     */
    private static void scoresTransposed(float[] a, int ao, float[] mt, int base, int seq, int headDim, int n, float scale, float[] s) {
        int t = 0;
        for (int bound = F.loopBound(n); t < bound; t += F.length()) {
            FloatVector acc = FloatVector.zero(F);
            for (int d = 0; d < headDim; d++) {
                acc = FloatVector.fromArray(F, mt, base + d * seq + t).fma(FloatVector.broadcast(F, a[ao + d]), acc);
            }
            acc.mul(scale).intoArray(s, t);
        }
        for (; t < n; t++) {
            float acc = 0f;
            for (int d = 0; d < headDim; d++) {
                acc = Math.fma(mt[base + d * seq + t], a[ao + d], acc);
            }
            s[t] = acc * scale;
        }
    }

    /** {@code p[0..n) = exp(p - shift)}; returns their sum, in double. */
    private double expShifted(float[] p, int n, float shift) {
        double sum = 0;
        int j = 0;
        if (vectorApi) {
            for (int bound = F.loopBound(n); j < bound; j += F.length()) {
                FloatVector e = exp(FloatVector.fromArray(F, p, j).sub(shift));
                e.intoArray(p, j);
                sum += sumLanes(e);
            }
        }
        for (; j < n; j++) {
            float e = (float) Math.exp(p[j] - shift);
            p[j] = e;
            sum += e;
        }
        return sum;
    }

    private float dot(float[] a, int ao, float[] b, int bo, int n) {
        float s = 0f;
        int j = 0;
        if (vectorApi && n >= F.length()) {
            FloatVector acc = FloatVector.zero(F);
            for (int bound = F.loopBound(n); j < bound; j += F.length()) {
                acc = FloatVector.fromArray(F, a, ao + j).fma(FloatVector.fromArray(F, b, bo + j), acc);
            }
            s = sumLanes(acc);
        }
        for (; j < n; j++) {
            s += a[ao + j] * b[bo + j];
        }
        return s;
    }

    /** {@code y[yo..] += alpha * x[xo..]}, n elements. */
    private void axpy(float alpha, float[] x, int xo, float[] y, int yo, int n) {
        int j = 0;
        if (vectorApi && n >= F.length()) {
            FloatVector a = FloatVector.broadcast(F, alpha);
            for (int bound = F.loopBound(n); j < bound; j += F.length()) {
                FloatVector.fromArray(F, x, xo + j).fma(a, FloatVector.fromArray(F, y, yo + j)).intoArray(y, yo + j);
            }
        }
        for (; j < n; j++) {
            y[yo + j] += alpha * x[xo + j];
        }
    }

    // ---------------------------------------------------------------------------------------------
    // activations

    void glu(Activation act, float[] gate, float[] up, float[] h, int n) {
        forRange(blocks(n, BLOCK), 8L * BLOCK, (from, to) -> {
            int start = from * BLOCK;
            int end = Math.min(n, to * BLOCK);
            if (vectorApi) {
                activationVector(act, gate, up, h, start, end);
            } else {
                for (int i = start; i < end; i++) {
                    h[i] = (float) (act(act, gate[i]) * up[i]);
                }
            }
        });
    }

    void gluBackward(Activation act, float[] gate, float[] up, float[] dh, float[] dGate, float[] dUp, int n) {
        forRange(blocks(n, BLOCK), 8L * BLOCK, (from, to) -> {
            int start = from * BLOCK;
            int end = Math.min(n, to * BLOCK);
            if (vectorApi) {
                activationBackwardVector(act, gate, up, dh, dGate, dUp, start, end);
            } else {
                for (int i = start; i < end; i++) {
                    double g = gate[i];
                    double d = dh[i];
                    double u = up[i];
                    // Both from locals: dGate or dUp may share an array with dh, gate or up.
                    if (dGate != null) {
                        dGate[i] = (float) (derivative(act, g) * u * d);
                    }
                    if (dUp != null) {
                        dUp[i] = (float) (act(act, g) * d);
                    }
                }
            }
        });
    }

    void activation(Activation act, float[] x, float[] y, int n) {
        forRange(blocks(n, BLOCK), 8L * BLOCK, (from, to) -> {
            int start = from * BLOCK;
            int end = Math.min(n, to * BLOCK);
            if (vectorApi) {
                activationVector(act, x, null, y, start, end);
            } else {
                for (int i = start; i < end; i++) {
                    y[i] = (float) act(act, x[i]);
                }
            }
        });
    }

    void activationBackward(Activation act, float[] x, float[] dy, float[] dx, int n) {
        forRange(blocks(n, BLOCK), 8L * BLOCK, (from, to) -> {
            int start = from * BLOCK;
            int end = Math.min(n, to * BLOCK);
            if (vectorApi) {
                activationBackwardVector(act, x, null, dy, dx, null, start, end);
            } else {
                for (int i = start; i < end; i++) {
                    dx[i] = (float) (derivative(act, x[i]) * dy[i]);
                }
            }
        });
    }

    private static double act(Activation act, double x) {
        return switch (act) {
            case SILU -> x / (1.0 + Math.exp(-x));
            case GELU -> 0.5 * x * (1.0 + Math.tanh(SQRT_2_OVER_PI * (x + GELU_K * x * x * x)));
            case RELU -> Math.max(x, 0.0);
        };
    }

    private static double derivative(Activation act, double x) {
        return switch (act) {
            case SILU -> {
                double s = 1.0 / (1.0 + Math.exp(-x));
                yield s * (1.0 + x * (1.0 - s));
            }
            case GELU -> {
                double t = Math.tanh(SQRT_2_OVER_PI * (x + GELU_K * x * x * x));
                yield 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * SQRT_2_OVER_PI * (1.0 + 3.0 * GELU_K * x * x);
            }
            case RELU -> x > 0 ? 1.0 : 0.0;
        };
    }

    /** {@code y = act(x)} (times {@code up} when not null) on {@code [start, end)}; the tail runs the scalar formula. */
    private static void activationVector(Activation act, float[] x, float[] up, float[] y, int start, int end) {
        int i = start;
        for (int bound = start + F.loopBound(end - start); i < bound; i += F.length()) {
            FloatVector a = actVector(act, FloatVector.fromArray(F, x, i));
            if (up != null) {
                a = a.mul(FloatVector.fromArray(F, up, i));
            }
            a.intoArray(y, i);
        }
        if (i < end) {
            // The tail goes through the same vector code on a zero-padded copy, so that an element's
            // bits never depend on where it falls in the array (a batch split in two stays bitwise equal).
            int n = end - i;
            float[] xt = new float[F.length()];
            float[] ut = up == null ? null : new float[F.length()];
            float[] yt = new float[F.length()];
            System.arraycopy(x, i, xt, 0, n);
            if (up != null) {
                System.arraycopy(up, i, ut, 0, n);
            }
            activationVector(act, xt, ut, yt, 0, F.length());
            System.arraycopy(yt, 0, y, i, n);
        }
    }

    /**
     * Backward on {@code [start, end)}: {@code dx = act'(x) * dy} (times {@code up} when not null), and
     * {@code dUp = act(x) * dy} when {@code dUp} is not null.
     */
    private static void activationBackwardVector(Activation act, float[] x, float[] up, float[] dy, float[] dx, float[] dUp, int start,
            int end) {
        int i = start;
        for (int bound = start + F.loopBound(end - start); i < bound; i += F.length()) {
            FloatVector xv = FloatVector.fromArray(F, x, i);
            FloatVector g = FloatVector.fromArray(F, dy, i);
            FloatVector value;
            FloatVector slope;
            switch (act) {
                case SILU -> {
                    FloatVector s = FloatVector.broadcast(F, 1f).div(exp(xv.neg()).add(1f));
                    value = xv.mul(s);
                    slope = s.mul(xv.mul(s.neg().add(1f)).add(1f));
                }
                case GELU -> {
                    // 0.5 (1 + tanh u) = sigmoid(2u): s + 2x s (1 - s) u'
                    FloatVector x2 = xv.mul(xv);
                    FloatVector s = geluSigmoid(xv, x2);
                    value = xv.mul(s);
                    FloatVector du = x2.mul((float) (3.0 * GELU_K)).add(1f).mul((float) (2.0 * SQRT_2_OVER_PI));
                    slope = s.add(xv.mul(s).mul(s.neg().add(1f)).mul(du));
                }
                case RELU -> {
                    VectorMask<Float> positive = xv.compare(VectorOperators.GT, 0f);
                    value = xv.max(0f);
                    slope = FloatVector.zero(F).blend(1f, positive);
                }
                default -> throw new AssertionError(act);
            }
            FloatVector d = slope.mul(g);
            if (up != null) {
                d = d.mul(FloatVector.fromArray(F, up, i));
            }
            if (dx != null) {
                d.intoArray(dx, i);
            }
            if (dUp != null) {
                value.mul(g).intoArray(dUp, i);
            }
        }
        if (i < end) {
            // As in activationVector: the tail runs the vector code on a zero-padded copy.
            int n = end - i;
            int w = F.length();
            float[] xt = new float[w];
            float[] ut = up == null ? null : new float[w];
            float[] gt = new float[w];
            float[] dxt = dx == null ? null : new float[w];
            float[] dut = dUp == null ? null : new float[w];
            System.arraycopy(x, i, xt, 0, n);
            System.arraycopy(dy, i, gt, 0, n);
            if (up != null) {
                System.arraycopy(up, i, ut, 0, n);
            }
            activationBackwardVector(act, xt, ut, gt, dxt, dut, 0, w);
            if (dx != null) {
                System.arraycopy(dxt, 0, dx, i, n);
            }
            if (dUp != null) {
                System.arraycopy(dut, 0, dUp, i, n);
            }
        }
    }

    /**
     * {@code 0.5 (1 + tanh(u)) = 1 / (1 + exp(-2u))}, {@code u = √(2/π) (x + 0.044715 x³)}: the tanh form
     * cancels for negative x in fp32, this one does not.
     */
    private static FloatVector geluSigmoid(FloatVector x, FloatVector x2) {
        FloatVector minus2u = x2.mul((float) GELU_K).add(1f).mul(x).mul((float) (-2.0 * SQRT_2_OVER_PI));
        return FloatVector.broadcast(F, 1f).div(exp(minus2u).add(1f));
    }

    private static FloatVector actVector(Activation act, FloatVector x) {
        return switch (act) {
            case SILU -> x.div(exp(x.neg()).add(1f));
            case GELU -> x.mul(geluSigmoid(x, x.mul(x)));
            case RELU -> x.max(0f);
        };
    }

    // ---------------------------------------------------------------------------------------------
    // rows

    void gatherRows(float[] src, int[] rows, int n, int dim, float[] dst) {
        forRange(n, dim, (from, to) -> {
            for (int i = from; i < to; i++) {
                System.arraycopy(src, rows[i] * dim, dst, i * dim, dim);
            }
        });
    }

    void scatterAddRows(float[] src, int[] rows, float[] scale, int n, int dim, float[] dst) {
        int dstRows = dst.length / Math.max(dim, 1);
        for (int i = 0; i < n; i++) {
            checkIndex(rows[i], dstRows, "row");
        }
        // Rows repeat (a token routed to several experts), so split the columns.
        forColumns(dim, n, (c0, c1) -> {
            for (int i = 0; i < n; i++) {
                int so = i * dim;
                int d = rows[i] * dim;
                if (scale == null) {
                    for (int c = c0; c < c1; c++) {
                        dst[d + c] += src[so + c];
                    }
                } else {
                    float s = scale[i];
                    for (int c = c0; c < c1; c++) {
                        dst[d + c] += s * src[so + c];
                    }
                }
            }
        });
    }

    // ---------------------------------------------------------------------------------------------
    // loss

    double crossEntropy(float[] logits, int[] targets, float[] dLogits, int rows, int vocab) {
        for (int r = 0; r < rows; r++) {
            checkIndex(targets[r], vocab, "target");
        }
        double[] losses = new double[rows];
        double invRows = 1.0 / rows;
        forRange(rows, 4L * vocab, (from, to) -> {
            for (int r = from; r < to; r++) {
                int o = r * vocab;
                float max = Float.NEGATIVE_INFINITY;
                int j = 0;
                if (vectorApi && vocab >= F.length()) {
                    FloatVector m = FloatVector.broadcast(F, Float.NEGATIVE_INFINITY);
                    for (int bound = F.loopBound(vocab); j < bound; j += F.length()) {
                        m = m.max(FloatVector.fromArray(F, logits, o + j));
                    }
                    max = m.reduceLanes(VectorOperators.MAX);
                }
                for (; j < vocab; j++) {
                    max = Math.max(max, logits[o + j]);
                }
                double sum = 0;
                j = 0;
                if (vectorApi) {
                    for (int bound = F.loopBound(vocab); j < bound; j += F.length()) {
                        FloatVector e = exp(FloatVector.fromArray(F, logits, o + j).sub(max));
                        sum += sumLanes(e);
                        if (dLogits != null) {
                            e.intoArray(dLogits, o + j);
                        }
                    }
                }
                for (; j < vocab; j++) {
                    double e = Math.exp((double) logits[o + j] - max);
                    sum += e;
                    if (dLogits != null) {
                        dLogits[o + j] = (float) e;
                    }
                }
                double lse = max + Math.log(sum);
                int target = targets[r];
                losses[r] = lse - logits[o + target];
                if (dLogits != null) {
                    float f = (float) (invRows / sum);
                    j = 0;
                    if (vectorApi) {
                        for (int bound = F.loopBound(vocab); j < bound; j += F.length()) {
                            FloatVector.fromArray(F, dLogits, o + j).mul(f).intoArray(dLogits, o + j);
                        }
                    }
                    for (; j < vocab; j++) {
                        dLogits[o + j] *= f;
                    }
                    // The target's entry from the exact softmax, so that softmax - 1 does not cancel on a rounded value.
                    dLogits[o + target] = (float) ((Math.exp(logits[o + target] - lse) - 1.0) * invRows);
                }
            }
        });
        double total = 0;
        for (double l : losses) {
            total += l;
        }
        return rows == 0 ? 0 : total / rows;
    }

    // ---------------------------------------------------------------------------------------------
    // deterministic vector primitives
    //
    // The Vector API's reduceLanes(ADD) sums in an unspecified order and its EXP is a library call
    // in compiled code but Math.exp lane by lane in the interpreter, so either can change bits as the
    // JIT warms up, and then differ between threads. These use only lane-wise IEEE arithmetic, which
    // every tier computes alike.

    /** Rotations by 32, 16, ... 1 lanes (those shorter than the vector): adding each in turn leaves the total in lane 0. */
    private static final VectorShuffle<Float> FOLD32 = fold(32);
    private static final VectorShuffle<Float> FOLD16 = fold(16);
    private static final VectorShuffle<Float> FOLD8 = fold(8);
    private static final VectorShuffle<Float> FOLD4 = fold(4);
    private static final VectorShuffle<Float> FOLD2 = fold(2);
    private static final VectorShuffle<Float> FOLD1 = fold(1);

    private static VectorShuffle<Float> fold(int half) {
        return VectorShuffle.fromOp(F, i -> (i + half) % F.length());
    }

    /** The sum of the lanes, in a fixed tree order (unrolled: a loop would box the vector). */
    static float sumLanes(FloatVector v) {
        int n = F.length();
        if (n > 32) {
            v = v.add(v.rearrange(FOLD32));
        }
        if (n > 16) {
            v = v.add(v.rearrange(FOLD16));
        }
        if (n > 8) {
            v = v.add(v.rearrange(FOLD8));
        }
        if (n > 4) {
            v = v.add(v.rearrange(FOLD4));
        }
        if (n > 2) {
            v = v.add(v.rearrange(FOLD2));
        }
        if (n > 1) {
            v = v.add(v.rearrange(FOLD1));
        }
        return v.lane(0);
    }

    private static final float LOG2E = 1.44269504088896341f;
    private static final float LN2_HI = 0.693359375f;
    private static final float LN2_LO = -2.12194440e-4f;
    /** 1.5 · 2^23: adding and subtracting it rounds a float of magnitude below 2^22 to an integer. */
    private static final float ROUND = 12582912f;

    /**
     * {@code e^x} lane-wise to about 2 ulp (Cephes' expf polynomial), with underflow to 0, overflow to
     * infinity and NaN kept. The scale {@code 2^n} is applied in two halves so that results near the
     * ends of the float range (subnormal or near max) come out right.
     */
    static FloatVector exp(FloatVector x) {
        FloatVector xc = x.max(-104f).min(89f);
        FloatVector n = xc.fma(LOG2E, ROUND).sub(ROUND);
        FloatVector r = n.fma(FloatVector.broadcast(F, -LN2_HI), xc);
        r = n.fma(FloatVector.broadcast(F, -LN2_LO), r);
        FloatVector p = r.fma(1.9875691500e-4f, 1.3981999507e-3f);
        p = p.fma(r, FloatVector.broadcast(F, 8.3334519073e-3f));
        p = p.fma(r, FloatVector.broadcast(F, 4.1665795894e-2f));
        p = p.fma(r, FloatVector.broadcast(F, 1.6666665459e-1f));
        p = p.fma(r, FloatVector.broadcast(F, 5.0000001201e-1f));
        p = p.mul(r.mul(r)).add(r).add(1f);
        IntVector ni = (IntVector) n.convert(VectorOperators.F2I, 0);
        IntVector n1 = ni.lanewise(VectorOperators.ASHR, 1);
        IntVector n2 = ni.sub(n1);
        FloatVector s1 = n1.add(127).lanewise(VectorOperators.LSHL, 23).reinterpretAsFloats();
        FloatVector s2 = n2.add(127).lanewise(VectorOperators.LSHL, 23).reinterpretAsFloats();
        FloatVector e = p.mul(s1).mul(s2);
        // x beyond the clamp: 0 below, infinity above; NaN passes through the clamp and the polynomial.
        e = e.blend(0f, x.compare(VectorOperators.LT, -104f));
        return e.blend(Float.POSITIVE_INFINITY, x.compare(VectorOperators.GT, 89f));
    }

    // ---------------------------------------------------------------------------------------------
    // reductions

    private static double sumSquaresScalar(float[] x, int o, int n) {
        double s = 0;
        for (int j = 0; j < n; j++) {
            double v = x[o + j];
            s += v * v;
        }
        return s;
    }

    private static double sumSquaresVector(float[] x, int o, int n) {
        FloatVector acc = FloatVector.zero(F);
        int j = 0;
        for (int bound = F.loopBound(n); j < bound; j += F.length()) {
            FloatVector v = FloatVector.fromArray(F, x, o + j);
            acc = v.fma(v, acc);
        }
        double s = sumLanes(acc);
        for (; j < n; j++) {
            double v = x[o + j];
            s += v * v;
        }
        return s;
    }

    private static double sumScalar(float[] x, int o, int n) {
        double s = 0;
        for (int j = 0; j < n; j++) {
            s += x[o + j];
        }
        return s;
    }

    private static double sumVector(float[] x, int o, int n) {
        FloatVector acc = FloatVector.zero(F);
        int j = 0;
        for (int bound = F.loopBound(n); j < bound; j += F.length()) {
            acc = acc.add(FloatVector.fromArray(F, x, o + j));
        }
        double s = sumLanes(acc);
        for (; j < n; j++) {
            s += x[o + j];
        }
        return s;
    }

    private static double sumSquaredDeviationScalar(float[] x, int o, int n, float mu) {
        double s = 0;
        for (int j = 0; j < n; j++) {
            double v = x[o + j] - (double) mu;
            s += v * v;
        }
        return s;
    }

    private static double sumSquaredDeviationVector(float[] x, int o, int n, float mu) {
        FloatVector acc = FloatVector.zero(F);
        int j = 0;
        for (int bound = F.loopBound(n); j < bound; j += F.length()) {
            FloatVector v = FloatVector.fromArray(F, x, o + j).sub(mu);
            acc = v.fma(v, acc);
        }
        double s = sumLanes(acc);
        for (; j < n; j++) {
            double v = x[o + j] - (double) mu;
            s += v * v;
        }
        return s;
    }

    /** {@code Σ a·b·c}. */
    private static double dot3Scalar(float[] a, int ao, float[] b, int bo, float[] c, int co, int n) {
        double s = 0;
        for (int j = 0; j < n; j++) {
            s += (double) a[ao + j] * b[bo + j] * c[co + j];
        }
        return s;
    }

    private static double dot3Vector(float[] a, int ao, float[] b, int bo, float[] c, int co, int n) {
        FloatVector acc = FloatVector.zero(F);
        int j = 0;
        for (int bound = F.loopBound(n); j < bound; j += F.length()) {
            FloatVector ab = FloatVector.fromArray(F, a, ao + j).mul(FloatVector.fromArray(F, b, bo + j));
            acc = ab.fma(FloatVector.fromArray(F, c, co + j), acc);
        }
        double s = sumLanes(acc);
        for (; j < n; j++) {
            s += (double) a[ao + j] * b[bo + j] * c[co + j];
        }
        return s;
    }

    private static int checkIndex(int index, int size, String what) {
        if (index < 0 || index >= size) {
            throw new IndexOutOfBoundsException(what + " " + index + " out of range [0, " + size + ")");
        }
        return index;
    }
}
