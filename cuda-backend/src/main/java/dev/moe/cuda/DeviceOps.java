package dev.moe.cuda;

import dev.moe.cuda.kernels.AttentionKernelSource;
import dev.moe.cuda.kernels.ModelKernelSource;
import dev.moe.runtime.Activation;

/**
 * The dense-model ops on device memory (fp32, device pointers): the GPU twins of the CPU
 * backend's embedding, RMSNorm, LayerNorm, RoPE, gated and plain activations, cross-entropy, of
 * the bias add of {@code Elementwise}, of the generated CPU class's latent-attention layout helpers and of the AdamW update,
 * with the same contracts (backward ops accumulate where the CPU's do, overwrite where they do).
 * They are the pieces device-resident generated models will be written in; {@link DeviceOpsParity}
 * checks each against the CPU backend.
 */
public final class DeviceOps {
    private static final int THREADS = 256;
    private static final String SOURCE = ModelKernelSource.generate();
    private final CudaContext ctx;

    public DeviceOps(CudaContext ctx) {
        this.ctx = ctx;
    }

    private void launch(String kernel, int grid, int block, Object... args) {
        ctx.launch(ctx.kernel(SOURCE, kernel), kernel, Math.max(grid, 1), 1, block, 0, args);
    }

    private int grid(long n) {
        return (int) Math.max(1, Math.min((n + THREADS - 1) / THREADS, (long) ctx.multiprocessors * 16));
    }

    private static int activation(Activation act) {
        return switch (act) {
            case SILU -> 0;
            case GELU -> 1;
            case RELU -> 2;
        };
    }

    public void embedding(long tokens, long table, long out, int count, int dim) {
        if (count > 0) {
            launch("embedding", count, THREADS, tokens, table, out, dim);
        }
    }

    public void embeddingBackward(long tokens, long dOut, long dTable, int count, int dim) {
        launch("embedding_backward", (dim + THREADS - 1) / THREADS, THREADS, tokens, dOut, dTable, count, dim);
    }

    public void rmsNorm(long x, long w, long y, long rstd, int rows, int dim, float eps) {
        if (rows > 0) {
            launch("rms_norm", rows, THREADS, x, w, y, rstd, dim, eps);
        }
    }

    /** {@code dx} and {@code dw} accumulate; either may be 0 (not wanted). */
    public void rmsNormBackward(long x, long w, long rstd, long dy, long dx, long dw, int rows, int dim) {
        if (dx != 0 && rows > 0) {
            launch("rms_norm_backward_dx", rows, THREADS, x, w, rstd, dy, dx, dim);
        }
        if (dw != 0 && rows < 128) {
            launch("rms_norm_backward_dw", (dim + THREADS - 1) / THREADS, THREADS, x, rstd, dy, dw, rows, dim);
        } else if (dw != 0) {
            // one thread per column is too little parallelism for many rows: partial sums over 128 row sets first
            int parts = 128;
            try (DeviceAllocator.Block partial = ctx.allocator.allocate((long) parts * dim * 8)) {
                ctx.launch(ctx.kernel(SOURCE, "rms_norm_backward_dw_partial"), "rms_norm_backward_dw_partial", (dim + THREADS - 1) / THREADS, parts,
                        THREADS, 0, x, rstd, dy, partial.pointer, rows, dim);
                launch("rms_norm_backward_dw_sum", (dim + THREADS - 1) / THREADS, THREADS, partial.pointer, dw, parts, dim);
            }
        }
    }

    /** {@code y = (x - mean) * rstd * w + b} per row ({@code b} may be 0: no bias); saves mean and rstd (either may be 0). */
    public void layerNorm(long x, long w, long b, long y, long mean, long rstd, int rows, int dim, float eps) {
        if (rows > 0) {
            launch("layer_norm", rows, THREADS, x, w, b, y, mean, rstd, dim, eps);
        }
    }

