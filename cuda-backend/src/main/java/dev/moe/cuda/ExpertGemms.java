package dev.moe.cuda;

import dev.moe.cuda.CublasLt.Type;
import dev.moe.cuda.kernels.MoeKernelSource;
import dev.moe.cuda.kernels.MoeKernelSource.Precision;
import dev.moe.cuda.kernels.MoeKernelSource.Spec;
import java.lang.foreign.MemorySegment;
import java.util.function.Consumer;

/**
 * The FFN experts of a MoE layer as cuBLASLt GEMMs over rows grouped by expert: {@code offsets[i]} to {@code offsets[i + 1]} are
 * the rows of the i-th expert of the weights given ({@code w13 [n, GW, DIN]}, {@code w2 [n, D, F]}). {@link CudaMoeLayer} runs
 * it over all its experts; an expert-parallel stage over the experts its rank holds, on the rows it received.
 */
public final class ExpertGemms {
    private static final int THREADS = 256;

    private final CudaContext ctx;
    private final String source;
    private final Type act, gradType;
    private final int actBytes, gw, in, d, f;

    /** For {@code spec}'s experts; weight gradients in {@code gradType} (fp32, or the activation type). */
    public ExpertGemms(CudaContext ctx, Spec spec, String source, Type gradType) {
        this.ctx = ctx;
        this.source = source;
        this.act = spec.precision() == Precision.BF16 ? Type.BF16 : Type.F32;
        this.gradType = gradType;
        this.actBytes = act.bytes;
        this.gw = spec.options().activation().gated ? 2 * spec.hidden() : spec.hidden();
        this.in = spec.expertIn();
        this.d = spec.dim();
        this.f = spec.hidden();
        ctx.kernel(source, "expert_act");
        ctx.kernel(source, "expert_act_backward");
    }

    /** The kernels of {@code spec} (the activation's): for a stage that has no layer of its own. */
    public ExpertGemms(CudaContext ctx, Spec spec, Type gradType) {
        this(ctx, spec, MoeKernelSource.generate(spec), gradType);
    }

    /** The rows of w13 per expert: 2F gated, F ungated. */
    public int gateUpRows() {
        return gw;
    }

    /**
     * {@code y = down(act(gateUp(h)))} for the {@code offsets.length - 1} experts, keeping {@code g [rows, GW]} and {@code a [rows, F]}
     * for the backward; {@code mark} hears the end of each phase (gate/up, activation, down).
     */
    public void forward(int[] offsets, long w13, long w2, long h, long g, long a, long y, Consumer<String> mark) {
        int experts = offsets.length - 1;
        forward(offsets, strided(w13, experts, (long) gw * in * actBytes), strided(w2, experts, (long) d * f * actBytes), h, g, a, y, mark);
    }

    /**
     * {@link #forward(int[], long, long, long, long, long, long, Consumer)} with each expert's weights where they lie: expert i's
     * at {@code w13[i]} and {@code w2[i]} (an expert-parallel stage's experts in a buffer that holds every expert, in any order).
     */
    public void forward(int[] offsets, long[] w13, long[] w2, long h, long g, long a, long y, Consumer<String> mark) {
        int experts = offsets.length - 1;
        checkExperts(experts, w13, w2);
        for (int ex = 0; ex < experts; ex++) {
            int r0 = offsets[ex], rows = offsets[ex + 1] - r0;
            if (rows == 0) {
                continue;
            }
            // g_e[rows, GW] = h_e · w13_eᵀ
            ctx.blas.matmul(ctx.stream, true, false, gw, rows, in, w13[ex], act, in,
                    h + (long) r0 * in * actBytes, act, in, g + (long) r0 * gw * actBytes, act, gw, false);
        }
        mark.accept("gemm gate/up");
        long n = (long) offsets[experts] * f;
        launch("expert_act", elementwiseGrid(n), g, a, n);
        mark.accept("activation");
        for (int ex = 0; ex < experts; ex++) {
            int r0 = offsets[ex], rows = offsets[ex + 1] - r0;
            if (rows == 0) {
                continue;
            }
            // y_e[rows, D] = a_e · w2_eᵀ
            ctx.blas.matmul(ctx.stream, true, false, d, rows, f, w2[ex], act, f,
                    a + (long) r0 * f * actBytes, act, f, y + (long) r0 * d * actBytes, act, d, false);
        }
        mark.accept("gemm down");
    }

