package dev.moe.compiler.ir;

import java.util.List;

/**
 * A checked model: configuration, layers, every tensor, and what it costs.
 *
 * @param totalParams trainable parameters plus frozen weights (not buffers such as the expert bias)
 * @param activeParams parameters a token runs through, embeddings and head included
 * @param flopsPerToken forward FLOPs per token at full context
 */
public record Model(
        String name,
        ModelConfig config,
        List<Layer> layers,
        List<Param> params,
        long totalParams,
        Count activeParams,
        Count flopsPerToken) {
    public Model {
        layers = List.copyOf(layers);
        params = List.copyOf(params);
    }
}
