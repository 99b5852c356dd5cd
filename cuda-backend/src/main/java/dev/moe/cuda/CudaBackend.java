package dev.moe.cuda;

import dev.moe.cuda.CublasLt.Type;
import dev.moe.runtime.Activation;
import dev.moe.runtime.Backend;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;

/**
 * The GPU backend for the generated models as they are today: the matrix products (dense and
 * grouped by expert, forward and backward, which are nearly all of a model's FLOPs) run on the GPU
 * with cuBLASLt in fp32, and every other op runs on the CPU backend it wraps.
 *
 * <p>The generated code keeps its tensors in Java arrays, so each product copies its operands to
 * the device and its result back, through one pinned staging buffer. That is correct and it trains
 * every recipe, but for small models the copies cost more than the GPU saves; device-resident
 * generated code (with {@link CudaMoeLayer}'s kernels) is the next step and is what the layer
 * benchmark measures.
 */
public final class CudaBackend implements Backend, AutoCloseable {
    private final CudaContext ctx;
    private final Backend cpu;
    private final boolean ownsContext;
    private MemorySegment staging = MemorySegment.NULL;
    private long stagingBytes;
    private DeviceAllocator.Block a, b, c;
    private Thread boundThread;

    /** Opens GPU {@code ordinal}; other ops run on {@code cpu}. */
    public CudaBackend(int ordinal, Backend cpu) {
        this(new CudaContext(ordinal), cpu, true);
    }

    public CudaBackend(CudaContext ctx, Backend cpu, boolean ownsContext) {
        this.ctx = ctx;
        this.cpu = cpu;
        this.ownsContext = ownsContext;
    }

    public CudaContext context() {
        return ctx;
    }

    /** The backend of the ops that do not run on the GPU (and of the host copies of device-resident models). */
    public Backend cpu() {
        return cpu;
    }

    private boolean deviceModels = true;

    /** Whether models that can run device-resident should (true by default); false keeps every model on this hybrid backend. */
    public boolean deviceModels() {
        return deviceModels;
    }

    /** Keeps every model on the hybrid path (matrix products on the GPU, the rest on the CPU). */
    public CudaBackend hybridOnly() {
        deviceModels = false;
        return this;
    }

    /** The context must be current on the thread that launches; the model may be driven from any one thread. */
    private void bind() {
        if (boundThread != Thread.currentThread()) {
            ctx.makeCurrent();
            boundThread = Thread.currentThread();
        }
    }

    private MemorySegment staging(long bytes) {
        if (bytes > stagingBytes) {
            if (!staging.equals(MemorySegment.NULL)) {
                ctx.driver.freeHost(staging);
            }
            stagingBytes = Math.max(bytes, stagingBytes * 2);
            staging = ctx.driver.hostAlloc(stagingBytes);
        }
        return staging;
    }

    private static DeviceAllocator.Block ensure(CudaContext ctx, DeviceAllocator.Block block, long bytes) {
        if (block != null && block.bytes >= bytes) {
            return block;
        }
        if (block != null) {
            block.close();
        }
        return ctx.allocator.allocate(Math.max(bytes, 4));
    }

    private void upload(float[] src, int off, int n, long dst) {
        if (n == 0) {
            return;
        }
        MemorySegment host = staging((long) n * 4);
        MemorySegment.copy(src, off, host, ValueLayout.JAVA_FLOAT, 0, n);
        ctx.driver.copyToDevice(dst, host, (long) n * 4, ctx.stream);
        ctx.synchronize(); // the staging buffer is reused by the next copy
    }

    /** Copies {@code n} floats back; {@code accumulate} adds them to {@code dst} instead of overwriting. */
    private void download(long src, float[] dst, int off, int n, boolean accumulate) {
        if (n == 0) {
            return;
        }
        MemorySegment host = staging((long) n * 4);
        ctx.driver.copyToHost(host, src, (long) n * 4, ctx.stream);
        ctx.synchronize();
        if (accumulate) {
            for (int i = 0; i < n; i++) {
                dst[off + i] += host.getAtIndex(ValueLayout.JAVA_FLOAT, i);
            }
        } else {
            MemorySegment.copy(host, ValueLayout.JAVA_FLOAT, 0, dst, off, n);
        }
    }

    @Override
    public void matmul(float[] x, int xOff, float[] w, int wOff, float[] y, int yOff, int rows, int in, int out) {
        if (rows == 0 || out == 0) {
            return;
        }
        bind();
        a = ensure(ctx, a, (long) rows * in * 4);
        b = ensure(ctx, b, (long) out * in * 4);
        c = ensure(ctx, c, (long) rows * out * 4);
        upload(x, xOff, rows * in, a.pointer);
        upload(w, wOff, out * in, b.pointer);
        // y[rows, out] = x · wᵀ, i.e. column-major yᶜ = wᶜᵀ · xᶜ
        ctx.blas.matmul(ctx.stream, true, false, out, rows, in, b.pointer, Type.F32, in, a.pointer, Type.F32, in, c.pointer, Type.F32, out,
                false);
        download(c.pointer, y, yOff, rows * out, false);
    }

