package dev.moe.cli;

import dev.moe.runtime.Backend;
import java.io.BufferedReader;
import java.io.InputStream;
import java.io.InputStreamReader;
import java.io.PrintWriter;
import java.nio.charset.StandardCharsets;
import java.nio.file.Path;
import java.util.concurrent.Callable;
import picocli.CommandLine.Command;
import picocli.CommandLine.Mixin;
import picocli.CommandLine.Model.CommandSpec;
import picocli.CommandLine.Option;
import picocli.CommandLine.Parameters;
import picocli.CommandLine.Spec;

/**
 * {@code moe repl [FILE]}: JShell in this JVM with the runtime, and the compiled model of FILE bound
 * to {@code model}. Reads standard input, so a script can be piped in.
 */
@Command(
        name = "repl",
        description = {"Start JShell with a model loaded.",
            "JShell runs in this JVM with the runtime and the generated classes of FILE's model on its class path;"
                    + " `model` is a Session (dev.moe.runtime.train.Session) over that model, with the settings of the"
                    + " file's `train` block.",
            "Helpers: train(n), generate(text), loads(), evaluate(), reload(), open(file), help().",
            "Without FILE only the runtime is loaded: open(file) compiles a recipe. /exit leaves."},
        exitCodeListHeading = "%nExit status:%n",
        exitCodeList = {"0:the session ended (/exit or end of input)", "1:FILE has errors or uses an unsupported feature, or the backend cannot be opened",
            "2:usage error"})
final class ReplCommand implements Callable<Integer> {
    @Spec
    CommandSpec spec;

    @Mixin
    HelpOption help;

    @Mixin
    BackendOption backendOption;

    @Parameters(paramLabel = "FILE", arity = "0..1", description = "The .moe recipe whose model to load.")
    Path file;

    @Option(names = "--model", paramLabel = "NAME", description = "Which model, when the file declares several.")
    String model;

    @Option(names = "--threads", paramLabel = "N", description = "CPU threads (default: all cores).")
    int threads = Runtime.getRuntime().availableProcessors();

    @Option(names = "--stack-traces", description = "Show the stack trace of an exception thrown by a snippet, not one line.")
    boolean stackTraces;

    private final InputStream in;

    ReplCommand() {
        this(System.in);
    }

    /** Tests feed the session from a string. */
    ReplCommand(InputStream in) {
        this.in = in;
    }

    @Override
    public Integer call() {
        PrintWriter out = spec.commandLine().getOut();
        PrintWriter err = spec.commandLine().getErr();
        if (threads < 1) {
            err.println("moe: error: --threads must be at least 1");
            err.flush();
            return 2;
        }
        Backend backend;
        try {
            backend = backendOption.create(threads); // one for the whole session: every model reloaded shares it
        } catch (Recipes.UserError e) {
            err.println("moe: error: " + e.getMessage());
            err.flush();
            return 1;
        }
        Repl repl = new Repl(out, err, backend, stackTraces);
        try {
            if (file != null && !repl.open(file, model)) {
                return 1;
            }
            if (file == null) {
                repl.start(null);
            }
            repl.run(new BufferedReader(new InputStreamReader(in, StandardCharsets.UTF_8)), System.console() != null);
            return 0;
        } finally {
            repl.close();
        }
    }
}
