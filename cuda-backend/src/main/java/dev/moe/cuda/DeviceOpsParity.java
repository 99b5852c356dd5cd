package dev.moe.cuda;

import dev.moe.runtime.Activation;
import dev.moe.runtime.Backend;
import dev.moe.runtime.Elementwise;
import dev.moe.runtime.Parameter;
import dev.moe.runtime.cpu.CpuBackend;
import dev.moe.runtime.train.AdamW;
import java.util.ArrayList;
import java.util.List;
import java.util.Random;

/**
 * {@link DeviceOps} against the CPU backend (and the CPU AdamW), each op on 20 shapes drawn from a
 * seeded generator that includes one row, odd widths and widths above the block size: relative
 * error at most 1e-4 (fp32 on both sides; the CPU sums some reductions in double). Prints a table
 * of the worst error per op; exits 1 on any failure.
 */
public final class DeviceOpsParity {
    static final int SHAPES = 20;

    public record Result(String op, int shapes, double worst, double tolerance) {
        public Result(String op, int shapes, double worst) {
            this(op, shapes, worst, 1e-4);
        }

        public boolean pass() {
            return worst <= tolerance;
        }
    }

    /** The GEMM attention modes checked: exact fp32 products, TF32 and bf16, with their tolerances (L2-relative). */
    private static final String[] GEMM_MODES = {"fp32", "tf32", "bf16"};
    private static final double[] GEMM_TOLERANCES = {1e-4, 5e-3, 2e-2};

    /** The ops of the dense-model features (LayerNorm, qk-norm's shape, q/k/v biases, ungated FFNs), after the GEMM attention's. */
    private static final String[] DENSE_NAMES = {"layer_norm", "layer_norm backward", "rms_norm per head (qk)", "add_bias", "bias backward",
        "activation", "activation backward", "gru cell", "gru cell backward",
        "jitter noise, multiply and backward (bitwise)", "mla keys and values, backward (bitwise)", "mla values out and in (bitwise)",
        "moa gates, slot gradients, combine and its dy (bitwise)", "moa combine's gate gradient"};
    private static final int DENSE = 13 + 2 * GEMM_MODES.length;

