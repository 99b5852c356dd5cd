package dev.moe.cuda;

import dev.moe.cuda.CublasLt.Type;
import dev.moe.cuda.kernels.GemmAttentionKernelSource;

/**
 * Grouped-query attention as strided-batched cuBLASLt GEMMs, so its products run on the tensor
 * cores (TF32 on fp32 storage, or bf16) instead of the CUDA cores of the tiled kernels: scores
 * {@code S = (Q/√hd)·Kᵀ} are materialised per (sequence, key/value head) with the query heads of a
 * group stacked as one {@code [g·S, hd]} matrix, a kernel applies the causal/window mask and the
 * softmax, and {@code O = P·V}. The backward recomputes the scores from the saved log-sum-exp and
 * runs five more GEMMs ({@code dV = Pᵀ·dO}, {@code dP = dO·Vᵀ}, {@code dQ = dS·K}, {@code dK =
 * dSᵀ·Q}); the key/value gradients of a group's heads are summed by the GEMM itself.
 *
 * <p>A causal product computes the masked half too: on the tensor cores that is still several
 * times faster than the tiled kernels on the CUDA cores, at the cost of {@code g·S²} scores per
 * group in memory; sequences are processed in chunks that keep the scores under {@link
 * #SCORE_BUDGET_BYTES}. Same contract as {@link DeviceOps#attention}: token-major fp32 q, k, v,
 * out; gradients accumulate. The log-sum-exp layout differs from the tiled kernels' (head-major
 * rows): a backward must use the path its forward used.
 */
public final class GemmAttention {
    /** What the GEMMs read: fp32 (TF32 products when the context's cuBLASLt has them on) or bf16. */
    public enum Storage {
        F32(Type.F32), BF16(Type.BF16);

        final Type type;

        Storage(Type type) {
            this.type = type;
        }
    }

    static final long SCORE_BUDGET_BYTES = 4L << 30;
    private static final int THREADS = 256;
    /** Threads of the softmax kernels' one block per score row (each thread takes every 128th four-column group). */
    private static final int ROW_THREADS = 128;
    private final CudaContext ctx;
    private final Storage storage;
    private final String source;
    private final long scoreBudget;

    public GemmAttention(CudaContext ctx, Storage storage) {
        this(ctx, storage, SCORE_BUDGET_BYTES);
    }

    /** With a budget for one chunk's scores other than {@link #SCORE_BUDGET_BYTES} (tests force several chunks with a small one). */
    GemmAttention(CudaContext ctx, Storage storage, long scoreBudgetBytes) {
        this.ctx = ctx;
        this.storage = storage;
        this.scoreBudget = scoreBudgetBytes;
        this.source = GemmAttentionKernelSource.generate(storage == Storage.BF16);
    }

    private int grid(long n) {
        return (int) Math.max(1, Math.min((n + THREADS - 1) / THREADS, (long) ctx.multiprocessors * 16));
    }

    private void launch(String kernel, int grid, int block, Object... args) {
        ctx.launch(ctx.kernel(source, kernel), kernel, grid, 1, block, 0, args);
    }

    /** Sequences per chunk so that its scores (fp32) and probabilities (elem) fit the budget. */
    static int chunk(int batch, int seq, int heads, int elemBytes, long budget) {
        long perSequence = (long) heads * seq * seq * (4 + elemBytes);
        return (int) Math.max(1, Math.min(batch, budget / perSequence));
    }

    /**
     * Row-major {@code C[M,N] (+)= op(X)·op(Y)} over {@code batch} products: X is {@code [M,K]}, or
     * {@code [K,M]} when {@code xT}; Y is {@code [K,N]}, or {@code [N,K]} when {@code yT}. cuBLASLt is
     * column-major, so this is its {@code Cᵀ = op(Y)ᵀ·op(X)ᵀ}.
     */
    private void rowMajor(boolean xT, boolean yT, int m, int n, int k, long x, Type tx, long sx, long y, Type ty, long sy, long c, long sc,
            int batch, boolean accumulate) {
        ctx.blas.matmulBatched(ctx.stream, yT, xT, n, m, k, y, ty, yT ? k : n, sy, x, tx, xT ? m : k, sx, c, Type.F32, n, sc, batch,
                accumulate);
    }

