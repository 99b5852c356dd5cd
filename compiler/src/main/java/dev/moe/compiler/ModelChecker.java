package dev.moe.compiler;

import dev.moe.compiler.Program.Declared;
import dev.moe.compiler.Read.Args;
import dev.moe.compiler.Read.SettingMap;
import dev.moe.compiler.ir.Block;
import dev.moe.compiler.ir.Count;
import dev.moe.compiler.ir.Expert;
import dev.moe.compiler.ir.ExpertGroup;
import dev.moe.compiler.ir.Ffn;
import dev.moe.compiler.ir.Layer;
import dev.moe.compiler.ir.Loss;
import dev.moe.compiler.ir.Model;
import dev.moe.compiler.ir.ModelConfig;
import dev.moe.compiler.ir.Moe;
import dev.moe.compiler.ir.Router;
import dev.moe.dsl.SourceFile;
import dev.moe.dsl.Span;
import dev.moe.dsl.ast.FfnDef;
import dev.moe.dsl.ast.LayerEntry;
import dev.moe.dsl.ast.LayerPlan;
import dev.moe.dsl.ast.ModelDecl;
import dev.moe.dsl.ast.ModelMember;
import dev.moe.dsl.ast.MoeDef;
import dev.moe.dsl.ast.MoeMember;
import dev.moe.dsl.ast.Parameter;
import dev.moe.dsl.ast.RouterBlock;
import dev.moe.dsl.ast.Selector;
import dev.moe.dsl.ast.Setting;
import dev.moe.dsl.diag.Code;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.LinkedHashMap;
import java.util.LinkedHashSet;
import java.util.List;
import java.util.Map;
import java.util.Optional;
import java.util.OptionalDouble;
import java.util.OptionalInt;
import java.util.Set;

/** Checks one model: its settings, its definitions, its layer plan; builds its IR. */
final class ModelChecker {
    static final Set<String> MODEL_KEYS = Set.of("vocab", "context", "dim", "heads", "kv_heads", "head_dim", "norm", "position",
            "causal", "qk_norm", "qkv_bias", "sliding_window", "tie_embeddings", "attention");
    static final Set<String> MOE_KEYS = Set.of("routed", "shared", "balance");
    static final Set<String> ROUTER_KEYS = Set.of("score", "order", "mode", "top_k", "top_p", "max_k", "normalize", "scale", "bias",
            "groups", "jitter", "temperature", "activation", "gating_residual", "recurrent", "pregate", "capacity");
    static final Map<String, Ffn.Activation> ACTIVATIONS = Map.of("swiglu", Ffn.Activation.SWIGLU, "geglu", Ffn.Activation.GEGLU,
            "gelu", Ffn.Activation.GELU, "relu", Ffn.Activation.RELU);
    static final Set<String> EXPERT_WORDS = Set.of("zero", "copy", "constant");
    static final Set<String> EXPERT_CALLS = Set.of("latent", "lora", "attention");

    private final Program program;
    private final Evaluator evaluator;
    private final Read read;
    private final Reporter reporter;

    /** Definitions visible in the model being checked: its own, then the file's. */
    private final Map<String, Declared<FfnDef>> ffns = new LinkedHashMap<>();
    private final Map<String, Declared<MoeDef>> moes = new LinkedHashMap<>();
    private final Map<Declared<FfnDef>, Optional<Ffn>> ffnCache = new HashMap<>();
    private final Map<String, Optional<Moe>> moeCache = new HashMap<>();
    private final Set<Declared<FfnDef>> resolving = new LinkedHashSet<>();

    ModelChecker(Program program, Evaluator evaluator, Read read) {
        this.program = program;
        this.evaluator = evaluator;
        this.read = read;
        this.reporter = read.reporter();
    }

    // ---- definitions outside models ----

    /** Checks the file's own definitions even when no model uses them. */
    void checkFreeDefinitions() {
        ffns.clear();
        moes.clear();
        ffns.putAll(program.ffns);
        moes.putAll(program.moes);
        for (Declared<FfnDef> f : program.ffns.values()) {
            if (f.source() == program.rootSource) {
                ffnOf(f);
            }
        }
        for (Declared<MoeDef> m : program.moes.values()) {
            if (m.source() == program.rootSource && m.node().parameters().stream().allMatch(p -> p.defaultValue().isPresent())) {
                instantiate(m, Optional.empty(), null, m.node().name().span(), m.source());
            }
        }
    }

    // ---- models ----

    Optional<Model> check(Declared<ModelDecl> declared) {
        ModelDecl model = declared.node();
        SourceFile src = declared.source();
        int errorsBefore = reporter.errorCount();
        ffns.clear();
        moes.clear();
        moeCache.clear();
        ffns.putAll(program.ffns);
        moes.putAll(program.moes);

        List<Setting> settings = new ArrayList<>();
        List<LayerPlan> plans = new ArrayList<>();
        for (ModelMember m : model.members()) {
            switch (m) {
                case Setting s -> settings.add(s);
                case LayerPlan p -> plans.add(p);
                case FfnDef f -> local(f.name().text(), f.name().span(), new Declared<>(f, src), ffns);
                case MoeDef d -> local(d.name().text(), d.name().span(), new Declared<>(d, src), moes);
            }
        }
        SettingMap map = read.settings(settings, "model `" + model.name().text() + "`", MODEL_KEYS, Set.of(), s -> evaluator.eval(s.value(), src));
        Optional<ModelConfig> config = config(map, model, src);
        if (plans.isEmpty()) {
            var d = reporter.error(Code.MISSING_SETTING, src, model.name().span(), "model `%s` has no `layers` plan", model.name().text());
            reporter.help(d, "add e.g. `layers 4 { all: attention, dense }`");
        }
        for (int i = 1; i < plans.size(); i++) {
            var d = reporter.error(Code.DUPLICATE_SETTING, src, plans.get(i).span(), "`layers` is given twice in model `%s`", model.name().text());
            reporter.note(d, "first given at line " + plans.getFirst().span().line());
        }
        if (config.isEmpty()) {
            return Optional.empty();
        }
        ModelConfig cfg = config.get();
        // Local definitions are checked even when unused.
        for (ModelMember m : model.members()) {
            if (m instanceof FfnDef f && ffns.get(f.name().text()) != null && ffns.get(f.name().text()).node() == f) {
                ffnOf(ffns.get(f.name().text()));
            }
        }
        List<Layer> layers = plans.isEmpty() ? List.of() : layers(plans.getFirst(), cfg, src);
        if (reporter.errorCount() != errorsBefore || layers.isEmpty()) {
            return Optional.empty();
        }
        return Optional.of(build(model.name().text(), cfg, layers));
    }

    private <T extends dev.moe.dsl.ast.Node> void local(String name, Span span, Declared<T> d, Map<String, Declared<T>> table) {
        Optional<Declared<? extends dev.moe.dsl.ast.Node>> outer = program.lookup(name);
        boolean localTwice = (ffns.containsKey(name) && ffns.get(name).source() == d.source() && !program.ffns.containsKey(name))
                || (moes.containsKey(name) && moes.get(name).source() == d.source() && !program.moes.containsKey(name));
        if (outer.isPresent() || localTwice) {
            Declared<? extends dev.moe.dsl.ast.Node> first = outer.isPresent() ? outer.get()
                    : ffns.containsKey(name) ? ffns.get(name) : moes.get(name);
            var diag = reporter.error(Code.DUPLICATE_NAME, d.source(), span, "`%s` is already declared", name);
            reporter.note(diag, "first declared at " + first.source().name() + ":" + first.span().line() + ":" + first.span().column());
            return;
        }
        table.put(name, d);
    }