    public static List<Result> run(CudaContext ctx, Backend cpu) {
        DeviceOps ops = new DeviceOps(ctx).tiledAttention(false);
        List<Result> out = new ArrayList<>();
        Random shapes = new Random(2026);
        double[] worst = new double[DENSE + DENSE_NAMES.length];
        for (int s = 0; s < SHAPES; s++) {
            int rows = s == 0 ? 1 : 1 + shapes.nextInt(300);
            int dim = s == 1 ? 1 : 1 + shapes.nextInt(s % 3 == 0 ? 1500 : 200);
            Random rnd = new Random(s);
            try (Scratch sc = new Scratch(ctx)) {
                // embedding and its backward (repeated tokens)
                int vocab = 1 + shapes.nextInt(50);
                int[] tokens = new int[rows];
                for (int i = 0; i < rows; i++) {
                    tokens[i] = rnd.nextInt(vocab);
                }
                float[] table = Compare.gaussian(rnd, vocab * dim), dOut = Compare.gaussian(rnd, rows * dim), dTable = Compare.gaussian(rnd, vocab * dim);
                float[] e1 = new float[rows * dim];
                cpu.embedding(tokens, table, e1, rows, dim);
                long tk = sc.ints(tokens), tb = sc.floats(table), eo = sc.zeros(rows * dim);
                ops.embedding(tk, tb, eo, rows, dim);
                worst[0] = Math.max(worst[0], Compare.rel(ctx.downloadFloats(eo, rows * dim), e1));
                long dt = sc.floats(dTable);
                ops.embeddingBackward(tk, sc.floats(dOut), dt, rows, dim);
                cpu.embeddingBackward(tokens, dOut, dTable, rows, dim);
                worst[1] = Math.max(worst[1], Compare.rel(ctx.downloadFloats(dt, vocab * dim), dTable));

                // RMSNorm forward and backward
                float[] x = Compare.gaussian(rnd, rows * dim), w = Compare.gaussian(rnd, dim), dy = Compare.gaussian(rnd, rows * dim);
                float[] y = new float[rows * dim], rstd = new float[rows];
                cpu.rmsNorm(x, w, y, rstd, rows, dim, 1e-6f);
                long xd = sc.floats(x), wd = sc.floats(w), yd = sc.zeros(rows * dim), rd = sc.zeros(rows);
                ops.rmsNorm(xd, wd, yd, rd, rows, dim, 1e-6f);
                worst[2] = Math.max(worst[2], Math.max(Compare.rel(ctx.downloadFloats(yd, rows * dim), y), Compare.rel(ctx.downloadFloats(rd, rows), rstd)));
                float[] dx = Compare.gaussian(rnd, rows * dim), dw = Compare.gaussian(rnd, dim);
                long dxd = sc.floats(dx), dwd = sc.floats(dw);
                cpu.rmsNormBackward(x, w, rstd, dy, dx, dw, rows, dim);
                ops.rmsNormBackward(xd, wd, sc.floats(rstd), sc.floats(dy), dxd, dwd, rows, dim);
                worst[3] = Math.max(worst[3], Math.max(Compare.rel(ctx.downloadFloats(dxd, rows * dim), dx), Compare.rel(ctx.downloadFloats(dwd, dim), dw)));

                // RoPE forward and inverse, partial rotary
                int heads = 1 + s % 4, headDim = 2 * (1 + shapes.nextInt(40)), rotary = 2 * (1 + shapes.nextInt(headDim / 2));
                int seq = 1 + shapes.nextInt(64);
                float[] q = Compare.gaussian(rnd, rows * heads * headDim);
                long qd = sc.floats(q);
                for (boolean inverse : new boolean[] {false, true}) {
                    cpu.rope(q, rows, seq, heads, headDim, rotary, 10000f, inverse);
                    ops.rope(qd, rows, seq, heads, headDim, rotary, 10000f, inverse);
                    worst[4] = Math.max(worst[4], Compare.rel(ctx.downloadFloats(qd, q.length), q));
                }

                // gated activations
                Activation act = Activation.values()[s % Activation.values().length];
                int n = rows * dim;
                float[] gate = Compare.gaussian(rnd, n), up = Compare.gaussian(rnd, n), dh = Compare.gaussian(rnd, n);
                float[] h = new float[n], dGate = new float[n], dUp = new float[n];
                cpu.glu(act, gate, up, h, n);
                cpu.gluBackward(act, gate, up, dh, dGate, dUp, n);
                long gd = sc.floats(gate), ud = sc.floats(up), hd = sc.zeros(n), dgd = sc.zeros(n), dud = sc.zeros(n);
                ops.glu(act, gd, ud, hd, n);
                ops.gluBackward(act, gd, ud, sc.floats(dh), dgd, dud, n);
                worst[5] = Math.max(worst[5], Compare.rel(ctx.downloadFloats(hd, n), h));
                worst[6] = Math.max(worst[6], Math.max(Compare.rel(ctx.downloadFloats(dgd, n), dGate), Compare.rel(ctx.downloadFloats(dud, n), dUp)));

                // cross-entropy (loss and gradient)
                int v = 2 + shapes.nextInt(s % 2 == 0 ? 3000 : 300);
                float[] logits = Compare.gaussian(rnd, rows * v);
                int[] targets = new int[rows];
                for (int i = 0; i < rows; i++) {
                    targets[i] = rnd.nextInt(v);
                }
                float[] dl = new float[rows * v];
                double loss = cpu.crossEntropy(logits, targets, dl, rows, v);
                long dld = sc.zeros(rows * v);
                double got = ops.crossEntropy(sc.floats(logits), sc.ints(targets), dld, rows, v);
                worst[7] = Math.max(worst[7], Math.max(Math.abs(got - loss) / Math.abs(loss), Compare.rel(ctx.downloadFloats(dld, rows * v), dl)));

                // three AdamW steps on a matrix, with weight decay
                Parameter p = Parameter.of("w", rows, dim);
                float[] init = Compare.gaussian(rnd, rows * dim);
                System.arraycopy(init, 0, p.value(), 0, init.length);
                AdamW adam = new AdamW(List.of(p), 0.9, 0.95, 1e-8, 0.1);
                long pw = sc.floats(init), pm = sc.zeros(n), pv = sc.zeros(n), pg = sc.zeros(n);
                for (int step = 1; step <= 3; step++) {
                    float[] g = Compare.gaussian(rnd, n);
                    System.arraycopy(g, 0, p.grad(), 0, n);
                    adam.step(List.of(p), 1e-2);
                    ctx.upload(g, pg);
                    ops.adamw(pw, pg, pm, pv, n, 0.9, 0.95, 1e-8, 0.1, 1e-2, step, true);
                }
                worst[8] = Math.max(worst[8], Math.max(Compare.rel(ctx.downloadFloats(pw, n), p.value()),
                        Compare.rel(ctx.downloadFloats(pm, n), adam.firstMoments().get("w"))));

                // attention: grouped-query, causal or not, with and without a window
                int kvHeads = 1 + s % 3, group = 1 + (s / 3) % 3, qHeads = kvHeads * group;
                int ahd = s == 4 ? 256 : 1 + shapes.nextInt(96), ab = 1 + s % 2, as = s == 0 ? 1 : 1 + shapes.nextInt(70);
                boolean causal = s % 4 != 3;
                int window = s % 5 == 2 ? 1 + shapes.nextInt(8) : 0;
                int qn = ab * as * qHeads * ahd, kn = ab * as * kvHeads * ahd;
                float[] aq = Compare.gaussian(rnd, qn), ak = Compare.gaussian(rnd, kn), av = Compare.gaussian(rnd, kn), ago = Compare.gaussian(rnd, qn);
                float[] ao = new float[qn], alse = new float[ab * as * qHeads];
                cpu.attention(aq, ak, av, ao, alse, ab, as, qHeads, kvHeads, ahd, causal, window);
                long aqd = sc.floats(aq), akd = sc.floats(ak), avd = sc.floats(av), aod = sc.zeros(qn), alsed = sc.zeros(alse.length);
                ops.attention(aqd, akd, avd, aod, alsed, ab, as, qHeads, kvHeads, ahd, causal, window);
                worst[9] = Math.max(worst[9], Math.max(Compare.rel(ctx.downloadFloats(aod, qn), ao), Compare.rel(ctx.downloadFloats(alsed, alse.length), alse)));
                float[] adq = Compare.gaussian(rnd, qn), adk = Compare.gaussian(rnd, kn), adv = Compare.gaussian(rnd, kn);
                long adqd = sc.floats(adq), adkd = sc.floats(adk), advd = sc.floats(adv);
                cpu.attentionBackward(aq, ak, av, ao, alse, ago, adq, adk, adv, ab, as, qHeads, kvHeads, ahd, causal, window);
                ops.attentionBackward(aqd, akd, avd, sc.floats(ao), sc.floats(alse), sc.floats(ago), adqd, adkd, advd, ab, as, qHeads, kvHeads,
                        ahd, causal, window);
                worst[10] = Math.max(worst[10], Math.max(Compare.rel(ctx.downloadFloats(adqd, qn), adq),
                        Math.max(Compare.rel(ctx.downloadFloats(adkd, kn), adk), Compare.rel(ctx.downloadFloats(advd, kn), adv))));

                // tiled attention: head dims it takes, sequences across several 64-row blocks and key tiles
                int[] tiledDims = {64, 32, 128, 8, 256, 96, 16, 64, 64, 128};
                int thd = tiledDims[s % tiledDims.length], fb = 1 + s % 3, ts = s == 0 ? 1 : 1 + shapes.nextInt(s % 2 == 0 ? 200 : 70);
                int tq = fb * ts * qHeads * thd, fkn = fb * ts * kvHeads * thd;
                float[] tqv = Compare.gaussian(rnd, tq), tkv = Compare.gaussian(rnd, fkn), tvv = Compare.gaussian(rnd, fkn), tgo = Compare.gaussian(rnd, tq);
                float[] to = new float[tq], tlse = new float[fb * ts * qHeads];
                cpu.attention(tqv, tkv, tvv, to, tlse, fb, ts, qHeads, kvHeads, thd, causal, window);
                long tqd = sc.floats(tqv), tkd = sc.floats(tkv), tvd = sc.floats(tvv), tod = sc.zeros(tq), tlsed = sc.zeros(tlse.length);
                ops.tiledAttention(true).attention(tqd, tkd, tvd, tod, tlsed, fb, ts, qHeads, kvHeads, thd, causal, window);
                worst[11] = Math.max(worst[11], Math.max(Compare.rel(ctx.downloadFloats(tod, tq), to), Compare.rel(ctx.downloadFloats(tlsed, tlse.length), tlse)));
                float[] tdq = Compare.gaussian(rnd, tq), tdk = Compare.gaussian(rnd, fkn), tdv = Compare.gaussian(rnd, fkn);
                float[] tdq0 = tdq.clone(), tdk0 = tdk.clone(), tdv0 = tdv.clone(); // the CPU accumulates into tdq, tdk, tdv
                long tdqd = sc.floats(tdq), tdkd = sc.floats(tdk), tdvd = sc.floats(tdv);
                cpu.attentionBackward(tqv, tkv, tvv, to, tlse, tgo, tdq, tdk, tdv, fb, ts, qHeads, kvHeads, thd, causal, window);
                ops.attentionBackward(tqd, tkd, tvd, sc.floats(to), sc.floats(tlse), sc.floats(tgo), tdqd, tdkd, tdvd, fb, ts, qHeads, kvHeads, thd,
                        causal, window);
                ops.tiledAttention(false);
                worst[12] = Math.max(worst[12], Math.max(Compare.rel(ctx.downloadFloats(tdqd, tq), tdq),
                        Math.max(Compare.rel(ctx.downloadFloats(tdkd, fkn), tdk), Compare.rel(ctx.downloadFloats(tdvd, fkn), tdv))));

                // attention as batched GEMMs on the same shapes; every other shape one sequence per chunk (a 1-byte score budget)
                for (int mode = 0; mode < GEMM_MODES.length; mode++) {
                    ctx.blas.setTf32(mode == 1);
                    GemmAttention gemm = new GemmAttention(ctx, mode == 2 ? GemmAttention.Storage.BF16 : GemmAttention.Storage.F32,
                            s % 2 == 0 ? 1 : GemmAttention.SCORE_BUDGET_BYTES);
                    long god = sc.zeros(tq), glsed = sc.zeros(tlse.length);
                    gemm.forward(tqd, tkd, tvd, god, glsed, fb, ts, qHeads, kvHeads, thd, causal, window);
                    worst[13 + 2 * mode] = Math.max(worst[13 + 2 * mode], Compare.rel(ctx.downloadFloats(god, tq), to));
                    long gdq = sc.floats(tdq0), gdk = sc.floats(tdk0), gdv = sc.floats(tdv0);
                    gemm.backward(tqd, tkd, tvd, god, glsed, sc.floats(tgo), gdq, gdk, gdv, fb, ts, qHeads, kvHeads, thd, causal, window);
                    worst[14 + 2 * mode] = Math.max(worst[14 + 2 * mode], Math.max(Compare.rel(ctx.downloadFloats(gdq, tq), tdq),
                            Math.max(Compare.rel(ctx.downloadFloats(gdk, fkn), tdk), Compare.rel(ctx.downloadFloats(gdv, fkn), tdv))));
                }
                ctx.blas.setTf32(false);

                // LayerNorm forward and backward, with a bias on even shapes and without on odd ones; over 128 rows the
                // weight and bias gradients take the two-pass path
                float[] lb = s % 2 == 0 ? Compare.gaussian(rnd, dim) : null;
                float[] ly = new float[rows * dim], lmean = new float[rows], lrstd = new float[rows];
                cpu.layerNorm(x, w, lb, ly, lmean, lrstd, rows, dim, 1e-5f);
                long lyd = sc.zeros(rows * dim), lmd = sc.zeros(rows), lrd = sc.zeros(rows);
                ops.layerNorm(xd, wd, lb == null ? 0L : sc.floats(lb), lyd, lmd, lrd, rows, dim, 1e-5f);
                worst[DENSE] = Math.max(worst[DENSE], Math.max(Compare.rel(ctx.downloadFloats(lyd, rows * dim), ly),
                        Math.max(Compare.rel(ctx.downloadFloats(lmd, rows), lmean), Compare.rel(ctx.downloadFloats(lrd, rows), lrstd))));
                float[] ldx = Compare.gaussian(rnd, rows * dim), ldw = Compare.gaussian(rnd, dim), ldb = Compare.gaussian(rnd, dim);
                long ldxd = sc.floats(ldx), ldwd = sc.floats(ldw), ldbd = sc.floats(ldb);
                cpu.layerNormBackward(x, w, lmean, lrstd, dy, ldx, ldw, ldb, rows, dim);
                ops.layerNormBackward(xd, wd, sc.floats(lmean), sc.floats(lrstd), sc.floats(dy), ldxd, ldwd, ldbd, rows, dim);
                worst[DENSE + 1] = Math.max(worst[DENSE + 1], Math.max(Compare.rel(ctx.downloadFloats(ldxd, rows * dim), ldx),
                        Math.max(Compare.rel(ctx.downloadFloats(ldwd, dim), ldw), Compare.rel(ctx.downloadFloats(ldbd, dim), ldb))));

                // qk-norm's shape: RMSNorm over rows * heads rows of one head's width (many short rows), forward and backward
                int qkRows = rows * heads;
                float[] qx = Compare.gaussian(rnd, qkRows * headDim), qw = Compare.gaussian(rnd, headDim), qdy = Compare.gaussian(rnd, qkRows * headDim);
                float[] qy = new float[qkRows * headDim], qrstd = new float[qkRows];
                cpu.rmsNorm(qx, qw, qy, qrstd, qkRows, headDim, 1e-6f);
                long qxd = sc.floats(qx), qwd = sc.floats(qw), qyd = sc.zeros(qkRows * headDim), qrd = sc.zeros(qkRows);
                ops.rmsNorm(qxd, qwd, qyd, qrd, qkRows, headDim, 1e-6f);
                float[] qdx = new float[qkRows * headDim], qdw = Compare.gaussian(rnd, headDim);
                long qdxd = sc.zeros(qkRows * headDim), qdwd = sc.floats(qdw);
                cpu.rmsNormBackward(qx, qw, qrstd, qdy, qdx, qdw, qkRows, headDim);
                ops.rmsNormBackward(qxd, qwd, sc.floats(qrstd), sc.floats(qdy), qdxd, qdwd, qkRows, headDim);
                worst[DENSE + 2] = Math.max(worst[DENSE + 2], Math.max(Compare.rel(ctx.downloadFloats(qyd, qy.length), qy),
                        Math.max(Compare.rel(ctx.downloadFloats(qdxd, qdx.length), qdx), Compare.rel(ctx.downloadFloats(qdwd, headDim), qdw))));

                // bias add and its column-sum backward (the q/k/v biases)
                float[] by = Compare.gaussian(rnd, rows * dim), bb = Compare.gaussian(rnd, dim), bdy = Compare.gaussian(rnd, rows * dim);
                float[] bdb = Compare.gaussian(rnd, dim);
                long byd = sc.floats(by), bdbd = sc.floats(bdb);
                Elementwise.addBias(by, bb, 0, rows, dim);
                ops.addBias(byd, sc.floats(bb), rows, dim);
                worst[DENSE + 3] = Math.max(worst[DENSE + 3], Compare.rel(ctx.downloadFloats(byd, rows * dim), by));
                Elementwise.biasBackward(bdy, bdb, 0, rows, dim);
                ops.biasBackward(sc.floats(bdy), bdbd, rows, dim);
                worst[DENSE + 4] = Math.max(worst[DENSE + 4], Compare.rel(ctx.downloadFloats(bdbd, dim), bdb));

                // plain activations (ungated FFNs): y = act(x), dx = act'(x) * dy (overwritten)
                float[] ax = Compare.gaussian(rnd, n), ady = Compare.gaussian(rnd, n), ay = new float[n], adx = new float[n];
                cpu.activation(act, ax, ay, n);
                cpu.activationBackward(act, ax, ady, adx, n);
                long axd = sc.floats(ax), ayd = sc.zeros(n), adxd = sc.floats(Compare.gaussian(rnd, n));
                ops.activation(act, axd, ayd, n);
                ops.activationBackward(act, axd, sc.floats(ady), adxd, n);
                worst[DENSE + 5] = Math.max(worst[DENSE + 5], Compare.rel(ctx.downloadFloats(ayd, n), ay));
                worst[DENSE + 6] = Math.max(worst[DENSE + 6], Compare.rel(ctx.downloadFloats(adxd, n), adx));

                // RMoE's GRU cell and its backward (the backward from the CPU's saved gates, so each is checked alone)
                int gw = 1 + rnd.nextInt(80);
                float[] gruGi = Compare.gaussian(rnd, rows * 3 * gw), gruGh = Compare.gaussian(rnd, rows * 3 * gw);
                float[] gruBi = Compare.gaussian(rnd, 3 * gw), gruBh = Compare.gaussian(rnd, 3 * gw);
                float[] gruPrev = Compare.gaussian(rnd, rows * gw), gruDh = Compare.gaussian(rnd, rows * gw);
                float[] gruGates = new float[rows * 4 * gw], gruH = new float[rows * gw];
                gruCell(gruGi, gruGh, gruBi, gruBh, gruPrev, gruGates, gruH, rows, gw);
                long gruPrevd = sc.floats(gruPrev), gruGatesd = sc.zeros(rows * 4 * gw), gruHd = sc.zeros(rows * gw);
                ops.gruCell(sc.floats(gruGi), sc.floats(gruGh), sc.floats(gruBi), sc.floats(gruBh), gruPrevd, gruGatesd, gruHd, rows, gw);
                worst[DENSE + 7] = Math.max(worst[DENSE + 7], Math.max(Compare.rel(ctx.downloadFloats(gruGatesd, gruGates.length), gruGates),
                        Compare.rel(ctx.downloadFloats(gruHd, gruH.length), gruH)));
                float[] gruDGi = new float[rows * 3 * gw], gruDGh = new float[rows * 3 * gw], gruDPrev = new float[rows * gw];
                gruCellBackward(gruDh, gruPrev, gruGates, gruDGi, gruDGh, gruDPrev, rows, gw);
                long gruDGid = sc.floats(Compare.gaussian(rnd, rows * 3 * gw)), gruDGhd = sc.floats(Compare.gaussian(rnd, rows * 3 * gw));
                long gruDPrevd = sc.floats(Compare.gaussian(rnd, rows * gw));
                ops.gruCellBackward(sc.floats(gruDh), gruPrevd, sc.floats(gruGates), gruDGid, gruDGhd, gruDPrevd, rows, gw);
                worst[DENSE + 8] = Math.max(worst[DENSE + 8], Math.max(Compare.rel(ctx.downloadFloats(gruDGid, gruDGi.length), gruDGi),
                        Math.max(Compare.rel(ctx.downloadFloats(gruDGhd, gruDGh.length), gruDGh), Compare.rel(ctx.downloadFloats(gruDPrevd, gruDPrev.length), gruDPrev))));

                // router jitter: the noise, the router's input times it, and d(input) += d(jittered) · noise, bitwise as the CPU
                float[] jx = Compare.gaussian(rnd, n), jdy = Compare.gaussian(rnd, n), jdx = Compare.gaussian(rnd, n);
                float[] jNoise = dev.moe.cuda.model.DeviceModel.jitterNoise(n, 0.1f, s, 1, 3);
                long jyd = sc.zeros(n), jdxd = sc.floats(jdx);
                // the noise as the device models draw it, on the GPU: the host's floats bit for bit
                long jNoised = sc.zeros(n);
                ops.jitterNoise(jNoised, n, dev.moe.cuda.model.DeviceModel.jitterSeed(s, 1, 3), 0.1f);
                float[] jNoiseGot = ctx.downloadFloats(jNoised, n);
                for (int i = 0; i < n; i++) {
                    worst[DENSE + 9] = Math.max(worst[DENSE + 9], Float.floatToRawIntBits(jNoiseGot[i]) == Float.floatToRawIntBits(jNoise[i]) ? 0
                            : Math.max(Math.abs(jNoiseGot[i] - jNoise[i]), Float.MIN_VALUE));
                }
                ops.multiply(sc.floats(jx), jNoised, jyd, n);
                ops.addProduct(jdxd, sc.floats(jdy), jNoised, n);
                float[] jy = ctx.downloadFloats(jyd, n), jdxGot = ctx.downloadFloats(jdxd, n);
                for (int i = 0; i < n; i++) {
                    float want = jx[i] * jNoise[i], wantDx = jdx[i] + jdy[i] * jNoise[i];
                    worst[DENSE + 9] = Math.max(worst[DENSE + 9], Math.max(Math.abs(jy[i] - want), Math.abs(jdxGot[i] - wantDx)));
                }

                // multi-head latent attention's layout moves against the CPU class's helpers; values narrower than the heads, or as wide
                // (drawn from this shape's own generator, last: the other ops keep the shapes they were checked on)
                int mHeads = 1 + s % 5, rope = 2 * (1 + rnd.nextInt(8)), nope = s % 4 == 0 ? 0 : 1 + rnd.nextInt(40);
                int hdm = nope + rope, vDim = s % 3 == 0 ? hdm : 1 + rnd.nextInt(hdm);
                float[] kpe = Compare.gaussian(rnd, rows * rope), kvb = Compare.gaussian(rnd, rows * mHeads * (nope + vDim));
                float[] mk = new float[rows * mHeads * hdm], mv = new float[rows * mHeads * hdm];
                mlaKeysAndValues(kpe, kvb, mk, mv, rows, mHeads, nope, rope, vDim);
                long mkd = sc.floats(Compare.gaussian(rnd, mk.length)), mvd = sc.floats(Compare.gaussian(rnd, mv.length));
                ops.mlaKeysAndValues(sc.floats(kpe), sc.floats(kvb), mkd, mvd, rows, mHeads, nope, rope, vDim);
                float[] mdk = Compare.gaussian(rnd, mk.length), mdv = Compare.gaussian(rnd, mv.length);
                float[] dKpe = new float[kpe.length], dKvb = new float[kvb.length];
                mlaKeysAndValuesBackward(mdk, mdv, dKpe, dKvb, rows, mHeads, nope, rope, vDim);
                long dKped = sc.floats(Compare.gaussian(rnd, dKpe.length)), dKvbd = sc.floats(Compare.gaussian(rnd, dKvb.length));
                ops.mlaKeysAndValuesBackward(sc.floats(mdk), sc.floats(mdv), dKped, dKvbd, rows, mHeads, nope, rope, vDim);
                worst[DENSE + 10] = Math.max(worst[DENSE + 10], Math.max(Math.max(maxDiff(ctx.downloadFloats(mkd, mk.length), mk),
                        maxDiff(ctx.downloadFloats(mvd, mv.length), mv)), Math.max(maxDiff(ctx.downloadFloats(dKped, dKpe.length), dKpe),
                        maxDiff(ctx.downloadFloats(dKvbd, dKvb.length), dKvb))));
                float[] matt = Compare.gaussian(rnd, rows * mHeads * hdm), mdAttV = Compare.gaussian(rnd, rows * mHeads * vDim);
                float[] attV = new float[mdAttV.length], mdAtt = new float[matt.length];
                for (int t = 0; t < rows * mHeads; t++) {
                    System.arraycopy(matt, t * hdm, attV, t * vDim, vDim);
                    System.arraycopy(mdAttV, t * vDim, mdAtt, t * hdm, vDim);
                }
                long attVd = sc.floats(Compare.gaussian(rnd, attV.length)), mdAttd = sc.floats(Compare.gaussian(rnd, mdAtt.length));
                ops.mlaValuesOut(sc.floats(matt), attVd, rows, mHeads, hdm, vDim);
                ops.mlaValuesIn(sc.floats(mdAttV), mdAttd, rows, mHeads, hdm, vDim);
                worst[DENSE + 11] = Math.max(worst[DENSE + 11], Math.max(maxDiff(ctx.downloadFloats(attVd, attV.length), attV),
                        maxDiff(ctx.downloadFloats(mdAttd, mdAtt.length), mdAtt)));

                // attention experts (MoA): each token's k distinct experts' weights as a dense gate row and the slots' gradients
                // back from it, as the CPU class's gateW and dWeight; one expert's output added by its gate as the CPU's
                // scatterAddRows adds it; its backward's dy and (summed in double) gate gradient
                int experts = 1 + rnd.nextInt(6), k = 1 + rnd.nextInt(experts);
                int[] sel = new int[rows * k];
                float[] slotW = Compare.gaussian(rnd, rows * k), gatesRef = new float[rows * experts];
                for (int t = 0; t < rows; t++) {
                    List<Integer> order = new ArrayList<>();
                    for (int e = 0; e < experts; e++) {
                        order.add(e);
                    }
                    java.util.Collections.shuffle(order, rnd);
                    for (int slot = 0; slot < k; slot++) {
                        sel[t * k + slot] = order.get(slot);
                        gatesRef[t * experts + order.get(slot)] += slotW[t * k + slot];
                    }
                }
                long seld = sc.ints(sel), gatesd = sc.zeros(rows * experts);
                ops.moaGates(seld, sc.floats(slotW), rows, k, experts, gatesd);
                float[] dGatesIn = Compare.gaussian(rnd, rows * experts), dSlotRef = new float[rows * k];
                for (int i = 0; i < rows * k; i++) {
                    dSlotRef[i] = dGatesIn[(i / k) * experts + sel[i]];
                }
                long dSlotd = sc.zeros(rows * k);
                ops.moaSlotGrads(sc.floats(dGatesIn), seld, rows, k, experts, dSlotd);
                int ex = rnd.nextInt(experts);
                float[] my = Compare.gaussian(rnd, rows * dim), mOut = Compare.gaussian(rnd, rows * dim), mdOut = Compare.gaussian(rnd, rows * dim);
                float[] gateOf = new float[rows];
                int[] self = new int[rows];
                for (int t = 0; t < rows; t++) {
                    gateOf[t] = gatesRef[t * experts + ex];
                    self[t] = t;
                }
                long myd = sc.floats(my), mOutd = sc.floats(mOut);
                cpu.scatterAddRows(my, self, gateOf, rows, dim, mOut);
                ops.moaCombine(myd, gatesd, ex, experts, rows, dim, mOutd);
                float[] mdy = new float[rows * dim], mdGates = new float[rows * experts];
                for (int t = 0; t < rows; t++) {
                    double dot = 0;
                    for (int d = 0; d < dim; d++) {
                        dot += (double) mdOut[t * dim + d] * my[t * dim + d];
                        mdy[t * dim + d] = gateOf[t] * mdOut[t * dim + d];
                    }
                    mdGates[t * experts + ex] = (float) dot;
                }
                long mdyd = sc.zeros(rows * dim), mdGatesd = sc.zeros(rows * experts);
                ops.moaCombineBackward(sc.floats(mdOut), myd, gatesd, ex, experts, rows, dim, mdyd, mdGatesd);
                worst[DENSE + 12] = Math.max(worst[DENSE + 12], Math.max(Math.max(maxDiff(ctx.downloadFloats(gatesd, gatesRef.length), gatesRef),
                        maxDiff(ctx.downloadFloats(dSlotd, dSlotRef.length), dSlotRef)), Math.max(maxDiff(ctx.downloadFloats(mOutd, mOut.length), mOut),
                        maxDiff(ctx.downloadFloats(mdyd, mdy.length), mdy))));
                worst[DENSE + 13] = Math.max(worst[DENSE + 13], Compare.rel(ctx.downloadFloats(mdGatesd, mdGates.length), mdGates));
            }
        }
        String[] names = {"embedding", "embedding backward", "rms_norm", "rms_norm backward", "rope (both ways)", "glu",
            "glu backward", "cross_entropy", "adamw (3 steps)", "attention (warp per row)", "attention backward (warp per row)",
            "attention (tiled)", "attention backward (tiled)"};
        for (int i = 0; i < names.length; i++) {
            out.add(new Result(names[i], SHAPES, worst[i]));
        }
        for (int mode = 0; mode < GEMM_MODES.length; mode++) {
            out.add(new Result("attention (GEMM, " + GEMM_MODES[mode] + ")", SHAPES, worst[13 + 2 * mode], GEMM_TOLERANCES[mode]));
            out.add(new Result("attention backward (GEMM, " + GEMM_MODES[mode] + ")", SHAPES, worst[14 + 2 * mode], GEMM_TOLERANCES[mode]));
        }
        for (int i = 0; i < DENSE_NAMES.length; i++) {
            out.add(new Result(DENSE_NAMES[i], SHAPES, worst[DENSE + i], DENSE_NAMES[i].endsWith("(bitwise)") ? 0 : 1e-4));
        }
        return out;
    }

