package dev.moe.compiler;

import dev.moe.compiler.Program.Declared;
import dev.moe.compiler.Read.Args;
import dev.moe.compiler.Read.SettingMap;
import dev.moe.compiler.ir.Block;
import dev.moe.compiler.ir.ExpertParallel;
import dev.moe.compiler.ir.Expert;
import dev.moe.compiler.ir.ExpertGroup;
import dev.moe.compiler.ir.Ffn;
import dev.moe.compiler.ir.Layer;
import dev.moe.compiler.ir.Loss;
import dev.moe.compiler.ir.Model;
import dev.moe.compiler.ir.Moe;
import dev.moe.compiler.ir.Param;
import dev.moe.compiler.ir.Training;
import dev.moe.dsl.SourceFile;
import dev.moe.dsl.Span;
import dev.moe.dsl.ast.DomainDef;
import dev.moe.dsl.ast.ParallelBlock;
import dev.moe.dsl.ast.Setting;
import dev.moe.dsl.ast.StageBlock;
import dev.moe.dsl.ast.TrainDecl;
import dev.moe.dsl.ast.TrainMember;
import dev.moe.dsl.diag.Code;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Optional;
import java.util.OptionalDouble;
import java.util.OptionalInt;
import java.util.Set;
import java.util.function.Function;
import java.util.regex.Pattern;

/** Checks a {@code train} block: optimiser, schedule, batch, data, stages and upcycling sources. */
final class TrainChecker {
    static final Set<String> TRAIN_KEYS = Set.of("optimizer", "schedule", "batch", "global_batch", "steps", "seed", "grad_clip", "data",
            "documents", "experts_per_rank");
    static final Set<String> STAGE_KEYS = Set.of("steps", "data", "trainable", "lr", "schedule", "init");
    /** Domains of the embedded synthetic corpus (generated, no files needed). */
    static final Set<String> SYNTHETIC_DOMAINS = Set.of("synthetic", "arithmetic", "brackets", "copy", "lookup", "markov", "reverse", "sort");

    private final Program program;
    private final Evaluator evaluator;
    private final Read read;
    private final Reporter reporter;
    private final Function<String, Optional<Model>> models;
    /** Models whose train blocks come before the one being checked: what {@code from: Name} may read. */
    private Set<String> trainedBefore = Set.of();

    /** Whether `parallel` blocks are checked (and their placement files read): not when rebuilding a checkpoint's models. */
    private final boolean placements;

    TrainChecker(Program program, Evaluator evaluator, Read read, Function<String, Optional<Model>> models, boolean placements) {
        this.placements = placements;
        this.program = program;
        this.evaluator = evaluator;
        this.read = read;
        this.reporter = read.reporter();
        this.models = models;
    }