    private Optional<ModelConfig> config(SettingMap map, ModelDecl model, SourceFile src) {
        int before = reporter.errorCount();
        for (String key : List.of("vocab", "context", "dim", "heads")) {
            if (!map.has(key)) {
                var d = reporter.error(Code.MISSING_SETTING, src, model.name().span(), "model `%s` lacks `%s`", model.name().text(), key);
                reporter.help(d, "add `" + key + " <integer>` to the model");
            }
        }
        OptionalInt vocab = map.get("vocab").map(v -> read.positive(v, "vocab")).orElse(OptionalInt.empty());
        OptionalInt context = map.get("context").map(v -> read.positive(v, "context")).orElse(OptionalInt.empty());
        OptionalInt dim = map.get("dim").map(v -> read.positive(v, "dim")).orElse(OptionalInt.empty());
        OptionalInt heads = map.get("heads").map(v -> read.positive(v, "heads")).orElse(OptionalInt.empty());
        OptionalInt kvHeads = map.get("kv_heads").map(v -> read.positive(v, "kv_heads")).orElse(heads);
        OptionalInt headDim = map.get("head_dim").map(v -> read.positive(v, "head_dim")).orElse(OptionalInt.empty());
        Optional<ModelConfig.Mla> mla = map.get("attention").flatMap(this::attention);
        if (mla.isPresent()) {
            // Latent attention fixes each head's query/key width and gives every head its own keys.
            int qk = mla.get().qkDim();
            if (headDim.isPresent() && headDim.getAsInt() != qk) {
                var d = reporter.error(Code.LATENT_ATTENTION, map.get("head_dim").orElseThrow(),
                        "`head_dim` (%d) differs from latent attention's nope_dim + rope_dim (%d)", headDim.getAsInt(), qk);
                reporter.help(d, "remove `head_dim`: with `attention mla(...)` it is nope_dim + rope_dim");
            }
            headDim = OptionalInt.of(qk);
            if (map.get("kv_heads").isPresent() && kvHeads.isPresent() && heads.isPresent() && kvHeads.getAsInt() != heads.getAsInt()) {
                var d = reporter.error(Code.LATENT_ATTENTION, map.get("kv_heads").orElseThrow(),
                        "`kv_heads` (%d) differs from `heads` (%d): latent attention gives every head its own keys and values",
                        kvHeads.getAsInt(), heads.getAsInt());
                reporter.help(d, "remove `kv_heads` (the key/value cache is the latent, of rank kv_rank)");
            }
            for (String key : List.of("qk_norm", "qkv_bias")) {
                if (map.get(key).isPresent()) {
                    var d = reporter.error(Code.LATENT_ATTENTION, map.get(key).get(), "`%s` does not apply to latent attention", key);
                    reporter.help(d, "remove `" + key + "`; the latent projections are normalised by their own RMSNorms");
                }
            }
        }
        if (dim.isPresent() && heads.isPresent() && kvHeads.isPresent()) {
            if (headDim.isEmpty() && map.get("head_dim").isEmpty()) {
                if (dim.getAsInt() % heads.getAsInt() != 0) {
                    var d = reporter.error(Code.HEADS_DO_NOT_DIVIDE, map.get("heads").orElseThrow(),
                            "`heads` (%d) does not divide `dim` (%d)", heads.getAsInt(), dim.getAsInt());
                    reporter.help(d, "choose heads dividing " + dim.getAsInt() + ", or give `head_dim` explicitly");
                } else {
                    headDim = OptionalInt.of(dim.getAsInt() / heads.getAsInt());
                }
            }
            if (heads.getAsInt() % kvHeads.getAsInt() != 0) {
                Value at = map.get("kv_heads").orElse(map.get("heads").orElseThrow());
                var d = reporter.error(Code.HEADS_DO_NOT_DIVIDE, at, "`kv_heads` (%d) does not divide `heads` (%d)", kvHeads.getAsInt(), heads.getAsInt());
                reporter.note(d, "each key/value head serves heads / kv_heads query heads");
            }
        }
        ModelConfig.Norm norm = new ModelConfig.Norm(ModelConfig.NormKind.RMS, 1e-6);
        if (map.get("norm").isPresent()) {
            Optional<Value.Call> call = read.callOf(map.get("norm").get(), "norm", List.of("rms", "layer"));
            if (call.isPresent()) {
                Optional<Args> args = read.args(call.get(), List.of(), List.of("eps"), List.of("eps"));
                double eps = args.flatMap(a -> a.get("eps")).map(v -> read.number(v, "eps", 0, true, 1, true)).orElse(OptionalDouble.of(1e-6))
                        .orElse(1e-6);
                norm = new ModelConfig.Norm(call.get().callee().equals("rms") ? ModelConfig.NormKind.RMS : ModelConfig.NormKind.LAYER, eps);
            }
        }
        ModelConfig.Position position = new ModelConfig.Position(ModelConfig.PositionKind.ROPE, 10000, 1.0);
        if (map.get("position").isPresent()) {
            Optional<Value.Call> call = read.callOf(map.get("position").get(), "position", List.of("rope", "none"));
            if (call.isPresent() && call.get().callee().equals("none")) {
                read.args(call.get(), List.of(), List.of(), List.of());
                position = new ModelConfig.Position(ModelConfig.PositionKind.NONE, 0, 0);
            } else if (call.isPresent()) {
                Optional<Args> args = read.args(call.get(), List.of(), List.of("theta", "fraction"), List.of("theta"));
                double theta = args.flatMap(a -> a.get("theta")).map(v -> read.positiveNumber(v, "theta")).orElse(OptionalDouble.of(10000)).orElse(10000);
                Optional<Value> fractionValue = args.flatMap(a -> a.get("fraction"));
                double fraction = fractionValue.map(v -> read.number(v, "fraction", 0, true, 1, false)).orElse(OptionalDouble.of(1.0)).orElse(1.0);
                position = new ModelConfig.Position(ModelConfig.PositionKind.ROPE, theta, fraction);
                if (mla.isPresent() && fractionValue.isPresent()) {
                    var d = reporter.error(Code.LATENT_ATTENTION, fractionValue.get(),
                            "partial rotary does not apply to latent attention: its rope_dim (%d) says what rotates", mla.get().ropeDim());
                    reporter.help(d, "remove `fraction`");
                } else if (headDim.isPresent() && fractionValue.isPresent()) {
                    double dims = fraction * headDim.getAsInt();
                    if (dims != Math.rint(dims) || ((long) dims) % 2 != 0 || dims < 2) {
                        var d = reporter.error(Code.ROTARY_DIMENSION, fractionValue.get(),
                                "partial rotary: fraction %s of head_dim %d gives %s dimensions, not a positive even integer",
                                Read.fmt(fraction), headDim.getAsInt(), Read.fmt(dims));
                        reporter.help(d, "choose a fraction f with f * " + headDim.getAsInt() + " even, e.g. 0.5");
                    }
                }
            }
        }
        boolean causal = map.get("causal").flatMap(v -> read.bool(v, "causal")).orElse(true);
        // `qk_norm full` normalises the whole projected q and k (OLMoE); `true` each head (Qwen3).
        Optional<String> qkNormWord = map.get("qk_norm").flatMap(v -> read.word(v, "qk_norm", Map.of("true", "true", "false", "false", "full", "full")));
        boolean qkNorm = qkNormWord.map(w -> !w.equals("false")).orElse(false);
        boolean qkNormFull = qkNormWord.map(w -> w.equals("full")).orElse(false);
        boolean qkvBias = map.get("qkv_bias").flatMap(v -> read.bool(v, "qkv_bias")).orElse(false);
        boolean tie = map.get("tie_embeddings").flatMap(v -> read.bool(v, "tie_embeddings")).orElse(false);
        OptionalInt window = map.get("sliding_window").map(v -> read.positive(v, "sliding_window")).orElse(OptionalInt.of(0));
        if (window.isPresent() && context.isPresent() && window.getAsInt() >= context.getAsInt()) {
            var d = reporter.warning(Code.WINDOW_COVERS_CONTEXT, src, map.get("sliding_window").orElseThrow().span(),
                    "`sliding_window` (%d) covers the whole context (%d)", window.getAsInt(), context.getAsInt());
            reporter.help(d, "remove it, or make it smaller than " + context.getAsInt());
        }
        if (reporter.errorCount() != before || vocab.isEmpty() || context.isEmpty() || dim.isEmpty() || heads.isEmpty() || kvHeads.isEmpty()
                || headDim.isEmpty() || window.isEmpty()) {
            return Optional.empty();
        }
        return Optional.of(new ModelConfig(vocab.getAsInt(), context.getAsInt(), dim.getAsInt(), heads.getAsInt(), kvHeads.getAsInt(),
                headDim.getAsInt(), norm, position, causal, qkNorm, qkvBias, window.getAsInt(), tie, qkNormFull, mla));
    }

    /** {@code attention standard} or {@code attention mla(q_rank, kv_rank, nope_dim, rope_dim, v_dim, eps)}. */
    private Optional<ModelConfig.Mla> attention(Value v) {
        Optional<Value.Call> call = read.callOf(v, "attention", List.of("standard", "mla"));
        if (call.isEmpty()) {
            return Optional.empty();
        }
        if (call.get().callee().equals("standard")) {
            read.args(call.get(), List.of(), List.of(), List.of());
            return Optional.empty();
        }
        Optional<Args> args = read.args(call.get(), List.of("kv_rank", "nope_dim", "rope_dim", "v_dim"), List.of("q_rank", "eps"), List.of());
        if (args.isEmpty()) {
            return Optional.empty();
        }
        Args a = args.get();
        OptionalInt qRank = a.get("q_rank").map(x -> read.positive(x, "q_rank")).orElse(OptionalInt.of(0));
        OptionalInt kvRank = read.positive(a.required("kv_rank"), "kv_rank");
        OptionalInt nope = read.integer(a.required("nope_dim"), "nope_dim", 0, Integer.MAX_VALUE);
        OptionalInt rope = read.positive(a.required("rope_dim"), "rope_dim");
        OptionalInt vDim = read.positive(a.required("v_dim"), "v_dim");
        double eps = a.get("eps").map(x -> read.number(x, "eps", 0, true, 1, true)).orElse(OptionalDouble.of(1e-6)).orElse(1e-6);
        if (rope.isPresent() && rope.getAsInt() % 2 != 0) {
            var d = reporter.error(Code.LATENT_ATTENTION, a.required("rope_dim"), "`rope_dim` (%d) is odd; RoPE turns dimensions in pairs",
                    rope.getAsInt());
            reporter.help(d, "choose an even rope_dim, e.g. " + (rope.getAsInt() + 1));
            return Optional.empty();
        }
        if (qRank.isEmpty() || kvRank.isEmpty() || nope.isEmpty() || rope.isEmpty() || vDim.isEmpty()) {
            return Optional.empty();
        }
        return Optional.of(new ModelConfig.Mla(qRank.getAsInt(), kvRank.getAsInt(), nope.getAsInt(), rope.getAsInt(), vDim.getAsInt(), eps));
    }