    /**
     * The CPU reference of {@link DeviceOps#gruCell}: the loop of the CPU class's {@code gru} (ModelGenerator's gruHelpers) after
     * its two products, with r, z, n, nh packed per row as the kernel saves them.
     */
    static void gruCell(float[] gi, float[] gh, float[] bi, float[] bh, float[] prev, float[] gates, float[] h, int rows, int w) {
        for (int t = 0; t < rows; t++) {
            for (int j = 0; j < w; j++) {
                int g = t * 3 * w + j, o = t * w + j, s = t * 4 * w + j;
                float r = Elementwise.sigmoid(gi[g] + bi[j] + gh[g] + bh[j]);
                float z = Elementwise.sigmoid(gi[g + w] + bi[j + w] + gh[g + w] + bh[j + w]);
                float nh = gh[g + 2 * w] + bh[j + 2 * w];
                float n = (float) Math.tanh(gi[g + 2 * w] + bi[j + 2 * w] + r * nh);
                gates[s] = r;
                gates[s + w] = z;
                gates[s + 2 * w] = n;
                gates[s + 3 * w] = nh;
                h[o] = (1 - z) * n + z * prev[o];
            }
        }
    }

    /** The CPU reference of {@link DeviceOps#gruCellBackward}: the loop of the CPU class's {@code gruBackward}. */
    static void gruCellBackward(float[] dh, float[] prev, float[] gates, float[] dGi, float[] dGh, float[] dPrev, int rows, int w) {
        for (int t = 0; t < rows; t++) {
            for (int j = 0; j < w; j++) {
                int g = t * 3 * w + j, o = t * w + j, s = t * 4 * w + j;
                float d = dh[o], r = gates[s], z = gates[s + w], n = gates[s + 2 * w], nh = gates[s + 3 * w];
                float dn = d * (1 - z) * (1 - n * n);
                float dz = d * (prev[o] - n) * z * (1 - z);
                float dr = dn * nh * r * (1 - r);
                dGi[g] = dr;
                dGi[g + w] = dz;
                dGi[g + 2 * w] = dn;
                dGh[g] = dr;
                dGh[g + w] = dz;
                dGh[g + 2 * w] = dn * r;
                dPrev[o] = d * z;
            }
        }
    }

