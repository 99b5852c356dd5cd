package dev.moe.runtime.io;

import com.fasterxml.jackson.core.JsonEncoding;
import com.fasterxml.jackson.core.JsonFactory;
import com.fasterxml.jackson.core.JsonGenerator;
import com.fasterxml.jackson.core.JsonLocation;
import com.fasterxml.jackson.core.JsonParser;
import com.fasterxml.jackson.core.JsonProcessingException;
import com.fasterxml.jackson.core.JsonToken;
import com.fasterxml.jackson.core.StreamReadConstraints;
import com.fasterxml.jackson.core.StreamReadFeature;
import com.fasterxml.jackson.core.exc.StreamConstraintsException;
import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.io.UncheckedIOException;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.CharBuffer;
import java.nio.channels.FileChannel;
import java.nio.charset.CharsetDecoder;
import java.nio.charset.CoderResult;
import java.nio.charset.CodingErrorAction;
import java.nio.charset.StandardCharsets;
import java.nio.file.DirectoryStream;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardCopyOption;
import java.nio.file.StandardOpenOption;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Comparator;
import java.util.HashSet;
import java.util.HexFormat;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Objects;
import java.util.Set;
import java.util.concurrent.ThreadLocalRandom;
import java.util.regex.Pattern;

/**
 * Reads and writes the <a href="https://github.com/huggingface/safetensors">safetensors</a> format:
 * an 8-byte little-endian unsigned header length N, N bytes of UTF-8 JSON that begin with {@code {}
 * and may be padded with spaces, then the data buffer. The JSON maps each tensor name to
 * {@code {"dtype", "shape", "data_offsets": [begin, end]}} (offsets relative to the buffer, end
 * exclusive) and may hold a {@code "__metadata__"} map of strings to strings.
 *
 * <h2>Reading</h2>
 * {@link #open(Path)} memory-maps the file and validates the whole header before returning; tensor
 * bytes are paged in only when read. Every violation is a {@link SafeTensorsException} with its own
 * message: the header length (top bit set, over {@value #MAX_HEADER_SIZE} bytes, past the end of
 * the file, zero), the JSON (not UTF-8, not starting with <code>{</code>, syntax, duplicate keys,
 * nesting deeper than {@value #MAX_JSON_DEPTH}, padding other than spaces), each entry (not an
 * object, unknown keys, unknown or unsupported dtype, a shape that is not a list of non-negative
 * integers or whose byte size overflows, data_offsets that are not two non-negative integers, end
 * before begin, a span that does not match the shape), the metadata (not a string→string map), empty
 * tensor names, and the buffer (sorted by begin, the tensors must tile it exactly from byte 0: no
 * gap, no overlap, no trailing bytes, no truncation). Nothing is read outside the mapping, and the
 * only allocations proportional to the input are the decoded header and what the caller asks to
 * copy out.
 *
 * <h2>Writing</h2>
 * {@link #write(Path, List, Map)} writes the header with keys in the given order ({@code
 * __metadata__} first, omitted when empty), pads it with spaces to a multiple of 8 bytes and lays the
 * tensors out contiguously in that order. It is crash-safe: the bytes go to a temporary sibling
 * {@code .<name>.tmp-<16 hex digits>}, which is forced to disk, atomically renamed over the target,
 * after which the directory is forced too. A crash at any point leaves either the previous file or
 * the new one. Leftover temporaries of the same target from earlier crashes are deleted on the next
 * save; one process at a time is expected to save a given path.
 */
public final class SafeTensors {
    /** The largest header accepted, as in the reference implementation. */
    public static final int MAX_HEADER_SIZE = 100_000_000;

    /** The deepest JSON nesting accepted; a valid header needs 3 (root, entry, shape list). */
    public static final int MAX_JSON_DEPTH = 4;

    /** The longest JSON number literal accepted (2^64 has 20 digits). */
    static final int MAX_NUMBER_LENGTH = 64;

    private static final int COPY_CHUNK = 1 << 20;

