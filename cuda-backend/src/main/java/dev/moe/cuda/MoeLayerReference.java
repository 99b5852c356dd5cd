package dev.moe.cuda;

import dev.moe.cuda.kernels.MoeKernelSource.Drop;
import dev.moe.cuda.kernels.MoeKernelSource.ExpertActivation;
import dev.moe.cuda.kernels.MoeKernelSource.Score;
import dev.moe.cuda.kernels.MoeKernelSource.Spec;
import java.util.ArrayList;
import java.util.List;

/**
 * The MoE layer of {@link CudaMoeLayer} written the plain way, in float64, one token at a time
 * (no sorting, no grouping): the independent reference that the GPU results are checked against.
 * Its own backward pass is checked against central differences in the CPU test suite.
 *
 * <p>The experts' activation follows the spec's options (SwiGLU, GEGLU: {@code gateUp [E, 2F, D]},
 * gate rows first; ReLU, GELU: {@code gateUp [E, F, D]}, up rows only; GELU in its tanh form). With a
 * capacity factor, a training run keeps at most ceil(factor · tokens · k / E) slots per expert, by
 * position (the earliest tokens) or by probability (the highest routing weights, ties to the earlier
 * slot), as the CPU class's {@code dropOverCapacity}; a dropped slot adds nothing to the output and its
 * routing weight gets no gradient, and {@code counts} counts the kept slots.
 *
 * <p>MoE++ constant experts (the last routed ones, after the copy experts) output {@code a1 x + a2 v}
 * with {@code [a1, a2] = softmax(W_c x)}, as the CPU class's {@code constantExpert}: vectors {@code [C, D]},
 * mix weights {@code W_c [C, 2, D]}.
 *
 * <p>MoLE's latent experts ({@code spec.expertIn() != spec.dim()}, {@link #runWithRouterInput}) read
 * {@code x [tokens, expertIn]} while the router reads its own input {@code [tokens, D]}.
 */
public final class MoeLayerReference {

    /**
     * Outputs and the gradients of {@code sum(out · dOut)}; {@code counts} has one entry per routed expert (kept slots);
     * {@code selected} and {@code dropped} are each slot's expert and whether it was dropped over capacity ({@code [tokens, k]}).
     * {@code dRouterX} is the gradient of the router's own input when it has one ({@link #runWithRouterInput}), else null (it
     * is part of dx).
     */
    public record Result(double[] out, double[] dx, double[] dRouter, double[] dGateUp, double[] dDown, int[] counts, int[] selected,
            boolean[] dropped, double[] dVectors, double[] dMix, double[] logits, double[] dLogits, double[] dRouterX) {}

    private MoeLayerReference() {}

    private static final double SQRT_2_OVER_PI = Math.sqrt(2.0 / Math.PI);
    private static final double GELU_K = 0.044715;

    /** A training run: capacity drops apply. */
    public static Result run(Spec s, int tokens, double[] x, double[] router, double[] bias, double[] gateUp, double[] down,
            double[] dOut) {
        return run(s, tokens, true, x, router, bias, gateUp, down, dOut);
    }

    static double act(ExpertActivation a, double v) {
        return switch (a) {
            case SWIGLU -> v / (1 + Math.exp(-v));
            case GEGLU, GELU -> 0.5 * v * (1 + Math.tanh(SQRT_2_OVER_PI * (v + GELU_K * v * v * v)));
            case RELU -> Math.max(v, 0);
        };
    }

    static double actDerivative(ExpertActivation a, double v) {
        return switch (a) {
            case SWIGLU -> {
                double sg = 1 / (1 + Math.exp(-v));
                yield sg * (1 + v * (1 - sg));
            }
            case GEGLU, GELU -> {
                double t = Math.tanh(SQRT_2_OVER_PI * (v + GELU_K * v * v * v));
                yield 0.5 * (1 + t) + 0.5 * v * (1 - t * t) * SQRT_2_OVER_PI * (1 + 3 * GELU_K * v * v);
            }
            case RELU -> v > 0 ? 1 : 0;
        };
    }

    /** {@code training}: whether capacity drops apply (inference forwards are dropless). */
    public static Result run(Spec s, int tokens, boolean training, double[] x, double[] router, double[] bias, double[] gateUp,
            double[] down, double[] dOut) {
        return run(s, tokens, training, x, router, bias, gateUp, down, new double[s.constantExperts() * s.dim()],
                new double[s.constantExperts() * 2 * s.dim()], dOut);
    }

