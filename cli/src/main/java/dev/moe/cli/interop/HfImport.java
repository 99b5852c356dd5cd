package dev.moe.cli.interop;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.node.ObjectNode;
import dev.moe.runtime.Parameter;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.HashMap;
import java.util.HashSet;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.Set;

/**
 * From a Hugging Face config to a {@code .moe} recipe ({@link #architecture}, {@link Arch#recipe}),
 * and from its tensors to our parameters ({@link #plan}, {@link #load}).
 */
public final class HfImport {
    private HfImport() {}

    /**
     * The architecture a config declares, in the terms of the language.
     *
     * @param sparse per layer: true for an MoE layer, false for a dense MLP
     * @param sharedHidden 0 without a shared expert
     * @param slidingWindow 0 for full attention
     * @param latent multi-head latent attention, or null
     * @param grouped DeepSeek-V3's sigmoid router with group-limited selection, or null for softmax
     * @param plainSharedHidden the hidden width of one ungated shared expert (DeepSeek), 0 without
     * @param jitter the router's input noise in training (Mixtral's router_jitter_noise), 0 without
     */
    public record Arch(
            HfType type,
            int vocab,
            int context,
            int dim,
            int layers,
            int heads,
            int kvHeads,
            int headDim,
            double eps,
            double theta,
            boolean tie,
            int experts,
            int topK,
            int expertHidden,
            boolean normalize,
            int sharedHidden,
            int denseHidden,
            boolean qkvBias,
            int slidingWindow,
            boolean[] sparse,
            double auxCoef,
            Latent latent,
            Grouped grouped,
            int plainSharedHidden,
            double jitter) {

        /** What the recipe's line for the router's scores and selection says. */
        private void router(StringBuilder s) {
            if (grouped == null) {
                s.append("      score softmax\n");
                s.append("      order softmax_then_topk\n");
            } else {
                s.append("      score sigmoid\n");
            }
            s.append("      top_k ").append(topK).append('\n');
            s.append("      normalize ").append(normalize).append('\n');
            if (jitter > 0) {
                // transformers multiplies the MoE block's input (router and experts) by the noise; ours, the router's input
                s.append("      jitter ").append(num(jitter)).append('\n');
            }
            if (grouped != null) {
                if (grouped.scale() != 1) {
                    s.append("      scale ").append(num(grouped.scale())).append('\n');
                }
                // e_score_correction_bias: selection only; DeepSeek-V3 moves it by 0.001 per step when training
                s.append("      bias aux_free(rate: 0.001)\n");
                if (grouped.groups() > 1) {
                    s.append("      groups limited(groups: ").append(grouped.groups()).append(", top: ").append(grouped.top()).append(")\n");
                }
            }
        }

        /** The recipe: one model, no train block (add one to continue training). */
        public String recipe(String origin) {
            StringBuilder s = new StringBuilder();
            s.append("// Imported by `moe import hf` from ").append(origin).append(" (model_type ").append(type.modelType()).append(").\n");
            s.append("// transformers' causal-LM loss has no balancing term unless output_router_logits is set, so none is declared;\n");
            s.append("// to continue training, add e.g. `balance aux(coef: ").append(num(auxCoef)).append(")` (the config's router_aux_loss_coef;\n");
            s.append("// transformers scales its aux loss by top_k relative to ours) and a `train` block.\n");
            s.append("model ").append(type.recipeName()).append(" {\n");
            line(s, "vocab", Integer.toString(vocab));
            line(s, "context", Integer.toString(context));
            line(s, "dim", Integer.toString(dim));
            line(s, "heads", Integer.toString(heads));
            if (latent == null) {
                line(s, "kv_heads", Integer.toString(kvHeads));
                line(s, "head_dim", Integer.toString(headDim));
            } else {
                line(s, "attention", "mla(" + (latent.qRank() > 0 ? "q_rank: " + latent.qRank() + ", " : "") + "kv_rank: " + latent.kvRank()
                        + ", nope_dim: " + latent.nopeDim() + ", rope_dim: " + latent.ropeDim() + ", v_dim: " + latent.vDim() + ")");
            }
            line(s, "norm", "rms(eps: " + num(eps) + ")");
            line(s, "position", "rope(theta: " + num(theta) + ")");
            if (type.qkNorm() != HfType.QkNorm.NONE) {
                line(s, "qk_norm", type.qkNorm() == HfType.QkNorm.FULL ? "full" : "true");
            }
            if (qkvBias) {
                line(s, "qkv_bias", "true");
            }
            if (slidingWindow > 0) {
                line(s, "sliding_window", Integer.toString(slidingWindow));
            }
            if (tie) {
                line(s, "tie_embeddings", "true");
            }
            boolean anyDense = false;
            boolean anySparse = false;
            for (boolean b : sparse) {
                anyDense |= !b;
                anySparse |= b;
            }
            if (anyDense) {
                s.append("\n  ffn dense = swiglu(hidden: ").append(denseHidden).append(")\n");
            }
            if (anySparse) {
                s.append("\n  moe experts {\n");
                if (sharedHidden > 0) {
                    s.append("    shared 1 x swiglu(hidden: ").append(sharedHidden).append(", gate: sigmoid)\n");
                }
                if (plainSharedHidden > 0) {
                    s.append("    shared 1 x swiglu(hidden: ").append(plainSharedHidden).append(")\n");
                }
                s.append("    routed ").append(experts).append(" x swiglu(hidden: ").append(expertHidden).append(")\n");
                s.append("    router {\n");
                router(s);
                s.append("    }\n");
                s.append("  }\n");
            }
            s.append("\n  layers ").append(layers).append(" {\n");
            if (anyDense && anySparse) {
                for (int i = 0; i < layers; i++) {
                    if (!sparse[i]) {
                        s.append("    ").append(i).append(": attention, dense\n");
                    }
                }
                s.append("    rest: attention, experts\n");
            } else {
                s.append("    all: attention, ").append(anySparse ? "experts" : "dense").append('\n');
            }
            s.append("  }\n}\n");
            return s.toString();
        }

        private static void line(StringBuilder s, String key, String value) {
            s.append("  ").append(key).append(' ').append(value).append('\n');
        }
    }