    // ---- feed-forward networks ----

    private Optional<Ffn> ffnOf(Declared<FfnDef> def) {
        if (ffnCache.containsKey(def)) {
            return ffnCache.get(def);
        }
        if (!resolving.add(def)) {
            var d = reporter.error(Code.CYCLIC_CONSTANT, def.source(), def.node().name().span(), "ffn `%s` is defined in terms of itself",
                    def.node().name().text());
            List<String> cycle = new ArrayList<>(resolving.stream().map(x -> x.node().name().text()).toList());
            cycle = cycle.subList(cycle.indexOf(def.node().name().text()), cycle.size());
            reporter.note(d, "cycle: " + String.join(" -> ", cycle) + " -> " + def.node().name().text());
            return Optional.empty();
        }
        Value v = evaluator.eval(def.node().value(), def.source());
        Optional<Ffn> ffn = ffnSpec(v, "ffn " + def.node().name().text(), false).map(FfnSpec::ffn);
        resolving.remove(def);
        ffnCache.put(def, ffn);
        return ffn;
    }

    record FfnSpec(Ffn ffn, boolean gate, Optional<Span> gateSpan) {}

    /** {@code swiglu(hidden: 512)}, or the name of an ffn definition. */
    private Optional<FfnSpec> ffnSpec(Value v, String what, boolean allowGate) {
        if (v instanceof Value.Invalid) {
            return Optional.empty();
        }
        if (v instanceof Value.Word w && !ACTIVATIONS.containsKey(w.name())) {
            Declared<FfnDef> def = ffns.get(w.name());
            if (def != null) {
                return ffnOf(def).map(f -> new FfnSpec(f, false, Optional.empty()));
            }
            if (moes.containsKey(w.name())) {
                reporter.error(Code.WRONG_TYPE, v, "`%s` is an moe; %s needs a feed-forward network", w.name(), what);
                return Optional.empty();
            }
            unknownName(w, "feed-forward network", ffns.keySet(), ACTIVATIONS.keySet());
            return Optional.empty();
        }
        Optional<Value.Call> call = read.callOf(v, what, ACTIVATIONS.keySet());
        if (call.isEmpty()) {
            return Optional.empty();
        }
        List<String> optional = allowGate ? List.of("gate") : List.of();
        Optional<Args> args = read.args(call.get(), List.of("hidden"), allowGate ? List.of("gate") : optional, List.of("hidden"));
        if (args.isEmpty()) {
            return Optional.empty();
        }
        OptionalInt hidden = read.positive(args.get().required("hidden"), "hidden");
        boolean gate = false;
        Optional<Span> gateSpan = Optional.empty();
        if (args.get().get("gate").isPresent()) {
            Value g = args.get().get("gate").get();
            gate = read.word(g, "gate", Map.of("sigmoid", true, "none", false)).orElse(false);
            gateSpan = Optional.of(call.get().args().stream().filter(a -> a.name().equals(Optional.of("gate"))).findFirst()
                    .map(Value.Arg::span).orElse(g.span()));
        }
        if (hidden.isEmpty()) {
            return Optional.empty();
        }
        return Optional.of(new FfnSpec(new Ffn(ACTIVATIONS.get(call.get().callee()), hidden.getAsInt()), gate, gateSpan));
    }

    private void unknownName(Value.Word w, String what, Set<String> names, Set<String> words) {
        Set<String> candidates = new LinkedHashSet<>(names);
        candidates.addAll(words);
        var d = reporter.error(Code.UNKNOWN_NAME, w, "unknown %s `%s`", what, w.name());
        Reporter.closest(w.name(), candidates).ifPresent(c -> reporter.help(d, "did you mean `" + c + "`?"));
    }

    // ---- MoE definitions ----

    /**
     * An MoE definition with its parameters bound to the call's arguments (or their defaults).
     *
     * @param cfg the model it is used in; null when checking an unused definition
     */
    Optional<Moe> instantiate(Declared<MoeDef> def, Optional<Value.Call> call, ModelConfig cfg, Span useSpan, SourceFile useSource) {
        MoeDef moe = def.node();
        Map<String, Value> bound = new LinkedHashMap<>();
        boolean ok = true;
        List<String> paramNames = moe.parameters().stream().map(p -> p.name().text()).toList();
        Set<String> seenParams = new LinkedHashSet<>();
        for (Parameter p : moe.parameters()) {
            if (!seenParams.add(p.name().text())) {
                reporter.error(Code.DUPLICATE_NAME, def.source(), p.name().span(), "parameter `%s` is declared twice", p.name().text());
                ok = false;
            }
        }
        if (call.isPresent()) {
            List<String> required = moe.parameters().stream().filter(p -> p.defaultValue().isEmpty()).map(p -> p.name().text()).toList();
            List<String> optional = moe.parameters().stream().filter(p -> p.defaultValue().isPresent()).map(p -> p.name().text()).toList();
            Optional<Args> args = read.args(call.get(), required, optional, paramNames);
            if (args.isEmpty()) {
                return Optional.empty();
            }
            bound.putAll(args.get().values());
        }
        for (Parameter p : moe.parameters()) {
            if (!bound.containsKey(p.name().text())) {
                if (p.defaultValue().isEmpty()) {
                    var d = reporter.error(Code.BAD_ARGUMENTS, useSource, useSpan, "moe `%s` needs the argument `%s`", moe.name().text(), p.name().text());
                    reporter.help(d, "write `" + moe.name().text() + "(" + p.name().text() + ": ...)`");
                    ok = false;
                } else {
                    bound.put(p.name().text(), evaluator.eval(p.defaultValue().get(), def.source()));
                }
            }
        }
        if (!ok) {
            return Optional.empty();
        }
        String display = moe.name().text() + (call.isPresent() && !call.get().args().isEmpty()
                ? "(" + String.join(", ", bound.entrySet().stream()
                        .filter(e -> call.get().args().stream().anyMatch(a -> a.value() == e.getValue()))
                        .map(e -> e.getKey() + ": " + e.getValue().show()).toList()) + ")"
                : "");
        String key = display + "@" + System.identityHashCode(def);
        if (moeCache.containsKey(key)) {
            return moeCache.get(key);
        }
        int before = reporter.errorCount();
        Optional<Moe> built = buildMoe(def, bound, cfg, display);
        Optional<Moe> result = reporter.errorCount() == before ? built : Optional.empty();
        moeCache.put(key, result);
        return result;
    }