    /** A run with constant experts' {@code vectors [C, D]} and {@code mix [C, 2, D]}. */
    public static Result run(Spec s, int tokens, boolean training, double[] x, double[] router, double[] bias, double[] gateUp,
            double[] down, double[] vectors, double[] mix, double[] dOut) {
        return run(s, tokens, training, x, router, bias, gateUp, down, vectors, mix, null, null, dOut);
    }

    /**
     * A run whose router logits add {@code logitOffset [tokens, routed]} (MoE++'s gating residual: the previous layer's logits
     * through its map; null: none) and whose logit gradient adds {@code dLogitsIn [tokens, routed]} (what the next layer's gating
     * residual sends back; null: none). {@link Result#logits} are the logits the router scored, {@link Result#dLogits} their gradient.
     */
    public static Result run(Spec s, int tokens, boolean training, double[] x, double[] router, double[] bias, double[] gateUp,
            double[] down, double[] vectors, double[] mix, double[] logitOffset, double[] dLogitsIn, double[] dOut) {
        return compute(s, tokens, training, x, null, router, bias, gateUp, down, vectors, mix, logitOffset, dLogitsIn, dOut);
    }

    /**
     * A run whose experts read {@code x [tokens, expertIn]} and whose router reads {@code routerX [tokens, D]} (MoLE's latent
     * experts read the layer's shared down-projection; copy and constant experts read x, as wide as the output then):
     * {@link Result#dx} is x's gradient,
     * {@link Result#dRouterX} the router input's.
     */
    public static Result runWithRouterInput(Spec s, int tokens, boolean training, double[] x, double[] routerX, double[] router, double[] bias,
            double[] gateUp, double[] down, double[] dOut) {
        return compute(s, tokens, training, x, routerX, router, bias, gateUp, down, new double[s.constantExperts() * s.dim()],
                new double[s.constantExperts() * 2 * s.dim()], null, null, dOut);
    }

