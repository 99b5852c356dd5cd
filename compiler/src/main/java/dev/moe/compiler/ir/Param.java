package dev.moe.compiler.ir;

import java.util.List;

/**
 * One tensor of the model, named as in checkpoints: {@code layers.3.moe.experts.5.up}.
 *
 * @param trainable false for buffers that the optimiser does not update (expert bias, frozen LoRA base)
 */
public record Param(String name, List<Long> shape, boolean trainable) {
    public Param {
        shape = List.copyOf(shape);
    }

    public static Param of(String name, long... shape) {
        return new Param(name, java.util.Arrays.stream(shape).boxed().toList(), true);
    }

    public static Param buffer(String name, long... shape) {
        return new Param(name, java.util.Arrays.stream(shape).boxed().toList(), false);
    }

    public long numel() {
        long n = 1;
        for (long d : shape) {
            n *= d;
        }
        return n;
    }
}
