package dev.moe.codegen;

import com.palantir.javapoet.ArrayTypeName;
import com.palantir.javapoet.ClassName;
import com.palantir.javapoet.FieldSpec;
import com.palantir.javapoet.MethodSpec;
import com.palantir.javapoet.ParameterizedTypeName;
import com.palantir.javapoet.TypeName;
import com.palantir.javapoet.TypeSpec;
import dev.moe.compiler.ir.Block;
import dev.moe.compiler.ir.Expert;
import dev.moe.compiler.ir.ExpertGroup;
import dev.moe.compiler.ir.Ffn;
import dev.moe.compiler.ir.Layer;
import dev.moe.compiler.ir.Loss;
import dev.moe.compiler.ir.Model;
import dev.moe.compiler.ir.ModelConfig;
import dev.moe.compiler.ir.Moe;
import dev.moe.compiler.ir.Param;
import dev.moe.compiler.ir.Router;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.stream.Stream;
import javax.lang.model.element.Modifier;

/**
 * One model class: parameters as fields, a forward pass and a backward pass written out layer by
 * layer as calls of the runtime's primitive ops, and per MoE a router specialised to its score
 * function, k, normalisation and scaling, with its own backward.
 *
 * <p>The generated class keeps what the backward pass needs in per-layer state objects, so one
 * forward is followed by at most one backward.
 */
final class ModelGenerator {
    static final ClassName BACKEND = ClassName.get("dev.moe.runtime", "Backend");
    static final ClassName PARAMETER = ClassName.get("dev.moe.runtime", "Parameter");
    static final ClassName TRAINABLE = ClassName.get("dev.moe.runtime", "TrainableModel");
    static final ClassName ELEMENTWISE = ClassName.get("dev.moe.runtime", "Elementwise");
    static final ClassName ROUTING = ClassName.get("dev.moe.runtime", "Routing");
    static final ClassName INIT = ClassName.get("dev.moe.runtime", "Init");
    static final ClassName ACTIVATION = ClassName.get("dev.moe.runtime", "Activation");
    static final ClassName LIST = ClassName.get(List.class);
    static final ClassName ARRAY_LIST = ClassName.get(ArrayList.class);
    static final ClassName ARRAYS = ClassName.get(java.util.Arrays.class);

    private final Model model;
    private final ModelConfig cfg;
    private final String className;
    private final TypeSpec.Builder type;
    /** Distinct MoEs by name: their router methods are generated once. */
    private final Map<String, Moe> moes = new LinkedHashMap<>();
    private final List<Integer> moeLayers = new ArrayList<>();
    /** The routed slots of each MoE layer, by parameter prefix ({@code layers.3.moe}). */
    private final Map<String, Slots> slotsByPrefix = new LinkedHashMap<>();
    /** Gating residuals: MoE layer → the previous MoE layer whose logits its router adds. */
    private final Map<Integer, Integer> residualFrom = new LinkedHashMap<>();
    /** Static constants already added (distinct MoEs of several layers share them). */
    private final java.util.Set<String> constantsAdded = new java.util.HashSet<>();
    /** Expert-choice routers: their MoE's routed experts (each token ranks them all). */
    private final Map<Router, Integer> expertsOfRouter = new java.util.IdentityHashMap<>();
    /** MoLE latent experts, by MoE parameter prefix: the group's shared down-projection and its rank. */
    private final Map<String, LatentGroup> latentByPrefix = new LinkedHashMap<>();

    record LatentGroup(String downField, int rank) {}

    /** MoLA LoRA experts, by MoE parameter prefix: the group's frozen base FFN's parameter prefix and the expert. */
    private final Map<String, List<LoraGroup>> loraByPrefix = new LinkedHashMap<>();

    /** A LoRA group: its frozen base's prefix, its first routed slot, its expert count and its place among the MoE's LoRA groups. */
    record LoraGroup(String base, Expert.Lora lora, int firstSlot, int count, int index) {}

    /** MoEs of routed groups of different kinds or shapes: the groups that run on their own weights, not packed. */
    private final Map<String, List<OwnGroup>> mixedByPrefix = new LinkedHashMap<>();

    /**
     * One routed group run on its own: a latent group's down-projection (null for an FFN group), the
     * width its experts read (the rank, or DIM), its experts' FFN, dispatch keys {@code firstKey ..}
     * (consecutive), routed slots {@code firstSlot ..}, and its index among the MoE's own groups (its
     * state, {@code ownGroups[index]}).
     */
    record OwnGroup(String downField, int width, Ffn ffn, int firstKey, int count, int firstSlot, int index) {}

    /** The width of the GRU that recurrent routers share (RMoE), or 0 when no router is recurrent. */
    private int gruWidth = 0;

    private int maxHidden = 1;
    private int maxExpertRows = 1;
    /** The widest FFN intermediate per token: a dense hidden size, or k times an expert's. */
    private int maxActivationPerRow = 1;

    ModelGenerator(Model model) {
        this.model = model;
        this.cfg = model.config();
        this.className = Names.type(model.name());
        this.type = TypeSpec.classBuilder(className).addModifiers(Modifier.PUBLIC, Modifier.FINAL).addSuperinterface(TRAINABLE);
    }

    String className() {
        return className;
    }

    TypeSpec.Builder generate() {
        checkSupported();
        type.addJavadoc("$L: $L layers, dim $L, $L heads ($L key/value), vocab $L, context $L.\n\n", model.name(), model.layers().size(), cfg.dim(),
                cfg.heads(), cfg.kvHeads(), cfg.vocab(), cfg.context());
        type.addJavadoc("<pre>\n$L</pre>\n", dataFlow());
        type.addJavadoc("\n<p>Use it through {@link dev.moe.runtime.train.Session}: {@code Session.create($L::new)}\n"
                + "builds it on the CPU backend and initialises it; the session trains it (a step or a loop),\n"
                + "evaluates it, generates text, saves and loads checkpoints and reads the expert loads.\n"
                + "Its public methods are those of {@link $T}.\n", className, TRAINABLE);
        constants();
        parameters();
        stateClasses();
        fields();
        constructor();
        accessors();
        initialize();
        forward();
        backward();
        for (Layer l : model.layers()) {
            layerForward(l);
            layerBackward(l);
        }
        for (Moe m : moes.values()) {
            router(m);
        }
        helpers();
        if (cfg.mla().isPresent()) {
            latentHelpers();
        }
        inference();
        mask();
        stepHooks();
        return type;
    }

    // ---- what is supported ----

    private void checkSupported() {
        if (cfg.mla().isPresent() && cfg.mla().get().vDim() > cfg.headDim()) {
            throw new UnsupportedFeatureException("model `" + model.name() + "`: code generation does not support latent attention with v_dim ("
                    + cfg.mla().get().vDim() + ") above nope_dim + rope_dim (" + cfg.headDim() + ")");
        }
        for (Layer l : model.layers()) {
            switch (l.block()) {
                case Block.PreNorm p -> {
                    mixerSupported(p.mixer(), l);
                    ffnSupported(p.ffn(), l);
                }
                case Block.Parallel p -> {
                    mixerSupported(p.mixer(), l);
                    ffnSupported(p.ffn(), l);
                }
                case Block.Shortcut s -> {
                    mixerSupported(s.mixer(), l);
                    ffnSupported(new Block.Part.Dense("dense", s.dense()), l);
                    ffnSupported(new Block.Part.MoePart(s.moe()), l);
                }
                case Block.Residual r -> {
                    mixerSupported(r.mixer(), l);
                    ffnSupported(new Block.Part.Dense("dense", r.dense()), l);
                    ffnSupported(new Block.Part.MoePart(r.moe()), l);
                }
            }
        }
    }

    private void mixerSupported(Block.Part p, Layer l) {
        if (p instanceof Block.Part.Attention) {
            return;
        }
        Moe m = ((Block.Part.MoePart) p).moe();
        if (!(l.block() instanceof Block.PreNorm) && !(l.block() instanceof Block.Parallel)) {
            unsupported(l, "attention experts in " + (l.block() instanceof Block.Shortcut ? "shortcut" : "residual") + " blocks");
        }
        if (!m.groups().stream().allMatch(g -> g.expert() instanceof Expert.Attention)) {
            unsupported(l, "zero-computation experts among attention experts");
        }
        if (m.routers().size() > 1) {
            unsupported(l, "several named gates over attention experts");
        }
        for (ExpertGroup g : m.groups()) {
            int rotary = cfg.position().rotaryDims(((Expert.Attention) g.expert()).headDim());
            if (rotary % 2 != 0) {
                unsupported(l, "attention experts whose head_dim gives an odd number (" + rotary + ") of rotary dimensions");
            }
        }
        Router r = m.routers().getFirst();
        if (!(r.selection() instanceof Router.Selection.TopK || r.selection() instanceof Router.Selection.TopP
                || r.selection() instanceof Router.Selection.Soft)) {
            unsupported(l, "expert-choice routing over attention experts");
        }
        if (r.selection() instanceof Router.Selection.TopP && (r.score() != Router.Score.SOFTMAX || r.order() != Router.Order.SOFTMAX_THEN_TOPK)) {
            unsupported(l, "top-p routing over other than softmax probabilities");
        }
        if (r.bias().isPresent() || r.groupLimit().isPresent() || r.quotaGroups().isPresent() || r.jitter() != 0 || r.gatingResidual()
                || r.recurrentWidth().isPresent() || r.pregate() || !(r.capacity() instanceof Router.Capacity.Dropless)) {
            unsupported(l, "attention experts with an expert bias, groups, jitter, a gating residual, a recurrent state, pre-gating or a capacity factor");
        }
        for (Loss loss : m.losses()) {
            if (!(loss instanceof Loss.Aux) && !(loss instanceof Loss.ZLoss) && !(loss instanceof Loss.Entropy)) {
                unsupported(l, "the " + loss.getClass().getSimpleName().toLowerCase(Locale.ROOT) + " loss");
            }
        }
        expertsOfRouter.put(r, m.routedExperts());
        moes.putIfAbsent(m.name(), m);
        attnMoeLayers.add(l.index());
    }

    /** Layers whose mixer is an MoE of attention experts (JetMoE, BAM); their state is {@code amoeN}. */
    private final List<Integer> attnMoeLayers = new ArrayList<>();

    /** A routed MoE's state: the layer, the state's field, the MoE. In layer order, a mixer MoE before its layer's ffn MoE. */
    record RoutedState(int layer, String state, Moe moe) {}

    private List<RoutedState> routedStates() {
        List<RoutedState> all = new ArrayList<>();
        for (Layer l : model.layers()) {
            if (attnMoeLayers.contains(l.index())) {
                all.add(new RoutedState(l.index(), "amoe" + l.index(), mixerMoe(l).orElseThrow()));
            }
            if (moeLayers.contains(l.index())) {
                all.add(new RoutedState(l.index(), "moe" + l.index(), moeOfLayer(l.index())));
            }
        }
        return all;
    }

    static java.util.Optional<Moe> mixerMoe(Layer l) {
        Block.Part mixer = switch (l.block()) {
            case Block.PreNorm p -> p.mixer();
            case Block.Parallel p -> p.mixer();
            case Block.Residual r -> r.mixer();
            case Block.Shortcut sc -> sc.mixer();
        };
        return mixer instanceof Block.Part.MoePart m ? java.util.Optional.of(m.moe()) : java.util.Optional.empty();
    }

    private void ffnSupported(Block.Part p, Layer l) {
        switch (p) {
            case Block.Part.Dense d -> {
                maxHidden = Math.max(maxHidden, d.ffn().hidden());
                maxActivationPerRow = Math.max(maxActivationPerRow, d.ffn().hidden());
            }
            case Block.Part.MoePart mp -> {
                Moe m = mp.moe();
                Ffn routed = null;
                String prefix = "layers." + l.index() + ".moe";
                int groupIndex = -1;
                int slotsBefore = 0; // routed slots of the groups before this one
                boolean anyRoutedFfn = false;
                boolean anyLatent = false;
                for (ExpertGroup g : m.groups()) {
                    groupIndex++;
                    int firstSlot = slotsBefore;
                    if (g.role() == ExpertGroup.Role.ROUTED) {
                        slotsBefore += g.count();
                    }
                    if (g.role() == ExpertGroup.Role.ROUTED && g.expert().zeroCompute()) {
                        continue; // zero, copy and constant experts: loops over their slots
                    }
                    if (g.role() == ExpertGroup.Role.ROUTED && g.expert() instanceof Expert.Lora lo) {
                        // MoLA: each LoRA group over its own frozen base FFN; beside other computing experts (or another
                        // LoRA group) each runs after them, on its own keys and its own buffers
                        List<LoraGroup> loras = loraByPrefix.computeIfAbsent(prefix, x -> new ArrayList<>());
                        loras.add(new LoraGroup(prefix + ".group" + groupIndex + ".base", lo, firstSlot, g.count(), loras.size()));
                        maxHidden = Math.max(maxHidden, lo.base().hidden());
                        maxActivationPerRow = Math.max(maxActivationPerRow, lo.base().hidden());
                        if (!mixedGroups(m)) {
                            routed = lo.base();
                        }
                        continue;
                    }
                    if (g.role() == ExpertGroup.Role.ROUTED && g.expert() instanceof Expert.Latent lat) {
                        // MoLE: a latent group's down-projection is shared by all its experts; beside FFN experts or
                        // other latent groups, each latent group runs after the packed FFN experts with its own weights
                        anyLatent = true;
                        if (!mixedGroups(m)) {
                            latentByPrefix.put(prefix, new LatentGroup(Names.field(prefix + ".group" + groupIndex + ".latent_down"), lat.rank()));
                            routed = lat.ffn();
                        }
                        maxHidden = Math.max(maxHidden, lat.ffn().hidden());
                        maxActivationPerRow = Math.max(maxActivationPerRow, lat.ffn().hidden());
                        continue;
                    }
                    if (!(g.expert() instanceof Expert.FeedForward f)) {
                        unsupported(l, g.role() == ExpertGroup.Role.SHARED && g.expert().zeroCompute()
                                ? "shared " + g.expert().describe() + " experts"
                                : g.expert().describe().replaceAll("\\(.*", "") + " experts");
                        return;
                    }
                    maxHidden = Math.max(maxHidden, f.ffn().hidden());
                    maxActivationPerRow = Math.max(maxActivationPerRow, f.ffn().hidden());
                    if (g.role() == ExpertGroup.Role.ROUTED) {
                        anyRoutedFfn = true;
                        if (routed == null) {
                            routed = f.ffn(); // the first FFN group's shape runs packed; other shapes run on their own
                        }
                    }
                }
                Router r = m.routers().getFirst();
                if (m.routers().size() > 1) {
                    for (Router other : m.routers()) {
                        // gates may differ in their score function, order, normalisation, scale, temperature and token-choice
                        // selection (top-k or top-p; one router method each)
                        boolean bothTokenChoice = tokenChoice(r) && tokenChoice(other);
                        // ... and in their jitter (each sequence's rows get the noise of its gate) and, between top-k gates,
                        // their capacity (each gate its own capacity over the tokens of the sequences it routes)
                        boolean bothTopK = r.selection() instanceof Router.Selection.TopK && other.selection() instanceof Router.Selection.TopK;
                        if (!new Router(r.name(), r.score(), r.order(), bothTokenChoice ? r.selection() : other.selection(), r.normalize(), r.scale(), r.bias(),
                                other.groupLimit(), other.quotaGroups(), r.jitter(), r.temperature(), other.gatingResidual(),
                                other.recurrentWidth(), other.pregate(), bothTopK ? r.capacity() : other.capacity()).equals(r)) {
                            unsupported(l, "named gates that differ in more than their weights, score, order, normalisation, scale, temperature, "
                                    + "expert bias, jitter and (between top-k gates) capacity (gate `" + other.name().orElse("") + "`)");
                        }
                        // each gate's own expert bias, balanced over the sequences it routes
                        if (other.bias().isPresent() && !(other.selection() instanceof Router.Selection.TopK)) {
                            unsupported(l, "an expert bias on a named gate of other than top-k routing (gate `" + other.name().orElse("") + "`)");
                        }
                        if (gatesDiffer(m) && !tokenChoice(r)) {
                            unsupported(l, "named gates that differ in their score, order, normalisation, scale or temperature with other than top-k or top-p routing");
                        }
                        if (other.selection() instanceof Router.Selection.TopP && (other.score() != Router.Score.SOFTMAX
                                || other.order() != Router.Order.SOFTMAX_THEN_TOPK)) {
                            unsupported(l, "top-p routing over other than softmax probabilities (gate `" + other.name().orElse("") + "`)");
                        }
                    }
                    int most = m.routers().stream().mapToInt(ModelGenerator::gateSlots).max().orElse(0);
                    boolean anyTopP = m.routers().stream().anyMatch(g -> g.selection() instanceof Router.Selection.TopP);
                    boolean anyTopK = m.routers().stream().anyMatch(g -> g.selection() instanceof Router.Selection.TopK);
                    if (m.routers().stream().anyMatch(g -> tokenChoice(g) && gateSlots(g) != most) || anyTopP && anyTopK) {
                        // gates of different k (or max_k), or top-k beside top-p: every token has slots for the largest; a gate
                        // that takes fewer leaves the rest unused, as top-p does
                        if (m.routers().stream().anyMatch(g -> !(g.capacity() instanceof Router.Capacity.Dropless)) || r.groupLimit().isPresent()
                                || r.quotaGroups().isPresent()) {
                            unsupported(l, "named gates of different top_k or top-p with a capacity factor or expert groups");
                        }
                        for (Router g : m.routers()) {
                            variableK.put(g, most);
                        }
                    }
                    if (r.gatingResidual() || r.recurrentWidth().isPresent() || r.pregate()) {
                        unsupported(l, "several named gates with a gating residual, a recurrent state or pre-gating");
                    }
                }
                if (r.selection() instanceof Router.Selection.TopP) {
                    if (r.score() != Router.Score.SOFTMAX || r.order() != Router.Order.SOFTMAX_THEN_TOPK) {
                        unsupported(l, "top-p routing over other than softmax probabilities");
                    }
                    if (r.bias().isPresent() || r.groupLimit().isPresent()) {
                        unsupported(l, "top-p routing with an expert bias or group limits");
                    }
                } else if (r.selection() instanceof Router.Selection.ExpertChoice) {
                    if (r.score() != Router.Score.SOFTMAX || r.order() != Router.Order.SOFTMAX_THEN_TOPK || r.bias().isPresent()
                            || r.groupLimit().isPresent() || r.quotaGroups().isPresent() || r.temperature().isPresent()) {
                        unsupported(l, "expert-choice routing over other than plain softmax probabilities");
                    }
                    expertsOfRouter.put(r, m.routedExperts());
                } else if (r.selection() instanceof Router.Selection.Soft) {
                    // soft routing: every expert, weighted by its score (top-k with k = all experts)
                    if (!(r.capacity() instanceof Router.Capacity.Dropless) || r.groupLimit().isPresent() || r.quotaGroups().isPresent()) {
                        unsupported(l, "soft routing with a capacity factor or expert groups");
                    }
                    expertsOfRouter.put(r, m.routedExperts());
                } else if (!(r.selection() instanceof Router.Selection.TopK)) {
                    unsupported(l, "routing other than token-choice top-k or top-p");
                    return;
                }
                int perToken = slotsPerToken(r);
                if (r.recurrentWidth().isPresent()) {
                    if (gruWidth != 0 && gruWidth != r.recurrentWidth().get()) {
                        unsupported(l, "recurrent routers of different widths in one model");
                    }
                    gruWidth = r.recurrentWidth().get();
                }
                        if (!(r.capacity() instanceof Router.Capacity.Dropless) && !(r.selection() instanceof Router.Selection.TopK)
                        && !(r.selection() instanceof Router.Selection.ExpertChoice)) {
                    unsupported(l, "capacity factors (token dropping) with other than top-k routing");
                }
                for (Loss loss : m.losses()) {
                    if (!(loss instanceof Loss.Aux) && !(loss instanceof Loss.ZLoss) && !(loss instanceof Loss.Entropy)) {
                        unsupported(l, "the " + loss.getClass().getSimpleName().toLowerCase(Locale.ROOT) + " loss");
                    }
                }
                Slots slots = Slots.of(m);
                slotsByPrefix.put(prefix, slots);
                if (mixedGroups(m)) {
                    List<OwnGroup> groups = new ArrayList<>();
                    int slot = 0;
                    int gi = 0;
                    for (ExpertGroup g : m.groups()) {
                        if (g.role() == ExpertGroup.Role.ROUTED) {
                            if (g.expert() instanceof Expert.Latent lat) {
                                groups.add(new OwnGroup(Names.field(prefix + ".group" + gi + ".latent_down"), lat.rank(), lat.ffn(), slots.key()[slot],
                                        g.count(), slot, groups.size()));
                                maxActivationPerRow = Math.max(maxActivationPerRow, perToken * lat.ffn().hidden());
                            } else if (g.expert() instanceof Expert.FeedForward ff && !slots.isPacked(slot)) {
                                groups.add(new OwnGroup(null, cfg.dim(), ff.ffn(), slots.key()[slot], g.count(), slot, groups.size()));
                                maxActivationPerRow = Math.max(maxActivationPerRow, perToken * ff.ffn().hidden());
                            }
                            slot += g.count();
                        }
                        gi++;
                    }
                    mixedByPrefix.put(prefix, groups);
                }
                if (model.params().stream().anyMatch(q -> q.name().equals(prefix + ".router.residual"))) {
                    residualFrom.put(l.index(), moeLayers.getLast());
                }
                moes.putIfAbsent(m.name(), m);
                moeLayers.add(l.index());
                maxExpertRows = Math.max(maxExpertRows, perToken);
                if (routed != null) {
                    maxActivationPerRow = Math.max(maxActivationPerRow, perToken * routed.hidden());
                }
            }
            case Block.Part.Attention a -> unsupported(l, "attention in the ffn slot");
        }
    }

    /**
     * The routed slots of one MoE, numbered over the routed groups in declaration order (the IR's
     * {@code experts.j}). FFN experts are packed, in slot order, for the grouped matmuls; the
     * dispatch sorts slots by key: FFN experts first (key = packed index), then the
     * zero-computation experts (zero, copy, constant) in slot order. When latent experts sit
     * beside FFN experts, or several latent groups or FFN groups of different shapes share one MoE,
     * only the FFN experts of the first routed FFN group's shape are packed; the other groups'
     * experts follow them, group by group, each group run with its own weights.
     *
     * @param experts each slot's expert
     * @param key each slot's dispatch key
     * @param ffn how many computing experts (their keys are 0 .. ffn - 1)
     * @param packed how many of those run as one grouped matmul (keys 0 .. packed - 1)
     */
    record Slots(List<Expert> experts, int[] key, int ffn, int packed) {
        static Slots of(Moe m) {
            List<Expert> experts = new ArrayList<>();
            for (ExpertGroup g : m.groups()) {
                if (g.role() == ExpertGroup.Role.ROUTED) {
                    for (int i = 0; i < g.count(); i++) {
                        experts.add(g.expert());
                    }
                }
            }
            boolean mixed = mixedGroups(m);
            Ffn first = firstRoutedFfn(m);
            java.util.function.Predicate<Expert> packs = x -> computes(x) && (!mixed || x instanceof Expert.FeedForward f && f.ffn().equals(first));
            int ffn = (int) experts.stream().filter(Slots::computes).count();
            int packed = (int) experts.stream().filter(packs).count();
            int[] key = new int[experts.size()];
            int nextPacked = 0;
            int nextOwn = packed;
            int nextOther = ffn;
            for (int j = 0; j < key.length; j++) {
                Expert x = experts.get(j);
                key[j] = !computes(x) ? nextOther++ : packs.test(x) ? nextPacked++ : nextOwn++;
            }
            return new Slots(experts, key, ffn, packed);
        }

        /** Whether slot j's weights are views of the packed arrays. */
        boolean isPacked(int slot) {
            return key[slot] < packed;
        }

        /** FFN and latent experts: those run as grouped matmuls. */
        static boolean computes(Expert x) {
            return x instanceof Expert.FeedForward || x instanceof Expert.Latent || x instanceof Expert.Lora;
        }

        /** True when the keys are the slots themselves (the FFN experts come first). */
        boolean identity() {
            for (int j = 0; j < key.length; j++) {
                if (key[j] != j) {
                    return false;
                }
            }
            return true;
        }

        boolean zeroCompute() {
            return ffn < experts.size();
        }

        boolean hasConstant() {
            return experts.stream().anyMatch(x -> x instanceof Expert.Constant);
        }
    }

    private void unsupported(Layer l, String what) {
        throw new UnsupportedFeatureException("model `" + model.name() + "`, layer " + l.index() + ": code generation does not support " + what
                + " yet (the checker accepts it; the generator will follow)");
    }

    private String dataFlow() {
        StringBuilder b = new StringBuilder();
        b.append("tokens ─▶ embed ─▶ stream (the residual stream, [rows, DIM])\n");
        for (Layer l : model.layers()) {
            String norm = cfg.norm().kind() == ModelConfig.NormKind.RMS ? "rms" : "ln";
            switch (l.block()) {
                case Block.PreNorm p -> b.append(String.format(Locale.ROOT, "layer %2d: stream += %s(%s(stream)); stream += %s(%s(stream))%n", l.index(),
                        partName(p.mixer()), norm, partName(p.ffn()), norm));
                case Block.Parallel p -> b.append(String.format(Locale.ROOT, "layer %2d: h = %s(stream); stream += %s(h) + %s(h)%n", l.index(), norm,
                        partName(p.mixer()), partName(p.ffn())));
                case Block.Residual r -> b.append(String.format(Locale.ROOT,
                        "layer %2d: stream += attention(%s(stream)); h = %s(stream); [c1, c2] = softmax(mix · h); stream += c1 · moe %s(h) + c2 · %s(h)%n",
                        l.index(), norm, norm, r.moe().name(), r.dense()));
                case Block.Shortcut sc -> b.append(String.format(Locale.ROOT,
                        "layer %2d: stream += attention(%s(stream)); h = %s(stream); stream += %s(h); stream += attention(%s(stream)); stream += %s(%s(stream)) + moe %s(h)%n",
                        l.index(), norm, norm, sc.dense(), norm, sc.dense(), norm, sc.moe().name()));
                default -> { }
            }
        }
        b.append("stream ─▶ norm ─▶ head ─▶ logits ─▶ cross-entropy (+ balancing losses)\n");
        return b.toString();
    }

    private static String partName(Block.Part p) {
        return switch (p) {
            case Block.Part.Dense d -> d.name();
            case Block.Part.MoePart m -> "moe " + m.moe().name();
            case Block.Part.Attention a -> "attention";
        };
    }

    // ---- constants and parameters ----

    private void constants() {
        intConstant("VOCAB", cfg.vocab(), "Tokens in the vocabulary: the embedding's rows and the logits' width.");
        intConstant("CONTEXT", cfg.context(), "The longest sequence the model is declared for.");
        intConstant("DIM", cfg.dim(), "Width of the hidden state (d_model).");
        intConstant("HEADS", cfg.heads(), "Query heads per attention layer.");
        intConstant("KV_HEADS", cfg.kvHeads(), "Key/value heads per attention layer (grouped-query attention when fewer than HEADS).");
        intConstant("HEAD_DIM", cfg.headDim(), "Width of one attention head.");
        intConstant("Q_DIM", cfg.heads() * cfg.headDim(), "Width of the query projection: HEADS * HEAD_DIM.");
        intConstant("KV_DIM", cfg.kvHeads() * cfg.headDim(), "Width of the key and value projections: KV_HEADS * HEAD_DIM.");
        intConstant("ROTARY_DIMS", cfg.mla().isPresent() ? (rope() ? cfg.mla().get().ropeDim() : 0) : cfg.position().rotaryDims(cfg.headDim()),
                "Dimensions of each head that RoPE rotates (0: no RoPE).");
        if (cfg.mla().isPresent()) {
            ModelConfig.Mla m = cfg.mla().get();
            intConstant("Q_RANK", m.qRank(), "Latent attention: rank of the query's down-projection (0: a direct query projection).");
            intConstant("KV_RANK", m.kvRank(), "Latent attention: rank of the key/value latent.");
            intConstant("NOPE_DIM", m.nopeDim(), "Latent attention: query/key dimensions per head without RoPE.");
            intConstant("ROPE_DIM", m.ropeDim(), "Latent attention: rotary dimensions per head, first in each head; one rotary key serves all heads.");
            intConstant("V_DIM", m.vDim(), "Latent attention: value dimensions per head.");
            intConstant("KVB_DIM", cfg.heads() * (m.nopeDim() + m.vDim()), "Latent attention: width of kv_b's output, per head NOPE_DIM keys then V_DIM values.");
            intConstant("VO_DIM", cfg.heads() * m.vDim(), "Latent attention: width of the heads' values, o's input: HEADS * V_DIM.");
            type.addField(FieldSpec.builder(TypeName.FLOAT, "MLA_EPS", Modifier.STATIC, Modifier.FINAL).initializer("$Lf", floatLiteral(m.eps()))
                    .build());
        }
        intConstant("WINDOW", cfg.slidingWindow(), "Sliding attention window in positions (0: none).");
        intConstant("LAYERS", model.layers().size(), "Number of layers.");
        type.addField(FieldSpec.builder(TypeName.FLOAT, "EPS", Modifier.STATIC, Modifier.FINAL).initializer("$Lf", floatLiteral(cfg.norm().eps()))
                .build());
        type.addField(FieldSpec.builder(TypeName.FLOAT, "THETA", Modifier.STATIC, Modifier.FINAL)
                .initializer("$Lf", floatLiteral(cfg.position().theta())).build());
        type.addField(FieldSpec.builder(TypeName.BOOLEAN, "CAUSAL", Modifier.STATIC, Modifier.FINAL).initializer("$L", cfg.causal()).build());
    }

    private void intConstant(String name, int value, String doc) {
        type.addField(FieldSpec.builder(TypeName.INT, name, Modifier.PUBLIC, Modifier.STATIC, Modifier.FINAL).addJavadoc("$L\n", doc)
                .initializer("$L", value).build());
    }

    static String floatLiteral(double v) {
        float f = (float) v;
        String s = Float.toString(f);
        return s.contains("E") ? s.replace("E", "e") : s;
    }

    /** Packed expert weights of one MoE layer: [experts, out, in] for each projection. */
    record Packed(String field, int experts, int out, int in) {}

    private final Map<String, Packed> packed = new LinkedHashMap<>();

    private static final java.util.regex.Pattern EXPERT_PARAM = java.util.regex.Pattern.compile("(layers\\.\\d+\\.moe)\\.experts\\.(\\d+)\\.(gate|up|down)");

    private void parameters() {
        for (Param p : model.params()) {
            var m = EXPERT_PARAM.matcher(p.name());
            if (m.matches() && slotsByPrefix.get(m.group(1)).isPacked(Integer.parseInt(m.group(2)))) {
                String field = Names.field(m.group(1) + ".experts." + m.group(3));
                Packed old = packed.get(field);
                // packed by key: the FFN experts' order among themselves
                int experts = slotsByPrefix.get(m.group(1)).key()[Integer.parseInt(m.group(2))] + 1;
                packed.put(field, new Packed(field, Math.max(experts, old == null ? 0 : old.experts()), p.shape().get(0).intValue(),
                        p.shape().get(1).intValue()));
                continue;
            }
            String shape = String.join(", ", p.shape().stream().map(String::valueOf).toList());
            String factory = p.kind() == Param.Kind.BUFFER ? "buffer" : "of";
            type.addField(FieldSpec.builder(PARAMETER, Names.field(p.name()), Modifier.PRIVATE, Modifier.FINAL)
                    .addJavadoc("$L [$L]$L", p.name(), shape, p.kind() == Param.Kind.BUFFER ? " (buffer)" : "")
                    .initializer("$T.$L($S, $L)$L", PARAMETER, factory, p.name(), shape, p.kind() == Param.Kind.FROZEN ? ".withTrainable(false)" : "").build());
        }
        for (Packed p : packed.values()) {
            type.addField(FieldSpec.builder(float[].class, p.field(), Modifier.PRIVATE, Modifier.FINAL)
                    .addJavadoc("experts' projections, packed [$L, $L, $L]", p.experts(), p.out(), p.in())
                    .initializer("new float[$L]", (long) p.experts() * p.out() * p.in()).build());
            type.addField(FieldSpec.builder(float[].class, p.field() + "Grad", Modifier.PRIVATE, Modifier.FINAL)
                    .initializer("new float[$L]", (long) p.experts() * p.out() * p.in()).build());
        }
    }

