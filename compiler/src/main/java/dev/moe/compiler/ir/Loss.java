package dev.moe.compiler.ir;

/** A balancing loss of an MoE layer. */
public sealed interface Loss {
    enum Scope { MICRO_BATCH, SEQUENCE, GLOBAL_BATCH }

    /** Switch/GShard load balancing, {@code E * sum f_i P_i}; zero-compute experts weighted by {@code tau}. */
    record Aux(double coef, Scope scope, double tau) implements Loss {}

    /** Router z-loss: mean of logsumexp(logits)^2. */
    record ZLoss(double coef) implements Loss {}

    /** Entropy of the routing distribution (dynamic top-p routing pushes it down). */
    record Entropy(double coef) implements Loss {}

    /** DeepSeekMoE device-level balance over {@code groups} equal groups of experts. */
    record Device(double coef, int groups) implements Loss {}
}
