package dev.moe.cli;

import com.palantir.javapoet.JavaFile;
import dev.moe.codegen.JavaGenerator;
import dev.moe.codegen.UnsupportedFeatureException;
import dev.moe.compiler.ir.Training;
import dev.moe.dsl.SourceFile;
import dev.moe.runtime.Backend;
import dev.moe.runtime.TrainableModel;
import dev.moe.runtime.train.Session;
import java.io.BufferedReader;
import java.io.ByteArrayOutputStream;
import java.io.File;
import java.io.IOException;
import java.io.OutputStream;
import java.io.PrintStream;
import java.io.PrintWriter;
import java.io.UncheckedIOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Comparator;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.Optional;
import java.util.function.Function;
import java.util.stream.Stream;
import jdk.jshell.Diag;
import jdk.jshell.EvalException;
import jdk.jshell.ExpressionSnippet;
import jdk.jshell.JShell;
import jdk.jshell.JShellException;
import jdk.jshell.Snippet;
import jdk.jshell.SnippetEvent;
import jdk.jshell.SourceCodeAnalysis;
import jdk.jshell.UnresolvedReferenceException;
import jdk.jshell.VarSnippet;
import jdk.jshell.execution.LocalExecutionControl;
import jdk.jshell.spi.ExecutionControl;
import jdk.jshell.spi.ExecutionControlProvider;
import jdk.jshell.spi.ExecutionEnv;

/**
 * A JShell session in this JVM (its execution engine is local, so snippets share the model, its
 * backend and this class's static state) with a recipe's model bound to {@code model}. Reads
 * snippets from a reader until {@code /exit} or the end of input; prints values, JShell's compile
 * errors, and an exception in one line (with {@code --stack-traces}, its trace).
 *
 * <p>The model's generated classes are written to a temporary directory on JShell's class path, so
 * that snippets can name them ({@code moe.generated.MixtralTiny}). Reloading a recipe starts a new
 * JShell, because a class of the same name cannot be loaded twice by one class loader.
 */
final class Repl implements AutoCloseable {
    /** The session the helpers in {@link ReplSupport} call back to. */
    static volatile Repl active;

    private record Recipe(Path file, String modelName, Recipes.Chosen chosen, SourceFile source, String className, Map<String, byte[]> classes) {}

    private final PrintWriter out;
    private final PrintWriter err;
    private final Backend backend;
    private final boolean stackTraces;
    private final List<Path> classDirs = new ArrayList<>();
    private JShell shell;
    private Recipe recipe;
    private volatile Path pendingOpen;
    private volatile boolean pendingReload;

    Repl(PrintWriter out, PrintWriter err, Backend backend, boolean stackTraces) {
        this.out = out;
        this.err = err;
        this.backend = backend;
        this.stackTraces = stackTraces;
    }

    /** Compiles a recipe and starts a session with its model; false (after saying why) when it cannot. */
    boolean open(Path file, String modelName) {
        Recipe r = compile(file, modelName);
        if (r == null) {
            return false;
        }
        start(r);
        return true;
    }

    private Recipe compile(Path file, String modelName) {
        SourceFile source = switch (SourceFile.read(file)) {
            case SourceFile.ReadResult.Failed f -> {
                err.print(f.diagnostic());
                err.flush();
                yield null;
            }
            case SourceFile.ReadResult.Ok ok -> ok.source();
        };
        if (source == null) {
            return null;
        }
        try {
            Recipes.Chosen chosen = Recipes.choose(source, modelName, err);
            JavaFile java = JavaGenerator.generate(chosen.model(), JavaGenerator.DEFAULT_PACKAGE, source.name());
            return new Recipe(file, chosen.model().name(), chosen, source, JavaGenerator.DEFAULT_PACKAGE + "." + java.typeSpec().name(),
                    ClassCache.compile(java));
        } catch (Recipes.UserError | UnsupportedFeatureException e) {
            err.println("moe: error: " + e.getMessage());
            err.flush();
            return null;
        }
    }