    /** Multi-head latent attention's widths; {@code interleave}: the checkpoint's rotary rows pair (2i, 2i+1) (rope_interleave). */
    public record Latent(int qRank, int kvRank, int nopeDim, int ropeDim, int vDim, boolean interleave) {}

    /** DeepSeek-V3's router: n_group groups, the best topk_group kept, weights times routed_scaling_factor. */
    public record Grouped(int groups, int top, double scale) {}

    /** A number as the language reads it back exactly. */
    static String num(double v) {
        if (v == Math.rint(v) && Math.abs(v) < 1e15) {
            return Long.toString((long) v);
        }
        return Double.toString(v).toLowerCase(Locale.ROOT);
    }

    /** Reads and checks a config: every field the recipe needs, and no feature the language lacks. */
    public static Arch architecture(ObjectNode config, String file) throws InteropException {
        Config c = new Config(config, file);
        HfType type = HfType.forModelType(c.string("model_type"));
        String act = c.optString("hidden_act", "silu");
        if (!act.equals("silu")) {
            throw new InteropException(file + ": hidden_act `" + act + "` is not supported (the experts are SwiGLU: silu)");
        }
        JsonNode rope = config.path("rope_parameters");
        double theta;
        if (rope.isObject()) { // transformers 5
            String ropeType = rope.path("rope_type").asText("default");
            if (!ropeType.equals("default")) {
                throw new InteropException(file + ": rope_parameters.rope_type `" + ropeType + "` is not supported (only `default` RoPE)");
            }
            if (!rope.path("rope_theta").isNumber()) {
                throw new InteropException(file + ": rope_parameters.rope_theta is missing");
            }
            theta = rope.path("rope_theta").asDouble();
            if (rope.has("partial_rotary_factor") && rope.get("partial_rotary_factor").asDouble() != 1.0) {
                throw new InteropException(file + ": partial_rotary_factor is not supported");
            }
        } else {
            theta = c.optDouble("rope_theta", 10000);
            if (config.hasNonNull("rope_scaling")) {
                throw new InteropException(file + ": rope_scaling is not supported (only plain RoPE)");
            }
        }
        if (config.path("attention_bias").asBoolean(false)) {
            throw new InteropException(file + ": attention_bias true (a bias on o_proj too) is not supported; the language has q/k/v biases only");
        }
        if (config.hasNonNull("clip_qkv")) {
            throw new InteropException(file + ": clip_qkv is not supported");
        }
        if (config.path("use_sliding_window").asBoolean(false)) {
            throw new InteropException(file + ": use_sliding_window (per-layer sliding windows) is not supported");
        }
        int dim = c.positive("hidden_size");
        int heads = c.positive("num_attention_heads");
        int kvHeads = config.hasNonNull("num_key_value_heads") ? c.positive("num_key_value_heads") : heads;
        int headDim = config.hasNonNull("head_dim") ? c.positive("head_dim") : dim / heads;
        if (type.attention() == HfType.Attention.LATENT) {
            kvHeads = heads; // MLA gives every head its keys; transformers ignores num_key_value_heads there
        }
        int layers = c.positive("num_hidden_layers");
        int experts = 0;
        for (String f : type.expertsFields()) {
            if (config.hasNonNull(f)) {
                experts = c.positive(f);
                break;
            }
        }
        if (experts == 0) {
            throw new InteropException(file + ": no number of experts (" + String.join(" or ", type.expertsFields()) + ")");
        }
        boolean[] sparse = new boolean[layers];
        Set<Integer> mlpOnly = new HashSet<>();
        for (JsonNode n : config.path("mlp_only_layers")) {
            mlpOnly.add(n.asInt());
        }
        int step = config.hasNonNull("decoder_sparse_step") ? c.positive("decoder_sparse_step") : 1;
        int denseFirst = type.denseFirstField() == null ? 0 : c.optNonNegative(type.denseFirstField());
        for (int i = 0; i < layers; i++) {
            sparse[i] = !mlpOnly.contains(i) && (i + 1) % step == 0 && i >= denseFirst;
        }
        Latent latent = null;
        if (type.attention() == HfType.Attention.LATENT) {
            int ropeDim = c.positive("qk_rope_head_dim");
            latent = new Latent(c.optNonNegative("q_lora_rank"), c.positive("kv_lora_rank"), c.optNonNegative("qk_nope_head_dim"), ropeDim,
                    c.positive("v_head_dim"), config.path("rope_interleave").asBoolean(true));
            if (ropeDim % 2 != 0) {
                throw new InteropException(file + ": `qk_rope_head_dim` (" + ropeDim + ") must be even");
            }
            if (latent.vDim() > latent.nopeDim() + ropeDim) {
                throw new InteropException(file + ": v_head_dim (" + latent.vDim() + ") above qk_nope_head_dim + qk_rope_head_dim ("
                        + (latent.nopeDim() + ropeDim) + ") is not supported by code generation");
            }
            // transformers rotates qk_rope_head_dim dimensions, by head_dim's frequencies when head_dim is set
            if (config.hasNonNull("head_dim") && c.positive("head_dim") != ropeDim) {
                throw new InteropException(file + ": head_dim (" + config.get("head_dim") + ") differs from qk_rope_head_dim (" + ropeDim
                        + "); RoPE's frequencies would not be those of the rotary dimensions");
            }
        }
        Grouped grouped = null;
        if (type.routing() == HfType.Routing.SIGMOID_GROUPED) {
            int groups = config.hasNonNull("n_group") ? c.positive("n_group") : 1;
            int top = config.hasNonNull("topk_group") ? c.positive("topk_group") : 1;
            if (groups > 1 && experts % groups != 0) {
                throw new InteropException(file + ": n_group (" + groups + ") does not divide n_routed_experts (" + experts + ")");
            }
            if (groups > 1 && experts / groups < 2) {
                throw new InteropException(file + ": groups of one expert are not supported (transformers scores a group by its top two)");
            }
            grouped = new Grouped(groups, top, c.optDouble("routed_scaling_factor", 1.0));
            if (!(grouped.scale() > 0)) {
                throw new InteropException(file + ": `routed_scaling_factor` must be positive, not " + grouped.scale());
            }
        }
        boolean anyDense = false;
        for (boolean b : sparse) {
            anyDense |= !b;
        }
        double jitter = type.jitterField() == null ? 0 : c.optDouble(type.jitterField(), 0);
        if (!(jitter >= 0 && jitter < 1)) {
            throw new InteropException(file + ": `" + type.jitterField() + "` must be in [0, 1), not " + jitter);
        }
        int plainShared = 0;
        if (type.sharedCountField() != null) {
            plainShared = c.optNonNegative(type.sharedCountField()) * c.positive(type.expertHiddenField());
        }
        if (anyDense && type.denseHiddenField() == null) {
            throw new InteropException(file + ": dense layers (mlp_only_layers, decoder_sparse_step) are not part of `" + type.modelType() + "`");
        }
        boolean normalize = type.normalize().equals("true") || config.path(type.normalize()).asBoolean(false);
        boolean qkvBias = type.qkvBias().equals("true")
                || (!type.qkvBias().equals("false") && config.path(type.qkvBias()).asBoolean(true));
        int window = 0;
        if (type.slidingWindowField() != null && config.hasNonNull(type.slidingWindowField())) {
            window = c.positive(type.slidingWindowField());
        }
        int context = c.positive("max_position_embeddings");
        if (window >= context) {
            window = 0; // a window as long as the context is full attention
        }
        return new Arch(type, c.positive("vocab_size"), context, dim, layers, heads, kvHeads, headDim,
                c.positiveDouble("rms_norm_eps"), theta, config.path("tie_word_embeddings").asBoolean(false), experts,
                c.positive("num_experts_per_tok"), c.positive(type.expertHiddenField()), normalize,
                type.sharedHiddenField() == null ? 0 : c.optNonNegative(type.sharedHiddenField()),
                anyDense ? c.positive(type.denseHiddenField()) : 0, qkvBias, window, sparse,
                c.optDouble("router_aux_loss_coef", 0.01), latent, grouped, plainShared, jitter);
    }