    static final JsonFactory JSON = JsonFactory.builder()
            .enable(StreamReadFeature.STRICT_DUPLICATE_DETECTION)
            .disable(JsonFactory.Feature.CANONICALIZE_FIELD_NAMES)
            .streamReadConstraints(StreamReadConstraints.builder()
                    // One more than ours, so that our own check (with its own message) fires first.
                    .maxNestingDepth(MAX_JSON_DEPTH + 1)
                    .maxNumberLength(MAX_NUMBER_LENGTH)
                    .maxStringLength(MAX_HEADER_SIZE)
                    .maxNameLength(MAX_HEADER_SIZE)
                    .maxDocumentLength(MAX_HEADER_SIZE)
                    .build())
            .build();

    private SafeTensors() {}

    // ------------------------------------------------------------------------------------------
    // Reading
    // ------------------------------------------------------------------------------------------

    /**
     * Maps and validates {@code path}. Close the result to unmap it.
     *
     * @throws SafeTensorsException if the file is not a valid safetensors file
     * @throws IOException if it cannot be opened or mapped
     */
    public static SafeTensorsFile open(Path path) throws IOException {
        Arena arena = Arena.ofShared();
        boolean ok = false;
        try (FileChannel ch = FileChannel.open(path, StandardOpenOption.READ)) {
            long size = ch.size();
            if (size < 8) {
                throw new SafeTensorsException(path, "file is " + size
                        + " bytes long, shorter than the 8-byte header length that starts every safetensors file");
            }
            MemorySegment file = ch.map(FileChannel.MapMode.READ_ONLY, 0, size, arena);
            long n = file.get(ValueLayout.JAVA_LONG_UNALIGNED.withOrder(ByteOrder.LITTLE_ENDIAN), 0);
            if (n < 0) {
                throw new SafeTensorsException(path, String.format(
                        "header length 0x%016X has the top bit set (at least 2^63 bytes)", n));
            }
            if (n > MAX_HEADER_SIZE) {
                throw new SafeTensorsException(path, "header length " + n + " exceeds the limit of "
                        + MAX_HEADER_SIZE + " bytes");
            }
            if (n > size - 8) {
                throw new SafeTensorsException(path, "header length " + n
                        + " runs past the end of the file (" + size + " bytes, so at most "
                        + (size - 8) + " bytes of header)");
            }
            if (n == 0) {
                throw new SafeTensorsException(path,
                        "header length is 0; the header must hold at least the JSON object {}");
            }
            LinkedHashMap<String, TensorInfo> tensors = new LinkedHashMap<>();
            LinkedHashMap<String, String> metadata = new LinkedHashMap<>();
            parseHeader(path, file.asSlice(8, n), tensors, metadata);
            checkLayout(path, tensors, size - 8 - n);
            SafeTensorsFile result = new SafeTensorsFile(path, arena, file.asSlice(8 + n), n, tensors, metadata);
            ok = true;
            return result;
        } finally {
            if (!ok) {
                arena.close();
            }
        }
    }

    private static void parseHeader(Path path, MemorySegment header, Map<String, TensorInfo> tensors,
            Map<String, String> metadata) throws SafeTensorsException {
        byte first = header.get(ValueLayout.JAVA_BYTE, 0);
        if (first != '{') {
            throw new SafeTensorsException(path, String.format(
                    "header JSON must begin with '{' (0x7B), found 0x%02X", first & 0xFF));
        }
        CharBuffer chars = decodeUtf8(path, header);
        int jsonEnd = scan(path, chars);
        for (int i = jsonEnd; i < chars.limit(); i++) {
            char c = chars.get(i);
            if (c != ' ') {
                throw new SafeTensorsException(path, String.format(
                        "header padding after the JSON object must be spaces (0x20), found U+%04X", (int) c));
            }
        }
        try (JsonParser p = JSON.createParser(chars.array(), 0, jsonEnd)) {
            p.nextToken(); // the root START_OBJECT, checked by scan()
            while (p.nextToken() == JsonToken.FIELD_NAME) {
                String key = p.currentName();
                JsonToken value = p.nextToken();
                if (key.equals("__metadata__")) {
                    parseMetadata(path, p, value, metadata);
                } else {
                    if (key.isEmpty()) {
                        throw new SafeTensorsException(path, "a tensor has an empty name");
                    }
                    TensorInfo info = parseEntry(path, p, key, value);
                    if (tensors.putIfAbsent(key, info) != null) {
                        throw new SafeTensorsException(path, "duplicate key in the header JSON: \"" + key + "\"");
                    }
                }
            }
        } catch (SafeTensorsException e) {
            throw e;
        } catch (IOException e) {
            // scan() has already parsed the same characters successfully.
            throw new SafeTensorsException(path, "header is not valid JSON: " + e.getMessage(), e);
        }
    }

