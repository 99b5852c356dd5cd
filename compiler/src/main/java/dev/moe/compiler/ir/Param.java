package dev.moe.compiler.ir;

import java.util.Arrays;
import java.util.List;

/**
 * One tensor of the model, named as in checkpoints: {@code layers.3.moe.experts.5.up} (shapes are
 * [out, in] for projections).
 */
public record Param(String name, List<Long> shape, Kind kind) {
    public enum Kind {
        /** Trained by the optimiser. */
        WEIGHT,
        /** A weight that does not train (the frozen base FFN under LoRA experts). */
        FROZEN,
        /** State that is not a weight (the aux-free expert bias): not in parameter totals. */
        BUFFER
    }

    public Param {
        shape = List.copyOf(shape);
    }

    public static Param of(String name, long... shape) {
        return new Param(name, Arrays.stream(shape).boxed().toList(), Kind.WEIGHT);
    }

    public static Param frozen(String name, long... shape) {
        return new Param(name, Arrays.stream(shape).boxed().toList(), Kind.FROZEN);
    }

    public static Param buffer(String name, long... shape) {
        return new Param(name, Arrays.stream(shape).boxed().toList(), Kind.BUFFER);
    }

    public boolean trainable() {
        return kind == Kind.WEIGHT;
    }

    public long numel() {
        long n = 1;
        for (long d : shape) {
            n *= d;
        }
        return n;
    }
}