    Optional<Training> check(Declared<TrainDecl> declared) {
        TrainDecl train = declared.node();
        SourceFile src = declared.source();
        Set<String> earlier = new java.util.HashSet<>();
        for (Declared<TrainDecl> t : program.trainings) {
            if (t == declared) {
                break;
            }
            earlier.add(t.node().model().text());
        }
        trainedBefore = earlier;
        int before = reporter.errorCount();
        String modelName = train.model().text();
        Optional<Model> model = Optional.empty();
        if (!program.models.containsKey(modelName)) {
            var d = reporter.error(Code.UNKNOWN_NAME, src, train.model().span(), "unknown model `%s`", modelName);
            Reporter.closest(modelName, program.models.keySet()).ifPresent(c -> reporter.help(d, "did you mean `" + c + "`?"));
        } else {
            model = models.apply(modelName);
        }
        List<Setting> settings = new ArrayList<>();
        List<StageBlock> stages = new ArrayList<>();
        List<ParallelBlock> parallels = new ArrayList<>();
        Map<String, String> domains = new LinkedHashMap<>();
        Map<String, Span> domainSpans = new LinkedHashMap<>();
        for (TrainMember m : train.members()) {
            switch (m) {
                case Setting s -> settings.add(s);
                case StageBlock s -> stages.add(s);
                case ParallelBlock p -> parallels.add(p);
                case DomainDef d -> {
                    String name = d.name().text();
                    if (domains.containsKey(name) || SYNTHETIC_DOMAINS.contains(name)) {
                        var diag = reporter.error(Code.DUPLICATE_NAME, src, d.name().span(), "domain `%s` is already declared", name);
                        reporter.note(diag, SYNTHETIC_DOMAINS.contains(name) ? "it is a built-in synthetic domain" : "first declared at line " + domainSpans.get(name).line());
                        continue;
                    }
                    Value v = evaluator.eval(d.value(), src);
                    Optional<Value.Call> call = read.callOf(v, "domain", List.of("file"));
                    Optional<Args> args = call.flatMap(c -> read.args(c, List.of("path"), List.of(), List.of("path")));
                    Optional<String> path = args.flatMap(a -> read.string(a.required("path"), "path"));
                    domains.put(name, path.orElse(""));
                    domainSpans.put(name, d.name().span());
                }
            }
        }
        SettingMap map = read.settings(settings, "train `" + modelName + "`", TRAIN_KEYS, Set.of(), s -> evaluator.eval(s.value(), src));
        Training.Optimizer optimizer = optimizer(map.get("optimizer"));
        Training.Schedule schedule = map.get("schedule").flatMap(this::schedule).orElse(new Training.Schedule("constant", 0, 0));
        OptionalInt batchValue = map.get("batch").map(v -> read.positive(v, "batch")).orElse(OptionalInt.of(8));
        int batch = batchValue.orElse(8);
        int globalBatch = batch;
        if (map.get("global_batch").isPresent()) {
            OptionalInt g = read.positive(map.get("global_batch").get(), "global_batch");
            if (g.isPresent() && batchValue.isPresent() && g.getAsInt() % batch != 0) {
                var d = reporter.error(Code.GLOBAL_BATCH_MULTIPLE, map.get("global_batch").get(), "`global_batch` (%d) is not a multiple of `batch` (%d)",
                        g.getAsInt(), batch);
                reporter.help(d, "each step accumulates global_batch / batch micro-batches");
            } else if (g.isPresent()) {
                globalBatch = g.getAsInt();
            }
        }
        long seed = map.get("seed").flatMap(v -> read.longInteger(v, "seed", 0)).orElse(0L);
        double gradClip = map.get("grad_clip").map(v -> read.nonNegative(v, "grad_clip")).orElse(OptionalDouble.of(1.0)).orElse(1.0);
        Training.Data data = map.get("data").flatMap(v -> data(v, domains)).orElse(new Training.Data(Map.of("synthetic", 1.0)));
        boolean padDocuments = map.get("documents").flatMap(v -> read.word(v, "documents", Map.of("stream", false, "pad", true))).orElse(false);

        if (model.isPresent() && !map.has("global_batch")) {
            for (Layer l : model.get().layers()) {
                Optional<Moe> globalScoped = moesOf(l.block()).stream()
                        .filter(m -> m.losses().stream().anyMatch(x -> x instanceof Loss.Aux a && a.scope() == Loss.Scope.GLOBAL_BATCH)).findFirst();
                if (globalScoped.isPresent()) {
                    var d = reporter.error(Code.GLOBAL_BATCH_REQUIRED, src, train.model().span(),
                            "moe `%s` balances over the global batch, but this train block declares no `global_batch`", globalScoped.get().name());
                    reporter.help(d, "add `global_batch n` (a multiple of `batch`), or use `scope: micro_batch`");
                    break;
                }
            }
        }

        int expertsPerRank = 0;
        if (map.get("experts_per_rank").isPresent()) {
            Value v = map.get("experts_per_rank").get();
            OptionalInt n = read.positive(v, "experts_per_rank");
            if (n.isPresent() && model.isPresent()) {
                expertsPerRank = placement(v, n.getAsInt(), model.get());
            }
        }

        Optional<ExpertParallel> parallel = Optional.empty();
        if (!parallels.isEmpty()) {
            ParallelBlock first = parallels.getFirst();
            for (ParallelBlock again : parallels.subList(1, parallels.size())) {
                var d = reporter.error(Code.PLACEMENT_TWICE, src, keyword(again.span(), "parallel"), "a second `parallel` block in train `%s`", modelName);
                reporter.note(d, "the first is at line " + first.span().line());
            }
            if (map.get("experts_per_rank").isPresent()) {
                var d = reporter.error(Code.PLACEMENT_TWICE, map.get("experts_per_rank").get(), "`experts_per_rank` beside a `parallel` block");
                reporter.help(d, "remove `experts_per_rank`: `parallel { ranks n }` places the experts in blocks of E/n by default");
            }
            if (placements) {
                parallel = new ParallelChecker(evaluator, read).check(first, src, model);
            }
        }

        List<Training.Stage> checkedStages = new ArrayList<>();
        Map<String, Span> stageNames = new LinkedHashMap<>();
        for (int i = 0; i < stages.size(); i++) {
            StageBlock s = stages.get(i);
            if (stageNames.containsKey(s.name().text())) {
                var d = reporter.error(Code.DUPLICATE_NAME, src, s.name().span(), "stage `%s` is declared twice", s.name().text());
                reporter.note(d, "first declared at line " + stageNames.get(s.name().text()).line());
            }
            stageNames.put(s.name().text(), s.name().span());
            stage(s, i == 0, src, domains, model).ifPresent(checkedStages::add);
        }
        long stageSteps = checkedStages.stream().mapToLong(Training.Stage::steps).sum();
        long steps;
        if (map.get("steps").isPresent()) {
            steps = read.longInteger(map.get("steps").get(), "steps", 1).orElse(1L);
            if (!stages.isEmpty() && checkedStages.size() == stages.size() && steps != stageSteps) {
                var d = reporter.error(Code.OUT_OF_RANGE, map.get("steps").get(), "`steps` (%d) differs from the stages' total (%d)", steps, stageSteps);
                reporter.help(d, "remove `steps`: with stages, the total is their sum");
            }
        } else if (stages.isEmpty()) {
            var d = reporter.error(Code.MISSING_SETTING, src, train.model().span(), "train `%s` lacks `steps`", modelName);
            reporter.help(d, "add `steps n`, or `stage` blocks");
            steps = 0;
        } else {
            steps = stageSteps;
        }
        if (reporter.errorCount() != before) {
            return Optional.empty();
        }
        return Optional.of(new Training(modelName, optimizer, schedule, batch, globalBatch, steps, seed, gradClip, data, domains, checkedStages,
                padDocuments, expertsPerRank, parallel));
    }

