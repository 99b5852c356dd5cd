package dev.moe.runtime.data;

import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.io.UncheckedIOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Comparator;
import java.util.List;
import java.util.Objects;
import java.util.stream.Stream;

/**
 * A domain read from text: the bytes of one or more files (expected to be UTF-8, taken as they are),
 * each sequence a window at a random offset.
 *
 * <p>The last {@value #HELD_OUT_DIVISOR}th of the bytes is held out for evaluation when both parts
 * can hold a whole sequence: training windows lie in the head, evaluation windows in the tail. A
 * text too short for that is used whole by both, and windows longer than the text wrap around.
 *
 * <p>{@link #document Documents} are the text's paragraphs: a document starts at the text's start
 * and after each blank line, and runs to the next document (its trailing newlines included). A
 * document is at least two bytes long (a one-byte last paragraph joins the one before). Documents
 * that start in the held-out tail are the evaluation documents, when both parts hold one.
 */
public final class TextCorpus implements Domain {
    /** One byte in this many, at the end of the text, is held out for evaluation. */
    public static final int HELD_OUT_DIVISOR = 20;

    private final String name;
    private final byte[] bytes;
    private final long fingerprint;
    /** Where each document starts, ascending; the last document ends at the text's end. */
    private final int[] starts;

    private TextCorpus(String name, byte[] bytes) {
        if (bytes.length == 0) {
            throw new IllegalArgumentException("text domain `" + name + "` is empty");
        }
        this.name = name;
        this.bytes = bytes;
        long h = SplitMix64.hash(bytes.length);
        for (byte b : bytes) {
            h = SplitMix64.mix((h + SplitMix64.GAMMA) ^ b);
        }
        this.fingerprint = h;
        int[] at = new int[16];
        int count = 0;
        for (int i = 0; i < bytes.length - 1; i++) {
            boolean afterBlankLine = i >= 2 && bytes[i - 1] == '\n' && bytes[i - 2] == '\n';
            if ((i == 0 || afterBlankLine && bytes[i] != '\n') && (count == 0 || i - at[count - 1] >= 2)) {
                if (count == at.length) {
                    at = java.util.Arrays.copyOf(at, count * 2);
                }
                at[count++] = i;
            }
        }
        this.starts = java.util.Arrays.copyOf(at, Math.max(count, 1));
    }

    /** A corpus of the given bytes (copied). */
    public static TextCorpus of(String name, byte[] bytes) {
        return new TextCorpus(Objects.requireNonNull(name), bytes.clone());
    }

    /** A corpus of a string's UTF-8 bytes. */
    public static TextCorpus of(String name, String text) {
        return new TextCorpus(Objects.requireNonNull(name), text.getBytes(StandardCharsets.UTF_8));
    }

    /**
     * Reads files and directories in the order given; a directory contributes its regular files,
     * recursively, sorted by their path relative to it (with {@code /} separators, so the order does
     * not depend on the platform), skipping entries whose name starts with {@code .}. The files'
     * bytes are joined with one {@code '\n'} between consecutive files.
     *
     * @throws UncheckedIOException when a path cannot be read, or holds no files
     */
    public static TextCorpus load(String name, List<Path> paths) {
        List<Path> files = files(paths);
        if (files.isEmpty()) {
            throw new UncheckedIOException(new IOException("no text files in " + paths));
        }
        ByteArrayOutputStream out = new ByteArrayOutputStream();
        for (int i = 0; i < files.size(); i++) {
            if (i > 0) {
                out.write('\n');
            }
            try {
                out.writeBytes(Files.readAllBytes(files.get(i)));
            } catch (IOException e) {
                throw new UncheckedIOException("cannot read " + files.get(i), e);
            }
        }
        return new TextCorpus(Objects.requireNonNull(name), out.toByteArray());
    }

    /** {@link #load(String, List)} named after the paths. */
    public static TextCorpus load(Path... paths) {
        return load(List.of(paths).toString(), List.of(paths));
    }

    /** The files {@link #load} reads, in order. */
    public static List<Path> files(List<Path> paths) {
        List<Path> files = new ArrayList<>();
        for (Path p : paths) {
            if (Files.isDirectory(p)) {
                try (Stream<Path> walk = Files.walk(p)) {
                    walk.filter(f -> Files.isRegularFile(f) && !hidden(p, f))
                            .sorted(Comparator.comparing((Path f) -> relative(p, f)))
                            .forEach(files::add);
                } catch (IOException e) {
                    throw new UncheckedIOException("cannot list " + p, e);
                }
            } else if (Files.isRegularFile(p)) {
                files.add(p);
            } else {
                throw new UncheckedIOException(new java.nio.file.NoSuchFileException(p.toString()));
            }
        }
        return files;
    }

    private static boolean hidden(Path root, Path file) {
        for (Path part : root.relativize(file)) {
            if (part.toString().startsWith(".")) {
                return true;
            }
        }
        return false;
    }

    private static String relative(Path root, Path file) {
        StringBuilder sb = new StringBuilder();
        for (Path part : root.relativize(file)) {
            if (!sb.isEmpty()) {
                sb.append('/');
            }
            sb.append(part);
        }
        return sb.toString();
    }

    @Override
    public String name() {
        return name;
    }

    /** Number of bytes (tokens). */
    public int size() {
        return bytes.length;
    }

    /** A copy of the bytes. */
    public byte[] bytes() {
        return bytes.clone();
    }

    @Override
    public int sample(long seed, boolean heldOut, int[] out, int offset, int length) {
        Objects.checkFromIndexSize(offset, length, out.length);
        int n = bytes.length;
        int cut = n - n / HELD_OUT_DIVISOR;
        int from = 0;
        int to = n;
        if (cut >= length && n - cut >= length) {
            from = heldOut ? cut : 0;
            to = heldOut ? n : cut;
        }
        int span = to - from;
        SplitMix64 rng = new SplitMix64(seed);
        int start = span >= length ? rng.nextInt(span - length + 1) : rng.nextInt(span);
        for (int i = 0; i < length; i++) {
            out[offset + i] = bytes[from + (start + i) % span] & 0xFF;
        }
        return 0;
    }

    /** The number of documents (paragraphs). */
    public int documents() {
        return starts.length;
    }

    @Override
    public Drawn document(long seed, boolean heldOut, int[] out, int offset, int length) {
        Objects.checkFromIndexSize(offset, length, out.length);
        int n = bytes.length;
        int cut = n - n / HELD_OUT_DIVISOR;
        int firstHeldOut = 0;
        while (firstHeldOut < starts.length && starts[firstHeldOut] < cut) {
            firstHeldOut++;
        }
        int lo = 0;
        int hi = starts.length;
        if (firstHeldOut > 0 && firstHeldOut < starts.length) {
            lo = heldOut ? firstHeldOut : 0;
            hi = heldOut ? starts.length : firstHeldOut;
        }
        SplitMix64 rng = new SplitMix64(seed);
        int j = lo + rng.nextInt(hi - lo);
        int from = starts[j];
        int size = (j + 1 < starts.length ? starts[j + 1] : n) - from;
        if (size > length) {
            from += rng.nextInt(size - length + 1);
            size = length;
        }
        for (int i = 0; i < size; i++) {
            out[offset + i] = bytes[from + i] & 0xFF;
        }
        return new Drawn(0, size);
    }

    @Override
    public long fingerprint() {
        return fingerprint;
    }

    @Override
    public String toString() {
        return "TextCorpus[" + name + ", " + bytes.length + " bytes]";
    }
}
