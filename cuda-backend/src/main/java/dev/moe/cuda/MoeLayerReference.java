package dev.moe.cuda;

import dev.moe.cuda.kernels.MoeKernelSource.Score;
import dev.moe.cuda.kernels.MoeKernelSource.Spec;

/**
 * The MoE layer of {@link CudaMoeLayer} written the plain way, in float64, one token at a time
 * (no sorting, no grouping): the independent reference that the GPU results are checked against.
 * Its own backward pass is checked against central differences in the CPU test suite.
 */
public final class MoeLayerReference {

    /** Outputs and the gradients of {@code sum(out · dOut)}; {@code counts} has one entry per routed expert. */
    public record Result(double[] out, double[] dx, double[] dRouter, double[] dGateUp, double[] dDown, int[] counts) {}

    private MoeLayerReference() {}

    public static Result run(Spec s, int tokens, double[] x, double[] router, double[] bias, double[] gateUp, double[] down,
            double[] dOut) {
        int d = s.dim(), f = s.hidden(), e = s.routed(), ffn = s.experts(), k = s.topK();
        double[] out = new double[tokens * d];
        double[] dx = new double[tokens * d];
        double[] dRouter = new double[e * d];
        double[] dGateUp = new double[ffn * 2 * f * d];
        double[] dDown = new double[ffn * d * f];
        int[] counts = new int[e];
        for (int t = 0; t < tokens; t++) {
            int xo = t * d;
            double[] p = new double[e];
            double max = Double.NEGATIVE_INFINITY;
            for (int ex = 0; ex < e; ex++) {
                double z = 0;
                for (int c = 0; c < d; c++) {
                    z += x[xo + c] * router[ex * d + c];
                }
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
                counts[best]++;
            }
            double[] w = new double[k];
            for (int r = 0; r < k; r++) {
                w[r] = s.scale() * (s.normalize() ? p[chosen[r]] / psum : p[chosen[r]]);
            }
            double[] dw = new double[k];
            for (int r = 0; r < k; r++) {
                int ex = chosen[r];
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
                for (int j = 0; j < f; j++) {
                    double gz = 0, uz = 0;
                    int go = (ex * 2 * f + j) * d, uo = (ex * 2 * f + f + j) * d;
                    for (int c = 0; c < d; c++) {
                        gz += gateUp[go + c] * x[xo + c];
                        uz += gateUp[uo + c] * x[xo + c];
                    }
                    gate[j] = gz;
                    up[j] = uz;
                    act[j] = gz / (1 + Math.exp(-gz)) * uz;
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
                    double sg = 1 / (1 + Math.exp(-gate[j]));
                    double dGate = dAct[j] * up[j] * sg * (1 + gate[j] * (1 - sg));
                    double dUp = dAct[j] * gate[j] * sg;
                    int go = (ex * 2 * f + j) * d, uo = (ex * 2 * f + f + j) * d;
                    for (int c = 0; c < d; c++) {
                        dx[xo + c] += dGate * gateUp[go + c] + dUp * gateUp[uo + c];
                        dGateUp[go + c] += dGate * x[xo + c];
                        dGateUp[uo + c] += dUp * x[xo + c];
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
                for (int c = 0; c < d; c++) {
                    dx[xo + c] += dz * router[ex * d + c];
                    dRouter[ex * d + c] += dz * x[xo + c];
                }
            }
        }
        return new Result(out, dx, dRouter, dGateUp, dDown, counts);
    }
}