    /** The span of the word that opens a block. */
    static Span keyword(Span block, String word) {
        return new Span(block.line(), block.column(), block.line(), block.column() + word.length());
    }

    /**
     * {@code experts_per_rank n}: every MoE layer's routed experts split into groups of n, one group
     * per GPU of an expert-parallel group. Reports each layer whose count n does not divide; returns n
     * when all do (0 after an error).
     */
    private int placement(Value v, int n, Model model) {
        int layers = 0;
        boolean ok = true;
        for (Layer l : model.layers()) {
            for (Moe m : moesOf(l.block())) {
                int experts = m.routedExperts();
                if (experts == 0) {
                    continue;
                }
                layers++;
                if (experts % n != 0) {
                    var d = reporter.error(Code.EXPERT_PLACEMENT, v, "`experts_per_rank` (%d) does not divide the %d routed experts of moe `%s` (layer %d)",
                            n, experts, m.name(), l.index());
                    List<String> divisors = new ArrayList<>();
                    for (int k = 1; k <= experts; k++) {
                        if (experts % k == 0) {
                            divisors.add(String.valueOf(k));
                        }
                    }
                    reporter.help(d, "use a divisor of " + experts + ": " + String.join(", ", divisors));
                    ok = false;
                    break;
                }
            }
            if (!ok) {
                break;
            }
        }
        if (ok && layers == 0) {
            var d = reporter.error(Code.EXPERT_PLACEMENT, v, "`experts_per_rank` places routed experts, but model `%s` has none", model.name());
            reporter.help(d, "remove `experts_per_rank`: a dense model is replicated on every GPU");
            ok = false;
        }
        return ok ? n : 0;
    }

    /** The MoEs of a block: its mixer's, if the mixer is an MoE of attention experts, then its ffn's. */
    private static List<Moe> moesOf(Block b) {
        List<Moe> out = new ArrayList<>();
        ModelChecker.mixerMoe(b).ifPresent(out::add);
        ModelChecker.ffnMoe(b).ifPresent(out::add);
        return out;
    }

    private Training.Optimizer optimizer(Optional<Value> value) {
        Training.Optimizer fallback = new Training.Optimizer("adamw", 3e-4, 0.9, 0.95, 1e-8, 0.0);
        if (value.isEmpty()) {
            return fallback;
        }
        Optional<Value.Call> call = read.callOf(value.get(), "optimizer", List.of("adamw", "sgd"));
        if (call.isEmpty()) {
            return fallback;
        }
        if (call.get().callee().equals("sgd")) {
            Optional<Args> args = read.args(call.get(), List.of("lr"), List.of("momentum", "weight_decay"), List.of("lr"));
            double lr = args.map(a -> read.positiveNumber(a.required("lr"), "lr")).orElse(OptionalDouble.empty()).orElse(fallback.lr());
            double momentum = args.flatMap(a -> a.get("momentum")).map(v -> read.number(v, "momentum", 0, false, 1, true)).orElse(OptionalDouble.of(0))
                    .orElse(0);
            double wd = args.flatMap(a -> a.get("weight_decay")).map(v -> read.nonNegative(v, "weight_decay")).orElse(OptionalDouble.of(0)).orElse(0);
            return new Training.Optimizer("sgd", lr, momentum, 0, 0, wd);
        }
        Optional<Args> args = read.args(call.get(), List.of("lr"), List.of("beta1", "beta2", "eps", "weight_decay"), List.of("lr"));
        if (args.isEmpty()) {
            return fallback;
        }
        Args a = args.get();
        double lr = read.positiveNumber(a.required("lr"), "lr").orElse(fallback.lr());
        double beta1 = a.get("beta1").map(v -> read.number(v, "beta1", 0, false, 1, true)).orElse(OptionalDouble.of(0.9)).orElse(0.9);
        double beta2 = a.get("beta2").map(v -> read.number(v, "beta2", 0, false, 1, true)).orElse(OptionalDouble.of(0.95)).orElse(0.95);
        double eps = a.get("eps").map(v -> read.positiveNumber(v, "eps")).orElse(OptionalDouble.of(1e-8)).orElse(1e-8);
        double wd = a.get("weight_decay").map(v -> read.nonNegative(v, "weight_decay")).orElse(OptionalDouble.of(0)).orElse(0);
        return new Training.Optimizer("adamw", lr, beta1, beta2, eps, wd);
    }

