package dev.moe.runtime.cpu;

import java.util.Arrays;
import java.util.Objects;
import jdk.incubator.vector.FloatVector;
import jdk.incubator.vector.VectorSpecies;

/**
 * The CPU backend's linear algebra: dense and grouped (per-expert) matmuls and their backward
 * passes, with the contracts of {@link dev.moe.runtime.Backend}. Row-major fp32 throughout:
 * {@code y[rows, out] = x[rows, in] · w[out, in]ᵀ}; the backward passes ACCUMULATE into {@code dx}
 * (skipped when null) and {@code dw}; offsets are array offsets.
 *
 * <h2>Two paths</h2>
 *
 * <p>The scalar reference path ({@code vectorApi == false}) is plain loops. The fast path is a small
 * GEMM in the BLIS style on {@link FloatVector} ({@link FloatVector#SPECIES_PREFERRED}). Each product
 * is written {@code C[m][n] (+)= Σ_k A[m][k] · B[k][n]}:
 *
 * <ul>
 *   <li>forward: A = x (k = in), B = wᵀ, C = y;
 *   <li>dx: A = dy (k = out), B = w, C = dx;
 *   <li>dw: A = dyᵀ (k = rows), B = x, C = dw.
 * </ul>
 *
 * <p>B is packed into panels NR = {@code NR_VECTORS} vectors wide, {@code [k][NR]} contiguous and
 * zero-padded past the last column, so that the inner loop does only full-width loads at a fixed
 * stride (packing also avoids the cache-set conflicts of power-of-two row strides). The micro-kernel
 * computes an MR = {@value #MR} rows × NR tile with {@code MR · NR_VECTORS} accumulators in registers:
 * per k it loads NR_VECTORS vectors of B, broadcasts MR values of A (any strides: A is read in place,
 * which also serves dyᵀ) and issues {@code MR · NR_VECTORS} FMAs, so every load feeds several FMAs.
 * NR_VECTORS is 4 where vectors are 512 bits (AVX-512 has 32 registers: 16 accumulators + 4 + 1) and
 * 3 otherwise (AVX2's 16 registers: 12 + 3 + 1). The k loop is blocked by KC so that the KC × NR
 * slice of a panel swept by consecutive tiles stays in L1 (24 KiB), the rows by {@value #MC}. A partial
 * last panel goes through a small staging tile, so no kernel ever needs masked loads or stores.
 *
 * <h2>Determinism</h2>
 *
 * <p>Every output element of the fast path is one chain of fused multiply-adds over k in increasing
 * order, starting from 0 (forward) or from the element's old value (backward, which accumulates):
 * {@code c = fma(a[k], b[k], c)}, exactly what a scalar {@link Math#fma} loop gives. Blocking only
 * stores the fp32 partial into C and reloads it, which is exact, and the tails (fewer rows, partial
 * panels) run the same chain, so an element's value depends neither on where tiles or thread chunks
 * fall nor on the vector width. Work is only ever split over independent output elements, never over
 * k: results are bitwise identical for any thread count, and a grouped matmul is bitwise the same as
 * a loop of dense ones. The scalar path has the same properties with its own (unfused) order.
 *
 * <h2>Threads</h2>
 *
 * <p>Work is spread through {@link Parallel}. The forward and dx split all experts' rows together (in
 * MR-row units, so experts of any size balance) when there are at least as many rows as output
 * columns, else the output column panels; each thread packs the weight panels it needs just before
 * use. dw, whose k is the rows, splits whole experts over the threads (balanced by rows) when there
 * are many experts, else its own rows ({@code out}) or column panels ({@code in}). Calls smaller than
 * about {@value #MIN_PARALLEL_WORK} multiply-adds per thread stay on the calling thread.
 */
final class CpuLinear {
    private static final VectorSpecies<Float> S = FloatVector.SPECIES_PREFERRED;
    private static final int V = S.length();
    /** Rows of the micro-kernel. */
    private static final int MR = 4;
    /** Vectors per panel, the columns of the micro-kernel: 4 with 32 vector registers, else 3. */
    private static final int NR_VECTORS = V >= 16 ? 4 : 3;
    /** Panel width in floats. */
    private static final int NR = NR_VECTORS * V;
    /** k block: the KC × NR slice of a panel that consecutive tiles sweep is 24 KiB, to stay in L1. */
    private static final int KC = Math.max(32, 24 * 1024 / Float.BYTES / NR);
    /** Row block: rows swept per k block, so their A values are re-read from L2 for every panel. */
    private static final int MC = 128;
    /** Multiply-adds (about 10 µs of work) below which a chunk is not worth handing to another thread. */
    private static final long MIN_PARALLEL_WORK = 1L << 20;
    /** Packing buffers up to this many floats (64 MiB) are kept for reuse by each thread. */
    private static final int MAX_RETAINED_SCRATCH = 16 << 20;
    private static final float[] NONE = new float[0];

