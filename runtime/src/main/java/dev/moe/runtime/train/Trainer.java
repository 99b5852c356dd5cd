package dev.moe.runtime.train;

import dev.moe.runtime.Parameter;
import dev.moe.runtime.TrainableModel;
import dev.moe.runtime.data.Batch;
import dev.moe.runtime.data.DataStream;
import java.io.BufferedWriter;
import java.io.IOException;
import java.io.PrintStream;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardOpenOption;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.atomic.AtomicBoolean;

/**
 * The training loop: micro-batches accumulated into optimiser steps, gradient clipping, AdamW on a
 * schedule, a live progress line, {@code metrics.jsonl}, periodic and final checkpoints, resume, and
 * a clean stop on Ctrl-C (the current step finishes, a checkpoint is written, then the JVM exits).
 *
 * <p>Batch i of the data is a pure function of the seed and i, and every other piece of state is in
 * the checkpoint, so a resumed run is bitwise the same as an uninterrupted one.
 */
public final class Trainer {
    public record Options(
            long steps,
            int batch,
            int microBatches,
            int seq,
            double lr,
            double beta1,
            double beta2,
            double eps,
            double weightDecay,
            String schedule,
            long warmup,
            double minLr,
            double gradClip,
            long seed,
            Path out,
            long saveEvery,
            boolean resume,
            long stopAt,
            Map<String, String> recipe) {}

    public record Result(long steps, double firstLoss, double lastLoss, boolean interrupted, Path checkpoint, List<Double> losses) {}

    private final TrainableModel model;
    private final DataStream data;
    private final Options o;
    private final PrintStream log;
    private final AtomicBoolean stop = new AtomicBoolean();

    public Trainer(TrainableModel model, DataStream data, Options options, PrintStream log) {
        this.model = model;
        this.data = data;
        this.o = options;
        this.log = log;
    }

    /** Asks the loop to stop after the current step (and save). */
    public void requestStop() {
        stop.set(true);
    }

