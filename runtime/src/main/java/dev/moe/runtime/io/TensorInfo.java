package dev.moe.runtime.io;

import java.util.Arrays;
import java.util.Objects;

/**
 * One header entry: a tensor's name, dtype, shape and its byte range {@code [begin, end)} relative
 * to the start of the data buffer (the byte right after the header). Validated entries always have
 * {@code end - begin == numel() * dtype.byteSize()}.
 *
 * <p>Equality compares the shape element-wise. The shape array is copied in and out.
 */
public record TensorInfo(String name, DType dtype, long[] shape, long begin, long end) {
    public TensorInfo {
        Objects.requireNonNull(name, "name");
        Objects.requireNonNull(dtype, "dtype");
        shape = shape.clone();
        if (begin < 0 || end < begin) {
            throw new IllegalArgumentException("bad byte range [" + begin + ", " + end + ")");
        }
    }

    @Override
    public long[] shape() {
        return shape.clone();
    }

    /** The rank (number of dimensions); 0 for a scalar. */
    public int rank() {
        return shape.length;
    }

    /** The number of elements: the product of the shape, 1 for a scalar. */
    public long numel() {
        long n = 1;
        for (long d : shape) {
            n = Math.multiplyExact(n, d);
        }
        return n;
    }

    /** The number of data bytes, {@code end - begin}. */
    public long byteSize() {
        return end - begin;
    }

    @Override
    public boolean equals(Object o) {
        return o instanceof TensorInfo t
                && name.equals(t.name)
                && dtype == t.dtype
                && Arrays.equals(shape, t.shape)
                && begin == t.begin
                && end == t.end;
    }

    @Override
    public int hashCode() {
        return Objects.hash(name, dtype, Arrays.hashCode(shape), begin, end);
    }

    @Override
    public String toString() {
        return "TensorInfo[name=" + name + ", dtype=" + dtype + ", shape=" + Arrays.toString(shape)
                + ", begin=" + begin + ", end=" + end + "]";
    }
}