    private Optional<Training.Schedule> schedule(Value v) {
        Optional<Value.Call> call = read.callOf(v, "schedule", List.of("constant", "cosine", "linear"));
        if (call.isEmpty()) {
            return Optional.empty();
        }
        Optional<Args> args = read.args(call.get(), List.of(), List.of("warmup", "min_lr"), List.of());
        if (args.isEmpty()) {
            return Optional.empty();
        }
        long warmup = args.get().get("warmup").flatMap(w -> read.longInteger(w, "warmup", 0)).orElse(0L);
        double minLr = args.get().get("min_lr").map(m -> read.nonNegative(m, "min_lr")).orElse(OptionalDouble.of(0)).orElse(0);
        return Optional.of(new Training.Schedule(call.get().callee(), warmup, minLr));
    }

    private Optional<Training.Data> data(Value v, Map<String, String> domains) {
        if (v instanceof Value.Word w) {
            return domain(w, domains) ? Optional.of(new Training.Data(Map.of(w.name(), 1.0))) : Optional.empty();
        }
        Optional<Value.Call> call = read.callOf(v, "data", List.of("mix", "file"));
        if (call.isEmpty()) {
            return Optional.empty();
        }
        if (call.get().callee().equals("file")) {
            Optional<Args> args = read.args(call.get(), List.of("path"), List.of(), List.of("path"));
            return args.flatMap(a -> read.string(a.required("path"), "path")).map(p -> new Training.Data(Map.of("file:" + p, 1.0)));
        }
        Map<String, Double> mixture = new LinkedHashMap<>();
        boolean ok = true;
        double sum = 0;
        for (Value.Arg a : call.get().args()) {
            if (a.name().isEmpty()) {
                var d = reporter.error(Code.BAD_ARGUMENTS, a.value(), "each share of `mix` is named by its domain");
                reporter.help(d, "e.g. `mix(arithmetic: 0.5, copy: 0.5)`");
                ok = false;
                continue;
            }
            String name = a.name().get();
            Value.Word asWord = new Value.Word(a.nameSpan().orElse(a.span()), a.value().source(), name);
            if (!domain(asWord, domains)) {
                ok = false;
                continue;
            }
            if (mixture.containsKey(name)) {
                reporter.error(Code.BAD_ARGUMENTS, asWord, "domain `%s` appears twice in `mix`", name);
                ok = false;
                continue;
            }
            OptionalDouble w = read.number(a.value(), name, 0, true, 1, false);
            if (w.isEmpty()) {
                ok = false;
                continue;
            }
            mixture.put(name, w.getAsDouble());
            sum += w.getAsDouble();
        }
        if (ok && Math.abs(sum - 1) > 1e-6) {
            var d = reporter.error(Code.MIXTURE_SUM, call.get(), "mixture weights sum to %s, not 1", Read.fmt(Math.round(sum * 1e9) / 1e9));
            reporter.help(d, "scale the shares so that they add up to 1");
            return Optional.empty();
        }
        return ok ? Optional.of(new Training.Data(mixture)) : Optional.empty();
    }

    private boolean domain(Value.Word w, Map<String, String> domains) {
        if (SYNTHETIC_DOMAINS.contains(w.name()) || domains.containsKey(w.name())) {
            return true;
        }
        var d = reporter.error(Code.UNKNOWN_DOMAIN, w, "unknown data domain `%s`", w.name());
        List<String> known = new ArrayList<>(SYNTHETIC_DOMAINS);
        known.addAll(domains.keySet());
        Optional<String> close = Reporter.closest(w.name(), known);
        reporter.help(d, close.map(c -> "did you mean `" + c + "`?")
                .orElse("declare it with `domain " + w.name() + " = file(\"...\")`, or use a synthetic domain: " + Reporter.oneOf(SYNTHETIC_DOMAINS)));
        return false;
    }

    // ---- stages ----