    private Optional<Moe> buildMoe(Declared<MoeDef> def, Map<String, Value> bound, ModelConfig cfg, String display) {
        MoeDef moe = def.node();
        SourceFile src = def.source();
        List<Setting> settings = new ArrayList<>();
        List<RouterBlock> routerBlocks = new ArrayList<>();
        for (MoeMember m : moe.members()) {
            switch (m) {
                case Setting s -> settings.add(s);
                case RouterBlock r -> routerBlocks.add(r);
            }
        }
        SettingMap map = read.settings(settings, "moe `" + moe.name().text() + "`", MOE_KEYS, MOE_KEYS, s -> evaluator.eval(s.value(), src, bound));
        List<ExpertGroup> groups = new ArrayList<>();
        Set<String> kinds = new LinkedHashSet<>();
        boolean attention = false;
        boolean feedForward = false;
        Span firstAttention = null;
        Span firstFeedForward = null;
        for (String role : List.of("shared", "routed")) {
            for (Value v : map.all(role)) {
                ExpertGroup.Role r = role.equals("shared") ? ExpertGroup.Role.SHARED : ExpertGroup.Role.ROUTED;
                Optional<ExpertGroup> g = group(v, r, cfg);
                if (g.isPresent()) {
                    groups.add(g.get());
                    if (g.get().expert() instanceof Expert.Attention) {
                        attention = true;
                        firstAttention = firstAttention == null ? v.span() : firstAttention;
                    } else if (!g.get().expert().zeroCompute()) {
                        feedForward = true;
                        firstFeedForward = firstFeedForward == null ? v.span() : firstFeedForward;
                    }
                }
            }
        }
        if (map.all("routed").isEmpty() && map.all("shared").isEmpty()) {
            var d = reporter.error(Code.NO_EXPERTS, src, moe.name().span(), "moe `%s` declares no experts", moe.name().text());
            reporter.help(d, "add a group such as `routed 8 x swiglu(hidden: 256)`");
        }
        if (attention && feedForward) {
            var d = reporter.error(Code.MIXED_EXPERTS, src, firstAttention, "moe `%s` mixes attention experts with feed-forward experts",
                    moe.name().text());
            reporter.note(d, "feed-forward experts start at line " + firstFeedForward.line());
        }
        // Count routed experts from the declaration, so that a group with a bad kind still counts; when
        // a count itself is bad, checks against the count are skipped (routed = -1).
        int routed = 0;
        for (Value v : map.all("routed")) {
            if (routed >= 0 && v instanceof Value.Repeat rep && rep.count() instanceof Value.Num n && n.integral() && n.value() >= 1
                    && n.value() <= Integer.MAX_VALUE) {
                routed += (int) n.value();
            } else {
                routed = -1;
            }
        }
        boolean hasRoutedDeclared = !map.all("routed").isEmpty();

        List<Router> routers = new ArrayList<>();
        int routersFailed = 0;
        Map<String, Span> routerNames = new HashMap<>();
        for (RouterBlock rb : routerBlocks) {
            if (rb.name().isPresent()) {
                String n = rb.name().get().text();
                if (routerNames.containsKey(n)) {
                    var d = reporter.error(Code.DUPLICATE_NAME, src, rb.name().get().span(), "router `%s` is declared twice", n);
                    reporter.note(d, "first declared at line " + routerNames.get(n).line());
                }
                routerNames.put(n, rb.name().get().span());
            }
            Optional<Router> built = router(rb, bound, src, routed, hasRoutedDeclared);
            built.ifPresent(routers::add);
            routersFailed += built.isEmpty() ? 1 : 0;
        }
        if (routerBlocks.size() > 1) {
            for (RouterBlock rb : routerBlocks) {
                if (rb.name().isEmpty()) {
                    var d = reporter.error(Code.GATE_NAMES, src, rb.span(), "moe `%s` has %d routers; this one has no name",
                            moe.name().text(), routerBlocks.size());
                    reporter.help(d, "name each gate after the data domain or task that selects it: `router text { ... }`");
                }
            }
        }
        if (hasRoutedDeclared && routerBlocks.isEmpty()) {
            var d = reporter.error(Code.ROUTER_MISMATCH, src, moe.name().span(), "moe `%s` has routed experts but no router", moe.name().text());
            reporter.help(d, "add `router { top_k 2 }`");
        }
        if (!hasRoutedDeclared && !routerBlocks.isEmpty()) {
            var d = reporter.error(Code.ROUTER_MISMATCH, src, routerBlocks.getFirst().span(), "moe `%s` has a router but no routed experts",
                    moe.name().text());
            reporter.help(d, "add a `routed n x kind` group, or declare an all-shared block as an `ffn`");
        }

        List<Loss> losses = new ArrayList<>();
        boolean zeroCompute = groups.stream().anyMatch(g -> g.role() == ExpertGroup.Role.ROUTED && g.expert().zeroCompute());
        // A router that failed may well have been meant as top-p: do not add an entropy error to its own.
        boolean topP = routersFailed > 0 || routers.stream().anyMatch(r -> r.selection() instanceof Router.Selection.TopP);
        for (Value v : map.all("balance")) {
            loss(v, routed, zeroCompute, topP).ifPresent(losses::add);
        }
        return Optional.of(new Moe(display, groups, routers, losses));
    }

    private Optional<ExpertGroup> group(Value v, ExpertGroup.Role role, ModelConfig cfg) {
        String roleName = role == ExpertGroup.Role.ROUTED ? "routed" : "shared";
        if (v instanceof Value.Invalid) {
            return Optional.empty();
        }
        if (!(v instanceof Value.Repeat rep)) {
            var d = reporter.error(Code.WRONG_TYPE, v, "`%s` must be an expert group `n x kind`, found %s", roleName, v.kind());
            reporter.help(d, "e.g. `" + roleName + " 8 x swiglu(hidden: 256)`");
            return Optional.empty();
        }
        OptionalInt count = read.positive(rep.count(), roleName + " count");
        Value spec = rep.spec();
        Optional<Expert> expert;
        boolean gate = false;
        if (spec instanceof Value.Word w && EXPERT_WORDS.contains(w.name())) {
            expert = Optional.of(switch (w.name()) {
                case "zero" -> new Expert.Zero();
                case "copy" -> new Expert.Copy();
                default -> new Expert.Constant();
            });
            if (role == ExpertGroup.Role.SHARED) {
                var d = reporter.error(Code.ZERO_COMPUTE_SHARED, spec, "`%s` experts cannot be shared", w.name());
                reporter.help(d, "declare them `routed`: the router decides which tokens take them");
            }
        } else if (spec instanceof Value.Call c && EXPERT_CALLS.contains(c.callee())) {
            expert = special(c, cfg);
        } else if (spec instanceof Value.Call c && !ACTIVATIONS.containsKey(c.callee())) {
            Set<String> words = new LinkedHashSet<>(EXPERT_WORDS);
            words.addAll(EXPERT_CALLS);
            words.addAll(ACTIVATIONS.keySet());
            Value.Word callee = new Value.Word(c.calleeSpan(), c.source(), c.callee());
            unknownName(callee, "expert kind", ffns.keySet(), words);
            return Optional.empty();
        } else {
            if (spec instanceof Value.Word w && !ACTIVATIONS.containsKey(w.name()) && !ffns.containsKey(w.name()) && !moes.containsKey(w.name())) {
                Set<String> words = new LinkedHashSet<>(EXPERT_WORDS);
                words.addAll(EXPERT_CALLS);
                words.addAll(ACTIVATIONS.keySet());
                unknownName(w, "expert kind", ffns.keySet(), words);
                return Optional.empty();
            }
            Optional<FfnSpec> f = ffnSpec(spec, "an expert", true);
            expert = f.map(s -> new Expert.FeedForward(s.ffn()));
            if (f.isPresent() && f.get().gate()) {
                if (role == ExpertGroup.Role.ROUTED) {
                    var d = reporter.error(Code.GATE_ON_ROUTED, spec.source(), f.get().gateSpan().orElse(spec.span()),
                            "`gate: sigmoid` applies to shared experts only");
                    reporter.note(d, "routed experts are already weighted by the router");
                } else {
                    gate = true;
                }
            }
        }
        if (count.isEmpty() || expert.isEmpty()) {
            return Optional.empty();
        }
        return Optional.of(new ExpertGroup(role, count.getAsInt(), expert.get(), gate));
    }

    private Optional<Expert> special(Value.Call c, ModelConfig cfg) {
        switch (c.callee()) {
            case "latent" -> {
                Optional<Args> args = read.args(c, List.of("rank", "ffn"), List.of(), List.of());
                if (args.isEmpty()) {
                    return Optional.empty();
                }
                OptionalInt rank = read.positive(args.get().required("rank"), "rank");
                Optional<FfnSpec> ffn = ffnSpec(args.get().required("ffn"), "latent ffn", false);
                if (rank.isEmpty() || ffn.isEmpty()) {
                    return Optional.empty();
                }
                if (cfg != null && rank.getAsInt() >= cfg.dim()) {
                    var d = reporter.error(Code.LATENT_RANK, args.get().required("rank"), "latent rank %d is not below `dim` (%d)",
                            rank.getAsInt(), cfg.dim());
                    reporter.help(d, "the shared projection must compress: choose a rank below " + cfg.dim());
                }
                return Optional.of(new Expert.Latent(rank.getAsInt(), ffn.get().ffn()));
            }
            case "lora" -> {
                Optional<Args> args = read.args(c, List.of("rank", "base"), List.of("alpha"), List.of());
                if (args.isEmpty()) {
                    return Optional.empty();
                }
                OptionalInt rank = read.positive(args.get().required("rank"), "rank");
                OptionalDouble alpha = args.get().get("alpha").map(v -> read.positiveNumber(v, "alpha"))
                        .orElse(rank.isPresent() ? OptionalDouble.of(rank.getAsInt()) : OptionalDouble.empty());
                Optional<FfnSpec> base = ffnSpec(args.get().required("base"), "lora base", false);
                if (rank.isEmpty() || alpha.isEmpty() || base.isEmpty()) {
                    return Optional.empty();
                }
                int smallest = cfg == null ? base.get().ffn().hidden() : Math.min(cfg.dim(), base.get().ffn().hidden());
                if (rank.getAsInt() >= smallest) {
                    var d = reporter.error(Code.LORA_RANK, args.get().required("rank"), "LoRA rank %d is not below %d, the smallest side of the base projections",
                            rank.getAsInt(), smallest);
                    reporter.help(d, "LoRA ranks are small: 4 to 64 are usual");
                }
                return Optional.of(new Expert.Lora(rank.getAsInt(), alpha.getAsDouble(), base.get().ffn()));
            }
            default -> {
                Optional<Args> args = read.args(c, List.of(), List.of("heads", "head_dim", "shared_kv"), List.of("heads"));
                if (args.isEmpty()) {
                    return Optional.empty();
                }
                OptionalInt heads = args.get().get("heads").map(v -> read.positive(v, "heads")).orElse(OptionalInt.of(1));
                OptionalInt headDim = args.get().get("head_dim").map(v -> read.positive(v, "head_dim"))
                        .orElse(cfg == null ? OptionalInt.of(1) : OptionalInt.of(cfg.headDim()));
                boolean sharedKv = args.get().get("shared_kv").flatMap(v -> read.bool(v, "shared_kv")).orElse(false);
                if (heads.isEmpty() || headDim.isEmpty()) {
                    return Optional.empty();
                }
                return Optional.of(new Expert.Attention(heads.getAsInt(), headDim.getAsInt(), sharedKv));
            }
        }
    }

