package dev.moe.cuda.dist;

import dev.moe.cuda.kernels.MoeKernelSource.Score;
import dev.moe.cuda.kernels.MoeKernelSource.Spec;

/**
 * One rank's share of an expert-parallel MoE layer with SwiGLU experts, in plain float math on the
 * host: the router runs locally (its weights are replicated), the tokens' rows travel to their
 * experts' ranks through {@link Exchange} (counts first, then rows), each rank runs its own experts on
 * expert-major rows, and the outputs travel back to be combined. The backward pass sends the output
 * gradients the same way, returns the input gradient, keeps each rank's expert gradients local and
 * all-reduces the router's. This is the algorithm the GPU code runs with NCCL; here it lets the
 * CPU tests check the dispatch against a single-rank computation.
 *
 * <p>Layouts follow {@link dev.moe.cuda.CudaMoeLayer}: router {@code [E, D]}, gate/up
 * {@code [E, 2F, D]} (gate rows first), down {@code [E, D, F]}; a rank holds its local experts' slices
 * in local order.
 */
public final class ExpertParallelMoe {
    private final Spec spec;
    private final ExpertPlacement placement;
    private final Exchange exchange;
    private final float[] router; // [E, D]
    private final float[] bias; // [E] or null
    private final float[] gateUp; // [L, 2F, D]
    private final float[] down; // [L, D, F]
    private final int local;

    // Saved by forward for backward.
    private int tokens;
    private float[] x; // [T, D]
    private float[] probs; // [T, E]
    private int[] chosen; // [T, k]
    private float[] weight; // [T, k]
    private DispatchPlan plan;
    private ReceiveLayout layout;
    private float[] rows; // [R, D] expert-major received rows
    private float[] gate, up; // [R, F]
    private float[] yBack; // [A, D] expert outputs in send order
    private float[] globalCounts; // [E]

    private float[] dRouter, dGateUp, dDown;

    /** {@code gateUpAll} and {@code downAll} hold every expert; this rank keeps its own. */
    public ExpertParallelMoe(Spec spec, ExpertPlacement placement, Exchange exchange, float[] router, float[] bias, float[] gateUpAll,
            float[] downAll) {
        if (placement.ranks() != exchange.size() || placement.experts() != spec.experts()) {
            throw new IllegalArgumentException("placement of " + placement.experts() + " experts on " + placement.ranks()
                    + " ranks for a layer of " + spec.experts() + " experts on " + exchange.size() + " ranks");
        }
        if (spec.expertIn() != spec.dim()) {
            throw new IllegalArgumentException("expert parallelism sends the router's input to the experts: not latent experts");
        }
        this.spec = spec;
        this.placement = placement;
        this.exchange = exchange;
        this.router = router;
        this.bias = bias;
        int d = spec.dim(), f = spec.hidden();
        int me = exchange.rank();
        local = placement.localExperts(me);
        gateUp = ExpertShards.local(gateUpAll, 2 * f * d, placement, me);
        down = ExpertShards.local(downAll, d * f, placement, me);
    }

    /** out [T, D] for x [T, D]; every rank must call it (with its own tokens, possibly none). */
    public float[] forward(float[] x, int tokens) {
        int d = spec.dim(), e = spec.experts(), k = spec.topK(), f = spec.hidden();
        this.tokens = tokens;
        this.x = x.clone();
        route();
        plan = DispatchPlan.buildTopK(placement, tokens, k, chosen);
        int block = DispatchPlan.countsBlock(placement);
        layout = ReceiveLayout.fromCountsMessage(exchange.allToAll(plan.countsMessage(), block), exchange.size(), block, local);
        rows = layout.toExpertMajor(exchange.allToAllV(plan.gather(x, d), plan.sendCounts(), layout.recvCounts(), d), d);
        int n = layout.rows();
        gate = new float[n * f];
        up = new float[n * f];
        float[] y = new float[n * d];
        for (int l = 0; l < local; l++) {
            for (int row = layout.expertOffset(l); row < layout.expertOffset(l + 1); row++) {
                expertForward(l, row, y);
            }
        }
        yBack = exchange.allToAllV(layout.toRankMajor(y, d), layout.recvCounts(), plan.sendCounts(), d);
        float[] out = new float[tokens * d];
        for (int a = 0; a < tokens * k; a++) {
            int t = a / k, p = plan.sendPosition(a);
            for (int c = 0; c < d; c++) {
                out[t * d + c] += weight[a] * yBack[p * d + c];
            }
        }
        float[] counts = new float[e];
        for (int c : chosen) {
            counts[c]++;
        }
        // The whole batch's tokens per expert, for global-batch balancing and the aux-free bias.
        globalCounts = exchange.allReduceSum(counts);
        return out;
    }

