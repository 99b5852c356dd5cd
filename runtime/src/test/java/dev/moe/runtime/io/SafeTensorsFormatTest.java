package dev.moe.runtime.io;

import static com.google.common.truth.Truth.assertThat;
import static com.google.common.truth.Truth.assertWithMessage;
import static java.nio.charset.StandardCharsets.UTF_8;
import static org.junit.jupiter.api.Assertions.assertThrows;

import java.io.IOException;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.DoubleBuffer;
import java.nio.FloatBuffer;
import java.nio.ReadOnlyBufferException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.SplittableRandom;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/** Round trips, the header layout, and byte-exact agreement with the reference serializer. */
class SafeTensorsFormatTest {
    @TempDir
    Path dir;

    // ---------------------------------------------------------------------------------------
    // Byte-exact agreement with huggingface/safetensors (safetensors/src/tensor.rs, mod tests)
    // ---------------------------------------------------------------------------------------

    /**
     * {@code test_serialization}: one F32 tensor "attn.0", shape [1,2,3], data 0.0..5.0. The expected
     * array is the reference's literal. It can also be derived from the spec: the compact JSON
     * <code>{"attn.0":{"dtype":"F32","shape":[1,2,3],"data_offsets":[0,24]}}</code> is 64 bytes (a
     * multiple of 8, so no padding); the prefix is 64 as a little-endian u64; the data is 6 floats
     * × 4 bytes = 24 bytes, little-endian IEEE 754: 0.0 = 00 00 00 00, 1.0 = 0x3F800000 = 00 00 80 3F
     * (0x80 = 128, 0x3F = 63), 2.0 = 0x40000000 = 00 00 00 40, 3.0 = 0x40400000, 4.0 = 0x40800000,
     * 5.0 = 0x40A00000 (0xA0 = 160).
     */
    @Test
    void matchesReferenceTestSerialization() throws IOException {
        int[] expected = {
            64, 0, 0, 0, 0, 0, 0, 0, 123, 34, 97, 116, 116, 110, 46, 48, 34, 58, 123, 34, 100,
            116, 121, 112, 101, 34, 58, 34, 70, 51, 50, 34, 44, 34, 115, 104, 97, 112, 101, 34,
            58, 91, 49, 44, 50, 44, 51, 93, 44, 34, 100, 97, 116, 97, 95, 111, 102, 102, 115,
            101, 116, 115, 34, 58, 91, 48, 44, 50, 52, 93, 125, 125, 0, 0, 0, 0, 0, 0, 128, 63,
            0, 0, 0, 64, 0, 0, 64, 64, 0, 0, 128, 64, 0, 0, 160, 64
        };
        // The same bytes built from the spec, independently of the literal above.
        String json = "{\"attn.0\":{\"dtype\":\"F32\",\"shape\":[1,2,3],\"data_offsets\":[0,24]}}";
        assertThat(json.length()).isEqualTo(64);
        ByteBuffer spec = ByteBuffer.allocate(8 + 64 + 24).order(ByteOrder.LITTLE_ENDIAN);
        spec.putLong(64).put(json.getBytes(UTF_8));
        for (int i = 0; i < 6; i++) {
            spec.putFloat(i);
        }
        assertThat(spec.array()).isEqualTo(bytes(expected));

        List<Tensor> tensors = List.of(Tensor.f32("attn.0", new long[] {1, 2, 3}, new float[] {0, 1, 2, 3, 4, 5}));
        assertThat(SafeTensors.serialize(tensors, Map.of())).isEqualTo(bytes(expected));
        Path file = dir.resolve("attn.safetensors");
        SafeTensors.write(file, tensors, Map.of());
        assertThat(Files.readAllBytes(file)).isEqualTo(bytes(expected));
        try (SafeTensorsFile f = SafeTensors.open(file)) {
            assertThat(f.readF32("attn.0")).isEqualTo(new float[] {0, 1, 2, 3, 4, 5});
            assertThat(f.info("attn.0")).isEqualTo(new TensorInfo("attn.0", DType.F32, new long[] {1, 2, 3}, 0, 24));
        }
    }