    /** Typed access to config fields, with messages naming the file and the field. */
    private record Config(ObjectNode node, String file) {
        String string(String field) throws InteropException {
            JsonNode n = node.get(field);
            if (n == null || !n.isTextual()) {
                throw new InteropException(file + ": `" + field + "` is missing or not a string");
            }
            return n.asText();
        }

        String optString(String field, String dflt) {
            JsonNode n = node.get(field);
            return n == null || n.isNull() ? dflt : n.asText();
        }

        int positive(String field) throws InteropException {
            JsonNode n = node.get(field);
            if (n == null || !n.canConvertToInt() || !n.isIntegralNumber() || n.asInt() <= 0) {
                throw new InteropException(file + ": `" + field + "` must be a positive integer" + (n == null ? " (it is missing)" : ", not " + n));
            }
            return n.asInt();
        }

        int optNonNegative(String field) throws InteropException {
            JsonNode n = node.get(field);
            if (n == null || n.isNull()) {
                return 0;
            }
            if (!n.isIntegralNumber() || !n.canConvertToInt() || n.asInt() < 0) {
                throw new InteropException(file + ": `" + field + "` must be a non-negative integer, not " + n);
            }
            return n.asInt();
        }

        double positiveDouble(String field) throws InteropException {
            JsonNode n = node.get(field);
            if (n == null || !n.isNumber() || !(n.asDouble() > 0) || Double.isInfinite(n.asDouble())) {
                throw new InteropException(file + ": `" + field + "` must be a positive number" + (n == null ? " (it is missing)" : ", not " + n));
            }
            return n.asDouble();
        }

