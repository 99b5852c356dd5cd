package dev.moe.runtime.data;

/**
 * SplitMix64 (Steele, Lea and Flood, 2014): a tiny generator whose every output is specified here,
 * so that data is bitwise reproducible on any JVM. Not thread-safe; make one per sequence from a
 * {@linkplain #hash(long...) hashed} seed instead of sharing.
 */
public final class SplitMix64 {
    /** The golden-ratio increment, {@code 2^64 / phi}. */
    public static final long GAMMA = 0x9E3779B97F4A7C15L;

    private long state;

    public SplitMix64(long seed) {
        this.state = seed;
    }

    /** The SplitMix64 output function: a bijective avalanche of 64 bits. */
    public static long mix(long z) {
        z = (z ^ (z >>> 30)) * 0xBF58476D1CE4E5B9L;
        z = (z ^ (z >>> 27)) * 0x94D049BB133111EBL;
        return z ^ (z >>> 31);
    }

    /** A well-mixed seed from several values; order matters. */
    public static long hash(long... parts) {
        long h = 0x6D6F652D64617461L; // "moe-data"
        for (long p : parts) {
            h = mix((h + GAMMA) ^ mix(p + GAMMA));
        }
        return h;
    }

    /** A well-mixed hash of a string's UTF-16 code units. */
    public static long hash(String s) {
        long h = hash(s.length());
        for (int i = 0; i < s.length(); i++) {
            h = mix((h + GAMMA) ^ s.charAt(i));
        }
        return h;
    }

    public long nextLong() {
        state += GAMMA;
        return mix(state);
    }

    /** Uniform in {@code [0, bound)}, without modulo bias. */
    public int nextInt(int bound) {
        if (bound <= 0) {
            throw new IllegalArgumentException("bound must be positive: " + bound);
        }
        long m = bound;
        while (true) {
            long r = nextLong() >>> 1;
            long v = r % m;
            if (r - v + (m - 1) >= 0) {
                return (int) v;
            }
        }
    }

    /** Uniform in {@code [lo, hi]} (both inclusive). */
    public int nextInt(int lo, int hi) {
        if (hi < lo) {
            throw new IllegalArgumentException("empty range " + lo + ".." + hi);
        }
        return lo + nextInt(hi - lo + 1);
    }

    /** Uniform in {@code [0, 1)} with 53 random bits. */
    public double nextDouble() {
        return (nextLong() >>> 11) * 0x1.0p-53;
    }
}
