package dev.moe.runtime.io;

import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.nio.ByteOrder;
import java.util.Arrays;
import java.util.Objects;

/**
 * A tensor to write: name, dtype, shape, and its elements as little-endian bytes in C order. The
 * factories wrap Java arrays without copying them (on little-endian hardware), so the array must not
 * change until the write returns.
 *
 * <p>The shape array is copied in and out; {@code data} is compared by identity.
 */
public record Tensor(String name, DType dtype, long[] shape, MemorySegment data) {
    private static final boolean LITTLE_ENDIAN_HOST = ByteOrder.nativeOrder() == ByteOrder.LITTLE_ENDIAN;

    public Tensor {
        Objects.requireNonNull(name, "name");
        Objects.requireNonNull(dtype, "dtype");
        Objects.requireNonNull(data, "data");
        shape = shape.clone();
        long numel = 1;
        for (long d : shape) {
            if (d < 0) {
                throw new IllegalArgumentException(
                        "tensor \"" + name + "\": negative dimension in shape " + Arrays.toString(shape));
            }
            numel = Math.multiplyExact(numel, d);
        }
        long bytes = Math.multiplyExact(numel, dtype.byteSize());
        if (data.byteSize() != bytes) {
            throw new IllegalArgumentException("tensor \"" + name + "\": shape " + Arrays.toString(shape)
                    + " of " + dtype + " needs " + bytes + " bytes, data has " + data.byteSize());
        }
    }

    @Override
    public long[] shape() {
        return shape.clone();
    }

    /** An F32 tensor over {@code values} (C order). */
    public static Tensor f32(String name, long[] shape, float[] values) {
        MemorySegment seg;
        if (LITTLE_ENDIAN_HOST) {
            seg = MemorySegment.ofArray(values);
        } else {
            seg = MemorySegment.ofArray(new byte[Math.multiplyExact(values.length, 4)]);
            MemorySegment.copy(values, 0, seg, ValueLayout.JAVA_FLOAT_UNALIGNED.withOrder(ByteOrder.LITTLE_ENDIAN), 0, values.length);
        }
        return new Tensor(name, DType.F32, shape, seg);
    }

    /** An F64 tensor over {@code values} (C order). */
    public static Tensor f64(String name, long[] shape, double[] values) {
        MemorySegment seg;
        if (LITTLE_ENDIAN_HOST) {
            seg = MemorySegment.ofArray(values);
        } else {
            seg = MemorySegment.ofArray(new byte[Math.multiplyExact(values.length, 8)]);
            MemorySegment.copy(values, 0, seg, ValueLayout.JAVA_DOUBLE_UNALIGNED.withOrder(ByteOrder.LITTLE_ENDIAN), 0, values.length);
        }
        return new Tensor(name, DType.F64, shape, seg);
    }

    /** A tensor of any dtype over raw little-endian bytes. */
    public static Tensor of(String name, DType dtype, long[] shape, byte[] littleEndianBytes) {
        return new Tensor(name, dtype, shape, MemorySegment.ofArray(littleEndianBytes));
    }

    /** Bytes of data. */
    public long byteSize() {
        return data.byteSize();
    }

    @Override
    public boolean equals(Object o) {
        return o instanceof Tensor t && name.equals(t.name) && dtype == t.dtype
                && Arrays.equals(shape, t.shape) && data == t.data;
    }

    @Override
    public int hashCode() {
        return Objects.hash(name, dtype, Arrays.hashCode(shape), System.identityHashCode(data));
    }

    @Override
    public String toString() {
        return "Tensor[name=" + name + ", dtype=" + dtype + ", shape=" + Arrays.toString(shape) + "]";
    }
}