    private Optional<Training.Stage> stage(StageBlock s, boolean first, SourceFile src, Map<String, String> domains, Optional<Model> model) {
        int before = reporter.errorCount();
        SettingMap map = read.settings(s.settings(), "stage `" + s.name().text() + "`", STAGE_KEYS, Set.of(), x -> evaluator.eval(x.value(), src));
        long steps = 0;
        if (map.get("steps").isEmpty()) {
            var d = reporter.error(Code.MISSING_SETTING, src, s.name().span(), "stage `%s` lacks `steps`", s.name().text());
            reporter.help(d, "add `steps n`");
        } else {
            steps = read.longInteger(map.get("steps").get(), "steps", 1).orElse(0L);
        }
        Optional<Training.Data> data = map.get("data").flatMap(v -> data(v, domains));
        Optional<Double> lr = map.get("lr").map(v -> read.positiveNumber(v, "lr")).filter(OptionalDouble::isPresent).map(OptionalDouble::getAsDouble);
        Optional<Training.Schedule> schedule = map.get("schedule").flatMap(this::schedule);
        List<String> trainable = List.of();
        if (map.get("trainable").isPresent()) {
            Value v = map.get("trainable").get();
            if (v instanceof Value.Word w && w.name().equals("all")) {
                trainable = List.of();
            } else if (v instanceof Value.ListV l && l.items().isEmpty()) {
                var d = reporter.error(Code.PATTERN_MATCHES_NOTHING, v, "an empty `trainable` list freezes every parameter of stage `%s`", s.name().text());
                reporter.help(d, "list patterns of the parameters to train, or write `trainable all`");
            } else {
                Optional<List<String>> patterns = read.list(v, "trainable", item -> read.string(item, "pattern").map(p -> {
                    model.ifPresent(m -> checkPattern(p, item, m));
                    return p;
                }));
                trainable = patterns.orElse(List.of());
            }
        }
        Training.Init init = first ? new Training.Init.Scratch() : new Training.Init.Previous();
        if (map.get("init").isPresent()) {
            Value v = map.get("init").get();
            Optional<Training.Init> checked = init(v, first, model);
            if (checked.isPresent()) {
                init = checked.get();
            }
        }
        if (init instanceof Training.Init.Extend e && map.get("trainable").isEmpty() && model.isPresent()) {
            // MoExtend: the old experts stay as trained; the new ones and the router learn.
            int old = routedPerLayer(model.get()) - e.add();
            trainable = List.of("layers.*.moe.experts.{" + old + ".." + (old + e.add() - 1) + "}.**", "layers.*.moe.router.**");
        }
        if (reporter.errorCount() != before) {
            return Optional.empty();
        }
        return Optional.of(new Training.Stage(s.name().text(), steps, data, trainable, lr, schedule, init));
    }

    private void checkPattern(String pattern, Value at, Model model) {
        Pattern p = Patterns.compile(pattern);
        boolean any = model.params().stream().map(Param::name).anyMatch(n -> p.matcher(n).matches());
        if (!any) {
            var d = reporter.error(Code.PATTERN_MATCHES_NOTHING, at, "pattern \"%s\" matches no parameter of model `%s`", pattern, model.name());
            reporter.help(d, "names look like `layers.3.moe.experts.5.up`; `moe info --params` lists them");
        }
    }

