package dev.moe.runtime;

/**
 * Element-wise activations of feed-forward networks. {@code SILU} serves SwiGLU, {@code GELU} (the
 * tanh approximation, as GPT-2 and HF's {@code gelu_pytorch_tanh}) serves GeGLU and GELU MLPs.
 */
public enum Activation {
    SILU, GELU, RELU
}