    // ---- state kept between forward and backward ----

    private void stateClasses() {
        type.addType(TypeSpec.classBuilder("SubBlockState").addModifiers(Modifier.PRIVATE, Modifier.STATIC, Modifier.FINAL)
                .addJavadoc("What one sub-block (a norm and what follows it) keeps for the backward pass; arrays are [rows, ...].\n")
                .addField(float[].class, "input").addField(float[].class, "normed").addField(float[].class, "mean").addField(float[].class, "rstd")
                .addField(float[].class, "q").addField(float[].class, "k").addField(float[].class, "v")
                .addField(float[].class, "qRaw").addField(float[].class, "kRaw").addField(float[].class, "qRstd").addField(float[].class, "kRstd")
                .addField(float[].class, "att").addField(float[].class, "lse")
                .addField(float[].class, "gate").addField(float[].class, "up").addField(float[].class, "act")
                .addFields(cfg.mla().isEmpty() ? List.of() : Stream.of("qa", "qaNormed", "qaRstd", "ckv", "ckvNormed", "ckvRstd", "kpe", "kvb", "attV")
                        .map(f -> FieldSpec.builder(float[].class, f).build()).toList())
                .build());
        TypeSpec.Builder moeState = TypeSpec.classBuilder("MoeState").addModifiers(Modifier.PRIVATE, Modifier.STATIC, Modifier.FINAL)
                .addJavadoc("What an MoE layer keeps: routing of each token, its dispatch order, and the experts' intermediates.\n")
                .addField(float[].class, "logits").addField(float[].class, "probs").addField(float[].class, "lse")
                .addField(int[].class, "selected").addField(float[].class, "weight").addField(float[].class, "chosenSum")
                .addField(int[].class, "order").addField(int[].class, "offsets").addField(int[].class, "tokenOfRow")
                .addField(float[].class, "weightOfRow").addField(float[].class, "xs").addField(float[].class, "gate").addField(float[].class, "up")
                .addField(float[].class, "act").addField(float[].class, "ys").addField(float[].class, "auxGrad")
                .addField(float[].class, "dWeight").addField(float[].class, "dScore").addField(float[].class, "dLogits")
                .addField(float[].class, "dRowWeight").addField(float[].class, "dys").addField(float[].class, "dxs")
                .addField(float[].class, "f").addField(float[].class, "p")
                .addField(int[].class, "counts").addField(long[].class, "stepCounts").addField(TypeName.LONG, "stepSlots")
                .addField(TypeName.DOUBLE, "balanceLoss")
                .addField(ArrayTypeName("SubBlockState"), "shared").addField(float[].class, "sharedOut").addField(float[].class, "sharedGate");
        moeState.addField(FieldSpec.builder(int[].class, "slotKey").addJavadoc("each slot's dispatch key (FFN experts first; a padding mask's dropped slots last)\n").build());
        if (anyCapacity()) {
            moeState.addField(FieldSpec.builder(boolean[].class, "dropped").addJavadoc("capacity factor: slots dropped (not dispatched, no weight)\n").build());
        }
        if (anyJitter()) {
            moeState.addField(FieldSpec.builder(float[].class, "noise").addJavadoc("router input jitter: the noise factors and the jittered input\n").build());
            moeState.addField(float[].class, "jittered").addField(float[].class, "dJittered").addField(TypeName.BOOLEAN, "jitterOn");
        }
        if (anyTopP()) {
            moeState.addField(FieldSpec.builder(int[].class, "kept").addJavadoc("top-p: experts each token took (its first slots; the rest route to no expert)\n").build());
        }
        if (!attnMoeLayers.isEmpty()) {
            moeState.addField(FieldSpec.builder(float[].class, "gateW")
                    .addJavadoc("attention experts: each token's weight per expert [rows, experts] (routed, then shared at 1), its gradient, and an expert's output gradient [rows, DIM]\n").build());
            moeState.addField(float[].class, "dGateW").addField(float[].class, "aDOut");
            moeState.addField(FieldSpec.builder(float[][].class, "aq").addJavadoc("per attention expert: q, k, v (shared-kv experts share theirs), attention, log-sum-exp [rows, ...], output of its tokens [its tokens, DIM]; and gradients\n").build());
            for (String f : List.of("ak", "av", "aAtt", "aLse", "aOut", "aDq", "aDk", "aDv", "aDAtt")) {
                moeState.addField(float[][].class, f);
            }
            moeState.addField(FieldSpec.builder(int[][].class, "aTok").addJavadoc("per attention expert: its tokens in order (routed to it; every kept token for a shared one), their count, and which rows they are\n").build());
            moeState.addField(int[].class, "aN").addField(boolean[][].class, "aIsQ");
            moeState.addField(FieldSpec.builder(float[].class, "aX").addJavadoc("scratch over one expert's tokens: their inputs [n, DIM], a q / attention row [n, width] and its gradient, their weights, their input gradient [n, DIM]\n").build());
            moeState.addField(float[].class, "aG").addField(float[].class, "aDG").addField(float[].class, "aGw").addField(float[].class, "aDx");
        }
        if (gruWidth > 0) {
            moeState.addField(FieldSpec.builder(float[].class, "gruU").addJavadoc("recurrent router: u = x · gru_inᵀ, the previous state, the GRU's reset and update gates, its candidate, its hidden part before the reset, and the new state [rows, width]\n").build());
            moeState.addField(float[].class, "gruPrev").addField(float[].class, "gruR").addField(float[].class, "gruZ").addField(float[].class, "gruN")
                    .addField(float[].class, "gruNh").addField(float[].class, "gruH");
        }
        if (anyGates()) {
            moeState.addField(FieldSpec.builder(int[].class, "gateOf").addJavadoc("several named gates: the gate each sequence of the last forward used\n").build());
            if (moes.values().stream().anyMatch(ModelGenerator::biasPerGate)) {
                moeState.addField(FieldSpec.builder(long[].class, "gateStepCounts")
                        .addJavadoc("named gates with an expert bias: this step's tokens per expert of each gate's sequences [gates, experts], and slots per gate\n").build());
                moeState.addField(long[].class, "gateStepSlots");
            }
        }
        if (anyAnneal()) {
            moeState.addField(FieldSpec.builder(TypeName.FLOAT, "temperature").addJavadoc("an annealed router's temperature in the last forward\n").build());
        }
        if (anyLogitTransform()) {
            moeState.addField(FieldSpec.builder(float[].class, "scaled").addJavadoc("act(logits) / temperature: what the router's scores read\n").build());
            moeState.addField(float[].class, "dScaled");
        }
        if (!latentByPrefix.isEmpty()) {
            moeState.addField(FieldSpec.builder(float[].class, "latent").addJavadoc("latent experts: the shared down-projection of each token [rows, rank], then its gradient\n").build());
            moeState.addField(float[].class, "dLatent");
        }
        if (!mixedByPrefix.isEmpty()) {
            type.addType(TypeSpec.classBuilder("GroupState").addModifiers(Modifier.PRIVATE, Modifier.STATIC, Modifier.FINAL)
                    .addJavadoc("One routed group run on its own weights: a latent group's z per token [rows, rank]; its dispatched rows' input\n"
                            + "(z or x), the FFN's pre-activations and activations (rows counted from the group's first), and gradient scratch.\n")
                    .addFields(Stream.of("z", "xs", "gate", "up", "act", "dxs", "dz").map(x -> FieldSpec.builder(float[].class, x).build()).toList())
                    .build());
            moeState.addField(FieldSpec.builder(ArrayTypeName.of(ClassName.bestGuess("GroupState")), "ownGroups")
                    .addJavadoc("the routed groups run on their own weights, in dispatch order\n").build());
        }
        if (!loraByPrefix.isEmpty()) {
            moeState.addField(FieldSpec.builder(float[].class, "loraA").addJavadoc("LoRA experts: per slot x·Aᵀ of gate, up, down [3, slots, rank]; B·(x·Aᵀ) of gate, up [2, slots, hidden]; the token's hidden row; the base's output; gradients\n").build());
            moeState.addField(float[].class, "loraB").addField(float[].class, "loraH").addField(float[].class, "loraBase").addField(float[].class, "dLoraA")
                    .addField(float[].class, "dLoraB");
            if (loraByPrefix.keySet().stream().anyMatch(mixedByPrefix::containsKey) || severalLoraGroups()) {
                moeState.addField(FieldSpec.builder(float[].class, "loraGate").addJavadoc("LoRA experts beside other computing experts: the base's own pre-activations and activations [rows, hidden]\n").build());
                moeState.addField(float[].class, "loraUp").addField(float[].class, "loraAct");
            }
            if (severalLoraGroups()) {
                moeState.addField(FieldSpec.builder(float[][][].class, "loraOfGroup")
                        .addJavadoc("several LoRA groups: each group's own buffers, [group][loraA, loraB, loraH, loraBase, dLoraA, dLoraB, loraGate, loraUp, loraAct]; the fields above point at the running group's\n").build());
            }
        }
        if (anyConstantExpert()) {
            moeState.addField(FieldSpec.builder(float[].class, "constantMix").addJavadoc("constant experts' [a1, a2] per dispatched row\n").build());
        }
        type.addType(moeState.build());
    }

    private boolean anyKeyedDispatch() {
        return slotsByPrefix.values().stream().anyMatch(sl -> !sl.identity());
    }

    private boolean anyConstantExpert() {
        return slotsByPrefix.values().stream().anyMatch(Slots::hasConstant);
    }

    private static TypeName ArrayTypeName(String nested) {
        return com.palantir.javapoet.ArrayTypeName.of(ClassName.bestGuess(nested));
    }

    private void fields() {
        type.addField(BACKEND, "backend", Modifier.PRIVATE, Modifier.FINAL);
        type.addField(ParameterizedTypeName.get(LIST, PARAMETER), "parameters", Modifier.PRIVATE, Modifier.FINAL);
        type.addField(TypeName.INT, "batch", Modifier.PRIVATE);
        type.addField(TypeName.INT, "seq", Modifier.PRIVATE);
        type.addField(TypeName.INT, "rows", Modifier.PRIVATE);
        type.addField(TypeName.INT, "capacity", Modifier.PRIVATE);
        type.addField(int[].class, "inputs", Modifier.PRIVATE);
        type.addField(FieldSpec.builder(boolean[].class, "keep", Modifier.PRIVATE).addJavadoc("The padding mask (see setMask), null when every token is kept.\n").build());
        type.addField(FieldSpec.builder(TypeName.INT, "keptRows", Modifier.PRIVATE).addJavadoc("The rows the mask keeps (all rows without one): the balancing statistics' denominator.\n").build());
        type.addField(FieldSpec.builder(TypeName.INT, "keptSequences", Modifier.PRIVATE).addJavadoc("The sequences that keep any token.\n").build());
        type.addField(float[].class, "keptLogits", Modifier.PRIVATE);
        type.addField(float[].class, "keptDLogits", Modifier.PRIVATE);
        type.addField(int[].class, "keptTargets", Modifier.PRIVATE);
        type.addField(TypeName.DOUBLE, "lastCrossEntropy", Modifier.PRIVATE);
        if (keepsStep()) {
            type.addField(FieldSpec.builder(TypeName.LONG, "step", Modifier.PRIVATE)
                    .addJavadoc("The optimiser step (set by the trainer through setStep, counted on in endStep): $L.\n",
                            anySeeded() && anyAnneal() ? "with the micro-batch and the layer, the seed of jitter noise and drop priorities; and where annealed routers' temperatures are"
                                    : anySeeded() ? "with the micro-batch and the layer, the jitter noise's seed" : "where annealed routers' temperatures are").build());
        }
        if (anySeeded()) {
            type.addField(FieldSpec.builder(TypeName.INT, "microBatch", Modifier.PRIVATE).addJavadoc("Training forwards since beginStep.\n").build());
        }
        if (gruWidth > 0) {
            type.addField(FieldSpec.builder(float[].class, "gruState", Modifier.PRIVATE)
                    .addJavadoc("RMoE: the routers' GRU state, carried from one recurrent MoE layer to the next [rows, $L]; its gradient; scratch\n", gruWidth).build());
            for (String f : List.of("dGruState", "gruGi", "gruGh", "gruDu", "gruDPrev")) {
                type.addField(float[].class, f, Modifier.PRIVATE);
            }
        }
        if (anyPregate()) {
            type.addField(FieldSpec.builder(float[].class, "embedded", Modifier.PRIVATE)
                    .addJavadoc("Read-ME: the embeddings, which every pre-gating router reads; their gradient from those routers\n").build());
            type.addField(float[].class, "dEmbedded", Modifier.PRIVATE);
        }
        if (anyGates()) {
            type.addField(FieldSpec.builder(ParameterizedTypeName.get(LIST, ClassName.get(String.class)), "domains", Modifier.PRIVATE)
                    .initializer("$T.of()", LIST)
                    .addJavadoc("The data domain (or task) of each sequence, set by the trainer: an MoE with named gates routes a sequence with the gate of that name.\n").build());
        }
        type.addField(FieldSpec.builder(TypeName.BOOLEAN, "counting", Modifier.PRIVATE).initializer("true")
                .addJavadoc("Training mode: expert loads count towards the step and jitter applies. False while evaluating and generating.\n").build());
        for (String f : List.of("stream", "tmp", "tmp2", "dx", "dNormed", "dAtt", "dq", "dk", "dv", "dqRaw", "dkRaw", "dAct", "dGate", "dUp", "dShared",
                "finalNormed", "finalInput", "finalMean", "finalRstd", "logits", "dLogits")) {
            type.addField(float[].class, f, Modifier.PRIVATE);
        }
        if (cfg.mla().isPresent()) {
            for (String f : List.of("dAttV", "dKvb", "dKpe", "dCkv", "dCkvNormed", "dQa", "dQaNormed")) {
                type.addField(float[].class, f, Modifier.PRIVATE);
            }
        }
        for (Layer l : model.layers()) {
            type.addField(FieldSpec.builder(ClassName.bestGuess("SubBlockState"), "mix" + l.index(), Modifier.PRIVATE, Modifier.FINAL)
                    .initializer("new SubBlockState()").build());
            if (!(l.block() instanceof Block.Parallel)) {
                type.addField(FieldSpec.builder(ClassName.bestGuess("SubBlockState"), "ffn" + l.index(), Modifier.PRIVATE, Modifier.FINAL)
                        .initializer("new SubBlockState()").build());
            }
            if (l.block() instanceof Block.Shortcut) {
                type.addField(FieldSpec.builder(ClassName.bestGuess("SubBlockState"), "mix" + l.index() + "b", Modifier.PRIVATE, Modifier.FINAL)
                        .addJavadoc("shortcut block: the second attention\n").initializer("new SubBlockState()").build());
                type.addField(FieldSpec.builder(ClassName.bestGuess("SubBlockState"), "ffn" + l.index() + "b", Modifier.PRIVATE, Modifier.FINAL)
                        .addJavadoc("shortcut block: the second dense FFN\n").initializer("new SubBlockState()").build());
                type.addField(FieldSpec.builder(float[].class, "shortcut" + l.index() + "Moe", Modifier.PRIVATE)
                        .addJavadoc("shortcut block: the MoE's output (added at the end of the block), then its gradient\n").build());
            }
            if (l.block() instanceof Block.Residual) {
                for (String f : List.of("Moe", "Dense", "Mix")) {
                    type.addField(FieldSpec.builder(float[].class, "residual" + l.index() + f, Modifier.PRIVATE)
                            .addJavadoc("$L", f.equals("Mix") ? "residual MoE: [c1, c2] per token\n"
                                    : "residual MoE: the " + f.toLowerCase(Locale.ROOT) + " output, then its gradient\n").build());
                }
            }
            if (attnMoeLayers.contains(l.index())) {
                Moe am = mixerMoe(l).orElseThrow();
                type.addField(FieldSpec.builder(ClassName.bestGuess("MoeState"), "amoe" + l.index(), Modifier.PRIVATE, Modifier.FINAL)
                        .addJavadoc("the MoE of attention experts in layer $L's mixer slot\n", l.index())
                        .initializer("newMoeState($L, 0)", am.routedExperts()).build());
            }
            moeOf(l).ifPresent(m -> {
                type.addField(FieldSpec.builder(ClassName.bestGuess("MoeState"), "moe" + l.index(), Modifier.PRIVATE, Modifier.FINAL)
                        .initializer("newMoeState($L, $L)", m.routedExperts(), sharedCount(m)).build());
                if (biasPerGate(m)) {
                    // each gate's step loads, kept across resizes between micro-batches
                    type.addInitializerBlock(com.palantir.javapoet.CodeBlock.builder()
                            .addStatement("moe$L.gateStepCounts = new long[$L]", l.index(), m.routers().size() * m.routedExperts())
                            .addStatement("moe$L.gateStepSlots = new long[$L]", l.index(), m.routers().size()).build());
                }
            });
        }
    }

    private static int sharedCount(Moe m) {
        return m.sharedExperts();
    }

    static java.util.Optional<Moe> moeOf(Layer l) {
        Block.Part ffn = switch (l.block()) {
            case Block.PreNorm p -> p.ffn();
            case Block.Parallel p -> p.ffn();
            case Block.Residual r -> new Block.Part.MoePart(r.moe());
            case Block.Shortcut sc -> new Block.Part.MoePart(sc.moe());
        };
        return ffn instanceof Block.Part.MoePart m ? java.util.Optional.of(m.moe()) : java.util.Optional.empty();
    }

    private void constructor() {
        Code c = new Code();
        c.line("this.backend = backend");
        c.line("$T<$T> all = new $T<>()", LIST, PARAMETER, ARRAY_LIST);
        // The order of the IR: the order of checkpoints and of `moe info --params`.
        java.util.Set<String> runsAdded = new java.util.HashSet<>();
        for (Param p : model.params()) {
            var m = EXPERT_PARAM.matcher(p.name());
            if (m.matches() && slotsByPrefix.get(m.group(1)).isPacked(Integer.parseInt(m.group(2)))) {
                String prefix = m.group(1);
                Slots slots = slotsByPrefix.get(prefix);
                int j = Integer.parseInt(m.group(2));
                int start = j;
                while (start > 0 && slots.isPacked(start - 1)) {
                    start--;
                }
                if (runsAdded.add(prefix + "#" + start)) {
                    // a run of FFN experts in consecutive slots: views of the packed arrays, in the IR's order
                    int end = start;
                    while (end < slots.experts().size() && slots.isPacked(end)) {
                        end++;
                    }
                    int shift = start - slots.key()[start];
                    Packed gate = packed.get(Names.field(prefix + ".experts.gate"));
                    Packed up = packed.get(Names.field(prefix + ".experts.up"));
                    Packed down = packed.get(Names.field(prefix + ".experts.down"));
                    c.open("for (int e = $L; e < $L; e++)", start, end);
                    for (Packed pk : gate == null ? List.of(up, down) : List.of(gate, up, down)) {
                        String proj = pk.field().substring(pk.field().lastIndexOf("Experts") + 7).toLowerCase(Locale.ROOT);
                        c.line("all.add($T.view($S + e + $S, $L, $LGrad, $L * $L, $L, $L))", PARAMETER, prefix + ".experts.", "." + proj, pk.field(),
                                pk.field(), shift == 0 ? "e" : "(e - " + shift + ")", pk.out() * pk.in(), pk.out(), pk.in());
                    }
                    c.close();
                }
                continue;
            }
            c.line("all.add($L)", Names.field(p.name()));
        }
        c.line("this.parameters = $T.copyOf(all)", LIST);
        type.addMethod(MethodSpec.constructorBuilder().addModifiers(Modifier.PUBLIC).addParameter(BACKEND, "backend")
                .addJavadoc("A model with zero weights; call {@link #initialize} or load a checkpoint.\n").addCode(c.build()).build());

        Code s = new Code();
        s.line("MoeState m = new MoeState()");
        s.line("m.counts = new int[experts]");
        s.line("m.stepCounts = new long[experts]");
        s.line("m.offsets = new int[experts + 2]");
        s.line("m.shared = new SubBlockState[shared]");
        s.open("for (int i = 0; i < shared; i++)").line("m.shared[i] = new SubBlockState()").close();
        s.line("return m");
        type.addMethod(MethodSpec.methodBuilder("newMoeState").addModifiers(Modifier.PRIVATE, Modifier.STATIC)
                .returns(ClassName.bestGuess("MoeState")).addParameter(TypeName.INT, "experts").addParameter(TypeName.INT, "shared")
                .addCode(s.build()).build());
    }

    private void accessors() {
        type.addMethod(MethodSpec.methodBuilder("name").addAnnotation(Override.class).addModifiers(Modifier.PUBLIC).returns(String.class)
                .addStatement("return $S", model.name()).build());
        type.addMethod(MethodSpec.methodBuilder("vocab").addAnnotation(Override.class).addModifiers(Modifier.PUBLIC).returns(TypeName.INT)
                .addStatement("return VOCAB").build());
        type.addMethod(MethodSpec.methodBuilder("context").addAnnotation(Override.class).addModifiers(Modifier.PUBLIC).returns(TypeName.INT)
                .addStatement("return CONTEXT").build());
        type.addMethod(MethodSpec.methodBuilder("parameters").addAnnotation(Override.class).addModifiers(Modifier.PUBLIC)
                .returns(ParameterizedTypeName.get(LIST, PARAMETER)).addStatement("return parameters").build());
        Code loads = new Code();
        List<RoutedState> routed = routedStates();
        loads.line("int[][] loads = new int[$L][]", routed.size());
        for (int i = 0; i < routed.size(); i++) {
            loads.line("loads[$L] = $L.counts.clone()", i, routed.get(i).state());
        }
        loads.line("return loads");
        type.addMethod(MethodSpec.methodBuilder("expertLoads").addAnnotation(Override.class).addModifiers(Modifier.PUBLIC).returns(int[][].class)
                .addCode(loads.build()).build());
        Code bySeq = new Code();
        bySeq.line("int[][][] loads = new int[$L][batch][]", routed.size());
        for (int i = 0; i < routed.size(); i++) {
            String state = routed.get(i).state();
            Moe moe = routed.get(i).moe();
            int experts = moe.routedExperts();
            int perToken = slotsPerToken(moe.routers().getFirst());
            bySeq.open("for (int b = 0; b < batch; b++)");
            bySeq.line("int[] counts = new int[$L]", experts);
            bySeq.open("for (int slot = b * seq * $L; slot < (b + 1) * seq * $L; slot++)", perToken, perToken);
            bySeq.open("if (keep != null && !keep[slot / $L])", perToken).line("continue").close();
            bySeq.line("int ex = $L.selected[slot]", state);
            if (capacity(moe) != null || expertChoice(moe.routers().getFirst())) {
                bySeq.open("if (ex >= 0 && ex < $L && !$L.dropped[slot])", experts, state).line("counts[ex]++").close();
            } else {
                bySeq.open("if (ex >= 0 && ex < $L)", experts).line("counts[ex]++").close();
            }
            bySeq.close();
            bySeq.line("loads[$L][b] = counts", i);
            bySeq.close();
        }
        bySeq.line("return loads");
        type.addMethod(MethodSpec.methodBuilder("expertLoadsBySequence").addAnnotation(Override.class).addModifiers(Modifier.PUBLIC)
                .returns(int[][][].class).addCode(bySeq.build()).build());
        Code dispatch = new Code();
        dispatch.line("int[][] out = new int[$L][]", routed.size());
        for (int i = 0; i < routed.size(); i++) {
            String state = routed.get(i).state();
            Moe moe = routed.get(i).moe();
            int experts = moe.routedExperts();
            int perToken = slotsPerToken(moe.routers().getFirst());
            boolean drops = capacity(moe) != null || expertChoice(moe.routers().getFirst());
            dispatch.line("out[$L] = new int[batch * seq * $L]", i, perToken);
            dispatch.open("for (int slot = 0; slot < batch * seq * $L; slot++)", perToken);
            dispatch.line("int ex = $L.selected[slot]", state);
            dispatch.line("boolean nowhere = ex < 0 || ex >= $L || keep != null && !keep[slot / $L]$L", experts, perToken,
                    drops ? " || " + state + ".dropped[slot]" : "");
            dispatch.line("out[$L][slot] = nowhere ? -1 : ex", i);
            dispatch.close();
        }
        dispatch.line("return out");
        type.addMethod(MethodSpec.methodBuilder("lastDispatch").addAnnotation(Override.class).addModifiers(Modifier.PUBLIC).returns(int[][].class)
                .addJavadoc("Each slot's routed expert in the last forward, per MoE layer; -1 where it went nowhere.\n").addCode(dispatch.build()).build());
        type.addMethod(MethodSpec.methodBuilder("moeLayers").addAnnotation(Override.class).addModifiers(Modifier.PUBLIC).returns(int[].class)
                .addStatement("return new int[] {$L}", String.join(", ", routed.stream().map(rs -> String.valueOf(rs.layer())).toList())).build());
        type.addMethod(MethodSpec.methodBuilder("lastCrossEntropy").addAnnotation(Override.class).addModifiers(Modifier.PUBLIC)
                .returns(TypeName.DOUBLE).addStatement("return lastCrossEntropy").build());
    }

    private void initialize() {
        Code c = new Code();
        c.comment("Normal(0, 0.02) weights; output projections scaled by 1/sqrt(2 * layers) (GPT-2); norms 1; biases 0.");
        c.open("for ($T p : parameters)", PARAMETER);
        c.open("if (p.isBuffer() || p.name().endsWith($S) || p.name().endsWith($S) || p.name().endsWith($S) || p.name().endsWith($S))", "_bias",
                ".bias", "expert_bias", "residual_mix");
        c.line("$T.constant(p, 0f)", INIT);
        if (gruWidth > 0) {
            c.orElse("else if (p.name().startsWith($S))", "router_gru.b_");
            c.line("$T.constant(p, 0f)", INIT);
        }
        if (anyConstantExpert()) {
            c.orElse("else if (p.name().endsWith($S))", ".vector");
            c.comment("MoE++ constant experts' vectors: Normal(0, 1), the scale of the normed input they stand in for");
            c.line("$T.normal(p, seed, 1.0)", INIT);
        }
        c.orElse("else if (p.shape().length == 1)");
        c.line("$T.constant(p, 1f)", INIT);
        c.orElse("else if (p.name().endsWith($S) || p.name().endsWith($S))", ".o", ".down");
        c.line("$T.normal(p, seed, 0.02 / Math.sqrt(2.0 * LAYERS))", INIT);
        c.orElse("else");
        c.line("$T.normal(p, seed, 0.02)", INIT);
        c.close();
        c.close();
        type.addMethod(MethodSpec.methodBuilder("initialize").addAnnotation(Override.class).addModifiers(Modifier.PUBLIC)
                .addParameter(TypeName.LONG, "seed").addCode(c.build()).build());
    }

    // ---- forward ----