    public Result run() throws IOException {
        Files.createDirectories(o.out());
        List<Parameter> params = model.parameters();
        AdamW adam = new AdamW(params, o.beta1(), o.beta2(), o.eps(), o.weightDecay());
        Schedule schedule = new Schedule(o.schedule(), o.lr(), o.warmup(), o.minLr(), o.steps());
        Path last = o.out().resolve("last.safetensors");
        Path metrics = o.out().resolve("metrics.jsonl");
        long start = 0;
        if (o.resume() && Files.exists(last)) {
            start = resume(last, params, adam);
            truncateMetrics(metrics, start);
        } else {
            model.initialize(o.seed());
            Files.deleteIfExists(metrics);
        }
        if (start >= o.steps()) {
            log.printf(Locale.ROOT, "nothing to do: the checkpoint is at step %d of %d%n", start, o.steps());
            return new Result(start, Double.NaN, Double.NaN, false, last, List.of());
        }

        CountDownLatch saved = new CountDownLatch(1);
        Thread hook = new Thread(() -> {
            stop.set(true);
            try {
                saved.await();
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
            }
        }, "moe-train-shutdown");
        Runtime.getRuntime().addShutdownHook(hook);

        List<Double> losses = new ArrayList<>();
        Progress progress = new Progress(log, o.steps(), start);
        long tokensPerStep = (long) o.batch() * o.microBatches() * o.seq();
        long step = start;
        boolean interrupted = false;
        try (BufferedWriter out = Files.newBufferedWriter(metrics, StandardCharsets.UTF_8, StandardOpenOption.CREATE, StandardOpenOption.APPEND)) {
            while (step < o.steps()) {
                long t0 = System.nanoTime();
                double lr = schedule.at(step);
                params.forEach(Parameter::zeroGrad);
                model.setStep(step);
                model.beginStep();
                double loss = 0;
                double ce = 0;
                int[][] loads = null;
                for (int j = 0; j < o.microBatches(); j++) {
                    Batch b = data.batch(step * o.microBatches() + j);
                    loss += model.forward(inputs(b), targets(b), b.size(), o.seq()) / o.microBatches();
                    ce += model.lastCrossEntropy() / o.microBatches();
                    model.backward(1f / o.microBatches());
                    loads = add(loads, model.expertLoads());
                    addByDomain(b, model.expertLoadsBySequence());
                }
                model.endStep();
                double norm = clip(params, o.gradClip());
                adam.step(params, lr);
                step++;
                double seconds = (System.nanoTime() - t0) / 1e9;
                losses.add(loss);
                double tokensPerSecond = tokensPerStep / seconds;
                out.write(json(step, loss, ce, lr, norm, tokensPerSecond, loads));
                out.newLine();
                out.flush();
                progress.update(step, loss, lr, tokensPerSecond, imbalance(loads));
                if (!Double.isFinite(loss)) {
                    progress.end();
                    throw new ArithmeticException("loss is " + loss + " at step " + step + ": training diverged (lower the learning rate)");
                }
                if (stop.get() || (o.stopAt() > 0 && step >= o.stopAt() && step < o.steps())) {
                    interrupted = true;
                    break;
                }
                if (o.saveEvery() > 0 && step % o.saveEvery() == 0 && step < o.steps()) {
                    save(last, params, adam, step);
                    Files.copy(last, o.out().resolve(String.format(Locale.ROOT, "step-%06d.safetensors", step)),
                            java.nio.file.StandardCopyOption.REPLACE_EXISTING);
                }
            }
            progress.end();
            save(last, params, adam, step);
            if (interrupted) {
                log.printf(Locale.ROOT, "stopped at step %d; saved %s (continue with --resume)%n", step, last);
            }
        } finally {
            saved.countDown();
            try {
                Runtime.getRuntime().removeShutdownHook(hook);
            } catch (IllegalStateException shuttingDown) {
                // the JVM is already exiting: the hook has done its job
            }
        }
        return new Result(step, losses.isEmpty() ? Double.NaN : losses.getFirst(), losses.isEmpty() ? Double.NaN : losses.getLast(),
                interrupted, last, losses);
    }

    /**
     * Loads the newest complete checkpoint: {@code last.safetensors}, or when that is unreadable the
     * newest readable {@code step-N.safetensors} (with a warning). Never loads a partial file.
     */
    private long resume(Path last, List<Parameter> params, AdamW adam) throws IOException {
        List<Path> candidates = new ArrayList<>();
        candidates.add(last);
        try (var files = Files.list(o.out())) {
            files.filter(p -> p.getFileName().toString().matches("step-\\d+\\.safetensors")).sorted(java.util.Comparator.reverseOrder())
                    .forEach(candidates::add);
        }
        IOException first = null;
        for (Path candidate : candidates) {
            try {
                Map<String, String> meta = Checkpoint.metadata(candidate);
                if (!model.name().equals(meta.get("model"))) {
                    throw new IOException(candidate + " holds model `" + meta.get("model") + "`, not `" + model.name() + "`");
                }
                Checkpoint.load(candidate, params, adam);
                long step = Long.parseLong(meta.get("step"));
                if (first != null) {
                    log.printf(Locale.ROOT, "warning: %s%n  resuming from the older %s instead%n", first.getMessage(), candidate.getFileName());
                }
                log.printf(Locale.ROOT, "resuming %s from step %d%n", model.name(), step);
                return step;
            } catch (IOException | RuntimeException e) {
                if (first == null) {
                    first = e instanceof IOException io ? io : new IOException(candidate + ": " + e.getMessage(), e);
                }
            }
        }
        throw new IOException("cannot resume: " + first.getMessage() + (candidates.size() > 1 ? " (and no older checkpoint is readable)" : ""),
                first);
    }

    /** Tokens per expert, per data domain (or synthetic part) and MoE layer, over the run: [domain][layer][expert]. */
    private final Map<Integer, long[][]> domainLoads = new java.util.TreeMap<>();