    private void route() {
        int d = spec.dim(), e = spec.experts(), k = spec.topK();
        probs = new float[tokens * e];
        chosen = new int[tokens * k];
        weight = new float[tokens * k];
        for (int t = 0; t < tokens; t++) {
            float max = Float.NEGATIVE_INFINITY;
            for (int ex = 0; ex < e; ex++) {
                float z = 0;
                for (int c = 0; c < d; c++) {
                    z += x[t * d + c] * router[ex * d + c];
                }
                probs[t * e + ex] = z;
                max = Math.max(max, z);
            }
            if (spec.score() == Score.SOFTMAX) {
                float sum = 0;
                for (int ex = 0; ex < e; ex++) {
                    probs[t * e + ex] = (float) Math.exp(probs[t * e + ex] - max);
                    sum += probs[t * e + ex];
                }
                for (int ex = 0; ex < e; ex++) {
                    probs[t * e + ex] /= sum;
                }
            } else {
                for (int ex = 0; ex < e; ex++) {
                    probs[t * e + ex] = (float) (1 / (1 + Math.exp(-probs[t * e + ex])));
                }
            }
            boolean[] taken = new boolean[e];
            float psum = 0;
            for (int r = 0; r < k; r++) {
                int best = -1;
                for (int ex = 0; ex < e; ex++) {
                    if (!taken[ex] && (best < 0 || selection(t, ex) > selection(t, best))) {
                        best = ex;
                    }
                }
                taken[best] = true;
                chosen[t * k + r] = best;
                psum += probs[t * e + best];
            }
            for (int r = 0; r < k; r++) {
                float p = probs[t * e + chosen[t * k + r]];
                weight[t * k + r] = spec.scale() * (spec.normalize() ? p / psum : p);
            }
        }
    }

    private float selection(int t, int ex) {
        return probs[t * spec.experts() + ex] + (spec.bias() ? bias[ex] : 0);
    }

    private void expertForward(int l, int row, float[] y) {
        int d = spec.dim(), f = spec.hidden();
        float[] act = new float[f];
        for (int j = 0; j < f; j++) {
            float gz = 0, uz = 0;
            int go = (l * 2 * f + j) * d, uo = (l * 2 * f + f + j) * d;
            for (int c = 0; c < d; c++) {
                gz += gateUp[go + c] * rows[row * d + c];
                uz += gateUp[uo + c] * rows[row * d + c];
            }
            gate[row * f + j] = gz;
            up[row * f + j] = uz;
            act[j] = silu(gz) * uz;
        }
        for (int c = 0; c < d; c++) {
            float v = 0;
            for (int j = 0; j < f; j++) {
                v += down[(l * d + c) * f + j] * act[j];
            }
            y[row * d + c] = v;
        }
    }

    private static float silu(float z) {
        return (float) (z / (1 + Math.exp(-z)));
    }

