package dev.moe.runtime.io;

import java.io.IOException;
import java.io.Serial;
import java.nio.file.Path;
import java.util.Objects;

/**
 * A safetensors file (or a request against one) is malformed or unsupported. The message always
 * starts with the file's path, followed by a colon and the problem in words, so that it can be
 * shown to a user as it is.
 */
public final class SafeTensorsException extends IOException {
    @Serial
    private static final long serialVersionUID = 1L;

    private final transient Path file;
    private final String problem;

    public SafeTensorsException(Path file, String problem) {
        super(file + ": " + Objects.requireNonNull(problem, "problem"));
        this.file = file;
        this.problem = problem;
    }

    public SafeTensorsException(Path file, String problem, Throwable cause) {
        this(file, problem);
        initCause(cause);
    }

    /** The file the problem was found in. */
    public Path file() {
        return file;
    }

    /** The problem, without the file name. */
    public String problem() {
        return problem;
    }
}
