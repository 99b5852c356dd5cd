package dev.moe.codegen;

/**
 * A checked model uses a feature that code generation does not implement yet. The message names the
 * feature and the model; the CLI prints it as an error, not a crash.
 */
public final class UnsupportedFeatureException extends RuntimeException {
    public UnsupportedFeatureException(String message) {
        super(message);
    }
}
