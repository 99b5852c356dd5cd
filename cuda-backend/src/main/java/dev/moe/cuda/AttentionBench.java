package dev.moe.cuda;

import java.lang.foreign.MemorySegment;
import java.util.Arrays;
import java.util.Locale;
import java.util.Random;

/**
 * Times causal grouped-query attention on the GPU, forward and forward+backward, with the exact
 * fp32 tiled kernels (CUDA cores) and as batched GEMMs (tensor cores, TF32 and bf16), side by side in
 * one run. Prints a table of milliseconds (median of 20 CUDA-event timings) and TFLOP/s, counting
 * the causal half only ({@code 2·B·H·S²·hd} forward, 2.5× that for the backward, as
 * FlashAttention's benchmarks do), so the GEMM path gets no credit for the masked half it computes.
 *
 * <pre>java --enable-native-access=ALL-UNNAMED -cp '...' dev.moe.cuda.AttentionBench [batch seq heads kvHeads headDim]</pre>
 */
public final class AttentionBench {
    private static final int REPEATS = 20;

    public static void main(String[] args) {
        int batch = args.length > 0 ? Integer.parseInt(args[0]) : 8, seq = args.length > 1 ? Integer.parseInt(args[1]) : 1024;
        int heads = args.length > 2 ? Integer.parseInt(args[2]) : 16, kvHeads = args.length > 3 ? Integer.parseInt(args[3]) : 4;
        int hd = args.length > 4 ? Integer.parseInt(args[4]) : 64;
        try (CudaContext ctx = new CudaContext(0)) {
            System.out.printf("Causal attention, batch %d x seq %d, %d query / %d key-value heads of %d, on %s%n", batch, seq, heads, kvHeads, hd,
                    ctx.deviceName);
            long qn = (long) batch * seq * heads * hd, kn = (long) batch * seq * kvHeads * hd;
            Random rnd = new Random(1);
            long q = upload(ctx, rnd, qn), k = upload(ctx, rnd, kn), v = upload(ctx, rnd, kn), dOut = upload(ctx, rnd, qn);
            long out = ctx.allocator.allocate(qn * 4).pointer, lse = ctx.allocator.allocate((long) batch * seq * heads * 4).pointer;
            long dq = ctx.allocator.allocate(qn * 4).pointer, dk = ctx.allocator.allocate(kn * 4).pointer,
                    dv = ctx.allocator.allocate(kn * 4).pointer;
            double flopsFwd = 2.0 * batch * heads * (double) seq * seq * hd; // causal half of 4·B·H·S²·hd
            System.out.printf("%-28s %10s %10s %12s %12s%n", "path", "fwd ms", "fwd+bwd ms", "fwd TFLOP/s", "f+b TFLOP/s");
            String[] names = {"tiled kernels, fp32 (exact)", "batched GEMMs, TF32", "batched GEMMs, bf16"};
            GemmAttention.Storage[] storages = {null, GemmAttention.Storage.F32, GemmAttention.Storage.BF16};
            DeviceOps ops = new DeviceOps(ctx);
            for (int path = 0; path < names.length; path++) {
                ctx.attentionGemm = storages[path];
                ctx.blas.setTf32(path == 1);
                MemorySegment start = ctx.driver.createEvent(), end = ctx.driver.createEvent();
                float[] fwd = new float[REPEATS], both = new float[REPEATS];
                for (int i = -2; i < REPEATS; i++) { // two warm-up rounds (NVRTC, cuBLASLt heuristics, allocator)
                    ctx.driver.record(start, ctx.stream);
                    ops.attention(q, k, v, out, lse, batch, seq, heads, kvHeads, hd, true, 0);
                    ctx.driver.record(end, ctx.stream);
                    float f = ctx.driver.elapsedMillis(start, end);
                    ctx.driver.record(start, ctx.stream);
                    ops.attention(q, k, v, out, lse, batch, seq, heads, kvHeads, hd, true, 0);
                    ops.attentionBackward(q, k, v, out, lse, dOut, dq, dk, dv, batch, seq, heads, kvHeads, hd, true, 0);
                    ctx.driver.record(end, ctx.stream);
                    float b = ctx.driver.elapsedMillis(start, end);
                    if (i >= 0) {
                        fwd[i] = f;
                        both[i] = b;
                    }
                }
                double mf = median(fwd), mb = median(both);
                System.out.printf(Locale.ROOT, "%-28s %10.3f %10.3f %12.1f %12.1f%n", names[path], mf, mb, flopsFwd / mf / 1e9,
                        3.5 * flopsFwd / mb / 1e9);
            }
            ctx.attentionGemm = null;
        } catch (CudaException e) {
            System.err.println("moe: " + e.getMessage());
            System.exit(2);
        }
    }

    private static long upload(CudaContext ctx, Random rnd, long n) {
        float[] x = new float[(int) n];
        for (int i = 0; i < x.length; i++) {
            x[i] = (float) rnd.nextGaussian();
        }
        long p = ctx.allocator.allocate(n * 4).pointer;
        ctx.upload(x, p);
        return p;
    }

    private static double median(float[] x) {
        float[] s = x.clone();
        Arrays.sort(s);
        return s[s.length / 2];
    }
}
