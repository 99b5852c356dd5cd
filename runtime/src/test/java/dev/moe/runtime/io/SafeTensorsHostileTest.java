package dev.moe.runtime.io;

import static com.google.common.truth.Truth.assertThat;
import static com.google.common.truth.Truth.assertWithMessage;
import static java.nio.charset.StandardCharsets.UTF_8;
import static org.junit.jupiter.api.Assertions.assertThrows;

import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.lang.management.ManagementFactory;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.channels.FileChannel;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardOpenOption;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.HashSet;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.stream.Stream;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.Arguments;
import org.junit.jupiter.params.provider.MethodSource;

/**
 * Crafted hostile files (all built here, none committed as binaries). Each must be refused with a
 * {@link SafeTensorsException} whose message names the file and the specific problem; nothing may
 * be read out of bounds (any other exception fails), and opening may allocate only about as much as
 * the header bytes actually present, never what a header declares.
 */
class SafeTensorsHostileTest {
    @TempDir
    static Path dir;

    private static final String OK_A = "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}";
    private static final byte[] FOUR = new byte[4];

    record Case(String name, byte[] bytes, String expected) {
        @Override
        public String toString() {
            return name;
        }
    }

    static List<Case> cases() {
        List<Case> c = new ArrayList<>();
        // --- the 8-byte header length -------------------------------------------------------
        c.add(new Case("empty file", new byte[0],
                "file is 0 bytes long, shorter than the 8-byte header length"));
        c.add(new Case("seven-byte file", new byte[7],
                "file is 7 bytes long, shorter than the 8-byte header length"));
        c.add(new Case("length with top bit set", withLength(0x8000_0000_0000_0000L, "{}"),
                "header length 0x8000000000000000 has the top bit set"));
        c.add(new Case("length 2^64-1", withLength(-1L, "{}"),
                "header length 0xFFFFFFFFFFFFFFFF has the top bit set"));
        c.add(new Case("length over 100,000,000", withLength(100_000_001L, "{}"),
                "header length 100000001 exceeds the limit of 100000000 bytes"));
        c.add(new Case("length far past the end of the file", withLength(1000, "{}"),
                "header length 1000 runs past the end of the file (10 bytes, so at most 2 bytes of header)"));
        c.add(new Case("length one past the end of the file", withLength(3, "{}"),
                "header length 3 runs past the end of the file (10 bytes"));
        c.add(new Case("length zero", withLength(0, "{}"),
                "header length is 0"));
        // --- the JSON text ------------------------------------------------------------------
        c.add(new Case("JSON array instead of object", file("[]"),
                "header JSON must begin with '{' (0x7B), found 0x5B"));
        c.add(new Case("leading space", file(" {}"),
                "header JSON must begin with '{' (0x7B), found 0x20"));
        c.add(new Case("UTF-8 byte order mark", concat(new byte[] {(byte) 0xEF, (byte) 0xBB, (byte) 0xBF}, "{}"),
                "header JSON must begin with '{' (0x7B), found 0xEF"));
        c.add(new Case("invalid UTF-8 in a name", concat("{\"a", new byte[] {(byte) 0xC3, '('}, "\":{}}"),
                "header is not valid UTF-8: malformed byte sequence at header byte 3"));
        c.add(new Case("overlong UTF-8 encoding of '/'", concat("{\"", new byte[] {(byte) 0xC0, (byte) 0xAF}, "\":{}}"),
                "header is not valid UTF-8: malformed byte sequence at header byte 2"));
        c.add(new Case("syntax error", file("{\"a\":}"),
                "header is not valid JSON: Unexpected character ('}' (code 125)): expected a value"));
        c.add(new Case("unterminated object", file("{\"a\":{\"dtype\":\"F32\""),
                "header is not valid JSON: Unexpected end-of-input"));
        c.add(new Case("UTF-32LE lookalike", concat("{", new byte[] {0, 0, 0}, "}"),
                "header is not valid JSON: Illegal character ((CTRL-CHAR, code 0))"));
        c.add(new Case("NaN literal", file("{\"__metadata__\":{\"a\":NaN}}"),
                "header is not valid JSON: Non-standard token 'NaN'"));
        c.add(new Case("comment", file("{/* hi */}"),
                "header is not valid JSON: Unexpected character ('/' (code 47))"));
        c.add(new Case("trailing comma", file("{" + OK_A + ",}", FOUR),
                "header is not valid JSON: Unexpected character ('}' (code 125)): was expecting double-quote to start field name"));
        c.add(new Case("NUL padding", file("{}\0\0\0\0\0\0"),
                "header padding after the JSON object must be spaces (0x20), found U+0000"));
        c.add(new Case("newline padding", file("{}\n"),
                "header padding after the JSON object must be spaces (0x20), found U+000A"));
        c.add(new Case("second JSON document in the padding", file("{}{}"),
                "header padding after the JSON object must be spaces (0x20), found U+007B"));
        c.add(new Case("duplicate tensor name", file("{" + OK_A + "," + OK_A + "}", FOUR),
                "duplicate key in the header JSON: Duplicate field 'a'"));
        c.add(new Case("duplicate key inside an entry",
                file("{\"a\":{\"dtype\":\"F32\",\"dtype\":\"I32\",\"shape\":[1],\"data_offsets\":[0,4]}}", FOUR),
                "duplicate key in the header JSON: Duplicate field 'dtype'"));
        c.add(new Case("duplicate __metadata__", file("{\"__metadata__\":{},\"__metadata__\":{}}"),
                "duplicate key in the header JSON: Duplicate field '__metadata__'"));
        c.add(new Case("10^4-deep JSON", file("{\"a\":" + "[".repeat(10_000) + "]".repeat(10_000) + "}"),
                "header JSON nests deeper than 4 levels (line 1, column 9)"));
        c.add(new Case("deep metadata", file("{\"__metadata__\":{\"k\":{\"x\":{\"y\":{}}}}}"),
                "header JSON nests deeper than 4 levels (line 1, column 32)"));
        c.add(new Case("number longer than the parser limit",
                file("{\"a\":{\"dtype\":\"F32\",\"shape\":[" + "1".repeat(100) + "],\"data_offsets\":[0,4]}}", FOUR),
                "header JSON exceeds a parser limit: Number value length (100) exceeds the maximum allowed (64"));
        // --- entries ------------------------------------------------------------------------
        c.add(new Case("empty tensor name", file("{\"\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[0,0]}}"),
                "a tensor has an empty name"));
        c.add(new Case("entry is a number", file("{\"a\":5}"),
                "entry for tensor \"a\" must be an object with dtype, shape and data_offsets, found the number 5"));
        c.add(new Case("unexpected key in an entry",
                file("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4],\"offset\":0}}", FOUR),
                "tensor \"a\": unexpected key \"offset\" (an entry holds only dtype, shape and data_offsets)"));
        c.add(new Case("missing dtype", file("{\"a\":{\"shape\":[1],\"data_offsets\":[0,4]}}", FOUR),
                "tensor \"a\" has no \"dtype\""));
        c.add(new Case("missing shape", file("{\"a\":{\"dtype\":\"F32\",\"data_offsets\":[0,4]}}", FOUR),
                "tensor \"a\" has no \"shape\""));
        c.add(new Case("missing data_offsets", file("{\"a\":{\"dtype\":\"F32\",\"shape\":[1]}}", FOUR),
                "tensor \"a\" has no \"data_offsets\""));
        c.add(new Case("unknown dtype", file(entry("\"F33\"", "[1]", "[0,4]"), FOUR),
                "tensor \"a\": unknown dtype \"F33\""));
        c.add(new Case("lower-case dtype", file(entry("\"f32\"", "[1]", "[0,4]"), FOUR),
                "tensor \"a\": unknown dtype \"f32\""));
        c.add(new Case("spec dtype this reader does not support", file(entry("\"F8_E4M3\"", "[4]", "[0,4]"), FOUR),
                "tensor \"a\": dtype F8_E4M3 is not supported (supported: [BOOL, U8, F16, BF16, I32, F32, I64, F64])"));
        c.add(new Case("dtype is a number", file(entry("4", "[1]", "[0,4]"), FOUR),
                "tensor \"a\": dtype must be a string, found the number 4"));
        c.add(new Case("shape is a string", file(entry("\"F32\"", "\"1\"", "[0,4]"), FOUR),
                "tensor \"a\": shape must be a list of non-negative integers, found the string \"1\""));
        c.add(new Case("negative dimension", file(entry("\"F32\"", "[1,-3]", "[0,4]"), FOUR),
                "tensor \"a\": shape must be a list of non-negative integers; shape element 1 is negative (-3)"));
        c.add(new Case("fractional dimension", file(entry("\"F32\"", "[1.5]", "[0,4]"), FOUR),
                "tensor \"a\": shape must be a list of non-negative integers; shape element 0 is not an integer (1.5)"));
        c.add(new Case("exponent dimension", file(entry("\"F32\"", "[1e0]", "[0,4]"), FOUR),
                "tensor \"a\": shape must be a list of non-negative integers; shape element 0 is not an integer (1e0)"));
        c.add(new Case("null dimension", file(entry("\"F32\"", "[null]", "[0,4]"), FOUR),
                "tensor \"a\": shape must be a list of non-negative integers; shape element 0 is null"));
        c.add(new Case("nested shape list", file(entry("\"F32\"", "[[1]]", "[0,4]"), FOUR),
                "tensor \"a\": shape must be a list of non-negative integers; shape element 0 is a list"));
        c.add(new Case("dimension of 2^63", file(entry("\"F32\"", "[9223372036854775808]", "[0,4]"), FOUR),
                "tensor \"a\": shape must be a list of non-negative integers; shape element 0 exceeds 2^63-1 (9223372036854775808)"));
        c.add(new Case("element count overflows", file(entry("\"F32\"", "[4611686018427387904,4]", "[0,4]"), FOUR),
                "tensor \"a\": shape [4611686018427387904, 4] of F32 overflows: its byte size exceeds 2^63-1"));
        c.add(new Case("byte size overflows", file(entry("\"F64\"", "[2305843009213693952]", "[0,8]"), FOUR),
                "tensor \"a\": shape [2305843009213693952] of F64 overflows: its byte size exceeds 2^63-1"));
        c.add(new Case("three data_offsets", file(entry("\"F32\"", "[1]", "[0,4,4]"), FOUR),
                "tensor \"a\": data_offsets must be two non-negative integers [begin, end], found 3 elements"));
        c.add(new Case("one data_offset", file(entry("\"F32\"", "[1]", "[4]"), FOUR),
                "tensor \"a\": data_offsets must be two non-negative integers [begin, end], found 1 element"));
        c.add(new Case("negative offset", file(entry("\"F32\"", "[1]", "[-4,0]"), FOUR),
                "tensor \"a\": data_offsets must be two non-negative integers [begin, end]; data_offsets element 0 is negative (-4)"));
        c.add(new Case("fractional offset", file(entry("\"F32\"", "[1]", "[0,4.0]"), FOUR),
                "tensor \"a\": data_offsets must be two non-negative integers [begin, end]; data_offsets element 1 is not an integer (4.0)"));
        c.add(new Case("offset of 2^64", file(entry("\"F32\"", "[1]", "[0,18446744073709551616]"), FOUR),
                "data_offsets element 1 exceeds 2^63-1 (18446744073709551616)"));
        c.add(new Case("hugely negative offset", file(entry("\"F32\"", "[1]", "[-18446744073709551616,4]"), FOUR),
                "data_offsets element 0 is negative (-18446744073709551616)"));
        c.add(new Case("offsets as strings", file(entry("\"F32\"", "[1]", "[\"0\",\"4\"]"), FOUR),
                "data_offsets element 0 is the string \"0\""));
        c.add(new Case("offsets reversed", file(entry("\"F32\"", "[1]", "[4,0]"), FOUR),
                "tensor \"a\": data_offsets [4, 0] end before they begin"));
        c.add(new Case("span does not match the shape", file(entry("\"F32\"", "[2]", "[0,4]"), FOUR),
                "tensor \"a\": data_offsets [0, 4] span 4 bytes, but shape [2] of F32 needs 8"));
        // --- the buffer ---------------------------------------------------------------------
        c.add(new Case("gap between tensors", file("{" + OK_A + ","
                        + "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,12]}}", new byte[12]),
                "data_offsets leave a gap: buffer bytes [4, 8) belong to no tensor (the next tensor is \"b\")"));
        c.add(new Case("buffer does not start at 0", file(entry("\"F32\"", "[1]", "[4,8]"), new byte[8]),
                "data_offsets leave a gap: buffer bytes [0, 4) belong to no tensor (the next tensor is \"a\")"));
        c.add(new Case("overlapping tensors", file("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                        + "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}", new byte[12]),
                "data_offsets overlap: tensor \"b\" [4, 12) overlaps tensor \"a\" [0, 8)"));
        c.add(new Case("two tensors aliasing the same bytes", file("{" + OK_A + ","
                        + "\"b\":{\"dtype\":\"I32\",\"shape\":[1],\"data_offsets\":[0,4]}}", FOUR),
                "data_offsets overlap: tensor \"b\" [0, 4) overlaps tensor \"a\" [0, 4)"));
        c.add(new Case("trailing bytes (polyglot)", file("{" + OK_A + "}", new byte[8]),
                "4 trailing bytes belong to no tensor: the tensors cover 4 bytes of a 8-byte data buffer"));
        c.add(new Case("data without any tensor", file("{}", new byte[1]),
                "1 trailing bytes belong to no tensor: the tensors cover 0 bytes of a 1-byte data buffer"));
        c.add(new Case("truncated buffer", file("{" + OK_A + "}", new byte[2]),
                "file is truncated: the tensors need 4 data bytes but only 2 follow the header"));
        c.add(new Case("declares a terabyte, holds nothing", file(entry("\"U8\"", "[1099511627776]", "[0,1099511627776]")),
                "file is truncated: the tensors need 1099511627776 data bytes but only 0 follow the header"));
        // --- __metadata__ -------------------------------------------------------------------
        c.add(new Case("metadata is a string", file("{\"__metadata__\":\"pt\"}"),
                "__metadata__ must be an object mapping strings to strings, found the string \"pt\""));
        c.add(new Case("metadata value is a number", file("{\"__metadata__\":{\"epoch\":3}}"),
                "__metadata__ must map strings to strings, but \"epoch\" maps to the number 3"));
        c.add(new Case("metadata value is null", file("{\"__metadata__\":{\"epoch\":null}}"),
                "__metadata__ must map strings to strings, but \"epoch\" maps to null"));
        c.add(new Case("metadata value is an object", file("{\"__metadata__\":{\"k\":{}}}"),
                "__metadata__ must map strings to strings, but \"k\" maps to an object"));
        c.add(new Case("metadata value is a list", file("{\"__metadata__\":{\"k\":[\"v\"]}}"),
                "__metadata__ must map strings to strings, but \"k\" maps to a list"));
        return c;
    }