    private final Parallel parallel;
    private final boolean vectorApi;
    private final long minParallelWork;
    /**
     * Each thread's packing buffer (the caller's and the pool workers'), grown on demand. It is taken
     * out while in use ({@link #acquire}, {@link #release}), so that a nested or re-entrant call on
     * the same thread (a worker helping with other tasks while it waits) gets a buffer of its own.
     */
    private final ThreadLocal<float[]> scratch = ThreadLocal.withInitial(() -> NONE);

    CpuLinear(int threads, boolean vectorApi) {
        this(threads, vectorApi, MIN_PARALLEL_WORK);
    }

    /**
     * For tests: {@code minParallelWork} multiply-adds is the least work handed to another thread
     * (1 splits every call, however small). Results do not depend on it.
     */
    CpuLinear(int threads, boolean vectorApi, long minParallelWork) {
        this.parallel = new Parallel(threads);
        this.vectorApi = vectorApi;
        this.minParallelWork = Math.max(1, minParallelWork);
    }

    // ------------------------------------------------------------------------------------------
    // Public entry points (the Backend contracts)
    // ------------------------------------------------------------------------------------------

    /** {@code y[rows, out] = x[rows, in] · w[out, in]ᵀ}. */
    void matmul(float[] x, int xOff, float[] w, int wOff, float[] y, int yOff, int rows, int in, int out) {
        checkDims(rows, in, out);
        Objects.checkFromIndexSize(xOff, size(rows, in), x.length);
        Objects.checkFromIndexSize(wOff, size(out, in), w.length);
        Objects.checkFromIndexSize(yOff, size(rows, out), y.length);
        int[] offsets = {0, rows};
        if (vectorApi) {
            forwardVector(x, xOff, w, wOff, y, yOff, offsets, 1, in, out);
        } else {
            forwardScalar(x, xOff, w, wOff, y, yOff, offsets, 1, in, out);
        }
    }

    /** {@code dx[rows, in] += dy · w} (skipped when dx is null); {@code dw[out, in] += dyᵀ · x}. */
    void matmulBackward(float[] x, int xOff, float[] w, int wOff, float[] dy, int dyOff, float[] dx, int dxOff, float[] dw, int dwOff,
            int rows, int in, int out) {
        checkDims(rows, in, out);
        Objects.checkFromIndexSize(xOff, size(rows, in), x.length);
        Objects.checkFromIndexSize(wOff, size(out, in), w.length);
        Objects.checkFromIndexSize(dyOff, size(rows, out), dy.length);
        Objects.checkFromIndexSize(dwOff, size(out, in), dw.length);
        if (dx != null) {
            Objects.checkFromIndexSize(dxOff, size(rows, in), dx.length);
        }
        int[] offsets = {0, rows};
        if (vectorApi) {
            if (dx != null) {
                dxVector(w, wOff, dy, dyOff, dx, dxOff, offsets, 1, in, out);
            }
            dwVector(x, xOff, dy, dyOff, dw, dwOff, offsets, 1, in, out);
        } else {
            if (dx != null) {
                dxScalar(w, wOff, dy, dyOff, dx, dxOff, offsets, 1, in, out);
            }
            dwScalar(x, xOff, dy, dyOff, dw, dwOff, offsets, 1, in, out);
        }
    }

    /** For each expert e: rows {@code offsets[e] .. offsets[e+1]} of y = those rows of x · {@code w[e]ᵀ}. */
    void groupedMatmul(float[] x, float[] w, int wOff, float[] y, int[] offsets, int experts, int in, int out) {
        checkGrouped(offsets, experts, in, out);
        int r0 = offsets[0];
        int n = offsets[experts] - r0;
        Objects.checkFromIndexSize(size(r0, in), size(n, in), x.length);
        Objects.checkFromIndexSize(size(r0, out), size(n, out), y.length);
        Objects.checkFromIndexSize(wOff, size(experts, size(out, in)), w.length);
        if (vectorApi) {
            forwardVector(x, 0, w, wOff, y, 0, offsets, experts, in, out);
        } else {
            forwardScalar(x, 0, w, wOff, y, 0, offsets, experts, in, out);
        }
    }

    /** Backward of {@link #groupedMatmul}: {@code dx += dy · w[e]} (when dx is not null), {@code dw[e] += dyᵀ · x}. */
    void groupedMatmulBackward(float[] x, float[] w, int wOff, float[] dy, float[] dx, float[] dw, int dwOff, int[] offsets, int experts,
            int in, int out) {
        checkGrouped(offsets, experts, in, out);
        int r0 = offsets[0];
        int n = offsets[experts] - r0;
        Objects.checkFromIndexSize(size(r0, in), size(n, in), x.length);
        Objects.checkFromIndexSize(size(r0, out), size(n, out), dy.length);
        Objects.checkFromIndexSize(wOff, size(experts, size(out, in)), w.length);
        Objects.checkFromIndexSize(dwOff, size(experts, size(out, in)), dw.length);
        if (dx != null) {
            Objects.checkFromIndexSize(size(r0, in), size(n, in), dx.length);
        }
        if (vectorApi) {
            if (dx != null) {
                dxVector(w, wOff, dy, 0, dx, 0, offsets, experts, in, out);
            }
            dwVector(x, 0, dy, 0, dw, dwOff, offsets, experts, in, out);
        } else {
            if (dx != null) {
                dxScalar(w, wOff, dy, 0, dx, 0, offsets, experts, in, out);
            }
            dwScalar(x, 0, dy, 0, dw, dwOff, offsets, experts, in, out);
        }
    }

