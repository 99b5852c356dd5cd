package dev.moe.cuda;

import static com.google.common.truth.Truth.assertWithMessage;

import dev.moe.cuda.kernels.MoeKernelSource.Precision;
import dev.moe.cuda.kernels.MoeKernelSource.Score;
import dev.moe.cuda.kernels.MoeKernelSource.Spec;
import java.util.Random;
import org.junit.jupiter.api.Test;

/** The float64 reference that GPU results are judged by must itself be right: central differences. */
class MoeLayerReferenceTest {

    @Test
    void softmaxNormalizedGradientsMatchCentralDifferences() {
        check(new Spec(6, 5, 4, 2, Score.SOFTMAX, true, 1f, false, Precision.FP32), 3);
    }

    @Test
    void sigmoidScaledWithBiasGradientsMatchCentralDifferences() {
        check(new Spec(5, 4, 6, 3, Score.SIGMOID, true, 2.5f, true, Precision.FP32), 3);
    }

    @Test
    void zeroAndCopyExpertsGradientsMatchCentralDifferences() {
        check(new Spec(5, 4, 3, 2, 2, 3, Score.SOFTMAX, true, 1f, false, Precision.FP32), 4);
        check(new Spec(4, 3, 2, 1, 3, 2, Score.SIGMOID, false, 1f, true, Precision.FP32), 4);
    }

    @Test
    void unnormalizedTopOneGradientsMatchCentralDifferences() {
        check(new Spec(4, 3, 3, 1, Score.SOFTMAX, false, 1f, false, Precision.FP32), 4);
    }

    private static void check(Spec s, int tokens) {
        Random r = new Random(7);
        double[] x = gaussian(r, tokens * s.dim()), router = gaussian(r, s.routed() * s.dim()),
                gateUp = gaussian(r, s.experts() * 2 * s.hidden() * s.dim()), down = gaussian(r, s.experts() * s.dim() * s.hidden()),
                dOut = gaussian(r, tokens * s.dim());
        double[] bias = s.bias() ? gaussian(r, s.routed()) : null;
        MoeLayerReference.Result res = MoeLayerReference.run(s, tokens, x, router, bias, gateUp, down, dOut);
        compare("dx", res.dx(), x, () -> loss(s, tokens, x, router, bias, gateUp, down, dOut));
        compare("dRouter", res.dRouter(), router, () -> loss(s, tokens, x, router, bias, gateUp, down, dOut));
        compare("dGateUp", res.dGateUp(), gateUp, () -> loss(s, tokens, x, router, bias, gateUp, down, dOut));
        compare("dDown", res.dDown(), down, () -> loss(s, tokens, x, router, bias, gateUp, down, dOut));
    }

    private static double loss(Spec s, int tokens, double[] x, double[] router, double[] bias, double[] gateUp, double[] down,
            double[] dOut) {
        double[] out = MoeLayerReference.run(s, tokens, x, router, bias, gateUp, down, dOut).out();
        double l = 0;
        for (int i = 0; i < out.length; i++) {
            l += out[i] * dOut[i];
        }
        return l;
    }

    private static void compare(String what, double[] analytic, double[] param, java.util.function.DoubleSupplier loss) {
        double h = 1e-6;
        for (int i = 0; i < param.length; i++) {
            double saved = param[i];
            param[i] = saved + h;
            double up = loss.getAsDouble();
            param[i] = saved - h;
            double downV = loss.getAsDouble();
            param[i] = saved;
            double num = (up - downV) / (2 * h);
            assertWithMessage("%s[%s]", what, i).that(Math.abs(analytic[i] - num)).isAtMost(1e-5 + 1e-3 * Math.abs(num));
        }
    }

    private static double[] gaussian(Random r, int n) {
        double[] v = new double[n];
        for (int i = 0; i < n; i++) {
            v[i] = r.nextGaussian();
        }
        return v;
    }
}