    static Stream<Arguments> hostileFiles() {
        return cases().stream().map(Arguments::of);
    }

    /** Loads every class the failure paths touch, so that the allocation checks see only the work. */
    @BeforeAll
    static void warmUp() throws IOException {
        Path p = dir.resolve("warmup.safetensors");
        for (int round = 0; round < 2; round++) {
            for (Case c : cases()) {
                Files.write(p, c.bytes());
                Refusal r = openMeasured(p);
                if (r.error() != null) {
                    r.error().getMessage();
                }
            }
        }
    }

    @Test
    void suiteIsLargeAndEveryExpectedMessageIsDistinct() {
        List<Case> all = cases();
        assertThat(all.size()).isAtLeast(30);
        Set<String> messages = new HashSet<>();
        for (Case c : all) {
            assertWithMessage("expected message of %s is unique", c.name()).that(messages.add(c.expected())).isTrue();
        }
    }

    @ParameterizedTest(name = "{0}")
    @MethodSource("hostileFiles")
    void hostileFileIsRefusedWithItsOwnMessage(Case c) throws IOException {
        Path p = dir.resolve(c.name().replaceAll("[^A-Za-z0-9]+", "-") + ".safetensors");
        Files.write(p, c.bytes());
        Refusal r = openMeasured(p);
        assertWithMessage("%s was refused", c.name()).that(r.error()).isNotNull();
        SafeTensorsException e = r.error();
        assertThat(e).hasMessageThat().startsWith(p + ": ");
        assertThat(e.file()).isEqualTo(p);
        assertThat(e.problem()).contains(c.expected());
        // The decoded header (2 bytes per char) plus a fixed allowance for the parser and the
        // exception; never anything proportional to what the header merely declares.
        long bound = 3L * c.bytes().length + 256 * 1024;
        assertWithMessage("bytes allocated while refusing %s", c.name()).that(r.allocated()).isAtMost(bound);
    }

