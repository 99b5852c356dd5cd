package dev.moe.cli;

import dev.moe.compiler.ir.CompiledFile;
import dev.moe.compiler.ir.Model;
import dev.moe.compiler.ir.Training;
import dev.moe.cuda.CudaContext;
import dev.moe.cuda.CudaException;
import dev.moe.cuda.PeakFlops;
import dev.moe.cuda.codegen.CudaModelGenerator;
import dev.moe.cuda.dist.DeviceExchange;
import dev.moe.cuda.dist.ExpertPlacement;
import dev.moe.cuda.dist.SharedDeviceGroup;
import dev.moe.cuda.model.DeviceModel;
import dev.moe.cuda.nccl.Launcher;
import dev.moe.cuda.nccl.NcclCollective;
import dev.moe.cuda.nccl.RendezvousException;
import dev.moe.cuda.nccl.WorldConfig;
import dev.moe.dsl.SourceFile;
import dev.moe.runtime.TrainableModel;
import dev.moe.runtime.data.DataStream;
import dev.moe.runtime.train.Collective;
import dev.moe.runtime.train.Throughput;
import dev.moe.runtime.train.Trainer;
import java.io.IOException;
import java.io.PrintStream;
import java.io.PrintWriter;
import java.io.UncheckedIOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.Optional;
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
                    + " --resume carries an interrupted run on, bitwise as if uninterrupted.",
            "A block with stages runs them in order, each with its own data, trainable parameters, learning rate and start"
                    + " (previous stage, checkpoint, upcycling), keeping stage-NAME.safetensors at each end. A file with several"
                    + " train blocks runs them in order, each into DIR/MODEL; `from: MODEL` in an upcycling step reads that run."},
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

    @Option(names = "--model", paramLabel = "NAME", description = "Run only this model's train block (a model without one trains with default settings).")
    String model;

    @Option(names = "--steps", paramLabel = "N", description = "Total optimiser steps (with --resume: the step to reach; with stages: where to stop).")
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

    @Option(names = "--gpus", paramLabel = "N", description = "Train data-parallel on N GPUs of this machine: one worker process per GPU"
            + " (rank i on GPU i), joined through NCCL. Each rank takes its share of every batch, gradients are summed over the ranks,"
            + " and rank 0 writes the same files as a one-GPU run (either resumes the other). A rank that fails or does not join"
            + " within MOE_JOIN_TIMEOUT_S (default 600) stops them all. Needs --backend cuda (with cpu: only --gpus 1)."
            + " Several hosts: set MOE_RANK, MOE_WORLD_SIZE and MOE_RENDEZVOUS instead (see the README).")
    Integer gpus;

    @Option(names = "--expert-parallel", description = "With --backend cuda: run each MoE layer's routed FFN experts expert-parallel over"
            + " the --gpus ranks (a world of one without --gpus): as the recipe's `parallel` block places them (any placement), else rank i"
            + " runs the i-th contiguous range of every layer's experts (when N does not divide them, the first ranks one more; a rank may"
            + " have none), and the tokens routed to them travel there and back"
            + " by all-to-all. Each rank keeps only its own experts in GPU memory; checkpoints gather them, so a run resumes on any number"
            + " of GPUs. Device-resident models"
            + " whose MoE layers have FFN, zero and copy experts (not LoRA, latent or MoE++ constant experts).")
    boolean expertParallel;

    @Option(names = "--stage-steps", paramLabel = "N", description = "Run every stage (and every train block without stages) for N steps: a quick trial of a curriculum.")
    Long stageSteps;

    /** This process's rank in a data-parallel world; a world of one unless started as a worker. */
    private Collective world = Collective.SINGLE;
    /** Started as one rank of a world (by the launcher or by hand). */
    private boolean worker;

    @Override
    public Integer call() throws IOException {
        PrintWriter err = spec.commandLine().getErr();
        PrintWriter stdout = spec.commandLine().getOut();
        Optional<WorldConfig> worker;
        try {
            worker = WorldConfig.fromEnvironment(System.getenv());
        } catch (RendezvousException e) {
            err.println("moe: error: " + e.getMessage());
            err.flush();
            return 2;
        }
        if (expertParallel && !backendOption.backend.equals("cuda")) {
            err.println("moe: error: --expert-parallel needs --backend cuda: the experts' stage runs on device-resident models");
            err.flush();
            return 2;
        }
        if (worker.isPresent()) {
            return asWorker(worker.get(), err, stdout);
        }
        if (gpus != null) {
            return launch(err, stdout);
        }
        return train(err, stdout);
    }

    /** Starts one worker per GPU, each this same command line with its rank in the environment, and waits for them. */
    private int launch(PrintWriter err, PrintWriter stdout) {
        if (gpus < 1) {
            err.println("moe: error: --gpus must be at least 1, not " + gpus);
            err.flush();
            return 2;
        }
        if (gpus > 1 && !backendOption.onGpu()) {
            err.println("moe: error: --gpus " + gpus + " needs --backend cuda (or cuda-hybrid): the ranks exchange gradients through NCCL, the only transport"
                    + " (--backend cpu runs a world of one, --gpus 1)");
            err.flush();
            return 2;
        }
        if (expertParallel && SourceFile.read(file) instanceof SourceFile.ReadResult.Ok ok) {
            // refuse a model the ranks cannot run expert-parallel here, once, rather than in every rank; a file with errors is
            // left to the ranks, which print its diagnostics
            Optional<CompiledFile> compiled = dev.moe.compiler.MoeCompiler.compile(ok.source()).output();
            try {
                if (compiled.isPresent()) {
                    checkExpertParallel(compiled.get(), ok.source());
                }
            } catch (Recipes.UserError e) {
                err.println("moe: error: " + e.getMessage());
                err.flush();
                return 1;
            }
        }
        if (backendOption.onGpu()) {
            try {
                int devices = dev.moe.cuda.Driver.get().deviceCount();
                if (gpus > devices) {
                    err.println("moe: error: --gpus " + gpus + ", but this machine has " + devices + " GPU(s)");
                    err.flush();
                    return 2;
                }
            } catch (CudaException e) {
                err.println("moe: error: --gpus " + gpus + " --backend cuda: " + e.getMessage());
                err.flush();
                return 1;
            }
        }
        Duration join;
        try {
            String v = System.getenv().getOrDefault("MOE_JOIN_TIMEOUT_S", "600").strip();
            join = Duration.ofSeconds(Long.parseLong(v));
            if (join.isNegative() || join.isZero()) {
                throw new NumberFormatException();
            }
        } catch (NumberFormatException e) {
            err.println("moe: error: MOE_JOIN_TIMEOUT_S must be a whole number of seconds, at least 1");
            err.flush();
            return 2;
        }
        List<String> args = spec.commandLine().getParseResult().originalArgs();
        int status = Launcher.run(Launcher.javaCommand(MoeCli.class.getName(), args), gpus, line -> {
            stdout.println(line);
            stdout.flush();
        }, join);
        return status;
    }

    /**
     * One rank of a data-parallel run: on the GPU of its local rank, joins the NCCL world (the id through
     * the rendezvous, then the communicator, both with timeouts), tells the launcher, and trains.
     */
    private int asWorker(WorldConfig w, PrintWriter err, PrintWriter stdout) throws IOException {
        worker = true;
        if (gpus != null && gpus != w.worldSize()) {
            err.println("moe: error: rank " + w.rank() + ": --gpus " + gpus + " but MOE_WORLD_SIZE is " + w.worldSize());
            err.flush();
            return 2;
        }
        String local = System.getenv("MOE_LOCAL_WORLD_SIZE");
        if (local != null && local.strip().matches("[1-9][0-9]*") && !spec.commandLine().getParseResult().hasMatchedOption("--threads")) {
            threads = Math.max(1, threads / Integer.parseInt(local.strip())); // the ranks of a machine share its cores
        }
        if (!backendOption.onGpu()) {
            if (w.worldSize() > 1) {
                err.println("moe: error: rank " + w.rank() + ": a world of " + w.worldSize() + " ranks needs --backend cuda (NCCL is the only transport)");
                err.flush();
                return 2;
            }
            Launcher.joined(w.rank());
            return train(err, stdout);
        }
        CudaContext ctx;
        NcclCollective nccl;
        try {
            ctx = new CudaContext(w.localRank());
        } catch (CudaException e) {
            err.println("moe: error: rank " + w.rank() + ": GPU " + w.localRank() + ": " + e.getMessage());
            err.flush();
            return 1;
        }
        try {
            nccl = NcclCollective.join(ctx, w);
        } catch (CudaException | RendezvousException e) {
            err.println("moe: error: " + (e.getMessage().startsWith("rank ") ? "" : "rank " + w.rank() + ": ") + e.getMessage());
            err.flush();
            ctx.close();
            return 1;
        }
        Launcher.joined(w.rank());
        backendOption.shared = ctx;
        world = nccl;
        int status = 1;
        try {
            status = train(err, stdout);
            return status;
        } catch (CudaException e) {
            // A collective that failed or timed out: the communicator is aborted; the launcher stops the other ranks.
            err.println("moe: error: " + e.getMessage());
            err.flush();
            return 1;
        } finally {
            try {
                if (status == 0) {
                    nccl.close();
                } else {
                    nccl.abort(); // the peers may be inside a collective: do not wait for them
                }
                ctx.close();
            } catch (CudaException e) {
                err.println("moe: warning: rank " + w.rank() + ": " + e.getMessage());
                err.flush();
            }
        }
    }

    private int train(PrintWriter err, PrintWriter stdout) throws IOException {
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
            if (stageSteps != null && stageSteps < 1) {
                throw new Recipes.UserError("--stage-steps must be at least 1");
            }
            CompiledFile compiled = Recipes.compile(source, err);
            checkExpertParallel(compiled, source);
            Path base = out != null ? out : Path.of("runs", file.getFileName().toString().replaceAll("\\.moe$", ""));
            List<Training> all = compiled.trainings();
            if (all.isEmpty()) {
                Recipes.Loaded loaded = Recipes.select(compiled, source, model, () -> backendOption.create(threads));
                trainOne(source, loaded.model(), null, loaded.instance(), base, Map.of(), Map.of(), compiled, stdout);
                return 0;
            }
            // A file with several train blocks is a pipeline: each block runs in order, into a directory of its own.
            Map<String, Path> runs = new LinkedHashMap<>();
            Map<String, Long> planned = new LinkedHashMap<>();
            for (Training t : all) {
                if (runs.containsKey(t.model())) {
                    throw new Recipes.UserError(source.name() + " has two train blocks of `" + t.model() + "`; each model is trained by one block");
                }
                runs.put(t.model(), all.size() > 1 ? base.resolve(t.model()) : base);
                planned.put(t.model(), plannedSteps(t));
            }
            List<Training> chosen = all;
            if (model != null) {
                chosen = all.stream().filter(t -> t.model().equals(model)).toList();
                if (chosen.isEmpty()) { // a model without a train block trains with the defaults
                    Recipes.Loaded loaded = Recipes.select(compiled, source, model, () -> backendOption.create(threads));
                    trainOne(source, loaded.model(), null, loaded.instance(), base, Map.of(), Map.of(), compiled, stdout);
                    return 0;
                }
            }
            List<Job> jobs = new ArrayList<>();
            for (Training t : chosen) {
                Model m = Curricula.find(compiled.models(), t.model())
                        .orElseThrow(() -> new Recipes.UserError("`" + t.model() + "` is imported; train it from the file that declares it"));
                jobs.add(new Job(m, t, runs.get(t.model())));
            }
            // Instantiate every model and plan every block (reading and checking checkpoint files) before any training.
            List<Planned> ready = new ArrayList<>();
            for (Job j : jobs) {
                TrainableModel instance = Recipes.instantiate(j.model(), source.name(), () -> backendOption.create(threads),
                        j.training().padDocuments());
                ready.add(new Planned(j, instance));
            }
            List<List<Trainer.Stage>> stagesOf = new ArrayList<>();
            for (Planned p : ready) {
                stagesOf.add(p.job().training().stages().isEmpty() ? null
                        : Curricula.stages(p.job().training(), p.job().model(), context(p, runs, planned, compiled), stageSteps));
            }
            for (int i = 0; i < ready.size(); i++) {
                Planned p = ready.get(i);
                trainOne(source, p.job().model(), p.job().training(), p.instance(), p.job().runDir(), runs, planned, compiled, stdout, stagesOf.get(i));
            }
            return 0;
        } catch (Interrupted stopped) {
            return 0; // the block that stopped has said so; later blocks wait for --resume
        } catch (Recipes.UserError | IllegalArgumentException | UncheckedIOException | IOException | ArithmeticException e) {
            // A bad recipe or data, an unreadable checkpoint, a full disk, a diverged run: the user's to
            // fix, reported in one line, not as a crash.
            err.println("moe: error: " + e.getMessage());
            err.flush();
            return 1;
        }
    }

    private record Job(Model model, Training training, Path runDir) {}

    private record Planned(Job job, TrainableModel instance) {}

    private long plannedSteps(Training t) {
        if (t.stages().isEmpty()) {
            return steps != null ? steps : stageSteps != null ? stageSteps : t.steps();
        }
        long total = 0;
        for (Training.Stage s : t.stages()) {
            total += stageSteps != null ? stageSteps : s.steps();
        }
        return steps != null ? Math.min(steps, total) : total;
    }

    private int seqOf(TrainableModel m) throws Recipes.UserError {
        int seqLen = seq != null ? seq : m.context();
        if (seqLen < 1 || seqLen > m.context()) {
            throw new Recipes.UserError("--seq must be between 1 and the model's context (" + m.context() + ")");
        }
        return seqLen;
    }

    private Curricula.Context context(Planned p, Map<String, Path> runs, Map<String, Long> planned, CompiledFile compiled) throws Recipes.UserError {
        Training t = p.job().training();
        Map<String, Model> models = new LinkedHashMap<>();
        compiled.models().forEach(m -> models.put(m.name(), m));
        PrintStream log = new PrintStream(new java.io.FileOutputStream(java.io.FileDescriptor.err), true, java.nio.charset.StandardCharsets.UTF_8);
        return new Curricula.Context(file.toAbsolutePath().getParent(), runs, planned, models, seed != null ? seed : t.seed(), t.batch(),
                seqOf(p.instance()), log);
    }

    private void trainOne(SourceFile source, Model declared, Training t, TrainableModel m, Path runDir, Map<String, Path> runs,
            Map<String, Long> planned, CompiledFile compiled, PrintWriter stdout) throws IOException, Recipes.UserError {
        trainOne(source, declared, t, m, runDir, runs, planned, compiled, stdout, null);
    }

    private void trainOne(SourceFile source, Model declared, Training t, TrainableModel m, Path runDir, Map<String, Path> runs,
            Map<String, Long> planned, CompiledFile compiled, PrintWriter stdout, List<Trainer.Stage> stages) throws IOException, Recipes.UserError {
        long totalSteps = t != null ? plannedSteps(t) : steps != null ? steps : stageSteps != null ? stageSteps : 200;
        long runSeed = seed != null ? seed : t != null ? t.seed() : 0;
        int batch = t != null ? t.batch() : 8;
        int micro = t != null ? t.globalBatch() / t.batch() : 1;
        int seqLen = seqOf(m);
        Training.Optimizer opt = t != null ? t.optimizer() : new Training.Optimizer("adamw", 3e-4, 0.9, 0.95, 1e-8, 0.0);
        Training.Schedule sched = t != null ? t.schedule() : new Training.Schedule("constant", 0, 0);
        Map<String, String> recipe = new LinkedHashMap<>();
        recipe.put("recipe.file", file.toAbsolutePath().normalize().toString());
        recipe.put("recipe.source", source.text());
        Trainer.Options options = new Trainer.Options(totalSteps, batch, micro, seqLen, opt.lr(), opt.beta1(), opt.beta2(), opt.eps(),
                opt.weightDecay(), sched.kind(), sched.warmup(), sched.minLr(), t != null ? t.gradClip() : 1.0, runSeed, runDir, saveEvery,
                resume, stopAt, recipe);
        PrintStream log = new PrintStream(new java.io.FileOutputStream(java.io.FileDescriptor.err), true, java.nio.charset.StandardCharsets.UTF_8);
        Trainer trainer;
        String what;
        if (stages == null) {
            DataStream stream = dataStream(t, batch, seqLen, runSeed);
            trainer = new Trainer(m, stream, options, log);
            what = describe(stream);
        } else {
            if (data != null && !data.isEmpty()) {
                throw new Recipes.UserError("--data does not apply to a recipe with stages: each stage names its data");
            }
            trainer = new Trainer(m, stages, options, log);
            what = stages.size() + (stages.size() == 1 ? " stage (" : " stages (") + String.join(", ", stages.stream().map(Trainer.Stage::name).toList()) + ")";
        }
        Throughput throughput = throughput(declared, m);
        trainer.throughput(throughput);
        boolean lead = world.rank() == 0;
        if (lead) {
            stdout.printf(Locale.ROOT, "training %s (%s params) on %s: %d steps of %d x %d x %d tokens, %d threads%s -> %s%n", m.name(),
                    Units.count(declared.totalParams()), what, totalSteps, micro, batch, seqLen, threads,
                    world.size() > 1 ? ", " + world.size() + " ranks" : "", runDir);
            stdout.printf(Locale.ROOT, "model FLOPs: %s per token trained (3 x the forward's %s that moe info counts at context %d)%s%n",
                    Units.flops(throughput.trainFlopsPerToken()), Units.flops(throughput.trainFlopsPerToken() / 3), m.context(),
                    throughput.peakFlops() > 0 ? String.format(Locale.ROOT, "; MFU against %.0f TFLOP/s (%s)", throughput.peakFlops() / 1e12,
                            throughput.peakSource()) : "");
            stdout.flush();
        }
        if (lead && worker && t != null && (t.expertsPerRank() > 0 || t.parallel().isPresent()) && !expertParallel) {
            stdout.printf(Locale.ROOT, "note: %s declares where its experts run, but this run is data-parallel (every rank runs every expert);"
                    + " --expert-parallel uses the placement%n", t.model());
        }
        if (lead && world.size() > 1) {
            batchLevelBalancing(declared).ifPresent(scope -> stdout.printf(Locale.ROOT,
                    "warning: `balance aux` of scope %s is computed on each rank's share of the batch (%d ranks), so its loss differs"
                            + " slightly from a one-GPU run's; scope: sequence is exact%n", scope, world.size()));
        }
        if (expertParallel) {
            useExpertParallel(declared, t, m, lead, stdout);
        }
        Trainer.Result r = trainer.world(world).run();
        if (lead) {
            Plots.writeOrWarn(runDir, m, spec.commandLine().getErr());
        }
        if (lead && !r.losses().isEmpty()) {
            stdout.printf(Locale.ROOT, "loss %.4f -> %.4f over %d steps; checkpoint %s%n", r.firstLoss(), r.lastLoss(), r.losses().size(),
                    r.checkpoint());
        }
        stdout.flush();
        if (r.interrupted()) {
            throw new Interrupted();
        }
    }

    /**
     * Model FLOPs per trained token ({@code moe info}'s forward count, 3x for the backward) and the peak the MFU is taken
     * against: {@code MOE_PEAK_TFLOPS} (one device's, or one worker's), else a device-resident model's GPU's dense bf16 peak
     * when {@link PeakFlops} knows it; without either only model FLOP/s are shown.
     */
    private static Throughput throughput(Model declared, TrainableModel m) throws Recipes.UserError {
        double forward = declared.flopsPerToken().expected();
        String env = System.getenv("MOE_PEAK_TFLOPS");
        if (env != null && !env.isBlank()) {
            double tf;
            try {
                tf = Double.parseDouble(env.trim());
            } catch (NumberFormatException e) {
                tf = Double.NaN;
            }
            if (!(tf > 0) || Double.isInfinite(tf)) {
                throw new Recipes.UserError("MOE_PEAK_TFLOPS must be a positive number of TFLOP/s (e.g. 989), not `" + env + "`");
            }
            return Throughput.ofForward(forward, tf * 1e12, "MOE_PEAK_TFLOPS");
        }
        if (m instanceof dev.moe.cuda.model.DeviceModel device) {
            java.util.OptionalDouble peak = PeakFlops.denseBf16(device.deviceName());
            if (peak.isPresent()) {
                return Throughput.ofForward(forward, peak.getAsDouble(), device.deviceName() + ", dense bf16");
            }
        }
        return Throughput.ofForward(forward, Double.NaN, "");
    }

    /**
     * With --expert-parallel: refuses, before any GPU work, a model this run would train whose MoE layers cannot run
     * expert-parallel (not device-resident, no MoE layer of FFN experts, or one the stage does not take).
     */
    private void checkExpertParallel(CompiledFile compiled, SourceFile source) throws Recipes.UserError {
        if (!expertParallel) {
            return;
        }
        List<Training> chosen = compiled.trainings().stream().filter(t -> model == null || t.model().equals(model)).toList();
        if (chosen.isEmpty()) {
            requireExpertParallel(Recipes.choose(compiled, source, model).model(), false);
        }
        for (Training t : chosen) {
            Optional<Model> m = Curricula.find(compiled.models(), t.model());
            if (m.isPresent()) {
                requireExpertParallel(m.get(), t.padDocuments());
                // the recipe's placement against this run's ranks, before any GPU work: a worker's world (ranks started by hand on
                // several hosts need not pass --gpus), else the launcher's --gpus
                placements(m.get(), t, ffnExpertsByLayer(m.get()), world != Collective.SINGLE ? world.size() : gpus != null ? gpus : 1);
            }
        }
    }

    /** The routed FFN experts of each MoE layer (what the GPU layer runs and places), by the model's layer index. */
    static java.util.SortedMap<Integer, Integer> ffnExpertsByLayer(Model m) {
        java.util.SortedMap<Integer, Integer> out = new java.util.TreeMap<>();
        for (dev.moe.compiler.ir.Layer l : m.layers()) {
            l.block().ffnMoe().ifPresent(moe -> out.put(l.index(), moe.groups().stream()
                    .filter(g -> g.role() == dev.moe.compiler.ir.ExpertGroup.Role.ROUTED && g.expert() instanceof dev.moe.compiler.ir.Expert.FeedForward)
                    .mapToInt(dev.moe.compiler.ir.ExpertGroup::count).sum()));
        }
        return out;
    }

    private static void requireExpertParallel(Model m, boolean masks) throws Recipes.UserError {
        Optional<String> why = CudaModelGenerator.expertParallelRefusal(m);
        if (why.isEmpty() && masks) {
            why = Optional.of(m.name() + " trains on padded documents (`documents pad`), which device-resident models do not take yet");
        }
        if (why.isPresent()) {
            throw new Recipes.UserError("--expert-parallel: " + why.get());
        }
    }

    /**
     * Where each MoE layer's experts run under --expert-parallel, by the model's layer index: each layer's experts in contiguous
     * ranges over the ranks ({@link ExpertPlacement#contiguous}).
     */
    static java.util.SortedMap<Integer, ExpertPlacement> placements(java.util.SortedMap<Integer, Integer> expertsByLayer, int ranks) {
        java.util.SortedMap<Integer, ExpertPlacement> out = new java.util.TreeMap<>();
        expertsByLayer.forEach((layer, experts) -> out.put(layer, ExpertPlacement.contiguous(experts, ranks)));
        return out;
    }

    /**
     * The one place a placement is chosen under --expert-parallel: the recipe's ({@code parallel { ... }} or
     * {@code experts_per_rank}, checked against the run's ranks by {@link ExpertPlacements#forWorld}), else contiguous ranges.
     * Any placement of the FFN experts the GPU layer runs (zero and copy experts need no place): one whose ranks do not hold
     * contiguous ranges in rank order has its experts renumbered on the device ({@link dev.moe.cuda.dist.ExpertOrder}).
     */
    static java.util.SortedMap<Integer, ExpertPlacement> placements(Model declared, Training t, java.util.SortedMap<Integer, Integer> expertsByLayer,
            int ranks) throws Recipes.UserError {
        java.util.Map<Integer, ExpertPlacement> recipe = ExpertPlacements.forWorld(declared, t, ranks);
        if (t == null || t.parallel().isEmpty()) {
            return placements(expertsByLayer, ranks);
        }
        java.util.SortedMap<Integer, ExpertPlacement> out = new java.util.TreeMap<>();
        for (var e : expertsByLayer.entrySet()) {
            ExpertPlacement p = recipe.get(e.getKey());
            if (p == null) {
                throw new Recipes.UserError("--expert-parallel: the recipe's `parallel` block does not place layer " + e.getKey() + "'s experts");
            }
            if (p.experts() != e.getValue()) {
                throw new Recipes.UserError("--expert-parallel: layer " + e.getKey() + "'s placement covers " + p.experts() + " routed experts, but"
                        + " its GPU layer runs " + e.getValue() + " FFN experts (zero and copy experts are not placed on the device yet)");
            }
            out.put(e.getKey(), p);
        }
        return out;
    }

    /** Turns the model's MoE layers expert-parallel over this run's ranks (NCCL, or a world of one on this GPU). */
    private void useExpertParallel(Model declared, Training t, TrainableModel m, boolean lead, PrintWriter stdout) throws Recipes.UserError {
        if (!(m instanceof DeviceModel device)) {
            throw new Recipes.UserError("--expert-parallel: " + m.name() + " does not run device-resident on the GPU");
        }
        DeviceExchange exchange = world instanceof NcclCollective nccl ? nccl.deviceExchange()
                : new SharedDeviceGroup(1, 60_000).rank(0, device.cudaContext());
        java.util.SortedMap<Integer, ExpertPlacement> byLayer = placements(declared, t, device.expertsByLayer(), exchange.size());
        long every = device.trainingParameterBytes();
        // each rank keeps its own experts only where the GPU can give back part of the arena (virtual memory management)
        boolean localOnly = device.canKeepLocalExpertsOnly();
        device.useExpertParallel(exchange, byLayer, localOnly);
        if (lead) {
            stdout.printf(Locale.ROOT, "expert-parallel over %d rank(s): %s%n", exchange.size(), describePlacements(byLayer));
            stdout.printf(Locale.ROOT, localOnly ? "each rank holds its own experts only: %.1f of the model's %.1f MiB of weights, gradients and AdamW"
                    + " moments on this GPU%n" : "every rank holds every expert (%s cannot give back part of an allocation): %.1f MiB of weights,"
                    + " gradients and AdamW moments%n", localOnly ? new Object[] {device.trainingParameterBytes() / 1048576.0, every / 1048576.0}
                    : new Object[] {device.deviceName(), every / 1048576.0});
            stdout.flush();
        }
    }

    /** One line: each distinct placement and the layers that have it. */
    static String describePlacements(java.util.SortedMap<Integer, ExpertPlacement> byLayer) {
        Map<String, List<Integer>> layersOf = new LinkedHashMap<>();
        byLayer.forEach((layer, p) -> layersOf.computeIfAbsent(p.toString(), k -> new ArrayList<>()).add(layer));
        List<String> parts = new ArrayList<>();
        layersOf.forEach((p, layers) -> parts.add((layers.size() == 1 ? "layer " : "layers ") + String.join(",", layers.stream().map(String::valueOf).toList())
                + " (" + p + ")"));
        return String.join("; ", parts);
    }

    /** The scope of a balance loss whose statistics span the batch (not one sequence): data parallelism takes them per rank. */
    private static Optional<String> batchLevelBalancing(Model m) {
        for (dev.moe.compiler.ir.Layer l : m.layers()) {
            dev.moe.compiler.ir.Block.Part ffn = switch (l.block()) {
                case dev.moe.compiler.ir.Block.PreNorm p -> p.ffn();
                case dev.moe.compiler.ir.Block.Parallel p -> p.ffn();
                case dev.moe.compiler.ir.Block.Residual r -> new dev.moe.compiler.ir.Block.Part.MoePart(r.moe());
                case dev.moe.compiler.ir.Block.Shortcut sc -> new dev.moe.compiler.ir.Block.Part.MoePart(sc.moe());
            };
            if (ffn instanceof dev.moe.compiler.ir.Block.Part.MoePart part) {
                for (dev.moe.compiler.ir.Loss loss : part.moe().losses()) {
                    if (loss instanceof dev.moe.compiler.ir.Loss.Aux a && a.coef() > 0 && a.scope() != dev.moe.compiler.ir.Loss.Scope.SEQUENCE) {
                        return Optional.of(a.scope().name().toLowerCase(Locale.ROOT));
                    }
                }
            }
        }
        return Optional.empty();
    }

    /** Stops a pipeline after a block was stopped (Ctrl-C or --stop-at): later blocks need it finished. */
    private static final class Interrupted extends RuntimeException {
        Interrupted() {
            super(null, null, false, false);
        }
    }

    private DataStream dataStream(Training t, int batch, int seqLen, long runSeed) {
        if (data != null && !data.isEmpty()) {
            for (Path p : data) {
                if (!Files.exists(p)) {
                    throw new IllegalArgumentException("--data " + p + ": no such file or directory");
                }
            }
            return DataStream.builder().domain("file", dev.moe.runtime.data.TextCorpus.load("file", data)).mixture(Map.of("file", 1.0)).batch(batch)
                    .context(seqLen).seed(runSeed).padDocuments(t != null && t.padDocuments()).build();
        }
        DataStream.Builder b = DataStream.builder().batch(batch).context(seqLen).seed(runSeed);
        Path base = file.toAbsolutePath().getParent();
        b.baseDir(base);
        if (t != null) {
            t.domains().forEach((name, path) -> b.file(name, Path.of(path)));
            b.mixture(new LinkedHashMap<>(t.data().mixture())).padDocuments(t.padDocuments());
        }
        return b.build();
    }

    private static String describe(DataStream s) {
        return s.mixture().size() == 1 ? s.mixture().keySet().iterator().next() : s.mixture().toString();
    }
}