    /** dx [T, D] for dOut [T, D]; afterwards the weight gradients are available. */
    public float[] backward(float[] dOut) {
        int d = spec.dim(), e = spec.experts(), k = spec.topK(), f = spec.hidden();
        float[] dw = new float[tokens * k];
        float[] dy = new float[plan.assignments() * d]; // send order
        for (int a = 0; a < tokens * k; a++) {
            int t = a / k, p = plan.sendPosition(a);
            float dot = 0;
            for (int c = 0; c < d; c++) {
                dot += dOut[t * d + c] * yBack[p * d + c];
                dy[p * d + c] = weight[a] * dOut[t * d + c];
            }
            dw[a] = dot;
        }
        float[] dyRows = layout.toExpertMajor(exchange.allToAllV(dy, plan.sendCounts(), layout.recvCounts(), d), d);
        int n = layout.rows();
        float[] dxRows = new float[n * d];
        dGateUp = new float[local * 2 * f * d];
        dDown = new float[local * d * f];
        for (int l = 0; l < local; l++) {
            for (int row = layout.expertOffset(l); row < layout.expertOffset(l + 1); row++) {
                expertBackward(l, row, dyRows, dxRows);
            }
        }
        float[] dxBack = exchange.allToAllV(layout.toRankMajor(dxRows, d), layout.recvCounts(), plan.sendCounts(), d);
        float[] dx = new float[tokens * d];
        float[] dRouterLocal = new float[e * d];
        for (int t = 0; t < tokens; t++) {
            for (int r = 0; r < k; r++) {
                int p = plan.sendPosition(t * k + r);
                for (int c = 0; c < d; c++) {
                    dx[t * d + c] += dxBack[p * d + c];
                }
            }
            // routing weights -> scores -> logits
            float[] dp = new float[e];
            float psum = 0, gp = 0;
            for (int r = 0; r < k; r++) {
                float p = probs[t * e + chosen[t * k + r]];
                psum += p;
                gp += dw[t * k + r] * p;
            }
            for (int r = 0; r < k; r++) {
                float g = dw[t * k + r];
                dp[chosen[t * k + r]] = spec.scale() * (spec.normalize() ? (g - gp / psum) / psum : g);
            }
            float pdp = 0;
            for (int ex = 0; ex < e; ex++) {
                pdp += probs[t * e + ex] * dp[ex];
            }
            for (int ex = 0; ex < e; ex++) {
                float p = probs[t * e + ex];
                float dz = spec.score() == Score.SOFTMAX ? p * (dp[ex] - pdp) : dp[ex] * p * (1 - p);
                for (int c = 0; c < d; c++) {
                    dx[t * d + c] += dz * router[ex * d + c];
                    dRouterLocal[ex * d + c] += dz * x[t * d + c];
                }
            }
        }
        // The router is replicated: its gradient is the sum over every rank's tokens.
        dRouter = exchange.allReduceSum(dRouterLocal);
        return dx;
    }

    private void expertBackward(int l, int row, float[] dyRows, float[] dxRows) {
        int d = spec.dim(), f = spec.hidden();
        float[] dAct = new float[f];
        for (int c = 0; c < d; c++) {
            float g = dyRows[row * d + c];
            for (int j = 0; j < f; j++) {
                float gz = gate[row * f + j];
                dAct[j] += g * down[(l * d + c) * f + j];
                dDown[(l * d + c) * f + j] += g * (silu(gz) * up[row * f + j]);
            }
        }
        for (int j = 0; j < f; j++) {
            float gz = gate[row * f + j], uz = up[row * f + j];
            float sg = (float) (1 / (1 + Math.exp(-gz)));
            float dGate = dAct[j] * uz * sg * (1 + gz * (1 - sg));
            float dUp = dAct[j] * gz * sg;
            int go = (l * 2 * f + j) * d, uo = (l * 2 * f + f + j) * d;
            for (int c = 0; c < d; c++) {
                dxRows[row * d + c] += dGate * gateUp[go + c] + dUp * gateUp[uo + c];
                dGateUp[go + c] += dGate * rows[row * d + c];
                dGateUp[uo + c] += dUp * rows[row * d + c];
            }
        }
    }

    /** [E, D] the router's gradient over every rank's tokens (the same on every rank). */
    public float[] routerGrad() {
        return dRouter;
    }

    /** [L, 2F, D] this rank's experts' gate/up gradients, in local order. */
    public float[] gateUpGrad() {
        return dGateUp;
    }

    /** [L, D, F] this rank's experts' down-projection gradients, in local order. */
    public float[] downGrad() {
        return dDown;
    }

    /** [E] tokens per expert over every rank's batch in the last forward pass. */
    public int[] globalCounts() {
        int[] out = new int[globalCounts.length];
        for (int i = 0; i < out.length; i++) {
            out[i] = Math.round(globalCounts[i]);
        }
        return out;
    }

    /** The last forward pass's dispatch plan. */
    public DispatchPlan lastPlan() {
        return plan;
    }

    /** The last forward pass's receive layout. */
    public ReceiveLayout lastLayout() {
        return layout;
    }
}