    private Optional<Training.Init> init(Value v, boolean first, Optional<Model> target) {
        List<String> kinds = List.of("scratch", "previous", "checkpoint", "copy", "split", "merge", "scale_up", "extend", "diversify");
        Optional<Value.Call> call = read.callOf(v, "init", kinds);
        if (call.isEmpty()) {
            return Optional.empty();
        }
        Value.Call c = call.get();
        switch (c.callee()) {
            case "scratch" -> {
                return read.args(c, List.of(), List.of(), List.of()).map(a -> new Training.Init.Scratch());
            }
            case "previous" -> {
                if (first) {
                    var d = reporter.error(Code.NO_PREVIOUS_STAGE, v, "the first stage has no previous stage to start from");
                    reporter.help(d, "start it from `scratch`, a `checkpoint(\"...\")`, or an upcycling step such as `copy(...)`");
                    return Optional.empty();
                }
                return read.args(c, List.of(), List.of(), List.of()).map(a -> new Training.Init.Previous());
            }
            case "checkpoint" -> {
                Optional<Args> args = read.args(c, List.of("path"), List.of(), List.of("path"));
                Optional<Training.Source> from = args.flatMap(a -> source(a.required("path")));
                if (from.isPresent() && from.get() instanceof Training.Source.Run r && target.isPresent() && !sameTensors(r.model(), target.get())) {
                    var d = reporter.error(Code.UPCYCLE_SHAPE, args.get().required("path"), "`%s` does not have the tensors of `%s`", r.model(),
                            target.get().name());
                    reporter.note(d, "a checkpoint start loads every tensor by name; for a model of another shape use an upcycling step");
                    return Optional.empty();
                }
                return from.map(Training.Init.Checkpoint::new);
            }
            case "merge" -> {
                Optional<Args> args = read.args(c, List.of("from"), List.of("model", "attention", "shared_kv"), List.of());
                if (args.isEmpty()) {
                    return Optional.empty();
                }
                Value fromValue = args.get().required("from");
                Optional<List<Training.Source>> from = read.list(fromValue, "from", this::source);
                Optional<Value> modelValue = args.get().get("model").or(() -> fromValue instanceof Value.ListV l
                        ? l.items().stream().filter(i -> i instanceof Value.Word).findFirst() : Optional.empty());
                if (modelValue.isEmpty()) {
                    if (from.isPresent()) {
                        var d = reporter.error(Code.BAD_ARGUMENTS, c.source(), c.calleeSpan(), "`merge` needs the argument `model`");
                        reporter.help(d, "name the dense model the checkpoints were saved from: `model: Dense`");
                    }
                    return Optional.empty();
                }
                Optional<Model> source = sourceModel(modelValue.get(), target, true);
                String attention = args.get().get("attention").flatMap(a -> read.word(a, "attention", Map.of("experts", "experts", "average", "average")))
                        .orElse("average");
                boolean sharedKv = args.get().get("shared_kv").flatMap(a -> read.bool(a, "shared_kv")).orElse(false);
                if (from.isEmpty() || source.isEmpty()) {
                    return Optional.empty();
                }
                if (fromValue instanceof Value.ListV l) {
                    for (int i = 0; i < l.items().size(); i++) {
                        if (from.get().get(i) instanceof Training.Source.Run r && !sameTensors(r.model(), source.get())) {
                            var d = reporter.error(Code.UPCYCLE_SHAPE, l.items().get(i), "specialist `%s` does not have the tensors of `%s`", r.model(),
                                    source.get().name());
                            reporter.note(d, "merged specialists share one dense architecture; they differ only in what they were trained on");
                            return Optional.empty();
                        }
                    }
                }
                return Optional.of(new Training.Init.Merge(from.get(), source.get().name(), attention, sharedKv));
            }
            default -> {
                List<String> optional = new ArrayList<>(List.of("model"));
                optional.addAll(switch (c.callee()) {
                    case "copy" -> List.of("noise");
                    case "split" -> List.of("parts");
                    case "extend" -> List.of("add");
                    case "diversify" -> List.of("expert", "into", "mask");
                    default -> List.<String>of();
                });
                Optional<Args> args = read.args(c, List.of("from"), optional, List.of());
                if (args.isEmpty()) {
                    return Optional.empty();
                }
                Value fromValue = args.get().required("from");
                Optional<Training.Source> from = source(fromValue);
                if (from.isEmpty()) {
                    return Optional.empty();
                }
                Value modelValue = args.get().get("model").orElse(null);
                if (modelValue == null && fromValue instanceof Value.Word w) {
                    modelValue = w; // the run of a train block holds that block's model
                } else if (modelValue == null) {
                    var d = reporter.error(Code.BAD_ARGUMENTS, c.source(), c.calleeSpan(), "`%s` needs the argument `model`", c.callee());
                    reporter.help(d, "name the model the checkpoint was saved from: `model: Dense`");
                    return Optional.empty();
                } else if (from.get() instanceof Training.Source.Run r && modelValue instanceof Value.Word w && !w.name().equals(r.model())) {
                    var d = reporter.error(Code.UPCYCLE_SHAPE, modelValue, "`from` is the run of `%s`, but `model` is `%s`", r.model(), w.name());
                    reporter.help(d, "drop `model`: a run's checkpoint holds its own model");
                    return Optional.empty();
                }
                boolean mustBeDense = !c.callee().equals("extend") && !c.callee().equals("diversify");
                Optional<Model> source = c.callee().equals("scale_up") ? grownFrom(modelValue, target)
                        : sourceModel(modelValue, target, mustBeDense);
                if (source.isEmpty()) {
                    return Optional.empty();
                }
                String s = source.get().name();
                return switch (c.callee()) {
                    case "copy" -> {
                        double noise = args.get().get("noise").map(n -> read.number(n, "noise", 0, false, 1, false)).orElse(OptionalDouble.of(0)).orElse(0);
                        expertsMatch(args.get().required("model"), source.get(), target, 1);
                        yield Optional.of(new Training.Init.Copy(from.get(), s, noise));
                    }
                    case "split" -> {
                        Value partsValue = args.get().get("parts").orElse(null);
                        if (partsValue == null) {
                            reporter.error(Code.BAD_ARGUMENTS, c.source(), c.calleeSpan(), "`split` needs the argument `parts`");
                            yield Optional.empty();
                        }
                        OptionalInt parts = read.positive(partsValue, "parts");
                        if (parts.isEmpty()) {
                            yield Optional.empty();
                        }
                        for (Ffn f : denseFfns(source.get())) {
                            if (f.hidden() % parts.getAsInt() != 0) {
                                var d = reporter.error(Code.SPLIT_DOES_NOT_DIVIDE, partsValue, "%d parts do not divide the dense hidden size %d",
                                        parts.getAsInt(), f.hidden());
                                reporter.help(d, "choose parts dividing " + f.hidden());
                                yield Optional.empty();
                            }
                        }
                        expertsMatch(partsValue, source.get(), target, parts.getAsInt());
                        yield Optional.of(new Training.Init.Split(from.get(), s, parts.getAsInt()));
                    }
                    case "extend" -> {
                        OptionalInt add = args.get().get("add").map(a -> read.positive(a, "add")).orElse(OptionalInt.empty());
                        if (args.get().get("add").isEmpty()) {
                            reporter.error(Code.BAD_ARGUMENTS, c.source(), c.calleeSpan(), "`extend` needs the argument `add`");
                        }
                        if (add.isEmpty()) {
                            yield Optional.empty();
                        }
                        if (target.isPresent() && routedPerLayer(target.get()) != routedPerLayer(source.get()) + add.getAsInt()) {
                            var d = reporter.error(Code.UPCYCLE_SHAPE, args.get().get("add").get(),
                                    "`%s` has %d routed experts per MoE layer; adding %d gives %d, but `%s` has %d", s, routedPerLayer(source.get()),
                                    add.getAsInt(), routedPerLayer(source.get()) + add.getAsInt(), target.get().name(), routedPerLayer(target.get()));
                            reporter.help(d, "make the target's routed count equal the source's plus `add`");
                            yield Optional.empty();
                        }
                        yield Optional.of(new Training.Init.Extend(from.get(), s, add.getAsInt()));
                    }
                    case "diversify" -> {
                        int expert = args.get().get("expert").map(a -> read.integer(a, "expert", 0, Integer.MAX_VALUE)).orElse(OptionalInt.of(0)).orElse(0);
                        OptionalInt into = args.get().get("into").map(a -> read.integer(a, "into", 2, Integer.MAX_VALUE)).orElse(OptionalInt.empty());
                        if (args.get().get("into").isEmpty()) {
                            reporter.error(Code.BAD_ARGUMENTS, c.source(), c.calleeSpan(), "`diversify` needs the argument `into`");
                        }
                        double mask = args.get().get("mask").map(a -> read.number(a, "mask", 0, false, 1, true)).orElse(OptionalDouble.of(0.1)).orElse(0.1);
                        if (into.isEmpty()) {
                            yield Optional.empty();
                        }
                        if (target.isPresent() && routedPerLayer(target.get()) != into.getAsInt()) {
                            var d = reporter.error(Code.UPCYCLE_SHAPE, args.get().get("into").get(), "`into` is %d, but `%s` has %d routed experts per MoE layer",
                                    into.getAsInt(), target.get().name(), routedPerLayer(target.get()));
                            reporter.help(d, "spawn as many experts as the target routes: `into: " + routedPerLayer(target.get()) + "`");
                            yield Optional.empty();
                        }
                        int sourceExperts = routedPerLayer(source.get());
                        if (sourceExperts > 0 && expert >= sourceExperts) {
                            reporter.error(Code.OUT_OF_RANGE, args.get().get("expert").get(), "`%s` has experts 0..%d; there is no expert %d", s,
                                    sourceExperts - 1, expert);
                            yield Optional.empty();
                        }
                        yield Optional.of(new Training.Init.Diversify(from.get(), s, expert, into.getAsInt(), mask));
                    }
                    default -> Optional.of(new Training.Init.ScaleUp(from.get(), s));
                };
            }
        }
    }