    private void addByDomain(Batch b, int[][][] bySequence) {
        for (int r = 0; r < b.size(); r++) {
            int domain = data.sources().isEmpty() ? b.domain(r) : b.source(r);
            long[][] acc = domainLoads.computeIfAbsent(domain, d -> new long[bySequence.length][]);
            for (int layer = 0; layer < bySequence.length; layer++) {
                int[] counts = bySequence[layer][r];
                if (acc[layer] == null) {
                    acc[layer] = new long[counts.length];
                }
                for (int e = 0; e < counts.length; e++) {
                    acc[layer][e] += counts[e];
                }
            }
        }
    }

    /** {@code domain-loads.json}: what {@code experts.png} draws per domain. Counts since this process started the run. */
    private void writeDomainLoads() throws IOException {
        List<String> names = data.sources().isEmpty() ? data.domains() : data.sources();
        StringBuilder b = new StringBuilder("{\"layers\":").append(java.util.Arrays.toString(model.moeLayers()).replace(" ", ""));
        b.append(",\"domains\":{");
        boolean first = true;
        for (var e : domainLoads.entrySet()) {
            b.append(first ? "" : ",").append('"').append(names.get(e.getKey()).replace("\"", "'")).append("\":[");
            for (int layer = 0; layer < e.getValue().length; layer++) {
                b.append(layer == 0 ? "" : ",").append(java.util.Arrays.toString(e.getValue()[layer]).replace(" ", ""));
            }
            b.append(']');
            first = false;
        }
        b.append("}}\n");
        Path tmp = o.out().resolve("domain-loads.json.tmp");
        Files.writeString(tmp, b.toString());
        Files.move(tmp, o.out().resolve("domain-loads.json"), java.nio.file.StandardCopyOption.REPLACE_EXISTING,
                java.nio.file.StandardCopyOption.ATOMIC_MOVE);
    }

    private void save(Path last, List<Parameter> params, AdamW adam, long step) throws IOException {
        if (model.moeLayers().length > 0) {
            writeDomainLoads();
        }
        Map<String, String> meta = new LinkedHashMap<>(o.recipe());
        meta.put("model", model.name());
        meta.put("step", Long.toString(step));
        meta.put("seed", Long.toString(o.seed()));
        meta.put("data", String.join(",", java.util.Arrays.stream(data.state()).mapToObj(Long::toString).toList()));
        Checkpoint.save(last, params, adam, meta);
    }

    private int[] inputs(Batch b) {
        int[] in = new int[b.size() * o.seq()];
        for (int r = 0; r < b.size(); r++) {
            for (int t = 0; t < o.seq(); t++) {
                in[r * o.seq() + t] = b.input(r, t);
            }
        }
        return in;
    }

    private int[] targets(Batch b) {
        int[] out = new int[b.size() * o.seq()];
        for (int r = 0; r < b.size(); r++) {
            for (int t = 0; t < o.seq(); t++) {
                out[r * o.seq() + t] = b.target(r, t);
            }
        }
        return out;
    }

    private static int[][] add(int[][] total, int[][] more) {
        if (total == null) {
            return more;
        }
        for (int i = 0; i < total.length; i++) {
            for (int j = 0; j < total[i].length; j++) {
                total[i][j] += more[i][j];
            }
        }
        return total;
    }

    /** Scales gradients so that their global L2 norm is at most {@code max} (0 = off); returns the norm before. */
    static double clip(List<Parameter> params, double max) {
        double sq = 0;
        for (Parameter p : params) {
            if (!p.trainable()) {
                continue;
            }
            for (int i = 0; i < p.size(); i++) {
                double g = p.grad()[p.offset() + i];
                sq += g * g;
            }
        }
        double norm = Math.sqrt(sq);
        if (max > 0 && norm > max) {
            float s = (float) (max / norm);
            for (Parameter p : params) {
                if (p.trainable()) {
                    for (int i = 0; i < p.size(); i++) {
                        p.grad()[p.offset() + i] *= s;
                    }
                }
            }
        }
        return norm;
    }