    /** Decodes strict UTF-8 (no replacement characters) into a char buffer of at most N chars. */
    private static CharBuffer decodeUtf8(Path path, MemorySegment header) throws SafeTensorsException {
        CharsetDecoder decoder = StandardCharsets.UTF_8.newDecoder()
                .onMalformedInput(CodingErrorAction.REPORT)
                .onUnmappableCharacter(CodingErrorAction.REPORT);
        ByteBuffer in = header.asByteBuffer();
        CharBuffer out = CharBuffer.allocate((int) header.byteSize()); // UTF-8 never has more chars than bytes
        CoderResult r = decoder.decode(in, out, true);
        if (!r.isError() && !r.isOverflow()) {
            r = decoder.flush(out);
        }
        if (r.isError() || r.isOverflow()) {
            throw new SafeTensorsException(path, "header is not valid UTF-8: malformed byte sequence at header byte "
                    + in.position());
        }
        out.flip();
        return out;
    }

    /**
     * Checks syntax, duplicate keys and nesting depth of the JSON text; returns the index just past
     * the root object's closing brace.
     */
    private static int scan(Path path, CharBuffer chars) throws SafeTensorsException {
        try (JsonParser p = JSON.createParser(chars.array(), 0, chars.limit())) {
            int depth = 0;
            JsonToken t;
            while ((t = p.nextToken()) != null) {
                if (t.isStructStart()) {
                    if (++depth > MAX_JSON_DEPTH) {
                        throw new SafeTensorsException(path, "header JSON nests deeper than "
                                + MAX_JSON_DEPTH + " levels" + at(p.currentTokenLocation()));
                    }
                } else if (t.isStructEnd() && --depth == 0) {
                    return Math.toIntExact(p.currentTokenLocation().getCharOffset() + 1);
                }
            }
            throw new SafeTensorsException(path, "header is not valid JSON: it ends inside the root object");
        } catch (StreamConstraintsException e) {
            throw new SafeTensorsException(path, "header JSON exceeds a parser limit: " + e.getOriginalMessage(), e);
        } catch (JsonProcessingException e) {
            String message = e.getOriginalMessage();
            if (message != null && message.startsWith("Duplicate")) {
                throw new SafeTensorsException(path, "duplicate key in the header JSON: " + message
                        + at(e.getLocation()), e);
            }
            throw new SafeTensorsException(path, "header is not valid JSON: " + message + at(e.getLocation()), e);
        } catch (SafeTensorsException e) {
            throw e;
        } catch (IOException e) {
            throw new SafeTensorsException(path, "header is not valid JSON: " + e.getMessage(), e);
        }
    }

    private static String at(JsonLocation loc) {
        if (loc == null || loc.getLineNr() < 0) {
            return "";
        }
        return " (line " + loc.getLineNr() + ", column " + loc.getColumnNr() + ")";
    }

