package dev.moe.runtime.io;

import java.io.Closeable;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.DoubleBuffer;
import java.nio.FloatBuffer;
import java.nio.file.Path;
import java.util.Collections;
import java.util.Map;
import java.util.SequencedMap;

/**
 * An open, fully validated safetensors file. The file is memory-mapped; tensor bytes are paged in
 * only when a tensor is read. Views ({@link #segment}, {@link #f32Buffer}, ...) are read-only and
 * become unusable after {@link #close()} (accessing them then throws {@link IllegalStateException}).
 * The object is safe to use from several threads; close it once, after they are done.
 *
 * <p>The mapping assumes the file is not truncated while it is open. {@link SafeTensors#write}
 * never does that: it replaces files by renaming a new one over them.
 */
public final class SafeTensorsFile implements Closeable {
    private static final ValueLayout.OfFloat F32_LE =
            ValueLayout.JAVA_FLOAT_UNALIGNED.withOrder(ByteOrder.LITTLE_ENDIAN);
    private static final ValueLayout.OfDouble F64_LE =
            ValueLayout.JAVA_DOUBLE_UNALIGNED.withOrder(ByteOrder.LITTLE_ENDIAN);

    private final Path path;
    private final Arena arena;
    private final MemorySegment data;
    private final long headerLength;
    private final SequencedMap<String, TensorInfo> tensors;
    private final Map<String, String> metadata;

    SafeTensorsFile(Path path, Arena arena, MemorySegment data, long headerLength,
            SequencedMap<String, TensorInfo> tensors, SequencedMap<String, String> metadata) {
        this.path = path;
        this.arena = arena;
        this.data = data;
        this.headerLength = headerLength;
        this.tensors = Collections.unmodifiableSequencedMap(tensors);
        this.metadata = Collections.unmodifiableSequencedMap(metadata);
    }

    /** The file this was opened from. */
    public Path path() {
        return path;
    }

    /** N, the length in bytes of the JSON header (padding included). Data starts at {@code 8 + N}. */
    public long headerLength() {
        return headerLength;
    }

    /** Every tensor, in the order the header lists them. */
    public SequencedMap<String, TensorInfo> tensors() {
        return tensors;
    }

    /** The {@code __metadata__} map, in file order; empty when the header has none. */
    public Map<String, String> metadata() {
        return metadata;
    }

    /** The header entry for {@code name}. */
    public TensorInfo info(String name) throws SafeTensorsException {
        TensorInfo info = tensors.get(name);
        if (info == null) {
            throw new SafeTensorsException(path, "no tensor named \"" + name + "\"");
        }
        return info;
    }

    /** The tensor's bytes (little-endian, C order) as a read-only slice of the mapping. */
    public MemorySegment segment(String name) throws SafeTensorsException {
        TensorInfo info = info(name);
        checkOpen();
        return data.asSlice(info.begin(), info.byteSize()).asReadOnly();
    }

    /** The tensor's bytes as a read-only little-endian buffer over the mapping. */
    public ByteBuffer byteBuffer(String name) throws SafeTensorsException {
        MemorySegment seg = segment(name);
        if (seg.byteSize() > Integer.MAX_VALUE) {
            throw new SafeTensorsException(path, "tensor \"" + name + "\" has " + seg.byteSize()
                    + " bytes, too many for a ByteBuffer; use segment()");
        }
        return seg.asByteBuffer().order(ByteOrder.LITTLE_ENDIAN);
    }

    /** A copy of the tensor's bytes. */
    public byte[] readBytes(String name) throws SafeTensorsException {
        MemorySegment seg = segment(name);
        checkArrayLength(name, seg.byteSize());
        return seg.toArray(ValueLayout.JAVA_BYTE);
    }

    /** A copy of an F32 tensor's elements in C order. */
    public float[] readF32(String name) throws SafeTensorsException {
        MemorySegment seg = typed(name, DType.F32);
        long n = seg.byteSize() / 4;
        checkArrayLength(name, n);
        float[] out = new float[(int) n];
        MemorySegment.copy(seg, F32_LE, 0, out, 0, out.length);
        return out;
    }

    /** A read-only view of an F32 tensor's elements over the mapping (no copy). */
    public FloatBuffer f32Buffer(String name) throws SafeTensorsException {
        typed(name, DType.F32);
        return byteBuffer(name).asFloatBuffer();
    }

    /** A copy of an F64 tensor's elements in C order. */
    public double[] readF64(String name) throws SafeTensorsException {
        MemorySegment seg = typed(name, DType.F64);
        long n = seg.byteSize() / 8;
        checkArrayLength(name, n);
        double[] out = new double[(int) n];
        MemorySegment.copy(seg, F64_LE, 0, out, 0, out.length);
        return out;
    }

    /** A read-only view of an F64 tensor's elements over the mapping (no copy). */
    public DoubleBuffer f64Buffer(String name) throws SafeTensorsException {
        typed(name, DType.F64);
        return byteBuffer(name).asDoubleBuffer();
    }

    /** Whether {@link #close()} has not been called yet. */
    public boolean isOpen() {
        return arena.scope().isAlive();
    }

    /** Unmaps the file. Idempotent. */
    @Override
    public synchronized void close() {
        if (arena.scope().isAlive()) {
            arena.close();
        }
    }

    @Override
    public String toString() {
        return "SafeTensorsFile[" + path + ", " + tensors.size() + " tensors]";
    }

    private MemorySegment typed(String name, DType want) throws SafeTensorsException {
        TensorInfo info = info(name);
        if (info.dtype() != want) {
            throw new SafeTensorsException(path, "tensor \"" + name + "\" has dtype " + info.dtype()
                    + ", not " + want);
        }
        return segment(name);
    }

    private void checkOpen() {
        if (!arena.scope().isAlive()) {
            throw new IllegalStateException(path + ": already closed");
        }
    }

    private void checkArrayLength(String name, long n) throws SafeTensorsException {
        if (n > Integer.MAX_VALUE - 8) {
            throw new SafeTensorsException(path, "tensor \"" + name + "\" has " + n
                    + " elements, too many for a Java array; use segment()");
        }
    }
}
