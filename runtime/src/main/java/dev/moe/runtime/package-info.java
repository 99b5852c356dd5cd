/**
 * The runtime (not built yet; see the code-generation and CPU-runtime issue): tensors, the backend
 * SPI and the CPU backend, AdamW and schedules, safetensors checkpoints, the synthetic corpus and
 * sampling. The module exists now so that the build layout is final; it holds no code until that
 * work lands.
 */
package dev.moe.runtime;
