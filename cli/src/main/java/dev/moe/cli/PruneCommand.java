package dev.moe.cli;

import dev.moe.compiler.ir.CompiledFile;
import dev.moe.dsl.SourceFile;
import dev.moe.runtime.Parameter;
import dev.moe.runtime.TrainableModel;
import dev.moe.runtime.data.Batch;
import dev.moe.runtime.data.DataStream;
import dev.moe.runtime.train.Checkpoint;
import dev.moe.runtime.upcycle.Upcycle;
import dev.moe.runtime.upcycle.Weights;
import java.io.IOException;
import java.io.PrintWriter;
import java.io.UncheckedIOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.TreeMap;
import java.util.concurrent.Callable;
import picocli.CommandLine.Command;
import picocli.CommandLine.Mixin;
import picocli.CommandLine.Model.CommandSpec;
import picocli.CommandLine.Option;
import picocli.CommandLine.Parameters;
import picocli.CommandLine.Spec;

/**
 * {@code moe prune CHECKPOINT --into FILE}: keeps, in each MoE layer, the experts that tokens of
 * the given data are routed to most, as the smaller model that FILE declares, for inference.
 */
@Command(
        name = "prune",
        description = {"Prune a trained MoE to its most used experts, for inference.",
            "Counts the tokens routed to each expert on held-out data (the recipe's mixture, or --data), keeps"
                    + " in each MoE layer as many of the most used experts as the model in FILE routes, with their"
                    + " router rows, and writes that model's checkpoint. FILE declares the pruned model: the trained"
                    + " one with fewer routed experts. The result works with `moe generate` and `moe eval`."},
        exitCodeListHeading = "%nExit status:%n",
        exitCodeList = {"0:pruned", "1:a file has errors, the models do not fit, or a file cannot be read", "2:usage error"})
final class PruneCommand implements Callable<Integer> {
    @Spec
    CommandSpec spec;

    @Mixin
    HelpOption help;

    @Parameters(paramLabel = "CHECKPOINT", description = "A checkpoint written by `moe train` (or its run directory).")
    Path checkpoint;

    @Option(names = "--into", required = true, paramLabel = "FILE", description = "The .moe file declaring the pruned model.")
    Path into;

    @Option(names = "--model", paramLabel = "NAME", description = "Which model of FILE, when it declares several.")
    String model;

    @Option(names = "--out", paramLabel = "DIR", description = "Where to write last.safetensors (default: runs/<FILE name>).")
    Path out;

    @Option(names = "--data", paramLabel = "PATH", description = "Count routing on text files or a directory instead of the recipe's data.")
    List<Path> data;

    @Option(names = "--batches", paramLabel = "N", description = "Held-out batches of 8 sequences to count on (default: ${DEFAULT-VALUE}).")
    int batches = 8;

    @Option(names = "--seq", paramLabel = "N", description = "Tokens per sequence (default: the model's context).")
    Integer seq;

    @Option(names = "--threads", paramLabel = "N", description = "CPU threads (default: all cores).")
    int threads = Runtime.getRuntime().availableProcessors();