    private void forward() {
        Code c = new Code();
        c.line("prepare(inputs, batch, seq)");
        c.line("backend.embedding(inputs, $L.value(), stream, rows, DIM)", Names.field("embed.weight"));
        if (anyPregate()) {
            c.comment("Read-ME: pre-gating routers read the embeddings");
            c.line("System.arraycopy(stream, 0, embedded, 0, rows * DIM)");
        }
        if (gruWidth > 0) {
            c.comment("RMoE: the routers' GRU state starts at 0");
            c.line("$T.zero(gruState, rows * $L)", ELEMENTWISE, gruWidth);
        }
        for (Layer l : model.layers()) {
            c.line("forwardLayer$L()", l.index());
        }
        c.add(headForward().build());
        c.open("if (keep == null)");
        c.line("lastCrossEntropy = backend.crossEntropy(logits, targets, dLogits, rows, VOCAB)");
        c.orElse("else");
        c.comment("padding mask: the loss is the mean over the kept rows, packed in order; the dropped rows get no gradient");
        c.open("if (keptLogits == null || keptLogits.length < keptRows * VOCAB)");
        c.line("keptLogits = new float[keptRows * VOCAB]").line("keptDLogits = new float[keptRows * VOCAB]").line("keptTargets = new int[keptRows]");
        c.close();
        c.line("int kept = 0");
        c.open("for (int t = 0; t < rows; t++)");
        c.open("if (keep[t])");
        c.line("System.arraycopy(logits, t * VOCAB, keptLogits, kept * VOCAB, VOCAB)");
        c.line("keptTargets[kept++] = targets[t]");
        c.close().close();
        c.line("lastCrossEntropy = backend.crossEntropy(keptLogits, keptTargets, keptDLogits, keptRows, VOCAB)");
        c.line("kept = 0");
        c.open("for (int t = 0; t < rows; t++)");
        c.open("if (keep[t])").line("System.arraycopy(keptDLogits, kept++ * VOCAB, dLogits, t * VOCAB, VOCAB)");
        c.orElse("else").line("$T.fill(dLogits, t * VOCAB, (t + 1) * VOCAB, 0f)", ARRAYS).close();
        c.close();
        c.close();
        c.line("double loss = lastCrossEntropy");
        for (RoutedState rs : routedStates()) {
            c.line("loss += $L.balanceLoss", rs.state());
        }
        if (anySeeded()) {
            c.open("if (counting)").line("microBatch++").close();
        }
        c.line("return loss");
        type.addMethod(MethodSpec.methodBuilder("forward").addAnnotation(Override.class).addModifiers(Modifier.PUBLIC).returns(TypeName.DOUBLE)
                .addParameter(int[].class, "inputs").addParameter(int[].class, "targets").addParameter(TypeName.INT, "batch")
                .addParameter(TypeName.INT, "seq").addCode(c.build()).build());

        Code p = new Code();
        p.open("if (seq < 1 || seq > CONTEXT || batch < 1 || inputs.length < batch * seq)");
        p.line("throw new IllegalArgumentException($S + batch + $S + seq + $S + CONTEXT + $S)", "bad batch ", " x ", " (context is ", ")");
        p.close();
        p.open("for (int i = 0; i < batch * seq; i++)");
        p.open("if (inputs[i] < 0 || inputs[i] >= VOCAB)");
        p.line("throw new IllegalArgumentException($S + inputs[i] + $S + i + $S + VOCAB + $S)", "token ", " at ", " is outside the vocabulary (", ")");
        p.close();
        p.close();
        p.line("keptRows = batch * seq");
        p.line("keptSequences = batch");
        p.open("if (keep != null)");
        p.open("if (keep.length != batch * seq)");
        p.line("throw new IllegalArgumentException($S + keep.length + $S + batch + $S + seq)", "the padding mask has ", " entries, not batch x seq = ", " x ");
        p.close();
        p.line("keptRows = 0");
        p.open("for (boolean kept : keep)").open("if (kept)").line("keptRows++").close().close();
        p.open("if (keptRows == 0)").line("throw new IllegalArgumentException($S)", "the padding mask keeps no token").close();
        p.line("keptSequences = 0");
        p.open("for (int b = 0; b < batch; b++)");
        p.open("for (int t = b * seq; t < (b + 1) * seq; t++)").open("if (keep[t])").line("keptSequences++").line("break").close().close();
        p.close();
        p.close();
        p.line("this.batch = batch");
        p.line("this.seq = seq");
        p.line("this.rows = batch * seq");
        p.line("this.inputs = inputs");
        p.open("if (rows > capacity)");
        p.line("capacity = rows");
        p.line("int r = rows");
        for (String f : List.of("stream", "tmp", "tmp2", "dx", "dNormed", "finalNormed", "finalInput", "dShared")) {
            p.line("$L = new float[r * DIM]", f);
        }
        p.line("finalMean = new float[r]");
        p.line("finalRstd = new float[r]");
        p.line("dAtt = new float[r * Q_DIM]");
        p.line("dq = new float[r * Q_DIM]");
        p.line("dqRaw = new float[r * Q_DIM]");
        p.line("dk = new float[r * KV_DIM]");
        p.line("dkRaw = new float[r * KV_DIM]");
        p.line("dv = new float[r * KV_DIM]");
        if (cfg.mla().isPresent()) {
            p.line("dAttV = new float[r * VO_DIM]").line("dKvb = new float[r * KVB_DIM]").line("dKpe = new float[r * ROPE_DIM]");
            p.line("dCkv = new float[r * KV_RANK]").line("dCkvNormed = new float[r * KV_RANK]");
            p.line("dQa = new float[r * Q_RANK]").line("dQaNormed = new float[r * Q_RANK]");
        }
        p.line("dAct = new float[r * $L]", maxActivationPerRow);
        p.line("dGate = new float[r * $L]", maxActivationPerRow);
        p.line("dUp = new float[r * $L]", maxActivationPerRow);
        p.line("logits = new float[r * VOCAB]");
        p.line("dLogits = new float[r * VOCAB]");
        if (gruWidth > 0) {
            for (String f : List.of("gruState", "dGruState", "gruDu", "gruDPrev")) {
                p.line("$L = new float[r * $L]", f, gruWidth);
            }
            p.line("gruGi = new float[r * $L]", 3 * gruWidth);
            p.line("gruGh = new float[r * $L]", 3 * gruWidth);
        }
        if (anyPregate()) {
            p.line("embedded = new float[r * DIM]");
            p.line("dEmbedded = new float[r * DIM]");
        }
        for (Layer l : model.layers()) {
            if (attnMoeLayers.contains(l.index())) {
                Moe am = mixerMoe(l).orElseThrow();
                String st = "amoe" + l.index();
                List<AttnUnit> units = attnUnits(am, "layers." + l.index() + ".attn_moe");
                p.line("sizeMoe($L, r, $L, $L, 0)", st, am.routedExperts(), slotsPerToken(am.routers().getFirst()));
                p.line("$L.gateW = new float[r * $L]", st, units.size());
                p.line("$L.dGateW = new float[r * $L]", st, units.size());
                p.line("$L.aDOut = new float[r * DIM]", st);
                for (String f : List.of("aq", "ak", "av", "aAtt", "aLse", "aOut", "aDq", "aDk", "aDv", "aDAtt")) {
                    p.line("$L.$L = new float[$L][]", st, f, units.size());
                }
                int widest = units.stream().mapToInt(u -> u.heads() * u.headDim()).max().orElse(1);
                p.line("$L.aTok = new int[$L][r]", st, units.size());
                p.line("$L.aN = new int[$L]", st, units.size());
                p.line("$L.aIsQ = new boolean[$L][r]", st, units.size());
                p.line("$L.aX = new float[r * DIM]", st);
                p.line("$L.aDx = new float[r * DIM]", st);
                p.line("$L.aG = new float[r * $L]", st, widest);
                p.line("$L.aDG = new float[r * $L]", st, widest);
                p.line("$L.aGw = new float[r]", st);
                for (AttnUnit u : units) {
                    int w = u.heads() * u.headDim();
                    for (String f : List.of("aq", "aAtt", "aDq", "aDAtt")) {
                        p.line("$L.$L[$L] = new float[r * $L]", st, f, u.index(), w);
                    }
                    for (String f : List.of("ak", "av", "aDk", "aDv")) {
                        if (u.kvOwner() == u.index()) {
                            p.line("$L.$L[$L] = new float[r * $L]", st, f, u.index(), w);
                        } else {
                            p.line("$L.$L[$L] = $L.$L[$L]", st, f, u.index(), st, f, u.kvOwner());
                        }
                    }
                    p.line("$L.aLse[$L] = new float[r * $L]", st, u.index(), u.heads());
                    p.line("$L.aOut[$L] = new float[r * DIM]", st, u.index());
                }
            }
            p.line("sizeAttention(mix$L, r)", l.index());
            if (!(l.block() instanceof Block.Parallel)) {
                p.line("sizeNorm(ffn$L, r)", l.index());
            }
            if (l.block() instanceof Block.Residual res) {
                p.line("sizeFfn(ffn$L, r, $L)", l.index(), res.dense().hidden());
                p.line("residual$LMoe = new float[r * DIM]", l.index());
                p.line("residual$LDense = new float[r * DIM]", l.index());
                p.line("residual$LMix = new float[r * 2]", l.index());
            }
            if (l.block() instanceof Block.Shortcut sc) {
                p.line("sizeAttention(mix$Lb, r)", l.index());
                p.line("sizeNorm(ffn$Lb, r)", l.index());
                p.line("sizeFfn(ffn$L, r, $L)", l.index(), sc.dense().hidden());
                p.line("sizeFfn(ffn$Lb, r, $L)", l.index(), sc.dense().hidden());
                p.line("shortcut$LMoe = new float[r * DIM]", l.index());
            }
            Block.Part ffn = switch (l.block()) {
                case Block.Shortcut sc -> new Block.Part.MoePart(sc.moe());
                case Block.PreNorm pre -> pre.ffn();
                case Block.Parallel par -> par.ffn();
                case Block.Residual res -> new Block.Part.MoePart(res.moe());
                default -> throw new IllegalStateException();
            };
            String state = l.block() instanceof Block.Parallel ? "mix" + l.index() : "ffn" + l.index();
            switch (ffn) {
                case Block.Part.Dense d -> p.line("sizeFfn($L, r, $L)", state, d.ffn().hidden());
                case Block.Part.MoePart mp -> {
                    Moe m = mp.moe();
                    int k = slotsPerToken(m.routers().getFirst());
                    Ffn e = routedFfn(m);
                    p.line("sizeMoe(moe$L, r, $L, $L, $L)", l.index(), m.routedExperts(), k, e == null ? 0 : e.hidden());
                    List<LoraGroup> loras = loraByPrefix.getOrDefault("layers." + l.index() + ".moe", List.of());
                    if (loras.size() > 1) {
                        p.line("moe$L.loraOfGroup = new float[$L][][]", l.index(), loras.size());
                    }
                    for (LoraGroup lo : loras) {
                        int rk = lo.lora().rank();
                        int hd = lo.lora().base().hidden();
                        p.line("moe$L.loraA = new float[3 * r * $L * $L]", l.index(), k, rk);
                        p.line("moe$L.dLoraA = new float[r * $L * $L]", l.index(), k, rk);
                        p.line("moe$L.loraB = new float[2 * r * $L * $L]", l.index(), k, hd);
                        p.line("moe$L.loraH = new float[r * $L * $L]", l.index(), k, hd);
                        p.line("moe$L.dLoraB = new float[r * $L * $L]", l.index(), k, hd);
                        p.line("moe$L.loraBase = new float[r * DIM]", l.index());
                        if (mixedByPrefix.containsKey("layers." + l.index() + ".moe") || loras.size() > 1) {
                            for (String b : lo.lora().base().activation().gated() ? List.of("loraGate", "loraUp", "loraAct") : List.of("loraUp", "loraAct")) {
                                p.line("moe$L.$L = new float[r * $L]", l.index(), b, hd);
                            }
                        }
                        if (loras.size() > 1) {
                            p.line("moe$L.loraOfGroup[$L] = new float[][] {$L}", l.index(), lo.index(), String.join(", ", LORA_BUFFERS.stream()
                                    .map(b -> "moe" + l.index() + "." + b).toList()));
                        }
                    }
                    LatentGroup lg = latentByPrefix.get("layers." + l.index() + ".moe");
                    if (lg != null) {
                        p.line("moe$L.latent = new float[r * $L]", l.index(), lg.rank());
                        p.line("moe$L.dLatent = new float[r * $L]", l.index(), lg.rank());
                        if (lg.rank() > cfg.dim()) {
                            p.line("moe$L.xs = new float[r * $L * $L]", l.index(), k, lg.rank());
                            p.line("moe$L.dxs = new float[r * $L * $L]", l.index(), k, lg.rank());
                        }
                    }
                    List<OwnGroup> mixed = mixedByPrefix.get("layers." + l.index() + ".moe");
                    if (mixed != null) {
                        p.line("moe$L.ownGroups = new GroupState[$L]", l.index(), mixed.size());
                        for (OwnGroup g : mixed) {
                            String gs = "moe" + l.index() + ".ownGroups[" + g.index() + "]";
                            p.line("$L = new GroupState()", gs);
                            if (g.downField() != null) {
                                p.line("$L.z = new float[r * $L]", gs, g.width()).line("$L.dz = new float[r * $L]", gs, g.width());
                            }
                            p.line("$L.xs = new float[r * $L * $L]", gs, k, g.width()).line("$L.dxs = new float[r * $L * $L]", gs, k, g.width());
                            if (g.ffn().activation().gated()) {
                                p.line("$L.gate = new float[r * $L * $L]", gs, k, g.ffn().hidden());
                            }
                            p.line("$L.up = new float[r * $L * $L]", gs, k, g.ffn().hidden()).line("$L.act = new float[r * $L * $L]", gs, k, g.ffn().hidden());
                        }
                    }
                    if (m.routers().size() > 1) {
                        p.line("moe$L.gateOf = new int[r]", l.index());

                    }
                    if (m.routers().getFirst().recurrentWidth().isPresent()) {
                        for (String f : List.of("gruU", "gruPrev", "gruR", "gruZ", "gruN", "gruNh", "gruH")) {
                            p.line("moe$L.$L = new float[r * $L]", l.index(), f, gruWidth);
                        }
                    }
                    int s = 0;
                    for (ExpertGroup g : m.groups()) {
                        if (g.role() == ExpertGroup.Role.SHARED) {
                            for (int i = 0; i < g.count(); i++) {
                                p.line("sizeFfn(moe$L.shared[$L], r, $L)", l.index(), s++, ((Expert.FeedForward) g.expert()).ffn().hidden());
                            }
                        }
                    }
                }
                default -> { }
            }
        }
        p.close();
        type.addMethod(MethodSpec.methodBuilder("prepare").addModifiers(Modifier.PRIVATE).addParameter(int[].class, "inputs")
                .addParameter(TypeName.INT, "batch").addParameter(TypeName.INT, "seq").addCode(p.build()).build());

        type.addMethod(MethodSpec.methodBuilder("sizeNorm").addModifiers(Modifier.PRIVATE, Modifier.STATIC)
                .addParameter(ClassName.bestGuess("SubBlockState"), "s").addParameter(TypeName.INT, "r")
                .addStatement("s.input = new float[r * DIM]").addStatement("s.normed = new float[r * DIM]")
                .addStatement("s.mean = new float[r]").addStatement("s.rstd = new float[r]").build());
        Code att = new Code();
        att.line("sizeNorm(s, r)");
        att.line("s.q = new float[r * Q_DIM]").line("s.k = new float[r * KV_DIM]").line("s.v = new float[r * KV_DIM]");
        att.line("s.qRaw = new float[r * Q_DIM]").line("s.kRaw = new float[r * KV_DIM]");
        att.line("s.qRstd = new float[r * HEADS]").line("s.kRstd = new float[r * KV_HEADS]");
        att.line("s.att = new float[r * Q_DIM]").line("s.lse = new float[r * HEADS]");
        if (cfg.mla().isPresent()) {
            att.line("s.qa = new float[r * Q_RANK]").line("s.qaNormed = new float[r * Q_RANK]").line("s.qaRstd = new float[r]");
            att.line("s.ckv = new float[r * KV_RANK]").line("s.ckvNormed = new float[r * KV_RANK]").line("s.ckvRstd = new float[r]");
            att.line("s.kpe = new float[r * ROPE_DIM]").line("s.kvb = new float[r * KVB_DIM]").line("s.attV = new float[r * VO_DIM]");
        }
        type.addMethod(MethodSpec.methodBuilder("sizeAttention").addModifiers(Modifier.PRIVATE, Modifier.STATIC)
                .addParameter(ClassName.bestGuess("SubBlockState"), "s").addParameter(TypeName.INT, "r").addCode(att.build()).build());
        type.addMethod(MethodSpec.methodBuilder("sizeFfn").addModifiers(Modifier.PRIVATE, Modifier.STATIC)
                .addParameter(ClassName.bestGuess("SubBlockState"), "s").addParameter(TypeName.INT, "r").addParameter(TypeName.INT, "hidden")
                .addStatement("s.gate = new float[r * hidden]").addStatement("s.up = new float[r * hidden]")
                .addStatement("s.act = new float[r * hidden]").build());
        Code moe = new Code();
        moe.line("int slots = r * k");
        moe.line("m.logits = new float[r * experts]").line("m.probs = new float[r * experts]").line("m.lse = new float[r]");
        moe.line("m.selected = new int[slots]").line("m.weight = new float[slots]").line("m.chosenSum = new float[r]");
        moe.line("m.order = new int[slots]").line("m.tokenOfRow = new int[slots]").line("m.weightOfRow = new float[slots]");
        moe.line("m.xs = new float[slots * DIM]").line("m.gate = new float[slots * hidden]").line("m.up = new float[slots * hidden]");
        moe.line("m.act = new float[slots * hidden]").line("m.ys = new float[slots * DIM]");
        moe.line("m.auxGrad = new float[r * experts]").line("m.dWeight = new float[slots]").line("m.dScore = new float[r * experts]");
        moe.line("m.dLogits = new float[r * experts]").line("m.sharedOut = new float[r * DIM]").line("m.sharedGate = new float[r]");
        moe.line("m.dRowWeight = new float[slots]").line("m.dys = new float[slots * DIM]").line("m.dxs = new float[slots * DIM]");
        moe.line("m.f = new float[experts]").line("m.p = new float[experts]");
        moe.line("m.slotKey = new int[slots]");
        if (anyCapacity()) {
            moe.line("m.dropped = new boolean[slots]");
        }
        if (anyConstantExpert()) {
            moe.line("m.constantMix = new float[slots * 2]");
        }
        if (anyJitter()) {
            moe.line("m.noise = new float[r * DIM]").line("m.jittered = new float[r * DIM]").line("m.dJittered = new float[r * DIM]");
        }
        if (anyTopP()) {
            moe.line("m.kept = new int[r]");
        }
        if (anyLogitTransform()) {
            moe.line("m.scaled = new float[r * experts]").line("m.dScaled = new float[r * experts]");
        }
        type.addMethod(MethodSpec.methodBuilder("sizeMoe").addModifiers(Modifier.PRIVATE, Modifier.STATIC)
                .addParameter(ClassName.bestGuess("MoeState"), "m").addParameter(TypeName.INT, "r").addParameter(TypeName.INT, "experts")
                .addParameter(TypeName.INT, "k").addParameter(TypeName.INT, "hidden").addCode(moe.build()).build());
    }

    private Code headForward() {
        Code c = new Code();
        c.comment("final norm and head");
        c.line("System.arraycopy(stream, 0, finalInput, 0, rows * DIM)");
        c.add(norm("final_norm", "finalInput", "finalNormed", "finalMean", "finalRstd").build());
        String head = cfg.tieEmbeddings() ? Names.field("embed.weight") : Names.field("head.weight");
        c.line("backend.matmul(finalNormed, 0, $L.value(), 0, logits, 0, rows, DIM, VOCAB)", head);
        return c;
    }

    private Code norm(String prefix, String in, String out, String mean, String rstd) {
        Code c = new Code();
        String w = Names.field(prefix + ".weight");
        if (cfg.norm().kind() == ModelConfig.NormKind.RMS) {
            c.line("backend.rmsNorm($L, $L.value(), $L, $L, rows, DIM, EPS)", in, w, out, rstd);
        } else {
            c.line("backend.layerNorm($L, $L.value(), $L.value(), $L, $L, $L, rows, DIM, EPS)", in, w, Names.field(prefix + ".bias"), out, mean, rstd);
        }
        return c;
    }

    private Code normBackward(String prefix, String in, String mean, String rstd, String dOut, String dIn) {
        Code c = new Code();
        String w = Names.field(prefix + ".weight");
        if (cfg.norm().kind() == ModelConfig.NormKind.RMS) {
            c.line("backend.rmsNormBackward($L, $L.value(), $L, $L, $L, $L.grad(), rows, DIM)", in, w, rstd, dOut, dIn, w);
        } else {
            String b = Names.field(prefix + ".bias");
            c.line("backend.layerNormBackward($L, $L.value(), $L, $L, $L, $L, $L.grad(), $L.grad(), rows, DIM)", in, w, mean, rstd, dOut, dIn, w, b);
        }
        return c;
    }

    private void layerForward(Layer l) {
        int i = l.index();
        String p = "layers." + i + ".";
        Code c = new Code();
        String s = "mix" + i;
        switch (l.block()) {
            case Block.PreNorm pre -> {
                c.comment("stream += $L(norm(stream))", partName(pre.mixer()));
                c.line("System.arraycopy(stream, 0, $L.input, 0, rows * DIM)", s);
                c.add(norm(p + "attn_norm", s + ".input", s + ".normed", s + ".mean", s + ".rstd").build());
                c.add(mixerForward(pre.mixer(), i, p + "attn", s, s + ".normed", "tmp").build());
                c.line("$T.addInPlace(stream, tmp, rows * DIM)", ELEMENTWISE);
                String f = "ffn" + i;
                c.comment("stream += $L(norm(stream))", partName(pre.ffn()));
                c.line("System.arraycopy(stream, 0, $L.input, 0, rows * DIM)", f);
                c.add(norm(p + "ffn_norm", f + ".input", f + ".normed", f + ".mean", f + ".rstd").build());
                c.add(ffnForward(pre.ffn(), i, f, f + ".normed", "tmp").build());
                c.line("$T.addInPlace(stream, tmp, rows * DIM)", ELEMENTWISE);
            }
            case Block.Parallel par -> {
                c.comment("h = norm(stream); stream += $L(h) + $L(h)", partName(par.mixer()), partName(par.ffn()));
                c.line("System.arraycopy(stream, 0, $L.input, 0, rows * DIM)", s);
                c.add(norm(p + "norm", s + ".input", s + ".normed", s + ".mean", s + ".rstd").build());
                c.add(mixerForward(par.mixer(), i, p + "attn", s, s + ".normed", "tmp").build());
                c.add(ffnForward(par.ffn(), i, s, s + ".normed", "tmp2").build());
                c.line("$T.addInPlace(stream, tmp, rows * DIM)", ELEMENTWISE);
                c.line("$T.addInPlace(stream, tmp2, rows * DIM)", ELEMENTWISE);
            }
            case Block.Residual res -> {
                c.comment("stream += attention(norm(stream))");
                c.line("System.arraycopy(stream, 0, $L.input, 0, rows * DIM)", s);
                c.add(norm(p + "attn_norm", s + ".input", s + ".normed", s + ".mean", s + ".rstd").build());
                c.add(attentionForward(p + "attn", s, s + ".normed", "tmp").build());
                c.line("$T.addInPlace(stream, tmp, rows * DIM)", ELEMENTWISE);
                String f = "ffn" + i;
                c.comment("h = norm(stream); [c1, c2] = softmax(residual_mix · h); stream += c1 · $L(h) + c2 · $L(h)", res.moe().name(), res.dense());
                c.line("System.arraycopy(stream, 0, $L.input, 0, rows * DIM)", f);
                c.add(norm(p + "ffn_norm", f + ".input", f + ".normed", f + ".mean", f + ".rstd").build());
                c.add(denseForward(p + "ffn", res.dense(), f, f + ".normed", "residual" + i + "Dense", "rows").build());
                c.add(moeForward(i, res.moe(), f + ".normed", "residual" + i + "Moe").build());
                c.line("backend.matmul($L.normed, 0, $L.value(), 0, residual$LMix, 0, rows, DIM, 2)", f, Names.field(p + "residual_mix"), i);
                c.open("for (int t = 0; t < rows; t++)");
                c.line("float a = residual$LMix[2 * t]", i);
                c.line("float b = residual$LMix[2 * t + 1]", i);
                c.line("float c1 = 1f / (1f + (float) Math.exp(b - a))");
                c.line("float c2 = 1f - c1");
                c.line("residual$LMix[2 * t] = c1", i);
                c.line("residual$LMix[2 * t + 1] = c2", i);
                c.open("for (int d = 0; d < DIM; d++)");
                c.line("stream[t * DIM + d] += c1 * residual$LMoe[t * DIM + d] + c2 * residual$LDense[t * DIM + d]", i, i);
                c.close();
                c.close();
            }
            case Block.Shortcut sc -> {
                String f = "ffn" + i;
                c.comment("stream += attention(norm(stream))  (attn0)");
                c.line("System.arraycopy(stream, 0, $L.input, 0, rows * DIM)", s);
                c.add(norm(p + "attn0_norm", s + ".input", s + ".normed", s + ".mean", s + ".rstd").build());
                c.add(attentionForward(p + "attn0", s, s + ".normed", "tmp").build());
                c.line("$T.addInPlace(stream, tmp, rows * DIM)", ELEMENTWISE);
                c.comment("m = norm(stream): the input of ffn0 and of the MoE (whose output is added at the end of the block)");
                c.line("System.arraycopy(stream, 0, $L.input, 0, rows * DIM)", f);
                c.add(norm(p + "ffn0_norm", f + ".input", f + ".normed", f + ".mean", f + ".rstd").build());
                c.add(moeForward(i, sc.moe(), f + ".normed", "shortcut" + i + "Moe").build());
                c.comment("stream += ffn0(m)");
                c.add(denseForward(p + "ffn0", sc.dense(), f, f + ".normed", "tmp", "rows").build());
                c.line("$T.addInPlace(stream, tmp, rows * DIM)", ELEMENTWISE);
                String s1 = s + "b";
                c.comment("stream += attention(norm(stream))  (attn1)");
                c.line("System.arraycopy(stream, 0, $L.input, 0, rows * DIM)", s1);
                c.add(norm(p + "attn1_norm", s1 + ".input", s1 + ".normed", s1 + ".mean", s1 + ".rstd").build());
                c.add(attentionForward(p + "attn1", s1, s1 + ".normed", "tmp").build());
                c.line("$T.addInPlace(stream, tmp, rows * DIM)", ELEMENTWISE);
                String f1 = f + "b";
                c.comment("stream += ffn1(norm(stream)) + moe(m)");
                c.line("System.arraycopy(stream, 0, $L.input, 0, rows * DIM)", f1);
                c.add(norm(p + "ffn1_norm", f1 + ".input", f1 + ".normed", f1 + ".mean", f1 + ".rstd").build());
                c.add(denseForward(p + "ffn1", sc.dense(), f1, f1 + ".normed", "tmp", "rows").build());
                c.line("$T.addInPlace(stream, tmp, rows * DIM)", ELEMENTWISE);
                c.line("$T.addInPlace(stream, shortcut$LMoe, rows * DIM)", ELEMENTWISE, i);
            }
            default -> throw new IllegalStateException();
        }
        type.addMethod(MethodSpec.methodBuilder("forwardLayer" + i).addModifiers(Modifier.PRIVATE).addJavadoc("Layer $L: $L.\n", i,
                l.block().describe()).addCode(c.build()).build());
    }

    private boolean rope() {
        return cfg.position().kind() == ModelConfig.PositionKind.ROPE;
    }

    /**
     * Multi-head latent attention (DeepSeek-V2/V3). Keys and values are assembled per head into the
     * HEAD_DIM-wide layout of the attention kernel: keys [shared rotary key, the head's NOPE_DIM],
     * values [the head's V_DIM, zeros] (V_DIM <= HEAD_DIM), so the kernel's 1/sqrt(HEAD_DIM) is MLA's scale.
     */
    private Code latentAttentionForward(String prefix, String s, String in, String out) {
        Code c = new Code();
        ModelConfig.Mla m = cfg.mla().orElseThrow();
        if (m.qRank() > 0) {
            c.comment("q = q_b · rms(q_a · x)");
            c.line("backend.matmul($L, 0, $L.value(), 0, $L.qa, 0, rows, DIM, Q_RANK)", in, Names.field(prefix + ".q_a"), s);
            c.line("backend.rmsNorm($L.qa, $L.value(), $L.qaNormed, $L.qaRstd, rows, Q_RANK, MLA_EPS)", s, Names.field(prefix + ".q_a_norm"), s, s);
            c.line("backend.matmul($L.qaNormed, 0, $L.value(), 0, $L.q, 0, rows, Q_RANK, Q_DIM)", s, Names.field(prefix + ".q_b"), s);
        } else {
            c.line("backend.matmul($L, 0, $L.value(), 0, $L.q, 0, rows, DIM, Q_DIM)", in, Names.field(prefix + ".q"), s);
        }
        c.comment("the latent c = rms(kv_a · x); kv_b · c gives each head's keys (without RoPE) and values");
        c.line("backend.matmul($L, 0, $L.value(), 0, $L.ckv, 0, rows, DIM, KV_RANK)", in, Names.field(prefix + ".kv_a"), s);
        c.line("backend.rmsNorm($L.ckv, $L.value(), $L.ckvNormed, $L.ckvRstd, rows, KV_RANK, MLA_EPS)", s, Names.field(prefix + ".kv_a_norm"), s, s);
        c.line("backend.matmul($L.ckvNormed, 0, $L.value(), 0, $L.kvb, 0, rows, KV_RANK, KVB_DIM)", s, Names.field(prefix + ".kv_b"), s);
        c.comment("one rotary key for all heads");
        c.line("backend.matmul($L, 0, $L.value(), 0, $L.kpe, 0, rows, DIM, ROPE_DIM)", in, Names.field(prefix + ".k_rope"), s);
        if (rope()) {
            c.line("backend.rope($L.q, rows, seq, HEADS, HEAD_DIM, ROPE_DIM, THETA, false)", s);
            c.line("backend.rope($L.kpe, rows, seq, 1, ROPE_DIM, ROPE_DIM, THETA, false)", s);
        }
        c.line("latentKeysAndValues($L.kpe, $L.kvb, $L.k, $L.v, rows)", s, s, s, s);
        c.line("backend.attention($L.q, $L.k, $L.v, $L.att, $L.lse, batch, seq, HEADS, HEADS, HEAD_DIM, CAUSAL, WINDOW, keep)", s, s, s, s, s);
        c.line("latentValuesOut($L.att, $L.attV, rows)", s, s);
        c.line("backend.matmul($L.attV, 0, $L.value(), 0, $L, 0, rows, VO_DIM, DIM)", s, Names.field(prefix + ".o"), out);
        return c;
    }

    private Code latentAttentionBackward(String prefix, String s, String in, String dOut, String dIn) {
        Code c = new Code();
        ModelConfig.Mla m = cfg.mla().orElseThrow();
        String o = Names.field(prefix + ".o");
        c.line("$T.zero(dAttV, rows * VO_DIM)", ELEMENTWISE);
        c.line("backend.matmulBackward($L.attV, 0, $L.value(), 0, $L, 0, dAttV, 0, $L.grad(), 0, rows, VO_DIM, DIM)", s, o, dOut, o);
        c.line("latentValuesIn(dAttV, dAtt, rows)");
        c.line("$T.zero(dq, rows * Q_DIM)", ELEMENTWISE);
        c.line("$T.zero(dk, rows * KV_DIM)", ELEMENTWISE);
        c.line("$T.zero(dv, rows * KV_DIM)", ELEMENTWISE);
        c.line("backend.attentionBackward($L.q, $L.k, $L.v, $L.att, $L.lse, dAtt, dq, dk, dv, batch, seq, HEADS, HEADS, HEAD_DIM, CAUSAL, WINDOW, keep)",
                s, s, s, s, s);
        c.comment("the shared rotary key gathers every head's gradient");
        c.line("latentKeysAndValuesBackward(dk, dv, dKpe, dKvb, rows)");
        if (rope()) {
            c.line("backend.rope(dq, rows, seq, HEADS, HEAD_DIM, ROPE_DIM, THETA, true)");
            c.line("backend.rope(dKpe, rows, seq, 1, ROPE_DIM, ROPE_DIM, THETA, true)");
        }
        String kvb = Names.field(prefix + ".kv_b");
        String kvaNorm = Names.field(prefix + ".kv_a_norm");
        String kva = Names.field(prefix + ".kv_a");
        String kRope = Names.field(prefix + ".k_rope");
        c.line("$T.zero(dCkvNormed, rows * KV_RANK)", ELEMENTWISE);
        c.line("backend.matmulBackward($L.ckvNormed, 0, $L.value(), 0, dKvb, 0, dCkvNormed, 0, $L.grad(), 0, rows, KV_RANK, KVB_DIM)", s, kvb, kvb);
        c.line("$T.zero(dCkv, rows * KV_RANK)", ELEMENTWISE);
        c.line("backend.rmsNormBackward($L.ckv, $L.value(), $L.ckvRstd, dCkvNormed, dCkv, $L.grad(), rows, KV_RANK)", s, kvaNorm, s, kvaNorm);
        c.line("backend.matmulBackward($L, 0, $L.value(), 0, dCkv, 0, $L, 0, $L.grad(), 0, rows, DIM, KV_RANK)", in, kva, dIn, kva);
        c.line("backend.matmulBackward($L, 0, $L.value(), 0, dKpe, 0, $L, 0, $L.grad(), 0, rows, DIM, ROPE_DIM)", in, kRope, dIn, kRope);
        if (m.qRank() > 0) {
            String qb = Names.field(prefix + ".q_b");
            String qaNorm = Names.field(prefix + ".q_a_norm");
            String qa = Names.field(prefix + ".q_a");
            c.line("$T.zero(dQaNormed, rows * Q_RANK)", ELEMENTWISE);
            c.line("backend.matmulBackward($L.qaNormed, 0, $L.value(), 0, dq, 0, dQaNormed, 0, $L.grad(), 0, rows, Q_RANK, Q_DIM)", s, qb, qb);
            c.line("$T.zero(dQa, rows * Q_RANK)", ELEMENTWISE);
            c.line("backend.rmsNormBackward($L.qa, $L.value(), $L.qaRstd, dQaNormed, dQa, $L.grad(), rows, Q_RANK)", s, qaNorm, s, qaNorm);
            c.line("backend.matmulBackward($L, 0, $L.value(), 0, dQa, 0, $L, 0, $L.grad(), 0, rows, DIM, Q_RANK)", in, qa, dIn, qa);
        } else {
            String q = Names.field(prefix + ".q");
            c.line("backend.matmulBackward($L, 0, $L.value(), 0, dq, 0, $L, 0, $L.grad(), 0, rows, DIM, Q_DIM)", in, q, dIn, q);
        }
        return c;
    }