    record Refusal(SafeTensorsException error, long allocated) {}

    /** Opens (and closes) {@code p}, counting the bytes this thread allocates meanwhile. */
    private static Refusal openMeasured(Path p) throws IOException {
        long before = allocatedBytes();
        SafeTensorsException error = null;
        try {
            SafeTensors.open(p).close();
        } catch (SafeTensorsException e) {
            error = e;
        }
        return new Refusal(error, allocatedBytes() - before);
    }

    // ---------------------------------------------------------------------------------------
    // Truncated and corrupted checkpoints
    // ---------------------------------------------------------------------------------------

    private static byte[] validCheckpoint() {
        return SafeTensors.serialize(List.of(
                Tensor.f32("layer.0.weight", new long[] {2, 3}, new float[] {1, 2, 3, 4, 5, 6}),
                Tensor.f64("layer.0.bias", new long[] {2}, new double[] {0.5, -0.5})),
                Map.of("step", "100"));
    }

    @Test
    void everyTruncationIsRefusedWithAClearMessage() throws IOException {
        byte[] full = validCheckpoint();
        long n = ByteBuffer.wrap(full).order(ByteOrder.LITTLE_ENDIAN).getLong(0);
        long dataBytes = full.length - 8 - n;
        Path p = dir.resolve("truncated.safetensors");
        Files.write(p, full);
        try (FileChannel ch = FileChannel.open(p, StandardOpenOption.WRITE)) {
            for (int length = full.length - 1; length >= 0; length--) {
                ch.truncate(length);
                SafeTensorsException e = assertThrows(SafeTensorsException.class, () -> SafeTensors.open(p).close());
                String expected;
                if (length < 8) {
                    expected = "file is " + length + " bytes long, shorter than the 8-byte header length";
                } else if (length < 8 + n) {
                    expected = "header length " + n + " runs past the end of the file (" + length + " bytes";
                } else {
                    expected = "file is truncated: the tensors need " + dataBytes + " data bytes but only "
                            + (length - 8 - n) + " follow the header";
                }
                assertWithMessage("cut to %s bytes", length).that(e).hasMessageThat().startsWith(p + ": ");
                assertWithMessage("cut to %s bytes", length).that(e.problem()).startsWith(expected);
            }
        }
    }

