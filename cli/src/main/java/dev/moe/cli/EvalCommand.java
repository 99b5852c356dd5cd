package dev.moe.cli;

import dev.moe.runtime.TrainableModel;
import dev.moe.runtime.data.Batch;
import dev.moe.runtime.data.DataStream;
import java.io.IOException;
import java.io.PrintWriter;
import java.nio.file.Path;
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

/** {@code moe eval CHECKPOINT}: held-out loss and perplexity, per domain of the synthetic corpus. */
@Command(
        name = "eval",
        description = {"Evaluate a checkpoint: cross-entropy and perplexity on held-out data.",
            "On the synthetic corpus each domain is reported separately."},
        exitCodeListHeading = "%nExit status:%n",
        exitCodeList = {"0:evaluated", "1:the checkpoint or data cannot be read", "2:usage error"})
final class EvalCommand implements Callable<Integer> {
    @Spec
    CommandSpec spec;

    @Mixin
    HelpOption help;

    @Mixin
    BackendOption backendOption;

    @Parameters(paramLabel = "CHECKPOINT", description = "A checkpoint written by `moe train` (or its run directory).")
    Path checkpoint;

    @Option(names = "--data", paramLabel = "PATH", description = "Evaluate on text files or a directory instead of the synthetic corpus.")
    List<Path> data;

    @Option(names = "--batches", paramLabel = "N", description = "Held-out batches of 8 sequences (default: ${DEFAULT-VALUE}).")
    int batches = 16;

    @Option(names = "--seq", paramLabel = "N", description = "Tokens per sequence (default: the model's context).")
    Integer seq;

    @Option(names = "--threads", paramLabel = "N", description = "CPU threads (default: all cores).")
    int threads = Runtime.getRuntime().availableProcessors();

    /**
     * I(domain; expert) in bits from the counts of routed slots per domain and expert: how much knowing
     * a token's domain tells about which experts it takes (0 = experts do not specialise by domain).
     */
    static double mutualInformation(long[][] counts) {
        double total = 0;
        int experts = 0;
        for (long[] row : counts) {
            if (row != null) {
                experts = Math.max(experts, row.length);
                for (long c : row) {
                    total += c;
                }
            }
        }
        if (total == 0) {
            return 0;
        }
        double[] pe = new double[experts];
        for (long[] row : counts) {
            if (row != null) {
                for (int e = 0; e < row.length; e++) {
                    pe[e] += row[e] / total;
                }
            }
        }
        double mi = 0;
        for (long[] row : counts) {
            if (row == null) {
                continue;
            }
            double pd = 0;
            for (long c : row) {
                pd += c / total;
            }
            for (int e = 0; e < row.length; e++) {
                double pde = row[e] / total;
                if (pde > 0) {
                    mi += pde * Math.log(pde / (pd * pe[e])) / Math.log(2);
                }
            }
        }
        return mi;
    }

    @Override
    public Integer call() throws IOException {
        PrintWriter out = spec.commandLine().getOut();
        PrintWriter err = spec.commandLine().getErr();
        try {
            Recipes.Loaded loaded = Checkpoints.open(checkpoint, () -> backendOption.create(threads), err);
            TrainableModel m = loaded.instance();
            m.setTraining(false);
            int len = seq != null ? Math.min(seq, m.context()) : m.context();
            // A recipe trained on padded documents is evaluated on whole documents too, the padding out of the loss.
            boolean padded = loaded.training().map(t -> t.padDocuments()).orElse(false);
            DataStream stream;
            if (data != null && !data.isEmpty()) {
                DataStream.Builder files = DataStream.builder().padDocuments(padded).batch(8).context(len).seed(0);
                files.domain("file", dev.moe.runtime.data.TextCorpus.load("file", data));
                stream = files.mixture(Map.of("file", 1.0)).build();
            } else {
                stream = DataStream.builder().padDocuments(padded).batch(8).context(len).seed(0)
                        .mixture(loaded.training().map(t -> t.data().mixture()).filter(x -> x.keySet().stream().noneMatch(k -> k.startsWith("file:")))
                                .orElse(Map.of("synthetic", 1.0)))
                        .build();
            }
            List<String> names = stream.sources().isEmpty() ? stream.domains() : stream.sources();
            double[] sum = new double[names.size()];
            long[] count = new long[names.size()];
            double total = 0;
            long tokens = 0;
            long[][][] routing = new long[m.moeLayers().length][names.size()][];
            for (int i = 0; i < batches; i++) {
                Batch b = stream.evalBatch(i);
                boolean[] keep = b.keep(len);
                for (int r = 0; r < b.size(); r++) {
                    boolean[] rowKeep = keep == null ? null : java.util.Arrays.copyOfRange(keep, r * len, (r + 1) * len);
                    int kept = len;
                    if (rowKeep != null) {
                        kept = 0;
                        for (boolean k : rowKeep) {
                            kept += k ? 1 : 0;
                        }
                        if (kept == 0) {
                            continue;
                        }
                    }
                    int[] in = new int[len];
                    int[] tg = new int[len];
                    for (int t = 0; t < len; t++) {
                        in[t] = b.input(r, t);
                        tg[t] = b.target(r, t);
                    }
                    m.beginStep();
                    m.setDomains(List.of(stream.domains().get(b.domain(r))));
                    m.setMask(rowKeep);
                    m.forward(in, tg, 1, len);
                    double ce = m.lastCrossEntropy();
                    int d = stream.sources().isEmpty() ? b.domain(r) : b.source(r);
                    int[][][] bySequence = m.expertLoadsBySequence();
                    for (int layer = 0; layer < bySequence.length; layer++) {
                        int[] counts = bySequence[layer][0];
                        if (routing[layer][d] == null) {
                            routing[layer][d] = new long[counts.length];
                        }
                        for (int e = 0; e < counts.length; e++) {
                            routing[layer][d][e] += counts[e];
                        }
                    }
                    sum[d] += ce * kept;
                    count[d] += kept;
                    total += ce * kept;
                    tokens += kept;
                }
            }
            out.printf(Locale.ROOT, "%-12s %10s %10s %12s%n", "domain", "loss", "ppl", "tokens");
            for (int d = 0; d < names.size(); d++) {
                if (count[d] > 0) {
                    double loss = sum[d] / count[d];
                    out.printf(Locale.ROOT, "%-12s %10.4f %10.2f %12d%n", names.get(d), loss, Math.exp(loss), count[d]);
                }
            }
            double loss = total / tokens;
            out.printf(Locale.ROOT, "%-12s %10.4f %10.2f %12d%n", "all", loss, Math.exp(loss), tokens);
            int[] layers = m.moeLayers();
            for (int layer = 0; layer < layers.length; layer++) {
                out.printf(Locale.ROOT, "layer %d: mutual information of domain and expert %.4f bits%n", layers[layer], mutualInformation(routing[layer]));
            }
            out.flush();
            return 0;
        } catch (Recipes.UserError | IllegalArgumentException e) {
            err.println("moe: error: " + e.getMessage());
            err.flush();
            return 1;
        }
    }
}
