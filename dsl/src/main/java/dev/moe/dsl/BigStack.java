package dev.moe.dsl;

import java.util.concurrent.atomic.AtomicReference;
import java.util.function.Supplier;

/**
 * Runs recursive tree work (parsing, formatting, comparing, checking) on a thread with a large,
 * fixed stack, so that long operator chains and deep nesting within the language's limits never
 * overflow whatever {@code -Xss} the caller runs with.
 */
public final class BigStack {
    private static final long STACK_BYTES = 256L << 20;

    private BigStack() {}

    /** Raised when even the large stack overflows; callers turn it into a diagnostic. */
    public static final class Overflow extends RuntimeException {
        Overflow(Throwable cause) {
            super("input is nested too deeply to process", cause);
        }
    }

    public static <T> T call(String name, Supplier<T> work) {
        AtomicReference<T> result = new AtomicReference<>();
        AtomicReference<Throwable> failure = new AtomicReference<>();
        Thread worker = new Thread(null, () -> {
            try {
                result.set(work.get());
            } catch (Throwable t) {
                failure.set(t);
            }
        }, name, STACK_BYTES);
        worker.start();
        try {
            worker.join();
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
            throw new IllegalStateException("interrupted in " + name, e);
        }
        Throwable t = failure.get();
        if (t instanceof StackOverflowError so) {
            throw new Overflow(so);
        }
        if (t instanceof RuntimeException re) {
            throw re;
        }
        if (t instanceof Error err) {
            throw err;
        }
        return result.get();
    }
}