    // ---- routers ----

    private Optional<Router> router(RouterBlock rb, Map<String, Value> bound, SourceFile src, int routed, boolean hasRouted) {
        int before = reporter.errorCount();
        String block = rb.name().map(n -> "router `" + n.text() + "`").orElse("router");
        SettingMap map = read.settings(rb.settings(), block, ROUTER_KEYS, Set.of(), s -> evaluator.eval(s.value(), src, bound));
        Span where = rb.span().line() == rb.span().endLine() ? rb.span() : new Span(rb.span().line(), rb.span().column(), rb.span().line(), rb.span().column() + 6);
        Router.Score score = map.get("score").flatMap(v -> read.word(v, "score", Map.of("softmax", Router.Score.SOFTMAX, "sigmoid", Router.Score.SIGMOID)))
                .orElse(Router.Score.SOFTMAX);
        Router.Order order = map.get("order").flatMap(v -> read.word(v, "order",
                Map.of("softmax_then_topk", Router.Order.SOFTMAX_THEN_TOPK, "topk_then_softmax", Router.Order.TOPK_THEN_SOFTMAX)))
                .orElse(Router.Order.SOFTMAX_THEN_TOPK);
        if (score == Router.Score.SIGMOID && map.has("order")) {
            conflict(src, map.keySpan("order").orElseThrow(), "`order` applies to softmax scores; this router uses `score sigmoid`");
        }
        String mode = map.get("mode").flatMap(v -> read.word(v, "mode", Map.of("token_choice", "token_choice", "expert_choice", "expert_choice",
                "soft", "soft"))).orElse("token_choice");
        Router.Capacity capacity = new Router.Capacity.Dropless();
        if (map.get("capacity").isPresent()) {
            Optional<Value.Call> c = read.callOf(map.get("capacity").get(), "capacity", List.of("dropless", "factor"));
            if (c.isPresent() && c.get().callee().equals("factor")) {
                Optional<Args> args = read.args(c.get(), List.of("factor"), List.of("drop"), List.of("factor"));
                OptionalDouble factor = args.map(a -> read.positiveNumber(a.required("factor"), "capacity factor")).orElse(OptionalDouble.empty());
                Router.DropPolicy drop = args.flatMap(a -> a.get("drop")).flatMap(v -> read.word(v, "drop", Map.of("probability",
                        Router.DropPolicy.PROBABILITY, "position", Router.DropPolicy.POSITION, "random", Router.DropPolicy.RANDOM)))
                        .orElse(Router.DropPolicy.PROBABILITY);
                if (factor.isPresent()) {
                    capacity = new Router.Capacity.Factor(factor.getAsDouble(), drop);
                }
            } else if (c.isPresent()) {
                read.args(c.get(), List.of(), List.of(), List.of());
            }
        }
        Router.Selection selection = null;
        OptionalInt topK = map.get("top_k").map(v -> read.positive(v, "top_k")).orElse(OptionalInt.empty());
        OptionalDouble topP = OptionalDouble.empty();
        if (map.get("top_p").isPresent()) {
            Value v = map.get("top_p").get();
            if (v instanceof Value.Num n) {
                if (n.value() <= 0 || n.value() > 1) {
                    var d = reporter.error(Code.TOP_P_RANGE, v, "`top_p` must be in (0, 1], found %s", v.show());
                    reporter.note(d, "top-p keeps the fewest experts whose probabilities sum to at least p");
                } else {
                    topP = OptionalDouble.of(n.value());
                }
            } else {
                read.wrongType(v, "top_p", "a number");
            }
        }
        OptionalInt maxK = map.get("max_k").map(v -> read.positive(v, "max_k")).orElse(OptionalInt.empty());
        switch (mode) {
            case "token_choice" -> {
                if (map.has("top_k") && map.has("top_p")) {
                    conflict(src, map.keySpan("top_p").orElseThrow(), "`top_k` and `top_p` exclude each other");
                } else if (!map.has("top_k") && !map.has("top_p") && !map.hadUnknown()) {
                    var d = reporter.error(Code.MISSING_SETTING, src, where, "%s needs `top_k` or `top_p`", block);
                    reporter.help(d, "add `top_k 2`, or `top_p 0.5` with `max_k 4`");
                }
                if (map.has("max_k") && !map.has("top_p")) {
                    conflict(src, map.keySpan("max_k").orElseThrow(), "`max_k` bounds top-p routing; this router has no `top_p`");
                }
                if (topK.isPresent() && hasRouted && routed > 0 && topK.getAsInt() > routed) {
                    var d = reporter.error(Code.TOP_K_EXCEEDS_EXPERTS, map.get("top_k").get(), "`top_k` (%d) exceeds the routed experts (%d)",
                            topK.getAsInt(), routed);
                    reporter.help(d, "set `top_k` to at most " + routed + ", or declare more routed experts");
                } else if (topK.isPresent()) {
                    selection = new Router.Selection.TopK(topK.getAsInt());
                }
                if (map.has("top_p") && !map.has("max_k")) {
                    var d = reporter.error(Code.MAX_K, src, map.keySpan("top_p").orElseThrow(), "`top_p` needs `max_k`");
                    reporter.help(d, "add `max_k n`: the most experts one token may take");
                } else if (maxK.isPresent() && hasRouted && routed > 0 && maxK.getAsInt() > routed) {
                    reporter.error(Code.MAX_K, map.get("max_k").get(), "`max_k` (%d) exceeds the routed experts (%d)", maxK.getAsInt(), routed);
                } else if (topP.isPresent() && maxK.isPresent()) {
                    selection = new Router.Selection.TopP(topP.getAsDouble(), maxK.getAsInt());
                }
            }
            case "expert_choice" -> {
                for (String k : List.of("top_k", "top_p", "max_k")) {
                    if (map.has(k)) {
                        conflict(src, map.keySpan(k).orElseThrow(), "`" + k + "` does not apply to expert-choice routing (experts pick tokens)");
                    }
                }
                if (capacity instanceof Router.Capacity.Factor f) {
                    selection = new Router.Selection.ExpertChoice(f.factor());
                } else {
                    var d = reporter.error(Code.MISSING_SETTING, src, map.keySpan("mode").orElse(where), "expert-choice routing needs `capacity factor(c)`");
                    reporter.note(d, "each expert takes c * tokens / experts tokens");
                }
            }
            default -> {
                for (String k : List.of("top_k", "top_p", "max_k")) {
                    if (map.has(k)) {
                        conflict(src, map.keySpan(k).orElseThrow(), "`" + k + "` does not apply to soft routing (every expert is used)");
                    }
                }
                selection = new Router.Selection.Soft();
            }
        }
        boolean normalize = map.get("normalize").flatMap(v -> read.bool(v, "normalize")).orElse(false);
        double scale = map.get("scale").map(v -> read.positiveNumber(v, "scale")).orElse(OptionalDouble.of(1)).orElse(1);
        Optional<Router.ExpertBias> bias = Optional.empty();
        if (map.get("bias").isPresent()) {
            Optional<Value.Call> c = read.callOf(map.get("bias").get(), "bias", List.of("aux_free"));
            Optional<Args> args = c.flatMap(call -> read.args(call, List.of(), List.of("rate"), List.of("rate")));
            if (args.isPresent()) {
                OptionalDouble rate = args.get().get("rate").map(v -> read.positiveNumber(v, "rate")).orElse(OptionalDouble.of(1e-3));
                if (rate.isPresent()) {
                    bias = Optional.of(new Router.ExpertBias(rate.getAsDouble()));
                }
            }
        }
        Optional<Router.GroupLimit> limit = Optional.empty();
        Optional<Integer> quota = Optional.empty();
        if (map.get("groups").isPresent()) {
            Value gv = map.get("groups").get();
            Optional<Value.Call> c = read.callOf(gv, "groups", List.of("limited", "quota"));
            if (routed <= 0) {
                // the expert count is unknown or invalid (reported): nothing to check the groups against
            } else if (c.isPresent() && c.get().callee().equals("limited")) {
                Optional<Args> args = read.args(c.get(), List.of("groups", "top"), List.of(), List.of());
                OptionalInt g = args.map(a -> read.positive(a.required("groups"), "groups")).orElse(OptionalInt.empty());
                OptionalInt t = args.map(a -> read.positive(a.required("top"), "top")).orElse(OptionalInt.empty());
                if (g.isPresent() && t.isPresent()) {
                    if (routed % g.getAsInt() != 0) {
                        var d = reporter.error(Code.GROUP_LIMIT, gv, "%d groups do not divide the %d routed experts", g.getAsInt(), routed);
                        reporter.help(d, "choose a number of groups that divides " + routed);
                    } else if (t.getAsInt() > g.getAsInt()) {
                        reporter.error(Code.GROUP_LIMIT, gv, "cannot keep the top %d of %d groups", t.getAsInt(), g.getAsInt());
                    } else if (selection instanceof Router.Selection.TopK k && t.getAsInt() * (routed / g.getAsInt()) < k.k()) {
                        var d = reporter.error(Code.GROUP_LIMIT, gv, "the top %d groups hold %d experts, fewer than `top_k` (%d)", t.getAsInt(),
                                t.getAsInt() * (routed / g.getAsInt()), k.k());
                        reporter.help(d, "keep more groups, or lower `top_k`");
                    } else {
                        limit = Optional.of(new Router.GroupLimit(g.getAsInt(), t.getAsInt()));
                    }
                }
            } else if (c.isPresent()) {
                Optional<Args> args = read.args(c.get(), List.of("groups"), List.of(), List.of("groups"));
                OptionalInt g = args.map(a -> read.positive(a.required("groups"), "groups")).orElse(OptionalInt.empty());
                if (g.isPresent()) {
                    int k = selection instanceof Router.Selection.TopK t ? t.k() : -1;
                    if (routed % g.getAsInt() != 0) {
                        var d = reporter.error(Code.QUOTA_DOES_NOT_DIVIDE, gv, "%d groups do not divide the %d routed experts", g.getAsInt(), routed);
                        reporter.note(d, "grouped experts split the routed experts into equal groups");
                    } else if (k < 0) {
                        conflict(src, map.keySpan("groups").orElseThrow(), "`groups quota(...)` needs `top_k` routing");
                    } else if (k % g.getAsInt() != 0) {
                        var d = reporter.error(Code.QUOTA_DOES_NOT_DIVIDE, gv, "%d groups do not divide `top_k` (%d)", g.getAsInt(), k);
                        reporter.note(d, "each group must take the same share top_k / groups of every token's experts");
                    } else {
                        quota = Optional.of(g.getAsInt());
                    }
                }
            }
        }
        double jitter = map.get("jitter").map(v -> read.number(v, "jitter", 0, false, 1, true)).orElse(OptionalDouble.of(0)).orElse(0);
        Optional<Router.Temperature> temperature = Optional.empty();
        Optional<String> activation = map.get("activation").flatMap(v -> read.word(v, "activation", Map.of("tanh", "tanh", "sigmoid", "sigmoid",
                "none", "none"))).filter(a -> !a.equals("none"));
        if (map.get("temperature").isPresent()) {
            Value tv = map.get("temperature").get();
            if (tv instanceof Value.Num) {
                OptionalDouble t = read.positiveNumber(tv, "temperature");
                if (t.isPresent()) {
                    temperature = Optional.of(new Router.Temperature(t.getAsDouble(), t.getAsDouble(), 0, activation));
                }
            } else {
                Optional<Value.Call> c = read.callOf(tv, "temperature", List.of("anneal"));
                Optional<Args> args = c.flatMap(call -> read.args(call, List.of("start", "end", "steps"), List.of(), List.of()));
                if (args.isPresent()) {
                    OptionalDouble s = read.positiveNumber(args.get().required("start"), "start");
                    OptionalDouble e = read.positiveNumber(args.get().required("end"), "end");
                    Optional<Long> steps = read.longInteger(args.get().required("steps"), "steps", 1);
                    if (s.isPresent() && e.isPresent() && steps.isPresent()) {
                        temperature = Optional.of(new Router.Temperature(s.getAsDouble(), e.getAsDouble(), steps.get(), activation));
                    }
                }
            }
        } else if (activation.isPresent()) {
            temperature = Optional.of(new Router.Temperature(1, 1, 0, activation));
        }
        boolean gatingResidual = map.get("gating_residual").flatMap(v -> read.bool(v, "gating_residual")).orElse(false);
        Optional<Integer> recurrent = Optional.empty();
        if (map.get("recurrent").isPresent()) {
            Optional<Value.Call> c = read.callOf(map.get("recurrent").get(), "recurrent", List.of("gru"));
            Optional<Args> args = c.flatMap(call -> read.args(call, List.of("width"), List.of(), List.of("width")));
            OptionalInt w = args.map(a -> read.positive(a.required("width"), "width")).orElse(OptionalInt.empty());
            if (w.isPresent()) {
                recurrent = Optional.of(w.getAsInt());
            }
        }
        boolean pregate = map.get("pregate").flatMap(v -> read.bool(v, "pregate")).orElse(false);
        if (pregate && gatingResidual) {
            conflict(src, map.keySpan("gating_residual").orElseThrow(), "a pre-gating router reads only the embeddings; it cannot take a gating residual");
        }
        if (pregate && map.has("recurrent")) {
            conflict(src, map.keySpan("recurrent").orElseThrow(), "a pre-gating router reads only the embeddings; it cannot carry a recurrent state");
        }
        if (reporter.errorCount() != before || selection == null) {
            return Optional.empty();
        }
        return Optional.of(new Router(rb.name().map(n -> n.text()), score, order, selection, normalize, scale, bias, limit, quota, jitter,
                temperature, gatingResidual, recurrent, pregate, capacity));
    }