    @Test
    void specificCorruptionsAreRefusedWithClearMessages() throws IOException {
        byte[] full = validCheckpoint();
        int n = (int) ByteBuffer.wrap(full).order(ByteOrder.LITTLE_ENDIAN).getLong(0);
        Path p = dir.resolve("corrupt.safetensors");

        byte[] lengthBumped = full.clone();
        lengthBumped[0] += 8;
        // The header now swallows the first data bytes (1.0f = 00 00 80 3F): 0x80 cannot start a UTF-8 character.
        assertThat(refuse(p, lengthBumped)).contains("header is not valid UTF-8: malformed byte sequence at header byte " + (n + 2));

        byte[] appended = Arrays.copyOf(full, full.length + 3);
        assertThat(refuse(p, appended)).contains("3 trailing bytes belong to no tensor");

        byte[] noBrace = full.clone();
        noBrace[8] = 0;
        assertThat(refuse(p, noBrace)).contains("header JSON must begin with '{' (0x7B), found 0x00");

        String header = new String(full, 8, full.length - 8, UTF_8);
        int digit = header.indexOf("\"data_offsets\":[0,") + "\"data_offsets\":[0,".length();
        byte[] offsetChanged = full.clone();
        offsetChanged[8 + digit] = '9';
        assertThat(refuse(p, offsetChanged)).contains("span");

        byte[] dtypeChanged = full.clone();
        int dtype = header.indexOf("F64");
        dtypeChanged[8 + dtype + 1] = '1';
        dtypeChanged[8 + dtype + 2] = '6';
        assertThat(refuse(p, dtypeChanged)).contains("tensor \"layer.0.bias\": data_offsets [24, 40] span 16 bytes, but shape [2] of F16 needs 4");
    }