    /** A checkpoint path, or the name of a model whose train block comes earlier in this file. */
    private Optional<Training.Source> source(Value v) {
        if (v instanceof Value.Str str) {
            return Optional.of(new Training.Source.File(str.value()));
        }
        if (v instanceof Value.Word w) {
            if (!trainedBefore.contains(w.name())) {
                var d = reporter.error(Code.UNKNOWN_NAME, v, "no train block of `%s` comes before this one", w.name());
                reporter.note(d, "`from: " + w.name() + "` reads the checkpoint that the train block of `" + w.name()
                        + "` writes earlier in the same run of this file; give a path in quotes for any other checkpoint");
                return Optional.empty();
            }
            return Optional.of(new Training.Source.Run(w.name()));
        }
        read.wrongType(v, "from", "a checkpoint path in quotes, or a model trained earlier in this file");
        return Optional.empty();
    }

    private boolean sameTensors(String model, Model expected) {
        Optional<Model> m = models.apply(model);
        return m.isEmpty() || m.get().params().equals(expected.params());
    }

    private Optional<Model> sourceModel(Value v, Optional<Model> target, boolean mustBeDense) {
        if (!(v instanceof Value.Word w)) {
            read.wrongType(v, "model", "a model name");
            return Optional.empty();
        }
        if (!program.models.containsKey(w.name())) {
            var d = reporter.error(Code.UNKNOWN_NAME, v, "unknown model `%s`", w.name());
            Reporter.closest(w.name(), program.models.keySet()).ifPresent(c -> reporter.help(d, "did you mean `" + c + "`?"));
            return Optional.empty();
        }
        Optional<Model> source = models.apply(w.name());
        if (source.isEmpty()) {
            return Optional.empty(); // its own errors are reported where it is declared
        }
        Model s = source.get();
        if (mustBeDense && s.layers().stream().anyMatch(l -> !moesOf(l.block()).isEmpty())) {
            var d = reporter.error(Code.UPCYCLE_SHAPE, v, "model `%s` is not dense: it has MoE layers", w.name());
            reporter.note(d, "copy, split, merge and scale_up start from dense models; `extend` and `diversify` start from an MoE");
            return Optional.empty();
        }
        if (target.isPresent()) {
            var t = target.get().config();
            var c = s.config();
            List<String> differ = new ArrayList<>();
            if (t.vocab() != c.vocab()) {
                differ.add("vocab " + c.vocab() + " vs " + t.vocab());
            }
            if (t.dim() != c.dim()) {
                differ.add("dim " + c.dim() + " vs " + t.dim());
            }
            if (t.heads() != c.heads()) {
                differ.add("heads " + c.heads() + " vs " + t.heads());
            }
            if (target.get().layers().size() != s.layers().size()) {
                differ.add("layers " + s.layers().size() + " vs " + target.get().layers().size());
            }
            if (!differ.isEmpty()) {
                var d = reporter.error(Code.UPCYCLE_SHAPE, v, "model `%s` does not fit `%s`: %s", w.name(), target.get().name(), String.join(", ", differ));
                reporter.note(d, "upcycling keeps vocab, dim, heads and the layer count (scale-up grows them in a stage of its own)");
                return Optional.empty();
            }
        }
        return source;
    }