    private void conflict(SourceFile src, Span span, String message) {
        reporter.error(Code.CONFLICTING_ROUTER, src, span, "%s", message);
    }

    // ---- balancing losses ----

    private Optional<Loss> loss(Value v, int routed, boolean zeroCompute, boolean topP) {
        Optional<Value.Call> c = read.callOf(v, "balance", List.of("aux", "z_loss", "entropy", "device"));
        if (c.isEmpty()) {
            return Optional.empty();
        }
        Value.Call call = c.get();
        switch (call.callee()) {
            case "aux" -> {
                Optional<Args> args = read.args(call, List.of("coef"), List.of("scope", "tau"), List.of("coef"));
                if (args.isEmpty()) {
                    return Optional.empty();
                }
                OptionalDouble coef = read.nonNegative(args.get().required("coef"), "coef");
                Optional<Loss.Scope> scope = args.get().get("scope").map(s -> read.word(s, "scope", Map.of("micro_batch", Loss.Scope.MICRO_BATCH,
                        "sequence", Loss.Scope.SEQUENCE, "global_batch", Loss.Scope.GLOBAL_BATCH))).orElse(Optional.of(Loss.Scope.MICRO_BATCH));
                OptionalDouble tau = args.get().get("tau").map(t -> read.nonNegative(t, "tau")).orElse(OptionalDouble.of(1));
                if (args.get().has("tau") && !zeroCompute) {
                    var d = reporter.error(Code.TAU_WITHOUT_ZERO_COMPUTE, args.get().required("tau"),
                            "`tau` weights zero-compute experts, and this moe routes to none");
                    reporter.help(d, "remove `tau`, or add `routed 1 x zero` (or copy/constant) experts");
                }
                if (coef.isEmpty() || scope.isEmpty() || tau.isEmpty()) {
                    return Optional.empty();
                }
                return Optional.of(new Loss.Aux(coef.getAsDouble(), scope.get(), tau.getAsDouble()));
            }
            case "z_loss", "entropy" -> {
                Optional<Args> args = read.args(call, List.of("coef"), List.of(), List.of("coef"));
                OptionalDouble coef = args.map(a -> read.nonNegative(a.required("coef"), "coef")).orElse(OptionalDouble.empty());
                if (call.callee().equals("entropy") && !topP) {
                    var d = reporter.error(Code.ENTROPY_WITHOUT_TOP_P, call, "the entropy loss needs a top-p router");
                    reporter.note(d, "it lowers the number of experts top-p selects; top-k always selects k");
                }
                if (coef.isEmpty()) {
                    return Optional.empty();
                }
                return Optional.of(call.callee().equals("z_loss") ? new Loss.ZLoss(coef.getAsDouble()) : new Loss.Entropy(coef.getAsDouble()));
            }
            default -> {
                Optional<Args> args = read.args(call, List.of("coef", "groups"), List.of(), List.of("coef"));
                if (args.isEmpty()) {
                    return Optional.empty();
                }
                OptionalDouble coef = read.nonNegative(args.get().required("coef"), "coef");
                OptionalInt groups = read.positive(args.get().required("groups"), "groups");
                if (groups.isPresent() && routed > 0 && routed % groups.getAsInt() != 0) {
                    var d = reporter.error(Code.DEVICE_GROUPS, args.get().required("groups"), "%d device groups do not divide the %d routed experts",
                            groups.getAsInt(), routed);
                    reporter.help(d, "choose a number of groups that divides " + routed);
                    return Optional.empty();
                }
                if (coef.isEmpty() || groups.isEmpty()) {
                    return Optional.empty();
                }
                return Optional.of(new Loss.Device(coef.getAsDouble(), groups.getAsInt()));
            }
        }
    }