    /** {@code test_serialization_forced_alignement}: a 57-byte JSON is padded with 7 spaces to 64. */
    @Test
    void matchesReferenceForcedAlignment() {
        int[] expected = {
            72, 0, 0, 0, 0, 0, 0, 0, 123, 34, 97, 116, 116, 110, 48, 34, 58, 123, 34, 100, 116,
            121, 112, 101, 34, 58, 34, 70, 51, 50, 34, 44, 34, 115, 104, 97, 112, 101, 34, 58,
            91, 49, 44, 49, 44, 50, 44, 51, 93, 44, 34, 100, 97, 116, 97, 95, 111, 102, 102,
            115, 101, 116, 115, 34, 58, 91, 48, 44, 50, 52, 93, 125, 125, 32, 32, 32, 32, 32,
            32, 32, 0, 0, 0, 0, 0, 0, 128, 63, 0, 0, 0, 64, 0, 0, 64, 64, 0, 0, 128, 64, 0, 0,
            160, 64
        };
        List<Tensor> tensors = List.of(Tensor.f32("attn0", new long[] {1, 1, 2, 3}, new float[] {0, 1, 2, 3, 4, 5}));
        assertThat(SafeTensors.serialize(tensors, Map.of())).isEqualTo(bytes(expected));
    }

    /** {@code test_empty}: no tensors, with and without {@code __metadata__}. */
    @Test
    void matchesReferenceTestEmpty() {
        assertThat(SafeTensors.serialize(List.of(), Map.of()))
                .isEqualTo(bytes(new int[] {8, 0, 0, 0, 0, 0, 0, 0, 123, 125, 32, 32, 32, 32, 32, 32}));
        int[] withMetadata = {
            40, 0, 0, 0, 0, 0, 0, 0, 123, 34, 95, 95, 109, 101, 116, 97, 100, 97, 116, 97, 95,
            95, 34, 58, 123, 34, 102, 114, 97, 109, 101, 119, 111, 114, 107, 34, 58, 34, 112,
            116, 34, 125, 125, 32, 32, 32, 32, 32
        };
        assertThat(SafeTensors.serialize(List.of(), Map.of("framework", "pt"))).isEqualTo(bytes(withMetadata));
    }

    // ---------------------------------------------------------------------------------------
    // Round trips
    // ---------------------------------------------------------------------------------------