    /** {@code a * b}, or an exception where that overflows an int (no array could be that big). */
    private static int size(int a, int b) {
        return Math.multiplyExact(a, b);
    }

    private static void checkDims(int rows, int in, int out) {
        if (rows < 0 || in < 0 || out < 0) {
            throw new IllegalArgumentException("negative shape: rows=" + rows + " in=" + in + " out=" + out);
        }
    }

    private static void checkGrouped(int[] offsets, int experts, int in, int out) {
        checkDims(experts, in, out);
        if (offsets.length < experts + 1) {
            throw new IllegalArgumentException("offsets has " + offsets.length + " entries, need experts + 1 = " + (experts + 1));
        }
        if (offsets[0] < 0) {
            throw new IllegalArgumentException("offsets[0] < 0: " + offsets[0]);
        }
        for (int e = 0; e < experts; e++) {
            if (offsets[e + 1] < offsets[e]) {
                throw new IllegalArgumentException("offsets decrease at expert " + e + ": " + offsets[e] + " > " + offsets[e + 1]);
            }
        }
    }

    /** Chunk size (in units of {@code unitWork} multiply-adds) below which work stays on one thread. */
    private int grain(long unitWork) {
        return (int) Math.max(1, Math.min(Integer.MAX_VALUE, minParallelWork / Math.max(1, unitWork)));
    }

    /** This thread's packing buffer, at least {@code size} floats, lent out until {@link #release}. */
    private float[] acquire(int size) {
        float[] s = scratch.get();
        if (s.length < size) {
            s = new float[size > MAX_RETAINED_SCRATCH ? size : Math.min(MAX_RETAINED_SCRATCH, Math.max(size, s.length + s.length / 2))];
        }
        scratch.set(NONE);
        return s;
    }

    /** Gives a buffer from {@link #acquire} back to this thread (unless it is too big to keep). */
    private void release(float[] s) {
        if (s.length <= MAX_RETAINED_SCRATCH && s.length > scratch.get().length) {
            scratch.set(s);
        }
    }

    // ------------------------------------------------------------------------------------------
    // Scalar reference path
    // ------------------------------------------------------------------------------------------

    /** Rows {@code offsets[0] .. offsets[experts]}; row r of x/y at {@code xOff + r*in} / {@code yOff + r*out}. */
    private void forwardScalar(float[] x, int xOff, float[] w, int wOff, float[] y, int yOff, int[] offsets, int experts, int in,
            int out) {
        int first = offsets[0];
        int n = offsets[experts] - first;
        parallel.forRange(n, grain((long) in * out), (from, to) -> {
            int e = 0;
            for (int r = first + from; r < first + to; r++) {
                while (offsets[e + 1] <= r) {
                    e++;
                }
                int xr = xOff + r * in;
                int we = wOff + e * out * in;
                for (int o = 0; o < out; o++) {
                    int wo = we + o * in;
                    float s = 0f;
                    for (int i = 0; i < in; i++) {
                        s += x[xr + i] * w[wo + i];
                    }
                    y[yOff + r * out + o] = s;
                }
            }
        });
    }

    private void dxScalar(float[] w, int wOff, float[] dy, int dyOff, float[] dx, int dxOff, int[] offsets, int experts, int in,
            int out) {
        int first = offsets[0];
        int n = offsets[experts] - first;
        parallel.forRange(n, grain((long) in * out), (from, to) -> {
            int e = 0;
            for (int r = first + from; r < first + to; r++) {
                while (offsets[e + 1] <= r) {
                    e++;
                }
                int dxr = dxOff + r * in;
                int we = wOff + e * out * in;
                for (int o = 0; o < out; o++) {
                    float d = dy[dyOff + r * out + o];
                    int wo = we + o * in;
                    for (int i = 0; i < in; i++) {
                        dx[dxr + i] += d * w[wo + i];
                    }
                }
            }
        });
    }

    private void dwScalar(float[] x, int xOff, float[] dy, int dyOff, float[] dw, int dwOff, int[] offsets, int experts, int in,
            int out) {
        long work = (long) (offsets[experts] - offsets[0]) * in;
        parallel.forRange(out, grain(work), (from, to) -> {
            for (int e = 0; e < experts; e++) {
                int dwe = dwOff + e * out * in;
                for (int o = from; o < to; o++) {
                    int dwo = dwe + o * in;
                    for (int r = offsets[e]; r < offsets[e + 1]; r++) {
                        float d = dy[dyOff + r * out + o];
                        int xr = xOff + r * in;
                        for (int i = 0; i < in; i++) {
                            dw[dwo + i] += d * x[xr + i];
                        }
                    }
                }
            }
        });
    }