    /** Every single-byte change to the header either still loads completely or is refused cleanly. */
    @Test
    void headerByteFlipsAreRefusedOrLoadCleanly() throws IOException {
        byte[] full = validCheckpoint();
        int n = (int) ByteBuffer.wrap(full).order(ByteOrder.LITTLE_ENDIAN).getLong(0);
        Path p = dir.resolve("flipped.safetensors");
        Files.write(p, full);
        int refused = 0;
        int loaded = 0;
        try (FileChannel ch = FileChannel.open(p, StandardOpenOption.WRITE)) {
            for (int i = 0; i < 8 + n; i++) {
                for (int mask : new int[] {0x01, 0x80, 0xFF}) {
                    ch.write(ByteBuffer.wrap(new byte[] {(byte) (full[i] ^ mask)}), i);
                    try (SafeTensorsFile f = SafeTensors.open(p)) {
                        for (String name : f.tensors().keySet()) {
                            f.readBytes(name);
                        }
                        loaded++;
                    } catch (SafeTensorsException e) {
                        assertThat(e).hasMessageThat().startsWith(p + ": ");
                        refused++;
                    }
                    ch.write(ByteBuffer.wrap(new byte[] {full[i]}), i);
                }
            }
        }
        System.out.println("header byte flips: " + refused + " refused, " + loaded + " still valid");
        assertThat(refused).isGreaterThan(0);
    }

