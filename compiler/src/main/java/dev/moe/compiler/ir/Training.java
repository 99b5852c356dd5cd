package dev.moe.compiler.ir;

import java.util.List;
import java.util.Map;
import java.util.Optional;

/**
 * A checked {@code train} block: what to train, how, on what, in which stages.
 *
 * @param padDocuments {@code documents pad}: each sequence one document from its start, padding masked out
 * @param expertsPerRank routed experts per GPU of an expert-parallel group ({@code experts_per_rank});
 *     0 when not declared (every rank holds every expert)
 * @param parallel the {@code parallel} block: the ranks of expert parallelism and each MoE layer's placement
 */
public record Training(
        String model,
        Optimizer optimizer,
        Schedule schedule,
        int batch,
        int globalBatch,
        long steps,
        long seed,
        double gradClip,
        Data data,
        Map<String, String> domains,
        List<Stage> stages,
        boolean padDocuments,
        int expertsPerRank,
        Optional<ExpertParallel> parallel) {
    /** An unmodifiable copy that iterates in {@code m}'s order. */
    static <K, V> Map<K, V> ordered(Map<K, V> m) {
        return java.util.Collections.unmodifiableMap(new java.util.LinkedHashMap<>(m));
    }

    /** A block of streamed documents without an expert placement: every rank holds every expert. */
    public Training(String model, Optimizer optimizer, Schedule schedule, int batch, int globalBatch, long steps, long seed, double gradClip,
            Data data, Map<String, String> domains, List<Stage> stages) {
        this(model, optimizer, schedule, batch, globalBatch, steps, seed, gradClip, data, domains, stages, false, 0, Optional.empty());
    }

    /** A block without an expert placement. */
    public Training(String model, Optimizer optimizer, Schedule schedule, int batch, int globalBatch, long steps, long seed, double gradClip,
            Data data, Map<String, String> domains, List<Stage> stages, boolean padDocuments) {
        this(model, optimizer, schedule, batch, globalBatch, steps, seed, gradClip, data, domains, stages, padDocuments, 0, Optional.empty());
    }

    /** A block of streamed documents. */
    public Training(String model, Optimizer optimizer, Schedule schedule, int batch, int globalBatch, long steps, long seed, double gradClip,
            Data data, Map<String, String> domains, List<Stage> stages, int expertsPerRank) {
        this(model, optimizer, schedule, batch, globalBatch, steps, seed, gradClip, data, domains, stages, false, expertsPerRank, Optional.empty());
    }

    /** A block without a {@code parallel} block. */
    public Training(String model, Optimizer optimizer, Schedule schedule, int batch, int globalBatch, long steps, long seed, double gradClip,
            Data data, Map<String, String> domains, List<Stage> stages, boolean padDocuments, int expertsPerRank) {
        this(model, optimizer, schedule, batch, globalBatch, steps, seed, gradClip, data, domains, stages, padDocuments, expertsPerRank,
                Optional.empty());
    }

    public Training {
        domains = ordered(domains);
        stages = List.copyOf(stages);
    }

    public record Optimizer(String kind, double lr, double beta1, double beta2, double eps, double weightDecay) {}

    /** {@code constant}, or {@code cosine}/{@code linear} decay to {@code minLr} after {@code warmup} steps. */
    public record Schedule(String kind, long warmup, double minLr) {}

    /** Shares of each domain per batch; a single synthetic domain when the recipe gives none. */
    public record Data(Map<String, Double> mixture) {
        public Data {
            // In the recipe's order: Map.copyOf's order changes from JVM to JVM, and with it which batch a seed gives
            // (a resumed run or another rank would draw other data).
            mixture = ordered(mixture);
        }
    }

    /**
     * @param trainable name patterns of the parameters that train (empty = all)
     * @param init where the stage starts from
     */
    public record Stage(String name, long steps, Optional<Data> data, List<String> trainable, Optional<Double> lr,
            Optional<Schedule> schedule, Init init) {
        public Stage {
            trainable = List.copyOf(trainable);
        }
    }

    /** The checkpoint an upcycling step reads. */
    public sealed interface Source {
        /** A checkpoint file, relative to the recipe's directory. */
        record File(String path) implements Source {}

        /** The checkpoint that the train block of {@code model}, earlier in the same file, writes in the same run. */
        record Run(String model) implements Source {}
    }

    /** Where a stage's weights come from. */
    public sealed interface Init {
        record Scratch() implements Init {}

        record Previous() implements Init {}

        /** Every weight from a checkpoint with the target's tensors (a file, or an earlier block's run of a model of the same shape). */
        record Checkpoint(Source from) implements Init {}

        /** Every expert a copy of the dense FFN, with optional relative noise. */
        record Copy(Source from, String model, double noise) implements Init {}

        /** Expert j takes hidden units j*h/m..(j+1)*h/m of the dense FFN. */
        record Split(Source from, String model, int parts) implements Init {}

        /** Several dense specialists' FFNs become experts; their attentions experts or averaged. */
        record Merge(List<Source> from, String model, String attention, boolean sharedKv) implements Init {}

        /** Grow a smaller dense model into a wider or deeper one, function-preserving. */
        record ScaleUp(Source from, String model) implements Init {}

        /** Add {@code add} experts (and router rows) to a trained MoE; old experts frozen. */
        record Extend(Source from, String model, int add) implements Init {}

        /** Spawn {@code into} experts from expert {@code expert} with random masking. */
        record Diversify(Source from, String model, int expert, int into, double mask) implements Init {}
    }
}