    public void forward(long q, long k, long v, long out, long lse, int batch, int seq, int heads, int kvHeads, int hd, boolean causal,
            int window) {
        int e = storage.type.bytes;
        int cb = chunk(batch, seq, heads, e, scoreBudget);
        int g = heads / kvHeads;
        long rowsG = (long) g * seq;
        float scale = (float) (1.0 / Math.sqrt(hd));
        try (DeviceAllocator.Block qh = ctx.allocator.allocate((long) cb * heads * seq * hd * e);
                DeviceAllocator.Block kh = ctx.allocator.allocate((long) cb * kvHeads * seq * hd * e);
                DeviceAllocator.Block vh = ctx.allocator.allocate((long) cb * kvHeads * seq * hd * e);
                DeviceAllocator.Block oh = ctx.allocator.allocate((long) cb * heads * seq * hd * 4);
                DeviceAllocator.Block s = ctx.allocator.allocate((long) cb * heads * seq * seq * 4);
                DeviceAllocator.Block p = ctx.allocator.allocate((long) cb * heads * seq * seq * e);
                // without a log-sum-exp to keep (inference), a scratch one per chunk
                DeviceAllocator.Block scratchLse = lse == 0 ? ctx.allocator.allocate((long) cb * heads * seq * 4) : null) {
            for (int b0 = 0; b0 < batch; b0 += cb) {
                int nb = Math.min(cb, batch - b0);
                long tok = (long) b0 * seq;
                long chunkLse = lse == 0 ? scratchLse.pointer : lse + tok * heads * 4;
                pack(q + tok * heads * hd * 4, qh.pointer, nb, seq, heads, hd, scale);
                pack(k + tok * kvHeads * hd * 4, kh.pointer, nb, seq, kvHeads, hd, 1f);
                pack(v + tok * kvHeads * hd * 4, vh.pointer, nb, seq, kvHeads, hd, 1f);
                int groups = nb * kvHeads;
                // S[g·S, S] = Qs·Kᵀ per (sequence, key/value head)
                rowMajor(false, true, (int) rowsG, seq, hd, qh.pointer, storage.type, rowsG * hd, kh.pointer, storage.type, (long) seq * hd,
                        s.pointer, rowsG * seq, groups, false);
                long rows = (long) nb * heads * seq;
                launch("softmax_rows", (int) rows, ROW_THREADS, s.pointer, p.pointer, chunkLse, seq, causal ? 1 : 0, window);
                // O[g·S, hd] = P·V
                rowMajor(false, false, (int) rowsG, hd, seq, p.pointer, storage.type, rowsG * seq, vh.pointer, storage.type, (long) seq * hd,
                        oh.pointer, rowsG * hd, groups, false);
                unpack(oh.pointer, out + tok * heads * hd * 4, nb, seq, heads, hd, 1f, false);
            }
        }
    }