        double optDouble(String field, double dflt) throws InteropException {
            JsonNode n = node.get(field);
            if (n == null || n.isNull()) {
                return dflt;
            }
            if (!n.isNumber()) {
                throw new InteropException(file + ": `" + field + "` must be a number, not " + n);
            }
            return n.asDouble();
        }
    }

    /** Tensors that carry no weights (old checkpoints saved RoPE's inverse frequencies). */
    private static boolean ignorable(String name) {
        return name.endsWith("rotary_emb.inv_freq");
    }

    /**
     * Where one parameter's values are: a checkpoint tensor and, for fused experts, the slice; for
     * row slices, {@code rows[r]} is the checkpoint row of our row r.
     */
    public record Assignment(String param, String tensor, HfType.Slice slice, int expert, int size, int[] rows) {
        Assignment(String param, String tensor, HfType.Slice slice, int expert, int size) {
            this(param, tensor, slice, expert, size, null);
        }
    }

    /**
     * The checkpoint rows of latent attention's tensors, from the widths that the shapes of the
     * layer's tensors imply: our query heads are [rope, nope] where transformers' are [nope, rope], and
     * with {@code interleave} transformers pairs rotary dimensions (2i, 2i+1) where we pair (i, i + rope/2).
     *
     * @param shapeOf our tensors' shapes by name
     * @return the checkpoint row of each of our rows, and the checkpoint tensor's row count last
     */
    static int[] latentRows(HfType.Slice slice, String ours, java.util.function.Function<String, long[]> shapeOf, boolean interleave) {
        String at = ours.substring(0, ours.lastIndexOf('.') + 1);
        int rope = (int) shapeOf.apply(at + "k_rope")[0];
        int kvRank = (int) shapeOf.apply(at + "kv_a")[0];
        long[] q = shapeOf.apply(at + "q_b") != null ? shapeOf.apply(at + "q_b") : shapeOf.apply(at + "q");
        long kvb = shapeOf.apply(at + "kv_b")[0];
        long vo = shapeOf.apply(at + "o")[1];
        int heads = (int) ((q[0] - kvb + vo) / rope); // q: heads·(nope+rope), kv_b: heads·(nope+v), o: heads·v
        int qk = (int) (q[0] / heads);
        int[] rows;
        switch (slice) {
            case LATENT_QUERY -> {
                rows = new int[(int) q[0] + 1];
                for (int h = 0; h < heads; h++) {
                    for (int i = 0; i < qk; i++) {
                        rows[h * qk + i] = h * qk + (i < rope ? qk - rope + ropeRow(i, rope, interleave) : i - rope);
                    }
                }
                rows[rows.length - 1] = (int) q[0];
            }
            case LATENT_KV -> {
                rows = new int[kvRank + 1];
                for (int i = 0; i < kvRank; i++) {
                    rows[i] = i;
                }
                rows[kvRank] = kvRank + rope;
            }
            case LATENT_ROPE_KEY -> {
                rows = new int[rope + 1];
                for (int i = 0; i < rope; i++) {
                    rows[i] = kvRank + ropeRow(i, rope, interleave);
                }
                rows[rope] = kvRank + rope;
            }
            default -> throw new IllegalArgumentException(slice.toString());
        }
        return rows;
    }

