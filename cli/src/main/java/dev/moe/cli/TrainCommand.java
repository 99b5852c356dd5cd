package dev.moe.cli;

import dev.moe.compiler.ir.Training;
import dev.moe.dsl.SourceFile;
import dev.moe.runtime.TrainableModel;
import dev.moe.runtime.data.DataStream;
import dev.moe.runtime.train.Trainer;
import java.io.IOException;
import java.io.PrintStream;
import java.io.PrintWriter;
import java.io.UncheckedIOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.concurrent.Callable;
import picocli.CommandLine.Command;
import picocli.CommandLine.Mixin;
import picocli.CommandLine.Model.CommandSpec;
import picocli.CommandLine.Option;
import picocli.CommandLine.Parameters;
import picocli.CommandLine.Spec;

/**
 * {@code moe train FILE}: generates the model's Java code, compiles it in memory, and trains it on
 * the recipe's data (the embedded synthetic corpus unless the recipe or {@code --data} says otherwise).
 */
@Command(
        name = "train",
        description = {"Train the model of a .moe file on the CPU (or with --backend cuda on a GPU).",
            "Settings come from the file's `train` block; options override them. Writes metrics.jsonl, loss.png,"
                    + " experts.png and checkpoints (last.safetensors) to the run directory. Ctrl-C saves and stops;"
                    + " --resume carries an interrupted run on, bitwise as if uninterrupted."},
        exitCodeListHeading = "%nExit status:%n",
        exitCodeList = {"0:trained", "1:the file has errors, uses an unsupported feature, or training failed",
            "2:usage error", "130:stopped by Ctrl-C, after saving a checkpoint (continue with --resume)"})
final class TrainCommand implements Callable<Integer> {
    @Spec
    CommandSpec spec;

    @Mixin
    HelpOption help;

    @Mixin
    BackendOption backendOption;

    @Parameters(paramLabel = "FILE", description = "The .moe recipe.")
    Path file;

    @Option(names = "--model", paramLabel = "NAME", description = "Which model, when the file declares several.")
    String model;

    @Option(names = "--steps", paramLabel = "N", description = "Total optimiser steps (with --resume: the step to reach).")
    Long steps;

    @Option(names = "--data", paramLabel = "PATH", description = "Train on text files or a directory of them (UTF-8 bytes) instead.")
    List<Path> data;

    @Option(names = "--out", paramLabel = "DIR", description = "Run directory (default: runs/<file name>).")
    Path out;

    @Option(names = "--seed", paramLabel = "S", description = "Seed for weights and data (default: the recipe's, else 0).")
    Long seed;

    @Option(names = "--threads", paramLabel = "N", description = "CPU threads (default: all cores).")
    int threads = Runtime.getRuntime().availableProcessors();

    @Option(names = "--save-every", paramLabel = "N", description = "Also keep a checkpoint every N steps (default: only the last).")
    long saveEvery;

    @Option(names = "--seq", paramLabel = "N", description = "Tokens per sequence (default: the model's context).")
    Integer seq;

    @Option(names = "--resume", description = "Continue from the run directory's last.safetensors.")
    boolean resume;

    @Option(names = "--stop-at", paramLabel = "N", description = "Stop at step N as Ctrl-C would (save; continue later with --resume).")
    long stopAt;

