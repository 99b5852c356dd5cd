package dev.moe.compiler.ir;

/**
 * One decoder layer with what it costs.
 *
 * @param params every weight of the layer
 * @param active weights a token runs through (shared and dense fully, routed experts per routing)
 * @param flops forward FLOPs per token (2 per multiply-add, attention over the full context)
 */
public record Layer(int index, Block block, long params, Count active, Count flops) {
}