    /** The static helpers that move latent attention's keys and values between its layouts and the kernel's. */
    private void latentHelpers() {
        Code kv = new Code();
        kv.open("for (int t = 0; t < rows; t++)");
        kv.open("for (int h = 0; h < HEADS; h++)");
        kv.line("int at = t * Q_DIM + h * HEAD_DIM");
        kv.line("int from = t * KVB_DIM + h * (NOPE_DIM + V_DIM)");
        kv.line("System.arraycopy(kpe, t * ROPE_DIM, k, at, ROPE_DIM)");
        kv.line("System.arraycopy(kvb, from, k, at + ROPE_DIM, NOPE_DIM)");
        kv.line("System.arraycopy(kvb, from + NOPE_DIM, v, at, V_DIM)");
        kv.line("$T.fill(v, at + V_DIM, at + HEAD_DIM, 0f)", java.util.Arrays.class);
        kv.close().close();
        type.addMethod(MethodSpec.methodBuilder("latentKeysAndValues").addModifiers(Modifier.PRIVATE, Modifier.STATIC)
                .addJavadoc("Per head: key = [the shared rotary key, the head's NOPE_DIM keys], value = [the head's V_DIM values, zeros].\n")
                .addParameter(float[].class, "kpe").addParameter(float[].class, "kvb").addParameter(float[].class, "k").addParameter(float[].class, "v")
                .addParameter(TypeName.INT, "rows").addCode(kv.build()).build());
        Code kvb = new Code();
        kvb.open("for (int t = 0; t < rows; t++)");
        kvb.line("$T.fill(dKpe, t * ROPE_DIM, (t + 1) * ROPE_DIM, 0f)", java.util.Arrays.class);
        kvb.open("for (int h = 0; h < HEADS; h++)");
        kvb.line("int at = t * Q_DIM + h * HEAD_DIM");
        kvb.line("int to = t * KVB_DIM + h * (NOPE_DIM + V_DIM)");
        kvb.open("for (int i = 0; i < ROPE_DIM; i++)").line("dKpe[t * ROPE_DIM + i] += dk[at + i]").close();
        kvb.line("System.arraycopy(dk, at + ROPE_DIM, dKvb, to, NOPE_DIM)");
        kvb.line("System.arraycopy(dv, at, dKvb, to + NOPE_DIM, V_DIM)");
        kvb.close().close();
        type.addMethod(MethodSpec.methodBuilder("latentKeysAndValuesBackward").addModifiers(Modifier.PRIVATE, Modifier.STATIC)
                .addJavadoc("The gradients of latentKeysAndValues' inputs (written, not accumulated).\n")
                .addParameter(float[].class, "dk").addParameter(float[].class, "dv").addParameter(float[].class, "dKpe").addParameter(float[].class, "dKvb")
                .addParameter(TypeName.INT, "rows").addCode(kvb.build()).build());
        Code out = new Code();
        out.open("for (int t = 0; t < rows; t++)");
        out.open("for (int h = 0; h < HEADS; h++)");
        out.line("System.arraycopy(att, t * Q_DIM + h * HEAD_DIM, attV, t * VO_DIM + h * V_DIM, V_DIM)");
        out.close().close();
        type.addMethod(MethodSpec.methodBuilder("latentValuesOut").addModifiers(Modifier.PRIVATE, Modifier.STATIC)
                .addJavadoc("Each head's first V_DIM outputs (the rest are zero), packed for o.\n")
                .addParameter(float[].class, "att").addParameter(float[].class, "attV").addParameter(TypeName.INT, "rows").addCode(out.build()).build());
        Code back = new Code();
        back.open("for (int t = 0; t < rows; t++)");
        back.open("for (int h = 0; h < HEADS; h++)");
        back.line("int at = t * Q_DIM + h * HEAD_DIM");
        back.line("System.arraycopy(dAttV, t * VO_DIM + h * V_DIM, dAtt, at, V_DIM)");
        back.line("$T.fill(dAtt, at + V_DIM, at + HEAD_DIM, 0f)", java.util.Arrays.class);
        back.close().close();
        type.addMethod(MethodSpec.methodBuilder("latentValuesIn").addModifiers(Modifier.PRIVATE, Modifier.STATIC)
                .addJavadoc("The gradient of latentValuesOut's input.\n")
                .addParameter(float[].class, "dAttV").addParameter(float[].class, "dAtt").addParameter(TypeName.INT, "rows").addCode(back.build()).build());
    }

    private Code attentionForward(String prefix, String s, String in, String out) {
        if (cfg.mla().isPresent()) {
            return latentAttentionForward(prefix, s, in, out);
        }
        Code c = new Code();
        String q = Names.field(prefix + ".q");
        String k = Names.field(prefix + ".k");
        String v = Names.field(prefix + ".v");
        String o = Names.field(prefix + ".o");
        boolean qkNorm = cfg.qkNorm();
        c.line("backend.matmul($L, 0, $L.value(), 0, $L, 0, rows, DIM, Q_DIM)", in, q, qkNorm ? s + ".qRaw" : s + ".q");
        c.line("backend.matmul($L, 0, $L.value(), 0, $L, 0, rows, DIM, KV_DIM)", in, k, qkNorm ? s + ".kRaw" : s + ".k");
        c.line("backend.matmul($L, 0, $L.value(), 0, $L.v, 0, rows, DIM, KV_DIM)", in, v, s);
        if (cfg.qkvBias()) {
            c.line("$T.addBias($L, $L.value(), 0, rows, Q_DIM)", ELEMENTWISE, qkNorm ? s + ".qRaw" : s + ".q", Names.field(prefix + ".q_bias"));
            c.line("$T.addBias($L, $L.value(), 0, rows, KV_DIM)", ELEMENTWISE, qkNorm ? s + ".kRaw" : s + ".k", Names.field(prefix + ".k_bias"));
            c.line("$T.addBias($L.v, $L.value(), 0, rows, KV_DIM)", ELEMENTWISE, s, Names.field(prefix + ".v_bias"));
        }
        if (qkNorm) {
            // per head (rows * heads rows of HEAD_DIM), or `qk_norm full`: one norm over each row's q (and k)
            String qRows = cfg.qkNormFull() ? "rows, Q_DIM" : "rows * HEADS, HEAD_DIM";
            String kRows = cfg.qkNormFull() ? "rows, KV_DIM" : "rows * KV_HEADS, HEAD_DIM";
            c.line("backend.rmsNorm($L.qRaw, $L.value(), $L.q, $L.qRstd, $L, EPS)", s, Names.field(prefix + ".q_norm"), s, s, qRows);
            c.line("backend.rmsNorm($L.kRaw, $L.value(), $L.k, $L.kRstd, $L, EPS)", s, Names.field(prefix + ".k_norm"), s, s, kRows);
        }
        if (cfg.position().kind() == ModelConfig.PositionKind.ROPE) {
            c.line("backend.rope($L.q, rows, seq, HEADS, HEAD_DIM, ROTARY_DIMS, THETA, false)", s);
            c.line("backend.rope($L.k, rows, seq, KV_HEADS, HEAD_DIM, ROTARY_DIMS, THETA, false)", s);
        }
        c.line("backend.attention($L.q, $L.k, $L.v, $L.att, $L.lse, batch, seq, HEADS, KV_HEADS, HEAD_DIM, CAUSAL, WINDOW, keep)", s, s, s, s, s);
        c.line("backend.matmul($L.att, 0, $L.value(), 0, $L, 0, rows, Q_DIM, DIM)", s, o, out);
        return c;
    }

    private Code mixerForward(Block.Part part, int layer, String prefix, String s, String in, String out) {
        if (!(part instanceof Block.Part.MoePart mp)) {
            return attentionForward(prefix, s, in, out);
        }
        type.addMethod(MethodSpec.methodBuilder("attentionExperts" + layer).addModifiers(Modifier.PRIVATE)
                .addJavadoc("Layer $L's mixer: moe $L of attention experts.\n", layer, mp.moe().name())
                .addParameter(float[].class, "in").addParameter(float[].class, "out").addCode(attentionMoeForward(layer, mp.moe(), "in", "out").build()).build());
        return new Code().line("attentionExperts$L($L, $L)", layer, in, out);
    }

    private Code mixerBackward(Block.Part part, int layer, String prefix, String s, String in, String dOut, String dIn) {
        if (!(part instanceof Block.Part.MoePart mp)) {
            return attentionBackward(prefix, s, in, dOut, dIn);
        }
        type.addMethod(MethodSpec.methodBuilder("attentionExperts" + layer + "Backward").addModifiers(Modifier.PRIVATE)
                .addParameter(float[].class, "in").addParameter(float[].class, "dOut").addParameter(float[].class, "dIn").addParameter(TypeName.FLOAT, "scale")
                .addCode(attentionMoeBackward(layer, mp.moe(), "in", "dOut", "dIn").build()).build());
        return new Code().line("attentionExperts$LBackward($L, $L, $L, scale)", layer, in, dOut, dIn);
    }

    /**
     * One attention expert: its parameter prefix, its heads and head size, and the expert whose keys
     * and values it reads (itself, or the first of its group when the group shares them: BAM).
     */
    record AttnUnit(int index, String prefix, String kvPrefix, int kvOwner, int heads, int headDim) {}

    /** The attention experts of an MoE: routed ones first (0 .. E-1, as the router numbers them), then the shared ones. */
    private static List<AttnUnit> attnUnits(Moe moe, String p) {
        List<AttnUnit> routed = new ArrayList<>();
        List<AttnUnit> shared = new ArrayList<>();
        int e = moe.routedExperts();
        int group = 0;
        for (ExpertGroup g : moe.groups()) {
            Expert.Attention a = (Expert.Attention) g.expert();
            String gp = p + ".group" + group++;
            List<AttnUnit> into = g.role() == ExpertGroup.Role.ROUTED ? routed : shared;
            int first = (g.role() == ExpertGroup.Role.ROUTED ? 0 : e) + into.size();
            for (int i = 0; i < g.count(); i++) {
                int index = first + i;
                String prefix = g.role() == ExpertGroup.Role.ROUTED ? p + ".experts." + (index) : p + ".shared." + (index - e);
                into.add(new AttnUnit(index, prefix, a.sharedKv() ? gp : prefix, a.sharedKv() ? first : index, a.heads(), a.headDim()));
            }
        }
        List<AttnUnit> all = new ArrayList<>(routed);
        all.addAll(shared);
        return all;
    }

    /**
     * An MoE of attention experts in the mixer slot (JetMoE's mixture of attention heads, BAM's soft
     * mixture): out = Σ_e weight_e · O_e · attention(Q_e x, K_e x, V_e x) over the experts a token
     * chose. Keys and values run for every token (a query reads every earlier token's); an expert's
     * query and output projections and its attention rows run for the tokens routed to it only, so
     * their cost falls with k / E.
     */
    private Code attentionMoeForward(int layer, Moe moe, String in, String out) {
        Code c = new Code();
        String m = "amoe" + layer;
        String p = "layers." + layer + ".attn_moe";
        Router r = moe.routers().getFirst();
        int e = moe.routedExperts();
        int k = slotsPerToken(r);
        List<AttnUnit> units = attnUnits(moe, p);
        int n = units.size();
        c.comment("router over $L attention experts ($L): $L", e, moe.name(), r.selection() instanceof Router.Selection.Soft ? "soft, every expert weighted"
                : topP(r) ? "top-p (at most " + k + ")" : "top-" + k);
        routerMatmul(c, moe, p, m, in);
        c.line("$L($L, null)", routerMethod(moe), m);
        c.comment("loads, each token's weight per expert (0 where not chosen$L), and each expert's tokens in order; a token a padding mask drops has none",
                n > e ? "; shared experts 1" : "");
        c.line("$T.fill($L.counts, 0)", ARRAYS, m);
        c.line("$T.fill($L.aN, 0)", ARRAYS, m);
        c.line("$T.zero($L.gateW, rows * $L)", ELEMENTWISE, m, n);
        c.line("int slots = 0");
        c.open("for (int t = 0; t < rows; t++)");
        c.open("for (int u = 0; u < $L; u++)", n).line("$L.aIsQ[u][t] = false", m).close();
        c.open("if (keep != null && !keep[t])").line("continue").close();
        c.open("for (int s = 0; s < $L; s++)", k);
        c.line("int ex = $L.selected[t * $L + s]", m, k);
        c.open("if (ex < $L)", e);
        c.line("$L.counts[ex]++", m).line("slots++");
        c.line("$L.gateW[t * $L + ex] += $L.weight[t * $L + s]", m, n, m, k);
        c.line("$L.aTok[ex][$L.aN[ex]++] = t", m, m);
        c.line("$L.aIsQ[ex][t] = true", m);
        c.close();
        c.close();
        for (int u = e; u < n; u++) {
            c.line("$L.gateW[t * $L + $L] = 1f", m, n, u);
            c.line("$L.aTok[$L][$L.aN[$L]++] = t", m, u, m, u);
            c.line("$L.aIsQ[$L][t] = true", m, u);
        }
        c.close();
        c.open("if (counting)");
        c.open("for (int ex = 0; ex < $L; ex++)", e).line("$L.stepCounts[ex] += $L.counts[ex]", m, m).close();
        c.line("$L.stepSlots += slots", m);
        c.close();
        c.line("$T.zero($L, rows * DIM)", ELEMENTWISE, out);
        boolean rope = cfg.position().kind() == ModelConfig.PositionKind.ROPE;
        for (AttnUnit u : units) {
            int w = u.heads() * u.headDim();
            int i = u.index();
            c.comment("attention expert $L ($L heads of $L)$L", i, u.heads(), u.headDim(), u.kvOwner() != i ? ", keys and values of expert " + u.kvOwner()
                    : u.kvPrefix().equals(u.prefix()) ? "" : ", keys and values shared with its group");
            if (u.kvOwner() == i) {
                c.comment("keys and values: every token");
                c.line("backend.matmul($L, 0, $L.value(), 0, $L.ak[$L], 0, rows, DIM, $L)", in, Names.field(u.kvPrefix() + ".k"), m, i, w);
                c.line("backend.matmul($L, 0, $L.value(), 0, $L.av[$L], 0, rows, DIM, $L)", in, Names.field(u.kvPrefix() + ".v"), m, i, w);
                if (rope) {
                    c.line("backend.rope($L.ak[$L], rows, seq, $L, $L, $L, THETA, false)", m, i, u.heads(), u.headDim(), cfg.position().rotaryDims(u.headDim()));
                }
            }
            c.line("int n$L = $L.aN[$L]", i, m, i);
            c.open("if (n$L > 0)", i);
            c.comment("queries of its $L tokens only: gathered, projected, put back at their rows (for the positions), attended, projected out and added by weight",
                    i < e ? "routed" : "(shared: all)");
            c.line("backend.gatherRows($L, $L.aTok[$L], n$L, DIM, $L.aX)", in, m, i, i, m);
            c.line("backend.matmul($L.aX, 0, $L.value(), 0, $L.aG, 0, n$L, DIM, $L)", m, Names.field(u.prefix() + ".q"), m, i, w);
            c.open("for (int j = 0; j < n$L; j++)", i).line("System.arraycopy($L.aG, j * $L, $L.aq[$L], $L.aTok[$L][j] * $L, $L)", m, w, m, i, m, i, w, w).close();
            if (rope) {
                c.line("backend.rope($L.aq[$L], rows, seq, $L, $L, $L, THETA, false)", m, i, u.heads(), u.headDim(), cfg.position().rotaryDims(u.headDim()));
            }
            c.line("backend.attention($L.aq[$L], $L.ak[$L], $L.av[$L], $L.aAtt[$L], $L.aLse[$L], batch, seq, $L, $L, $L, CAUSAL, WINDOW, keep, $L.aIsQ[$L])", m, i, m, i,
                    m, i, m, i, m, i, u.heads(), u.heads(), u.headDim(), m, i);
            c.line("backend.gatherRows($L.aAtt[$L], $L.aTok[$L], n$L, $L, $L.aG)", m, i, m, i, i, w, m);
            c.line("backend.matmul($L.aG, 0, $L.value(), 0, $L.aOut[$L], 0, n$L, $L, DIM)", m, Names.field(u.prefix() + ".o"), m, i, i, w);
            c.open("for (int j = 0; j < n$L; j++)", i).line("$L.aGw[j] = $L.gateW[$L.aTok[$L][j] * $L + $L]", m, m, m, i, n, i).close();
            c.line("backend.scatterAddRows($L.aOut[$L], $L.aTok[$L], $L.aGw, n$L, DIM, $L)", m, i, m, i, m, i, out);
            c.close();
        }
        c.add(balanceForward(moe, m, e, k).build());
        return c;
    }

    private Code attentionMoeBackward(int layer, Moe moe, String in, String dOut, String dIn) {
        Code c = new Code();
        String m = "amoe" + layer;
        String p = "layers." + layer + ".attn_moe";
        int e = moe.routedExperts();
        int k = slotsPerToken(moe.routers().getFirst());
        List<AttnUnit> units = attnUnits(moe, p);
        int n = units.size();
        boolean rope = cfg.position().kind() == ModelConfig.PositionKind.ROPE;
        for (AttnUnit u : units) {
            if (u.kvOwner() == u.index()) {
                c.line("$T.zero($L.aDk[$L], rows * $L)", ELEMENTWISE, m, u.index(), u.heads() * u.headDim());
                c.line("$T.zero($L.aDv[$L], rows * $L)", ELEMENTWISE, m, u.index(), u.heads() * u.headDim());
            }
        }
        c.line("$T.zero($L.dGateW, rows * $L)", ELEMENTWISE, m, n);
        for (AttnUnit u : units) {
            int w = u.heads() * u.headDim();
            int i = u.index();
            String o = Names.field(u.prefix() + ".o");
            String q = Names.field(u.prefix() + ".q");
            c.comment("attention expert $L, over its tokens: d(weight) = <dOut, its output>; its output's gradient is weight · dOut", i);
            c.line("int n$L = $L.aN[$L]", i, m, i);
            c.open("if (n$L > 0)", i);
            c.open("for (int j = 0; j < n$L; j++)", i);
            c.line("int t = $L.aTok[$L][j]", m, i);
            c.line("float w = $L.gateW[t * $L + $L]", m, n, i);
            c.line("double dot = 0");
            c.open("for (int d = 0; d < DIM; d++)");
            c.line("dot += (double) $L[t * DIM + d] * $L.aOut[$L][j * DIM + d]", dOut, m, i);
            c.line("$L.aDOut[j * DIM + d] = w * $L[t * DIM + d]", m, dOut);
            c.close();
            c.line("$L.dGateW[t * $L + $L] = (float) dot", m, n, i);
            c.close();
            c.comment("output projection over the gathered attention rows; their gradient back at the rows (0 elsewhere: not queries)");
            c.line("backend.gatherRows($L.aAtt[$L], $L.aTok[$L], n$L, $L, $L.aG)", m, i, m, i, i, w, m);
            c.line("$T.zero($L.aDG, n$L * $L)", ELEMENTWISE, m, i, w);
            c.line("backend.matmulBackward($L.aG, 0, $L.value(), 0, $L.aDOut, 0, $L.aDG, 0, $L.grad(), 0, n$L, $L, DIM)", m, o, m, m, o, i, w);
            c.line("$T.zero($L.aDAtt[$L], rows * $L)", ELEMENTWISE, m, i, w);
            c.open("for (int j = 0; j < n$L; j++)", i).line("System.arraycopy($L.aDG, j * $L, $L.aDAtt[$L], $L.aTok[$L][j] * $L, $L)", m, w, m, i, m, i, w, w).close();
            c.line("$T.zero($L.aDq[$L], rows * $L)", ELEMENTWISE, m, i, w);
            c.line("backend.attentionBackward($L.aq[$L], $L.ak[$L], $L.av[$L], $L.aAtt[$L], $L.aLse[$L], $L.aDAtt[$L], $L.aDq[$L], $L.aDk[$L], $L.aDv[$L], batch, seq, $L, $L, $L, CAUSAL, WINDOW, keep, $L.aIsQ[$L])",
                    m, i, m, i, m, i, m, i, m, i, m, i, m, i, m, i, m, i, u.heads(), u.heads(), u.headDim(), m, i);
            if (rope) {
                c.line("backend.rope($L.aDq[$L], rows, seq, $L, $L, $L, THETA, true)", m, i, u.heads(), u.headDim(), cfg.position().rotaryDims(u.headDim()));
            }
            c.comment("query projection over the gathered rows");
            c.line("backend.gatherRows($L.aDq[$L], $L.aTok[$L], n$L, $L, $L.aDG)", m, i, m, i, i, w, m);
            c.line("backend.gatherRows($L, $L.aTok[$L], n$L, DIM, $L.aX)", in, m, i, i, m);
            c.line("$T.zero($L.aDx, n$L * DIM)", ELEMENTWISE, m, i);
            c.line("backend.matmulBackward($L.aX, 0, $L.value(), 0, $L.aDG, 0, $L.aDx, 0, $L.grad(), 0, n$L, DIM, $L)", m, q, m, m, q, i, w);
            c.line("backend.scatterAddRows($L.aDx, $L.aTok[$L], null, n$L, DIM, $L)", m, m, i, i, dIn);
            c.close();
            boolean lastOfKv = units.stream().noneMatch(x -> x.kvOwner() == u.kvOwner() && x.index() > i);
            if (lastOfKv) {
                int owner = u.kvOwner();
                AttnUnit ou = units.get(owner);
                String kf = Names.field(ou.kvPrefix() + ".k");
                String vf = Names.field(ou.kvPrefix() + ".v");
                c.comment("keys and values of expert $L (every token)", owner);
                if (rope) {
                    c.line("backend.rope($L.aDk[$L], rows, seq, $L, $L, $L, THETA, true)", m, owner, ou.heads(), ou.headDim(), cfg.position().rotaryDims(ou.headDim()));
                }
                c.line("backend.matmulBackward($L, 0, $L.value(), 0, $L.aDk[$L], 0, $L, 0, $L.grad(), 0, rows, DIM, $L)", in, kf, m, owner, dIn, kf, w);
                c.line("backend.matmulBackward($L, 0, $L.value(), 0, $L.aDv[$L], 0, $L, 0, $L.grad(), 0, rows, DIM, $L)", in, vf, m, owner, dIn, vf, w);
            }
        }
        c.comment("each slot's weight gradient, then the router's");
        c.open("for (int t = 0; t < rows; t++)");
        c.open("for (int s = 0; s < $L; s++)", k);
        c.line("int ex = $L.selected[t * $L + s]", m, k);
        c.line("$L.dWeight[t * $L + s] = ex < $L ? $L.dGateW[t * $L + ex] : 0f", m, k, e, m, n);
        c.close();
        c.close();
        c.line("$LBackward($L, scale)", routerMethod(moe), m);
        routerMatmulBackward(c, moe, p, m, in, dIn);
        return c;
    }

    private Code ffnForward(Block.Part part, int layer, String s, String in, String out) {
        String prefix = "layers." + layer + ".ffn";
        return switch (part) {
            case Block.Part.Dense d -> denseForward(prefix, d.ffn(), s, in, out, "rows");
            case Block.Part.MoePart m -> moeForward(layer, m.moe(), in, out);
            default -> throw new IllegalStateException();
        };
    }

    private static String act(Ffn f) {
        return switch (f.activation()) {
            case SWIGLU -> "SILU";
            case GEGLU, GELU -> "GELU";
            case RELU -> "RELU";
        };
    }

    private Code denseForward(String prefix, Ffn f, String s, String in, String out, String rows) {
        Code c = new Code();
        int h = f.hidden();
        String up = Names.field(prefix + ".up");
        String down = Names.field(prefix + ".down");
        if (f.activation().gated()) {
            c.line("backend.matmul($L, 0, $L.value(), 0, $L.gate, 0, $L, DIM, $L)", in, Names.field(prefix + ".gate"), s, rows, h);
            c.line("backend.matmul($L, 0, $L.value(), 0, $L.up, 0, $L, DIM, $L)", in, up, s, rows, h);
            c.line("backend.glu($T.$L, $L.gate, $L.up, $L.act, $L * $L)", ACTIVATION, act(f), s, s, s, rows, h);
        } else {
            c.line("backend.matmul($L, 0, $L.value(), 0, $L.up, 0, $L, DIM, $L)", in, up, s, rows, h);
            c.line("backend.activation($T.$L, $L.up, $L.act, $L * $L)", ACTIVATION, act(f), s, s, rows, h);
        }
        c.line("backend.matmul($L.act, 0, $L.value(), 0, $L, 0, $L, $L, DIM)", s, down, out, rows, h);
        return c;
    }

    /** The shape of the packed routed experts, or null when none is packed (zero-computation or mixed latent experts only). */
    private static Ffn routedFfn(Moe m) {
        for (ExpertGroup g : m.groups()) {
            if (g.role() == ExpertGroup.Role.ROUTED && g.expert() instanceof Expert.FeedForward f) {
                return f.ffn();
            }
            if (g.role() == ExpertGroup.Role.ROUTED && g.expert() instanceof Expert.Latent lat && !mixedGroups(m)) {
                return lat.ffn();
            }
            if (g.role() == ExpertGroup.Role.ROUTED && g.expert() instanceof Expert.Lora lo && !mixedGroups(m)) {
                return lo.base();
            }
        }
        return null;
    }

    /**
     * Latent experts beside FFN experts, several latent groups, FFN experts of different shapes, or a
     * LoRA group beside any of them in one MoE's routed experts: the FFN experts of the first shape
     * run packed, every latent or FFN group per expert on its own weights after them (a latent group
     * with its own down-projection), and the LoRA group last, over its own copy of the base's
     * activations.
     */
    static boolean mixedGroups(Moe m) {
        long latent = m.groups().stream().filter(g -> g.role() == ExpertGroup.Role.ROUTED && g.expert() instanceof Expert.Latent).count();
        long lora = m.groups().stream().filter(g -> g.role() == ExpertGroup.Role.ROUTED && g.expert() instanceof Expert.Lora).count();
        long shapes = m.groups().stream().filter(g -> g.role() == ExpertGroup.Role.ROUTED && g.expert() instanceof Expert.FeedForward)
                .map(g -> ((Expert.FeedForward) g.expert()).ffn()).distinct().count();
        return latent + lora + shapes > 1;
    }

    /** The first routed FFN group's shape, or null. */
    static Ffn firstRoutedFfn(Moe m) {
        return m.groups().stream().filter(g -> g.role() == ExpertGroup.Role.ROUTED && g.expert() instanceof Expert.FeedForward)
                .map(g -> ((Expert.FeedForward) g.expert()).ffn()).findFirst().orElse(null);
    }

    private Moe moeOfLayer(int index) {
        return moeOf(model.layers().get(index)).orElseThrow();
    }

    /** A name for a static constant of one distinct MoE: {@code KEYS_MOEPP_RESIDUAL_FALSE}. */
    private static String moeConstant(String what, Moe m) {
        return what + "_" + Names.constant(routerMethod(m).substring("route".length()));
    }

    /** The static table of each routed expert's dispatch key (added once per distinct MoE). */
    private String slotKeyConstant(Moe moe, Slots sl) {
        String name = moeConstant("KEYS", moe);
        if (constantsAdded.add(name)) {
            type.addField(FieldSpec.builder(int[].class, name, Modifier.PRIVATE, Modifier.STATIC, Modifier.FINAL)
                    .addJavadoc("$L: each routed expert's dispatch key; the FFN experts come first, in packed order\n", moe.name())
                    .initializer("{$L}", String.join(", ", java.util.Arrays.stream(sl.key()).mapToObj(String::valueOf).toList())).build());
        }
        return name;
    }

    private static int slotOfKey(Slots sl, int key) {
        for (int j = 0; j < sl.key().length; j++) {
            if (sl.key()[j] == key) {
                return j;
            }
        }
        throw new IllegalStateException("no slot with key " + key);
    }

    /** " (key 8)" or "s (keys 8..9)": words for a run of keys in a comment. */
    private static String keys(int from, int to) {
        return to - from == 1 ? " (key " + from + ")" : "s (keys " + from + ".." + (to - 1) + ")";
    }

    private interface KeyRun {
        void accept(int fromKey, int toKey, Expert expert);
    }

    /** The zero-computation experts by key: runs of zero or copy experts together, each constant expert alone. */
    private static void zeroComputeRuns(Slots sl, KeyRun run) {
        int e = sl.experts().size();
        int key = sl.ffn();
        while (key < e) {
            Expert x = sl.experts().get(slotOfKey(sl, key));
            int to = key + 1;
            if (!(x instanceof Expert.Constant)) {
                while (to < e && sl.experts().get(slotOfKey(sl, to)).getClass() == x.getClass()) {
                    to++;
                }
            }
            run.accept(key, to, x);
            key = to;
        }
    }

    /** Top-k or top-p routing (token choice by a number or a mass of experts). */
    private static boolean tokenChoice(Router r) {
        return r.selection() instanceof Router.Selection.TopK || r.selection() instanceof Router.Selection.TopP;
    }

    /** The most experts one gate gives a token: k or top-p's max_k (0 for other routing). */
    private static int gateSlots(Router r) {
        return switch (r.selection()) {
            case Router.Selection.TopK t -> t.k();
            case Router.Selection.TopP t -> t.maxK();
            default -> 0;
        };
    }

    /** Slots per token: k, or top-p's max_k (a token's unused slots route to no expert); with named gates, the most any gate takes. */
    private int slotsPerToken(Router r) {
        return switch (r.selection()) {
            case Router.Selection.TopK t -> variableK.getOrDefault(r, t.k());
            case Router.Selection.TopP t -> variableK.getOrDefault(r, t.maxK());
            // expert choice: every token ranks every expert (top-E); the experts' picks drop the rest
            case Router.Selection.ExpertChoice x -> expertsOfRouter.get(r);
            // soft: every token takes every expert, weighted by its score
            case Router.Selection.Soft x -> expertsOfRouter.get(r);
            default -> throw new IllegalStateException();
        };
    }

    /** Routers of MoEs whose named gates differ in top_k, with the largest k (the slots per token). */
    private final Map<Router, Integer> variableK = new LinkedHashMap<>();

    /** Whether a token may use fewer than all its slots (top-p, or a gate of smaller k): the unused ones route to no expert. */
    private boolean topP(Router r) {
        return r.selection() instanceof Router.Selection.TopP || variableK.containsKey(r);
    }

    private static boolean topPSelection(Router r) {
        return r.selection() instanceof Router.Selection.TopP;
    }

    private boolean anyTopP() {
        return moes.values().stream().anyMatch(m -> topP(m.routers().getFirst()));
    }

    /** The capacity factor of a token-choice router that drops slots over capacity, or null when dropless. */
    private static Router.Capacity.Factor capacity(Router r) {
        return r.capacity() instanceof Router.Capacity.Factor cf && !expertChoice(r) ? cf : null;
    }

    /** An MoE's token-choice capacity factor: its first gate's, else another named gate's (top-k gates may differ in capacity), or null when all are dropless. */
    private static Router.Capacity.Factor capacity(Moe m) {
        return m.routers().stream().map(ModelGenerator::capacity).filter(java.util.Objects::nonNull).findFirst().orElse(null);
    }

    /** Whether an MoE's named gates differ in capacity: each gate then keeps its own capacity over the rows of its sequences. */
    private static boolean gatesDifferInCapacity(Moe m) {
        return m.routers().stream().map(Router::capacity).distinct().count() > 1;
    }

    /** Whether any gate of an MoE drops over capacity by a seeded random priority. */
    private static boolean randomDrops(Moe m) {
        return m.routers().stream().anyMatch(g -> capacity(g) != null && capacity(g).drop() == Router.DropPolicy.RANDOM);
    }

    private static boolean expertChoice(Router r) {
        return r.selection() instanceof Router.Selection.ExpertChoice;
    }

    /** Whether any MoE drops slots: a token-choice capacity factor or expert-choice routing. */
    private boolean anyCapacity() {
        return moes.values().stream().anyMatch(m -> capacity(m) != null || expertChoice(m.routers().getFirst()));
    }

    /** Whether the step and micro-batch counters are kept: they seed jitter noise and random drop priorities. */
    private boolean anySeeded() {
        return anyJitter() || moes.values().stream().anyMatch(m -> randomDrops(m));
    }

    /** A temperature that moves from its start to its end over the first steps of training (dense to sparse). */
    private static boolean annealed(Router r) {
        return r.temperature().isPresent() && r.temperature().get().steps() > 0 && r.temperature().get().start() != r.temperature().get().end();
    }

    /** The temperature's expression in a router method: a literal, or the annealed value of this forward. */
    private static String temperature(Router r) {
        return annealed(r) ? "m.temperature" : floatLiteral(r.temperature().get().start()) + "f";
    }

    /**
     * The temperature in a router method over a range of rows (one of several named gates): an annealed
     * one is recomputed from the step in the forward and the backward alike, as each gate has its own.
     */
    private static String temperature(Router r, boolean ranged) {
        return ranged && annealed(r) ? "tau" : temperature(r);
    }

    private static String annealedTemperature(Router.Temperature tp) {
        return String.format(Locale.ROOT, "(float) (%s + (%s - %s) * (double) Math.min(step, %dL) / %d)", tp.start(), tp.end(), tp.start(), tp.steps(), tp.steps());
    }

