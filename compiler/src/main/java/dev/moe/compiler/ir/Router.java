package dev.moe.compiler.ir;

import java.util.Optional;

/**
 * How an MoE layer chooses experts, with every option resolved.
 *
 * @param name the gate's name when an MoE has several (chosen per batch by data domain or task)
 * @param scale the routed scaling factor applied to the combined routed output
 * @param jitter multiplicative input noise amplitude during training (0 = off)
 * @param pregate routing computed once from the embeddings for every layer (Read-ME)
 */
public record Router(
        Optional<String> name,
        Score score,
        Order order,
        Selection selection,
        boolean normalize,
        double scale,
        Optional<ExpertBias> bias,
        Optional<GroupLimit> groupLimit,
        Optional<Integer> quotaGroups,
        double jitter,
        Optional<Temperature> temperature,
        boolean gatingResidual,
        Optional<Integer> recurrentWidth,
        boolean pregate,
        Capacity capacity) {

    public enum Score { SOFTMAX, SIGMOID }

    /** Softmax over all experts then top-k, or top-k of the logits then softmax over those k. */
    public enum Order { SOFTMAX_THEN_TOPK, TOPK_THEN_SOFTMAX }

    public sealed interface Selection {
        record TopK(int k) implements Selection {}

        /** Smallest set with probability mass at least {@code p}, at most {@code maxK} experts. */
        record TopP(double p, int maxK) implements Selection {}

        /** Each expert picks its top {@code factor * T / E} tokens: a token gets {@code factor} experts on average. */
        record ExpertChoice(double factor) implements Selection {}

        /** Every expert, weighted by the router's probabilities (BAM's soft mixture). */
        record Soft() implements Selection {}
    }

    /** Aux-loss-free balancing: a bias added to scores for selection only, updated by {@code rate}. */
    public record ExpertBias(double rate) {}

    /** Keep the best {@code top} of {@code groups} equal expert groups, then top-k inside them. */
    public record GroupLimit(int groups, int top) {}

    /** Softmax temperature annealed from {@code start} to {@code end} over {@code steps} (dense to sparse). */
    public record Temperature(double start, double end, long steps, Optional<String> activation) {}

    public sealed interface Capacity {
        record Dropless() implements Capacity {}

        record Factor(double factor, DropPolicy drop) implements Capacity {}
    }

    public enum DropPolicy { PROBABILITY, POSITION, RANDOM }

    public boolean isTopK(int k) {
        return selection instanceof Selection.TopK t && t.k() == k;
    }
}