    private static String refuse(Path p, byte[] bytes) throws IOException {
        Files.write(p, bytes);
        return assertThrows(SafeTensorsException.class, () -> SafeTensors.open(p).close()).getMessage();
    }

    // ---------------------------------------------------------------------------------------

    private static long allocatedBytes() {
        return ((com.sun.management.ThreadMXBean) ManagementFactory.getThreadMXBean()).getCurrentThreadAllocatedBytes();
    }

    static String entry(String dtype, String shape, String offsets) {
        return "{\"a\":{\"dtype\":" + dtype + ",\"shape\":" + shape + ",\"data_offsets\":" + offsets + "}}";
    }

    static byte[] file(String json) {
        return file(json, new byte[0]);
    }

    static byte[] file(String json, byte[] data) {
        byte[] h = json.getBytes(UTF_8);
        return ByteBuffer.allocate(8 + h.length + data.length).order(ByteOrder.LITTLE_ENDIAN)
                .putLong(h.length).put(h).put(data).array();
    }

    static byte[] withLength(long n, String json) {
        byte[] h = json.getBytes(UTF_8);
        return ByteBuffer.allocate(8 + h.length).order(ByteOrder.LITTLE_ENDIAN).putLong(n).put(h).array();
    }

    static byte[] concat(Object... parts) {
        ByteArrayOutputStream header = new ByteArrayOutputStream();
        for (Object part : parts) {
            header.writeBytes(part instanceof String s ? s.getBytes(UTF_8) : (byte[]) part);
        }
        byte[] h = header.toByteArray();
        return ByteBuffer.allocate(8 + h.length).order(ByteOrder.LITTLE_ENDIAN).putLong(h.length).put(h).array();
    }
}