    // ---- the layer plan ----

    private List<Layer> layers(LayerPlan plan, ModelConfig cfg, SourceFile src) {
        int before = reporter.errorCount();
        Value countValue = evaluator.eval(plan.count(), src);
        OptionalInt count = read.integer(countValue, "layers", 1, 100_000);
        if (count.isEmpty()) {
            return List.of();
        }
        int n = count.getAsInt();
        LayerEntry[] owner = new LayerEntry[n];
        List<LayerEntry> restEntries = new ArrayList<>();
        int beforeSelectors = reporter.errorCount();
        for (LayerEntry e : plan.entries()) {
            if (e.selector() instanceof Selector.Rest) {
                if (!restEntries.isEmpty()) {
                    var d = reporter.error(Code.LAYER_COVERED_TWICE, src, e.selector().span(), "`rest` appears twice in the layer plan");
                    reporter.note(d, "first at line " + restEntries.getFirst().span().line());
                }
                restEntries.add(e);
                continue;
            }
            List<Integer> selected = select(e.selector(), n, src);
            List<Integer> twice = new ArrayList<>();
            LayerEntry firstOwner = null;
            for (int i : selected) {
                if (owner[i] != null) {
                    twice.add(i);
                    firstOwner = firstOwner == null ? owner[i] : firstOwner;
                } else {
                    owner[i] = e;
                }
            }
            if (!twice.isEmpty()) {
                var d = reporter.error(Code.LAYER_COVERED_TWICE, src, e.selector().span(), "layer%s %s already covered", twice.size() > 1 ? "s" : "",
                        ranges(twice) + (twice.size() > 1 ? " are" : " is"));
                reporter.note(d, "by the entry at line " + firstOwner.span().line());
            }
        }
        if (!restEntries.isEmpty()) {
            for (int i = 0; i < n; i++) {
                if (owner[i] == null) {
                    owner[i] = restEntries.getFirst();
                }
            }
        }
        List<Integer> missing = new ArrayList<>();
        for (int i = 0; i < n; i++) {
            if (owner[i] == null) {
                missing.add(i);
            }
        }
        // A selector that failed covers nothing: the gap it leaves is not a second mistake.
        if (!missing.isEmpty() && reporter.errorCount() == beforeSelectors) {
            var d = reporter.error(Code.LAYER_NOT_COVERED, src, new Span(plan.span().line(), plan.span().column(), plan.span().line(),
                    plan.span().column() + 6), "layer%s %s of %d not covered by the plan", missing.size() > 1 ? "s" : "", ranges(missing), n);
            reporter.help(d, "add an entry for them, or end the plan with `rest: attention, <ffn>`");
        }
        // Blocks, once per entry.
        Map<LayerEntry, Optional<Block>> blocks = new LinkedHashMap<>();
        for (LayerEntry e : plan.entries()) {
            blocks.put(e, block(e, cfg, src));
        }
        // Gating residuals and recurrent routers read the previous MoE layer.
        boolean seenMoe = false;
        boolean seenMixerMoe = false;
        Set<LayerEntry> reported = new LinkedHashSet<>();
        for (int i = 0; i < n; i++) {
            if (owner[i] == null || blocks.get(owner[i]).isEmpty()) {
                continue;
            }
            Block b = blocks.get(owner[i]).get();
            Optional<Moe> ffnMoe = ffnMoe(b);
            Optional<Moe> mixerMoe = mixerMoe(b);
            for (var pair : List.of(Map.entry(ffnMoe, seenMoe), Map.entry(mixerMoe, seenMixerMoe))) {
                if (pair.getKey().isEmpty() || pair.getValue()) {
                    continue;
                }
                for (Router r : pair.getKey().get().routers()) {
                    if ((r.gatingResidual() || r.recurrentWidth().isPresent()) && reported.add(owner[i])) {
                        String what = r.gatingResidual() ? "a gating residual" : "a recurrent router";
                        var d = reporter.error(Code.NO_PREDECESSOR, src, owner[i].body().getLast().span(),
                                "layer %d is the first MoE layer, but moe `%s` has %s, which reads the previous MoE layer", i,
                                pair.getKey().get().name(), what);
                        reporter.help(d, "use a router without it on layer " + i + ", e.g. through a parameter of the moe definition");
                    }
                }
            }
            seenMoe |= ffnMoe.isPresent();
            seenMixerMoe |= mixerMoe.isPresent();
        }
        // A block can be empty without a new error here: its definition's error was reported where it
        // is declared (an invalid ffn, a cyclic constant).
        if (reporter.errorCount() != before || blocks.values().stream().anyMatch(Optional::isEmpty)) {
            return List.of();
        }
        List<Layer> layers = new ArrayList<>();
        for (int i = 0; i < n; i++) {
            layers.add(new Layer(i, blocks.get(owner[i]).orElseThrow(), 0, Count.ZERO, Count.ZERO));
        }
        return layers;
    }

    static Optional<Moe> ffnMoe(Block b) {
        return b.ffnMoe();
    }

    static Optional<Moe> mixerMoe(Block b) {
        Block.Part mixer = switch (b) {
            case Block.PreNorm p -> p.mixer();
            case Block.Parallel p -> p.mixer();
            case Block.Shortcut s -> s.mixer();
            case Block.Residual r -> r.mixer();
        };
        return mixer instanceof Block.Part.MoePart m ? Optional.of(m.moe()) : Optional.empty();
    }

    private List<Integer> select(Selector s, int n, SourceFile src) {
        List<Integer> out = new ArrayList<>();
        switch (s) {
            case Selector.All a -> {
                for (int i = 0; i < n; i++) {
                    out.add(i);
                }
            }
            case Selector.Rest r -> { }
            case Selector.First f -> {
                OptionalInt k = read.integer(evaluator.eval(f.count(), src), "first", 1, Integer.MAX_VALUE);
                if (k.isPresent() && k.getAsInt() > n) {
                    reporter.error(Code.LAYER_OUT_OF_RANGE, src, f.span(), "`first %d` selects more than the %d layers", k.getAsInt(), n);
                } else if (k.isPresent()) {
                    for (int i = 0; i < k.getAsInt(); i++) {
                        out.add(i);
                    }
                }
            }
            case Selector.Every e -> {
                OptionalInt step = read.integer(evaluator.eval(e.step(), src), "every", 1, Integer.MAX_VALUE);
                if (step.isEmpty()) {
                    break;
                }
                OptionalInt start = e.start().isPresent() ? read.integer(evaluator.eval(e.start().get(), src), "from", 0, Integer.MAX_VALUE)
                        : OptionalInt.of(step.getAsInt() - 1);
                if (start.isEmpty()) {
                    break;
                }
                if (start.getAsInt() >= n) {
                    reporter.error(Code.LAYER_OUT_OF_RANGE, src, e.span(), "`every` starts at layer %d; the layers are 0..%d", start.getAsInt(), n - 1);
                    break;
                }
                for (int i = start.getAsInt(); i < n; i += step.getAsInt()) {
                    out.add(i);
                }
            }
            case Selector.Index ix -> {
                OptionalInt from = read.integer(evaluator.eval(ix.from(), src), "layer index", 0, Integer.MAX_VALUE);
                OptionalInt to = ix.to().isPresent() ? read.integer(evaluator.eval(ix.to().get(), src), "layer index", 0, Integer.MAX_VALUE) : from;
                if (from.isEmpty() || to.isEmpty()) {
                    break;
                }
                if (from.getAsInt() > to.getAsInt()) {
                    reporter.error(Code.LAYER_OUT_OF_RANGE, src, ix.span(), "range %d..%d runs backwards", from.getAsInt(), to.getAsInt());
                } else if (to.getAsInt() >= n) {
                    var d = reporter.error(Code.LAYER_OUT_OF_RANGE, src, ix.span(), "layer %d is out of range: the layers are 0..%d", to.getAsInt(), n - 1);
                    reporter.note(d, "`layers " + n + "` declares " + n + " layers; ranges are inclusive");
                } else {
                    for (int i = from.getAsInt(); i <= to.getAsInt(); i++) {
                        out.add(i);
                    }
                }
            }
        }
        return out;
    }

