package dev.moe.runtime;

import java.util.Arrays;

/**
 * A named tensor of a model and its gradient: the unit that the optimiser, checkpoints and
 * {@code trainable} patterns work on. Names follow the compiler's IR ({@code layers.3.moe.router.weight}).
 *
 * <p>A parameter may be a view of {@code size} elements at {@code offset} in a larger array: the
 * experts of an MoE layer are packed in one array ([experts, out, in]) for grouped matmuls, and each
 * expert's projection is a view with its own name.
 *
 * @param grad null for buffers (the expert bias), which no gradient reaches
 * @param trainable whether the optimiser updates it; frozen parameters still receive gradients
 */
public record Parameter(String name, int[] shape, float[] value, float[] grad, int offset, int size, boolean trainable) {
    public Parameter {
        shape = shape.clone();
        int n = 1;
        for (int d : shape) {
            n = Math.multiplyExact(n, d);
        }
        if (n != size || offset < 0 || offset + size > value.length || (grad != null && grad.length != value.length)) {
            throw new IllegalArgumentException("bad parameter view " + name + Arrays.toString(shape) + " at " + offset);
        }
    }

    /** A parameter with arrays of its own. */
    public static Parameter of(String name, int... shape) {
        int n = 1;
        for (int d : shape) {
            n = Math.multiplyExact(n, d);
        }
        return new Parameter(name, shape, new float[n], new float[n], 0, n, true);
    }

    /** A buffer: state saved in checkpoints that no gradient reaches. */
    public static Parameter buffer(String name, int... shape) {
        int n = 1;
        for (int d : shape) {
            n = Math.multiplyExact(n, d);
        }
        return new Parameter(name, shape, new float[n], null, 0, n, false);
    }

    /** A view of {@code packed} (and its gradient) at {@code offset}. */
    public static Parameter view(String name, float[] packed, float[] packedGrad, int offset, int... shape) {
        int n = 1;
        for (int d : shape) {
            n = Math.multiplyExact(n, d);
        }
        return new Parameter(name, shape, packed, packedGrad, offset, n, true);
    }

    public Parameter withTrainable(boolean trainable) {
        return new Parameter(name, shape, value, grad, offset, size, trainable && grad != null);
    }

    public boolean isBuffer() {
        return grad == null;
    }

    public void zeroGrad() {
        if (grad != null) {
            Arrays.fill(grad, offset, offset + size, 0f);
        }
    }

    /** A copy of the values (for checkpoints and tests). */
    public float[] values() {
        return Arrays.copyOfRange(value, offset, offset + size);
    }

    public void load(float[] data) {
        if (data.length != size) {
            throw new IllegalArgumentException(name + ": expected " + size + " values, got " + data.length);
        }
        System.arraycopy(data, 0, value, offset, size);
    }

    @Override
    public String toString() {
        return name + Arrays.toString(shape);
    }
}
