package dev.moe.compiler.ir;

/** A feed-forward network: {@code swiglu(hidden: 512)}. No biases. */
public record Ffn(Activation activation, int hidden) {
    public enum Activation {
        SWIGLU(true), GEGLU(true), GELU(false), RELU(false);

        private final boolean gated;

        Activation(boolean gated) {
            this.gated = gated;
        }

        /** Gated (GLU) variants have a gate projection next to the up projection. */
        public boolean gated() {
            return gated;
        }

        public String keyword() {
            return name().toLowerCase(java.util.Locale.ROOT);
        }
    }

    /** Weight count for input and output width {@code dim}: gate (GLU only), up, down. */
    public long params(long dim) {
        return (activation.gated() ? 3L : 2L) * dim * hidden;
    }

    @Override
    public String toString() {
        return activation.keyword() + "(hidden: " + hidden + ")";
    }
}