    private static double maxDiff(float[] got, float[] want) {
        double worst = 0;
        for (int i = 0; i < want.length; i++) {
            worst = Math.max(worst, Math.abs(got[i] - want[i]));
        }
        return worst;
    }

    /**
     * The CPU reference of {@link DeviceOps#mlaKeysAndValues}: the generated CPU class's {@code latentKeysAndValues} (ModelGenerator's
     * latentHelpers), with the model's constants as arguments.
     */
    static void mlaKeysAndValues(float[] kpe, float[] kvb, float[] k, float[] v, int rows, int heads, int nope, int rope, int vDim) {
        int hd = nope + rope;
        for (int t = 0; t < rows; t++) {
            for (int h = 0; h < heads; h++) {
                int at = t * heads * hd + h * hd;
                int from = t * heads * (nope + vDim) + h * (nope + vDim);
                System.arraycopy(kpe, t * rope, k, at, rope);
                System.arraycopy(kvb, from, k, at + rope, nope);
                System.arraycopy(kvb, from + nope, v, at, vDim);
                java.util.Arrays.fill(v, at + vDim, at + hd, 0f);
            }
        }
    }

    /** The CPU reference of {@link DeviceOps#mlaKeysAndValuesBackward}: the CPU class's {@code latentKeysAndValuesBackward}. */
    static void mlaKeysAndValuesBackward(float[] dk, float[] dv, float[] dKpe, float[] dKvb, int rows, int heads, int nope, int rope, int vDim) {
        int hd = nope + rope;
        for (int t = 0; t < rows; t++) {
            java.util.Arrays.fill(dKpe, t * rope, (t + 1) * rope, 0f);
            for (int h = 0; h < heads; h++) {
                int at = t * heads * hd + h * hd;
                int to = t * heads * (nope + vDim) + h * (nope + vDim);
                for (int i = 0; i < rope; i++) {
                    dKpe[t * rope + i] += dk[at + i];
                }
                System.arraycopy(dk, at + rope, dKvb, to, nope);
                System.arraycopy(dv, at, dKvb, to + nope, vDim);
            }
        }
    }