    @Override
    public Integer call() throws IOException {
        PrintWriter err = spec.commandLine().getErr();
        PrintWriter stdout = spec.commandLine().getOut();
        SourceFile source = switch (SourceFile.read(file)) {
            case SourceFile.ReadResult.Failed f -> {
                err.print(f.diagnostic());
                err.flush();
                yield null;
            }
            case SourceFile.ReadResult.Ok ok -> ok.source();
        };
        if (source == null) {
            return 1;
        }
        try {
            Recipes.Loaded loaded = Recipes.load(source, model, () -> backendOption.create(threads), err);
            Training t = loaded.training().orElse(null);
            if (t != null && !t.stages().isEmpty()) {
                throw new Recipes.UserError("train `" + t.model() + "` has stages: multi-stage curricula are not run by `moe train` yet");
            }
            TrainableModel m = loaded.instance();
            long totalSteps = steps != null ? steps : t != null ? t.steps() : 200;
            long runSeed = seed != null ? seed : t != null ? t.seed() : 0;
            int batch = t != null ? t.batch() : 8;
            int micro = t != null ? t.globalBatch() / t.batch() : 1;
            int seqLen = seq != null ? seq : m.context();
            if (seqLen < 1 || seqLen > m.context()) {
                throw new Recipes.UserError("--seq must be between 1 and the model's context (" + m.context() + ")");
            }
            DataStream stream = dataStream(t, batch, seqLen, runSeed);
            Path runDir = out != null ? out : Path.of("runs", file.getFileName().toString().replaceAll("\\.moe$", ""));
            Training.Optimizer opt = t != null ? t.optimizer() : new Training.Optimizer("adamw", 3e-4, 0.9, 0.95, 1e-8, 0.0);
            Training.Schedule sched = t != null ? t.schedule() : new Training.Schedule("constant", 0, 0);
            Map<String, String> recipe = new LinkedHashMap<>();
            recipe.put("recipe.file", file.toAbsolutePath().normalize().toString());
            recipe.put("recipe.source", source.text());
            Trainer.Options options = new Trainer.Options(totalSteps, batch, micro, seqLen, opt.lr(), opt.beta1(), opt.beta2(), opt.eps(),
                    opt.weightDecay(), sched.kind(), sched.warmup(), sched.minLr(), t != null ? t.gradClip() : 1.0, runSeed, runDir, saveEvery,
                    resume, stopAt, recipe);
            stdout.printf(Locale.ROOT, "training %s (%s params) on %s: %d steps of %d x %d x %d tokens, %d threads -> %s%n", m.name(),
                    Units.count(loaded.model().totalParams()), describe(stream), totalSteps, micro, batch, seqLen, threads, runDir);
            stdout.flush();
            PrintStream log = new PrintStream(new java.io.FileOutputStream(java.io.FileDescriptor.err), true, java.nio.charset.StandardCharsets.UTF_8);
            Trainer.Result r = new Trainer(m, stream, options, log).run();
            Plots.writeOrWarn(runDir, m, err);
            if (!r.losses().isEmpty()) {
                stdout.printf(Locale.ROOT, "loss %.4f -> %.4f over %d steps; checkpoint %s%n", r.firstLoss(), r.lastLoss(), r.losses().size(),
                        r.checkpoint());
            }
            stdout.flush();
            return 0;
        } catch (Recipes.UserError | IllegalArgumentException | UncheckedIOException | IOException | ArithmeticException e) {
            // A bad recipe or data, an unreadable checkpoint, a full disk, a diverged run: the user's to
            // fix, reported in one line, not as a crash.
            err.println("moe: error: " + e.getMessage());
            err.flush();
            return 1;
        }
    }

    private DataStream dataStream(Training t, int batch, int seqLen, long runSeed) {
        if (data != null && !data.isEmpty()) {
            for (Path p : data) {
                if (!Files.exists(p)) {
                    throw new IllegalArgumentException("--data " + p + ": no such file or directory");
                }
            }
            return DataStream.files(data, batch, seqLen, runSeed);
        }
        DataStream.Builder b = DataStream.builder().batch(batch).context(seqLen).seed(runSeed);
        Path base = file.toAbsolutePath().getParent();
        b.baseDir(base);
        if (t != null) {
            t.domains().forEach((name, path) -> b.file(name, Path.of(path)));
            b.mixture(new LinkedHashMap<>(t.data().mixture()));
        }
        return b.build();
    }

    private static String describe(DataStream s) {
        return s.mixture().size() == 1 ? s.mixture().keySet().iterator().next() : s.mixture().toString();
    }
}
