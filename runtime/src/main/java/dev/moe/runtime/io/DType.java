package dev.moe.runtime.io;

import java.util.Set;

/**
 * The element types this reader and writer support. The constant names are the safetensors names
 * ({@code "F32"}, {@code "BF16"}, ...). Every dtype can be read as raw little-endian bytes; F32 and
 * F64 also have typed accessors.
 */
public enum DType {
    BOOL(1),
    U8(1),
    F16(2),
    BF16(2),
    I32(4),
    F32(4),
    I64(8),
    F64(8);

    /**
     * Names that the safetensors specification defines but this reader does not support, so that
     * they are reported as "unsupported" rather than "unknown".
     */
    static final Set<String> OTHER_SPEC_NAMES = Set.of(
            "F4", "F6_E2M3", "F6_E3M2", "I8", "F8_E5M2", "F8_E4M3", "F8_E8M0", "F8_E4M3FNUZ",
            "F8_E5M2FNUZ", "I16", "U16", "U32", "C64", "U64");

    private final int byteSize;

    DType(int byteSize) {
        this.byteSize = byteSize;
    }

    /** Bytes per element. */
    public int byteSize() {
        return byteSize;
    }

    /** The dtype with this exact (case-sensitive) safetensors name, or {@code null}. */
    public static DType fromName(String name) {
        for (DType t : values()) {
            if (t.name().equals(name)) {
                return t;
            }
        }
        return null;
    }
}