    /** Device buffers for one shape, freed together. */
    private static final class Scratch implements AutoCloseable {
        private final CudaContext ctx;
        private final List<DeviceAllocator.Block> blocks = new ArrayList<>();

        Scratch(CudaContext ctx) {
            this.ctx = ctx;
        }

        long zeros(int n) {
            DeviceAllocator.Block b = ctx.allocator.allocate(Math.max(4, (long) n * 4));
            blocks.add(b);
            ctx.driver.memsetZero(b.pointer, Math.max(4, (long) n * 4), ctx.stream);
            return b.pointer;
        }

        long floats(float[] v) {
            long p = zeros(v.length);
            if (v.length > 0) {
                ctx.upload(v, p);
            }
            return p;
        }

        long ints(int[] v) {
            long p = zeros(v.length);
            if (v.length > 0) {
                ctx.upload(v, p);
            }
            return p;
        }

        @Override
        public void close() {
            ctx.synchronize();
            blocks.forEach(DeviceAllocator.Block::close);
        }
    }

    public static void main(String[] args) {
        Backend cpu = new CpuBackend(Runtime.getRuntime().availableProcessors(), CpuBackend.VECTOR_API);
        try (CudaContext ctx = new CudaContext(0)) {
            System.out.printf("Dense-model GPU kernels against the CPU backend on %s, %d shapes each (tolerance 1e-4 unless shown)%n", ctx.deviceName,
                    SHAPES);
            int failures = 0;
            for (Result r : run(ctx, cpu)) {
                failures += r.pass() ? 0 : 1;
                System.out.printf("%-36s %9.2e  (tolerance %.0e)  %s%n", r.op(), r.worst(), r.tolerance(), r.pass() ? "ok" : "FAIL");
            }
            System.exit(failures == 0 ? 0 : 1);
        } catch (CudaException e) {
            System.err.println("moe: " + e.getMessage());
            System.exit(2);
        }
    }
}