    /** The source of a scale-up: dense, the same vocabulary, and no larger than the target in any dimension. */
    private Optional<Model> grownFrom(Value v, Optional<Model> target) {
        Optional<Model> source = sourceModel(v, Optional.empty(), true);
        if (source.isEmpty() || target.isEmpty()) {
            return source;
        }
        var s = source.get().config();
        var t = target.get().config();
        List<String> shrinks = new ArrayList<>();
        if (s.vocab() != t.vocab()) {
            shrinks.add("vocab " + s.vocab() + " vs " + t.vocab());
        }
        if (s.dim() > t.dim()) {
            shrinks.add("dim " + s.dim() + " > " + t.dim());
        }
        if (s.heads() > t.heads()) {
            shrinks.add("heads " + s.heads() + " > " + t.heads());
        }
        if (source.get().layers().size() > target.get().layers().size()) {
            shrinks.add("layers " + source.get().layers().size() + " > " + target.get().layers().size());
        }
        if (s.mla().isPresent() || t.mla().isPresent()) {
            var d = reporter.error(Code.UPCYCLE_SHAPE, v, "`scale_up` does not grow latent attention (`attention mla(...)`)");
            reporter.note(d, "scale-up grows multi-head and grouped-query attention only");
            return Optional.empty();
        }
        if (!shrinks.isEmpty()) {
            var d = reporter.error(Code.UPCYCLE_SHAPE, v, "`scale_up` grows a model; `%s` is not smaller than `%s`: %s", source.get().name(),
                    target.get().name(), String.join(", ", shrinks));
            reporter.note(d, "scale-up keeps the vocabulary and may only grow dim, heads and layers");
            return Optional.empty();
        }
        return source;
    }

    private static List<Ffn> denseFfns(Model m) {
        List<Ffn> out = new ArrayList<>();
        for (Layer l : m.layers()) {
            if (l.block() instanceof Block.PreNorm p && p.ffn() instanceof Block.Part.Dense d) {
                out.add(d.ffn());
            }
            if (l.block() instanceof Block.Parallel p && p.ffn() instanceof Block.Part.Dense d) {
                out.add(d.ffn());
            }
        }
        return out;
    }

    private static int routedPerLayer(Model m) {
        for (Layer l : m.layers()) {
            for (Moe moe : moesOf(l.block())) {
                return moe.routedExperts();
            }
        }
        return 0;
    }

    /** Upcycled experts take the dense FFN whole (copy) or in {@code parts} slices (split). */
    private void expertsMatch(Value at, Model source, Optional<Model> target, int parts) {
        if (target.isEmpty()) {
            return;
        }
        for (int i = 0; i < target.get().layers().size() && i < source.layers().size(); i++) {
            Layer t = target.get().layers().get(i);
            Layer s = source.layers().get(i);
            Optional<Ffn> dense = denseFfns(new Model("", source.config(), List.of(s), List.of(), 0, null, null)).stream().findFirst();
            for (Moe moe : moesOf(t.block())) {
                for (ExpertGroup g : moe.groups()) {
                    if (g.expert() instanceof Expert.FeedForward f && dense.isPresent()) {
                        Ffn d = dense.get();
                        if (f.ffn().activation() != d.activation() || f.ffn().hidden() * parts != d.hidden()) {
                            var diag = reporter.error(Code.UPCYCLE_SHAPE, at, "layer %d: experts %s cannot come from the dense %s%s", i, f.ffn(), d,
                                    parts > 1 ? " split in " + parts : "");
                            reporter.help(diag, "experts need the dense activation and hidden size " + d.hidden() / Math.max(1, parts));
                            return;
                        }
                    }
                }
            }
        }
    }
}
