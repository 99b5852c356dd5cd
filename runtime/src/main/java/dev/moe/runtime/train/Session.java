package dev.moe.runtime.train;

import dev.moe.runtime.Backend;
import dev.moe.runtime.Parameter;
import dev.moe.runtime.TrainableModel;
import dev.moe.runtime.cpu.CpuBackend;
import dev.moe.runtime.data.Batch;
import dev.moe.runtime.data.ByteTokenizer;
import dev.moe.runtime.data.DataStream;
import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Objects;
import java.util.function.Function;

/**
 * The library API of a generated model: the model with its optimiser, data and step count. This is
 * what a program that depends on a generated model (and the runtime artifact) uses, and what
 * {@code moe repl} binds as {@code model}:
 *
 * <pre>{@code
 * Session s = Session.create(MixtralTiny::new, Session.Settings.defaults().batch(4).seq(32).lr(1e-3));
 * s.train(20);                                   // 20 optimiser steps on the synthetic corpus
 * System.out.println(s.evaluate(4));             // held-out cross-entropy
 * System.out.println(s.generate("sort: 3 1 2 -> ", 16));
 * s.save(Path.of("tiny.safetensors"));           // weights and optimiser state; load() resumes
 * }</pre>
 *
 * <p>A step is exactly one step of {@link Trainer} with the same settings: the same batches (a pure
 * function of the seed and the step), the same gradient accumulation, clipping and AdamW update. The
 * methods are stable: new settings get defaults, existing signatures stay. Not thread-safe.
 */
public final class Session {
    /**
     * How to train. {@code defaults()} is the {@code moe train} default without a recipe; every
     * {@code name(value)} method returns a copy with that one setting changed.
     *
     * @param batch sequences per micro-batch
     * @param microBatches micro-batches accumulated into one optimiser step
     * @param seq tokens per sequence; 0 means the model's context
     * @param lr peak learning rate
     * @param schedule {@code constant}, {@code cosine} or {@code linear}
     * @param warmup warm-up steps of the schedule
     * @param minLr the learning rate the schedule decays to
     * @param totalSteps the length of the schedule (where cosine reaches {@code minLr})
     * @param gradClip the largest global gradient norm; 0 turns clipping off
     * @param seed seeds the initial weights and the data
     * @param data the data mixture, e.g. {@code {arithmetic: 0.5, copy: 0.5}} or {@code {synthetic: 1}}
     * @param padDocuments {@code documents pad}: each sequence one whole document, padded to {@code seq}, the padding masked
     *     out of the loss, the expert loads and the balancing losses (as {@code moe train} does); false: running text
     */
    public record Settings(int batch, int microBatches, int seq, double lr, double beta1, double beta2, double eps, double weightDecay,
            String schedule, long warmup, double minLr, long totalSteps, double gradClip, long seed, Map<String, Double> data, boolean padDocuments) {
        public Settings {
            if (batch < 1 || microBatches < 1 || seq < 0 || totalSteps < 1) {
                throw new IllegalArgumentException("batch, micro-batches and total steps must be positive, seq at least 0");
            }
            Objects.requireNonNull(schedule);
            data = java.util.Collections.unmodifiableMap(new LinkedHashMap<>(data));
        }

        /** The settings before {@code padDocuments}: running text. */
        public Settings(int batch, int microBatches, int seq, double lr, double beta1, double beta2, double eps, double weightDecay,
                String schedule, long warmup, double minLr, long totalSteps, double gradClip, long seed, Map<String, Double> data) {
            this(batch, microBatches, seq, lr, beta1, beta2, eps, weightDecay, schedule, warmup, minLr, totalSteps, gradClip, seed, data, false);
        }

        public static Settings defaults() {
            return new Settings(8, 1, 0, 3e-4, 0.9, 0.95, 1e-8, 0.0, "constant", 0, 0.0, 1000, 1.0, 0, Map.of("synthetic", 1.0), false);
        }

        /** {@code documents pad} (true) or {@code documents stream} (false). */
        public Settings padDocuments(boolean padDocuments) {
            return new Settings(batch, microBatches, seq, lr, beta1, beta2, eps, weightDecay, schedule, warmup, minLr, totalSteps, gradClip, seed, data, padDocuments);
        }

        public Settings batch(int batch) {
            return new Settings(batch, microBatches, seq, lr, beta1, beta2, eps, weightDecay, schedule, warmup, minLr, totalSteps, gradClip, seed, data, padDocuments);
        }

        public Settings microBatches(int microBatches) {
            return new Settings(batch, microBatches, seq, lr, beta1, beta2, eps, weightDecay, schedule, warmup, minLr, totalSteps, gradClip, seed, data, padDocuments);
        }

        public Settings seq(int seq) {
            return new Settings(batch, microBatches, seq, lr, beta1, beta2, eps, weightDecay, schedule, warmup, minLr, totalSteps, gradClip, seed, data, padDocuments);
        }

        public Settings lr(double lr) {
            return new Settings(batch, microBatches, seq, lr, beta1, beta2, eps, weightDecay, schedule, warmup, minLr, totalSteps, gradClip, seed, data, padDocuments);
        }

        public Settings weightDecay(double weightDecay) {
            return new Settings(batch, microBatches, seq, lr, beta1, beta2, eps, weightDecay, schedule, warmup, minLr, totalSteps, gradClip, seed, data, padDocuments);
        }

        /** The AdamW moments' decay rates and epsilon. */
        public Settings adam(double beta1, double beta2, double eps) {
            return new Settings(batch, microBatches, seq, lr, beta1, beta2, eps, weightDecay, schedule, warmup, minLr, totalSteps, gradClip, seed, data, padDocuments);
        }

        public Settings schedule(String schedule, long warmup, double minLr, long totalSteps) {
            return new Settings(batch, microBatches, seq, lr, beta1, beta2, eps, weightDecay, schedule, warmup, minLr, totalSteps, gradClip, seed, data, padDocuments);
        }

        public Settings gradClip(double gradClip) {
            return new Settings(batch, microBatches, seq, lr, beta1, beta2, eps, weightDecay, schedule, warmup, minLr, totalSteps, gradClip, seed, data, padDocuments);
        }

        public Settings seed(long seed) {
            return new Settings(batch, microBatches, seq, lr, beta1, beta2, eps, weightDecay, schedule, warmup, minLr, totalSteps, gradClip, seed, data, padDocuments);
        }

        public Settings data(Map<String, Double> data) {
            return new Settings(batch, microBatches, seq, lr, beta1, beta2, eps, weightDecay, schedule, warmup, minLr, totalSteps, gradClip, seed, data, padDocuments);
        }
    }

