package dev.moe.runtime.data;

import java.nio.charset.StandardCharsets;

/**
 * Byte-level tokens: a text's UTF-8 bytes, each one token {@code 0..255}. No merges, no special
 * tokens; documents are separated by {@code '\n'} (token 10).
 *
 * <p>The vocabulary is {@value #VOCAB_SIZE}. Recipes declare {@code vocab 256}; a model with a
 * larger vocabulary works unchanged, its ids from 256 up are simply never produced by
 * {@link #encode} (and {@link #decode} renders them as U+FFFD should a model sample one).
 *
 * <p>Stateless and thread-safe.
 */
public final class ByteTokenizer {
    /** Number of distinct tokens: one per byte value. */
    public static final int VOCAB_SIZE = 256;

    /** The shared instance (the class has no state). */
    public static final ByteTokenizer INSTANCE = new ByteTokenizer();

    private static final byte INVALID = (byte) 0xFF; // never valid in UTF-8, so it decodes to U+FFFD

    public ByteTokenizer() {}

    public int vocabSize() {
        return VOCAB_SIZE;
    }

    /**
     * The UTF-8 bytes of {@code text} as tokens. Unpaired surrogates, which UTF-8 cannot encode,
     * become {@code '?'} (as in {@link String#getBytes}).
     */
    public int[] encode(String text) {
        return tokens(text.getBytes(StandardCharsets.UTF_8));
    }

    /** Bytes as tokens: {@code b & 0xFF}. */
    public static int[] tokens(byte[] bytes) {
        int[] out = new int[bytes.length];
        for (int i = 0; i < bytes.length; i++) {
            out[i] = bytes[i] & 0xFF;
        }
        return out;
    }

    /**
     * Tokens back to text. Never throws: malformed or truncated UTF-8 becomes U+FFFD (one per
     * maximal invalid subsequence, as {@link String#String(byte[], java.nio.charset.Charset)} does),
     * and so does each id outside {@code 0..255}.
     */
    public String decode(int[] tokens) {
        return decode(tokens, 0, tokens.length);
    }

    /** {@link #decode(int[])} of {@code tokens[offset..offset+length)}. */
    public String decode(int[] tokens, int offset, int length) {
        java.util.Objects.checkFromIndexSize(offset, length, tokens.length);
        byte[] bytes = new byte[length];
        for (int i = 0; i < length; i++) {
            int t = tokens[offset + i];
            bytes[i] = t >= 0 && t < VOCAB_SIZE ? (byte) t : INVALID;
        }
        return new String(bytes, StandardCharsets.UTF_8);
    }
}
