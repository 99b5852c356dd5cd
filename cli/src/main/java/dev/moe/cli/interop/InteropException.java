package dev.moe.cli.interop;

/** Bad or unsupported input to import or export: a message naming the file and the tensor, for the user. */
public final class InteropException extends Exception {
    public InteropException(String message) {
        super(message);
    }

    public InteropException(String message, Throwable cause) {
        super(message, cause);
    }
}