    /**
     * 300 random tensor sets (every dtype, 0-8 tensors, rank 0-4, dimensions 0-5 so that empty
     * tensors occur, random bit patterns including NaN payloads) come back bit-identical.
     */
    @Test
    void randomTensorSetsRoundTripBitIdentically() throws IOException {
        long seed = 0x5AFE_7E45L;
        System.out.println("randomTensorSetsRoundTripBitIdentically seed=" + seed);
        SplittableRandom rnd = new SplittableRandom(seed);
        int emptyTensors = 0;
        int scalars = 0;
        for (int set = 0; set < 300; set++) {
            int count = rnd.nextInt(9);
            List<Tensor> tensors = new ArrayList<>();
            List<byte[]> raw = new ArrayList<>();
            for (int i = 0; i < count; i++) {
                DType dtype = DType.values()[rnd.nextInt(DType.values().length)];
                long[] shape = new long[rnd.nextInt(5)];
                long numel = 1;
                for (int d = 0; d < shape.length; d++) {
                    shape[d] = rnd.nextInt(6);
                    numel *= shape[d];
                }
                emptyTensors += numel == 0 ? 1 : 0;
                scalars += shape.length == 0 ? 1 : 0;
                byte[] data = new byte[(int) numel * dtype.byteSize()];
                rnd.nextBytes(data);
                raw.add(data);
                String name = "t" + set + "." + i + (rnd.nextBoolean() ? "/ü\"\\\n" : "");
                tensors.add(switch (dtype) {
                    case F32 -> Tensor.f32(name, shape, toFloats(data));
                    case F64 -> Tensor.f64(name, shape, toDoubles(data));
                    default -> Tensor.of(name, dtype, shape, data);
                });
            }
            Map<String, String> metadata = new LinkedHashMap<>();
            for (int m = rnd.nextInt(3); m > 0; m--) {
                metadata.put("key" + m + "\u00e9", "value " + rnd.nextLong());
            }
            Path file = dir.resolve("set" + set + ".safetensors");
            byte[] serialized = SafeTensors.serialize(tensors, metadata);
            if (set % 10 == 0) {
                // The crash-safe path (with its fsyncs) must produce the same bytes.
                SafeTensors.write(file, tensors, metadata);
                assertThat(Files.readAllBytes(file)).isEqualTo(serialized);
            } else {
                Files.write(file, serialized);
            }
            try (SafeTensorsFile f = SafeTensors.open(file)) {
                assertThat(f.metadata()).containsExactlyEntriesIn(metadata).inOrder();
                assertThat(f.tensors().keySet())
                        .containsExactlyElementsIn(tensors.stream().map(Tensor::name).toList()).inOrder();
                for (int i = 0; i < count; i++) {
                    Tensor t = tensors.get(i);
                    TensorInfo info = f.info(t.name());
                    assertThat(info.dtype()).isEqualTo(t.dtype());
                    assertThat(info.shape()).isEqualTo(t.shape());
                    assertThat(f.readBytes(t.name())).isEqualTo(raw.get(i));
                    if (t.dtype() == DType.F32) {
                        assertThat(floatBits(f.readF32(t.name()))).isEqualTo(floatBits(toFloats(raw.get(i))));
                    } else if (t.dtype() == DType.F64) {
                        assertThat(doubleBits(f.readF64(t.name()))).isEqualTo(doubleBits(toDoubles(raw.get(i))));
                    }
                }
            }
        }
        assertWithMessage("the generator covers empty tensors").that(emptyTensors).isGreaterThan(50);
        assertWithMessage("the generator covers scalars").that(scalars).isGreaterThan(50);
    }

    @Test
    void headerIsEightAlignedSpacePaddedAndCoversTheBuffer() throws IOException {
        SplittableRandom rnd = new SplittableRandom(7);
        for (int nameLength = 1; nameLength <= 16; nameLength++) {
            String name = "n".repeat(nameLength);
            float[] values = new float[rnd.nextInt(1, 10)];
            List<Tensor> tensors = List.of(
                    Tensor.f32(name, new long[] {values.length}, values),
                    Tensor.of("b", DType.U8, new long[] {3}, new byte[] {1, 2, 3}));
            byte[] file = SafeTensors.serialize(tensors, Map.of());
            long n = ByteBuffer.wrap(file).order(ByteOrder.LITTLE_ENDIAN).getLong(0);
            assertThat(n % 8).isEqualTo(0);
            String header = new String(file, 8, (int) n, UTF_8);
            String json = header.stripTrailing();
            assertThat(json).startsWith("{");
            assertThat(json).endsWith("}");
            assertThat(header.substring(json.length())).matches(" {0,7}");
            assertThat(file.length - 8 - n).isEqualTo(values.length * 4L + 3);
            Path p = dir.resolve("aligned" + nameLength + ".safetensors");
            Files.write(p, file);
            try (SafeTensorsFile f = SafeTensors.open(p)) {
                assertThat(f.headerLength()).isEqualTo(n);
                assertThat(f.info(name).begin()).isEqualTo(0);
                assertThat(f.info("b").end()).isEqualTo(file.length - 8 - n);
            }
        }
    }

    // ---------------------------------------------------------------------------------------
    // Reading files from other writers
    // ---------------------------------------------------------------------------------------