    private boolean anyAnneal() {
        return moes.values().stream().anyMatch(m -> m.routers().stream().anyMatch(ModelGenerator::annealed));
    }

    /** Whether the model keeps the optimiser step: seeded noise and annealed temperatures read it. */
    private boolean keepsStep() {
        return anySeeded() || anyAnneal();
    }

    private boolean anyJitter() {
        return moes.values().stream().anyMatch(ModelGenerator::jitters);
    }

    /** Whether any gate of an MoE jitters its router's input. */
    private static boolean jitters(Moe m) {
        return m.routers().stream().anyMatch(g -> g.jitter() != 0);
    }

    /** Whether an MoE's named gates differ in jitter: each sequence's rows then get the noise of its gate. */
    private static boolean gatesDifferInJitter(Moe m) {
        return m.routers().stream().map(Router::jitter).distinct().count() > 1;
    }

    private boolean anyGatesDifferInJitter() {
        return moes.values().stream().anyMatch(ModelGenerator::gatesDifferInJitter);
    }

    /** Whether the router's scores read a transform of its logits: act(logits) / temperature. */
    private static boolean transformsLogits(Router r) {
        return r.temperature().isPresent();
    }

    private boolean anyLogitTransform() {
        return moes.values().stream().anyMatch(m -> m.routers().stream().anyMatch(ModelGenerator::transformsLogits));
    }

    private static String routerMethod(Moe m) {
        return "route" + Names.type(Names.field(m.name().replaceAll("[^A-Za-z0-9]+", "_")));
    }

    private Code moeForward(int layer, Moe moe, String in, String out) {
        Code c = new Code();
        String m = "moe" + layer;
        String p = "layers." + layer + ".moe";
        Router r = moe.routers().getFirst();
        int e = moe.routedExperts();
        int k = slotsPerToken(r);
        Ffn f = routedFfn(moe);
        Slots sl = slotsByPrefix.get(p);
        int nf = sl.ffn();
        c.comment("router: logits, scores, $L ($L)", topP(r) ? "top-p (at most " + k + ")" : "top-" + k, moe.name());
        String routerIn = in;
        if (r.pregate()) {
            c.comment("pre-gating (Read-ME): the router reads the embeddings, not this layer's input");
            routerIn = "embedded";
        }
        if (moe.routers().size() > 1) {
            c.comment("several named gates: each sequence is routed by the gate named after its domain (the first, $L, when none is)",
                    moe.routers().getFirst().name().orElseThrow());
            c.line("$T[] gates = {$L}", PARAMETER, String.join(", ", gateFields(moe, p)));
            c.open("for (int b = 0; b < batch; b++)").line("$L.gateOf[b] = gateOf($L, b)", m, gateNamesConstant(moe)).close();
        }
        if (gatesDifferInJitter(moe)) {
            c.comment("jitter (training forwards only): the router reads its input times uniform noise in [1 - eps, 1 + eps], eps its sequence's gate's ($L)",
                    String.join(", ", moe.routers().stream().map(g -> g.name().orElseThrow() + " " + g.jitter()).toList()));
            c.open("if (counting)");
            c.line("$L.jitterOn = true", m);
            c.line("jitterOfGates($L, $L, rows, new float[] {$L}, $L)", routerIn, m,
                    String.join(", ", moe.routers().stream().map(g -> floatLiteral(g.jitter()) + "f").toList()), layer);
            routerMatmul(c, moe, p, m, m + ".jittered");
            c.orElse("else");
            c.line("$L.jitterOn = false", m);
            routerMatmul(c, moe, p, m, routerIn);
            c.close();
        } else if (r.jitter() != 0) {
            c.comment("jitter (training forwards only): the router reads its input times uniform noise in [1 - $L, 1 + $L]", r.jitter(), r.jitter());
            c.open("if (counting)");
            c.line("$L.jitterOn = true", m);
            c.line("jitter($L, $L, rows, $Lf, $L)", routerIn, m, floatLiteral(r.jitter()), layer);
            routerMatmul(c, moe, p, m, m + ".jittered");
            c.orElse("else");
            c.line("$L.jitterOn = false", m);
            routerMatmul(c, moe, p, m, routerIn);
            c.close();
        } else {
            routerMatmul(c, moe, p, m, routerIn);
        }
        if (r.recurrentWidth().isPresent()) {
            String rp = Names.field(p + ".router.gru_in");
            c.comment("recurrent router (RMoE): u = x · gru_inᵀ; h = GRU(u, h of the previous recurrent layer); logits += h · gru_outᵀ");
            c.line("backend.matmul($L, 0, $L.value(), 0, $L.gruU, 0, rows, DIM, $L)", in, rp, m, gruWidth);
            c.line("System.arraycopy(gruState, 0, $L.gruPrev, 0, rows * $L)", m, gruWidth);
            c.line("gru($L)", m);
            c.line("System.arraycopy($L.gruH, 0, gruState, 0, rows * $L)", m, gruWidth);
            c.line("addLinear($L.gruH, $L.value(), $L.logits, rows, $L, $L)", m, Names.field(p + ".router.gru_out"), m, gruWidth, e);
        }
        Integer prev = residualFrom.get(layer);
        if (prev != null) {
            int ep = moeOfLayer(prev).routedExperts();
            c.comment("gating residual: logits += G · (the pre-softmax logits of layer $L)", prev);
            c.line("addLinear(moe$L.logits, $L.value(), $L.logits, rows, $L, $L)", prev, Names.field(p + ".router.residual"), m, ep, e);
        }
        if (biasPerGate(moe)) {
            c.comment("each gate selects with its own expert bias");
            c.line("$L($L, new float[][] {$L})", routerMethod(moe), m, String.join(", ", moe.routers().stream()
                    .map(g -> g.bias().isPresent() ? Names.field(p + ".router." + g.name().orElseThrow() + ".expert_bias") + ".value()" : "null").toList()));
        } else {
            c.line("$L($L, $L)", routerMethod(moe), m, r.bias().isPresent() ? Names.field(p + ".router.expert_bias") + ".value()" : "null");
        }
        if (expertChoice(r)) {
            double cf = ((Router.Selection.ExpertChoice) r.selection()).factor();
            c.comment("expert choice: in each sequence, each expert keeps its best ceil($L · n / $L) tokens by probability, n the sequence's kept tokens; the other slots hold key $L and sort last, undispatched",
                    cf, e, e);
            c.line("int allSlots = rows * $L", k);
            c.line("expertChoice($L, batch, seq, $L, $L, keep)", m, e, cf);
            c.open("for (int i = 0; i < allSlots; i++)");
            c.line("$L.slotKey[i] = $L.dropped[i] ? $L : $L", m, m, e, sl.identity() ? m + ".selected[i]" : slotKeyConstant(moe, sl) + "[" + m + ".selected[i]]");
            c.close();
            c.line("$T.sortByExpert($L.slotKey, allSlots, $L, $L.order, $L.offsets)", ROUTING, m, e + 1, m, m);
            c.line("int slots = $L.offsets[$L]", m, e);
        } else if (capacity(moe) != null && gatesDifferInCapacity(moe)) {
            c.comment("named gates of different capacities (training forwards only): each gate's experts keep at most ceil(factor · its kept rows · $L / $L) of the slots of the sequences it routes; the dropped slots hold key $L and sort last, undispatched",
                    k, e, e);
            c.line("int allSlots = rows * $L", k);
            c.open("if (counting)");
            if (randomDrops(moe)) {
                c.line("float[] priority = randomPriority(allSlots, $L)", layer);
            }
            c.line("boolean[] gateDropped = new boolean[allSlots]");
            c.line("boolean[] gateRows = new boolean[rows]");
            for (int g = 0; g < moe.routers().size(); g++) {
                Router gate = moe.routers().get(g);
                Router.Capacity.Factor gf = capacity(gate);
                c.comment("gate $L: $L", gate.name().orElseThrow(), gf == null ? "dropless, its slots kept but for padding" : "capacity factor " + gf.factor() + ", by " + switch (gf.drop()) {
                    case PROBABILITY -> "highest weight";
                    case POSITION -> "earliest token";
                    case RANDOM -> "a seeded random priority";
                });
                if (gf == null) {
                    c.open("for (int i = 0; i < allSlots; i++)");
                    c.open("if ($L.gateOf[i / $L / seq] == $L)", m, k, g).line("gateDropped[i] = keep != null && !keep[i / $L]", k).close();
                    c.close();
                    continue;
                }
                c.line("int rowsOfGate$L = 0", g);
                c.open("for (int t = 0; t < rows; t++)");
                c.line("gateRows[t] = $L.gateOf[t / seq] == $L && (keep == null || keep[t])", m, g);
                c.line("rowsOfGate$L += gateRows[t] ? 1 : 0", g);
                c.close();
                c.comment("the other gates' rows count as padding here: dropped, competing for no capacity");
                c.line("dropOverCapacity($L, allSlots, $L, (int) Math.ceil($L * rowsOfGate$L * $L / $L), $L, gateRows, $L)", m, e, gf.factor(), g, k, e,
                        switch (gf.drop()) {
                            case PROBABILITY -> m + ".weight";
                            case POSITION -> "null";
                            case RANDOM -> "priority";
                        }, k);
                c.open("for (int i = 0; i < allSlots; i++)");
                c.open("if ($L.gateOf[i / $L / seq] == $L)", m, k, g).line("gateDropped[i] = $L.dropped[i]", m).close();
                c.close();
            }
            c.line("System.arraycopy(gateDropped, 0, $L.dropped, 0, allSlots)", m);
            c.orElse("else");
            c.open("for (int i = 0; i < allSlots; i++)").line("$L.dropped[i] = keep != null && !keep[i / $L]", m, k).close();
            c.close();
            c.open("for (int i = 0; i < allSlots; i++)");
            c.line("$L.slotKey[i] = $L.dropped[i] ? $L : $L", m, m, e, sl.identity() ? m + ".selected[i]" : slotKeyConstant(moe, sl) + "[" + m + ".selected[i]]");
            c.close();
            c.line("$T.sortByExpert($L.slotKey, allSlots, $L, $L.order, $L.offsets)", ROUTING, m, e + 1, m, m);
            c.line("int slots = $L.offsets[$L]", m, e);
        } else if (capacity(moe) != null) {
            Router.Capacity.Factor cf = capacity(moe);
            c.comment("capacity factor $L (training forwards only): each expert keeps at most ceil($L · rows · $L / $L) slots, by $L; the dropped slots hold key $L and sort last, undispatched",
                    cf.factor(), cf.factor(), k, e, switch (cf.drop()) {
                        case PROBABILITY -> "highest weight";
                        case POSITION -> "earliest token";
                        case RANDOM -> "a seeded random priority";
                    }, e);
            c.line("int allSlots = rows * $L", k);
            c.open("if (counting)");
            c.line("dropOverCapacity($L, allSlots, $L, (int) Math.ceil($L * keptRows * $L / $L), $L, keep, $L)", m, e, cf.factor(), k, e, switch (cf.drop()) {
                case PROBABILITY -> m + ".weight";
                case POSITION -> "null";
                case RANDOM -> "randomPriority(allSlots, " + layer + ")";
            }, k);
            c.orElse("else");
            c.open("for (int i = 0; i < allSlots; i++)").line("$L.dropped[i] = keep != null && !keep[i / $L]", m, k).close();
            c.close();
            c.open("for (int i = 0; i < allSlots; i++)");
            c.line("$L.slotKey[i] = $L.dropped[i] ? $L : $L", m, m, e, sl.identity() ? m + ".selected[i]" : slotKeyConstant(moe, sl) + "[" + m + ".selected[i]]");
            c.close();
            c.line("$T.sortByExpert($L.slotKey, allSlots, $L, $L.order, $L.offsets)", ROUTING, m, e + 1, m, m);
            c.line("int slots = $L.offsets[$L]", m, e);
        } else if (topP(r)) {
            c.comment("dispatch: group the $L slots by key (counting sort); a token's unused slots hold key $L and sort last, undispatched", "rows * " + k, e);
            c.line("int allSlots = rows * $L", k);
            if (sl.identity()) {
                c.open("if (keep == null)");
                c.line("$T.sortByExpert($L.selected, allSlots, $L, $L.order, $L.offsets)", ROUTING, m, e + 1, m, m);
                c.orElse("else");
                c.comment("padding mask: a dropped token's slots sort last, undispatched");
                c.open("for (int i = 0; i < allSlots; i++)").line("$L.slotKey[i] = keep[i / $L] ? $L.selected[i] : $L", m, k, m, e).close();
                c.line("$T.sortByExpert($L.slotKey, allSlots, $L, $L.order, $L.offsets)", ROUTING, m, e + 1, m, m);
                c.close();
            } else {
                c.open("for (int i = 0; i < allSlots; i++)");
                c.line("$L.slotKey[i] = $L.selected[i] == $L || keep != null && !keep[i / $L] ? $L : $L[$L.selected[i]]", m, m, e, k, e, slotKeyConstant(moe, sl), m);
                c.close();
                c.line("$T.sortByExpert($L.slotKey, allSlots, $L, $L.order, $L.offsets)", ROUTING, m, e + 1, m, m);
            }
            c.line("int slots = $L.offsets[$L]", m, e);
        } else if (sl.identity()) {
            c.comment("dispatch: group the $L slots by expert (counting sort), gather their inputs", "rows * " + k);
            c.line("int slots = rows * $L", k);
            c.open("if (keep == null)");
            c.line("$T.sortByExpert($L.selected, slots, $L, $L.order, $L.offsets)", ROUTING, m, e, m, m);
            c.orElse("else");
            c.comment("padding mask: a dropped token's slots hold key $L and sort last, undispatched", e);
            c.open("for (int i = 0; i < slots; i++)").line("$L.slotKey[i] = keep[i / $L] ? $L.selected[i] : $L", m, k, m, e).close();
            c.line("$T.sortByExpert($L.slotKey, slots, $L, $L.order, $L.offsets)", ROUTING, m, e + 1, m, m);
            c.line("slots = $L.offsets[$L]", m, e);
            c.close();
        } else {
            c.comment("dispatch: group the $L slots by key (FFN experts first; counting sort), gather their inputs; a padding mask's dropped slots hold key $L and sort last",
                    "rows * " + k, e);
            c.line("int slots = rows * $L", k);
            c.open("for (int i = 0; i < slots; i++)").line("$L.slotKey[i] = keep == null || keep[i / $L] ? $L[$L.selected[i]] : $L", m, k, slotKeyConstant(moe, sl), m, e).close();
            c.line("$T.sortByExpert($L.slotKey, slots, keep == null ? $L : $L, $L.order, $L.offsets)", ROUTING, m, e, e + 1, m, m);
            c.line("slots = $L.offsets[$L]", m, e);
        }
        c.open("for (int i = 0; i < slots; i++)");
        c.line("$L.tokenOfRow[i] = $L.order[i] / $L", m, m, k);
        c.line("$L.weightOfRow[i] = $L.weight[$L.order[i]]", m, m, m);
        c.close();
        c.open("for (int ex = 0; ex < $L; ex++)", e);
        if (sl.identity()) {
            c.line("$L.counts[ex] = $L.offsets[ex + 1] - $L.offsets[ex]", m, m, m);
        } else {
            c.line("int key = $L[ex]", slotKeyConstant(moe, sl));
            c.line("$L.counts[ex] = $L.offsets[key + 1] - $L.offsets[key]", m, m, m);
        }
        c.open("if (counting)").line("$L.stepCounts[ex] += $L.counts[ex]", m, m).close();
        c.close();
        c.open("if (counting)");
        c.line("$L.stepSlots += slots", m);
        if (biasPerGate(moe)) {
            c.comment("each gate's loads over the sequences it routes, for its expert bias");
            c.open("for (int i = 0; i < slots; i++)");
            c.line("int g = $L.gateOf[$L.order[i] / $L / seq]", m, m, k);
            c.line("$L.gateStepCounts[g * $L + $L.selected[$L.order[i]]]++", m, e, m, m);
            c.line("$L.gateStepSlots[g]++", m);
            c.close();
        }
        c.close();
        String ffnRows = sl.zeroCompute() ? "ffnRows" : "slots";
        if (sl.zeroCompute()) {
            c.comment("the FFN experts' rows come first; the zero-computation experts' rows follow");
            c.line("int ffnRows = $L.offsets[$L]", m, nf);
        }
        boolean loraAlone = loraByPrefix.containsKey(p) && !mixedGroups(moe);
        if (loraAlone) {
            c.add(loraForward(p, m, loraByPrefix.get(p).getFirst(), sl, nf, in, ffnRows).build());
        } else if (sl.packed() > 0) {
            int np = sl.packed();
            String packedRows = np == nf ? ffnRows : "packedRows";
            if (np != nf) {
                c.comment("the packed FFN experts' rows come first, the other groups' rows next");
                c.line("int packedRows = $L.offsets[$L]", m, np);
            }
            int h = f.hidden();
            LatentGroup lg = latentByPrefix.get(p);
            String width = "DIM";
            if (lg != null) {
                width = String.valueOf(lg.rank());
                c.comment("latent experts (MoLE): z = x · latent_downᵀ once per token, then each expert's FFN reads its token's z");
                c.line("backend.matmul($L, 0, $L.value(), 0, $L.latent, 0, rows, DIM, $L)", in, lg.downField(), m, lg.rank());
                c.line("backend.gatherRows($L.latent, $L.tokenOfRow, $L, $L, $L.xs)", m, m, packedRows, lg.rank(), m);
            } else {
                c.line("backend.gatherRows($L, $L.tokenOfRow, $L, DIM, $L.xs)", in, m, packedRows, m);
            }
            c.comment("experts: grouped matmuls over the sorted rows ($L x $L)", np, f);
            String gate = Names.field(p + ".experts.gate");
            String up = Names.field(p + ".experts.up");
            String down = Names.field(p + ".experts.down");
            if (f.activation().gated()) {
                c.line("backend.groupedMatmul($L.xs, $L, 0, $L.gate, $L.offsets, $L, $L, $L)", m, gate, m, m, np, width, h);
                c.line("backend.groupedMatmul($L.xs, $L, 0, $L.up, $L.offsets, $L, $L, $L)", m, up, m, m, np, width, h);
                c.line("backend.glu($T.$L, $L.gate, $L.up, $L.act, $L * $L)", ACTIVATION, act(f), m, m, m, packedRows, h);
            } else {
                c.line("backend.groupedMatmul($L.xs, $L, 0, $L.up, $L.offsets, $L, $L, $L)", m, up, m, m, np, width, h);
                c.line("backend.activation($T.$L, $L.up, $L.act, $L * $L)", ACTIVATION, act(f), m, m, packedRows, h);
            }
            c.line("backend.groupedMatmul($L.act, $L, 0, $L.ys, $L.offsets, $L, $L, DIM)", m, down, m, m, np, h);
        }
        for (OwnGroup g : mixedByPrefix.getOrDefault(p, List.of())) {
            c.add(ownGroupForward(p, m, g, sl, in).build());
        }
        if (loraByPrefix.containsKey(p) && !loraAlone) {
            for (LoraGroup lo : loraByPrefix.get(p)) {
                useLora(c, m, p, lo);
                c.add(loraForward(p, m, lo, sl, lo.count(), in, ffnRows).build());
                if (loraByPrefix.get(p).size() > 1) {
                    c.close();
                }
            }
        }
        zeroComputeRuns(sl, (from, to, x) -> {
            String rows = m + ".offsets[" + from + "], " + m + ".offsets[" + to + "]";
            switch (x) {
                case Expert.Zero z -> {
                    c.comment("zero expert$L: output 0", keys(from, to));
                    c.line("$T.fill($L.ys, $L.offsets[$L] * DIM, $L.offsets[$L] * DIM, 0f)", ARRAYS, m, m, from, m, to);
                }
                case Expert.Copy cp -> {
                    c.comment("copy expert$L: output the input", keys(from, to));
                    c.open("for (int i = $L.offsets[$L]; i < $L.offsets[$L]; i++)", m, from, m, to);
                    c.line("System.arraycopy($L, $L.tokenOfRow[i] * DIM, $L.ys, i * DIM, DIM)", in, m, m);
                    c.close();
                }
                case Expert.Constant cs -> {
                    String ep = p + ".experts." + slotOfKey(sl, from);
                    c.comment("constant expert $L (key $L): softmax(mix · x) mixes x and the vector", slotOfKey(sl, from), from);
                    c.line("constantExpert($L, $L, $L, $L.value(), $L.value())", in, m, rows, Names.field(ep + ".vector"), Names.field(ep + ".mix"));
                }
                default -> throw new IllegalStateException();
            }
        });
        c.comment("combine: out[token] = Σ weight · expert output");
        c.line("$T.zero($L, rows * DIM)", ELEMENTWISE, out);
        c.line("backend.scatterAddRows($L.ys, $L.tokenOfRow, $L.weightOfRow, slots, DIM, $L)", m, m, m, out);
        for (LoraGroup lo : loraByPrefix.getOrDefault(p, List.of())) {
            if (loraByPrefix.get(p).size() > 1) {
                c.comment("LoRA group $L's frozen base output", lo.index());
                c.line("$T.addInPlace($L, $L.loraOfGroup[$L][$L], rows * DIM)", ELEMENTWISE, out, m, lo.index(), LORA_BUFFERS.indexOf("loraBase"));
            } else {
                c.line("$T.addInPlace($L, $L.loraBase, rows * DIM)", ELEMENTWISE, out, m);
            }
        }
        int s = 0;
        for (ExpertGroup g : moe.groups()) {
            if (g.role() != ExpertGroup.Role.SHARED) {
                continue;
            }
            Ffn sf = ((Expert.FeedForward) g.expert()).ffn();
            for (int i = 0; i < g.count(); i++, s++) {
                String sp = p + ".shared." + s;
                c.comment("shared expert $L: $L$L", s, sf, g.sigmoidGate() ? ", with a sigmoid gate" : "");
                c.add(denseForward(sp, sf, m + ".shared[" + s + "]", in, m + ".sharedOut", "rows").build());
                if (g.sigmoidGate()) {
                    c.line("backend.matmul($L, 0, $L.value(), 0, $L.sharedGate, 0, rows, DIM, 1)", in, Names.field(sp + ".sigmoid_gate"), m);
                    c.open("for (int t = 0; t < rows; t++)");
                    c.line("$L.sharedGate[t] = $T.sigmoid($L.sharedGate[t])", m, ELEMENTWISE, m);
                    c.close();
                    c.line("System.arraycopy($L.sharedOut, 0, tmp2, 0, rows * DIM)", m);
                    c.line("$T.scaleRows(tmp2, $L.sharedGate, rows, DIM)", ELEMENTWISE, m);
                    c.line("$T.addInPlace($L, tmp2, rows * DIM)", ELEMENTWISE, out);
                    // keep the ungated output for the gate's gradient
                    // (sized on first use and regrown when a later batch has more rows)
                    c.line("System.arraycopy($L.sharedOut, 0, $L.shared[$L].input == null || $L.shared[$L].input.length < rows * DIM ? ($L.shared[$L].input = new float[rows * DIM]) : $L.shared[$L].input, 0, rows * DIM)",
                            m, m, s, m, s, m, s, m, s);
                } else {
                    c.line("$T.addInPlace($L, $L.sharedOut, rows * DIM)", ELEMENTWISE, out, m);
                }
            }
        }
        c.add(balanceForward(moe, m, e, k).build());
        return c;
    }

    /** The router's logits from {@code x}: one gate for all rows, or each sequence's named gate. */
    private void routerMatmul(Code c, Moe moe, String p, String m, String x) {
        int e = moe.routedExperts();
        if (moe.routers().size() > 1) {
            c.open("for (int b = 0; b < batch; b++)");
            c.line("backend.matmul($L, b * seq * DIM, gates[$L.gateOf[b]].value(), 0, $L.logits, b * seq * $L, seq, DIM, $L)", x, m, m, e, e);
            c.close();
        } else {
            c.line("backend.matmul($L, 0, $L.value(), 0, $L.logits, 0, rows, DIM, $L)", x, Names.field(p + ".router.weight"), m, e);
        }
    }

    /** Backward of {@link #routerMatmul}. */
    private void routerMatmulBackward(Code c, Moe moe, String p, String m, String x, String dx) {
        int e = moe.routedExperts();
        if (moe.routers().size() > 1) {
            c.open("for (int b = 0; b < batch; b++)");
            c.line("$T w = gates[$L.gateOf[b]]", PARAMETER, m);
            c.line("backend.matmulBackward($L, b * seq * DIM, w.value(), 0, $L.dLogits, b * seq * $L, $L, b * seq * DIM, w.grad(), 0, seq, DIM, $L)", x, m, e, dx,
                    e);
            c.close();
        } else {
            String wr = Names.field(p + ".router.weight");
            c.line("backend.matmulBackward($L, 0, $L.value(), 0, $L.dLogits, 0, $L, 0, $L.grad(), 0, rows, DIM, $L)", x, wr, m, dx, wr, e);
        }
    }

    private static List<String> gateFields(Moe moe, String p) {
        return moe.routers().stream().map(g -> Names.field(p + ".router." + g.name().orElseThrow() + ".weight")).toList();
    }

    /** The static table of one distinct MoE's gate names, in declaration order. */
    private String gateNamesConstant(Moe moe) {
        String name = moeConstant("GATES", moe);
        if (constantsAdded.add(name)) {
            type.addField(FieldSpec.builder(String[].class, name, Modifier.PRIVATE, Modifier.STATIC, Modifier.FINAL)
                    .addJavadoc("$L: its named gates; a sequence takes the gate named after its domain\n", moe.name())
                    .initializer("{$L}", String.join(", ", moe.routers().stream().map(g -> "\"" + g.name().orElseThrow() + "\"").toList())).build());
        }
        return name;
    }

    /**
     * The GRU cell that recurrent routers share (PyTorch's gate order r, z, n): r = σ(W_ir u + b_ir +
     * W_hr h + b_hr), z likewise, n = tanh(W_in u + b_in + r ⊙ (W_hn h + b_hn)), h' = (1 - z) ⊙ n + z ⊙ h.
     */
    private void gruHelpers() {
        int w = gruWidth;
        String wih = Names.field("router_gru.w_ih");
        String whh = Names.field("router_gru.w_hh");
        String bih = Names.field("router_gru.b_ih");
        String bhh = Names.field("router_gru.b_hh");
        Code c = new Code();
        c.line("backend.matmul(m.gruU, 0, $L.value(), 0, gruGi, 0, rows, $L, $L)", wih, w, 3 * w);
        c.line("backend.matmul(m.gruPrev, 0, $L.value(), 0, gruGh, 0, rows, $L, $L)", whh, w, 3 * w);
        c.line("float[] bi = $L.value()", bih);
        c.line("float[] bh = $L.value()", bhh);
        c.open("for (int t = 0; t < rows; t++)");
        c.open("for (int j = 0; j < $L; j++)", w);
        c.line("int g = t * $L + j", 3 * w);
        c.line("int o = t * $L + j", w);
        c.line("float r = $T.sigmoid(gruGi[g] + bi[j] + gruGh[g] + bh[j])", ELEMENTWISE);
        c.line("float z = $T.sigmoid(gruGi[g + $L] + bi[j + $L] + gruGh[g + $L] + bh[j + $L])", ELEMENTWISE, w, w, w, w);
        c.line("float nh = gruGh[g + $L] + bh[j + $L]", 2 * w, 2 * w);
        c.line("float n = (float) Math.tanh(gruGi[g + $L] + bi[j + $L] + r * nh)", 2 * w, 2 * w);
        c.line("m.gruR[o] = r").line("m.gruZ[o] = z").line("m.gruN[o] = n").line("m.gruNh[o] = nh");
        c.line("m.gruH[o] = (1 - z) * n + z * m.gruPrev[o]");
        c.close().close();
        type.addMethod(MethodSpec.methodBuilder("gru").addModifiers(Modifier.PRIVATE)
                .addJavadoc("One step of the routers' GRU cell: from u and the previous state of {@code m} to its new state {@code m.gruH}.\n")
                .addParameter(ClassName.bestGuess("MoeState"), "m").addCode(c.build()).build());

        Code b = new Code();
        b.comment("dGruState holds dL/dh'; it leaves holding dL/dh (the previous state's), and gruDu dL/du");
        b.line("float[] dbi = $L.grad()", bih);
        b.line("float[] dbh = $L.grad()", bhh);
        b.open("for (int t = 0; t < rows; t++)");
        b.open("for (int j = 0; j < $L; j++)", w);
        b.line("int g = t * $L + j", 3 * w);
        b.line("int o = t * $L + j", w);
        b.line("float dh = dGruState[o]");
        b.line("float r = m.gruR[o]").line("float z = m.gruZ[o]").line("float n = m.gruN[o]");
        b.line("float dn = dh * (1 - z) * (1 - n * n)");
        b.line("float dz = dh * (m.gruPrev[o] - n) * z * (1 - z)");
        b.line("float dr = dn * m.gruNh[o] * r * (1 - r)");
        b.line("gruGi[g] = dr").line("gruGi[g + $L] = dz", w).line("gruGi[g + $L] = dn", 2 * w);
        b.line("gruGh[g] = dr").line("gruGh[g + $L] = dz", w).line("gruGh[g + $L] = dn * r", 2 * w);
        b.line("dbi[j] += dr").line("dbi[j + $L] += dz", w).line("dbi[j + $L] += dn", 2 * w);
        b.line("dbh[j] += dr").line("dbh[j + $L] += dz", w).line("dbh[j + $L] += dn * r", 2 * w);
        b.line("gruDPrev[o] = dh * z");
        b.close().close();
        b.line("$T.zero(gruDu, rows * $L)", ELEMENTWISE, w);
        b.line("backend.matmulBackward(m.gruU, 0, $L.value(), 0, gruGi, 0, gruDu, 0, $L.grad(), 0, rows, $L, $L)", wih, wih, w, 3 * w);
        b.line("backend.matmulBackward(m.gruPrev, 0, $L.value(), 0, gruGh, 0, gruDPrev, 0, $L.grad(), 0, rows, $L, $L)", whh, whh, w, 3 * w);
        b.line("System.arraycopy(gruDPrev, 0, dGruState, 0, rows * $L)", w);
        type.addMethod(MethodSpec.methodBuilder("gruBackward").addModifiers(Modifier.PRIVATE)
                .addJavadoc("Backward of {@link #gru}: adds to the cell's gradients; leaves dL/du in gruDu and dL/d(previous state) in dGruState.\n")
                .addParameter(ClassName.bestGuess("MoeState"), "m").addCode(b.build()).build());
    }

    private boolean anyPregate() {
        return moes.values().stream().anyMatch(m -> m.routers().getFirst().pregate());
    }

    private boolean anyGates() {
        return moes.values().stream().anyMatch(m -> m.routers().size() > 1);
    }

    /** An own group's experts' parameters for one projection, by dispatch key (its experts' keys are consecutive). */
    private String ownGroupArray(Code c, String p, OwnGroup g, Slots sl, String proj) {
        List<String> names = new ArrayList<>();
        for (int j = 0; j < g.count(); j++) {
            names.add(Names.field(p + ".experts." + slotOfKey(sl, g.firstKey() + j) + "." + proj));
        }
        String local = "group" + g.index() + Names.type(proj);
        c.line("$T[] $L = {$L}", PARAMETER, local, String.join(", ", names));
        return local;
    }