    // ------------------------------------------------------------------------------------------
    // Vector path: the three products
    // ------------------------------------------------------------------------------------------

    private static int panels(int n) {
        return (n + NR - 1) / NR;
    }

    /** The experts that have rows, in order. */
    private static int[] activeExperts(int[] offsets, int experts) {
        int count = 0;
        for (int e = 0; e < experts; e++) {
            if (offsets[e + 1] > offsets[e]) {
                count++;
            }
        }
        int[] active = new int[count];
        count = 0;
        for (int e = 0; e < experts; e++) {
            if (offsets[e + 1] > offsets[e]) {
                active[count++] = e;
            }
        }
        return active;
    }

    private void forwardVector(float[] x, int xOff, float[] w, int wOff, float[] y, int yOff, int[] offsets, int experts, int in,
            int out) {
        if (in == 0) {
            Arrays.fill(y, yOff + offsets[0] * out, yOff + offsets[experts] * out, 0f);
            return;
        }
        // A = x (k = i), B = w_eᵀ: B[k = i][j = o] = w_e[o][i].
        rowsTimesWeights(x, xOff, in, w, wOff, true, y, yOff, out, offsets, experts, false);
    }

    private void dxVector(float[] w, int wOff, float[] dy, int dyOff, float[] dx, int dxOff, int[] offsets, int experts, int in,
            int out) {
        // A = dy (k = o), B = w_e: B[k = o][j = i] = w_e[o][i].
        rowsTimesWeights(dy, dyOff, out, w, wOff, false, dx, dxOff, in, offsets, experts, true);
    }

    /**
     * For each expert e and row r in {@code offsets[e] .. offsets[e+1]}: {@code C[r][n] (+)= Σ_k A[r][k] ·
     * B_e[k][n]}, with A and C row-major ({@code a[aOff + r*K + k]}, {@code c[cOff + r*N + n]}) and
     * expert e's weight {@code w[wOff + e*K*N ...]} either {@code [N][K]} ({@code transposed}: B_e =
     * wᵀ, the forward) or {@code [K][N]} (B_e = w, dx).
     *
     * <p>Split over all experts' rows together (in MR-row units) when there are at least N of them,
     * else over the column panels. Each thread packs the panels it needs of each expert it visits,
     * just before using them, into its own buffer, so that they are still in cache (an expert whose
     * rows straddle a chunk boundary is packed by both threads).
     */
    private void rowsTimesWeights(float[] a, int aOff, int K, float[] w, int wOff, boolean transposed, float[] c, int cOff, int N,
            int[] offsets, int experts, boolean accumulate) {
        int first = offsets[0];
        int n = offsets[experts] - first;
        if (n == 0 || N == 0 || K == 0) {
            return;
        }
        int np = panels(N);
        int panelSize = K * NR;
        int lastPanel = (np - 1) * panelSize;
        if (n >= N) {
            int units = (n + MR - 1) / MR;
            parallel.forRange(units, grain((long) MR * K * N), (from, to) -> {
                float[] bp = acquire(np * panelSize);
                int g0 = first + from * MR;
                int g1 = Math.min(first + to * MR, offsets[experts]);
                for (int e = 0; e < experts; e++) {
                    int r0 = Math.max(g0, offsets[e]);
                    int r1 = Math.min(g1, offsets[e + 1]);
                    if (r0 < r1) {
                        int we = wOff + e * K * N;
                        for (int p = 0; p < np; p++) {
                            pack(w, we, K, N, transposed, p, bp, p * panelSize);
                        }
                        gemm(a, aOff, K, 1, bp, 0, NR, panelSize, bp, lastPanel, K, c, cOff, N, N, r0, r1, 0, np, accumulate);
                    }
                }
                release(bp);
            });
        } else {
            int[] active = activeExperts(offsets, experts);
            parallel.forRange(np, grain((long) n * K * NR), (p0, p1) -> {
                // This thread's panels p0 .. p1 sit at (p - p0) * panelSize, so B's panel p at -p0 * panelSize + p * panelSize.
                float[] bp = acquire((p1 - p0) * panelSize);
                int base = -p0 * panelSize;
                for (int e : active) {
                    int we = wOff + e * K * N;
                    for (int p = p0; p < p1; p++) {
                        pack(w, we, K, N, transposed, p, bp, (p - p0) * panelSize);
                    }
                    gemm(a, aOff, K, 1, bp, base, NR, panelSize, bp, base + lastPanel, K, c, cOff, N, N, offsets[e], offsets[e + 1], p0, p1,
                            accumulate);
                }
                release(bp);
            });
        }
    }

    /** Packs panel p of B = w ({@code [K][N]}) or B = wᵀ ({@code w} is {@code [N][K]}, transposed) at {@code dst[d]}. */
    private static void pack(float[] w, int base, int K, int N, boolean transposed, int p, float[] dst, int d) {
        if (transposed) {
            packTransposed(w, base, K, N, p * NR, dst, d, K);
        } else {
            packRows(w, base, N, K, N, p * NR, dst, d);
        }
    }