    private final TrainableModel model;
    private final Settings settings;
    private final int seq;
    private final DataStream data;
    private final AdamW adam;
    private final Schedule schedule;
    private final Map<String, String> recipe = new LinkedHashMap<>();
    private long step;
    private double lastLoss = Double.NaN;
    private int[][] lastLoads;

    private Session(TrainableModel model, Settings settings) {
        this.model = Objects.requireNonNull(model);
        this.settings = Objects.requireNonNull(settings);
        this.seq = settings.seq() == 0 ? model.context() : settings.seq();
        if (seq > model.context()) {
            throw new IllegalArgumentException("seq " + seq + " exceeds the context of " + model.name() + " (" + model.context() + ")");
        }
        this.data = DataStream.builder().mixture(settings.data()).batch(settings.batch()).context(seq).seed(settings.seed())
                .padDocuments(settings.padDocuments()).build();
        this.adam = new AdamW(model.parameters(), settings.beta1(), settings.beta2(), settings.eps(), settings.weightDecay());
        this.schedule = new Schedule(settings.schedule(), settings.lr(), settings.warmup(), settings.minLr(), settings.totalSteps());
        model.initialize(settings.seed());
    }

    /**
     * A model on the CPU backend (all cores), initialised from the settings' seed. The CPU backend
     * needs the JVM option {@code --add-modules jdk.incubator.vector}.
     */
    public static Session create(Function<Backend, ? extends TrainableModel> constructor, Settings settings) {
        return of(constructor.apply(new CpuBackend()), settings);
    }

    /** {@link #create(Function, Settings)} with {@link Settings#defaults()}. */
    public static Session create(Function<Backend, ? extends TrainableModel> constructor) {
        return create(constructor, Settings.defaults());
    }

    /** Wraps a model built on any backend; its weights are initialised from the settings' seed. */
    public static Session of(TrainableModel model, Settings settings) {
        return new Session(model, settings);
    }

    public TrainableModel model() {
        return model;
    }

    public Settings settings() {
        return settings;
    }

    /** Optimiser steps taken so far (restored by {@link #load}). */
    public long step() {
        return step;
    }

    /** The loss of the last step, NaN before the first. */
    public double lastLoss() {
        return lastLoss;
    }

    /**
     * Records the recipe this model came from in the checkpoints it saves, so that
     * {@code moe generate} and {@code moe eval} can open them.
     */
    public Session recipe(String file, String source) {
        recipe.put("recipe.file", file);
        recipe.put("recipe.source", source);
        return this;
    }

    /** One optimiser step on the next batches of the data; returns the training loss. */
    public double trainStep() {
        List<Parameter> params = model.parameters();
        params.forEach(Parameter::zeroGrad);
        model.setTraining(true);
        model.setStep(step);
        model.beginStep();
        int micro = settings.microBatches();
        double loss = 0;
        int[][] loads = null;
        for (int j = 0; j < micro; j++) {
            Batch b = data.batch(step * micro + j);
            Trainer.mask(model, b.keep(seq));
            loss += model.forward(inputs(b), targets(b), b.size(), seq) / micro;
            model.backward(1f / micro);
            loads = add(loads, model.expertLoads());
        }
        model.setMask(null);
        model.endStep();
        Trainer.clip(params, settings.gradClip());
        adam.step(params, schedule.at(step));
        step++;
        lastLoss = loss;
        lastLoads = loads;
        if (!Double.isFinite(loss)) {
            throw new ArithmeticException("loss is " + loss + " at step " + step + ": training diverged (lower the learning rate)");
        }
        return loss;
    }