    @Override
    public Integer call() throws IOException {
        PrintWriter stdout = spec.commandLine().getOut();
        PrintWriter err = spec.commandLine().getErr();
        try {
            if (batches < 1) {
                throw new Recipes.UserError("--batches must be at least 1");
            }
            SourceFile target = switch (SourceFile.read(into)) {
                case SourceFile.ReadResult.Failed f -> {
                    err.print(f.diagnostic());
                    throw new Recipes.UserError("cannot read " + into);
                }
                case SourceFile.ReadResult.Ok ok -> ok.source();
            };
            CompiledFile compiled = Recipes.compile(target, err);
            Recipes.Loaded pruned = Recipes.select(compiled, target, model, threads);
            Path file = Files.isDirectory(checkpoint) ? checkpoint.resolve("last.safetensors") : checkpoint;
            Recipes.Loaded trained = Checkpoints.open(file, threads, err);
            TrainableModel m = trained.instance();
            int[] moeLayers = m.moeLayers();
            if (moeLayers.length == 0) {
                throw new Recipes.UserError(file + " holds a dense model: there are no experts to prune");
            }
            long[][] counts = route(trained, m);

            Map<Integer, Integer> keepPerLayer = new TreeMap<>();
            for (Parameter p : pruned.instance().parameters()) {
                var e = java.util.regex.Pattern.compile("layers\\.(\\d+)\\.moe\\.experts\\.(\\d+)\\..*").matcher(p.name());
                if (e.matches()) {
                    keepPerLayer.merge(Integer.parseInt(e.group(1)), Integer.parseInt(e.group(2)) + 1, Math::max);
                }
            }
            Map<Integer, int[]> kept = new LinkedHashMap<>();
            stdout.printf(Locale.ROOT, "%-6s %-8s %-12s %s%n", "layer", "experts", "tokens kept", "kept experts (by routed tokens)");
            for (int i = 0; i < moeLayers.length; i++) {
                int layer = moeLayers[i];
                Integer keep = keepPerLayer.get(layer);
                if (keep == null) {
                    throw new Recipes.UserError("`" + pruned.model().name() + "` has no routed experts in layer " + layer + ", where `"
                            + trained.model().name() + "` has an MoE");
                }
                if (keep > counts[i].length) {
                    throw new Recipes.UserError("`" + pruned.model().name() + "` routes " + keep + " experts in layer " + layer + ", more than the "
                            + counts[i].length + " of `" + trained.model().name() + "`: pruning keeps a subset");
                }
                int[] k = Upcycle.mostUsed(counts[i], keep);
                kept.put(layer, k);
                long all = java.util.Arrays.stream(counts[i]).sum();
                long[] layerCounts = counts[i];
                long share = java.util.Arrays.stream(k).mapToLong(j -> layerCounts[j]).sum();
                stdout.printf(Locale.ROOT, "%-6d %-8s %-12s %s%n", layer, keep + "/" + counts[i].length,
                        String.format(Locale.ROOT, "%.1f%%", all == 0 ? 0 : 100.0 * share / all), java.util.Arrays.toString(k));
            }
            Weights weights = Weights.read(file);
            try {
                Upcycle.prune(weights, pruned.instance().parameters(), kept);
            } catch (IllegalArgumentException e) {
                throw new Recipes.UserError("cannot prune `" + trained.model().name() + "` into `" + pruned.model().name() + "`: " + e.getMessage());
            }
            Path dir = out != null ? out : Path.of("runs", into.getFileName().toString().replaceAll("\\.moe$", ""));
            Path result = dir.resolve("last.safetensors");
            Map<String, String> meta = new LinkedHashMap<>();
            meta.put("recipe.file", into.toAbsolutePath().normalize().toString());
            meta.put("recipe.source", target.text());
            meta.put("model", pruned.model().name());
            meta.put("step", "0");
            meta.put("pruned.from", file.toAbsolutePath().normalize().toString());
            Checkpoint.save(result, pruned.instance().parameters(), null, meta);
            stdout.printf(Locale.ROOT, "pruned %s (%s params) to %s (%s params): %s%n", trained.model().name(), Units.count(trained.model().totalParams()),
                    pruned.model().name(), Units.count(pruned.model().totalParams()), result);
            stdout.flush();
            return 0;
        } catch (Recipes.UserError | IllegalArgumentException | UncheckedIOException | IOException e) {
            err.println("moe: error: " + e.getMessage());
            err.flush();
            return 1;
        }
    }

    /** Tokens routed to each expert over the held-out batches, per MoE layer. */
    private long[][] route(Recipes.Loaded trained, TrainableModel m) {
        m.setTraining(false);
        int len = seq != null ? Math.min(Math.max(1, seq), m.context()) : m.context();
        DataStream stream = data != null && !data.isEmpty() ? DataStream.files(data, 8, len, 0)
                : DataStream.synthetic(trained.training().map(t -> t.data().mixture())
                        .filter(x -> x.keySet().stream().noneMatch(k -> k.startsWith("file:") || !dev.moe.runtime.data.SyntheticCorpus.isDomain(k)))
                        .orElse(Map.of("synthetic", 1.0)), 8, len, 0);
        long[][] counts = null;
        for (int i = 0; i < batches; i++) {
            Batch b = stream.evalBatch(i);
            int[] in = new int[b.size() * len];
            int[] tg = new int[b.size() * len];
            for (int r = 0; r < b.size(); r++) {
                for (int t = 0; t < len; t++) {
                    in[r * len + t] = b.input(r, t);
                    tg[r * len + t] = b.target(r, t);
                }
            }
            m.beginStep();
            m.forward(in, tg, b.size(), len);
            int[][] loads = m.expertLoads();
            if (counts == null) {
                counts = new long[loads.length][];
                for (int l = 0; l < loads.length; l++) {
                    counts[l] = new long[loads[l].length];
                }
            }
            for (int l = 0; l < loads.length; l++) {
                for (int e = 0; e < loads[l].length; e++) {
                    counts[l][e] += loads[l][e];
                }
            }
        }
        return counts;
    }
}
