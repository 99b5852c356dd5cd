package dev.moe.compiler.ir;

/**
 * A count that depends on routing: the least a token can cost, the expectation under uniform routing
 * (every routed expert equally likely), and the most. Equal for dense parts and uniform experts.
 */
public record Count(long min, double expected, long max) {
    public static final Count ZERO = new Count(0, 0, 0);

    public static Count exactly(long n) {
        return new Count(n, n, n);
    }

    public Count plus(Count o) {
        return new Count(min + o.min, expected + o.expected, max + o.max);
    }

    public Count times(long n) {
        return new Count(min * n, expected * n, max * n);
    }

    public boolean fixed() {
        return min == max;
    }
}