    private void dwVector(float[] x, int xOff, float[] dy, int dyOff, float[] dw, int dwOff, int[] offsets, int experts, int in,
            int out) {
        int first = offsets[0];
        int n = offsets[experts] - first;
        if (n == 0 || out == 0 || in == 0) {
            return;
        }
        int[] active = activeExperts(offsets, experts);
        int np = panels(in);
        int threads = parallel.threads();
        if (active.length >= 4 * threads) {
            // Many experts: each thread takes whole experts (a contiguous run, balanced by row count)
            // and packs each one's x just before using it, while it is still in cache.
            int parts = Math.min(threads, (int) Math.max(1, (long) n * in * out / minParallelWork));
            int maxRows = 0;
            for (int e : active) {
                maxRows = Math.max(maxRows, offsets[e + 1] - offsets[e]);
            }
            int bufferSize = maxRows * np * NR;
            parallel.forRange(parts, (t0, t1) -> {
                float[] bp = acquire(bufferSize);
                for (int s = 0; s < active.length; s++) {
                    int e = active[s];
                    // Expert e belongs to the part its middle row falls in.
                    long middle = 2L * (offsets[e] - first) + (offsets[e + 1] - offsets[e]);
                    int part = (int) (middle * parts / (2L * n));
                    if (part < t0 || part >= t1) {
                        continue;
                    }
                    int rows = offsets[e + 1] - offsets[e];
                    for (int p = 0; p < np; p++) {
                        packRows(x, xOff + offsets[e] * in, in, rows, in, p * NR, bp, p * rows * NR);
                    }
                    dwExpert(dy, dyOff, dw, dwOff, offsets, e, offsets[e], np, bp, in, out, 0, out, 0, np);
                }
                release(bp);
            });
            return;
        }
        // Few experts (or one, the dense case): pack x once, then split dw's rows (out) or column
        // panels (in), every thread walking every expert.
        // Pack x: B[k = r][j = i]; expert e's panel p at (offsets[e] - first)*np*NR + p*rows_e*NR + k*NR + j.
        float[] bp = acquire(n * np * NR);
        parallel.forRange(active.length * np, grain((long) (n / active.length) * NR), (from, to) -> {
            for (int u = from; u < to; u++) {
                int e = active[u / np];
                int p = u % np;
                int rows = offsets[e + 1] - offsets[e];
                packRows(x, xOff + offsets[e] * in, in, rows, in, p * NR, bp, (offsets[e] - first) * np * NR + p * rows * NR);
            }
        });
        if (out >= in) {
            int units = (out + MR - 1) / MR;
            parallel.forRange(units, grain((long) MR * n * in), (from, to) -> {
                int o0 = from * MR;
                int o1 = Math.min(to * MR, out);
                for (int e : active) {
                    dwExpert(dy, dyOff, dw, dwOff, offsets, e, first, np, bp, in, out, o0, o1, 0, np);
                }
            });
        } else {
            parallel.forRange(np, grain((long) n * out * NR), (p0, p1) -> {
                for (int e : active) {
                    dwExpert(dy, dyOff, dw, dwOff, offsets, e, first, np, bp, in, out, 0, out, p0, p1);
                }
            });
        }
        release(bp);
    }

    /**
     * dw[e] rows o0 .. o1, panels p0 .. p1, from expert e's x packed in bp at {@code (offsets[e] -
     * first) * np * NR} (panel p then at {@code + p * rows * NR}). A = dyᵀ: {@code A[m = o][k = r] =
     * dy[dyOff + (offsets[e] + r)*out + o]}, so ams = 1, aks = out.
     */
    private static void dwExpert(float[] dy, int dyOff, float[] dw, int dwOff, int[] offsets, int e, int first, int np, float[] bp, int in,
            int out, int o0, int o1, int p0, int p1) {
        int rows = offsets[e + 1] - offsets[e];
        int b = (offsets[e] - first) * np * NR;
        gemm(dy, dyOff + offsets[e] * out, 1, out, bp, b, NR, rows * NR, bp, b + (np - 1) * rows * NR, rows, dw, dwOff + e * out * in, in, in,
                o0, o1, p0, p1, true);
    }

    // ------------------------------------------------------------------------------------------
    // Packing
    // ------------------------------------------------------------------------------------------

    /**
     * Packs columns {@code j0 .. j0+NR} of {@code B[k][j] = src[base + j*ld + k]} (B is the transpose
     * of a row-major {@code [n][ld]} matrix; k < kLen) into {@code dst[d + k*NR + jj]}, zero-padding
     * columns at or past n.
     */
    private static void packTransposed(float[] src, int base, int kLen, int n, int j0, float[] dst, int d, int ld) {
        int nb = Math.min(NR, n - j0);
        int s0 = base + j0 * ld;
        for (int k = 0; k < kLen; k++) {
            int t = d + k * NR;
            int s = s0 + k;
            for (int jj = 0; jj < nb; jj++) {
                dst[t + jj] = src[s + jj * ld];
            }
            for (int jj = nb; jj < NR; jj++) {
                dst[t + jj] = 0f;
            }
        }
    }

