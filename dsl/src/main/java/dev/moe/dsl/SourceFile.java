package dev.moe.dsl;

import dev.moe.dsl.diag.Code;
import dev.moe.dsl.diag.Diagnostic;
import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.charset.CharacterCodingException;
import java.nio.charset.CharsetDecoder;
import java.nio.charset.CodingErrorAction;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.NoSuchFileException;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Locale;

/** The text of one {@code .moe} file and the name it is reported under. Immutable. */
public final class SourceFile {
    /** Recipes are a few KB; anything this large is a mistake, and refusing it keeps checks fast. */
    public static final int MAX_BYTES = 1 << 20;

    private final String name;
    private final String text;
    private final int[] lineStarts;

    public SourceFile(String name, String text) {
        this.name = name;
        this.text = text;
        // Lines end at \n, as for the lexer (whose line numbers every span carries): a lone \r is
        // whitespace within a line, not a line break.
        List<Integer> starts = new ArrayList<>();
        starts.add(0);
        for (int i = 0; i < text.length(); i++) {
            if (text.charAt(i) == '\n') {
                starts.add(i + 1);
            }
        }
        this.lineStarts = starts.stream().mapToInt(Integer::intValue).toArray();
    }

    public String name() {
        return name;
    }

    public String text() {
        return text;
    }

    public int lineCount() {
        return lineStarts.length;
    }

    /** The 1-based line's text without its line terminator; empty past the end. */
    public String line(int line) {
        if (line < 1 || line > lineStarts.length) {
            return "";
        }
        int start = lineStarts[line - 1];
        int end = line < lineStarts.length ? lineStarts[line] : text.length();
        while (end > start && (text.charAt(end - 1) == '\n' || text.charAt(end - 1) == '\r')) {
            end--;
        }
        return text.substring(start, end);
    }

    /** The outcome of reading a file: the source, or the one diagnostic that says why it cannot be read. */
    public sealed interface ReadResult {
        record Ok(SourceFile source) implements ReadResult {}

        record Failed(Diagnostic diagnostic) implements ReadResult {}
    }

    /** Reads a file as strict UTF-8. Never throws for a user's mistake: those become diagnostics. */
    public static ReadResult read(Path path) {
        String name = path.toString();
        if (Files.isDirectory(path)) {
            return failed(name, "`" + name + "` is a directory, not a .moe file", "give the path of a .moe file inside it");
        }
        if (Files.exists(path) && !Files.isRegularFile(path)) {
            return failed(name, "`" + name + "` is not a regular file", null);
        }
        byte[] bytes;
        try {
            long size = Files.size(path);
            if (size > MAX_BYTES) {
                return failed(name, String.format(Locale.ROOT, "file is too large (%,d bytes; the limit is %,d)", size, MAX_BYTES),
                        "a .moe file declares a model; data and weights belong in separate files");
            }
            try (var in = Files.newInputStream(path)) {
                bytes = in.readNBytes(MAX_BYTES + 1); // bounded even if the size changed meanwhile
            }
        } catch (NoSuchFileException e) {
            return failed(name, "no such file `" + name + "`", null);
        } catch (IOException | SecurityException e) {
            return failed(name, "cannot read `" + name + "`: " + e.getMessage(), null);
        }
        return decode(name, bytes);
    }

    /** Decodes bytes as strict UTF-8 (a leading byte-order mark is dropped). */
    public static ReadResult decode(String name, byte[] bytes) {
        if (bytes.length > MAX_BYTES) {
            return failed(name, String.format(Locale.ROOT, "file is too large (%,d bytes; the limit is %,d)", bytes.length, MAX_BYTES),
                    "a .moe file declares a model; data and weights belong in separate files");
        }
        CharsetDecoder decoder = StandardCharsets.UTF_8.newDecoder()
                .onMalformedInput(CodingErrorAction.REPORT)
                .onUnmappableCharacter(CodingErrorAction.REPORT);
        try {
            String text = decoder.decode(ByteBuffer.wrap(bytes)).toString();
            if (text.startsWith("\uFEFF")) {
                text = text.substring(1);
            }
            return new ReadResult.Ok(new SourceFile(name, text));
        } catch (CharacterCodingException e) {
            int bad = firstMalformedByte(bytes);
            String prefix = new String(bytes, 0, bad, StandardCharsets.UTF_8);
            SourceFile partial = new SourceFile(name, prefix);
            int line = partial.lineCount();
            int column = partial.line(line).length() + 1;
            return new ReadResult.Failed(Diagnostic.error(Code.INVALID_UTF8, partial, Span.point(line, column),
                    String.format(Locale.ROOT, "file is not valid UTF-8: byte 0x%02x at offset %d", bytes[bad] & 0xff, bad))
                    .withHelp("save the file as UTF-8"));
        }
    }

    private static int firstMalformedByte(byte[] bytes) {
        CharsetDecoder decoder = StandardCharsets.UTF_8.newDecoder()
                .onMalformedInput(CodingErrorAction.REPORT)
                .onUnmappableCharacter(CodingErrorAction.REPORT);
        ByteBuffer in = ByteBuffer.wrap(bytes);
        java.nio.CharBuffer out = java.nio.CharBuffer.allocate(bytes.length + 1);
        var result = decoder.decode(in, out, true);
        return result.isError() ? in.position() : Math.max(0, bytes.length - 1);
    }

    private static ReadResult failed(String name, String message, String help) {
        Diagnostic d = Diagnostic.fileError(Code.CANNOT_READ, name, message);
        return new ReadResult.Failed(help == null ? d : d.withHelp(help));
    }

    @Override
    public String toString() {
        return name;
    }
}
