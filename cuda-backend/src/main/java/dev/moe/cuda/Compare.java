package dev.moe.cuda;

import java.util.Random;

/** What the GPU checks share: seeded inputs and the relative error they are judged by. */
final class Compare {
    private Compare() {}

    /** Normal(0, 1) values from {@code rnd}. */
    static float[] gaussian(Random rnd, int n) {
        return gaussian(rnd, n, 1f, false);
    }

    /** Normal(0, std) values, rounded to what bf16 storage keeps when asked. */
    static float[] gaussian(Random rnd, int n, float std, boolean roundToBf16) {
        float[] out = new float[n];
        for (int i = 0; i < n; i++) {
            float v = (float) (rnd.nextGaussian() * std);
            out[i] = roundToBf16 ? Bf16.round(v) : v;
        }
        return out;
    }

    static double[] doubles(float[] v) {
        double[] out = new double[v.length];
        for (int i = 0; i < v.length; i++) {
            out[i] = v[i];
        }
        return out;
    }

    /** ‖got − want‖ / ‖want‖ (or the absolute norm when {@code want} is zero). */
    static double rel(float[] got, double[] want) {
        double num = 0, den = 0;
        for (int i = 0; i < want.length; i++) {
            double d = got[i] - want[i];
            num += d * d;
            den += want[i] * want[i];
        }
        return den == 0 ? Math.sqrt(num) : Math.sqrt(num / den);
    }

    static double rel(float[] got, float[] want) {
        return rel(got, doubles(want));
    }
}