    static String ranges(List<Integer> indices) {
        List<String> parts = new ArrayList<>();
        int i = 0;
        while (i < indices.size()) {
            int j = i;
            while (j + 1 < indices.size() && indices.get(j + 1) == indices.get(j) + 1) {
                j++;
            }
            parts.add(i == j ? Integer.toString(indices.get(i)) : indices.get(i) + ".." + indices.get(j));
            i = j + 1;
        }
        return String.join(", ", parts);
    }

    private static final String BLOCK_FORMS = "`mixer, ffn`, `parallel(mixer, ffn)`, `shortcut(mixer, dense, moe)` or `residual(mixer, dense, moe)`";

    private Optional<Block> block(LayerEntry e, ModelConfig cfg, SourceFile src) {
        List<Value> body = e.body().stream().map(x -> evaluator.eval(x, src)).toList();
        if (body.size() == 2) {
            Optional<Block.Part> mixer = mixerPart(body.get(0), cfg);
            Optional<Block.Part> ffn = ffnPart(body.get(1), cfg);
            return mixer.isPresent() && ffn.isPresent() ? Optional.of(new Block.PreNorm(mixer.get(), ffn.get())) : Optional.empty();
        }
        if (body.size() == 1 && body.getFirst() instanceof Value.Call c && Set.of("parallel", "shortcut", "residual").contains(c.callee())) {
            if (c.args().stream().anyMatch(a -> a.name().isPresent())) {
                reporter.error(Code.WRONG_BLOCK, c, "`%s(...)` takes its parts without names", c.callee());
                return Optional.empty();
            }
            List<Value> parts = c.args().stream().map(Value.Arg::value).toList();
            int expected = c.callee().equals("parallel") ? 2 : 3;
            if (parts.size() != expected) {
                var d = reporter.error(Code.WRONG_BLOCK, c, "`%s` takes %d parts, found %d", c.callee(), expected, parts.size());
                reporter.help(d, "the forms are " + BLOCK_FORMS);
                return Optional.empty();
            }
            Optional<Block.Part> mixer = mixerPart(parts.get(0), cfg);
            if (c.callee().equals("parallel")) {
                Optional<Block.Part> ffn = ffnPart(parts.get(1), cfg);
                return mixer.isPresent() && ffn.isPresent() ? Optional.of(new Block.Parallel(mixer.get(), ffn.get())) : Optional.empty();
            }
            Optional<Block.Part> dense = ffnPart(parts.get(1), cfg);
            Optional<Block.Part> moe = ffnPart(parts.get(2), cfg);
            if (dense.isPresent() && !(dense.get() instanceof Block.Part.Dense)) {
                reporter.error(Code.WRONG_BLOCK, parts.get(1), "the second part of `%s` must be a dense ffn, found an moe", c.callee());
                return Optional.empty();
            }
            if (moe.isPresent() && !(moe.get() instanceof Block.Part.MoePart)) {
                reporter.error(Code.WRONG_BLOCK, parts.get(2), "the third part of `%s` must be an moe, found a dense ffn", c.callee());
                return Optional.empty();
            }
            if (mixer.isEmpty() || dense.isEmpty() || moe.isEmpty()) {
                return Optional.empty();
            }
            Ffn d = ((Block.Part.Dense) dense.get()).ffn();
            Moe m = ((Block.Part.MoePart) moe.get()).moe();
            if (c.callee().equals("shortcut")) {
                return Optional.of(new Block.Shortcut(mixer.get(), d, m));
            }
            if (!m.routers().stream().allMatch(r -> r.isTopK(1))) {
                var diag = reporter.error(Code.RESIDUAL_NEEDS_TOP1, parts.get(2), "residual MoE needs a top-1 router; moe `%s` is not top-1", m.name());
                reporter.help(diag, "set `top_k 1` in its router");
                return Optional.empty();
            }
            return Optional.of(new Block.Residual(mixer.get(), d, m));
        }
        Value first = body.getFirst();
        var d = reporter.error(Code.WRONG_BLOCK, src, first.span().to(body.getLast().span()), "a layer is %s", BLOCK_FORMS);
        reporter.note(d, "found " + body.size() + " part" + (body.size() == 1 ? "" : "s") + ": " + String.join(", ", body.stream().map(Value::show).toList()));
        return Optional.empty();
    }

    private Optional<Block.Part> mixerPart(Value v, ModelConfig cfg) {
        if (v instanceof Value.Word w && w.name().equals("attention")) {
            return Optional.of(new Block.Part.Attention());
        }
        Optional<Block.Part> part = reference(v, cfg, "the mixer slot");
        if (part.isEmpty()) {
            return part;
        }
        if (part.get() instanceof Block.Part.MoePart m && m.moe().isAttention()) {
            return part;
        }
        var d = reporter.error(Code.WRONG_BLOCK, v, "the first slot of a layer is its mixer: `attention` or an MoE of attention experts, found %s",
                part.get() instanceof Block.Part.Dense ? "the feed-forward network `" + v.show() + "`" : "the feed-forward moe `" + v.show() + "`");
        reporter.help(d, "write `attention, " + v.show() + "`");
        return Optional.empty();
    }

    private Optional<Block.Part> ffnPart(Value v, ModelConfig cfg) {
        if (v instanceof Value.Word w && w.name().equals("attention")) {
            reporter.error(Code.WRONG_BLOCK, v, "`attention` stands in the mixer slot; this slot takes an ffn or a feed-forward moe");
            return Optional.empty();
        }
        Optional<Block.Part> part = reference(v, cfg, "the ffn slot");
        if (part.isPresent() && part.get() instanceof Block.Part.MoePart m && m.moe().isAttention()) {
            reporter.error(Code.WRONG_BLOCK, v, "moe `%s` has attention experts; it belongs in the mixer slot", m.moe().name());
            return Optional.empty();
        }
        return part;
    }

    /** A definition named in a layer: an ffn, an moe (with arguments when it has parameters), or an inline ffn. */
    private Optional<Block.Part> reference(Value v, ModelConfig cfg, String slot) {
        String name = v instanceof Value.Word w ? w.name() : v instanceof Value.Call c ? c.callee() : null;
        if (v instanceof Value.Invalid) {
            return Optional.empty();
        }
        if (name == null) {
            reporter.error(Code.WRONG_BLOCK, v, "%s takes a name, found %s", slot, v.kind());
            return Optional.empty();
        }
        if (ACTIVATIONS.containsKey(name)) {
            return ffnSpec(v, "an inline ffn", false).map(f -> new Block.Part.Dense(f.ffn().toString(), f.ffn()));
        }
        if (ffns.containsKey(name)) {
            if (v instanceof Value.Call) {
                reporter.error(Code.BAD_ARGUMENTS, v, "ffn `%s` takes no arguments", name);
                return Optional.empty();
            }
            return ffnOf(ffns.get(name)).map(f -> new Block.Part.Dense(name, f));
        }
        if (moes.containsKey(name)) {
            Optional<Value.Call> call = v instanceof Value.Call c ? Optional.of(c) : Optional.empty();
            return instantiate(moes.get(name), call, cfg, v.span(), v.source()).map(Block.Part.MoePart::new);
        }
        Set<String> all = new LinkedHashSet<>(ffns.keySet());
        all.addAll(moes.keySet());
        all.addAll(ACTIVATIONS.keySet());
        all.add("attention");
        var d = reporter.error(Code.UNKNOWN_NAME, v, "unknown ffn or moe `%s`", name);
        Reporter.closest(name, all).ifPresent(c -> reporter.help(d, "did you mean `" + c + "`?"));
        return Optional.empty();
    }

    // ---- costs ----

    private Model build(String name, ModelConfig cfg, List<Layer> plain) {
        Costs costs = new Costs(cfg);
        Costs.Cost total = costs.embedding();
        List<Layer> layers = new ArrayList<>();
        Moe previous = null;
        Moe previousMixer = null;
        for (Layer l : plain) {
            Costs.Cost c = costs.layer(l.index(), l.block(), previous, previousMixer);
            layers.add(new Layer(l.index(), l.block(), c.params(), c.active(), c.flops()));
            total = total.plus(c);
            previous = ffnMoe(l.block()).orElse(previous);
            previousMixer = mixerMoe(l.block()).orElse(previousMixer);
        }
        total = total.plus(costs.head());
        return new Model(name, cfg, layers, costs.params, total.params(), total.active(), total.flops());
    }
}