    private static void parseMetadata(Path path, JsonParser p, JsonToken value, Map<String, String> metadata)
            throws IOException {
        if (value != JsonToken.START_OBJECT) {
            throw new SafeTensorsException(path,
                    "__metadata__ must be an object mapping strings to strings, found " + describe(p, value));
        }
        while (p.nextToken() == JsonToken.FIELD_NAME) {
            String key = p.currentName();
            JsonToken v = p.nextToken();
            if (v != JsonToken.VALUE_STRING) {
                throw new SafeTensorsException(path, "__metadata__ must map strings to strings, but \"" + key
                        + "\" maps to " + describe(p, v));
            }
            metadata.put(key, p.getText());
        }
    }

    private static TensorInfo parseEntry(Path path, JsonParser p, String name, JsonToken value) throws IOException {
        if (value != JsonToken.START_OBJECT) {
            throw new SafeTensorsException(path, "entry for tensor \"" + name
                    + "\" must be an object with dtype, shape and data_offsets, found " + describe(p, value));
        }
        DType dtype = null;
        long[] shape = null;
        long[] offsets = null;
        while (p.nextToken() == JsonToken.FIELD_NAME) {
            String key = p.currentName();
            JsonToken v = p.nextToken();
            switch (key) {
                case "dtype" -> dtype = parseDType(path, p, name, v);
                case "shape" -> shape = parseIntegers(path, p, name, "shape", v,
                        "shape must be a list of non-negative integers");
                case "data_offsets" -> {
                    offsets = parseIntegers(path, p, name, "data_offsets", v,
                            "data_offsets must be two non-negative integers [begin, end]");
                    if (offsets.length != 2) {
                        throw new SafeTensorsException(path, "tensor \"" + name
                                + "\": data_offsets must be two non-negative integers [begin, end], found "
                                + offsets.length + (offsets.length == 1 ? " element" : " elements"));
                    }
                }
                default -> throw new SafeTensorsException(path, "tensor \"" + name + "\": unexpected key \""
                        + key + "\" (an entry holds only dtype, shape and data_offsets)");
            }
        }
        String missing = dtype == null ? "dtype" : shape == null ? "shape" : offsets == null ? "data_offsets" : null;
        if (missing != null) {
            throw new SafeTensorsException(path, "tensor \"" + name + "\" has no \"" + missing + "\"");
        }
        long begin = offsets[0];
        long end = offsets[1];
        long bytes;
        try {
            long numel = 1;
            for (long d : shape) {
                numel = Math.multiplyExact(numel, d);
            }
            bytes = Math.multiplyExact(numel, dtype.byteSize());
        } catch (ArithmeticException e) {
            throw new SafeTensorsException(path, "tensor \"" + name + "\": shape " + shapeString(shape) + " of "
                    + dtype + " overflows: its byte size exceeds 2^63-1");
        }
        if (end < begin) {
            throw new SafeTensorsException(path, "tensor \"" + name + "\": data_offsets [" + begin + ", " + end
                    + "] end before they begin");
        }
        if (end - begin != bytes) {
            throw new SafeTensorsException(path, "tensor \"" + name + "\": data_offsets [" + begin + ", " + end
                    + "] span " + (end - begin) + " bytes, but shape " + shapeString(shape) + " of " + dtype
                    + " needs " + bytes);
        }
        return new TensorInfo(name, dtype, shape, begin, end);
    }

    private static DType parseDType(Path path, JsonParser p, String name, JsonToken v) throws IOException {
        if (v != JsonToken.VALUE_STRING) {
            throw new SafeTensorsException(path, "tensor \"" + name + "\": dtype must be a string, found "
                    + describe(p, v));
        }
        String text = p.getText();
        DType dtype = DType.fromName(text);
        if (dtype != null) {
            return dtype;
        }
        if (DType.OTHER_SPEC_NAMES.contains(text)) {
            throw new SafeTensorsException(path, "tensor \"" + name + "\": dtype " + text
                    + " is not supported (supported: " + Arrays.toString(DType.values()) + ")");
        }
        throw new SafeTensorsException(path, "tensor \"" + name + "\": unknown dtype \"" + clip(text) + "\"");
    }