    /** {@code dx}, {@code dw} and {@code db} accumulate; any may be 0 (not wanted). */
    public void layerNormBackward(long x, long w, long mean, long rstd, long dy, long dx, long dw, long db, int rows, int dim) {
        if (dx != 0 && rows > 0) {
            launch("layer_norm_backward_dx", rows, THREADS, x, w, mean, rstd, dy, dx, dim);
        }
        if ((dw == 0 && db == 0) || rows == 0) {
            return;
        }
        if (rows < 128) {
            launch("layer_norm_backward_dwdb", (dim + THREADS - 1) / THREADS, THREADS, x, mean, rstd, dy, dw, db, rows, dim);
            return;
        }
        // as rmsNormBackward: partial sums over 128 row sets, dw's then db's, each added up in order
        int parts = 128;
        try (DeviceAllocator.Block partial = ctx.allocator.allocate(2L * parts * dim * 8)) {
            ctx.launch(ctx.kernel(SOURCE, "layer_norm_backward_dwdb_partial"), "layer_norm_backward_dwdb_partial", (dim + THREADS - 1) / THREADS,
                    parts, THREADS, 0, x, mean, rstd, dy, partial.pointer, rows, dim);
            if (dw != 0) {
                launch("rms_norm_backward_dw_sum", (dim + THREADS - 1) / THREADS, THREADS, partial.pointer, dw, parts, dim);
            }
            if (db != 0) {
                launch("rms_norm_backward_dw_sum", (dim + THREADS - 1) / THREADS, THREADS, partial.pointer + (long) parts * dim * 8, db, parts,
                        dim);
            }
        }
    }

    /** {@code y[r, j] += b[j]} over {@code rows} rows of {@code n}. */
    public void addBias(long y, long b, int rows, int n) {
        long total = (long) rows * n;
        if (total > 0) {
            launch("add_bias", grid(total), THREADS, y, b, (long) rows, n);
        }
    }

    /** {@code db[j] += Σ_r dy[r, j]} (the CPU's {@code Elementwise.biasBackward}). */
    public void biasBackward(long dy, long db, int rows, int n) {
        if (rows == 0 || n == 0) {
            return;
        }
        if (rows < 128) {
            launch("bias_backward", (n + THREADS - 1) / THREADS, THREADS, dy, db, rows, n);
            return;
        }
        int parts = 128;
        try (DeviceAllocator.Block partial = ctx.allocator.allocate((long) parts * n * 8)) {
            ctx.launch(ctx.kernel(SOURCE, "bias_backward_partial"), "bias_backward_partial", (n + THREADS - 1) / THREADS, parts, THREADS, 0, dy,
                    partial.pointer, rows, n);
            launch("rms_norm_backward_dw_sum", (n + THREADS - 1) / THREADS, THREADS, partial.pointer, db, parts, n);
        }
    }

    public void rope(long x, int rows, int seqLen, int heads, int headDim, int rotaryDims, float theta, boolean inverse) {
        if (rows > 0 && rotaryDims > 0) {
            launch("rope", grid((long) rows * heads * (rotaryDims / 2)), THREADS, x, rows, seqLen, heads, headDim, rotaryDims, theta,
                    inverse ? 1 : 0);
        }
    }

    /**
     * Multi-head latent attention's keys and values in the attention kernels' layout ({@code k} and {@code v [rows, heads,
     * nope + rope]}): per head the key is the shared rotary key {@code kpe [rows, rope]} then the head's nope keys of
     * {@code kvb [rows, heads, nope + vDim]}, the value the head's vDim values then zeros (the generated CPU class's
     * {@code latentKeysAndValues}).
     */
    public void mlaKeysAndValues(long kpe, long kvb, long k, long v, int rows, int heads, int nope, int ropeDim, int vDim) {
        long n = (long) rows * heads * (nope + ropeDim);
        if (n > 0) {
            launch("mla_keys_values", grid(n), THREADS, kpe, kvb, k, v, (long) rows, heads, nope, ropeDim, vDim);
        }
    }

    /** The backward of {@link #mlaKeysAndValues}: OVERWRITES {@code dKpe} (every head's rotary-key gradient summed) and {@code dKvb}. */
    public void mlaKeysAndValuesBackward(long dk, long dv, long dKpe, long dKvb, int rows, int heads, int nope, int ropeDim, int vDim) {
        long n = (long) rows * heads * (nope + vDim) + (long) rows * ropeDim;
        if (rows > 0) {
            launch("mla_keys_values_backward", grid(n), THREADS, dk, dv, dKpe, dKvb, (long) rows, heads, nope, ropeDim, vDim);
        }
    }

    /** MLA: each head's first {@code vDim} of the attention output {@code att [rows, heads, headDim]}, packed: {@code attV [rows, heads, vDim]}. */
    public void mlaValuesOut(long att, long attV, int rows, int heads, int headDim, int vDim) {
        long n = (long) rows * heads * vDim;
        if (n > 0) {
            launch("mla_values_out", grid(n), THREADS, att, attV, (long) rows, heads, headDim, vDim);
        }
    }

