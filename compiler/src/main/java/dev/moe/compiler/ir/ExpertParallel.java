package dev.moe.compiler.ir;

import java.util.List;

/**
 * A train block's {@code parallel { ... }}: expert parallelism over {@code ranks} GPUs, and which rank
 * holds each routed expert of each MoE layer.
 *
 * @param layers one entry per MoE layer (a layer whose ffn is an MoE), in layer order: the order of a
 *     run's {@code expert_loads} and of the layers of {@code moe placement --json}
 */
public record ExpertParallel(int ranks, List<LayerPlacement> layers) {
    public ExpertParallel {
        if (ranks < 1) {
            throw new IllegalArgumentException("ranks must be at least 1, got " + ranks);
        }
        layers = List.copyOf(layers);
    }

    /** How a layer's placement was declared (for {@code moe info}; the lists are what counts). */
    public enum Source {
        /** {@code experts contiguous}, or no line for the layer: rank r holds a block of consecutive experts. */
        CONTIGUOUS,
        /** {@code experts per_rank([[...], ...])}. */
        LISTED,
        /** {@code experts file("placement.json")}, as {@code moe placement --json} writes it. */
        FILE
    }

    /**
     * @param layer the layer's index in the model
     * @param moe the name of the layer's MoE
     * @param experts its routed experts
     * @param expertsOfRank rank r's experts, ascending; together every routed expert exactly once
     */
    public record LayerPlacement(int layer, String moe, int experts, Source source, List<List<Integer>> expertsOfRank) {
        public LayerPlacement {
            expertsOfRank = expertsOfRank.stream().map(List::copyOf).toList();
        }
    }

    /**
     * Contiguous blocks: rank r holds experts [r·E/R, (r+1)·E/R) when R divides E; otherwise the first
     * E mod R ranks hold one expert more. The same blocks as the CUDA backend's
     * {@code ExpertPlacement.contiguous}.
     */
    public static List<List<Integer>> contiguous(int experts, int ranks) {
        List<List<Integer>> out = new java.util.ArrayList<>();
        int next = 0;
        for (int r = 0; r < ranks; r++) {
            int n = experts / ranks + (r < experts % ranks ? 1 : 0);
            List<Integer> block = new java.util.ArrayList<>();
            for (int e = next; e < next + n; e++) {
                block.add(e);
            }
            out.add(List.copyOf(block));
            next += n;
        }
        return List.copyOf(out);
    }
}