    /**
     * A routed group run on its own weights after the packed experts: a latent group (MoLE) first
     * computes z = x · latent_downᵀ once per token and its rows read their token's z; an FFN group of
     * another shape reads x. Each expert's FFN (width → hidden → DIM) runs on its own rows, writing
     * their outputs into ys.
     */
    private Code ownGroupForward(String p, String m, OwnGroup g, Slots sl, String in) {
        Code c = new Code();
        Ffn f = g.ffn();
        int h = f.hidden();
        boolean latent = g.downField() != null;
        String w = latent ? String.valueOf(g.width()) : "DIM";
        int last = g.firstKey() + g.count();
        c.comment("$L group ownGroups[$L] (keys $L..$L, $L): $L", latent ? "latent (MoLE)" : "FFN", g.index(), g.firstKey(), last - 1, f,
                latent ? "z = x · latent_downᵀ per token, then each expert's FFN over its rows' z" : "each expert's FFN over its rows");
        c.open("");
        c.line("GroupState gs = $L.ownGroups[$L]", m, g.index());
        c.line("int base = $L.offsets[$L]", m, g.firstKey());
        c.line("int n = $L.offsets[$L] - base", m, last);
        if (latent) {
            c.line("backend.matmul($L, 0, $L.value(), 0, gs.z, 0, rows, DIM, $L)", in, g.downField(), w);
        }
        c.open("for (int i = 0; i < n; i++)").line("System.arraycopy($L, $L.tokenOfRow[base + i] * $L, gs.xs, i * $L, $L)", latent ? "gs.z" : in, m, w, w, w).close();
        List<String> projs = f.activation().gated() ? List.of("gate", "up") : List.of("up");
        List<String> arrays = new ArrayList<>();
        for (String proj : projs) {
            arrays.add(ownGroupArray(c, p, g, sl, proj));
        }
        String down = ownGroupArray(c, p, g, sl, "down");
        c.open("for (int ex = 0; ex < $L; ex++)", g.count());
        c.line("int o = $L.offsets[$L + ex] - base", m, g.firstKey());
        c.line("int rowsOf = $L.offsets[$L + ex + 1] - base - o", m, g.firstKey());
        for (int q = 0; q < projs.size(); q++) {
            c.line("backend.matmul(gs.xs, o * $L, $L[ex].value(), 0, gs.$L, o * $L, rowsOf, $L, $L)", w, arrays.get(q), projs.get(q), h, w, h);
        }
        c.close();
        if (f.activation().gated()) {
            c.line("backend.glu($T.$L, gs.gate, gs.up, gs.act, n * $L)", ACTIVATION, act(f), h);
        } else {
            c.line("backend.activation($T.$L, gs.up, gs.act, n * $L)", ACTIVATION, act(f), h);
        }
        c.open("for (int ex = 0; ex < $L; ex++)", g.count());
        c.line("int o = $L.offsets[$L + ex] - base", m, g.firstKey());
        c.line("int rowsOf = $L.offsets[$L + ex + 1] - base - o", m, g.firstKey());
        c.line("backend.matmul(gs.act, o * $L, $L[ex].value(), 0, $L.ys, (base + o) * DIM, rowsOf, $L, DIM)", h, down, m, h);
        c.close();
        c.close();
        return c;
    }

    /**
     * Backward of {@link #ownGroupForward}: dys holds weight · dOut per row; adds the experts' (and a
     * latent group's down-projection's) gradients and d(input).
     */
    private Code ownGroupBackward(String p, String m, OwnGroup g, Slots sl, String in, String dIn) {
        Code c = new Code();
        Ffn f = g.ffn();
        int h = f.hidden();
        boolean latent = g.downField() != null;
        String w = latent ? String.valueOf(g.width()) : "DIM";
        int last = g.firstKey() + g.count();
        c.comment("$L group ownGroups[$L] backward: each expert's FFN, then d(input)$L", latent ? "latent" : "FFN", g.index(),
                latent ? " through d(z) per token and the down-projection" : " per token");
        c.open("");
        c.line("GroupState gs = $L.ownGroups[$L]", m, g.index());
        c.line("int base = $L.offsets[$L]", m, g.firstKey());
        c.line("int n = $L.offsets[$L] - base", m, last);
        List<String> projs = f.activation().gated() ? List.of("gate", "up") : List.of("up");
        List<String> arrays = new ArrayList<>();
        for (String proj : projs) {
            arrays.add(ownGroupArray(c, p, g, sl, proj));
        }
        String down = ownGroupArray(c, p, g, sl, "down");
        c.line("$T.zero(dAct, n * $L)", ELEMENTWISE, h);
        c.open("for (int ex = 0; ex < $L; ex++)", g.count());
        c.line("int o = $L.offsets[$L + ex] - base", m, g.firstKey());
        c.line("int rowsOf = $L.offsets[$L + ex + 1] - base - o", m, g.firstKey());
        c.line("backend.matmulBackward(gs.act, o * $L, $L[ex].value(), 0, $L.dys, (base + o) * DIM, dAct, o * $L, $L[ex].grad(), 0, rowsOf, $L, DIM)", h,
                down, m, h, down, h);
        c.close();
        if (f.activation().gated()) {
            c.line("backend.gluBackward($T.$L, gs.gate, gs.up, dAct, dGate, dUp, n * $L)", ACTIVATION, act(f), h);
        } else {
            c.line("backend.activationBackward($T.$L, gs.up, dAct, dUp, n * $L)", ACTIVATION, act(f), h);
        }
        c.line("$T.zero(gs.dxs, n * $L)", ELEMENTWISE, w);
        c.open("for (int ex = 0; ex < $L; ex++)", g.count());
        c.line("int o = $L.offsets[$L + ex] - base", m, g.firstKey());
        c.line("int rowsOf = $L.offsets[$L + ex + 1] - base - o", m, g.firstKey());
        for (int q = 0; q < projs.size(); q++) {
            String d = projs.get(q).equals("gate") ? "dGate" : "dUp";
            c.line("backend.matmulBackward(gs.xs, o * $L, $L[ex].value(), 0, $L, o * $L, gs.dxs, o * $L, $L[ex].grad(), 0, rowsOf, $L, $L)", w, arrays.get(q), d,
                    h, w, arrays.get(q), w, h);
        }
        c.close();
        String dz = latent ? "gs.dz" : dIn;
        if (latent) {
            c.line("$T.zero(gs.dz, rows * $L)", ELEMENTWISE, w);
        }
        c.open("for (int i = 0; i < n; i++)");
        c.line("int t = $L.tokenOfRow[base + i] * $L", m, w);
        c.open("for (int j = 0; j < $L; j++)", w).line("$L[t + j] += gs.dxs[i * $L + j]", dz, w).close();
        c.close();
        if (latent) {
            c.line("backend.matmulBackward($L, 0, $L.value(), 0, gs.dz, 0, $L, 0, $L.grad(), 0, rows, DIM, $L)", in, g.downField(), dIn, g.downField(), w);
        }
        c.close();
        return c;
    }

    /** A LoRA group's buffers in {@code loraOfGroup}, in this order. */
    private static final List<String> LORA_BUFFERS = List.of("loraA", "loraB", "loraH", "loraBase", "dLoraA", "dLoraB", "loraGate", "loraUp", "loraAct");

    private boolean severalLoraGroups() {
        return loraByPrefix.values().stream().anyMatch(g -> g.size() > 1);
    }

    /**
     * Several LoRA groups in one MoE: point the MoE's LoRA buffers at this group's own and open a block
     * for its locals (closed by the caller); one group uses the buffers as they are.
     */
    private void useLora(Code c, String m, String p, LoraGroup lo) {
        if (loraByPrefix.get(p).size() == 1) {
            return;
        }
        c.comment("LoRA group $L: its own base copy, keys and buffers", lo.index());
        c.open("");
        c.line("float[][] own = $L.loraOfGroup[$L]", m, lo.index());
        for (int i = 0; i < LORA_BUFFERS.size(); i++) {
            c.line("$L.$L = own[$L]", m, LORA_BUFFERS.get(i), i);
        }
    }

    /** In a loop over the LoRA experts (ex): the first row {@code o} and the count {@code n} of expert ex's rows. */
    private static void loraRows(Code c, String m, int first) {
        if (first == 0) {
            c.line("int o = $L.offsets[ex]", m).line("int n = $L.offsets[ex + 1] - o", m);
        } else {
            c.line("int o = $L.offsets[$L + ex]", m, first).line("int n = $L.offsets[$L + ex + 1] - o", m, first);
        }
    }

    private String loraArray(Code c, String p, Slots sl, LoraGroup lo, int experts, String proj) {
        int first = sl.key()[lo.firstSlot()];
        List<String> names = new ArrayList<>();
        for (int j = 0; j < experts; j++) {
            // by dispatch key: the LoRA experts' slots among zero-computation ones (after the other computing experts' keys)
            names.add(Names.field(p + ".experts." + slotOfKey(sl, first + j) + "." + proj));
        }
        String local = "lora" + Names.type(Names.field(proj.replace('_', '.')));
        c.line("$T[] $L = {$L}", PARAMETER, local, String.join(", ", names));
        return local;
    }

    /**
     * MoLA: the frozen base FFN runs for every token; each routed slot adds weight · (alpha / rank) ·
     * B_e A_e to each projection's output, the nonlinearity reading the mixed pre-activations.
     */
    private Code loraForward(String p, String m, LoraGroup lo, Slots sl, int e, String in, String ffnRows) {
        Code c = new Code();
        int first = sl.key()[lo.firstSlot()];
        LoraBuffers rows = loraBuffers(c, m, first, e, ffnRows, loraByPrefix.get(p).size() > 1);
        boolean own = rows.own();
        String gt = rows.gate(), ut = rows.up(), at = rows.act(), from = rows.from(), until = rows.until();
        Ffn f = lo.lora().base();
        int h = f.hidden();
        int r = lo.lora().rank();
        String sc = floatLiteral(lo.lora().alpha() / r) + "f";
        boolean gated = f.activation().gated();
        c.comment("LoRA experts (MoLA): base pre-activations for every token, plus Σ weight · $L · (x · Aᵀ) · Bᵀ of the selected experts", sc);
        String wg = Names.field(lo.base() + ".gate");
        String wu = Names.field(lo.base() + ".up");
        String wd = Names.field(lo.base() + ".down");
        if (gated) {
            c.line("backend.matmul($L, 0, $L.value(), 0, $L, 0, rows, DIM, $L)", in, wg, gt, h);
        }
        c.line("backend.matmul($L, 0, $L.value(), 0, $L, 0, rows, DIM, $L)", in, wu, ut, h);
        c.line("backend.gatherRows($L, $L.tokenOfRow, $L, DIM, $L.xs)", in, m, ffnRows, m);
        List<String> projs = gated ? List.of("gate", "up") : List.of("up");
        for (int q = 0; q < projs.size(); q++) {
            String proj = projs.get(q);
            String a = loraArray(c, p, sl, lo, e, proj + "_a");
            String b = loraArray(c, p, sl, lo, e, proj + "_b");
            c.open("for (int ex = 0; ex < $L; ex++)", e);
            loraRows(c, m, first);
            c.line("backend.matmul($L.xs, o * DIM, $L[ex].value(), 0, $L.loraA, $L * slots * $L + o * $L, n, DIM, $L)", m, a, m, q, r, r, r);
            c.line("backend.matmul($L.loraA, $L * slots * $L + o * $L, $L[ex].value(), 0, $L.loraB, $L * slots * $L + o * $L, n, $L, $L)", m, q, r, r, b, m, q, h,
                    h, r, h);
            c.close();
            c.open("for (int i = $L; i < $L; i++)", from, until);
            c.line("float w = $L.weightOfRow[i] * $L", m, sc);
            c.line("int to = $L.tokenOfRow[i] * $L", m, h);
            c.line("int from = $L * slots * $L + i * $L", q, h, h);
            c.open("for (int j = 0; j < $L; j++)", h).line("$L[to + j] += w * $L.loraB[from + j]", proj.equals("gate") ? gt : ut, m).close();
            c.close();
        }
        if (gated) {
            c.line("backend.glu($T.$L, $L, $L, $L, rows * $L)", ACTIVATION, act(f), gt, ut, at, h);
        } else {
            c.line("backend.activation($T.$L, $L, $L, rows * $L)", ACTIVATION, act(f), ut, at, h);
        }
        c.line("backend.matmul($L, 0, $L.value(), 0, $L.loraBase, 0, rows, $L, DIM)", at, wd, m, h);
        c.line("backend.gatherRows($L, $L.tokenOfRow, $L, $L, $L.loraH)", at, m, ffnRows, h, m);
        String a = loraArray(c, p, sl, lo, e, "down_a");
        String b = loraArray(c, p, sl, lo, e, "down_b");
        c.open("for (int ex = 0; ex < $L; ex++)", e);
        loraRows(c, m, first);
        c.line("backend.matmul($L.loraH, o * $L, $L[ex].value(), 0, $L.loraA, 2 * slots * $L + o * $L, n, $L, $L)", m, h, a, m, r, r, h, r);
        c.line("backend.matmul($L.loraA, 2 * slots * $L + o * $L, $L[ex].value(), 0, $L.ys, o * DIM, n, $L, DIM)", m, r, r, b, m, r);
        c.close();
        c.open("for (int i = $L; i < $L * DIM; i++)", own ? "loraFrom * DIM" : "0", until).line("$L.ys[i] *= $L", m, sc).close();
        return c;
    }

    /**
     * Where a LoRA group's rows and activations live: beside other computing experts its own copy of
     * the base's activations and its rows from its first key on (declared in {@code c}), else the
     * MoE's shared buffers and every row.
     */
    private record LoraBuffers(boolean own, String gate, String up, String act, String from, String until) {}

    private static LoraBuffers loraBuffers(Code c, String m, int first, int e, String ffnRows, boolean several) {
        if (first <= 0 && !several) {
            return new LoraBuffers(false, m + ".gate", m + ".up", m + ".act", "0", ffnRows);
        }
        c.line("int loraFrom = $L.offsets[$L]", m, first);
        c.line("int loraTo = $L.offsets[$L]", m, first + e);
        return new LoraBuffers(true, m + ".loraGate", m + ".loraUp", m + ".loraAct", "loraFrom", "loraTo");
    }

    private Code loraBackward(String p, String m, LoraGroup lo, Slots sl, int e, String in, String dOut, String dIn, String ffnRows) {
        Code c = new Code();
        int first = sl.key()[lo.firstSlot()];
        LoraBuffers rows = loraBuffers(c, m, first, e, ffnRows, loraByPrefix.get(p).size() > 1);
        boolean own = rows.own();
        String gt = rows.gate(), ut = rows.up(), at = rows.act(), from = rows.from(), until = rows.until();
        Ffn f = lo.lora().base();
        int h = f.hidden();
        int r = lo.lora().rank();
        String sc = floatLiteral(lo.lora().alpha() / r) + "f";
        boolean gated = f.activation().gated();
        String wg = Names.field(lo.base() + ".gate");
        String wu = Names.field(lo.base() + ".up");
        String wd = Names.field(lo.base() + ".down");
        c.comment("LoRA experts backward: the down projection (dys holds weight · dOut per slot)");
        c.line("$T.zero(dAct, rows * $L)", ELEMENTWISE, h);
        c.line("backend.matmulBackward($L, 0, $L.value(), 0, $L, 0, dAct, 0, $L.grad(), 0, rows, $L, DIM)", at, wd, dOut, wd, h);
        c.open("for (int i = $L; i < $L * DIM; i++)", own ? "loraFrom * DIM" : "0", until).line("$L.dys[i] *= $L", m, sc).close();
        c.line("$T.zero($L.dLoraA, slots * $L)", ELEMENTWISE, m, r);
        c.line("$T.zero($L.dLoraB, slots * $L)", ELEMENTWISE, m, h);
        String a = loraArray(c, p, sl, lo, e, "down_a");
        String b = loraArray(c, p, sl, lo, e, "down_b");
        c.open("for (int ex = 0; ex < $L; ex++)", e);
        loraRows(c, m, first);
        c.line("backend.matmulBackward($L.loraA, 2 * slots * $L + o * $L, $L[ex].value(), 0, $L.dys, o * DIM, $L.dLoraA, o * $L, $L[ex].grad(), 0, n, $L, DIM)",
                m, r, r, b, m, m, r, b, r);
        c.line("backend.matmulBackward($L.loraH, o * $L, $L[ex].value(), 0, $L.dLoraA, o * $L, $L.dLoraB, o * $L, $L[ex].grad(), 0, n, $L, $L)", m, h, a, m,
                r, m, h, a, h, r);
        c.close();
        c.line("backend.scatterAddRows($L.dLoraB, $L.tokenOfRow, null, $L, $L, dAct)", m, m, ffnRows, h);
        if (gated) {
            c.line("backend.gluBackward($T.$L, $L, $L, dAct, dGate, dUp, rows * $L)", ACTIVATION, act(f), gt, ut, h);
            c.line("backend.matmulBackward($L, 0, $L.value(), 0, dGate, 0, $L, 0, $L.grad(), 0, rows, DIM, $L)", in, wg, dIn, wg, h);
        } else {
            c.line("backend.activationBackward($T.$L, $L, dAct, dUp, rows * $L)", ACTIVATION, act(f), ut, h);
        }
        c.line("backend.matmulBackward($L, 0, $L.value(), 0, dUp, 0, $L, 0, $L.grad(), 0, rows, DIM, $L)", in, wu, dIn, wu, h);
        c.line("$T.zero($L.dxs, slots * DIM)", ELEMENTWISE, m);
        List<String> projs = gated ? List.of("gate", "up") : List.of("up");
        for (int q = 0; q < projs.size(); q++) {
            String proj = projs.get(q);
            String d = proj.equals("gate") ? "dGate" : "dUp";
            c.comment("LoRA $L: d(weight) += $L · <d$L[token], B·(x·Aᵀ)>; d(B·(x·Aᵀ)) = weight · $L · d$L[token]", proj, sc, proj, sc, proj);
            c.open("for (int i = $L; i < $L; i++)", from, until);
            c.line("int t = $L.tokenOfRow[i] * $L", m, h);
            c.line("int from = $L * slots * $L + i * $L", q, h, h);
            c.line("float w = $L.weightOfRow[i] * $L", m, sc);
            c.line("float dot = 0f");
            c.open("for (int j = 0; j < $L; j++)", h);
            c.line("dot += $L[t + j] * $L.loraB[from + j]", d, m);
            c.line("$L.dLoraB[i * $L + j] = w * $L[t + j]", m, h, d);
            c.close();
            c.line("$L.dWeight[$L.order[i]] += $L * dot", m, m, sc);
            c.close();
            c.line("$T.zero($L.dLoraA, slots * $L)", ELEMENTWISE, m, r);
            String pa = loraArray(c, p, sl, lo, e, proj + "_a");
            String pb = loraArray(c, p, sl, lo, e, proj + "_b");
            c.open("for (int ex = 0; ex < $L; ex++)", e);
            loraRows(c, m, first);
            c.line("backend.matmulBackward($L.loraA, $L * slots * $L + o * $L, $L[ex].value(), 0, $L.dLoraB, o * $L, $L.dLoraA, o * $L, $L[ex].grad(), 0, n, $L, $L)",
                    m, q, r, r, pb, m, h, m, r, pb, r, h);
            c.line("backend.matmulBackward($L.xs, o * DIM, $L[ex].value(), 0, $L.dLoraA, o * $L, $L.dxs, o * DIM, $L[ex].grad(), 0, n, DIM, $L)", m, pa, m, r, m,
                    pa, r);
            c.close();
        }
        c.line("backend.scatterAddRows($L.dxs, $L.tokenOfRow, null, $L, DIM, $L)", m, m, ffnRows, dIn);
        return c;
    }

    /** Balancing losses: computed in the forward pass; their gradients with respect to the scores are kept in auxGrad. */
    private Code balanceForward(Moe moe, String m, int e, int k) {
        Code c = new Code();
        c.line("$L.balanceLoss = 0", m);
        c.line("$T.zero($L.auxGrad, rows * $L)", ELEMENTWISE, m, e);
        int auxLosses = 0;
        for (Loss loss : moe.losses()) {
            switch (loss) {
                case Loss.Aux a when a.coef() > 0 -> {
                    // a second aux loss (another scope) gets its own name for the shared f array
                    String fv = auxLosses++ == 0 ? "f" : "f" + auxLosses;
                    String eta = etaConstant(moe, a);
                    String coef = floatLiteral(a.coef()) + "f";
                    if (eta == null) {
                        c.comment("aux loss ($L scope): coef * E * Σ f_e P_e; f from counts, P the mean (normalised) score",
                                a.scope().name().toLowerCase(Locale.ROOT));
                    } else {
                        c.comment("aux loss ($L scope): coef * E * Σ η_e f_e P_e, η = 1 for FFN experts and tau = $L for zero-computation ones (MoE++)",
                                a.scope().name().toLowerCase(Locale.ROOT), floatLiteral(a.tau()));
                        coef = coef + " * " + eta + "[ex]";
                    }
                    if (a.scope() == Loss.Scope.SEQUENCE) {
                        c.comment("with a padding mask: over each sequence's kept tokens, averaged over the sequences that keep any");
                        c.open("for (int b = 0; b < batch; b++)");
                        c.line("int keptSeq = keep == null ? seq : keptOf(b)");
                        c.open("if (keptSeq == 0)").line("continue").close();
                        c.line("float[] $L = $L.f", fv, m);
                        c.line("$T.zero($L, $L)", ELEMENTWISE, fv, e);
                        if (topP(moe.routers().getFirst())) {
                            c.comment("top-p: f over the sequence's used slots");
                            c.line("int seqSlots = 0");
                            c.open("for (int t = b * seq; t < (b + 1) * seq; t++)");
                            c.open("if (keep != null && !keep[t])").line("continue").close();
                            c.open("for (int r = 0; r < $L.kept[t]; r++)", m);
                            c.line("$L[$L.selected[t * $L + r]] += 1f", fv, m, k);
                            c.line("seqSlots++");
                            c.close().close();
                            c.open("for (int ex = 0; ex < $L; ex++)", e).line("$L[ex] /= seqSlots", fv).close();
                        } else {
                            c.open("for (int t = b * seq; t < (b + 1) * seq; t++)");
                            c.open("if (keep != null && !keep[t])").line("continue").close();
                            c.open("for (int r = 0; r < $L; r++)", k);
                            c.line("$L[$L.selected[t * $L + r]] += 1f / (keptSeq * $L)", fv, m, k, k);
                            c.close().close();
                        }
                        c.open("for (int t = b * seq; t < (b + 1) * seq; t++)");
                        c.open("if (keep != null && !keep[t])").line("continue").close();
                        c.add(scoreRow(moe, m, e).build());
                        c.open("for (int ex = 0; ex < $L; ex++)", e);
                        c.line("$L.balanceLoss += $L * $L * $L[ex] * p[ex] / ((double) keptSeq * keptSequences)", m, coef, e, fv);
                        c.line("$L.auxGrad[t * $L + ex] += $L * $L * $L[ex] / ((float) keptSeq * keptSequences)", m, e, coef, e, fv);
                        c.close().close().close();
                    } else {
                        c.line("float[] $L = $L.f", fv, m);
                        if (a.scope() == Loss.Scope.GLOBAL_BATCH) {
                            c.comment("global batch: counts so far in this optimiser step (all micro-batches up to this one)");
                            c.open("for (int ex = 0; ex < $L; ex++)", e);
                            c.line("$L[ex] = (float) ((double) $L.stepCounts[ex] / $L.stepSlots)", fv, m, m);
                            c.close();
                        } else {
                            c.open("for (int ex = 0; ex < $L; ex++)", e);
                            c.line("$L[ex] = (float) $L.counts[ex] / slots", fv, m);
                            c.close();
                        }
                        c.open("for (int t = 0; t < rows; t++)");
                        c.open("if (keep != null && !keep[t])").line("continue").close();
                        c.add(scoreRow(moe, m, e).build());
                        c.open("for (int ex = 0; ex < $L; ex++)", e);
                        c.line("$L.balanceLoss += $L * $L * $L[ex] * p[ex] / (double) keptRows", m, coef, e, fv);
                        c.line("$L.auxGrad[t * $L + ex] += $L * $L * $L[ex] / keptRows", m, e, coef, e, fv);
                        c.close().close();
                    }
                }
                case Loss.ZLoss z when z.coef() > 0 -> {
                    c.comment("z-loss: coef * mean(logsumexp(logits)²)");
                    c.open("for (int t = 0; t < rows; t++)");
                    c.open("if (keep != null && !keep[t])").line("continue").close();
                    c.line("$L.balanceLoss += $Lf * (double) $L.lse[t] * $L.lse[t] / keptRows", m, floatLiteral(z.coef()), m, m);
                    c.close();
                }
                case Loss.Entropy h when h.coef() > 0 -> {
                    String coef = floatLiteral(h.coef()) + "f";
                    c.comment("entropy loss: coef * mean over tokens of -Σ p log p; d/dp = -coef (log p + 1) / rows");
                    c.open("for (int t = 0; t < rows; t++)");
                    c.open("if (keep != null && !keep[t])").line("continue").close();
                    c.open("for (int ex = 0; ex < $L; ex++)", e);
                    c.line("double q = $L.probs[t * $L + ex]", m, e);
                    c.open("if (q > 0)");
                    c.line("$L.balanceLoss -= $L * q * Math.log(q) / keptRows", m, coef);
                    c.line("$L.auxGrad[t * $L + ex] -= (float) ($L * (Math.log(q) + 1) / keptRows)", m, e, coef);
                    c.close();
                    c.close().close();
                }
                default -> { }
            }
        }
        return c;
    }

    /** The static table of η per routed expert for an aux loss with tau, or null when every η is 1. */
    private String etaConstant(Moe moe, Loss.Aux a) {
        Slots sl = Slots.of(moe);
        if (a.tau() == 1.0 || !sl.zeroCompute()) {
            return null;
        }
        String name = moeConstant("ETA", moe) + "_" + floatLiteral(a.tau()).replaceAll("[^0-9]", "_");
        if (constantsAdded.add(name)) {
            List<String> eta = sl.experts().stream().map(x -> x.zeroCompute() ? floatLiteral(a.tau()) + "f" : "1f").toList();
            type.addField(FieldSpec.builder(float[].class, name, Modifier.PRIVATE, Modifier.STATIC, Modifier.FINAL)
                    .addJavadoc("$L: each routed expert's weight η in the aux loss (1 for FFN experts, tau for zero-computation ones)\n", moe.name())
                    .initializer("{$L}", String.join(", ", eta)).build());
        }
        return name;
    }

    /** {@code float[] p}: the token's scores as the aux loss sees them (softmax, or sigmoid normalised to sum 1). */
    private Code scoreRow(Moe moe, String m, int e) {
        Code c = new Code();
        c.line("float[] p = $L.p", m);
        List<Integer> sigmoidGates = new ArrayList<>();
        for (int g = 0; g < moe.routers().size(); g++) {
            if (moe.routers().get(g).score() == Router.Score.SIGMOID) {
                sigmoidGates.add(g);
            }
        }
        if (!sigmoidGates.isEmpty() && sigmoidGates.size() < moe.routers().size()) {
            c.comment("gates with sigmoid scores normalise them per token; softmax gates' are normalised already");
            c.open("if ($L)", String.join(" || ", sigmoidGates.stream().map(g -> m + ".gateOf[t / seq] == " + g).toList()));
            c.line("double z = 0");
            c.open("for (int ex = 0; ex < $L; ex++)", e).line("z += $L.probs[t * $L + ex]", m, e).close();
            c.open("for (int ex = 0; ex < $L; ex++)", e).line("p[ex] = (float) ($L.probs[t * $L + ex] / z)", m, e).close();
            c.orElse("else");
            c.line("System.arraycopy($L.probs, t * $L, p, 0, $L)", m, e, e);
            c.close();
        } else if (moe.routers().getFirst().score() == Router.Score.SIGMOID) {
            c.line("double z = 0");
            c.open("for (int ex = 0; ex < $L; ex++)", e).line("z += $L.probs[t * $L + ex]", m, e).close();
            c.open("for (int ex = 0; ex < $L; ex++)", e).line("p[ex] = (float) ($L.probs[t * $L + ex] / z)", m, e).close();
        } else {
            c.line("System.arraycopy($L.probs, t * $L, p, 0, $L)", m, e, e);
        }
        return c;
    }

    // ---- routers (one per distinct MoE) ----

    /** Whether an MoE's named gates differ in more than their weights (score, order, normalisation, scale, top_k or top-p, temperature). */
    private static boolean gatesDiffer(Moe moe) {
        Router first = moe.routers().getFirst();
        return moe.routers().stream().anyMatch(g -> g.score() != first.score() || g.order() != first.order() || g.normalize() != first.normalize()
                || g.scale() != first.scale() || !g.selection().equals(first.selection()) || !g.temperature().equals(first.temperature()))
                || biasPerGate(moe);
    }

    /** Several named gates, some with an aux-free expert bias: each gate selects with its own bias buffer, updated from the loads of its sequences. */
    private static boolean biasPerGate(Moe moe) {
        return moe.routers().size() > 1 && moe.routers().stream().anyMatch(g -> g.bias().isPresent());
    }

    /** The router (and its backward) of an MoE: one method, or with gates that differ one per gate over a sequence's rows and one that picks them. */
    private void router(Moe moe) {
        if (!gatesDiffer(moe)) {
            router(moe, moe.routers().getFirst(), routerMethod(moe), false);
            routerBackward(moe, moe.routers().getFirst(), routerMethod(moe), false);
            return;
        }
        Code f = new Code();
        Code b = new Code();
        f.comment("gates that differ beyond their weights: each sequence's rows go through the router of its gate");
        b.comment("each sequence's rows through the backward of its gate's router");
        for (Code c : List.of(f, b)) {
            c.open("for (int b = 0; b < batch; b++)");
            c.line("int from = b * seq");
            c.line("int to = from + seq");
        }
        for (int g = 0; g < moe.routers().size(); g++) {
            Router gate = moe.routers().get(g);
            String name = routerMethod(moe) + "Gate" + Names.type(Names.field(gate.name().orElseThrow()));
            router(moe, gate, name, true);
            routerBackward(moe, gate, name, true);
            String cond = g == 0 ? "if (m.gateOf[b] == $L)" : "else if (m.gateOf[b] == $L)";
            if (g == 0) {
                f.open(cond, g);
                b.open(cond, g);
            } else {
                f.orElse(cond, g);
                b.orElse(cond, g);
            }
            f.line("$L(m, $L, from, to)", name, biasPerGate(moe) ? "bias[" + g + "]" : "bias");
            b.line("$LBackward(m, lossScale, from, to)", name);
        }
        f.close().close();
        b.close().close();
        type.addMethod(MethodSpec.methodBuilder(routerMethod(moe)).addModifiers(Modifier.PRIVATE)
                .addJavadoc("Router of $L: each sequence by its gate's router.\n", moe.name())
                .addParameter(ClassName.bestGuess("MoeState"), "m").addParameter(biasPerGate(moe) ? float[][].class : float[].class, "bias")
                .addCode(f.build()).build());
        type.addMethod(MethodSpec.methodBuilder(routerMethod(moe) + "Backward").addModifiers(Modifier.PRIVATE)
                .addJavadoc("Backward of {@link #$L}.\n", routerMethod(moe))
                .addParameter(ClassName.bestGuess("MoeState"), "m").addParameter(TypeName.FLOAT, "lossScale").addCode(b.build()).build());
    }