    /** The backward of {@link #mlaValuesOut}: OVERWRITES {@code dAtt [rows, heads, headDim]} with each head's dAttV, then zeros. */
    public void mlaValuesIn(long dAttV, long dAtt, int rows, int heads, int headDim, int vDim) {
        long n = (long) rows * heads * headDim;
        if (n > 0) {
            launch("mla_values_in", grid(n), THREADS, dAttV, dAtt, (long) rows, heads, headDim, vDim);
        }
    }

    public void glu(Activation act, long gate, long up, long h, long n) {
        launch("glu", grid(n), THREADS, activation(act), gate, up, h, n);
    }

    public void gluBackward(Activation act, long gate, long up, long dh, long dGate, long dUp, long n) {
        launch("glu_backward", grid(n), THREADS, activation(act), gate, up, dh, dGate, dUp, n);
    }

    /** {@code y = act(x)}, n elements (ungated FFNs). */
    public void activation(Activation act, long x, long y, long n) {
        if (n > 0) {
            launch("activation", grid(n), THREADS, activation(act), x, y, n);
        }
    }

    /** OVERWRITES {@code dx = act'(x) * dy}. */
    public void activationBackward(Activation act, long x, long dy, long dx, long n) {
        if (n > 0) {
            launch("activation_backward", grid(n), THREADS, activation(act), x, dy, dx, n);
        }
    }

    /**
     * Grouped-query attention, scale 1/sqrt(headDim), with the CPU backend's layout: q and out
     * {@code [B*S, H*hd]}, k and v {@code [B*S, KV*hd]}, lse {@code [B*S*H]} (may be 0). Head dims up to 256.
     */
    public void attention(long q, long k, long v, long out, long lse, int batch, int seq, int heads, int kvHeads, int headDim,
            boolean causal, int window) {
        checkHeadDim(headDim);
        if (ctx.attentionGemm != null) {
            gemmAttention(ctx.attentionGemm).forward(q, k, v, out, lse, batch, seq, heads, kvHeads, headDim, causal, window);
            return;
        }
        if (tiled && AttentionKernelSource.supports(headDim)) {
            flash(headDim, "flash_forward", batch, seq, heads, q, k, v, out, lse, seq, heads, kvHeads, causal ? 1 : 0, window);
            return;
        }
        long warps = (long) batch * seq * heads;
        launch("attention_forward", (int) ((warps * 32 + THREADS - 1) / THREADS), THREADS, q, k, v, out, lse, batch, seq, heads, kvHeads,
                headDim, causal ? 1 : 0, window);
    }

    /** Accumulates dq, dk, dv (the CPU backend's contract). */
    public void attentionBackward(long q, long k, long v, long out, long lse, long dOut, long dq, long dk, long dv, int batch, int seq,
            int heads, int kvHeads, int headDim, boolean causal, int window) {
        checkHeadDim(headDim);
        if (ctx.attentionGemm != null) {
            gemmAttention(ctx.attentionGemm).backward(q, k, v, out, lse, dOut, dq, dk, dv, batch, seq, heads, kvHeads, headDim, causal, window);
            return;
        }
        try (DeviceAllocator.Block delta = ctx.allocator.allocate((long) batch * seq * heads * 4)) {
            if (tiled && AttentionKernelSource.supports(headDim)) {
                flash(headDim, "flash_backward_dq", batch, seq, heads, q, k, v, out, lse, dOut, dq, delta.pointer, seq, heads, kvHeads,
                        causal ? 1 : 0, window);
                flash(headDim, "flash_backward_dkdv", batch, seq, kvHeads, q, k, v, lse, dOut, delta.pointer, dk, dv, seq, heads, kvHeads,
                        causal ? 1 : 0, window);
                return;
            }
            long warps = (long) batch * seq * heads;
            launch("attention_backward_dq", (int) ((warps * 32 + THREADS - 1) / THREADS), THREADS, q, k, v, out, lse, dOut, dq,
                    delta.pointer, batch, seq, heads, kvHeads, headDim, causal ? 1 : 0, window);
            long kvWarps = (long) batch * seq * kvHeads;
            launch("attention_backward_dkdv", (int) ((kvWarps * 32 + THREADS - 1) / THREADS), THREADS, q, k, v, lse, dOut, delta.pointer,
                    dk, dv, batch, seq, heads, kvHeads, headDim, causal ? 1 : 0, window);
        }
    }

    private final java.util.Map<GemmAttention.Storage, GemmAttention> gemmAttention = new java.util.EnumMap<>(GemmAttention.Storage.class);