    private static Result compute(Spec s, int tokens, boolean training, double[] x, double[] routerX, double[] router, double[] bias,
            double[] gateUp, double[] down, double[] vectors, double[] mix, double[] logitOffset, double[] dLogitsIn, double[] dOut) {
        int d = s.dim(), in = s.expertIn(), f = s.hidden(), e = s.routed(), ffn = s.experts(), k = s.topK();
        if (routerX == null && in != d) {
            throw new IllegalArgumentException("experts " + in + " wide read another input than the router's: runWithRouterInput");
        }
        ExpertActivation activation = s.options().activation();
        boolean gated = activation.gated;
        int gw = gated ? 2 * f : f;
        double[] out = new double[tokens * d];
        double[] dx = new double[tokens * in];
        // the router's input and its gradient: x's own unless the router has its own input
        double[] rx = routerX == null ? x : routerX;
        double[] dRouterX = routerX == null ? null : new double[tokens * d];
        double[] drx = routerX == null ? dx : dRouterX;
        double[] dRouter = new double[e * d];
        double[] dGateUp = new double[ffn * gw * in];
        double[] dDown = new double[ffn * d * f];
        int[] counts = new int[e];
        int c0 = s.firstConstant();
        double[] dVectors = new double[s.constantExperts() * d];
        double[] dMix = new double[s.constantExperts() * 2 * d];
        double[] logits = new double[tokens * e];
        double[] dLogits = new double[tokens * e];
        // routing of every token first: capacity compares slots across tokens
        double[][] probs = new double[tokens][];
        int[][] chosenOf = new int[tokens][];
        double[] psumOf = new double[tokens];
        double[][] weightOf = new double[tokens][];
        for (int t = 0; t < tokens; t++) {
            int xo = t * d;
            double[] p = new double[e];
            double max = Double.NEGATIVE_INFINITY;
            for (int ex = 0; ex < e; ex++) {
                double z = 0;
                for (int c = 0; c < d; c++) {
                    z += rx[xo + c] * router[ex * d + c];
                }
                if (logitOffset != null) {
                    z += logitOffset[t * e + ex];
                }
                logits[t * e + ex] = z;
                p[ex] = z;
                max = Math.max(max, z);
            }
            if (s.score() == Score.SOFTMAX) {
                double sum = 0;
                for (int ex = 0; ex < e; ex++) {
                    p[ex] = Math.exp(p[ex] - max);
                    sum += p[ex];
                }
                for (int ex = 0; ex < e; ex++) {
                    p[ex] /= sum;
                }
            } else {
                for (int ex = 0; ex < e; ex++) {
                    p[ex] = 1 / (1 + Math.exp(-p[ex]));
                }
            }
            // top-k by p + bias; ties go to the lower expert.
            int[] chosen = new int[k];
            boolean[] taken = new boolean[e];
            double psum = 0;
            for (int r = 0; r < k; r++) {
                int best = -1;
                for (int ex = 0; ex < e; ex++) {
                    double v = p[ex] + (s.bias() ? bias[ex] : 0);
                    if (!taken[ex] && (best < 0 || v > p[best] + (s.bias() ? bias[best] : 0))) {
                        best = ex;
                    }
                }
                taken[best] = true;
                chosen[r] = best;
                psum += p[best];
            }
            double[] w = new double[k];
            for (int r = 0; r < k; r++) {
                w[r] = s.scale() * (s.normalize() ? p[chosen[r]] / psum : p[chosen[r]]);
            }
            probs[t] = p;
            chosenOf[t] = chosen;
            psumOf[t] = psum;
            weightOf[t] = w;
        }
        boolean[] dropped = new boolean[tokens * k];
        if (training && s.options().capacityFactor() > 0) {
            if (e != ffn) {
                throw new IllegalArgumentException("a capacity factor with zero or copy experts is not supported");
            }
            int capacity = CudaMoeLayer.capacity(s, tokens);
            for (int ex = 0; ex < ffn; ex++) {
                List<Integer> slots = new ArrayList<>();
                for (int i = 0; i < tokens * k; i++) {
                    if (chosenOf[i / k][i % k] == ex) {
                        slots.add(i);
                    }
                }
                if (s.options().drop() == Drop.PROBABILITY) {
                    slots.sort((a, b) -> {
                        double wa = weightOf[a / k][a % k], wb = weightOf[b / k][b % k];
                        return wa != wb ? Double.compare(wb, wa) : Integer.compare(a, b);
                    });
                } else if (s.options().drop() == Drop.RANDOM) {
                    // the layer's default seed, 0 (GpuChecks does not set one)
                    float[] priority = CudaMoeLayer.dropPriorities(0L, tokens * k);
                    slots.sort((a, b) -> priority[a] != priority[b] ? Float.compare(priority[b], priority[a]) : Integer.compare(a, b));
                }
                for (int j = capacity; j < slots.size(); j++) {
                    dropped[slots.get(j)] = true;
                }
            }
        }
        for (int t = 0; t < tokens; t++) {
            int xo = t * d;
            double[] p = probs[t];
            int[] chosen = chosenOf[t];
            double psum = psumOf[t];
            double[] w = weightOf[t];
            for (int r = 0; r < k; r++) {
                if (!dropped[t * k + r]) {
                    counts[chosen[r]]++;
                }
            }
            double[] dw = new double[k];
            for (int r = 0; r < k; r++) {
                int ex = chosen[r];
                if (dropped[t * k + r]) {
                    continue; // over capacity: no output, no gradient through its weight
                }
                if (ex >= c0) {
                    // constant expert j: [a1, a2] = softmax(W_c x), y = a1 x + a2 v
                    int j = ex - c0, wo = j * 2 * d, vo = j * d;
                    double z1 = 0, z2 = 0;
                    for (int c = 0; c < d; c++) {
                        z1 += mix[wo + c] * x[xo + c];
                        z2 += mix[wo + d + c] * x[xo + c];
                    }
                    double top = Math.max(z1, z2), e1 = Math.exp(z1 - top), e2 = Math.exp(z2 - top);
                    double a1 = e1 / (e1 + e2), a2 = e2 / (e1 + e2);
                    double dot = 0, da1 = 0, da2 = 0;
                    for (int c = 0; c < d; c++) {
                        double y = a1 * x[xo + c] + a2 * vectors[vo + c];
                        out[xo + c] += w[r] * y;
                        dot += dOut[xo + c] * y;
                        da1 += w[r] * dOut[xo + c] * x[xo + c];
                        da2 += w[r] * dOut[xo + c] * vectors[vo + c];
                    }
                    dw[r] = dot;
                    double mean = a1 * da1 + a2 * da2, dz1 = a1 * (da1 - mean), dz2 = a2 * (da2 - mean);
                    for (int c = 0; c < d; c++) {
                        double dy = w[r] * dOut[xo + c];
                        dx[xo + c] += a1 * dy + dz1 * mix[wo + c] + dz2 * mix[wo + d + c];
                        dVectors[vo + c] += a2 * dy;
                        dMix[wo + c] += dz1 * x[xo + c];
                        dMix[wo + d + c] += dz2 * x[xo + c];
                    }
                    continue;
                }
                if (ex >= ffn) {
                    // zero expert: outputs 0 (no gradient but through its routing weight, which is 0 here);
                    // copy expert: outputs x
                    if (ex >= ffn + s.zeroExperts()) {
                        double dot = 0;
                        for (int c = 0; c < d; c++) {
                            out[xo + c] += w[r] * x[xo + c];
                            dot += dOut[xo + c] * x[xo + c];
                            dx[xo + c] += w[r] * dOut[xo + c];
                        }
                        dw[r] = dot;
                    }
                    continue;
                }
                double[] gate = new double[f], up = new double[f], act = new double[f];
                int xi = t * in; // the experts' input row
                for (int j = 0; j < f; j++) {
                    double gz = 0, uz = 0;
                    int go = (ex * gw + j) * in, uo = (ex * gw + (gated ? f : 0) + j) * in;
                    for (int c = 0; c < in; c++) {
                        if (gated) {
                            gz += gateUp[go + c] * x[xi + c];
                        }
                        uz += gateUp[uo + c] * x[xi + c];
                    }
                    gate[j] = gz;
                    up[j] = uz;
                    act[j] = gated ? act(activation, gz) * uz : act(activation, uz);
                }
                double[] y = new double[d];
                for (int c = 0; c < d; c++) {
                    double v = 0;
                    for (int j = 0; j < f; j++) {
                        v += down[(ex * d + c) * f + j] * act[j];
                    }
                    y[c] = v;
                    out[xo + c] += w[r] * v;
                }
                // backward through this slot
                double dot = 0;
                double[] dy = new double[d];
                for (int c = 0; c < d; c++) {
                    dot += dOut[xo + c] * y[c];
                    dy[c] = w[r] * dOut[xo + c];
                }
                dw[r] = dot;
                double[] dAct = new double[f];
                for (int c = 0; c < d; c++) {
                    for (int j = 0; j < f; j++) {
                        dAct[j] += dy[c] * down[(ex * d + c) * f + j];
                        dDown[(ex * d + c) * f + j] += dy[c] * act[j];
                    }
                }
                for (int j = 0; j < f; j++) {
                    double dGate = gated ? dAct[j] * up[j] * actDerivative(activation, gate[j]) : 0;
                    double dUp = gated ? dAct[j] * act(activation, gate[j]) : dAct[j] * actDerivative(activation, up[j]);
                    int go = (ex * gw + j) * in, uo = (ex * gw + (gated ? f : 0) + j) * in;
                    for (int c = 0; c < in; c++) {
                        if (gated) {
                            dx[xi + c] += dGate * gateUp[go + c];
                            dGateUp[go + c] += dGate * x[xi + c];
                        }
                        dx[xi + c] += dUp * gateUp[uo + c];
                        dGateUp[uo + c] += dUp * x[xi + c];
                    }
                }
            }
            // routing weights -> scores -> logits
            double[] dp = new double[e];
            double gp = 0;
            for (int r = 0; r < k; r++) {
                gp += dw[r] * p[chosen[r]];
            }
            for (int r = 0; r < k; r++) {
                dp[chosen[r]] = s.scale() * (s.normalize() ? (dw[r] - gp / psum) / psum : dw[r]);
            }
            double pdp = 0;
            for (int ex = 0; ex < e; ex++) {
                pdp += p[ex] * dp[ex];
            }
            for (int ex = 0; ex < e; ex++) {
                double dz = s.score() == Score.SOFTMAX ? p[ex] * (dp[ex] - pdp) : dp[ex] * p[ex] * (1 - p[ex]);
                if (dLogitsIn != null) {
                    dz += dLogitsIn[t * e + ex];
                }
                dLogits[t * e + ex] = dz;
                for (int c = 0; c < d; c++) {
                    drx[xo + c] += dz * router[ex * d + c];
                    dRouter[ex * d + c] += dz * rx[xo + c];
                }
            }
        }
        int[] selected = new int[tokens * k];
        for (int i = 0; i < selected.length; i++) {
            selected[i] = chosenOf[i / k][i % k];
        }
        return new Result(out, dx, dRouter, dGateUp, dDown, counts, selected, dropped, dVectors, dMix, logits, dLogits, dRouterX);
    }
}
