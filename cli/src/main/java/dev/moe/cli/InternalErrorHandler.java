package dev.moe.cli;

import java.io.PrintWriter;
import picocli.CommandLine;
import picocli.CommandLine.IExecutionExceptionHandler;

/**
 * What the user sees when moe itself fails: one line with the message, one line asking for a report,
 * exit status 70. A user's mistake never gets here (those are diagnostics or usage errors); the stack
 * trace is printed only with {@code MOE_DEBUG=1}.
 */
final class InternalErrorHandler implements IExecutionExceptionHandler {
    private final boolean debug;

    InternalErrorHandler(boolean debug) {
        this.debug = debug;
    }

    static boolean debugFromEnvironment() {
        return "1".equals(System.getenv("MOE_DEBUG"));
    }

    @Override
    public int handleExecutionException(Exception ex, CommandLine commandLine, CommandLine.ParseResult parseResult) {
        return report(ex, commandLine.getErr(), debug);
    }

    static int report(Throwable t, PrintWriter err, boolean debug) {
        String message = t.getMessage() == null || t.getMessage().isBlank() ? t.getClass().getName() : t.getMessage();
        err.println("moe: internal error: " + message);
        if (debug) {
            t.printStackTrace(err);
        } else {
            err.println("moe: this is a bug in moe, not in your file; please report it with the command you ran"
                    + " and the .moe file (MOE_DEBUG=1 shows the stack trace)");
        }
        err.flush();
        return MoeCli.EXIT_INTERNAL;
    }
}
