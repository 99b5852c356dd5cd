package dev.moe.cli;

import dev.moe.compiler.Patterns;
import dev.moe.compiler.ir.Model;
import dev.moe.compiler.ir.ModelConfig;
import dev.moe.compiler.ir.Param;
import dev.moe.compiler.ir.Training;
import dev.moe.runtime.TrainableModel;
import dev.moe.runtime.data.DataStream;
import dev.moe.runtime.io.SafeTensors;
import dev.moe.runtime.io.SafeTensorsFile;
import dev.moe.runtime.train.Checkpoint;
import dev.moe.runtime.train.Trainer;
import dev.moe.runtime.upcycle.Upcycle;
import dev.moe.runtime.upcycle.Weights;
import java.io.IOException;
import java.io.PrintStream;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.Optional;

/**
 * From a checked {@code train} block to the trainer's stages: data, trainable patterns, learning
 * rate, schedule, and what each stage starts from (fresh weights, a checkpoint, an upcycling step).
 * Checkpoint files that stages read are opened and checked against their declared models here,
 * before any training starts.
 */
final class Curricula {
    /**
     * Where things are: {@code base} resolves the recipe's relative paths (its directory); {@code runs}
     * gives the run directory of each train block of the file (what {@code from: Model} reads).
     */
    record Context(Path base, Map<String, Path> runs, Map<String, Long> plannedSteps, Map<String, Model> models, long seed, int batch, int seq,
            PrintStream log) {}

    private Curricula() {}

    /** The stages of {@code t}, with every stage's steps replaced by {@code stageSteps} when it is not null. */
    static List<Trainer.Stage> stages(Training t, Model target, Context c, Long stageSteps) throws Recipes.UserError {
        List<Trainer.Stage> out = new ArrayList<>();
        for (Training.Stage s : t.stages()) {
            Training.Data data = s.data().orElse(t.data());
            Training.Schedule sched = s.schedule().orElse(t.schedule());
            double lr = s.lr().orElse(t.optimizer().lr());
            long steps = stageSteps != null ? stageSteps : s.steps();
            out.add(new Trainer.Stage(s.name(), steps, stream(t, data, c), Patterns.anyOf(s.trainable()), lr, sched.kind(),
                    Math.min(sched.warmup(), Math.max(0, steps - 1)), sched.minLr(), start(s.init(), target, c)));
        }
        return out;
    }

    static DataStream stream(Training t, Training.Data data, Context c) {
        DataStream.Builder b = DataStream.builder().batch(c.batch()).context(c.seq()).seed(c.seed()).baseDir(c.base()).padDocuments(t.padDocuments());
        Map<String, Double> mixture = new LinkedHashMap<>(data.mixture());
        t.domains().forEach((name, path) -> {
            if (mixture.containsKey(name)) {
                b.file(name, Path.of(path));
            }
        });
        return b.mixture(mixture).build();
    }

    /** What a stage starts from. Checkpoint files are read now (a bad one fails before training); runs of earlier blocks when the stage begins. */
    private static Trainer.Start start(Training.Init init, Model target, Context c) throws Recipes.UserError {
        return switch (init) {
            case Training.Init.Scratch s -> Trainer.Start.SCRATCH;
            case Training.Init.Previous p -> Trainer.Start.PREVIOUS;
            case Training.Init.Checkpoint cp -> {
                // the checkpoint may come from another model (a seed model's run) as long as it has every tensor of this one
                Source s = cp.from() instanceof Training.Source.Run r ? source(r, r.model(), c)
                        : new Source(weights(c.base().resolve(((Training.Source.File) cp.from()).path()), null, c), null, target.name(), 0);
                yield (model, seed) -> {
                    Weights w = s.read(c);
                    for (var p : model.parameters()) {
                        if (!w.has(p.name(), p.shape())) {
                            throw new IOException(w.origin() + " has no tensor `" + p.name() + "` of shape " + java.util.Arrays.toString(p.shape())
                                    + ": it was saved from a model of another shape");
                        }
                        p.load(w.get(p.name()).clone());
                    }
                };
            }
            case Training.Init.Copy cp -> upcycle(cp.from(), cp.model(), c, "copy", (w, m, seed) -> Upcycle.copy(w, m.parameters(), cp.noise(), seed));
            case Training.Init.Split sp -> upcycle(sp.from(), sp.model(), c, "split", (w, m, seed) -> Upcycle.split(w, m.parameters(), sp.parts()));
            case Training.Init.Extend ex -> upcycle(ex.from(), ex.model(), c, "extend", (w, m, seed) -> Upcycle.extend(w, m.parameters()));
            case Training.Init.Diversify dv -> upcycle(dv.from(), dv.model(), c, "diversify",
                    (w, m, seed) -> Upcycle.diversify(w, m.parameters(), dv.expert(), dv.mask(), seed));
            case Training.Init.ScaleUp su -> upcycle(su.from(), su.model(), c, "scale_up", (w, m, seed) -> {
                checkGrowth(w, target);
                return Upcycle.scaleUp(w, m.parameters(), w.shape("embed.weight")[1], target.config().dim());
            });
            case Training.Init.Merge mg -> {
                if (mg.attention().equals("experts")) {
                    throw new Recipes.UserError("merge(attention: experts): attention experts are not generated yet; use `attention: average`");
                }
                List<Source> sources = new ArrayList<>();
                for (Training.Source s : mg.from()) {
                    sources.add(source(s, mg.model(), c));
                }
                yield (model, seed) -> {
                    model.initialize(seed);
                    List<Weights> ws = new ArrayList<>();
                    for (Source s : sources) {
                        ws.add(s.read(c));
                    }
                    report(c, "merge", ws, Upcycle.merge(ws, model.parameters()));
                };
            }
        };
    }