    /**
     * The backward of {@link #forward} for {@code dy}: {@code dh}, and the weight gradients {@code dW13}, {@code dW2}, added to
     * with {@code accumulate}, else overwritten (an expert without rows gets zeros). {@code da [rows, F]} and {@code dg [rows, GW]}
     * are scratch.
     */
    public void backward(int[] offsets, long w13, long w2, long dW13, long dW2, boolean accumulate, long h, long g, long a, long dy, long da,
            long dg, long dh) {
        int experts = offsets.length - 1;
        long w13Bytes = (long) gw * in, w2Bytes = (long) d * f;
        backward(offsets, strided(w13, experts, w13Bytes * actBytes), strided(w2, experts, w2Bytes * actBytes), strided(dW13, experts,
                w13Bytes * gradType.bytes), strided(dW2, experts, w2Bytes * gradType.bytes), accumulate, h, g, a, dy, da, dg, dh);
    }

    /** {@link #backward(int[], long, long, long, long, boolean, long, long, long, long, long, long, long)} with each expert's weights and gradients where they lie. */
    public void backward(int[] offsets, long[] w13, long[] w2, long[] dW13, long[] dW2, boolean accumulate, long h, long g, long a, long dy,
            long da, long dg, long dh) {
        int experts = offsets.length - 1;
        checkExperts(experts, w13, w2);
        checkExperts(experts, dW13, dW2);
        int gb = gradType.bytes;
        for (int ex = 0; ex < experts; ex++) {
            int r0 = offsets[ex], rows = offsets[ex + 1] - r0;
            long w2e = w2[ex];
            if (rows == 0) {
                if (!accumulate) {
                    ctx.driver.memsetZero(dW2[ex], (long) d * f * gb, ctx.stream);
                }
                continue;
            }
            // da_e[rows, F] = dy_e · w2_e
            ctx.blas.matmul(ctx.stream, false, false, f, rows, d, w2e, act, f, dy + (long) r0 * d * actBytes, act, d,
                    da + (long) r0 * f * actBytes, act, f, false);
            // dw2_e[D, F] = dy_eᵀ · a_e
            ctx.blas.matmul(ctx.stream, false, true, f, d, rows, a + (long) r0 * f * actBytes, act, f, dy + (long) r0 * d * actBytes, act,
                    d, dW2[ex], gradType, f, accumulate);
        }
        long n = (long) offsets[experts] * f;
        launch("expert_act_backward", elementwiseGrid(n), g, da, dg, n);
        for (int ex = 0; ex < experts; ex++) {
            int r0 = offsets[ex], rows = offsets[ex + 1] - r0;
            long w13e = w13[ex];
            if (rows == 0) {
                if (!accumulate) {
                    ctx.driver.memsetZero(dW13[ex], (long) gw * in * gb, ctx.stream);
                }
                continue;
            }
            // dh_e[rows, DIN] = dg_e · w13_e
            ctx.blas.matmul(ctx.stream, false, false, in, rows, gw, w13e, act, in, dg + (long) r0 * gw * actBytes, act, gw,
                    dh + (long) r0 * in * actBytes, act, in, false);
            // dw13_e[GW, DIN] = dg_eᵀ · h_e
            ctx.blas.matmul(ctx.stream, false, true, in, gw, rows, h + (long) r0 * in * actBytes, act, in, dg + (long) r0 * gw * actBytes,
                    act, gw, dW13[ex], gradType, in, accumulate);
        }
    }

    /** Expert i's pointer {@code base + i · bytes}: the experts one after another, as a layer holds them. */
    public static long[] strided(long base, int experts, long bytes) {
        long[] out = new long[experts];
        for (int ex = 0; ex < experts; ex++) {
            out[ex] = base + ex * bytes;
        }
        return out;
    }

    private static void checkExperts(int experts, long[] a, long[] b) {
        if (a.length != experts || b.length != experts) {
            throw new IllegalArgumentException("pointers for " + a.length + " and " + b.length + " experts, offsets for " + experts);
        }
    }

    private void launch(String kernel, int grid, Object... args) {
        MemorySegment fn = ctx.kernel(source, kernel);
        ctx.launch(fn, kernel, grid, 1, THREADS, 0, args);
    }

    private int elementwiseGrid(long n) {
        return (int) Math.min(CudaMoeLayer.ceilDiv(n, THREADS), (long) ctx.multiprocessors * 16);
    }
}