    /**
     * Packs columns {@code j0 .. j0+NR} of the row-major {@code B[k][j] = src[base + k*ld + j]} (k <
     * kLen, j < n) into {@code dst[d + k*NR + jj]}, zero-padding columns at or past n.
     */
    private static void packRows(float[] src, int base, int ld, int kLen, int n, int j0, float[] dst, int d) {
        int nb = Math.min(NR, n - j0);
        for (int k = 0; k < kLen; k++) {
            int s = base + k * ld + j0;
            int t = d + k * NR;
            System.arraycopy(src, s, dst, t, nb);
            if (nb < NR) {
                Arrays.fill(dst, t + nb, t + NR, 0f);
            }
        }
    }

    // ------------------------------------------------------------------------------------------
    // The blocked GEMM and its micro-kernels
    // ------------------------------------------------------------------------------------------

    /**
     * {@code C[m][n] (+)= Σ_{k < K} A[m][k] · B[k][n]} for rows {@code m0 .. m1} and the NR-wide column
     * panels {@code p0 .. p1}, overwriting C when not accumulating. K must be positive.
     *
     * <ul>
     *   <li>{@code A[m][k] = a[aOff + m*ams + k*aks]};
     *   <li>a full panel p is read in place: {@code B[k][p*NR + j] = b[bOff + p*pStride + k*ldb + j]}
     *       (a packed B has {@code ldb = NR, pStride = K*NR}; a row-major one {@code ldb = N, pStride
     *       = NR});
     *   <li>the last panel, when N is not a multiple of NR, comes packed and zero-padded: {@code
     *       B[k][p*NR + j] = tb[tOff + k*NR + j]} (and its C columns go through a staging tile);
     *   <li>{@code C[m][n] = c[cOff + m*ldc + n]}, n < N.
     * </ul>
     */
    private static void gemm(float[] a, int aOff, int ams, int aks, float[] b, int bOff, int ldb, int pStride, float[] tb, int tOff, int K,
            float[] c, int cOff, int ldc, int N, int m0, int m1, int p0, int p1, boolean accumulate) {
        float[] staging = null; // MR × NR tile for a partial last panel, so that kernels never mask
        for (int mb = m0; mb < m1; mb += MC) {
            int me = Math.min(mb + MC, m1);
            for (int kb = 0; kb < K; kb += KC) {
                int ke = Math.min(kb + KC, K);
                boolean load = accumulate || kb > 0;
                for (int p = p0; p < p1; p++) {
                    int n0 = p * NR;
                    int nv = Math.min(NR, N - n0);
                    if (nv == NR) {
                        int bp = bOff + p * pStride;
                        int m = mb;
                        for (; m + MR <= me; m += MR) {
                            tile(a, aOff + m * ams, ams, aks, b, bp, ldb, kb, ke, c, cOff + m * ldc + n0, ldc, load);
                        }
                        for (; m < me; m++) {
                            row(a, aOff + m * ams, aks, b, bp, ldb, kb, ke, c, cOff + m * ldc + n0, load);
                        }
                        continue;
                    }
                    if (staging == null) {
                        staging = new float[MR * NR];
                    }
                    int m = mb;
                    for (; m + MR <= me; m += MR) {
                        if (load) {
                            for (int r = 0; r < MR; r++) {
                                System.arraycopy(c, cOff + (m + r) * ldc + n0, staging, r * NR, nv);
                            }
                        }
                        tile(a, aOff + m * ams, ams, aks, tb, tOff, NR, kb, ke, staging, 0, NR, load);
                        for (int r = 0; r < MR; r++) {
                            System.arraycopy(staging, r * NR, c, cOff + (m + r) * ldc + n0, nv);
                        }
                    }
                    for (; m < me; m++) {
                        if (load) {
                            System.arraycopy(c, cOff + m * ldc + n0, staging, 0, nv);
                        }
                        row(a, aOff + m * ams, aks, tb, tOff, NR, kb, ke, staging, 0, load);
                        System.arraycopy(staging, 0, c, cOff + m * ldc + n0, nv);
                    }
                }
            }
        }
    }

    private static FloatVector load(float[] c, int i, boolean load) {
        return load ? FloatVector.fromArray(S, c, i) : FloatVector.zero(S);
    }

    /**
     * The MR × NR tile at {@code c[c0 ..]} (row stride ldc) (+)= Σ_{k in kb..ke} A[row][k] · B[k][..]:
     * A's rows at {@code a[a0 + r*ams + k*aks]}, B's at {@code b[b0 + k*ldb ..]}; starts from the
     * tile's values when {@code load}, else from 0.
     */
    private static void tile(float[] a, int a0, int ams, int aks, float[] b, int b0, int ldb, int kb, int ke, float[] c, int c0, int ldc,
            boolean load) {
        if (NR_VECTORS == 4) {
            kernel4x4(a, a0, ams, aks, b, b0, ldb, kb, ke, c, c0, ldc, load);
        } else {
            kernel4x3(a, a0, ams, aks, b, b0, ldb, kb, ke, c, c0, ldc, load);
        }
    }