    @Test
    void readsForeignLayoutInHeaderOrderWithUnalignedData() throws IOException {
        // Whitespace inside the JSON, keys listed in an order unlike the data, no padding, and an
        // odd header length, so that the F32 and F64 data are not aligned in the file.
        String json = "{  \"b\" : {\"data_offsets\": [8, 20], \"shape\": [3], \"dtype\": \"F32\"},\n"
                + "  \"__metadata__\": {\"format\": \"pt\"},\n"
                + "  \"a\": {\"dtype\": \"F64\", \"shape\": [1], \"data_offsets\": [0, 8]} }";
        assertThat(json.length() % 2).isEqualTo(1);
        ByteBuffer data = ByteBuffer.allocate(20).order(ByteOrder.LITTLE_ENDIAN);
        data.putDouble(Math.PI).putFloat(1.5f).putFloat(-2f).putFloat(Float.MIN_VALUE);
        Path p = dir.resolve("foreign.safetensors");
        Files.write(p, file(json, data.array()));
        try (SafeTensorsFile f = SafeTensors.open(p)) {
            assertThat(f.tensors().keySet()).containsExactly("b", "a").inOrder();
            assertThat(f.metadata()).containsExactly("format", "pt");
            assertThat(f.readF64("a")).isEqualTo(new double[] {Math.PI});
            assertThat(f.readF32("b")).isEqualTo(new float[] {1.5f, -2f, Float.MIN_VALUE});
            FloatBuffer view = f.f32Buffer("b");
            assertThat(view.isReadOnly()).isTrue();
            assertThat(view.remaining()).isEqualTo(3);
            assertThat(view.get(1)).isEqualTo(-2f);
            DoubleBuffer dview = f.f64Buffer("a");
            assertThat(dview.get(0)).isEqualTo(Math.PI);
            MemorySegment seg = f.segment("b");
            assertThat(seg.isReadOnly()).isTrue();
            assertThat(seg.isMapped()).isTrue();
            assertThat(seg.get(ValueLayout.JAVA_FLOAT_UNALIGNED.withOrder(ByteOrder.LITTLE_ENDIAN), 4)).isEqualTo(-2f);
            assertThat(assertThrows(RuntimeException.class, () -> seg.set(ValueLayout.JAVA_BYTE, 0, (byte) 1)))
                    .hasMessageThat().contains("read-only");
            assertThrows(ReadOnlyBufferException.class, () -> f.byteBuffer("b").put(0, (byte) 1));
        }
    }

    @Test
    void typedAccessorsCheckDtypeNameAndLifetime() throws IOException {
        Path p = dir.resolve("typed.safetensors");
        SafeTensors.write(p, List.of(
                Tensor.of("ints", DType.I32, new long[] {2}, new byte[] {1, 0, 0, 0, 2, 0, 0, 0}),
                Tensor.f32("w", new long[] {2}, new float[] {1, 2})));
        FloatBuffer view;
        SafeTensorsFile f = SafeTensors.open(p);
        try {
            SafeTensorsException wrongType = assertThrows(SafeTensorsException.class, () -> f.readF32("ints"));
            assertThat(wrongType).hasMessageThat().isEqualTo(p + ": tensor \"ints\" has dtype I32, not F32");
            assertThat(wrongType.file()).isEqualTo(p);
            assertThat(wrongType.problem()).isEqualTo("tensor \"ints\" has dtype I32, not F32");
            assertThat(assertThrows(SafeTensorsException.class, () -> f.readF64("w")))
                    .hasMessageThat().contains("tensor \"w\" has dtype F32, not F64");
            assertThat(assertThrows(SafeTensorsException.class, () -> f.readF32("nope")))
                    .hasMessageThat().isEqualTo(p + ": no tensor named \"nope\"");
            view = f.f32Buffer("w");
            assertThat(view.get(1)).isEqualTo(2f);
            assertThrows(UnsupportedOperationException.class, () -> f.tensors().clear());
            assertThrows(UnsupportedOperationException.class, () -> f.metadata().put("a", "b"));
            f.close();
            assertThat(f.isOpen()).isFalse();
            assertThrows(IllegalStateException.class, () -> f.readF32("w"));
            f.close(); // idempotent
        } finally {
            f.close();
        }
        FloatBuffer closedView = view;
        assertThrows(IllegalStateException.class, () -> closedView.get(0));
    }

