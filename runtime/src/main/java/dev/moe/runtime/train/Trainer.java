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
import java.util.function.Predicate;

/**
 * The training loop: micro-batches accumulated into optimiser steps, gradient clipping, AdamW on a
 * schedule, a live progress line, {@code metrics.jsonl}, periodic and final checkpoints, resume, and
 * a clean stop on Ctrl-C (the current step finishes, a checkpoint is written, then the JVM exits).
 *
 * <p>A run is a curriculum of {@link Stage stages} run in order (a plain recipe is one stage). Each
 * stage has its own steps, data, trainable parameters, learning rate and schedule, and starts from
 * the previous stage's weights or from what its {@link Start} puts there (fresh weights, a
 * checkpoint, an upcycled model). Each stage gets a fresh optimiser holding moments only for the
 * parameters it trains; frozen ones are never written. A checkpoint is kept at each stage's end
 * ({@code stage-NAME.safetensors}).
 *
 * <p>Batch i of the data is a pure function of the seed and i, and every other piece of state is in
 * the checkpoint (whose step says which stage it belongs to), so a resumed run is bitwise the same as
 * an uninterrupted one, also across stage boundaries.
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

    /** What a stage starts from, applied to the model's weights when the stage begins. */
    @FunctionalInterface
    public interface Start {
        /** Fresh weights from the seed. */
        Start SCRATCH = (model, seed) -> model.initialize(seed);

        /** The weights as the previous stage left them. */
        Start PREVIOUS = (model, seed) -> {};

        void apply(TrainableModel model, long seed) throws IOException;
    }

    /**
     * One stage of a curriculum.
     *
     * @param name shown in the progress line, metrics and the stage's checkpoint; empty for a plain run
     * @param trainable which parameters train, by name (parameters the model itself freezes stay frozen)
     */
    public record Stage(String name, long steps, DataStream data, Predicate<String> trainable, double lr, String schedule, long warmup,
            double minLr, Start start) {
        public Stage {
            if (steps < 1) {
                throw new IllegalArgumentException("stage `" + name + "` has " + steps + " steps");
            }
        }
    }

    public record Result(long steps, double firstLoss, double lastLoss, boolean interrupted, Path checkpoint, List<Double> losses) {}

    private final TrainableModel model;
    private final List<Stage> stages;
    private final long[] begins;
    private final long total;
    private final Options o;
    private PrintStream log;
    private final AtomicBoolean stop = new AtomicBoolean();
    private Throughput throughput = Throughput.NONE;
    private Collective world = Collective.SINGLE;

    /** A plain run: one stage with the options' steps, learning rate and schedule, from fresh weights. */
    public Trainer(TrainableModel model, DataStream data, Options options, PrintStream log) {
        this(model, List.of(new Stage("", options.steps(), data, name -> true, options.lr(), options.schedule(), options.warmup(),
                options.minLr(), Start.SCRATCH)), options, log);
    }

    /**
     * A curriculum. The options' steps is where to stop (at most the stages' total); their learning
     * rate and schedule are unused (each stage has its own).
     */
    public Trainer(TrainableModel model, List<Stage> stages, Options options, PrintStream log) {
        if (stages.isEmpty()) {
            throw new IllegalArgumentException("a curriculum needs at least one stage");
        }
        this.model = model;
        this.stages = List.copyOf(stages);
        this.begins = new long[stages.size() + 1];
        for (int i = 0; i < stages.size(); i++) {
            begins[i + 1] = Math.addExact(begins[i], stages.get(i).steps());
        }
        this.total = Math.min(begins[stages.size()], options.steps());
        this.o = options;
        this.log = log;
    }

    /**
     * Trains as one rank of a data-parallel world: each rank takes its {@link Collective.Shard shard}
     * of every batch, the gradients (scaled so that their sum is the whole batch's gradient), losses
     * and expert loads are summed over the ranks, and every rank applies the same update. Only rank 0
     * writes metrics, checkpoints and progress, so the run directory looks the same whatever the
     * number of ranks, and a run saved by N ranks resumes with any other number.
     */
    /** The FLOP count and peak behind the model FLOP/s and MFU that the progress line and metrics.jsonl show (none by default). */
    public Trainer throughput(Throughput throughput) {
        this.throughput = java.util.Objects.requireNonNull(throughput);
        return this;
    }

    public Trainer world(Collective world) {
        this.world = java.util.Objects.requireNonNull(world);
        if (world.rank() != 0) {
            log = new PrintStream(java.io.OutputStream.nullOutputStream()); // rank 0 reports for all
        }
        return this;
    }

    private boolean lead() {
        return world.rank() == 0;
    }

    /** Asks the loop to stop after the current step (and save). */
    public void requestStop() {
        stop.set(true);
    }

    /**
     * The model's parameters as stage {@code k} trains them: those its patterns select (and the model
     * does not freeze) are trainable, the rest frozen.
     *
     * @throws IllegalArgumentException when the stage would train nothing
     */
    public List<Parameter> parametersOf(int k) {
        Stage s = stages.get(k);
        List<Parameter> out = new ArrayList<>();
        boolean any = false;
        for (Parameter p : model.parameters()) {
            Parameter q = p.trainable() && s.trainable().test(p.name()) ? p : p.withTrainable(false);
            any |= q.trainable();
            out.add(q);
        }
        if (!any) {
            throw new IllegalArgumentException((s.name().isEmpty() ? "the run" : "stage `" + s.name() + "`") + " trains no parameter of "
                    + model.name());
        }
        return out;
    }

    /** The index of the stage that step {@code step} (0-based, below the total) belongs to. */
    int stageAt(long step) {
        int k = 0;
        while (k + 1 < stages.size() && step >= begins[k + 1]) {
            k++;
        }
        return k;
    }

    private boolean named() {
        return stages.size() > 1 || !stages.getFirst().name().isEmpty();
    }

    public Result run() throws IOException {
        for (int k = 0; k < stages.size(); k++) {
            parametersOf(k); // a stage that trains nothing is an error before any work
        }
        Files.createDirectories(o.out());
        Path last = o.out().resolve("last.safetensors");
        Path metrics = o.out().resolve("metrics.jsonl");
        long start = 0;
        AdamW adam = null;
        if (o.resume() && Files.exists(last)) {
            Resumed r = resume(last);
            start = r.step();
            adam = r.adam();
            if (lead()) {
                truncateMetrics(metrics, start);
            }
        } else if (lead()) {
            Files.deleteIfExists(metrics);
        }
        if (start >= total) {
            log.printf(Locale.ROOT, "nothing to do: the checkpoint is at step %d of %d%n", start, total);
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

        if (model instanceof DeviceTrainable device) {
            device.gradientsStayOnDevice(true);
        }
        List<Double> losses = new ArrayList<>();
        long step = start;
        boolean interrupted = false;
        long savedAt = -1;
        int k = stageAt(step);
        List<Parameter> params = parametersOf(k);
        try (BufferedWriter out = lead() ? Files.newBufferedWriter(metrics, StandardCharsets.UTF_8, StandardOpenOption.CREATE, StandardOpenOption.APPEND)
                : new BufferedWriter(java.io.Writer.nullWriter())) {
            stages:
            while (step < total) {
                k = stageAt(step);
                Stage stage = stages.get(k);
                params = parametersOf(k);
                if (step == begins[k]) {
                    // A stage begins (also when resuming from the previous stage's final checkpoint).
                    stage.start().apply(model, o.seed());
                    adam = null;
                }
                if (adam == null) {
                    adam = new AdamW(params, o.beta1(), o.beta2(), o.eps(), o.weightDecay());
                }
                long end = Math.min(begins[k + 1], total);
                if (named()) {
                    announce(k, params, step);
                }
                Schedule schedule = new Schedule(stage.schedule(), stage.lr(), stage.warmup(), stage.minLr(), stage.steps());
                Progress progress = new Progress(log, total, step, named() ? stagePrefix(k) : "");
                double stageFirst = Double.NaN;
                double stageLast = Double.NaN;
                while (step < end) {
                    long t0 = System.nanoTime();
                    double lr = schedule.at(step - begins[k]);
                    if (!(model instanceof DeviceTrainable)) {
                        params.forEach(Parameter::zeroGrad); // a device-resident model's gradients never reach the host arrays
                    }
                    model.setStep(step);
                    model.beginStep();
                    double loss = 0;
                    double ce = 0;
                    int[][] loads = null;
                    long tokens = 0;
                    for (int j = 0; j < o.microBatches(); j++) {
                        Batch b = stage.data().batch(step * o.microBatches() + j);
                        // This rank's rows; the loss is a mean over kept tokens, so weighting each rank's mean by its share of
                        // the kept tokens makes the ranks' sum the whole batch's loss (and gradient). A world of one weighs 1.
                        Collective.Shard shard = Collective.Shard.of(b.size(), world.rank(), world.size());
                        boolean[] keep = b.keep(o.seq());
                        boolean[] shardKeep = keep == null ? null : java.util.Arrays.copyOfRange(keep, shard.from() * o.seq(), shard.to() * o.seq());
                        double weight = keep == null ? (double) shard.rows() / b.size() : (double) count(shardKeep) / count(keep);
                        model.setDomains(java.util.Arrays.stream(b.domains(), shard.from(), shard.to()).mapToObj(stage.data().domains()::get).toList());
                        mask(model, shardKeep);
                        loss += model.forward(inputs(b, shard), targets(b, shard), shard.rows(), o.seq()) * weight / o.microBatches();
                        ce += model.lastCrossEntropy() * weight / o.microBatches();
                        if (model instanceof DeviceTrainable device && j == o.microBatches() - 1 && world != Collective.SINGLE) {
                            device.overlapGradientSum(world); // the last micro-batch's backward sums finished layers as it goes
                        }
                        model.backward((float) (weight / o.microBatches()));
                        loads = add(loads, model.expertLoads());
                        addByDomain(stage.data(), b, gatherBySequence(model.expertLoadsBySequence(), shard, b.size()));
                        tokens += b.keptTokens(o.seq());
                    }
                    // The whole batch's gradients, loss and loads on every rank; whether to stop is agreed too, so
                    // that no rank waits in a collective for a rank that has left the loop.
                    if (model instanceof DeviceTrainable device) {
                        device.allReduceGradients(world);
                    } else {
                        world.allReduceGradients(params);
                    }
                    double[] scalars = {loss, ce, stop.get() ? 1 : 0};
                    world.allReduceSum(scalars);
                    loss = scalars[0];
                    ce = scalars[1];
                    boolean stopAgreed = scalars[2] > 0;
                    loads = sumOverRanks(loads);
                    if (world.size() > 1) {
                        long[] stepLoads = model.stepLoads();
                        world.allReduceSum(stepLoads);
                        model.setStepLoads(stepLoads);
                    }
                    model.setMask(null);
                    model.endStep();
                    double norm;
                    if (model instanceof DeviceTrainable device) {
                        norm = device.clipAndStep(adam, params, lr, o.gradClip());
                    } else {
                        norm = clip(params, o.gradClip());
                        adam.step(params, lr);
                    }
                    step++;
                    double seconds = (System.nanoTime() - t0) / 1e9;
                    losses.add(loss);
                    stageFirst = Double.isNaN(stageFirst) ? loss : stageFirst;
                    stageLast = loss;
                    double tokensPerSecond = tokens / seconds;
                    out.write(json(step, named() ? stage.name() : null, step - begins[k], loss, ce, lr, norm, tokensPerSecond, throughput, loads));
                    out.newLine();
                    out.flush();
                    progress.update(step, loss, lr, tokensPerSecond, throughput.progress(tokensPerSecond), imbalance(loads));
                    if (!Double.isFinite(loss)) {
                        progress.end();
                        throw new ArithmeticException("loss is " + loss + " at step " + step + ": training diverged (lower the learning rate)");
                    }
                    if (named() && step == begins[k + 1]) {
                        progress.end();
                        save(last, params, adam, step, stage.data());
                        savedAt = step;
                        Path kept = o.out().resolve("stage-" + stage.name() + ".safetensors");
                        if (lead()) {
                            Files.copy(last, kept, java.nio.file.StandardCopyOption.REPLACE_EXISTING);
                        }
                        log.printf(Locale.ROOT, "stage %s done at step %d: loss %.4f -> %.4f; checkpoint %s%n", stage.name(), step, stageFirst,
                                stageLast, kept.getFileName());
                    }
                    if (stopAgreed || (world.size() == 1 && stop.get()) || (o.stopAt() > 0 && step >= o.stopAt() && step < total)) {
                        interrupted = true;
                        progress.end();
                        break stages;
                    }
                    if (o.saveEvery() > 0 && step % o.saveEvery() == 0 && step < total) {
                        save(last, params, adam, step, stage.data());
                        savedAt = step;
                        if (lead()) {
                            Files.copy(last, o.out().resolve(String.format(Locale.ROOT, "step-%06d.safetensors", step)),
                                    java.nio.file.StandardCopyOption.REPLACE_EXISTING);
                        }
                    }
                }
                progress.end();
            }
            if (savedAt != step) {
                save(last, params, adam, step, stages.get(stageAt(step - 1)).data());
            }
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

    private String stagePrefix(int k) {
        return String.format(Locale.ROOT, "[%d/%d %s] ", k + 1, stages.size(), stages.get(k).name());
    }

    private void announce(int k, List<Parameter> params, long step) {
        Stage s = stages.get(k);
        long trained = 0;
        long all = 0;
        int tensors = 0;
        for (Parameter p : params) {
            if (!p.isBuffer()) {
                all += p.size();
            }
            if (p.trainable()) {
                trained += p.size();
                tensors++;
            }
        }
        log.printf(Locale.ROOT, "stage %d/%d %s: steps %d..%d, lr %.3g %s, data %s, trains %d tensors (%s of %s weights)%s%n", k + 1, stages.size(),
                s.name(), begins[k] + 1, begins[k + 1], s.lr(), s.schedule(), s.data().mixture(), tensors, Progress.human(trained),
                Progress.human(all), step > begins[k] ? ", resumed at step " + step : "");
    }

    private record Resumed(long step, AdamW adam) {}

    /**
     * Loads the newest complete checkpoint: {@code last.safetensors}, or when that is unreadable the
     * newest readable {@code step-N.safetensors} (with a warning). Never loads a partial file. A
     * checkpoint inside a stage restores that stage's optimiser; one at a stage's end only the weights
     * (the next stage starts a fresh optimiser).
     */
    private Resumed resume(Path last) throws IOException {
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
                long step = Long.parseLong(meta.get("step"));
                if (step < 0 || step > begins[stages.size()]) {
                    throw new IOException(candidate + " is at step " + step + ", past this recipe's " + begins[stages.size()] + " steps");
                }
                AdamW adam = null;
                if (step < total && step > begins[stageAt(step)]) {
                    int k = stageAt(step);
                    if (named() && !stages.get(k).name().equals(meta.get("stage"))) {
                        throw new IOException(candidate + " was saved in stage `" + meta.get("stage") + "`, but step " + step + " is in stage `"
                                + stages.get(k).name() + "`: the recipe's stages changed");
                    }
                    adam = new AdamW(parametersOf(k), o.beta1(), o.beta2(), o.eps(), o.weightDecay());
                }
                Checkpoint.load(candidate, model.parameters(), adam);
                if (first != null) {
                    log.printf(Locale.ROOT, "warning: %s%n  resuming from the older %s instead%n", first.getMessage(), candidate.getFileName());
                }
                log.printf(Locale.ROOT, "resuming %s from step %d%n", model.name(), step);
                return new Resumed(step, adam);
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
    private final Map<String, long[][]> domainLoads = new java.util.TreeMap<>();

    private void addByDomain(DataStream data, Batch b, int[][][] bySequence) {
        for (int r = 0; r < b.size(); r++) {
            String domain = data.sources().isEmpty() ? data.domains().get(b.domain(r)) : data.sources().get(b.source(r));
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
        StringBuilder b = new StringBuilder("{\"layers\":").append(java.util.Arrays.toString(model.moeLayers()).replace(" ", ""));
        b.append(",\"domains\":{");
        boolean first = true;
        for (var e : domainLoads.entrySet()) {
            b.append(first ? "" : ",").append('"').append(e.getKey().replace("\"", "'")).append("\":[");
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

    /** Rank 0 alone writes: every rank holds the same weights, optimiser state and data position. */
    private void save(Path last, List<Parameter> params, AdamW adam, long step, DataStream data) throws IOException {
        boolean collective = model instanceof DeviceTrainable d && d.collectivePull();
        if (collective) {
            ((DeviceTrainable) model).pullToHost(adam); // every rank: each holds some experts only, gathered to rank 0
        }
        if (!lead()) {
            return;
        }
        if (!collective && model instanceof DeviceTrainable device) {
            device.pullToHost(adam); // the device holds the newest weights and moments
        }
        if (model.moeLayers().length > 0) {
            writeDomainLoads();
        }
        Map<String, String> meta = new LinkedHashMap<>(o.recipe());
        meta.put("model", model.name());
        meta.put("step", Long.toString(step));
        if (named()) {
            meta.put("stage", stages.get(stageAt(step - 1)).name());
        }
        meta.put("seed", Long.toString(o.seed()));
        meta.put("data", String.join(",", java.util.Arrays.stream(data.state()).mapToObj(Long::toString).toList()));
        Checkpoint.save(last, params, adam, meta);
    }

    /**
     * Sets a padded batch's mask (null for full rows), so that padding is out of the loss, the routing
     * counts and the balancing losses. Each micro-batch sets its own, and the step ends with none, so
     * sampling and evaluation after training see no stale mask.
     */
    static void mask(TrainableModel model, boolean[] keep) {
        try {
            model.setMask(keep);
        } catch (UnsupportedOperationException e) {
            throw new IllegalArgumentException("cannot train on padded documents: " + e.getMessage(), e);
        }
    }

    private static int count(boolean[] keep) {
        int n = 0;
        for (boolean k : keep) {
            n += k ? 1 : 0;
        }
        return n;
    }

    /** The inputs of the shard's rows, [rows, seq]. */
    private int[] inputs(Batch b, Collective.Shard shard) {
        int[] in = new int[shard.rows() * o.seq()];
        for (int r = shard.from(); r < shard.to(); r++) {
            for (int t = 0; t < o.seq(); t++) {
                in[(r - shard.from()) * o.seq() + t] = b.input(r, t);
            }
        }
        return in;
    }

    private int[] targets(Batch b, Collective.Shard shard) {
        int[] out = new int[shard.rows() * o.seq()];
        for (int r = shard.from(); r < shard.to(); r++) {
            for (int t = 0; t < o.seq(); t++) {
                out[(r - shard.from()) * o.seq() + t] = b.target(r, t);
            }
        }
        return out;
    }

    /**
     * The whole batch's per-sequence loads, [layer][row][expert], from each rank's [layer][shard row][expert]:
     * every rank places its rows and the sum over ranks fills the rest (a world of one has them all).
     */
    private int[][][] gatherBySequence(int[][][] mine, Collective.Shard shard, int rows) {
        if (world.size() == 1) {
            return mine;
        }
        int layers = mine.length;
        int experts = layers == 0 || mine[0].length == 0 ? 0 : mine[0][0].length;
        long[] flat = new long[layers * rows * experts];
        for (int l = 0; l < layers; l++) {
            for (int r = 0; r < shard.rows(); r++) {
                for (int e = 0; e < experts; e++) {
                    flat[(l * rows + shard.from() + r) * experts + e] = mine[l][r][e];
                }
            }
        }
        world.allReduceSum(flat);
        int[][][] out = new int[layers][rows][experts];
        for (int l = 0; l < layers; l++) {
            for (int r = 0; r < rows; r++) {
                for (int e = 0; e < experts; e++) {
                    out[l][r][e] = Math.toIntExact(flat[(l * rows + r) * experts + e]);
                }
            }
        }
        return out;
    }

    /** The step's expert loads summed over the ranks, [layer][expert]. */
    private int[][] sumOverRanks(int[][] loads) {
        if (world.size() == 1 || loads == null) {
            return loads;
        }
        int n = 0;
        for (int[] layer : loads) {
            n += layer.length;
        }
        long[] flat = new long[n];
        int at = 0;
        for (int[] layer : loads) {
            for (int v : layer) {
                flat[at++] = v;
            }
        }
        world.allReduceSum(flat);
        int[][] out = new int[loads.length][];
        at = 0;
        for (int i = 0; i < loads.length; i++) {
            out[i] = new int[loads[i].length];
            for (int e = 0; e < out[i].length; e++) {
                out[i][e] = Math.toIntExact(flat[at++]);
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

    private static String json(long step, String stage, long stageStep, double loss, double ce, double lr, double norm, double tokensPerSecond,
            Throughput throughput, int[][] loads) {
        StringBuilder b = new StringBuilder();
        b.append(String.format(Locale.ROOT, "{\"step\":%d,", step));
        if (stage != null) {
            b.append("\"stage\":\"").append(stage).append("\",\"stage_step\":").append(stageStep).append(',');
        }
        b.append(String.format(Locale.ROOT, "\"loss\":%.6f,\"cross_entropy\":%.6f,\"lr\":%.6g,\"grad_norm\":%.6g,\"tokens_per_s\":%.1f",
                loss, ce, lr, norm, tokensPerSecond));
        b.append(throughput.json(tokensPerSecond));
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
        private final String prefix;
        private final long began = System.nanoTime();
        private final boolean terminal = System.console() != null;
        private long lastPrint;
        private boolean pending;

        Progress(PrintStream out, long total, long start, String prefix) {
            this.out = out;
            this.total = total;
            this.start = start;
            this.prefix = prefix;
        }

        void update(long step, double loss, double lr, double tokensPerSecond, String flops, double imbalance) {
            long now = System.nanoTime();
            double elapsed = (now - began) / 1e9;
            double eta = (step - start) == 0 ? 0 : elapsed / (step - start) * (total - step);
            String line = prefix + String.format(Locale.ROOT, "step %d/%d  loss %.4f  lr %.2e  %s tok/s%s  ETA %s%s", step, total, loss, lr,
                    human(tokensPerSecond), flops, duration(eta), Double.isNaN(imbalance) ? "" : String.format(Locale.ROOT, "  imbalance %.2f", imbalance));
            if (terminal) {
                out.print("\r" + line + "   ");
                out.flush();
                pending = true;
            } else if (now - lastPrint > 5_000_000_000L || step == total || step == start + 1) {
                out.println(line);
                lastPrint = now;
            }
        }

        void end() {
            if (terminal && pending) {
                out.println();
                pending = false;
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