    /** One row of {@link #tile}. */
    private static void row(float[] a, int a0, int aks, float[] b, int b0, int ldb, int kb, int ke, float[] c, int c0, boolean load) {
        if (NR_VECTORS == 4) {
            kernel1x4(a, a0, aks, b, b0, ldb, kb, ke, c, c0, load);
        } else {
            kernel1x3(a, a0, aks, b, b0, ldb, kb, ke, c, c0, load);
        }
    }

    /** 4 rows × 3 vectors: 12 accumulators. */
    private static void kernel4x3(float[] a, int a0, int ams, int aks, float[] b, int b0, int ldb, int kb, int ke, float[] c, int c0,
            int ldc, boolean load) {
        int a1 = a0 + ams;
        int a2 = a1 + ams;
        int a3 = a2 + ams;
        int c1 = c0 + ldc;
        int c2 = c1 + ldc;
        int c3 = c2 + ldc;
        FloatVector acc00 = load(c, c0, load);
        FloatVector acc01 = load(c, c0 + V, load);
        FloatVector acc02 = load(c, c0 + 2 * V, load);
        FloatVector acc10 = load(c, c1, load);
        FloatVector acc11 = load(c, c1 + V, load);
        FloatVector acc12 = load(c, c1 + 2 * V, load);
        FloatVector acc20 = load(c, c2, load);
        FloatVector acc21 = load(c, c2 + V, load);
        FloatVector acc22 = load(c, c2 + 2 * V, load);
        FloatVector acc30 = load(c, c3, load);
        FloatVector acc31 = load(c, c3 + V, load);
        FloatVector acc32 = load(c, c3 + 2 * V, load);
        for (int k = kb; k < ke; k++) {
            int bk = b0 + k * ldb;
            FloatVector bv0 = FloatVector.fromArray(S, b, bk);
            FloatVector bv1 = FloatVector.fromArray(S, b, bk + V);
            FloatVector bv2 = FloatVector.fromArray(S, b, bk + 2 * V);
            int ak = k * aks;
            FloatVector va = FloatVector.broadcast(S, a[a0 + ak]);
            acc00 = bv0.fma(va, acc00);
            acc01 = bv1.fma(va, acc01);
            acc02 = bv2.fma(va, acc02);
            va = FloatVector.broadcast(S, a[a1 + ak]);
            acc10 = bv0.fma(va, acc10);
            acc11 = bv1.fma(va, acc11);
            acc12 = bv2.fma(va, acc12);
            va = FloatVector.broadcast(S, a[a2 + ak]);
            acc20 = bv0.fma(va, acc20);
            acc21 = bv1.fma(va, acc21);
            acc22 = bv2.fma(va, acc22);
            va = FloatVector.broadcast(S, a[a3 + ak]);
            acc30 = bv0.fma(va, acc30);
            acc31 = bv1.fma(va, acc31);
            acc32 = bv2.fma(va, acc32);
        }
        acc00.intoArray(c, c0);
        acc01.intoArray(c, c0 + V);
        acc02.intoArray(c, c0 + 2 * V);
        acc10.intoArray(c, c1);
        acc11.intoArray(c, c1 + V);
        acc12.intoArray(c, c1 + 2 * V);
        acc20.intoArray(c, c2);
        acc21.intoArray(c, c2 + V);
        acc22.intoArray(c, c2 + 2 * V);
        acc30.intoArray(c, c3);
        acc31.intoArray(c, c3 + V);
        acc32.intoArray(c, c3 + 2 * V);
    }