    @Override
    public void matmulBackward(float[] x, int xOff, float[] w, int wOff, float[] dy, int dyOff, float[] dx, int dxOff, float[] dw, int dwOff,
            int rows, int in, int out) {
        if (rows == 0 || out == 0) {
            return;
        }
        bind();
        DeviceAllocator.Block dyd = ctx.allocator.allocate((long) rows * out * 4);
        try (dyd) {
            upload(dy, dyOff, rows * out, dyd.pointer);
            if (dx != null) {
                b = ensure(ctx, b, (long) out * in * 4);
                c = ensure(ctx, c, (long) rows * in * 4);
                upload(w, wOff, out * in, b.pointer);
                // dx[rows, in] += dy · w: column-major dxᶜ = wᶜ · dyᶜ
                ctx.blas.matmul(ctx.stream, false, false, in, rows, out, b.pointer, Type.F32, in, dyd.pointer, Type.F32, out, c.pointer,
                        Type.F32, in, false);
                download(c.pointer, dx, dxOff, rows * in, true);
            }
            if (dw != null) {
                a = ensure(ctx, a, (long) rows * in * 4);
                c = ensure(ctx, c, (long) out * in * 4);
                upload(x, xOff, rows * in, a.pointer);
                // dw[out, in] += dyᵀ · x: column-major dwᶜ = xᶜ · dyᶜᵀ
                ctx.blas.matmul(ctx.stream, false, true, in, out, rows, a.pointer, Type.F32, in, dyd.pointer, Type.F32, out, c.pointer,
                        Type.F32, in, false);
                download(c.pointer, dw, dwOff, out * in, true);
            }
        }
    }

    @Override
    public void groupedMatmul(float[] x, float[] w, int wOff, float[] y, int[] offsets, int experts, int in, int out) {
        int rows = offsets[experts];
        if (rows == 0 || out == 0) {
            return;
        }
        bind();
        a = ensure(ctx, a, (long) rows * in * 4);
        b = ensure(ctx, b, (long) experts * out * in * 4);
        c = ensure(ctx, c, (long) rows * out * 4);
        upload(x, 0, rows * in, a.pointer);
        upload(w, wOff, experts * out * in, b.pointer);
        for (int e = 0; e < experts; e++) {
            int r0 = offsets[e], n = offsets[e + 1] - r0;
            ctx.blas.matmul(ctx.stream, true, false, out, n, in, b.pointer + (long) e * out * in * 4, Type.F32, in, a.pointer + (long) r0 * in * 4,
                    Type.F32, in, c.pointer + (long) r0 * out * 4, Type.F32, out, false);
        }
        download(c.pointer, y, 0, rows * out, false);
    }

    @Override
    public void groupedMatmulBackward(float[] x, float[] w, int wOff, float[] dy, float[] dx, float[] dw, int dwOff, int[] offsets, int experts,
            int in, int out) {
        int rows = offsets[experts];
        if (rows == 0 || out == 0) {
            return;
        }
        bind();
        DeviceAllocator.Block dyd = ctx.allocator.allocate((long) rows * out * 4);
        try (dyd) {
            upload(dy, 0, rows * out, dyd.pointer);
            if (dx != null) {
                b = ensure(ctx, b, (long) experts * out * in * 4);
                c = ensure(ctx, c, (long) rows * in * 4);
                upload(w, wOff, experts * out * in, b.pointer);
                for (int e = 0; e < experts; e++) {
                    int r0 = offsets[e], n = offsets[e + 1] - r0;
                    ctx.blas.matmul(ctx.stream, false, false, in, n, out, b.pointer + (long) e * out * in * 4, Type.F32, in,
                            dyd.pointer + (long) r0 * out * 4, Type.F32, out, c.pointer + (long) r0 * in * 4, Type.F32, in, false);
                }
                download(c.pointer, dx, 0, rows * in, true);
            }
            if (dw != null) {
                a = ensure(ctx, a, (long) rows * in * 4);
                c = ensure(ctx, c, (long) experts * out * in * 4);
                upload(x, 0, rows * in, a.pointer);
                ctx.driver.memsetZero(c.pointer, (long) experts * out * in * 4, ctx.stream); // experts with no rows add nothing
                for (int e = 0; e < experts; e++) {
                    int r0 = offsets[e], n = offsets[e + 1] - r0;
                    if (n == 0) {
                        continue;
                    }
                    ctx.blas.matmul(ctx.stream, false, true, in, out, n, a.pointer + (long) r0 * in * 4, Type.F32, in,
                            dyd.pointer + (long) r0 * out * 4, Type.F32, out, c.pointer + (long) e * out * in * 4, Type.F32, in, false);
                }
                download(c.pointer, dw, dwOff, experts * out * in, true);
            }
        }
    }

