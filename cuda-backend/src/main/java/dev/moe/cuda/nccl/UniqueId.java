package dev.moe.cuda.nccl;

import java.io.DataInputStream;
import java.io.IOException;
import java.io.InputStream;
import java.io.OutputStream;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.util.Arrays;
import java.util.HexFormat;

/**
 * NCCL's {@code ncclUniqueId}: 128 opaque bytes that rank 0 makes with {@code ncclGetUniqueId} and
 * every rank passes to {@code ncclCommInitRank}. It travels to the other ranks over the rendezvous
 * socket as raw bytes, or as hex in an environment variable or a file.
 */
public record UniqueId(byte[] bytes) {
    public static final int BYTES = 128;

    public UniqueId {
        if (bytes.length != BYTES) {
            throw new IllegalArgumentException("an NCCL unique id has " + BYTES + " bytes, not " + bytes.length);
        }
        bytes = bytes.clone();
    }

    @Override
    public byte[] bytes() {
        return bytes.clone();
    }

    /** One long a byte (0 to 255): summed over ranks of which only one contributes it and the others zeros, it arrives whole. */
    public long[] toLongs() {
        long[] out = new long[BYTES];
        for (int i = 0; i < BYTES; i++) {
            out[i] = bytes[i] & 0xff;
        }
        return out;
    }

    /** The id of {@link #toLongs}. */
    public static UniqueId fromLongs(long[] values) {
        if (values.length != BYTES) {
            throw new IllegalArgumentException("an NCCL unique id has " + BYTES + " bytes, not " + values.length);
        }
        byte[] out = new byte[BYTES];
        for (int i = 0; i < BYTES; i++) {
            if (values[i] < 0 || values[i] > 255) {
                throw new IllegalArgumentException("byte " + i + " of an NCCL unique id is " + values[i] + ": more than one rank sent an id?");
            }
            out[i] = (byte) values[i];
        }
        return new UniqueId(out);
    }

    public String toHex() {
        return HexFormat.of().formatHex(bytes);
    }

    public static UniqueId fromHex(String hex) {
        String s = hex.strip();
        if (s.length() != 2 * BYTES) {
            throw new IllegalArgumentException("an NCCL unique id is " + 2 * BYTES + " hex digits, got " + s.length());
        }
        try {
            return new UniqueId(HexFormat.of().parseHex(s));
        } catch (IllegalArgumentException e) {
            throw new IllegalArgumentException("an NCCL unique id is hex digits only: " + e.getMessage(), e);
        }
    }

    public void write(OutputStream out) throws IOException {
        out.write(bytes);
    }

    public static UniqueId read(InputStream in) throws IOException {
        byte[] b = new byte[BYTES];
        new DataInputStream(in).readFully(b);
        return new UniqueId(b);
    }

    /** A copy in native memory, to pass by value to ncclCommInitRank. */
    MemorySegment toSegment(Arena arena) {
        MemorySegment s = arena.allocate(Nccl.UNIQUE_ID);
        s.copyFrom(MemorySegment.ofArray(bytes));
        return s;
    }

    static UniqueId fromSegment(MemorySegment s) {
        return new UniqueId(s.asSlice(0, BYTES).toArray(java.lang.foreign.ValueLayout.JAVA_BYTE));
    }

    @Override
    public boolean equals(Object o) {
        return o instanceof UniqueId other && Arrays.equals(bytes, other.bytes);
    }

    @Override
    public int hashCode() {
        return Arrays.hashCode(bytes);
    }

    @Override
    public String toString() {
        return "UniqueId[" + toHex().substring(0, 16) + "…]";
    }
}