    /** One router over all rows, or ({@code ranged}) over rows {@code from .. to - 1}. */
    private void router(Moe moe, Router r, String method, boolean ranged) {
        int e = moe.routedExperts();
        int k = slotsPerToken(r);
        // this gate's own k or max_k (less than the slots per token k when gates differ in them)
        int kg = tokenChoice(r) ? gateSlots(r) : k;
        boolean sigmoid = r.score() == Router.Score.SIGMOID;
        boolean topkFirst = !sigmoid && r.order() == Router.Order.TOPK_THEN_SOFTMAX;
        Code c = new Code();
        boolean transform = transformsLogits(r);
        String lg = transform ? "m.scaled" : "m.logits";
        String selScore = (topkFirst ? lg + "[o + ex]" : "m.probs[o + ex]") + (r.bias().isPresent() ? " + bias[ex]" : "");
        int groupSize = 0;
        if (r.groupLimit().isPresent()) {
            groupSize = e / r.groupLimit().get().groups();
            c.line("float[] groupScore = new float[$L]", r.groupLimit().get().groups());
            c.line("boolean[] keptGroup = new boolean[$L]", r.groupLimit().get().groups());
        }
        if (annealed(r)) {
            Router.Temperature tp = r.temperature().get();
            c.comment("dense to sparse: the temperature moves linearly from $L to $L over the first $L steps, then stays", tp.start(), tp.end(), tp.steps());
            if (ranged) {
                c.line("float tau = $L", annealedTemperature(tp));
            } else {
                c.line("m.temperature = (float) ($L + ($L - $L) * (double) Math.min(step, $LL) / $L)", tp.start(), tp.end(), tp.start(), tp.steps(), tp.steps());
            }
        }
        c.open(ranged ? "for (int t = from; t < to; t++)" : "for (int t = 0; t < rows; t++)");
        c.line("int o = t * $L", e);
        if (transform) {
            Router.Temperature tp = r.temperature().get();
            String act = tp.activation().orElse("none");
            String tau = temperature(r, ranged);
            c.comment("the router's scores read $L / $L (temperature)", act.equals("none") ? "logits" : act + "(logits)", tau);
            c.open("for (int ex = 0; ex < $L; ex++)", e);
            switch (act) {
                case "tanh" -> c.line("m.scaled[o + ex] = (float) Math.tanh(m.logits[o + ex]) / $L", tau);
                case "sigmoid" -> c.line("m.scaled[o + ex] = $T.sigmoid(m.logits[o + ex]) / $L", ELEMENTWISE, tau);
                default -> c.line("m.scaled[o + ex] = m.logits[o + ex] / $L", tau);
            }
            c.close();
        }
        c.comment("softmax of the logits (kept for the aux and z losses) and their log-sum-exp");
        c.line("float max = Float.NEGATIVE_INFINITY");
        c.open("for (int ex = 0; ex < $L; ex++)", e).line("max = Math.max(max, $L[o + ex])", lg).close();
        c.line("double sum = 0");
        c.open("for (int ex = 0; ex < $L; ex++)", e).line("sum += Math.exp($L[o + ex] - max)", lg).close();
        c.line("m.lse[t] = (float) (max + Math.log(sum))");
        c.open("for (int ex = 0; ex < $L; ex++)", e);
        if (sigmoid) {
            c.line("m.probs[o + ex] = $T.sigmoid($L[o + ex])", ELEMENTWISE, lg);
        } else {
            c.line("m.probs[o + ex] = (float) (Math.exp($L[o + ex] - max) / sum)", lg);
        }
        c.close();
        String by = topkFirst ? lg + "[o + ex]" : "m.probs[o + ex]";
        if (r.groupLimit().isPresent()) {
            int groups = r.groupLimit().get().groups();
            int top = r.groupLimit().get().top();
            c.comment("group-limited: a group's score is the sum of its top-$L selection scores; keep the best $L of $L groups (ties: lower index)",
                    Math.min(2, groupSize), top, groups);
            c.open("for (int g = 0; g < $L; g++)", groups);
            c.line("float first = Float.NEGATIVE_INFINITY");
            c.line("float second = Float.NEGATIVE_INFINITY");
            c.open("for (int ex = g * $L; ex < (g + 1) * $L; ex++)", groupSize, groupSize);
            c.line("float s = $L", selScore);
            c.open("if (s > first)").line("second = first").line("first = s");
            c.orElse("else if (s > second)").line("second = s").close();
            c.close();
            c.line("groupScore[g] = $L", groupSize >= 2 ? "first + second" : "first");
            c.line("keptGroup[g] = false");
            c.close();
            c.open("for (int q = 0; q < $L; q++)", top);
            c.line("int bestGroup = -1");
            c.open("for (int g = 0; g < $L; g++)", groups);
            c.open("if (!keptGroup[g] && (bestGroup < 0 || groupScore[g] > groupScore[bestGroup]))").line("bestGroup = g").close();
            c.close();
            c.line("keptGroup[bestGroup] = true");
            c.close();
        }
        if (!topPSelection(r)) {
            c.comment("top-$L by $L$L$L; ties go to the lower index", k, topkFirst ? "logit" : sigmoid ? "sigmoid score" : "probability",
                    r.bias().isPresent() ? " + expert bias (selection only)" : "",
                    r.groupLimit().isPresent() ? ", among the kept groups' experts"
                            : r.quotaGroups().isPresent() ? ", " + k / r.quotaGroups().get() + " in each of " + r.quotaGroups().get() + " equal groups" : "");
        }
        c.line("double chosen = 0");
        if (topPSelection(r)) {
            double pp = ((Router.Selection.TopP) r.selection()).p();
            c.comment("top-p: take experts by probability until their mass reaches $L (at least 1, at most $L); the rest of the token's slots get expert $L (none) and weight 0",
                    pp, kg, e);
            c.line("int used = 0");
        }
        c.open("for (int r = 0; r < $L; r++)", kg);
        if (topPSelection(r)) {
            double pp = ((Router.Selection.TopP) r.selection()).p();
            c.open("if (r > 0 && chosen >= $L)", pp);
            c.line("m.selected[t * $L + r] = $L", k, e);
            c.line("m.weight[t * $L + r] = 0f", k);
            c.line("continue");
            c.close();
        }
        c.line("int best = -1");
        c.line("float bestScore = Float.NEGATIVE_INFINITY");
        if (r.quotaGroups().isPresent()) {
            int gs = e / r.quotaGroups().get();
            int perGroup = k / r.quotaGroups().get();
            c.line("int group = r / $L", perGroup);
            c.open("for (int ex = group * $L; ex < (group + 1) * $L; ex++)", gs, gs);
        } else {
            c.open("for (int ex = 0; ex < $L; ex++)", e);
        }
        if (r.groupLimit().isPresent()) {
            c.open("if (!keptGroup[ex / $L])", groupSize).line("continue").close();
        }
        c.line("float s = $L$L", by, r.bias().isPresent() ? " + bias[ex]" : "");
        c.line("boolean taken = false");
        c.open("for (int q = 0; q < r; q++)").line("taken |= m.selected[t * $L + q] == ex", k).close();
        c.open("if (!taken && (best < 0 || s > bestScore))").line("best = ex").line("bestScore = s").close();
        c.close();
        c.open("if (!Float.isFinite(bestScore))");
        c.line("throw new $T($S + t + $S)", ArithmeticException.class, "router scores are not finite at token ", " (training diverged?)");
        c.close();
        c.line("m.selected[t * $L + r] = best", k);
        if (topkFirst) {
            c.line("m.weight[t * $L + r] = $L[o + best]", k, lg);
        } else {
            c.line("m.weight[t * $L + r] = m.probs[o + best]", k);
            c.line("chosen += m.probs[o + best]");
        }
        if (topPSelection(r)) {
            c.line("used++");
        }
        c.close();
        if (topPSelection(r)) {
            c.line("m.kept[t] = used");
            if (kg < k) {
                c.comment("this gate takes at most $L of the $L slots; the rest route to no expert ($L) with weight 0", kg, k, e);
                c.open("for (int r = $L; r < $L; r++)", kg, k).line("m.selected[t * $L + r] = $L", k, e).line("m.weight[t * $L + r] = 0f", k).close();
            }
        } else if (kg < k) {
            c.comment("this gate takes $L of the $L slots; the rest route to no expert ($L) with weight 0", kg, k, e);
            c.open("for (int r = $L; r < $L; r++)", kg, k).line("m.selected[t * $L + r] = $L", k, e).line("m.weight[t * $L + r] = 0f", k).close();
            c.line("m.kept[t] = $L", kg);
        } else if (topP(r)) {
            c.line("m.kept[t] = $L", kg);
        }
        if (topkFirst) {
            c.comment("softmax over the $L chosen logits", k);
            c.line("float top = Float.NEGATIVE_INFINITY");
            c.open("for (int r = 0; r < $L; r++)", kg).line("top = Math.max(top, m.weight[t * $L + r])", k).close();
            c.line("double z = 0");
            c.open("for (int r = 0; r < $L; r++)", kg).line("z += Math.exp(m.weight[t * $L + r] - top)", k).close();
            c.open("for (int r = 0; r < $L; r++)", kg).line("m.weight[t * $L + r] = (float) (Math.exp(m.weight[t * $L + r] - top) / z)", k, k).close();
        } else {
            c.line("m.chosenSum[t] = (float) chosen");
            if (r.normalize()) {
                c.comment("renormalise the chosen weights to sum to 1");
                c.open("for (int r = 0; r < $L; r++)", kg).line("m.weight[t * $L + r] = (float) (m.weight[t * $L + r] / chosen)", k, k).close();
            }
        }
        if (r.scale() != 1.0) {
            c.comment("routed scaling factor");
            c.open("for (int r = 0; r < $L; r++)", kg).line("m.weight[t * $L + r] *= $Lf", k, floatLiteral(r.scale())).close();
        }
        c.close();
        MethodSpec.Builder spec = MethodSpec.methodBuilder(method).addModifiers(Modifier.PRIVATE)
                .addJavadoc("Router of $L$L: $L scores$L, $L$L$L$L$L.\n", moe.name(), ranged ? "'s gate " + r.name().orElseThrow() + " over rows from .. to - 1" : "",
                        sigmoid ? "sigmoid" : "softmax",
                        transform ? " of " + r.temperature().get().activation().map(a -> a + "(logits)").orElse("logits") + " / "
                                + (annealed(r) ? "a temperature annealed from " + floatLiteral(r.temperature().get().start()) + " to "
                                        + floatLiteral(r.temperature().get().end()) : floatLiteral(r.temperature().get().start())) : "",
                        topPSelection(r) ? "top-p " + ((Router.Selection.TopP) r.selection()).p() + " (1 to " + kg + " experts)" : "top-" + kg,
                        r.groupLimit().isPresent() ? " within the best " + r.groupLimit().get().top() + " of " + r.groupLimit().get().groups() + " groups"
                                : r.quotaGroups().isPresent() ? ", " + k / r.quotaGroups().get() + " in each of " + r.quotaGroups().get() + " groups" : "",
                        topkFirst ? " of the logits, then softmax over them" : "", r.normalize() && !topkFirst ? ", renormalised" : "",
                        r.scale() != 1.0 ? ", scaled by " + r.scale() : "")
                .addParameter(ClassName.bestGuess("MoeState"), "m").addParameter(float[].class, "bias");
        if (ranged) {
            spec.addParameter(TypeName.INT, "from").addParameter(TypeName.INT, "to");
        }
        type.addMethod(spec.addCode(c.build()).build());
    }

    private void routerBackward(Moe moe, Router r, String method, boolean ranged) {
        int e = moe.routedExperts();
        int k = slotsPerToken(r);
        Object kb = topP(r) ? "m.kept[t]" : k;
        boolean sigmoid = r.score() == Router.Score.SIGMOID;
        boolean topkFirst = !sigmoid && r.order() == Router.Order.TOPK_THEN_SOFTMAX;
        double zCoef = moe.losses().stream().filter(l -> l instanceof Loss.ZLoss).mapToDouble(l -> ((Loss.ZLoss) l).coef()).sum();
        String scale = floatLiteral(r.scale()) + "f";
        boolean transform = transformsLogits(r);
        String lg = transform ? "m.scaled" : "m.logits";
        String dl = transform ? "m.dScaled" : "m.dLogits";
        Code c = new Code();
        c.open(ranged ? "for (int t = from; t < to; t++)" : "for (int t = 0; t < rows; t++)");
        c.line("int o = t * $L", e);
        c.line("int s0 = t * $L", k);
        c.open("for (int ex = 0; ex < $L; ex++)", e).line("m.dScore[o + ex] = lossScale * m.auxGrad[o + ex]");
        if (transform) {
            c.line("m.dScaled[o + ex] = 0");
        }
        if (!logitGradientsAccumulate()) {
            c.line("m.dLogits[o + ex] = 0");
        }
        c.close();
        if (topkFirst) {
            c.comment("weights are a softmax over the chosen logits: push their gradient to those logits");
            c.line("double dot = 0");
            c.open("for (int r = 0; r < $L; r++)", kb).line("dot += m.weight[s0 + r] / $L * ($L * m.dWeight[s0 + r])", scale, scale).close();
            c.open("for (int r = 0; r < $L; r++)", kb);
            c.line("float w = m.weight[s0 + r] / $L", scale);
            c.line("$L[o + m.selected[s0 + r]] += (float) (w * ($L * m.dWeight[s0 + r] - dot))", dl, scale);
            c.close();
        } else {
            c.comment("weights are the chosen scores$L", r.normalize() ? " over their sum" : "");
            if (r.normalize()) {
                c.line("double total = m.chosenSum[t]");
                c.line("double dot = 0");
                c.open("for (int r = 0; r < $L; r++)", kb).line("dot += m.dWeight[s0 + r] * m.probs[o + m.selected[s0 + r]]").close();
                c.open("for (int r = 0; r < $L; r++)", kb);
                c.line("m.dScore[o + m.selected[s0 + r]] += (float) ($L * (m.dWeight[s0 + r] / total - dot / (total * total)))", scale);
                c.close();
            } else {
                c.open("for (int r = 0; r < $L; r++)", kb).line("m.dScore[o + m.selected[s0 + r]] += $L * m.dWeight[s0 + r]", scale).close();
            }
        }
        if (sigmoid) {
            c.comment("aux gradient was taken with respect to scores normalised per token: undo that normalisation");
            c.line("double z = 0");
            c.line("double cz = 0");
            c.open("for (int ex = 0; ex < $L; ex++)", e).line("z += m.probs[o + ex]").close();
            c.open("for (int ex = 0; ex < $L; ex++)", e).line("cz += lossScale * m.auxGrad[o + ex] * m.probs[o + ex] / z").close();
            c.open("for (int ex = 0; ex < $L; ex++)", e);
            c.line("float direct = m.dScore[o + ex] - lossScale * m.auxGrad[o + ex]");
            c.line("float viaAux = (float) ((lossScale * m.auxGrad[o + ex] - cz) / z)");
            c.line("float s = m.probs[o + ex]");
            c.line("$L[o + ex] += (direct + viaAux) * s * (1 - s)", dl);
            c.close();
        } else {
            c.comment("softmax backward: dl = p ⊙ (dp - Σ p dp)");
            c.line("double pdp = 0");
            c.open("for (int ex = 0; ex < $L; ex++)", e).line("pdp += (double) m.probs[o + ex] * m.dScore[o + ex]").close();
            c.open("for (int ex = 0; ex < $L; ex++)", e).line("$L[o + ex] += (float) (m.probs[o + ex] * (m.dScore[o + ex] - pdp))", dl).close();
        }
        if (zCoef > 0) {
            c.comment("z-loss: d/dl of coef * lse² / rows = coef * 2 * lse * softmax / rows (over the rows a padding mask keeps)");
            c.open("if (keep == null || keep[t])");
            c.open("for (int ex = 0; ex < $L; ex++)", e);
            c.line("double softmax = Math.exp($L[o + ex] - m.lse[t])", lg);
            c.line("$L[o + ex] += (float) (lossScale * $L * 2.0 * m.lse[t] * softmax / keptRows)", dl, floatLiteral(zCoef));
            c.close().close();
        }
        if (transform) {
            Router.Temperature tp = r.temperature().get();
            String act = tp.activation().orElse("none");
            c.comment("through the temperature$L", act.equals("none") ? "" : " and the " + act);
            if (ranged && annealed(r)) {
                c.line("float tau = $L", annealedTemperature(tp));
            }
            c.open("for (int ex = 0; ex < $L; ex++)", e);
            String tau = temperature(r, ranged);
            switch (act) {
                case "tanh" -> {
                    c.line("float a = (float) Math.tanh(m.logits[o + ex])");
                    c.line("m.dLogits[o + ex] += m.dScaled[o + ex] * (1 - a * a) / $L", tau);
                }
                case "sigmoid" -> {
                    c.line("float a = $T.sigmoid(m.logits[o + ex])", ELEMENTWISE);
                    c.line("m.dLogits[o + ex] += m.dScaled[o + ex] * a * (1 - a) / $L", tau);
                }
                default -> c.line("m.dLogits[o + ex] += m.dScaled[o + ex] / $L", tau);
            }
            c.close();
        }
        c.close();
        MethodSpec.Builder spec = MethodSpec.methodBuilder(method + "Backward").addModifiers(Modifier.PRIVATE)
                .addJavadoc("Backward of {@link #$L}: from the weights' gradient (and the balancing losses) to the logits' gradient.\n", method)
                .addParameter(ClassName.bestGuess("MoeState"), "m").addParameter(TypeName.FLOAT, "lossScale");
        if (ranged) {
            spec.addParameter(TypeName.INT, "from").addParameter(TypeName.INT, "to");
        }
        type.addMethod(spec.addCode(c.build()).build());
    }

    // ---- helpers the runtime has no op for ----

    private void helpers() {
        if (anyCapacity()) {
            Code c = new Code();
            c.line("$T.fill(m.dropped, 0, slots, false)", ARRAYS);
            c.open("if (keep == null)");
            c.line("$T.sortByExpert(m.selected, slots, experts, m.order, m.offsets)", ROUTING);
            c.orElse("else");
            c.comment("padding mask: a dropped token's slots are dropped and do not compete for capacity");
            c.open("for (int s = 0; s < slots; s++)");
            c.line("m.dropped[s] = !keep[s / k]");
            c.line("m.slotKey[s] = m.dropped[s] ? experts : m.selected[s]");
            c.close();
            c.line("$T.sortByExpert(m.slotKey, slots, experts + 1, m.order, m.offsets)", ROUTING);
            c.close();
            c.open("for (int ex = 0; ex < experts; ex++)");
            c.line("int from = m.offsets[ex]");
            c.line("int n = m.offsets[ex + 1] - from");
            c.open("if (n <= capacity)").line("continue").close();
            c.line("Integer[] idx = new Integer[n]");
            c.open("for (int j = 0; j < n; j++)").line("idx[j] = m.order[from + j]").close();
            c.open("if (priority != null)");
            c.line("$T.sort(idx, (a, b) -> priority[a] != priority[b] ? Float.compare(priority[b], priority[a]) : Integer.compare(a, b))", ARRAYS);
            c.close();
            c.open("for (int j = capacity; j < n; j++)").line("m.dropped[idx[j]] = true").close();
            c.close();
            type.addMethod(MethodSpec.methodBuilder("dropOverCapacity").addModifiers(Modifier.PRIVATE, Modifier.STATIC)
                    .addJavadoc("Capacity factor: each expert keeps at most {@code capacity} of its slots, those of highest priority (ties, and a null priority: the earliest slots); the rest are marked dropped.\n")
                    .addParameter(ClassName.bestGuess("MoeState"), "m").addParameter(TypeName.INT, "slots").addParameter(TypeName.INT, "experts")
                    .addParameter(TypeName.INT, "capacity").addParameter(float[].class, "priority").addParameter(boolean[].class, "keep")
                    .addParameter(TypeName.INT, "k").addCode(c.build()).build());
        }
        if (moes.values().stream().anyMatch(m -> expertChoice(m.routers().getFirst()))) {
            Code c = new Code();
            c.line("int experts = slotsPerToken");
            c.line("$T.fill(m.dropped, 0, batch * seq * slotsPerToken, true)", ARRAYS);
            c.line("Integer[] idx = new Integer[seq]");
            c.open("for (int b = 0; b < batch; b++)");
            c.comment("a padded sequence's capacity counts its kept tokens only, as if it were unpadded");
            c.line("int kept = seq");
            c.open("if (keep != null)");
            c.line("kept = 0");
            c.open("for (int t = b * seq; t < (b + 1) * seq; t++)").open("if (keep[t])").line("kept++").close().close();
            c.close();
            c.line("int capacity = (int) Math.ceil(factor * kept / experts)");
            c.open("for (int ex = 0; ex < experts; ex++)");
            c.line("int n = 0");
            c.open("for (int s = b * seq * slotsPerToken; s < (b + 1) * seq * slotsPerToken; s++)");
            c.open("if (m.selected[s] == ex && (keep == null || keep[s / slotsPerToken]))").line("idx[n++] = s").close();
            c.close();
            c.line("$T.sort(idx, 0, n, (x, y) -> m.weight[x] != m.weight[y] ? Float.compare(m.weight[y], m.weight[x]) : Integer.compare(x, y))", ARRAYS);
            c.open("for (int j = 0; j < Math.min(n, capacity); j++)").line("m.dropped[idx[j]] = false").close();
            c.close();
            c.close();
            type.addMethod(MethodSpec.methodBuilder("expertChoice").addModifiers(Modifier.PRIVATE, Modifier.STATIC)
                    .addJavadoc("Expert choice: every token ranked every expert (slotsPerToken = experts); in each sequence each expert keeps the ceil(factor · kept tokens / experts) tokens of highest weight (ties: the earlier token), the other slots are marked dropped.\n")
                    .addParameter(ClassName.bestGuess("MoeState"), "m").addParameter(TypeName.INT, "batch").addParameter(TypeName.INT, "seq")
                    .addParameter(TypeName.INT, "slotsPerToken").addParameter(TypeName.DOUBLE, "factor").addParameter(boolean[].class, "keep")
                    .addCode(c.build()).build());
        }
        if (anySeeded() && moes.values().stream().anyMatch(m -> randomDrops(m))) {
            Code c = new Code();
            c.line("$T rng = new $T((step * 0x9E3779B97F4A7C15L + microBatch * 0xC2B2AE3D27D4EB4FL + layer * 0x165667B19E3779F9L) ^ 0x5DEECE66DL)",
                    INIT.nestedClass("SplitMix"), INIT.nestedClass("SplitMix"));
            c.line("float[] priority = new float[slots]");
            c.open("for (int i = 0; i < slots; i++)").line("priority[i] = (float) rng.nextDouble()").close();
            c.line("return priority");
            type.addMethod(MethodSpec.methodBuilder("randomPriority").addModifiers(Modifier.PRIVATE).returns(float[].class)
                    .addJavadoc("Random drop priorities of a layer's slots, seeded by the step, the micro-batch and the layer.\n")
                    .addParameter(TypeName.INT, "slots").addParameter(TypeName.INT, "layer").addCode(c.build()).build());
        }
        if (anyJitter()) {
            Code c = new Code();
            c.line("$T rng = new $T(step * 0x9E3779B97F4A7C15L + microBatch * 0xC2B2AE3D27D4EB4FL + layer * 0x165667B19E3779F9L)", INIT.nestedClass("SplitMix"),
                    INIT.nestedClass("SplitMix"));
            c.open("for (int i = 0; i < rows * DIM; i++)");
            c.line("m.noise[i] = (float) (1 - eps + 2 * eps * rng.nextDouble())");
            c.line("m.jittered[i] = x[i] * m.noise[i]");
            c.close();
            type.addMethod(MethodSpec.methodBuilder("jitter").addModifiers(Modifier.PRIVATE)
                    .addJavadoc("Router input jitter: noise uniform in [1 - eps, 1 + eps], seeded by the step, the micro-batch and the layer.\n")
                    .addParameter(float[].class, "x").addParameter(ClassName.bestGuess("MoeState"), "m").addParameter(TypeName.INT, "rows")
                    .addParameter(TypeName.FLOAT, "eps").addParameter(TypeName.INT, "layer").addCode(c.build()).build());
        }
        if (anyGatesDifferInJitter()) {
            Code c = new Code();
            c.comment("the same draws as jitter(): a gate of eps 0 gets noise exactly 1, its rows read the router's input unchanged");
            c.line("$T rng = new $T(step * 0x9E3779B97F4A7C15L + microBatch * 0xC2B2AE3D27D4EB4FL + layer * 0x165667B19E3779F9L)", INIT.nestedClass("SplitMix"),
                    INIT.nestedClass("SplitMix"));
            c.open("for (int i = 0; i < rows * DIM; i++)");
            c.line("float eps = epsOfGate[m.gateOf[i / DIM / seq]]");
            c.line("m.noise[i] = (float) (1 - eps + 2 * eps * rng.nextDouble())");
            c.line("m.jittered[i] = x[i] * m.noise[i]");
            c.close();
            type.addMethod(MethodSpec.methodBuilder("jitterOfGates").addModifiers(Modifier.PRIVATE)
                    .addJavadoc("Router input jitter of named gates that differ in it: each sequence's rows get noise uniform in [1 - eps, 1 + eps] of its gate's eps.\n")
                    .addParameter(float[].class, "x").addParameter(ClassName.bestGuess("MoeState"), "m").addParameter(TypeName.INT, "rows")
                    .addParameter(float[].class, "epsOfGate").addParameter(TypeName.INT, "layer").addCode(c.build()).build());
        }
        if (anyGates()) {
            Code c = new Code();
            c.open("if (b < domains.size())");
            c.open("for (int g = 0; g < gates.length; g++)");
            c.open("if (gates[g].equals(domains.get(b)))").line("return g").close();
            c.close();
            c.close();
            c.line("return 0");
            type.addMethod(MethodSpec.methodBuilder("gateOf").addModifiers(Modifier.PRIVATE).returns(TypeName.INT)
                    .addJavadoc("The gate of sequence {@code b}: the one named after its domain, else the first.\n")
                    .addParameter(String[].class, "gates").addParameter(TypeName.INT, "b").addCode(c.build()).build());
            type.addMethod(MethodSpec.methodBuilder("setDomains").addAnnotation(Override.class).addModifiers(Modifier.PUBLIC)
                    .addParameter(ParameterizedTypeName.get(LIST, ClassName.get(String.class)), "domains")
                    .addStatement("this.domains = $T.copyOf(domains)", LIST).build());
        }
        if (gruWidth > 0) {
            gruHelpers();
        }
        if (!residualFrom.isEmpty() || gruWidth > 0) {
            Code c = new Code();
            c.open("for (int t = 0; t < rows; t++)");
            c.open("for (int o = 0; o < out; o++)");
            c.line("double s = 0");
            c.open("for (int i = 0; i < in; i++)").line("s += (double) w[o * in + i] * x[t * in + i]").close();
            c.line("y[t * out + o] += (float) s");
            c.close();
            c.close();
            type.addMethod(MethodSpec.methodBuilder("addLinear").addModifiers(Modifier.PRIVATE, Modifier.STATIC)
                    .addJavadoc("{@code y[rows, out] += x[rows, in] · w[out, in]ᵀ}: a gating residual or a recurrent router's state (its backward is {@code matmulBackward}).\n")
                    .addParameter(float[].class, "x").addParameter(float[].class, "w").addParameter(float[].class, "y")
                    .addParameter(TypeName.INT, "rows").addParameter(TypeName.INT, "in").addParameter(TypeName.INT, "out")
                    .addCode(c.build()).build());
        }
        if (anyConstantExpert()) {
            Code c = new Code();
            c.open("for (int i = from; i < to; i++)");
            c.line("int xo = m.tokenOfRow[i] * DIM");
            c.line("int yo = i * DIM");
            c.line("double z1 = 0");
            c.line("double z2 = 0");
            c.open("for (int d = 0; d < DIM; d++)");
            c.line("z1 += (double) mix[d] * x[xo + d]");
            c.line("z2 += (double) mix[DIM + d] * x[xo + d]");
            c.close();
            c.line("double top = Math.max(z1, z2)");
            c.line("double e1 = Math.exp(z1 - top)");
            c.line("double e2 = Math.exp(z2 - top)");
            c.line("float a1 = (float) (e1 / (e1 + e2))");
            c.line("float a2 = (float) (e2 / (e1 + e2))");
            c.line("m.constantMix[2 * i] = a1");
            c.line("m.constantMix[2 * i + 1] = a2");
            c.open("for (int d = 0; d < DIM; d++)").line("m.ys[yo + d] = a1 * x[xo + d] + a2 * v[d]").close();
            c.close();
            type.addMethod(MethodSpec.methodBuilder("constantExpert").addModifiers(Modifier.PRIVATE, Modifier.STATIC)
                    .addJavadoc("MoE++ constant expert on dispatched rows {@code from .. to}: [a1, a2] = softmax(mix · x), output a1 x + a2 v.\n")
                    .addParameter(float[].class, "x").addParameter(ClassName.bestGuess("MoeState"), "m").addParameter(TypeName.INT, "from")
                    .addParameter(TypeName.INT, "to").addParameter(float[].class, "v").addParameter(float[].class, "mix").addCode(c.build()).build());

            Code b = new Code();
            b.open("for (int i = from; i < to; i++)");
            b.line("int xo = m.tokenOfRow[i] * DIM");
            b.line("int yo = i * DIM");
            b.line("float a1 = m.constantMix[2 * i]");
            b.line("float a2 = m.constantMix[2 * i + 1]");
            b.comment("dy = weight · dOut (in dys); d a1 = <dy, x>, d a2 = <dy, v>; softmax backward to the mix logits");
            b.line("double da1 = 0");
            b.line("double da2 = 0");
            b.open("for (int d = 0; d < DIM; d++)");
            b.line("da1 += (double) m.dys[yo + d] * x[xo + d]");
            b.line("da2 += (double) m.dys[yo + d] * v[d]");
            b.close();
            b.line("double mean = a1 * da1 + a2 * da2");
            b.line("float dz1 = (float) (a1 * (da1 - mean))");
            b.line("float dz2 = (float) (a2 * (da2 - mean))");
            b.open("for (int d = 0; d < DIM; d++)");
            b.line("float dy = m.dys[yo + d]");
            b.line("dx[xo + d] += a1 * dy + dz1 * mix[d] + dz2 * mix[DIM + d]");
            b.line("dv[d] += a2 * dy");
            b.line("dMix[d] += dz1 * x[xo + d]");
            b.line("dMix[DIM + d] += dz2 * x[xo + d]");
            b.close();
            b.close();
            type.addMethod(MethodSpec.methodBuilder("constantExpertBackward").addModifiers(Modifier.PRIVATE, Modifier.STATIC)
                    .addJavadoc("Backward of {@link #constantExpert}: adds to the input's, the vector's and the mix's gradients.\n")
                    .addParameter(float[].class, "x").addParameter(ClassName.bestGuess("MoeState"), "m").addParameter(TypeName.INT, "from")
                    .addParameter(TypeName.INT, "to").addParameter(float[].class, "v").addParameter(float[].class, "dv")
                    .addParameter(float[].class, "mix").addParameter(float[].class, "dMix").addParameter(float[].class, "dx")
                    .addCode(b.build()).build());
        }
    }

    // ---- backward ----

    private void backward() {
        Code c = new Code();
        c.comment("dLogits holds the gradient of the mean cross-entropy; scale it for gradient accumulation");
        c.open("if (scale != 1f)");
        c.open("for (int i = 0; i < rows * VOCAB; i++)").line("dLogits[i] *= scale").close();
        c.close();
        c.line("$T.zero(dx, rows * DIM)", ELEMENTWISE);
        c.line("$T.zero(dNormed, rows * DIM)", ELEMENTWISE);
        if (gruWidth > 0) {
            c.line("$T.zero(dGruState, rows * $L)", ELEMENTWISE, gruWidth);
        }
        if (anyPregate()) {
            c.line("$T.zero(dEmbedded, rows * DIM)", ELEMENTWISE);
        }
        if (logitGradientsAccumulate()) {
            c.comment("routers' logit gradients accumulate: a gating residual adds to the previous MoE layer's before that layer's backward");
            for (RoutedState rs : routedStates()) {
                c.line("$T.zero($L.dLogits, rows * $L)", ELEMENTWISE, rs.state(), rs.moe().routedExperts());
            }
        }
        String head = cfg.tieEmbeddings() ? Names.field("embed.weight") : Names.field("head.weight");
        c.line("backend.matmulBackward(finalNormed, 0, $L.value(), 0, dLogits, 0, dNormed, 0, $L.grad(), 0, rows, DIM, VOCAB)", head, head);
        c.add(normBackward("final_norm", "finalInput", "finalMean", "finalRstd", "dNormed", "dx").build());
        for (int i = model.layers().size() - 1; i >= 0; i--) {
            c.line("backwardLayer$L(scale)", i);
        }
        if (anyPregate()) {
            c.comment("the pre-gating routers' gradient joins the embeddings'");
            c.line("$T.addInPlace(dx, dEmbedded, rows * DIM)", ELEMENTWISE);
        }
        c.line("backend.embeddingBackward(inputs, dx, $L.grad(), rows, DIM)", Names.field("embed.weight"));
        type.addMethod(MethodSpec.methodBuilder("backward").addAnnotation(Override.class).addModifiers(Modifier.PUBLIC)
                .addParameter(TypeName.FLOAT, "scale").addCode(c.build()).build());
    }