    private static long[] parseIntegers(Path path, JsonParser p, String name, String what, JsonToken v,
            String rule) throws IOException {
        String prefix = "tensor \"" + name + "\": " + rule;
        if (v != JsonToken.START_ARRAY) {
            throw new SafeTensorsException(path, prefix + ", found " + describe(p, v));
        }
        long[] values = new long[4];
        int n = 0;
        JsonToken t;
        while ((t = p.nextToken()) != JsonToken.END_ARRAY) {
            String element = "; " + what + " element " + n;
            long value;
            if (t == JsonToken.VALUE_NUMBER_INT) {
                if (p.getNumberType() == JsonParser.NumberType.BIG_INTEGER) {
                    boolean negative = p.getText().startsWith("-");
                    throw new SafeTensorsException(path, prefix + element
                            + (negative ? " is negative (" : " exceeds 2^63-1 (") + p.getText() + ")");
                }
                value = p.getLongValue();
                if (value < 0) {
                    throw new SafeTensorsException(path, prefix + element + " is negative (" + value + ")");
                }
            } else if (t == JsonToken.VALUE_NUMBER_FLOAT) {
                throw new SafeTensorsException(path, prefix + element + " is not an integer (" + p.getText() + ")");
            } else {
                throw new SafeTensorsException(path, prefix + element + " is " + describe(p, t));
            }
            if (n == values.length) {
                values = Arrays.copyOf(values, n * 2);
            }
            values[n++] = value;
        }
        return Arrays.copyOf(values, n);
    }

    private static String describe(JsonParser p, JsonToken t) throws IOException {
        return switch (t) {
            case START_OBJECT -> "an object";
            case START_ARRAY -> "a list";
            case VALUE_STRING -> "the string \"" + clip(p.getText()) + "\"";
            case VALUE_NUMBER_INT, VALUE_NUMBER_FLOAT -> "the number " + p.getText();
            case VALUE_TRUE -> "true";
            case VALUE_FALSE -> "false";
            case VALUE_NULL -> "null";
            default -> String.valueOf(t);
        };
    }

    private static String clip(String s) {
        return s.length() <= 40 ? s : s.substring(0, 40) + "...";
    }

    private static String shapeString(long[] shape) {
        if (shape.length <= 8) {
            return Arrays.toString(shape);
        }
        return Arrays.toString(Arrays.copyOf(shape, 8)).replace("]", ", ... (rank " + shape.length + ")]");
    }

    /** Sorted by begin, the tensors must tile {@code [0, bufferSize)} exactly. */
    private static void checkLayout(Path path, Map<String, TensorInfo> tensors, long bufferSize)
            throws SafeTensorsException {
        List<TensorInfo> sorted = new ArrayList<>(tensors.values());
        sorted.sort(Comparator.comparingLong(TensorInfo::begin).thenComparingLong(TensorInfo::end));
        long covered = 0;
        TensorInfo previous = null;
        for (TensorInfo t : sorted) {
            if (t.begin() > covered) {
                throw new SafeTensorsException(path, "data_offsets leave a gap: buffer bytes [" + covered + ", "
                        + t.begin() + ") belong to no tensor (the next tensor is \"" + t.name() + "\")");
            }
            if (t.begin() < covered) {
                throw new SafeTensorsException(path, "data_offsets overlap: tensor \"" + t.name() + "\" ["
                        + t.begin() + ", " + t.end() + ") overlaps tensor \"" + previous.name() + "\" ["
                        + previous.begin() + ", " + previous.end() + ")");
            }
            covered = t.end();
            previous = t;
        }
        if (covered < bufferSize) {
            throw new SafeTensorsException(path, (bufferSize - covered)
                    + " trailing bytes belong to no tensor: the tensors cover " + covered
                    + " bytes of a " + bufferSize + "-byte data buffer");
        }
        if (covered > bufferSize) {
            throw new SafeTensorsException(path, "file is truncated: the tensors need " + covered
                    + " data bytes but only " + bufferSize + " follow the header");
        }
    }