    /** Starts a fresh JShell: with {@code r}'s model bound to {@code model}, or with the runtime only. */
    void start(Recipe r) {
        if (shell != null) {
            shell.close();
        }
        recipe = r;
        active = this;
        shell = JShell.builder().executionEngine(new InProcess(Repl.class.getClassLoader()), Map.of()).build();
        shell.addToClasspath(System.getProperty("java.class.path"));
        if (r != null) {
            shell.addToClasspath(writeClasses(r.classes()).toString());
        }
        List<String> startup = new ArrayList<>(List.of(
                "import dev.moe.runtime.*;",
                "import dev.moe.runtime.train.*;",
                "import java.nio.file.*;",
                "import java.util.*;",
                r == null ? "Session model = null;" : "Session model = dev.moe.cli.ReplSupport.session(" + r.className() + "::new);",
                "void train(int steps) { dev.moe.cli.ReplSupport.train(model, steps); }",
                "void generate(String prompt) { dev.moe.cli.ReplSupport.generate(model, prompt, 64); }",
                "void generate(String prompt, int tokens) { dev.moe.cli.ReplSupport.generate(model, prompt, tokens); }",
                "void loads() { dev.moe.cli.ReplSupport.loads(model); }",
                "double evaluate() { return dev.moe.cli.ReplSupport.evaluate(model); }",
                "void reload() { dev.moe.cli.ReplSupport.reload(); }",
                "void open(String file) { dev.moe.cli.ReplSupport.open(file); }",
                "void help() { dev.moe.cli.ReplSupport.help(); }"));
        for (String snippet : startup) {
            for (SnippetEvent e : redirected(() -> shell.eval(snippet))) {
                if (e.status() != Snippet.Status.VALID || e.exception() != null) {
                    throw new IllegalStateException("the REPL's startup snippet `" + snippet + "` failed: " + e.status() + " "
                            + shell.diagnostics(e.snippet()).map(d -> d.getMessage(Locale.ROOT)).toList()
                            + (e.exception() == null ? "" : " " + e.exception()));
                }
            }
        }
        out.println(banner());
        out.flush();
    }

    private String banner() {
        if (recipe == null) {
            return "moe repl: the runtime is loaded; open(\"file.moe\") compiles a recipe and binds its model to `model`.\n"
                    + "help() lists the helpers; /exit leaves.";
        }
        var m = recipe.chosen().model();
        Session.Settings s = settings();
        return String.format(Locale.ROOT, "moe repl: %s from %s (%s params; a step is %d x %d x %d tokens), bound to `model`.%n"
                        + "helpers: train(n), generate(\"prompt\"), loads(), evaluate(), reload(), open(\"file.moe\"), help(); /exit leaves.",
                m.name(), recipe.file(), Units.count(m.totalParams()), s.microBatches(), s.batch(), s.seq() == 0 ? m.config().context() : s.seq());
    }

    /** The recipe's {@code train} settings, or the defaults of {@code moe train} without one. */
    Session.Settings settings() {
        Session.Settings s = Session.Settings.defaults();
        Optional<Training> training = recipe == null ? Optional.empty() : recipe.chosen().training();
        if (training.isEmpty()) {
            return s;
        }
        Training t = training.get();
        Map<String, Double> mixture = new LinkedHashMap<>(t.data().mixture());
        if (!t.domains().isEmpty() || mixture.keySet().stream().anyMatch(k -> k.startsWith("file:"))) {
            out.println("note: the REPL trains on the synthetic corpus, not on the recipe's text files");
            mixture = Map.of("synthetic", 1.0);
        }
        return s.batch(t.batch()).microBatches(Math.max(1, t.globalBatch() / t.batch())).lr(t.optimizer().lr())
                .adam(t.optimizer().beta1(), t.optimizer().beta2(), t.optimizer().eps()).weightDecay(t.optimizer().weightDecay())
                .schedule(t.schedule().kind(), t.schedule().warmup(), t.schedule().minLr(), Math.max(1, t.steps())).gradClip(t.gradClip())
                .seed(t.seed()).data(mixture).padDocuments(t.padDocuments());
    }