    /** Accumulates dq, dk, dv. */
    public void backward(long q, long k, long v, long out, long lse, long dOut, long dq, long dk, long dv, int batch, int seq, int heads,
            int kvHeads, int hd, boolean causal, int window) {
        int e = storage.type.bytes;
        int cb = chunk(batch, seq, heads, e, scoreBudget);
        int g = heads / kvHeads;
        long rowsG = (long) g * seq;
        float scale = (float) (1.0 / Math.sqrt(hd));
        try (DeviceAllocator.Block qh = ctx.allocator.allocate((long) cb * heads * seq * hd * e);
                DeviceAllocator.Block kh = ctx.allocator.allocate((long) cb * kvHeads * seq * hd * e);
                DeviceAllocator.Block vh = ctx.allocator.allocate((long) cb * kvHeads * seq * hd * e);
                DeviceAllocator.Block doh = ctx.allocator.allocate((long) cb * heads * seq * hd * e);
                DeviceAllocator.Block gh = ctx.allocator.allocate((long) cb * heads * seq * hd * 4);
                DeviceAllocator.Block delta = ctx.allocator.allocate((long) cb * heads * seq * 4);
                DeviceAllocator.Block s = ctx.allocator.allocate((long) cb * heads * seq * seq * 4);
                DeviceAllocator.Block p = ctx.allocator.allocate((long) cb * heads * seq * seq * e)) {
            for (int b0 = 0; b0 < batch; b0 += cb) {
                int nb = Math.min(cb, batch - b0);
                long tok = (long) b0 * seq;
                long qOff = tok * heads * hd * 4, kvOff = tok * kvHeads * hd * 4;
                pack(q + qOff, qh.pointer, nb, seq, heads, hd, scale);
                pack(k + kvOff, kh.pointer, nb, seq, kvHeads, hd, 1f);
                pack(v + kvOff, vh.pointer, nb, seq, kvHeads, hd, 1f);
                pack(dOut + qOff, doh.pointer, nb, seq, heads, hd, 1f);
                long rows = (long) nb * heads * seq;
                launch("row_dot", (int) ((rows * 32 + THREADS - 1) / THREADS), THREADS, dOut + qOff, out + qOff, delta.pointer, nb, seq, heads,
                        hd);
                int groups = nb * kvHeads;
                long sStride = rowsG * seq, qStride = rowsG * hd, kvStride = (long) seq * hd;
                Type t = storage.type;
                rowMajor(false, true, (int) rowsG, seq, hd, qh.pointer, t, qStride, kh.pointer, t, kvStride, s.pointer, sStride, groups, false);
                launch("softmax_recompute", (int) rows, ROW_THREADS, s.pointer, p.pointer, lse + tok * heads * 4, seq, causal ? 1 : 0, window);
                // dV[S, hd] = Pᵀ·dO (summed over the group's query heads)
                rowMajor(true, false, seq, hd, (int) rowsG, p.pointer, t, sStride, doh.pointer, t, qStride, gh.pointer, kvStride, groups, false);
                unpack(gh.pointer, dv + kvOff, nb, seq, kvHeads, hd, 1f, true);
                // dP[g·S, S] = dO·Vᵀ, then dS = P ⊙ (dP − delta) in place of P
                rowMajor(false, true, (int) rowsG, seq, hd, doh.pointer, t, qStride, vh.pointer, t, kvStride, s.pointer, sStride, groups, false);
                launch("softmax_backward", (int) rows, ROW_THREADS, s.pointer, p.pointer, delta.pointer, seq, causal ? 1 : 0);
                // dQ = scale·dS·K (Q was packed scaled, so dS is the gradient of the scaled scores)
                rowMajor(false, false, (int) rowsG, hd, seq, p.pointer, t, sStride, kh.pointer, t, kvStride, gh.pointer, qStride, groups, false);
                unpack(gh.pointer, dq + qOff, nb, seq, heads, hd, scale, true);
                // dK[S, hd] = dSᵀ·Qs
                rowMajor(true, false, seq, hd, (int) rowsG, p.pointer, t, sStride, qh.pointer, t, qStride, gh.pointer, kvStride, groups, false);
                unpack(gh.pointer, dk + kvOff, nb, seq, kvHeads, hd, 1f, true);
            }
        }
    }

    private void pack(long x, long out, int batch, int seq, int heads, int hd, float mul) {
        launch("pack_heads", grid((long) batch * seq * heads * hd), THREADS, x, out, batch, seq, heads, hd, mul);
    }

    private void unpack(long in, long x, int batch, int seq, int heads, int hd, float mul, boolean accumulate) {
        launch("unpack_heads", grid((long) batch * seq * heads * hd), THREADS, in, x, batch, seq, heads, hd, mul, accumulate ? 1 : 0);
    }
}