    // ------------------------------------------------------------------------------------------
    // Writing
    // ------------------------------------------------------------------------------------------

    /**
     * Saves {@code tensors} (in this order) and {@code metadata} to {@code target}, crash-safely (see
     * the class documentation). An existing file is replaced atomically.
     *
     * @throws IllegalArgumentException if a name is empty, {@code "__metadata__"} or repeated, or the
     *     header would exceed {@value #MAX_HEADER_SIZE} bytes
     */
    public static void write(Path target, List<Tensor> tensors, Map<String, String> metadata) throws IOException {
        write(target, tensors, metadata, SaveSteps.DEFAULT);
    }

    /** {@link #write(Path, List, Map)} without metadata. */
    public static void write(Path target, List<Tensor> tensors) throws IOException {
        write(target, tensors, Map.of());
    }

    static void write(Path target, List<Tensor> tensors, Map<String, String> metadata, SaveSteps steps)
            throws IOException {
        byte[] header = header(tensors, metadata);
        Path absolute = target.toAbsolutePath();
        Path dir = absolute.getParent();
        String base = absolute.getFileName().toString();
        removeStaleTemporaries(dir, base);
        Path tmp = dir.resolve(temporaryName(base));
        boolean moved = false;
        try {
            try (FileChannel ch = FileChannel.open(tmp, StandardOpenOption.CREATE_NEW, StandardOpenOption.WRITE)) {
                writeFully(ch, ByteBuffer.wrap(header));
                try (Arena arena = Arena.ofConfined()) {
                    MemorySegment stage = arena.allocate(COPY_CHUNK);
                    ByteBuffer buf = stage.asByteBuffer();
                    for (Tensor t : tensors) {
                        MemorySegment src = t.data();
                        for (long off = 0; off < src.byteSize(); off += COPY_CHUNK) {
                            int len = (int) Math.min(COPY_CHUNK, src.byteSize() - off);
                            MemorySegment.copy(src, off, stage, 0, len);
                            buf.clear().limit(len);
                            writeFully(ch, buf);
                        }
                    }
                }
                steps.forceFile(ch);
            }
            steps.move(tmp, absolute);
            moved = true;
        } catch (IOException | RuntimeException | Error e) {
            if (!moved) {
                try {
                    Files.deleteIfExists(tmp);
                } catch (IOException suppressed) {
                    e.addSuppressed(suppressed);
                }
            }
            throw e;
        }
        steps.forceDirectory(dir);
    }

    /** The whole file as bytes, exactly as {@link #write(Path, List, Map)} would write it. */
    public static byte[] serialize(List<Tensor> tensors, Map<String, String> metadata) {
        byte[] header = header(tensors, metadata);
        long total = header.length;
        for (Tensor t : tensors) {
            total += t.byteSize();
        }
        if (total > Integer.MAX_VALUE - 8) {
            throw new IllegalArgumentException("serialized size " + total + " does not fit in a byte array; use write()");
        }
        byte[] out = Arrays.copyOf(header, (int) total);
        MemorySegment dst = MemorySegment.ofArray(out);
        long off = header.length;
        for (Tensor t : tensors) {
            MemorySegment.copy(t.data(), 0, dst, off, t.byteSize());
            off += t.byteSize();
        }
        return out;
    }