    private GemmAttention gemmAttention(GemmAttention.Storage storage) {
        return gemmAttention.computeIfAbsent(storage, s -> new GemmAttention(ctx, s));
    }

    /** Whether attention uses the tiled kernels where they take the head dimension (true) or always the warp-per-row ones. */
    private boolean tiled = true;

    /** Chooses the attention kernels: the tiled ones (default) or the warp-per-row ones (the reference they are checked against). */
    public DeviceOps tiledAttention(boolean on) {
        tiled = on;
        return this;
    }

    private final java.util.Map<Integer, String> attentionSources = new java.util.concurrent.ConcurrentHashMap<>();

    private void flash(int headDim, String kernel, int batch, int seq, int heads, Object... args) {
        String source = attentionSources.computeIfAbsent(headDim, AttentionKernelSource::generate);
        int rows = AttentionKernelSource.rowsPerBlock(headDim);
        int tiles = (seq + rows - 1) / rows;
        ctx.launch(ctx.kernel(source, kernel), kernel, batch * tiles, heads, rows * AttentionKernelSource.threadsPerRow(headDim), 0, args);
    }

    private static void checkHeadDim(int headDim) {
        if (headDim > 256) {
            throw new IllegalArgumentException("the GPU attention kernels take head dimensions up to 256, not " + headDim);
        }
    }

    /** Mean cross-entropy; OVERWRITES dLogits (when not 0) with the gradient of that mean. Waits for the GPU. */
    public double crossEntropy(long logits, long targets, long dLogits, int rows, int vocab) {
        if (rows == 0) {
            return 0;
        }
        try (DeviceAllocator.Block losses = ctx.allocator.allocate((long) rows * 4)) {
            launch("cross_entropy", rows, THREADS, logits, targets, dLogits, losses.pointer, rows, vocab);
            double total = 0;
            for (float l : ctx.downloadFloats(losses.pointer, rows)) {
                total += l;
            }
            return total / rows;
        }
    }

    /**
     * PR-MoE's residual block: {@code [c1, c2] = softmax(mix[t])} per row ({@code mix [rows, 2]} holds the logits and gets c1,
     * c2), {@code stream += c1 · moe + c2 · dense}.
     */
    public void residualMix(long mix, long moe, long dense, long stream, int rows, int dim) {
        if (rows > 0) {
            launch("residual_mix", rows, THREADS, mix, moe, dense, stream, dim);
        }
    }

    /** Backward of {@link #residualMix}: each branch's output gradient (overwritten) and the mixing logits' gradient {@code dMix [rows, 2]}. */
    public void residualMixBackward(long mix, long moe, long dense, long dy, long dMoe, long dDense, long dMix, int rows, int dim) {
        if (rows > 0) {
            launch("residual_mix_backward", rows, THREADS, mix, moe, dense, dy, dMoe, dDense, dMix, dim);
        }
    }

    /**
     * Attention experts (MoA): each token's routing weights as a dense row over the experts, {@code gates [tokens, experts]}
     * (overwritten), from the router's slots {@code idx} and {@code weight [tokens, k]}; 0 where the token did not choose the expert.
     */
    public void moaGates(long idx, long weight, int tokens, int k, int experts, long gates) {
        if (tokens > 0) {
            launch("moa_gates", (tokens + THREADS - 1) / THREADS, THREADS, idx, weight, tokens, k, experts, gates);
        }
    }

    /** Backward of {@link #moaGates}: each slot's weight gradient {@code dWeight [tokens, k]} (overwritten) from {@code dGates}. */
    public void moaSlotGrads(long dGates, long idx, int tokens, int k, int experts, long dWeight) {
        long n = (long) tokens * k;
        if (n > 0) {
            launch("moa_slot_grads", (int) ((n + THREADS - 1) / THREADS), THREADS, dGates, idx, tokens, k, experts, dWeight);
        }
    }

    /** {@code out[t] += gates[t, expert] · y[t]} over {@code rows} rows of {@code dim}: one attention expert's weighted output. */
    public void moaCombine(long y, long gates, int expert, int experts, int rows, int dim, long out) {
        if (rows > 0) {
            launch("moa_combine", rows, THREADS, y, gates, expert, experts, dim, out);
        }
    }

