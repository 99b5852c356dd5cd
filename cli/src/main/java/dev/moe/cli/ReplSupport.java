package dev.moe.cli;

import dev.moe.runtime.Backend;
import dev.moe.runtime.TrainableModel;
import dev.moe.runtime.train.Session;
import java.io.PrintStream;
import java.io.PrintWriter;
import java.nio.file.Path;
import java.util.List;
import java.util.Locale;
import java.util.function.Function;

/**
 * What the helpers of {@code moe repl} call: snippets run in this JVM, so they reach the session
 * that started them through this class. Public because JShell's snippets live in another package;
 * not an API for anything else. Output goes to {@code System.out}, which the REPL points at its
 * console while a snippet runs.
 */
public final class ReplSupport {
    private ReplSupport() {}

    private static Repl repl() {
        Repl r = Repl.active;
        if (r == null) {
            throw new IllegalStateException("no moe repl is running");
        }
        return r;
    }

    private static Session need(Session model) {
        if (model == null) {
            throw new IllegalStateException("no model is loaded: open(\"file.moe\") compiles a recipe and binds its model to `model`");
        }
        return model;
    }

    /** A session over a new instance of the recipe's model, with the recipe's training settings. */
    public static Session session(Function<Backend, ? extends TrainableModel> constructor) {
        return repl().session(constructor);
    }

    /** Trains {@code steps} steps, printing the loss as it goes (every step, or ten lines for long runs). */
    public static void train(Session model, int steps) {
        need(model);
        if (steps < 1) {
            throw new IllegalArgumentException("steps must be at least 1");
        }
        PrintStream out = System.out;
        long t0 = System.nanoTime();
        double first = Double.NaN;
        int every = Math.max(1, steps / 10);
        for (int i = 1; i <= steps; i++) {
            double loss = model.trainStep();
            first = i == 1 ? loss : first;
            if (i % every == 0 || i == steps) {
                out.printf(Locale.ROOT, "step %d  loss %.4f%n", model.step(), loss);
            }
        }
        out.printf(Locale.ROOT, "loss %.4f -> %.4f over %d steps (%.1f s)%n", first, model.lastLoss(), steps, (System.nanoTime() - t0) / 1e9);
    }

    /** Prints the prompt and its greedy continuation. */
    public static void generate(Session model, String prompt, int tokens) {
        System.out.println(prompt + need(model).generate(prompt, tokens));
    }

    /** Held-out cross-entropy over 8 batches. */
    public static double evaluate(Session model) {
        return need(model).evaluate(8);
    }

    /** Tokens per expert in the last step, per MoE layer, with each expert's share. */
    public static void loads(Session model) {
        int[][] loads = need(model).expertLoads();
        int[] layers = model.moeLayers();
        if (layers.length == 0) {
            System.out.println("the model has no MoE layer");
            return;
        }
        if (loads.length == 0) {
            System.out.println("no step yet: train(1) first");
            return;
        }
        for (int l = 0; l < loads.length; l++) {
            long total = 0;
            for (int c : loads[l]) {
                total += c;
            }
            StringBuilder b = new StringBuilder(String.format(Locale.ROOT, "layer %d:", layers[l]));
            for (int c : loads[l]) {
                b.append(String.format(Locale.ROOT, " %d (%.0f%%)", c, total == 0 ? 0.0 : 100.0 * c / total));
            }
            System.out.println(b);
        }
    }

    /** Recompiles the recipe after the current snippet and starts over with its model (variables are reset). */
    public static void reload() {
        repl().requestReload();
    }

    /** Compiles another recipe after the current snippet and starts over with its model. */
    public static void open(String file) {
        repl().requestOpen(Path.of(file));
    }

    public static void help() {
        PrintWriter w = new PrintWriter(System.out, true);
        helpText(w);
        w.flush();
    }

    static void helpText(PrintWriter out) {
        for (String line : List.of(
                "model                 the Session over the recipe's model (dev.moe.runtime.train.Session):",
                "                        model.trainStep(), model.train(n), model.evaluate(batches), model.generate(prompt, n),",
                "                        model.expertLoads(), model.save(path), model.load(path), model.model()",
                "train(n)              train n steps with the recipe's settings, printing the loss",
                "generate(\"prompt\")    print a greedy continuation (64 tokens; generate(prompt, n) for n)",
                "loads()               tokens per expert in the last step, per MoE layer",
                "evaluate()            held-out cross-entropy (nats per token)",
                "reload()              recompile the recipe after editing it, and start over with the new model",
                "open(\"file.moe\")      compile another recipe and start over with its model",
                "/exit                 leave")) {
            out.println(line);
        }
    }
}