    /** Called by the startup snippet: the session over a new instance of the model. */
    Session session(Function<Backend, ? extends TrainableModel> constructor) {
        Session s = Session.of(constructor.apply(backend), settings());
        if (recipe != null) {
            s.recipe(recipe.file().toAbsolutePath().normalize().toString(), recipe.source().text());
        }
        return s;
    }

    void requestReload() {
        if (recipe == null) {
            throw new IllegalStateException("no recipe to reload: open(\"file.moe\") loads one");
        }
        pendingReload = true;
    }

    void requestOpen(Path file) {
        pendingOpen = file;
    }

    /** Reads and evaluates until {@code /exit} or the end of input. */
    void run(BufferedReader in, boolean interactive) {
        String pending = "";
        try {
            while (true) {
                if (interactive) {
                    out.print(pending.isEmpty() ? "moe> " : "...> ");
                    out.flush();
                }
                String line = in.readLine();
                if (line == null) {
                    if (!pending.isBlank()) {
                        eval(pending);
                    }
                    return;
                }
                if (pending.isEmpty() && line.strip().startsWith("/")) {
                    if (!command(line.strip())) {
                        return;
                    }
                    continue;
                }
                pending = evalComplete(pending + line + "\n");
                afterSnippet();
            }
        } catch (IOException e) {
            throw new UncheckedIOException(e);
        }
    }

    /** Evaluates every complete snippet at the start of {@code text}; returns what is left (an incomplete snippet). */
    private String evalComplete(String text) {
        String rest = text;
        while (!rest.isBlank()) {
            SourceCodeAnalysis.CompletionInfo info = shell.sourceCodeAnalysis().analyzeCompletion(rest);
            switch (info.completeness()) {
                case EMPTY -> {
                    return "";
                }
                case DEFINITELY_INCOMPLETE, CONSIDERED_INCOMPLETE -> {
                    return rest;
                }
                default -> {
                    eval(info.source() != null ? info.source() : rest);
                    rest = info.source() != null ? info.remaining() : "";
                }
            }
        }
        return "";
    }

    private void afterSnippet() {
        if (pendingReload) {
            pendingReload = false;
            out.println("reloading " + recipe.file());
            open(recipe.file(), recipe.modelName());
        }
        Path file = pendingOpen;
        if (file != null) {
            pendingOpen = null;
            open(file, null);
        }
    }

    /** A {@code /command}; false to leave. */
    private boolean command(String line) {
        switch (line.split("\\s+")[0]) {
            case "/exit", "/quit" -> {
                return false;
            }
            case "/help", "/?" -> ReplSupport.helpText(out);
            case "/reload" -> {
                if (recipe == null) {
                    out.println("|  no recipe to reload: open(\"file.moe\") loads one");
                } else {
                    pendingReload = true;
                    afterSnippet();
                }
            }
            default -> out.println("|  unknown command " + line.split("\\s+")[0] + ": /exit leaves, /help lists the helpers");
        }
        out.flush();
        return true;
    }

    /** Evaluates one snippet and prints what JShell's tool would: values, compile errors, an exception. */
    void eval(String source) {
        List<SnippetEvent> events = redirected(() -> shell.eval(source));
        for (SnippetEvent e : events) {
            if (e.causeSnippet() != null) {
                continue; // a dependent snippet updated by this one
            }
            Snippet s = e.snippet();
            if (e.status() == Snippet.Status.REJECTED) {
                printErrors(s);
            } else if (e.exception() != null) {
                printException(e.exception());
            } else if (e.value() != null && isShownValue(s)) {
                String name = s instanceof VarSnippet v ? v.name() : ((ExpressionSnippet) s).name();
                out.println(name + " ==> " + e.value());
            }
        }
        out.flush();
    }

    private static boolean isShownValue(Snippet s) {
        return s instanceof VarSnippet || (s instanceof ExpressionSnippet x && !x.typeName().equals("void"));
    }