    /** The checkpoint's rotary dimension of our rotary dimension i: ours pair (i, i + rope/2), interleaved ones (2i, 2i+1). */
    private static int ropeRow(int i, int rope, boolean interleave) {
        if (!interleave) {
            return i;
        }
        return i < rope / 2 ? 2 * i : 2 * (i - rope / 2) + 1;
    }

    /**
     * Maps every parameter (name and shape, from the recipe's IR: nothing is allocated yet) onto the
     * checkpoint; checks names, shapes and that every checkpoint tensor is used, so that a partial or
     * mismatched import is an error and not a silent default.
     */
    public static List<Assignment> plan(HfCheckpoint ckpt, HfType type, List<dev.moe.compiler.ir.Param> params) throws InteropException {
        return plan(ckpt, type, params, true);
    }

    /** {@link #plan(HfCheckpoint, HfType, List)} with the checkpoint's rope_interleave (latent attention). */
    public static List<Assignment> plan(HfCheckpoint ckpt, HfType type, List<dev.moe.compiler.ir.Param> params, boolean ropeInterleave)
            throws InteropException {
        Map<String, long[]> shapes = new HashMap<>();
        for (dev.moe.compiler.ir.Param p : params) {
            shapes.put(p.name(), p.shape().stream().mapToLong(Long::longValue).toArray());
        }
        Set<String> used = new HashSet<>();
        List<Assignment> out = new ArrayList<>();
        int[] expertsIn = expertsPerLayer(params.stream().map(dev.moe.compiler.ir.Param::name).toList());
        for (dev.moe.compiler.ir.Param p : params) {
            HfType.Match m = type.match(p.name())
                    .orElseThrow(() -> new InteropException("no `" + type.modelType() + "` tensor maps onto our parameter `" + p.name() + "`"));
            HfType.Source src = null;
            for (HfType.Source s : m.rule().sources()) {
                if (ckpt.has(m.name(s))) {
                    src = s;
                    break;
                }
            }
            if (src == null) {
                throw new InteropException(ckpt.dir() + " has no tensor for `" + p.name() + "`: looked for "
                        + String.join(", ", m.rule().sources().stream().map(s -> "`" + m.name(s) + "`").toList()));
            }
            String name = m.name(src);
            used.add(name);
            long[] shape = ckpt.shape(name);
            long[] ps = p.shape().stream().mapToLong(Long::longValue).toArray();
            long numel = p.numel();
            if (numel > Integer.MAX_VALUE - 8) {
                throw new InteropException("`" + p.name() + "` " + Arrays.toString(ps) + " is larger than one Java array can hold");
            }
            if (src.slice().rows()) {
                int[] rows = latentRows(src.slice(), p.name(), shapes::get, ropeInterleave);
                long[] want = {rows[rows.length - 1], ps[1]};
                if (!Arrays.equals(shape, want)) {
                    throw new InteropException(ckpt.fileOf(name) + ": tensor `" + name + "` has shape " + Arrays.toString(shape)
                            + ", the recipe's `" + p.name() + "` needs " + Arrays.toString(want));
                }
                out.add(new Assignment(p.name(), name, src.slice(), 0, (int) numel, Arrays.copyOf(rows, rows.length - 1)));
                continue;
            }
            if (src.slice() == HfType.Slice.WHOLE) {
                if (!Arrays.equals(shape, ps)) {
                    throw new InteropException(ckpt.fileOf(name) + ": tensor `" + name + "` has shape " + Arrays.toString(shape)
                            + ", the recipe's `" + p.name() + "` needs " + Arrays.toString(ps));
                }
                out.add(new Assignment(p.name(), name, src.slice(), 0, (int) numel));
                continue;
            }
            boolean halves = src.slice() != HfType.Slice.FUSED_EXPERT;
            long[] want = {expertsIn[Integer.parseInt(m.layer())], halves ? 2L * ps[0] : ps[0], ps[1]};
            if (!Arrays.equals(shape, want)) {
                throw new InteropException(ckpt.fileOf(name) + ": tensor `" + name + "` has shape " + Arrays.toString(shape)
                        + ", the recipe needs " + Arrays.toString(want) + (halves ? " (experts, gate and up rows, dim)" : " (experts, rows, columns)"));
            }
            out.add(new Assignment(p.name(), name, src.slice(), Integer.parseInt(m.expert()), (int) numel));
        }
        // With tied embeddings the head is the embedding; some checkpoints still save lm_head.weight.
        boolean tied = params.stream().noneMatch(p -> p.name().equals("head.weight"));
        List<String> unused = new ArrayList<>();
        for (String n : ckpt.names()) {
            if (!used.contains(n) && !ignorable(n) && !(tied && n.equals("lm_head.weight"))) {
                unused.add(n);
            }
        }
        if (!unused.isEmpty()) {
            throw new InteropException(ckpt.dir() + ": " + unused.size() + " tensor(s) have no place in the imported model, e.g. `"
                    + unused.getFirst() + "` (in " + ckpt.fileOf(unused.getFirst()) + ")");
        }
        return out;
    }