    /** The 8-byte length, the JSON header and its space padding to a multiple of 8. */
    static byte[] header(List<Tensor> tensors, Map<String, String> metadata) {
        Set<String> names = new HashSet<>();
        for (Tensor t : tensors) {
            if (t.name().isEmpty()) {
                throw new IllegalArgumentException("a tensor has an empty name");
            }
            if (t.name().equals("__metadata__")) {
                throw new IllegalArgumentException("\"__metadata__\" is reserved and cannot name a tensor");
            }
            if (!names.add(t.name())) {
                throw new IllegalArgumentException("duplicate tensor name \"" + t.name() + "\"");
            }
        }
        ByteArrayOutputStream json = new ByteArrayOutputStream();
        try (JsonGenerator g = JSON.createGenerator(json, JsonEncoding.UTF8)) {
            g.writeStartObject();
            if (metadata != null && !metadata.isEmpty()) {
                g.writeFieldName("__metadata__");
                g.writeStartObject();
                for (Map.Entry<String, String> e : metadata.entrySet()) {
                    g.writeStringField(e.getKey(), Objects.requireNonNull(e.getValue(),
                            () -> "metadata value for \"" + e.getKey() + "\""));
                }
                g.writeEndObject();
            }
            long offset = 0;
            for (Tensor t : tensors) {
                g.writeFieldName(t.name());
                g.writeStartObject();
                g.writeStringField("dtype", t.dtype().name());
                g.writeArrayFieldStart("shape");
                for (long d : t.shape()) {
                    g.writeNumber(d);
                }
                g.writeEndArray();
                g.writeArrayFieldStart("data_offsets");
                g.writeNumber(offset);
                offset += t.byteSize();
                g.writeNumber(offset);
                g.writeEndArray();
                g.writeEndObject();
            }
            g.writeEndObject();
        } catch (IOException e) {
            throw new UncheckedIOException(e); // a ByteArrayOutputStream does not fail
        }
        int length = json.size();
        int padded = length + (8 - length % 8) % 8;
        if (padded > MAX_HEADER_SIZE) {
            throw new IllegalArgumentException("header would be " + padded + " bytes, over the limit of "
                    + MAX_HEADER_SIZE);
        }
        byte[] out = new byte[8 + padded];
        MemorySegment.ofArray(out).set(ValueLayout.JAVA_LONG_UNALIGNED.withOrder(ByteOrder.LITTLE_ENDIAN), 0, padded);
        System.arraycopy(json.toByteArray(), 0, out, 8, length);
        Arrays.fill(out, 8 + length, out.length, (byte) ' ');
        return out;
    }

    private static void writeFully(FileChannel ch, ByteBuffer buf) throws IOException {
        while (buf.hasRemaining()) {
            ch.write(buf);
        }
    }

    static String temporaryName(String base) {
        return "." + base + ".tmp-" + HexFormat.of().toHexDigits(ThreadLocalRandom.current().nextLong());
    }

    /** Whether {@code fileName} is a temporary that a save of {@code base} creates. */
    static boolean isTemporaryOf(String fileName, String base) {
        return fileName.length() == base.length() + 22
                && fileName.startsWith("." + base + ".tmp-")
                && TEMP_SUFFIX.matcher(fileName.substring(base.length() + 6)).matches();
    }

    private static final Pattern TEMP_SUFFIX = Pattern.compile("[0-9a-f]{16}");

    private static void removeStaleTemporaries(Path dir, String base) throws IOException {
        try (DirectoryStream<Path> stale = Files.newDirectoryStream(dir,
                p -> isTemporaryOf(p.getFileName().toString(), base))) {
            for (Path p : stale) {
                Files.deleteIfExists(p);
            }
        }
    }

    /** The durability steps of a save, replaceable in tests to observe their order or inject faults. */
    interface SaveSteps {
        void forceFile(FileChannel channel) throws IOException;

        void move(Path from, Path to) throws IOException;

        void forceDirectory(Path dir) throws IOException;

        SaveSteps DEFAULT = new SaveSteps() {
            @Override
            public void forceFile(FileChannel channel) throws IOException {
                channel.force(true);
            }

            @Override
            public void move(Path from, Path to) throws IOException {
                Files.move(from, to, StandardCopyOption.ATOMIC_MOVE, StandardCopyOption.REPLACE_EXISTING);
            }

            @Override
            public void forceDirectory(Path dir) {
                try (FileChannel d = FileChannel.open(dir, StandardOpenOption.READ)) {
                    d.force(true);
                } catch (IOException ignored) {
                    // Some platforms and file systems cannot open or sync a directory; the rename is
                    // still atomic there, only its durability is up to the file system.
                }
            }
        };
    }
}
