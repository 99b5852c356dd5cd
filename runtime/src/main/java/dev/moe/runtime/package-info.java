/**
 * The runtime that generated model classes call: {@link dev.moe.runtime.Backend} (the primitive ops,
 * each with its backward) and its CPU implementation, parameters, the optimiser and training loop
 * ({@code train}), checkpoints ({@code io}) and data ({@code data}).
 */
package dev.moe.runtime;