    /** Fills the model's parameters as {@link #plan} assigned them. */
    public static void load(HfCheckpoint ckpt, List<Assignment> plan, List<Parameter> params) throws InteropException {
        Map<String, Parameter> byName = new HashMap<>();
        for (Parameter p : params) {
            byName.put(p.name(), p);
        }
        // Fused tensors hold every expert: keep the last two read (gate_up and down alternate).
        Map<String, float[]> cache = new LinkedHashMap<>(4, 0.75f, true) {
            @Override
            protected boolean removeEldestEntry(Map.Entry<String, float[]> eldest) {
                return size() > 2;
            }
        };
        for (Assignment a : plan) {
            Parameter p = byName.get(a.param());
            if (p == null || p.size() != a.size()) {
                throw new IllegalStateException("the generated model's `" + a.param() + "` differs from its IR");
            }
            if (a.slice() == HfType.Slice.WHOLE) {
                p.load(ckpt.read(a.tensor()));
                continue;
            }
            if (a.slice().rows()) {
                float[] all = ckpt.read(a.tensor());
                int cols = a.size() / a.rows().length;
                float[] mine = new float[a.size()];
                for (int r = 0; r < a.rows().length; r++) {
                    System.arraycopy(all, a.rows()[r] * cols, mine, r * cols, cols);
                }
                p.load(mine);
                continue;
            }
            float[] all = cache.get(a.tensor());
            if (all == null) {
                all = ckpt.read(a.tensor());
                cache.put(a.tensor(), all);
            }
            int size = a.size();
            int offset = a.slice() == HfType.Slice.FUSED_EXPERT ? a.expert() * size
                    : a.expert() * 2 * size + (a.slice() == HfType.Slice.FUSED_SECOND_HALF ? size : 0);
            p.load(Arrays.copyOfRange(all, offset, offset + size));
        }
    }

    /** Routed experts per layer index, from the parameter names. */
    static int[] expertsPerLayer(List<String> names) {
        Map<Integer, Integer> max = new LinkedHashMap<>();
        java.util.regex.Pattern pat = java.util.regex.Pattern.compile("layers\\.(\\d+)\\.moe\\.experts\\.(\\d+)\\..*");
        int layers = 0;
        for (String name : names) {
            java.util.regex.Matcher m = pat.matcher(name);
            if (m.matches()) {
                int l = Integer.parseInt(m.group(1));
                max.merge(l, Integer.parseInt(m.group(2)) + 1, Math::max);
                layers = Math.max(layers, l + 1);
            }
        }
        int[] out = new int[layers];
        max.forEach((l, n) -> out[l] = n);
        return out;
    }

    static long[] longs(int[] shape) {
        long[] l = new long[shape.length];
        for (int i = 0; i < shape.length; i++) {
            l[i] = shape[i];
        }
        return l;
    }
}