    // ---- everything else runs on the CPU ----

    @Override
    public void embedding(int[] tokens, float[] table, float[] out, int tokensCount, int dim) {
        cpu.embedding(tokens, table, out, tokensCount, dim);
    }

    @Override
    public void embeddingBackward(int[] tokens, float[] dOut, float[] dTable, int tokensCount, int dim) {
        cpu.embeddingBackward(tokens, dOut, dTable, tokensCount, dim);
    }

    @Override
    public void rmsNorm(float[] x, float[] w, float[] y, float[] rstd, int rows, int dim, float eps) {
        cpu.rmsNorm(x, w, y, rstd, rows, dim, eps);
    }

    @Override
    public void rmsNormBackward(float[] x, float[] w, float[] rstd, float[] dy, float[] dx, float[] dw, int rows, int dim) {
        cpu.rmsNormBackward(x, w, rstd, dy, dx, dw, rows, dim);
    }

    @Override
    public void layerNorm(float[] x, float[] w, float[] bias, float[] y, float[] mean, float[] rstd, int rows, int dim, float eps) {
        cpu.layerNorm(x, w, bias, y, mean, rstd, rows, dim, eps);
    }

    @Override
    public void layerNormBackward(float[] x, float[] w, float[] mean, float[] rstd, float[] dy, float[] dx, float[] dw, float[] db, int rows,
            int dim) {
        cpu.layerNormBackward(x, w, mean, rstd, dy, dx, dw, db, rows, dim);
    }

    @Override
    public void rope(float[] x, int rows, int seqLen, int heads, int headDim, int rotaryDims, float theta, boolean inverse) {
        cpu.rope(x, rows, seqLen, heads, headDim, rotaryDims, theta, inverse);
    }

    @Override
    public void attention(float[] q, float[] k, float[] v, float[] out, float[] lse, int batch, int seq, int heads, int kvHeads, int headDim,
            boolean causal, int window) {
        cpu.attention(q, k, v, out, lse, batch, seq, heads, kvHeads, headDim, causal, window);
    }

    @Override
    public void attentionBackward(float[] q, float[] k, float[] v, float[] out, float[] lse, float[] dOut, float[] dq, float[] dk, float[] dv,
            int batch, int seq, int heads, int kvHeads, int headDim, boolean causal, int window) {
        cpu.attentionBackward(q, k, v, out, lse, dOut, dq, dk, dv, batch, seq, heads, kvHeads, headDim, causal, window);
    }

    @Override
    public void attention(float[] q, float[] k, float[] v, float[] out, float[] lse, int batch, int seq, int heads, int kvHeads, int headDim,
            boolean causal, int window, boolean[] keep) {
        cpu.attention(q, k, v, out, lse, batch, seq, heads, kvHeads, headDim, causal, window, keep);
    }

    @Override
    public void attentionBackward(float[] q, float[] k, float[] v, float[] out, float[] lse, float[] dOut, float[] dq, float[] dk, float[] dv,
            int batch, int seq, int heads, int kvHeads, int headDim, boolean causal, int window, boolean[] keep) {
        cpu.attentionBackward(q, k, v, out, lse, dOut, dq, dk, dv, batch, seq, heads, kvHeads, headDim, causal, window, keep);
    }

    @Override
    public void glu(Activation act, float[] gate, float[] up, float[] h, int n) {
        cpu.glu(act, gate, up, h, n);
    }

    @Override
    public void gluBackward(Activation act, float[] gate, float[] up, float[] dh, float[] dGate, float[] dUp, int n) {
        cpu.gluBackward(act, gate, up, dh, dGate, dUp, n);
    }

    @Override
    public void activation(Activation act, float[] x, float[] y, int n) {
        cpu.activation(act, x, y, n);
    }

    @Override
    public void activationBackward(Activation act, float[] x, float[] dy, float[] dx, int n) {
        cpu.activationBackward(act, x, dy, dx, n);
    }

    @Override
    public void gatherRows(float[] src, int[] rows, int n, int dim, float[] dst) {
        cpu.gatherRows(src, rows, n, dim, dst);
    }

    @Override
    public void scatterAddRows(float[] src, int[] rows, float[] scale, int n, int dim, float[] dst) {
        cpu.scatterAddRows(src, rows, scale, n, dim, dst);
    }

    @Override
    public double crossEntropy(float[] logits, int[] targets, float[] dLogits, int rows, int vocab) {
        return cpu.crossEntropy(logits, targets, dLogits, rows, vocab);
    }

    @Override
    public void close() {
        for (DeviceAllocator.Block block : new DeviceAllocator.Block[] {a, b, c}) {
            if (block != null) {
                block.close();
            }
        }
        if (!staging.equals(MemorySegment.NULL)) {
            ctx.driver.freeHost(staging);
            staging = MemorySegment.NULL;
        }
        if (ownsContext) {
            ctx.close();
        }
    }
}