    private void layerBackward(Layer l) {
        int i = l.index();
        String p = "layers." + i + ".";
        Code c = new Code();
        String s = "mix" + i;
        switch (l.block()) {
            case Block.PreNorm pre -> {
                String f = "ffn" + i;
                c.comment("stream += $L(norm(stream)): dx flows through the residual and back through the ffn", partName(pre.ffn()));
                c.line("$T.zero(dNormed, rows * DIM)", ELEMENTWISE);
                c.add(ffnBackward(pre.ffn(), i, f, f + ".normed", "dx", "dNormed").build());
                c.add(normBackward(p + "ffn_norm", f + ".input", f + ".mean", f + ".rstd", "dNormed", "dx").build());
                c.comment("stream += $L(norm(stream))", partName(pre.mixer()));
                c.line("$T.zero(dNormed, rows * DIM)", ELEMENTWISE);
                c.add(mixerBackward(pre.mixer(), i, p + "attn", s, s + ".normed", "dx", "dNormed").build());
                c.add(normBackward(p + "attn_norm", s + ".input", s + ".mean", s + ".rstd", "dNormed", "dx").build());
            }
            case Block.Parallel par -> {
                c.comment("stream += $L(h) + $L(h), h = norm(stream)", partName(par.mixer()), partName(par.ffn()));
                c.line("$T.zero(dNormed, rows * DIM)", ELEMENTWISE);
                c.add(ffnBackward(par.ffn(), i, s, s + ".normed", "dx", "dNormed").build());
                c.add(mixerBackward(par.mixer(), i, p + "attn", s, s + ".normed", "dx", "dNormed").build());
                c.add(normBackward(p + "norm", s + ".input", s + ".mean", s + ".rstd", "dNormed", "dx").build());
            }
            case Block.Residual res -> {
                String f = "ffn" + i;
                c.comment("stream += c1 · moe(h) + c2 · dense(h): the mix's logits' gradient, then each branch's output gradient in place of its output");
                c.line("$T.zero(dNormed, rows * DIM)", ELEMENTWISE);
                c.line("float[] dMix = new float[rows * 2]");
                c.open("for (int t = 0; t < rows; t++)");
                c.line("float c1 = residual$LMix[2 * t]", i);
                c.line("float c2 = residual$LMix[2 * t + 1]", i);
                c.line("double dc1 = 0");
                c.line("double dc2 = 0");
                c.open("for (int d = 0; d < DIM; d++)");
                c.line("float g = dx[t * DIM + d]");
                c.line("dc1 += (double) g * residual$LMoe[t * DIM + d]", i);
                c.line("dc2 += (double) g * residual$LDense[t * DIM + d]", i);
                c.line("residual$LMoe[t * DIM + d] = c1 * g", i);
                c.line("residual$LDense[t * DIM + d] = c2 * g", i);
                c.close();
                c.line("double mean = c1 * dc1 + c2 * dc2");
                c.line("dMix[2 * t] = (float) (c1 * (dc1 - mean))");
                c.line("dMix[2 * t + 1] = (float) (c2 * (dc2 - mean))");
                c.close();
                String mix = Names.field(p + "residual_mix");
                c.line("backend.matmulBackward($L.normed, 0, $L.value(), 0, dMix, 0, dNormed, 0, $L.grad(), 0, rows, DIM, 2)", f, mix, mix);
                c.add(denseBackward(p + "ffn", res.dense(), f, f + ".normed", "residual" + i + "Dense", "dNormed", "rows").build());
                c.add(moeBackward(i, res.moe(), f + ".normed", "residual" + i + "Moe", "dNormed").build());
                c.add(normBackward(p + "ffn_norm", f + ".input", f + ".mean", f + ".rstd", "dNormed", "dx").build());
                c.comment("stream += attention(norm(stream))");
                c.line("$T.zero(dNormed, rows * DIM)", ELEMENTWISE);
                c.add(attentionBackward(p + "attn", s, s + ".normed", "dx", "dNormed").build());
                c.add(normBackward(p + "attn_norm", s + ".input", s + ".mean", s + ".rstd", "dNormed", "dx").build());
            }
            case Block.Shortcut sc -> {
                String f = "ffn" + i;
                String s1 = s + "b";
                String f1 = f + "b";
                c.comment("the MoE's output gradient: the block output's");
                c.line("System.arraycopy(dx, 0, shortcut$LMoe, 0, rows * DIM)", i);
                c.comment("stream += ffn1(norm(stream))");
                c.line("$T.zero(dNormed, rows * DIM)", ELEMENTWISE);
                c.add(denseBackward(p + "ffn1", sc.dense(), f1, f1 + ".normed", "dx", "dNormed", "rows").build());
                c.add(normBackward(p + "ffn1_norm", f1 + ".input", f1 + ".mean", f1 + ".rstd", "dNormed", "dx").build());
                c.comment("stream += attention(norm(stream))  (attn1)");
                c.line("$T.zero(dNormed, rows * DIM)", ELEMENTWISE);
                c.add(attentionBackward(p + "attn1", s1, s1 + ".normed", "dx", "dNormed").build());
                c.add(normBackward(p + "attn1_norm", s1 + ".input", s1 + ".mean", s1 + ".rstd", "dNormed", "dx").build());
                c.comment("stream += ffn0(m), and the MoE's input m");
                c.line("$T.zero(dNormed, rows * DIM)", ELEMENTWISE);
                c.add(denseBackward(p + "ffn0", sc.dense(), f, f + ".normed", "dx", "dNormed", "rows").build());
                c.add(moeBackward(i, sc.moe(), f + ".normed", "shortcut" + i + "Moe", "dNormed").build());
                c.add(normBackward(p + "ffn0_norm", f + ".input", f + ".mean", f + ".rstd", "dNormed", "dx").build());
                c.comment("stream += attention(norm(stream))  (attn0)");
                c.line("$T.zero(dNormed, rows * DIM)", ELEMENTWISE);
                c.add(attentionBackward(p + "attn0", s, s + ".normed", "dx", "dNormed").build());
                c.add(normBackward(p + "attn0_norm", s + ".input", s + ".mean", s + ".rstd", "dNormed", "dx").build());
            }
            default -> throw new IllegalStateException();
        }
        type.addMethod(MethodSpec.methodBuilder("backwardLayer" + i).addModifiers(Modifier.PRIVATE)
                .addParameter(TypeName.FLOAT, "scale").addCode(c.build()).build());
    }

    private Code attentionBackward(String prefix, String s, String in, String dOut, String dIn) {
        if (cfg.mla().isPresent()) {
            return latentAttentionBackward(prefix, s, in, dOut, dIn);
        }
        Code c = new Code();
        String q = Names.field(prefix + ".q");
        String k = Names.field(prefix + ".k");
        String v = Names.field(prefix + ".v");
        String o = Names.field(prefix + ".o");
        c.line("$T.zero(dAtt, rows * Q_DIM)", ELEMENTWISE);
        c.line("backend.matmulBackward($L.att, 0, $L.value(), 0, $L, 0, dAtt, 0, $L.grad(), 0, rows, Q_DIM, DIM)", s, o, dOut, o);
        c.line("$T.zero(dq, rows * Q_DIM)", ELEMENTWISE);
        c.line("$T.zero(dk, rows * KV_DIM)", ELEMENTWISE);
        c.line("$T.zero(dv, rows * KV_DIM)", ELEMENTWISE);
        c.line("backend.attentionBackward($L.q, $L.k, $L.v, $L.att, $L.lse, dAtt, dq, dk, dv, batch, seq, HEADS, KV_HEADS, HEAD_DIM, CAUSAL, WINDOW, keep)",
                s, s, s, s, s);
        if (cfg.position().kind() == ModelConfig.PositionKind.ROPE) {
            c.line("backend.rope(dq, rows, seq, HEADS, HEAD_DIM, ROTARY_DIMS, THETA, true)");
            c.line("backend.rope(dk, rows, seq, KV_HEADS, HEAD_DIM, ROTARY_DIMS, THETA, true)");
        }
        String dq = "dq";
        String dk = "dk";
        if (cfg.qkNorm()) {
            c.line("$T.zero(dqRaw, rows * Q_DIM)", ELEMENTWISE);
            c.line("$T.zero(dkRaw, rows * KV_DIM)", ELEMENTWISE);
            String qn = Names.field(prefix + ".q_norm");
            String kn = Names.field(prefix + ".k_norm");
            String qRows = cfg.qkNormFull() ? "rows, Q_DIM" : "rows * HEADS, HEAD_DIM";
            String kRows = cfg.qkNormFull() ? "rows, KV_DIM" : "rows * KV_HEADS, HEAD_DIM";
            c.line("backend.rmsNormBackward($L.qRaw, $L.value(), $L.qRstd, dq, dqRaw, $L.grad(), $L)", s, qn, s, qn, qRows);
            c.line("backend.rmsNormBackward($L.kRaw, $L.value(), $L.kRstd, dk, dkRaw, $L.grad(), $L)", s, kn, s, kn, kRows);
            dq = "dqRaw";
            dk = "dkRaw";
        }
        if (cfg.qkvBias()) {
            c.line("$T.biasBackward($L, $L.grad(), 0, rows, Q_DIM)", ELEMENTWISE, dq, Names.field(prefix + ".q_bias"));
            c.line("$T.biasBackward($L, $L.grad(), 0, rows, KV_DIM)", ELEMENTWISE, dk, Names.field(prefix + ".k_bias"));
            c.line("$T.biasBackward(dv, $L.grad(), 0, rows, KV_DIM)", ELEMENTWISE, Names.field(prefix + ".v_bias"));
        }
        c.line("backend.matmulBackward($L, 0, $L.value(), 0, $L, 0, $L, 0, $L.grad(), 0, rows, DIM, Q_DIM)", in, q, dq, dIn, q);
        c.line("backend.matmulBackward($L, 0, $L.value(), 0, $L, 0, $L, 0, $L.grad(), 0, rows, DIM, KV_DIM)", in, k, dk, dIn, k);
        c.line("backend.matmulBackward($L, 0, $L.value(), 0, dv, 0, $L, 0, $L.grad(), 0, rows, DIM, KV_DIM)", in, v, dIn, v);
        return c;
    }

    private Code ffnBackward(Block.Part part, int layer, String s, String in, String dOut, String dIn) {
        return switch (part) {
            case Block.Part.Dense d -> denseBackward("layers." + layer + ".ffn", d.ffn(), s, in, dOut, dIn, "rows");
            case Block.Part.MoePart m -> moeBackward(layer, m.moe(), in, dOut, dIn);
            default -> throw new IllegalStateException();
        };
    }

    private Code denseBackward(String prefix, Ffn f, String s, String in, String dOut, String dIn, String rows) {
        Code c = new Code();
        int h = f.hidden();
        String up = Names.field(prefix + ".up");
        String down = Names.field(prefix + ".down");
        c.line("$T.zero(dAct, $L * $L)", ELEMENTWISE, rows, h);
        c.line("backend.matmulBackward($L.act, 0, $L.value(), 0, $L, 0, dAct, 0, $L.grad(), 0, $L, $L, DIM)", s, down, dOut, down, rows, h);
        if (f.activation().gated()) {
            String gate = Names.field(prefix + ".gate");
            c.line("backend.gluBackward($T.$L, $L.gate, $L.up, dAct, dGate, dUp, $L * $L)", ACTIVATION, act(f), s, s, rows, h);
            c.line("backend.matmulBackward($L, 0, $L.value(), 0, dGate, 0, $L, 0, $L.grad(), 0, $L, DIM, $L)", in, gate, dIn, gate, rows, h);
        } else {
            c.line("backend.activationBackward($T.$L, $L.up, dAct, dUp, $L * $L)", ACTIVATION, act(f), s, rows, h);
        }
        c.line("backend.matmulBackward($L, 0, $L.value(), 0, dUp, 0, $L, 0, $L.grad(), 0, $L, DIM, $L)", in, up, dIn, up, rows, h);
        return c;
    }

    /** Whether the next MoE layer's gating residual reads this layer's logits (and so sends a gradient back). */
    private boolean residualFeeds(int layer) {
        return residualFrom.containsValue(layer);
    }

    /**
     * Whether routers' logit gradients accumulate: in a model with gating residuals, backward()
     * zeroes every MoE layer's dLogits first, a residual adds to the previous layer's, and the
     * router backward adds its own instead of overwriting.
     */
    private boolean logitGradientsAccumulate() {
        return !residualFrom.isEmpty();
    }

    private Code moeBackward(int layer, Moe moe, String in, String dOut, String dIn) {
        Code c = new Code();
        String m = "moe" + layer;
        String p = "layers." + layer + ".moe";
        Router r = moe.routers().getFirst();
        int e = moe.routedExperts();
        int k = slotsPerToken(r);
        Ffn f = routedFfn(moe);
        Slots sl = slotsByPrefix.get(p);
        int nf = sl.ffn();
        if (capacity(moe) != null || expertChoice(r)) {
            c.comment("$L: the dispatched (kept) slots; the dropped ones get no weight gradient", expertChoice(r) ? "expert choice" : "capacity factor");
            c.line("int slots = $L.offsets[$L]", m, e);
        } else if (topP(r)) {
            c.comment("top-p: the dispatched (used) slots; the unused ones get no weight gradient");
            c.line("int slots = $L.offsets[$L]", m, e);
        } else {
            c.comment("a padding mask's dropped slots are not dispatched and get no weight gradient");
            c.line("int slots = keep == null ? rows * $L : $L.offsets[$L]", k, m, e);
        }
        int s = 0;
        for (ExpertGroup g : moe.groups()) {
            if (g.role() != ExpertGroup.Role.SHARED) {
                continue;
            }
            Ffn sf = ((Expert.FeedForward) g.expert()).ffn();
            for (int i = 0; i < g.count(); i++, s++) {
                String sp = p + ".shared." + s;
                c.comment("shared expert $L", s);
                String state = m + ".shared[" + s + "]";
                if (g.sigmoidGate()) {
                    String wg = Names.field(sp + ".sigmoid_gate");
                    c.line("$T.dotRows($L, $L.input, rows, DIM, $L.dWeight)", ELEMENTWISE, dOut, state, m);
                    c.line("float[] dGateLogit = new float[rows]");
                    c.open("for (int t = 0; t < rows; t++)");
                    c.line("float g = $L.sharedGate[t]", m);
                    c.line("dGateLogit[t] = $L.dWeight[t] * g * (1 - g)", m);
                    c.close();
                    c.line("backend.matmulBackward($L, 0, $L.value(), 0, dGateLogit, 0, $L, 0, $L.grad(), 0, rows, DIM, 1)", in, wg, dIn, wg);
                    c.line("System.arraycopy($L, 0, dShared, 0, rows * DIM)", dOut);
                    c.line("$T.scaleRows(dShared, $L.sharedGate, rows, DIM)", ELEMENTWISE, m);
                    c.add(denseBackward(sp, sf, state, in, "dShared", dIn, "rows").build());
                } else {
                    c.add(denseBackward(sp, sf, state, in, dOut, dIn, "rows").build());
                }
            }
        }
        // after the shared experts: a sigmoid gate's backward uses dWeight as scratch
        if (capacity(moe) != null || expertChoice(r) || topP(r)) {
            c.line("$T.fill($L.dWeight, 0, rows * $L, 0f)", ARRAYS, m, k);
        } else {
            c.open("if (keep != null)").line("$T.fill($L.dWeight, 0, rows * $L, 0f)", ARRAYS, m, k).close();
        }
        c.comment("combine backward: d(weight) = <dOut[token], expert output>; d(expert output) = weight · dOut[token]");
        c.line("$T.dotGatheredRows($L, $L.tokenOfRow, $L.ys, slots, DIM, $L.dRowWeight)", ELEMENTWISE, dOut, m, m, m);
        c.open("for (int i = 0; i < slots; i++)").line("$L.dWeight[$L.order[i]] = $L.dRowWeight[i]", m, m, m).close();
        c.line("backend.gatherRows($L, $L.tokenOfRow, slots, DIM, $L.dys)", dOut, m, m);
        c.line("$T.scaleRows($L.dys, $L.weightOfRow, slots, DIM)", ELEMENTWISE, m, m);
        String ffnRows = sl.zeroCompute() ? "ffnRows" : "slots";
        if (sl.zeroCompute()) {
            c.line("int ffnRows = $L.offsets[$L]", m, nf);
        }
        boolean loraAlone = loraByPrefix.containsKey(p) && !mixedGroups(moe);
        if (loraAlone) {
            c.add(loraBackward(p, m, loraByPrefix.get(p).getFirst(), sl, nf, in, dOut, dIn, ffnRows).build());
        } else if (sl.packed() > 0) {
            int np = sl.packed();
            String packedRows = np == nf ? ffnRows : "packedRows";
            if (np != nf) {
                c.line("int packedRows = $L.offsets[$L]", m, np);
            }
            int h = f.hidden();
            c.comment("experts backward (grouped)");
            String gate = Names.field(p + ".experts.gate");
            String up = Names.field(p + ".experts.up");
            String down = Names.field(p + ".experts.down");
            c.line("$T.zero(dAct, $L * $L)", ELEMENTWISE, packedRows, h);
            c.line("backend.groupedMatmulBackward($L.act, $L, 0, $L.dys, dAct, $LGrad, 0, $L.offsets, $L, $L, DIM)", m, down, m, down, m, np, h);
            LatentGroup lg = latentByPrefix.get(p);
            String width = lg == null ? "DIM" : String.valueOf(lg.rank());
            c.line("$T.zero($L.dxs, $L * $L)", ELEMENTWISE, m, packedRows, width);
            if (f.activation().gated()) {
                c.line("backend.gluBackward($T.$L, $L.gate, $L.up, dAct, dGate, dUp, $L * $L)", ACTIVATION, act(f), m, m, packedRows, h);
                c.line("backend.groupedMatmulBackward($L.xs, $L, 0, dGate, $L.dxs, $LGrad, 0, $L.offsets, $L, $L, $L)", m, gate, m, gate, m, np, width, h);
            } else {
                c.line("backend.activationBackward($T.$L, $L.up, dAct, dUp, $L * $L)", ACTIVATION, act(f), m, packedRows, h);
            }
            c.line("backend.groupedMatmulBackward($L.xs, $L, 0, dUp, $L.dxs, $LGrad, 0, $L.offsets, $L, $L, $L)", m, up, m, up, m, np, width, h);
            if (lg != null) {
                c.comment("latent experts: d(z) per token, then the shared down-projection's backward");
                c.line("$T.zero($L.dLatent, rows * $L)", ELEMENTWISE, m, lg.rank());
                c.line("backend.scatterAddRows($L.dxs, $L.tokenOfRow, null, $L, $L, $L.dLatent)", m, m, ffnRows, lg.rank(), m);
                c.line("backend.matmulBackward($L, 0, $L.value(), 0, $L.dLatent, 0, $L, 0, $L.grad(), 0, rows, DIM, $L)", in, lg.downField(), m, dIn,
                        lg.downField(), lg.rank());
            } else {
                c.line("backend.scatterAddRows($L.dxs, $L.tokenOfRow, null, $L, DIM, $L)", m, m, packedRows, dIn);
            }
        }
        for (OwnGroup g : mixedByPrefix.getOrDefault(p, List.of())) {
            c.add(ownGroupBackward(p, m, g, sl, in, dIn).build());
        }
        if (loraByPrefix.containsKey(p) && !loraAlone) {
            for (LoraGroup lo : loraByPrefix.get(p)) {
                useLora(c, m, p, lo);
                c.add(loraBackward(p, m, lo, sl, lo.count(), in, dOut, dIn, ffnRows).build());
                if (loraByPrefix.get(p).size() > 1) {
                    c.close();
                }
            }
        }
        zeroComputeRuns(sl, (from, to, x) -> {
            switch (x) {
                case Expert.Zero z -> { }
                case Expert.Copy cp -> {
                    c.comment("copy experts: d(input) += weight · dOut");
                    c.open("for (int i = $L.offsets[$L]; i < $L.offsets[$L]; i++)", m, from, m, to);
                    c.line("int xo = $L.tokenOfRow[i] * DIM", m);
                    c.open("for (int d = 0; d < DIM; d++)").line("$L[xo + d] += $L.dys[i * DIM + d]", dIn, m).close();
                    c.close();
                }
                case Expert.Constant cs -> {
                    String ep = p + ".experts." + slotOfKey(sl, from);
                    String v = Names.field(ep + ".vector");
                    String mix = Names.field(ep + ".mix");
                    c.comment("constant expert $L", slotOfKey(sl, from));
                    c.line("constantExpertBackward($L, $L, $L.offsets[$L], $L.offsets[$L], $L.value(), $L.grad(), $L.value(), $L.grad(), $L)", in, m, m, from,
                            m, to, v, v, mix, mix, dIn);
                }
                default -> throw new IllegalStateException();
            }
        });
        c.comment("router backward$L", residualFeeds(layer) ? " (dLogits already holds what the next MoE layer's gating residual sent back)" : "");
        c.line("$LBackward($L, scale)", routerMethod(moe), m);
        if (moe.routers().size() > 1) {
            c.line("$T[] gates = {$L}", PARAMETER, String.join(", ", gateFields(moe, p)));
        }
        String routerIn = r.pregate() ? "embedded" : in;
        String dRouterIn = r.pregate() ? "dEmbedded" : dIn;
        if (jitters(moe)) {
            c.open("if ($L.jitterOn)", m);
            c.comment("the router read the jittered input: d(input) += (dLogits · W) ⊙ noise");
            c.line("$T.zero($L.dJittered, rows * DIM)", ELEMENTWISE, m);
            routerMatmulBackward(c, moe, p, m, m + ".jittered", m + ".dJittered");
            c.open("for (int i = 0; i < rows * DIM; i++)").line("$L[i] += $L.dJittered[i] * $L.noise[i]", dRouterIn, m, m).close();
            c.orElse("else");
            routerMatmulBackward(c, moe, p, m, routerIn, dRouterIn);
            c.close();
        } else {
            routerMatmulBackward(c, moe, p, m, routerIn, dRouterIn);
        }
        if (r.recurrentWidth().isPresent()) {
            String gi = Names.field(p + ".router.gru_in");
            String go = Names.field(p + ".router.gru_out");
            c.comment("recurrent router backward: dh = dLogits · gru_out + what later recurrent layers sent back (in dGruState); through the GRU to u and the previous state; then gru_in");
            c.line("backend.matmulBackward($L.gruH, 0, $L.value(), 0, $L.dLogits, 0, dGruState, 0, $L.grad(), 0, rows, $L, $L)", m, go, m, go, gruWidth, e);
            c.line("gruBackward($L)", m);
            c.line("backend.matmulBackward($L, 0, $L.value(), 0, gruDu, 0, $L, 0, $L.grad(), 0, rows, DIM, $L)", in, gi, dIn, gi, gruWidth);
        }
        Integer prev = residualFrom.get(layer);
        if (prev != null) {
            String g = Names.field(p + ".router.residual");
            c.comment("gating residual backward: dG += dLogitsᵀ · logits of layer $L; that layer's dLogits += dLogits · G", prev);
            c.line("backend.matmulBackward(moe$L.logits, 0, $L.value(), 0, $L.dLogits, 0, moe$L.dLogits, 0, $L.grad(), 0, rows, $L, $L)", prev, g, m, prev, g,
                    moeOfLayer(prev).routedExperts(), e);
        }
        return c;
    }

    // ---- inference and step hooks ----

    private void inference() {
        Code c = new Code();
        c.line("int[] targets = new int[batch * seq]");
        c.line("boolean training = counting");
        c.line("counting = false");
        c.open("try");
        c.line("forward(inputs, targets, batch, seq)");
        c.orElse("finally");
        c.line("counting = training");
        c.close();
        c.line("float[] last = new float[batch * VOCAB]");
        c.open("for (int b = 0; b < batch; b++)");
        c.line("System.arraycopy(logits, ((b + 1) * seq - 1) * VOCAB, last, b * VOCAB, VOCAB)");
        c.close();
        c.line("return last");
        type.addMethod(MethodSpec.methodBuilder("lastLogits").addAnnotation(Override.class).addModifiers(Modifier.PUBLIC).returns(float[].class)
                .addParameter(int[].class, "inputs").addParameter(TypeName.INT, "batch").addParameter(TypeName.INT, "seq").addCode(c.build())
                .build());
    }

    private void mask() {
        Code c = new Code();
        c.line("this.keep = keep == null ? null : keep.clone()");
        type.addMethod(MethodSpec.methodBuilder("setMask").addAnnotation(Override.class).addModifiers(Modifier.PUBLIC)
                .addJavadoc("See {@link $T#setMask}.\n", TRAINABLE).addParameter(boolean[].class, "keep").addCode(c.build()).build());
        boolean sequenceAux = moes.values().stream().flatMap(mo -> mo.losses().stream())
                .anyMatch(l -> l instanceof Loss.Aux a && a.coef() > 0 && a.scope() == Loss.Scope.SEQUENCE);
        if (!sequenceAux) {
            return;
        }
        type.addMethod(MethodSpec.methodBuilder("keptOf").addModifiers(Modifier.PRIVATE).returns(TypeName.INT)
                .addJavadoc("The tokens of sequence {@code b} that the padding mask keeps.\n").addParameter(TypeName.INT, "b")
                .addStatement("int n = 0")
                .beginControlFlow("for (int t = b * seq; t < (b + 1) * seq; t++)")
                .beginControlFlow("if (keep[t])").addStatement("n++").endControlFlow()
                .endControlFlow()
                .addStatement("return n").build());
    }

    private void stepHooks() {
        Code begin = new Code();
        for (RoutedState rs : routedStates()) {
            begin.line("$T.fill($L.stepCounts, 0L)", ARRAYS, rs.state());
            begin.line("$L.stepSlots = 0", rs.state());
            if (biasPerGate(rs.moe())) {
                begin.line("$T.fill($L.gateStepCounts, 0L)", ARRAYS, rs.state());
                begin.line("$T.fill($L.gateStepSlots, 0L)", ARRAYS, rs.state());
            }
        }
        if (anySeeded()) {
            begin.line("microBatch = 0");
        }
        type.addMethod(MethodSpec.methodBuilder("beginStep").addAnnotation(Override.class).addModifiers(Modifier.PUBLIC).addCode(begin.build())
                .build());
        Code setStep = new Code();
        if (keepsStep()) {
            setStep.line("this.step = step");
        }
        type.addMethod(MethodSpec.methodBuilder("setStep").addAnnotation(Override.class).addModifiers(Modifier.PUBLIC)
                .addParameter(TypeName.LONG, "step").addCode(setStep.build()).build());
        type.addMethod(MethodSpec.methodBuilder("setTraining").addAnnotation(Override.class).addModifiers(Modifier.PUBLIC)
                .addParameter(TypeName.BOOLEAN, "training").addStatement("counting = training").build());
        Code end = new Code();
        for (Layer l : model.layers()) {
            moeOf(l).ifPresent(m -> {
                Router r = m.routers().getFirst();
                if (biasPerGate(m)) {
                    int e = m.routedExperts();
                    for (int g = 0; g < m.routers().size(); g++) {
                        Router gate = m.routers().get(g);
                        if (gate.bias().isEmpty()) {
                            continue;
                        }
                        String bias = Names.field("layers." + l.index() + ".moe.router." + gate.name().orElseThrow() + ".expert_bias");
                        end.comment("layer $L, gate $L: aux-free balancing over the sequences it routed, bias += rate * sign(mean load - load)", l.index(),
                                gate.name().orElseThrow());
                        end.line("double mean$LGate$L = (double) moe$L.gateStepSlots[$L] / $L", l.index(), g, l.index(), g, e);
                        end.open("for (int ex = 0; ex < $L; ex++)", e);
                        end.line("$L.value()[ex] += $Lf * (float) Math.signum(mean$LGate$L - moe$L.gateStepCounts[$L + ex])", bias,
                                floatLiteral(gate.bias().get().rate()), l.index(), g, l.index(), g * e);
                        end.close();
                    }
                    return;
                }
                if (r.bias().isEmpty()) {
                    return;
                }
                int e = m.routedExperts();
                String bias = Names.field("layers." + l.index() + ".moe.router.expert_bias");
                end.comment("layer $L: aux-free balancing, bias += rate * sign(mean load - load)", l.index());
                end.line("double mean$L = (double) moe$L.stepSlots / $L", l.index(), l.index(), e);
                end.open("for (int ex = 0; ex < $L; ex++)", e);
                end.line("$L.value()[ex] += $Lf * (float) Math.signum(mean$L - moe$L.stepCounts[ex])", bias, floatLiteral(r.bias().get().rate()),
                        l.index(), l.index());
                end.close();
            });
        }
        if (keepsStep()) {
            end.line("step++");
        }
        List<RoutedState> routed = routedStates();
        if (!routed.isEmpty()) {
            // Data parallelism sums these over the ranks before endStep, so that the bias update sees the whole batch.
            Code get = new Code();
            Code set = new Code();
            int n = 0;
            for (RoutedState rs : routed) {
                n += rs.moe().routedExperts() + 1;
                if (biasPerGate(rs.moe())) {
                    n += rs.moe().routers().size() * (rs.moe().routedExperts() + 1L);
                }
            }
            get.line("long[] out = new long[$L]", n);
            set.open("if (loads.length != $L)", n)
                    .line("throw new $T($S + loads.length)", IllegalArgumentException.class, "step loads of " + n + " counts expected, got ")
                    .close();
            int at = 0;
            for (RoutedState rs : routed) {
                int e = rs.moe().routedExperts();
                get.comment("layer $L: tokens per expert this step, then the step's slots", rs.layer());
                get.line("$T.arraycopy($L.stepCounts, 0, out, $L, $L)", System.class, rs.state(), at, e);
                get.line("out[$L] = $L.stepSlots", at + e, rs.state());
                set.line("$T.arraycopy(loads, $L, $L.stepCounts, 0, $L)", System.class, at, rs.state(), e);
                set.line("$L.stepSlots = loads[$L]", rs.state(), at + e);
                at += e + 1;
                if (biasPerGate(rs.moe())) {
                    int gates = rs.moe().routers().size();
                    get.comment("layer $L: each gate's tokens per expert, then its slots", rs.layer());
                    get.line("$T.arraycopy($L.gateStepCounts, 0, out, $L, $L)", System.class, rs.state(), at, gates * e);
                    get.line("$T.arraycopy($L.gateStepSlots, 0, out, $L, $L)", System.class, rs.state(), at + gates * e, gates);
                    set.line("$T.arraycopy(loads, $L, $L.gateStepCounts, 0, $L)", System.class, at, rs.state(), gates * e);
                    set.line("$T.arraycopy(loads, $L, $L.gateStepSlots, 0, $L)", System.class, at + gates * e, rs.state(), gates);
                    at += gates * (e + 1);
                }
            }
            get.line("return out");
            type.addMethod(MethodSpec.methodBuilder("stepLoads").addAnnotation(Override.class).addModifiers(Modifier.PUBLIC)
                    .returns(long[].class).addCode(get.build()).build());
            type.addMethod(MethodSpec.methodBuilder("setStepLoads").addAnnotation(Override.class).addModifiers(Modifier.PUBLIC)
                    .addParameter(long[].class, "loads").addCode(set.build()).build());
        }
        type.addMethod(MethodSpec.methodBuilder("endStep").addAnnotation(Override.class).addModifiers(Modifier.PUBLIC).addCode(end.build())
                .build());
    }
}