    /** Mean over MoE layers of (most loaded expert / mean load): 1 is perfectly balanced. */
    static double imbalance(int[][] loads) {
        if (loads == null || loads.length == 0) {
            return Double.NaN;
        }
        double sum = 0;
        for (int[] layer : loads) {
            double mean = java.util.Arrays.stream(layer).average().orElse(0);
            int max = java.util.Arrays.stream(layer).max().orElse(0);
            sum += mean == 0 ? 1 : max / mean;
        }
        return sum / loads.length;
    }

    private static String json(long step, double loss, double ce, double lr, double norm, double tokensPerSecond, int[][] loads) {
        StringBuilder b = new StringBuilder();
        b.append(String.format(Locale.ROOT, "{\"step\":%d,\"loss\":%.6f,\"cross_entropy\":%.6f,\"lr\":%.6g,\"grad_norm\":%.6g,\"tokens_per_s\":%.1f",
                step, loss, ce, lr, norm, tokensPerSecond));
        b.append(",\"expert_loads\":[");
        if (loads != null) {
            for (int i = 0; i < loads.length; i++) {
                b.append(i == 0 ? "" : ",").append(java.util.Arrays.toString(loads[i]).replace(" ", ""));
            }
        }
        return b.append("]}").toString();
    }

    /** Drops metrics lines past the resumed step, so that the file stays one line per step. */
    private static void truncateMetrics(Path metrics, long step) throws IOException {
        if (!Files.exists(metrics)) {
            return;
        }
        List<String> keep = Files.readAllLines(metrics).stream().limit(step).toList();
        Path tmp = metrics.resolveSibling(metrics.getFileName() + ".tmp");
        Files.write(tmp, keep);
        Files.move(tmp, metrics, java.nio.file.StandardCopyOption.REPLACE_EXISTING, java.nio.file.StandardCopyOption.ATOMIC_MOVE);
    }

    /** One status line, rewritten in place on a terminal and printed every few seconds otherwise. */
    static final class Progress {
        private final PrintStream out;
        private final long total;
        private final long start;
        private final long began = System.nanoTime();
        private final boolean terminal = System.console() != null;
        private long lastPrint;

        Progress(PrintStream out, long total, long start) {
            this.out = out;
            this.total = total;
            this.start = start;
        }

        void update(long step, double loss, double lr, double tokensPerSecond, double imbalance) {
            long now = System.nanoTime();
            double elapsed = (now - began) / 1e9;
            double eta = (step - start) == 0 ? 0 : elapsed / (step - start) * (total - step);
            String line = String.format(Locale.ROOT, "step %d/%d  loss %.4f  lr %.2e  %s tok/s  ETA %s%s", step, total, loss, lr,
                    human(tokensPerSecond), duration(eta), Double.isNaN(imbalance) ? "" : String.format(Locale.ROOT, "  imbalance %.2f", imbalance));
            if (terminal) {
                out.print("\r" + line + "   ");
                out.flush();
            } else if (now - lastPrint > 5_000_000_000L || step == total || step == start + 1) {
                out.println(line);
                lastPrint = now;
            }
        }

        void end() {
            if (terminal) {
                out.println();
            }
        }

        static String human(double v) {
            return v >= 1e6 ? String.format(Locale.ROOT, "%.1fM", v / 1e6) : v >= 1e3 ? String.format(Locale.ROOT, "%.1fk", v / 1e3)
                    : String.format(Locale.ROOT, "%.0f", v);
        }

        static String duration(double seconds) {
            long s = Math.round(seconds);
            return s >= 3600 ? String.format(Locale.ROOT, "%dh%02dm", s / 3600, s % 3600 / 60)
                    : s >= 60 ? String.format(Locale.ROOT, "%dm%02ds", s / 60, s % 60) : s + "s";
        }
    }
}