    /** {@code steps} optimiser steps; returns their losses. */
    public List<Double> train(int steps) {
        if (steps < 0) {
            throw new IllegalArgumentException("steps must be at least 0");
        }
        List<Double> losses = new ArrayList<>(steps);
        for (int i = 0; i < steps; i++) {
            losses.add(trainStep());
        }
        return losses;
    }

    /** Mean cross-entropy (nats per token) over {@code batches} held-out batches, which training never sees. */
    public double evaluate(int batches) {
        if (batches < 1) {
            throw new IllegalArgumentException("batches must be at least 1");
        }
        model.setTraining(false);
        try {
            double sum = 0;
            for (Batch b : data.evalBatches(batches)) {
                model.beginStep();
                Trainer.mask(model, b.keep(seq));
                model.forward(inputs(b), targets(b), b.size(), seq);
                sum += model.lastCrossEntropy();
            }
            return sum / batches;
        } finally {
            model.setMask(null);
            model.setTraining(true);
        }
    }

    /** Greedy continuation of {@code prompt} (bytes as tokens), {@code maxTokens} long. */
    public String generate(String prompt, int maxTokens) {
        return generate(prompt, new Sampler.Options(maxTokens, 0, 0, 1, 0));
    }

    /** Continuation of {@code prompt} sampled with the given temperature, top-k, top-p and seed. */
    public String generate(String prompt, Sampler.Options options) {
        if (options.maxTokens() < 0) {
            throw new IllegalArgumentException("maxTokens must be at least 0");
        }
        int[] tokens = ByteTokenizer.INSTANCE.encode(prompt);
        if (tokens.length == 0) {
            throw new IllegalArgumentException("the prompt is empty");
        }
        ByteArrayOutputStream out = new ByteArrayOutputStream();
        Sampler.generate(model, tokens, options, out::write);
        return new String(out.toByteArray(), StandardCharsets.UTF_8);
    }

    /**
     * Tokens routed to each expert in the last training step, per MoE layer ({@code [moeLayer][expert]},
     * summed over its micro-batches); the layer indices are {@link #moeLayers()}. Empty before the first step.
     */
    public int[][] expertLoads() {
        return lastLoads == null ? new int[0][] : lastLoads.clone();
    }

    /** The layer index of each row of {@link #expertLoads()}. */
    public int[] moeLayers() {
        return model.moeLayers();
    }

    /** Writes weights, optimiser state and step to a safetensors checkpoint (atomically). */
    public void save(Path file) throws IOException {
        Map<String, String> meta = new LinkedHashMap<>(recipe);
        meta.put("model", model.name());
        meta.put("step", Long.toString(step));
        meta.put("seed", Long.toString(settings.seed()));
        Checkpoint.save(file, model.parameters(), adam, meta);
    }

    /** Loads a checkpoint of this model (from {@link #save} or {@code moe train}); training continues from its step. */
    public void load(Path file) throws IOException {
        Map<String, String> meta = Checkpoint.metadata(file);
        if (!model.name().equals(meta.get("model"))) {
            throw new IOException(file + " holds model `" + meta.get("model") + "`, not `" + model.name() + "`");
        }
        Checkpoint.load(file, model.parameters(), meta.containsKey("optimizer.steps") ? adam : null);
        step = Long.parseLong(meta.getOrDefault("step", "0"));
    }

    private int[] inputs(Batch b) {
        int[] in = new int[b.size() * seq];
        for (int r = 0; r < b.size(); r++) {
            for (int t = 0; t < seq; t++) {
                in[r * seq + t] = b.input(r, t);
            }
        }
        return in;
    }

    private int[] targets(Batch b) {
        int[] out = new int[b.size() * seq];
        for (int r = 0; r < b.size(); r++) {
            for (int t = 0; t < seq; t++) {
                out[r * seq + t] = b.target(r, t);
            }
        }
        return out;
    }

    private static int[][] add(int[][] total, int[][] more) {
        if (total == null) {
            int[][] copy = new int[more.length][];
            for (int i = 0; i < more.length; i++) {
                copy[i] = more[i].clone();
            }
            return copy;
        }
        for (int i = 0; i < total.length; i++) {
            for (int j = 0; j < total[i].length; j++) {
                total[i][j] += more[i][j];
            }
        }
        return total;
    }

    @Override
    public String toString() {
        return model.name() + " at step " + step + (Double.isNaN(lastLoss) ? "" : String.format(java.util.Locale.ROOT, ", loss %.4f", lastLoss));
    }
}