    private void printErrors(Snippet s) {
        List<Diag> diags = shell.diagnostics(s).filter(Diag::isError).toList();
        if (diags.isEmpty()) {
            out.println("|  Error: the snippet was rejected");
            return;
        }
        String src = s.source();
        for (Diag d : diags) {
            out.println("|  Error:");
            for (String line : d.getMessage(Locale.ROOT).split("\n")) {
                out.println("|  " + line);
            }
            int start = (int) Math.max(0, Math.min(d.getStartPosition(), src.length()));
            int lineStart = src.lastIndexOf('\n', start - 1) + 1;
            int lineEnd = src.indexOf('\n', start);
            lineEnd = lineEnd < 0 ? src.length() : lineEnd;
            int end = (int) Math.max(start + 1, Math.min(d.getEndPosition(), lineEnd));
            out.println("|  " + src.substring(lineStart, lineEnd));
            int width = end - start;
            out.println("|  " + " ".repeat(start - lineStart) + (width <= 1 ? "^" : "^" + "-".repeat(width - 2) + "^"));
        }
    }

    private void printException(JShellException x) {
        switch (x) {
            case EvalException e -> {
                String message = e.getMessage();
                out.println("|  Exception " + e.getExceptionClassName() + (message == null ? "" : ": " + message));
                if (stackTraces) {
                    for (StackTraceElement frame : e.getStackTrace()) {
                        out.println("|        at " + frame);
                    }
                }
            }
            case UnresolvedReferenceException u -> out.println("|  cannot run `" + u.getSnippet().source().strip()
                    + "`: it uses something not yet declared");
            default -> out.println("|  " + x);
        }
    }

    /** Runs {@code action} with System.out and System.err going to this session's writers (where snippets print). */
    private <T> T redirected(java.util.function.Supplier<T> action) {
        PrintStream oldOut = System.out;
        PrintStream oldErr = System.err;
        PrintStream newOut = stream(out);
        PrintStream newErr = stream(err);
        System.setOut(newOut);
        System.setErr(newErr);
        try {
            return action.get();
        } finally {
            newOut.flush();
            newErr.flush();
            System.setOut(oldOut);
            System.setErr(oldErr);
        }
    }

    private static PrintStream stream(PrintWriter writer) {
        OutputStream bytes = new OutputStream() {
            private final ByteArrayOutputStream buffer = new ByteArrayOutputStream();

            @Override
            public void write(int b) {
                buffer.write(b);
                if (b == '\n') {
                    flush();
                }
            }

            @Override
            public void flush() {
                writer.write(buffer.toString(StandardCharsets.UTF_8));
                writer.flush();
                buffer.reset();
            }
        };
        return new PrintStream(bytes, true, StandardCharsets.UTF_8);
    }

    private Path writeClasses(Map<String, byte[]> classes) {
        try {
            Path dir = Files.createTempDirectory("moe-repl-");
            classDirs.add(dir);
            for (var e : classes.entrySet()) {
                Path f = dir.resolve(e.getKey().replace('.', File.separatorChar) + ".class");
                Files.createDirectories(f.getParent());
                Files.write(f, e.getValue());
            }
            return dir;
        } catch (IOException e) {
            throw new UncheckedIOException("cannot write the model's classes for JShell: " + e.getMessage(), e);
        }
    }

    @Override
    public void close() {
        if (shell != null) {
            shell.close();
            shell = null;
        }
        if (active == this) {
            active = null;
        }
        for (Path dir : classDirs) {
            try (Stream<Path> files = Files.walk(dir)) {
                files.sorted(Comparator.reverseOrder()).forEach(p -> p.toFile().delete());
            } catch (IOException ignored) {
                // a temporary directory left behind is harmless
            }
        }
    }

    /** JShell's local execution engine, with this JVM's classes (runtime, CLI) as the parent of the snippets' loader. */
    private record InProcess(ClassLoader parent) implements ExecutionControlProvider {
        @Override
        public String name() {
            return "moe-in-process";
        }

        @Override
        public ExecutionControl generate(ExecutionEnv env, Map<String, String> parameters) {
            return new LocalExecutionControl(parent);
        }
    }
}