    @Test
    void tensorInfoCopiesItsShapeAndComparesByValue() {
        long[] shape = {2, 3};
        TensorInfo info = new TensorInfo("x", DType.F32, shape, 0, 24);
        shape[0] = 99;
        assertThat(info.shape()).isEqualTo(new long[] {2, 3});
        info.shape()[1] = 99;
        assertThat(info.shape()).isEqualTo(new long[] {2, 3});
        assertThat(info).isEqualTo(new TensorInfo("x", DType.F32, new long[] {2, 3}, 0, 24));
        assertThat(info.hashCode()).isEqualTo(new TensorInfo("x", DType.F32, new long[] {2, 3}, 0, 24).hashCode());
        assertThat(info.numel()).isEqualTo(6);
        assertThat(info.byteSize()).isEqualTo(24);
        assertThat(info.rank()).isEqualTo(2);
        assertThat(info.toString()).contains("shape=[2, 3]");
    }

    @Test
    void writerRejectsInvalidInput() {
        float[] one = {1};
        assertThat(assertThrows(IllegalArgumentException.class, () -> SafeTensors.serialize(List.of(
                Tensor.f32("a", new long[] {1}, one), Tensor.f32("a", new long[] {1}, one)), Map.of())))
                .hasMessageThat().contains("duplicate tensor name \"a\"");
        assertThat(assertThrows(IllegalArgumentException.class, () -> SafeTensors.serialize(List.of(
                Tensor.f32("", new long[] {1}, one)), Map.of())))
                .hasMessageThat().contains("empty name");
        assertThat(assertThrows(IllegalArgumentException.class, () -> SafeTensors.serialize(List.of(
                Tensor.f32("__metadata__", new long[] {1}, one)), Map.of())))
                .hasMessageThat().contains("reserved");
        assertThat(assertThrows(IllegalArgumentException.class, () -> Tensor.f32("a", new long[] {2}, one)))
                .hasMessageThat().contains("needs 8 bytes, data has 4");
        assertThat(assertThrows(IllegalArgumentException.class, () -> Tensor.f32("a", new long[] {-1}, one)))
                .hasMessageThat().contains("negative dimension");
    }

    // ---------------------------------------------------------------------------------------

    static byte[] file(String json, byte[] data) {
        byte[] h = json.getBytes(UTF_8);
        return ByteBuffer.allocate(8 + h.length + data.length).order(ByteOrder.LITTLE_ENDIAN)
                .putLong(h.length).put(h).put(data).array();
    }

    private static byte[] bytes(int[] values) {
        byte[] out = new byte[values.length];
        for (int i = 0; i < values.length; i++) {
            out[i] = (byte) values[i];
        }
        return out;
    }

    private static float[] toFloats(byte[] le) {
        float[] out = new float[le.length / 4];
        ByteBuffer.wrap(le).order(ByteOrder.LITTLE_ENDIAN).asFloatBuffer().get(out);
        return out;
    }

    private static double[] toDoubles(byte[] le) {
        double[] out = new double[le.length / 8];
        ByteBuffer.wrap(le).order(ByteOrder.LITTLE_ENDIAN).asDoubleBuffer().get(out);
        return out;
    }

    private static int[] floatBits(float[] v) {
        int[] out = new int[v.length];
        for (int i = 0; i < v.length; i++) {
            out[i] = Float.floatToRawIntBits(v[i]);
        }
        return out;
    }

    private static long[] doubleBits(double[] v) {
        long[] out = new long[v.length];
        for (int i = 0; i < v.length; i++) {
            out[i] = Double.doubleToRawLongBits(v[i]);
        }
        return out;
    }
}