    /**
     * Backward of {@link #moaCombine} for the output gradient {@code dOut}: {@code dy[t] = gates[t, expert] · dOut[t]} (overwritten)
     * and {@code dGates[t, expert] = <dOut[t], y[t]>} (overwritten).
     */
    public void moaCombineBackward(long dOut, long y, long gates, int expert, int experts, int rows, int dim, long dy, long dGates) {
        if (rows > 0) {
            launch("moa_combine_backward", rows, THREADS, dOut, y, gates, expert, experts, dim, dy, dGates);
        }
    }

    /**
     * RMoE's GRU cell (PyTorch's gate order r, z, n) on {@code gi = u · W_ihᵀ} and {@code gh = prev · W_hhᵀ} ({@code [rows, 3 · width]})
     * and the biases {@code [3 · width]}: the new state {@code h [rows, width]}, and r, z, n and W_hn prev + b_hn saved in
     * {@code gates [rows, 4 · width]} for {@link #gruCellBackward}. The twin of the CPU class's {@code gru} after its two products.
     */
    public void gruCell(long gi, long gh, long bi, long bh, long prev, long gates, long h, int rows, int width) {
        long n = (long) rows * width;
        if (n > 0) {
            launch("gru_cell", grid(n), THREADS, gi, gh, bi, bh, prev, gates, h, (long) rows, width);
        }
    }

    /**
     * Backward of {@link #gruCell} for {@code dh = dL/dh}: the gradients of the gates' pre-activations, {@code dGi} (of gi and
     * b_ih) and {@code dGh} (of gh and b_hh), and {@code dPrev = dh · z}, the direct part of the previous state's gradient; all
     * overwritten.
     */
    public void gruCellBackward(long dh, long prev, long gates, long dGi, long dGh, long dPrev, int rows, int width) {
        long n = (long) rows * width;
        if (n > 0) {
            launch("gru_cell_backward", grid(n), THREADS, dh, prev, gates, dGi, dGh, dPrev, (long) rows, width);
        }
    }

    /** {@code y += x} over {@code n} floats. */
    public void addInPlace(long y, long x, long n) {
        if (n > 0) {
            launch("add_inplace", grid(n), THREADS, y, x, n);
        }
    }

    /** {@code y = x · noise} elementwise over {@code n} floats (router jitter's input). */
    public void multiply(long x, long noise, long y, long n) {
        if (n > 0) {
            launch("multiply", grid(n), THREADS, x, noise, y, n);
        }
    }

    /**
     * Router jitter's noise on the device: {@code n} factors equal, bit for bit, to {@code DeviceModel.jitterNoise} for the
     * seed {@code DeviceModel.jitterSeed} gives (the CPU class's draw), without drawing them on the host and uploading them.
     */
    public void jitterNoise(long out, long n, long seed, float eps) {
        if (n > 0) {
            launch("jitter_noise", grid(n), THREADS, out, n, seed, eps);
        }
    }

    /** {@code dx += dy · noise} elementwise over {@code n} floats (router jitter's backward), rounded as the CPU: no fused multiply-add. */
    public void addProduct(long dx, long dy, long noise, long n) {
        if (n > 0) {
            launch("add_product", grid(n), THREADS, dx, dy, noise, n);
        }
    }

    /** {@code x *= s} over {@code n} floats. */
    public void scaleInPlace(long x, float s, long n) {
        if (n > 0) {
            launch("scale_inplace", grid(n), THREADS, x, s, n);
        }
    }

    /** Adds Σ x² over {@code n} floats into the fp64 at {@code out} (device). */
    public void sumSquares(long x, long n, long out) {
        if (n > 0) {
            launch("sum_squares", grid(n), THREADS, x, n, out);
        }
    }

    /** One AdamW step on {@code n} parameters; {@code step} counts from 1; decay applies to matrices only, as on the CPU. */
    public void adamw(long w, long g, long m, long v, long n, double beta1, double beta2, double eps, double weightDecay, double lr,
            long step, boolean decay) {
        adamw(w, g, m, v, n, beta1, beta2, eps, weightDecay, lr, step, decay, 1f);
    }

    /** {@link #adamw} on the gradients times {@code gradScale} (gradient clipping folded into the update; g is not changed). */
    public void adamw(long w, long g, long m, long v, long n, double beta1, double beta2, double eps, double weightDecay, double lr,
            long step, boolean decay, float gradScale) {
        double c1 = 1 - Math.pow(beta1, step), c2 = 1 - Math.pow(beta2, step);
        launch("adamw", grid(n), THREADS, w, g, m, v, n, (float) beta1, (float) beta2, (float) eps,
                (float) (decay ? lr * weightDecay : 0), (float) lr, (float) c1, (float) c2, gradScale);
    }
}
