package dev.moe.runtime;

import java.util.List;

/**
 * What a generated model class offers the trainer, the sampler and tools. One forward keeps what
 * its backward needs; the next forward replaces it.
 */
public interface TrainableModel {
    /** The model's name as declared in its {@code .moe} file. */
    String name();

    int vocab();

    int context();

    /** Every parameter and buffer, in a fixed order, experts as views. */
    List<Parameter> parameters();

    /** Fills every parameter deterministically from {@code seed} (independent of thread count). */
    void initialize(long seed);

    /** Starts an optimiser step: resets per-step state such as global-batch expert counts. */
    void beginStep();

    /**
     * Tells the model which optimiser step comes next (0-based), so that per-step randomness such as
     * router jitter depends on the step and not on how many steps this instance has seen: a resumed
     * run draws the same noise as an uninterrupted one.
     */
    void setStep(long step);

    /**
     * Training mode (the default) counts expert loads towards the step and applies training-only noise
     * (router jitter); evaluation mode does neither. {@link #lastLogits} always runs in evaluation mode.
     */
    void setTraining(boolean training);

    /**
     * The data domain (or task) of each sequence of the following forwards, in batch order. A model
     * whose MoE has several named gates routes each sequence with the gate named after its domain,
     * and with its first gate where no gate has that name or no domain is given. Models without
     * named gates ignore it.
     */
    default void setDomains(List<String> domains) {}

    /**
     * A padding mask for the following forwards (and {@link #lastLogits}), until replaced:
     * {@code keep[b * seq + t]} false drops token t of sequence b; null (the default) keeps every token.
     * Its length must be {@code batch * seq} of each forward, and it must keep at least one token. A
     * dropped token is no key or value for any other token's attention, is left out of the loss and its
     * mean, of expert capacity and expert choice, of the balancing losses' statistics, of the expert-bias
     * update and of {@link #expertLoads}; its own output is unspecified. So the other tokens' logits and
     * the loss do not depend on a dropped token's id, bit for bit. Models that cannot honour a mask for
     * some feature throw an {@link UnsupportedOperationException} naming it (this default: all of them).
     */
    default void setMask(boolean[] keep) {
        if (keep != null) {
            throw new UnsupportedOperationException(name() + " does not support padding masks");
        }
    }

    /**
     * Runs the forward pass on {@code batch} sequences of {@code seq} tokens and returns the training
     * loss (cross-entropy plus balancing losses); keeps what {@link #backward} needs.
     */
    double forward(int[] inputs, int[] targets, int batch, int seq);

    /** The language-modelling part of the last forward's loss (without balancing terms). */
    double lastCrossEntropy();

    /** Accumulates the gradient of the last forward's loss, scaled by {@code scale}, into the parameters. */
    void backward(float scale);

    /** Ends an optimiser step: updates state that is not trained by gradients (the aux-free expert bias). */
    void endStep();

    /**
     * The expert counts gathered since {@link #beginStep} that {@link #endStep} reads (the aux-free
     * bias update), flattened per MoE layer as [tokens per expert..., slots]; empty for a model with
     * nothing routed. Data parallelism sums them over the ranks and hands them back with
     * {@link #setStepLoads} before {@code endStep}, so that every rank updates the bias from the whole
     * batch's loads and the replicas stay equal.
     */
    default long[] stepLoads() {
        return new long[0];
    }

    /** Replaces the step's expert counts by {@code loads}, laid out as {@link #stepLoads} returns them. */
    default void setStepLoads(long[] loads) {
        if (loads.length != 0) {
            throw new IllegalArgumentException(name() + " keeps no step loads, got " + loads.length);
        }
    }

    /** Logits of the last position of each sequence, [batch, vocab]; no state kept for backward. */
    float[] lastLogits(int[] inputs, int batch, int seq);

    /** Tokens routed to each expert in the last forward, per MoE layer: [moeLayer][expert]. */
    int[][] expertLoads();

    /**
     * Tokens routed to each expert in the last forward, per MoE layer and per sequence of the batch:
     * [moeLayer][sequence][expert]. With the sequences' data domains this gives per-domain routing.
     */
    int[][][] expertLoadsBySequence();

    /**
     * Where the last forward sent each slot, per MoE layer: {@code [layer][token * slotsPerToken + slot]} is the routed
     * expert (FFN, zero, copy or constant), or -1 for a slot that went nowhere (dropped over capacity or by expert choice,
     * an unused top-p slot, a masked token). For comparing two implementations slot by slot; null when a model does not
     * record it.
     */
    default int[][] lastDispatch() {
        return null;
    }

    /** The layer index of each MoE layer of {@link #expertLoads()}. */
    int[] moeLayers();
}
