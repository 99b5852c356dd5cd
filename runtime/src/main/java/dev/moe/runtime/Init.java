package dev.moe.runtime;

import java.nio.charset.StandardCharsets;

/**
 * Deterministic initialisation: each parameter's values depend only on the seed and the
 * parameter's name, never on the order of initialisation or the number of threads.
 */
public final class Init {
    private Init() {}

    /** Normal(0, std) values. */
    public static void normal(Parameter p, long seed, double std) {
        SplitMix rng = new SplitMix(seed ^ fnv1a(p.name()));
        for (int i = 0; i < p.size(); i++) {
            p.value()[p.offset() + i] = (float) (rng.gaussian() * std);
        }
    }

    public static void constant(Parameter p, float v) {
        java.util.Arrays.fill(p.value(), p.offset(), p.offset() + p.size(), v);
    }

    static long fnv1a(String s) {
        long h = 0xcbf29ce484222325L;
        for (byte b : s.getBytes(StandardCharsets.UTF_8)) {
            h ^= b & 0xff;
            h *= 0x100000001b3L;
        }
        return h;
    }

    /** SplitMix64 with Box-Muller: small, fast, and the same bits on every JVM. */
    public static final class SplitMix {
        private long state;
        private double spare = Double.NaN;

        public SplitMix(long seed) {
            this.state = seed;
        }

        public long nextLong() {
            long z = (state += 0x9E3779B97F4A7C15L);
            z = (z ^ (z >>> 30)) * 0xBF58476D1CE4E5B9L;
            z = (z ^ (z >>> 27)) * 0x94D049BB133111EBL;
            return z ^ (z >>> 31);
        }

        /** Uniform in [0, 1). */
        public double nextDouble() {
            return (nextLong() >>> 11) * 0x1.0p-53;
        }

        public double gaussian() {
            if (!Double.isNaN(spare)) {
                double s = spare;
                spare = Double.NaN;
                return s;
            }
            double u1 = Math.max(nextDouble(), 1e-300);
            double u2 = nextDouble();
            double r = Math.sqrt(-2 * Math.log(u1));
            spare = r * Math.sin(2 * Math.PI * u2);
            return r * Math.cos(2 * Math.PI * u2);
        }

        public long state() {
            return state;
        }
    }
}