    /** 4 rows × 4 vectors: 16 accumulators. */
    private static void kernel4x4(float[] a, int a0, int ams, int aks, float[] b, int b0, int ldb, int kb, int ke, float[] c, int c0,
            int ldc, boolean load) {
        int a1 = a0 + ams;
        int a2 = a1 + ams;
        int a3 = a2 + ams;
        int c1 = c0 + ldc;
        int c2 = c1 + ldc;
        int c3 = c2 + ldc;
        FloatVector acc00 = load(c, c0, load);
        FloatVector acc01 = load(c, c0 + V, load);
        FloatVector acc02 = load(c, c0 + 2 * V, load);
        FloatVector acc03 = load(c, c0 + 3 * V, load);
        FloatVector acc10 = load(c, c1, load);
        FloatVector acc11 = load(c, c1 + V, load);
        FloatVector acc12 = load(c, c1 + 2 * V, load);
        FloatVector acc13 = load(c, c1 + 3 * V, load);
        FloatVector acc20 = load(c, c2, load);
        FloatVector acc21 = load(c, c2 + V, load);
        FloatVector acc22 = load(c, c2 + 2 * V, load);
        FloatVector acc23 = load(c, c2 + 3 * V, load);
        FloatVector acc30 = load(c, c3, load);
        FloatVector acc31 = load(c, c3 + V, load);
        FloatVector acc32 = load(c, c3 + 2 * V, load);
        FloatVector acc33 = load(c, c3 + 3 * V, load);
        for (int k = kb; k < ke; k++) {
            int bk = b0 + k * ldb;
            FloatVector bv0 = FloatVector.fromArray(S, b, bk);
            FloatVector bv1 = FloatVector.fromArray(S, b, bk + V);
            FloatVector bv2 = FloatVector.fromArray(S, b, bk + 2 * V);
            FloatVector bv3 = FloatVector.fromArray(S, b, bk + 3 * V);
            int ak = k * aks;
            FloatVector va = FloatVector.broadcast(S, a[a0 + ak]);
            acc00 = bv0.fma(va, acc00);
            acc01 = bv1.fma(va, acc01);
            acc02 = bv2.fma(va, acc02);
            acc03 = bv3.fma(va, acc03);
            va = FloatVector.broadcast(S, a[a1 + ak]);
            acc10 = bv0.fma(va, acc10);
            acc11 = bv1.fma(va, acc11);
            acc12 = bv2.fma(va, acc12);
            acc13 = bv3.fma(va, acc13);
            va = FloatVector.broadcast(S, a[a2 + ak]);
            acc20 = bv0.fma(va, acc20);
            acc21 = bv1.fma(va, acc21);
            acc22 = bv2.fma(va, acc22);
            acc23 = bv3.fma(va, acc23);
            va = FloatVector.broadcast(S, a[a3 + ak]);
            acc30 = bv0.fma(va, acc30);
            acc31 = bv1.fma(va, acc31);
            acc32 = bv2.fma(va, acc32);
            acc33 = bv3.fma(va, acc33);
        }
        acc00.intoArray(c, c0);
        acc01.intoArray(c, c0 + V);
        acc02.intoArray(c, c0 + 2 * V);
        acc03.intoArray(c, c0 + 3 * V);
        acc10.intoArray(c, c1);
        acc11.intoArray(c, c1 + V);
        acc12.intoArray(c, c1 + 2 * V);
        acc13.intoArray(c, c1 + 3 * V);
        acc20.intoArray(c, c2);
        acc21.intoArray(c, c2 + V);
        acc22.intoArray(c, c2 + 2 * V);
        acc23.intoArray(c, c2 + 3 * V);
        acc30.intoArray(c, c3);
        acc31.intoArray(c, c3 + V);
        acc32.intoArray(c, c3 + 2 * V);
        acc33.intoArray(c, c3 + 3 * V);
    }

    /** One row × 3 vectors: the row tail, with exactly the per-element chain of the tile kernel. */
    private static void kernel1x3(float[] a, int a0, int aks, float[] b, int b0, int ldb, int kb, int ke, float[] c, int c0, boolean load) {
        FloatVector acc0 = load(c, c0, load);
        FloatVector acc1 = load(c, c0 + V, load);
        FloatVector acc2 = load(c, c0 + 2 * V, load);
        for (int k = kb; k < ke; k++) {
            int bk = b0 + k * ldb;
            FloatVector va = FloatVector.broadcast(S, a[a0 + k * aks]);
            acc0 = FloatVector.fromArray(S, b, bk).fma(va, acc0);
            acc1 = FloatVector.fromArray(S, b, bk + V).fma(va, acc1);
            acc2 = FloatVector.fromArray(S, b, bk + 2 * V).fma(va, acc2);
        }
        acc0.intoArray(c, c0);
        acc1.intoArray(c, c0 + V);
        acc2.intoArray(c, c0 + 2 * V);
    }

    /** One row × 4 vectors: the row tail, with exactly the per-element chain of the tile kernel. */
    private static void kernel1x4(float[] a, int a0, int aks, float[] b, int b0, int ldb, int kb, int ke, float[] c, int c0, boolean load) {
        FloatVector acc0 = load(c, c0, load);
        FloatVector acc1 = load(c, c0 + V, load);
        FloatVector acc2 = load(c, c0 + 2 * V, load);
        FloatVector acc3 = load(c, c0 + 3 * V, load);
        for (int k = kb; k < ke; k++) {
            int bk = b0 + k * ldb;
            FloatVector va = FloatVector.broadcast(S, a[a0 + k * aks]);
            acc0 = FloatVector.fromArray(S, b, bk).fma(va, acc0);
            acc1 = FloatVector.fromArray(S, b, bk + V).fma(va, acc1);
            acc2 = FloatVector.fromArray(S, b, bk + 2 * V).fma(va, acc2);
            acc3 = FloatVector.fromArray(S, b, bk + 3 * V).fma(va, acc3);
        }
        acc0.intoArray(c, c0);
        acc1.intoArray(c, c0 + V);
        acc2.intoArray(c, c0 + 2 * V);
        acc3.intoArray(c, c0 + 3 * V);
    }

}