    @FunctionalInterface
    private interface Transform {
        List<String> apply(Weights source, TrainableModel model, long seed);
    }

    private static Trainer.Start upcycle(Training.Source from, String model, Context c, String what, Transform t) throws Recipes.UserError {
        Source s = source(from, model, c);
        return (m, seed) -> {
            m.initialize(seed);
            Weights w = s.read(c);
            try {
                report(c, what, List.of(w), t.apply(w, m, seed));
            } catch (IllegalArgumentException e) {
                throw new IOException(what + " from " + w.origin() + ": " + e.getMessage(), e);
            }
        };
    }

    private static void report(Context c, String what, List<Weights> from, List<String> left) {
        c.log().printf(Locale.ROOT, "%s from %s; %d tensors keep their declared initialisation%s%n", what,
                String.join(", ", from.stream().map(Weights::origin).toList()), left.size(),
                left.isEmpty() ? "" : " (" + String.join(", ", left.stream().limit(4).toList()) + (left.size() > 4 ? ", ..." : "") + ")");
    }

    /** A checkpoint an upcycling step reads: a file (already read and checked) or an earlier block's run (read when needed). */
    private record Source(Weights file, Path run, String model, long steps) {
        Weights read(Context c) throws IOException {
            if (file != null) {
                return file;
            }
            Path last = run.resolve("last.safetensors");
            if (!Files.exists(last)) {
                throw new IOException("no checkpoint of `" + model + "` at " + last + ": its train block has not run");
            }
            Map<String, String> meta = Checkpoint.metadata(last);
            if (!Long.toString(steps).equals(meta.get("step"))) {
                throw new IOException(last + " is at step " + meta.get("step") + " of " + steps + ": the training of `" + model
                        + "` has not finished (run it to the end, e.g. with --resume)");
            }
            try {
                return weights(last, model, c);
            } catch (Recipes.UserError e) {
                throw new IOException(e.getMessage(), e);
            }
        }
    }

    private static Source source(Training.Source s, String model, Context c) throws Recipes.UserError {
        return switch (s) {
            case Training.Source.File f -> new Source(weights(c.base().resolve(f.path()), model, c), null, model, 0);
            case Training.Source.Run r -> {
                Path dir = c.runs().get(r.model());
                if (dir == null) {
                    throw new Recipes.UserError("no train block of `" + r.model() + "` in this file");
                }
                yield new Source(null, dir, r.model(), c.plannedSteps().get(r.model()));
            }
        };
    }

    /**
     * Reads a checkpoint that should hold {@code model}: a moe checkpoint must say so in its metadata,
     * and when the model is declared in this file every one of its tensors must be there with its
     * declared shape.
     */
    static Weights weights(Path path, String model, Context c) throws Recipes.UserError {
        if (!Files.isRegularFile(path)) {
            throw new Recipes.UserError(path + ": no such checkpoint (paths in a recipe are relative to its directory)");
        }
        Weights w;
        try (SafeTensorsFile f = SafeTensors.open(path)) {
            String saved = f.metadata().get("model");
            if (model != null && saved != null && !saved.equals(model)) {
                throw new Recipes.UserError(path + " holds model `" + saved + "`, but the recipe reads it as `" + model + "`");
            }
        } catch (IOException e) {
            throw new Recipes.UserError(path + ": " + e.getMessage());
        }
        try {
            w = Weights.read(path);
        } catch (IOException e) {
            throw new Recipes.UserError(path + ": " + e.getMessage());
        }
        Model declared = model == null ? null : c.models().get(model);
        if (declared != null) {
            for (Param p : declared.params()) {
                int[] shape = p.shape().stream().mapToInt(Long::intValue).toArray();
                if (!w.has(p.name())) {
                    throw new Recipes.UserError(path + " does not match model `" + model + "`: it has no tensor `" + p.name() + "`");
                }
                if (!w.has(p.name(), shape)) {
                    throw new Recipes.UserError(path + " does not match model `" + model + "`: `" + p.name() + "` has shape "
                            + java.util.Arrays.toString(w.shape(p.name())) + ", the model declares " + p.shape());
                }
            }
        }
        return w;
    }

    /** Scale-up keeps head_dim and the heads per key/value head, and widens only models with RMS norms. */
    private static void checkGrowth(Weights small, Model target) {
        ModelConfig t = target.config();
        int hd = t.headDim();
        int[] q = small.shape("layers.0.attn.q");
        int[] k = small.shape("layers.0.attn.k");
        if (q == null || k == null || q[0] % hd != 0 || k[0] % hd != 0) {
            throw new IllegalArgumentException("the source's attention does not have head_dim " + hd + "; scale-up keeps head_dim");
        }
        int heads = q[0] / hd;
        int kv = k[0] / hd;
        if (heads / kv != t.heads() / t.kvHeads()) {
            throw new IllegalArgumentException("the source has " + heads / kv + " heads per key/value head, `" + target.name() + "` "
                    + t.heads() / t.kvHeads() + "; scale-up keeps that ratio");
        }
        if (small.shape("embed.weight")[1] != t.dim() && t.norm().kind() != ModelConfig.NormKind.RMS) {
            throw new IllegalArgumentException("widening preserves the function under RMS norms only; `" + target.name() + "` uses layer norm");
        }
    }

    static Optional<Model> find(List<Model> models, String name) {
        return models.stream().filter(m -> m.name().equals(name)).findFirst();
    }
}
