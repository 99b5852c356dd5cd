package dev.moe.cli.interop;

import java.util.List;
import java.util.Map;
import java.util.Optional;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import java.util.stream.Collectors;
import java.util.stream.Stream;

/**
 * One Hugging Face MoE causal-LM family as data: which config fields give which settings of the
 * language, and which checkpoint tensor holds each of our parameters. Supporting a further family
 * that the language can express means adding an entry to {@link #SUPPORTED}.
 *
 * @param modelType {@code config.json}'s {@code model_type}
 * @param architecture the class name written into {@code architectures} on export
 * @param recipeName the model's name in the imported recipe
 * @param expertsFields config fields holding the number of routed experts, the first present wins
 * @param expertHiddenField the routed (and shared) experts' hidden width
 * @param denseHiddenField the hidden width of dense layers ({@code mlp_only_layers}), or null
 * @param normalize {@code "true"} when the family always renormalises the top-k weights, else the
 *     config field that says whether it does ({@code norm_topk_prob})
 * @param sharedHiddenField the sigmoid-gated shared expert's hidden width, or null without one
 * @param qkvBias {@code "true"}/{@code "false"}, or the config field saying whether q, k, v have biases
 * @param qkNorm how queries and keys are normalised before RoPE
 * @param slidingWindowField the field of a sliding window the whole model uses, or null
 * @param tensors our parameter names (regular expressions) onto the checkpoint's tensors
 * @param attention multi-head / grouped-query, or latent (DeepSeek's q_lora_rank, kv_lora_rank, ...)
 * @param routing how the router scores and selects
 * @param denseFirstField the field counting the dense layers before the first MoE layer, or null
 * @param sharedCountField the field counting ungated shared experts of the routed experts' width, or null
 * @param jitterField the field of the router's multiplicative input noise in training, or null
 */
public record HfType(
        String modelType,
        String architecture,
        String recipeName,
        List<String> expertsFields,
        String expertHiddenField,
        String denseHiddenField,
        String normalize,
        String sharedHiddenField,
        String qkvBias,
        QkNorm qkNorm,
        String slidingWindowField,
        List<Rule> tensors,
        Attention attention,
        Routing routing,
        String denseFirstField,
        String sharedCountField,
        String jitterField) {

    /** A family with standard attention and a softmax router. */
    HfType(String modelType, String architecture, String recipeName, List<String> expertsFields, String expertHiddenField,
            String denseHiddenField, String normalize, String sharedHiddenField, String qkvBias, QkNorm qkNorm, String slidingWindowField,
            List<Rule> tensors) {
        this(modelType, architecture, recipeName, expertsFields, expertHiddenField, denseHiddenField, normalize, sharedHiddenField, qkvBias, qkNorm,
                slidingWindowField, tensors, Attention.STANDARD, Routing.SOFTMAX, null, null, null);
    }

    public enum Attention {
        STANDARD,
        /** Multi-head latent attention: q_lora_rank, kv_lora_rank, qk_nope_head_dim, qk_rope_head_dim, v_head_dim. */
        LATENT
    }

    public enum Routing {
        /** Softmax over the experts, then top-k. */
        SOFTMAX,
        /**
         * DeepSeek-V3: sigmoid scores; selection by score + e_score_correction_bias within the best
         * topk_group of n_group groups (a group's score: its top two); routed_scaling_factor.
         */
        SIGMOID_GROUPED
    }

    public enum QkNorm {
        NONE,
        /** RMSNorm over each head's head_dim (Qwen3): {@code qk_norm true}. */
        PER_HEAD,
        /** RMSNorm over the whole projected q and k (OLMoE): {@code qk_norm full}. */
        FULL
    }

    /** How a checkpoint tensor holds one of our parameters. */
    public enum Slice {
        /** The whole tensor. */
        WHOLE,
        /** Expert {@code E}'s first half of rows in a fused [experts, 2 * hidden, dim] tensor (the gate). */
        FUSED_FIRST_HALF,
        /** Expert {@code E}'s second half of rows in a fused [experts, 2 * hidden, dim] tensor (the up projection). */
        FUSED_SECOND_HALF,
        /** Expert {@code E}'s matrix in a fused [experts, rows, cols] tensor. */
        FUSED_EXPERT,
        /**
         * Latent attention's query projection: per head the checkpoint has [nope, rope] rows, we have
         * [rope, nope], the rope rows de-interleaved when the config's rope_interleave is set.
         */
        LATENT_QUERY,
        /** The latent rows (the first kv_lora_rank) of kv_a_proj_with_mqa. */
        LATENT_KV,
        /** The rotary key rows (the last qk_rope_head_dim) of kv_a_proj_with_mqa, de-interleaved as the query's. */
        LATENT_ROPE_KEY;

        /** Whether our tensor is a selection or permutation of the checkpoint tensor's rows. */
        public boolean rows() {
            return this == LATENT_QUERY || this == LATENT_KV || this == LATENT_ROPE_KEY;
        }
    }

    /** Which layouts a tensor name belongs to, for export. Import accepts every source. */
    public enum Form {
        /** What save_pretrained writes and the module holds alike. */
        BOTH,
        /** What save_pretrained writes (the Hub's layout; from_pretrained converts it). */
        SAVED,
        /** transformers 5's module parameters (fused experts): the names gradients have. */
        MODULE,
        /** Read on import only (another layout of the same weights). */
        OTHER
    }

    /** The layout of tensors to export. */
    public enum Layout {
        SAVED,
        MODULE
    }

    /** A checkpoint tensor name with {@code {L}} (layer) and {@code {E}} (expert) holes, how to slice it, and its layouts. */
    public record Source(String name, Slice slice, Form form) {
        boolean in(Layout layout) {
            return form == Form.BOTH || form.name().equals(layout.name());
        }

        String resolve(String layer, String expert) {
            String n = layer == null ? name : name.replace("{L}", layer);
            return expert == null ? n : n.replace("{E}", expert);
        }
    }

    /**
     * Our parameter names matching {@code ours} (groups: the layer, then the expert) come from the
     * first of {@code sources} present in the checkpoint; export writes the first of the layout.
     */
    public record Rule(Pattern ours, List<Source> sources) {
        static Rule of(String ours, Source... sources) {
            return new Rule(Pattern.compile(ours), List.of(sources));
        }
    }

    /** A parameter's rule and the layer and expert its name holds. */
    public record Match(Rule rule, String layer, String expert) {
        public String name(Source s) {
            return s.resolve(layer, expert);
        }

        public Source source(Layout layout) {
            return rule.sources().stream().filter(s -> s.in(layout)).findFirst().orElseThrow();
        }
    }

    public Optional<Match> match(String ours) {
        for (Rule r : tensors) {
            Matcher m = r.ours().matcher(ours);
            if (m.matches()) {
                return Optional.of(new Match(r, m.groupCount() >= 1 ? m.group(1) : null, m.groupCount() >= 2 ? m.group(2) : null));
            }
        }
        return Optional.empty();
    }

    private static Source whole(String name) {
        return new Source(name, Slice.WHOLE, Form.BOTH);
    }

    private static final String L = "layers\\.(\\d+)\\.";
    private static final String HL = "model.layers.{L}.";

    /** Embeddings, norms, attention and dense MLPs: the Llama layout every family here shares. */
    private static final List<Rule> BASE = List.of(
            Rule.of("embed\\.weight", whole("model.embed_tokens.weight")),
            Rule.of("final_norm\\.weight", whole("model.norm.weight")),
            Rule.of("head\\.weight", whole("lm_head.weight")),
            Rule.of(L + "attn_norm\\.weight", whole(HL + "input_layernorm.weight")),
            Rule.of(L + "ffn_norm\\.weight", whole(HL + "post_attention_layernorm.weight")),
            Rule.of(L + "attn\\.q", whole(HL + "self_attn.q_proj.weight")),
            Rule.of(L + "attn\\.k", whole(HL + "self_attn.k_proj.weight")),
            Rule.of(L + "attn\\.v", whole(HL + "self_attn.v_proj.weight")),
            Rule.of(L + "attn\\.o", whole(HL + "self_attn.o_proj.weight")),
            Rule.of(L + "attn\\.q_bias", whole(HL + "self_attn.q_proj.bias")),
            Rule.of(L + "attn\\.k_bias", whole(HL + "self_attn.k_proj.bias")),
            Rule.of(L + "attn\\.v_bias", whole(HL + "self_attn.v_proj.bias")),
            Rule.of(L + "attn\\.q_norm", whole(HL + "self_attn.q_norm.weight")),
            Rule.of(L + "attn\\.k_norm", whole(HL + "self_attn.k_norm.weight")),
            Rule.of(L + "ffn\\.gate", whole(HL + "mlp.gate_proj.weight")),
            Rule.of(L + "ffn\\.up", whole(HL + "mlp.up_proj.weight")),
            Rule.of(L + "ffn\\.down", whole(HL + "mlp.down_proj.weight")));

    /**
     * Routed experts in three layouts: transformers 5's fused 3-D parameters (gate rows first in
     * gate_up_proj; what the modules hold and gradients are named after), and the per-expert tensors
     * that save_pretrained writes and the Hub holds: Mixtral's {@code block_sparse_moe} with
     * {@code w1/w3/w2}, the others' {@code mlp.experts.N.gate_proj/up_proj/down_proj}.
     */
    private static List<Rule> experts(boolean mixtralNames) {
        Form w = mixtralNames ? Form.SAVED : Form.OTHER;
        Form proj = mixtralNames ? Form.OTHER : Form.SAVED;
        return List.of(
                Rule.of(L + "moe\\.router\\.weight",
                        new Source(HL + "mlp.gate.weight", Slice.WHOLE, mixtralNames ? Form.MODULE : Form.BOTH),
                        new Source(HL + "block_sparse_moe.gate.weight", Slice.WHOLE, w)),
                Rule.of(L + "moe\\.experts\\.(\\d+)\\.gate",
                        new Source(HL + "mlp.experts.gate_up_proj", Slice.FUSED_FIRST_HALF, Form.MODULE),
                        new Source(HL + "mlp.experts.{E}.gate_proj.weight", Slice.WHOLE, proj),
                        new Source(HL + "block_sparse_moe.experts.{E}.w1.weight", Slice.WHOLE, w)),
                Rule.of(L + "moe\\.experts\\.(\\d+)\\.up",
                        new Source(HL + "mlp.experts.gate_up_proj", Slice.FUSED_SECOND_HALF, Form.MODULE),
                        new Source(HL + "mlp.experts.{E}.up_proj.weight", Slice.WHOLE, proj),
                        new Source(HL + "block_sparse_moe.experts.{E}.w3.weight", Slice.WHOLE, w)),
                Rule.of(L + "moe\\.experts\\.(\\d+)\\.down",
                        new Source(HL + "mlp.experts.down_proj", Slice.FUSED_EXPERT, Form.MODULE),
                        new Source(HL + "mlp.experts.{E}.down_proj.weight", Slice.WHOLE, proj),
                        new Source(HL + "block_sparse_moe.experts.{E}.w2.weight", Slice.WHOLE, w)));
    }

    /** Qwen2-MoE's one shared expert and its sigmoid gate. */
    private static final List<Rule> QWEN2_SHARED = List.of(
            Rule.of(L + "moe\\.shared\\.0\\.gate", whole(HL + "mlp.shared_expert.gate_proj.weight")),
            Rule.of(L + "moe\\.shared\\.0\\.up", whole(HL + "mlp.shared_expert.up_proj.weight")),
            Rule.of(L + "moe\\.shared\\.0\\.down", whole(HL + "mlp.shared_expert.down_proj.weight")),
            Rule.of(L + "moe\\.shared\\.0\\.sigmoid_gate", whole(HL + "mlp.shared_expert_gate.weight")));

    /** DeepSeek-V3: latent attention, its shared experts and the router's score correction bias. */
    private static final List<Rule> DEEPSEEK = List.of(
            Rule.of(L + "attn\\.q_a", whole(HL + "self_attn.q_a_proj.weight")),
            Rule.of(L + "attn\\.q_a_norm", whole(HL + "self_attn.q_a_layernorm.weight")),
            Rule.of(L + "attn\\.q_b", new Source(HL + "self_attn.q_b_proj.weight", Slice.LATENT_QUERY, Form.BOTH)),
            Rule.of(L + "attn\\.q", new Source(HL + "self_attn.q_proj.weight", Slice.LATENT_QUERY, Form.BOTH)),
            Rule.of(L + "attn\\.kv_a", new Source(HL + "self_attn.kv_a_proj_with_mqa.weight", Slice.LATENT_KV, Form.BOTH)),
            Rule.of(L + "attn\\.k_rope", new Source(HL + "self_attn.kv_a_proj_with_mqa.weight", Slice.LATENT_ROPE_KEY, Form.BOTH)),
            Rule.of(L + "attn\\.kv_a_norm", whole(HL + "self_attn.kv_a_layernorm.weight")),
            Rule.of(L + "attn\\.kv_b", whole(HL + "self_attn.kv_b_proj.weight")),
            Rule.of(L + "moe\\.router\\.expert_bias", whole(HL + "mlp.gate.e_score_correction_bias")),
            Rule.of(L + "moe\\.shared\\.0\\.gate", whole(HL + "mlp.shared_experts.gate_proj.weight")),
            Rule.of(L + "moe\\.shared\\.0\\.up", whole(HL + "mlp.shared_experts.up_proj.weight")),
            Rule.of(L + "moe\\.shared\\.0\\.down", whole(HL + "mlp.shared_experts.down_proj.weight")));

    @SafeVarargs
    private static List<Rule> rules(List<Rule>... parts) {
        return Stream.of(parts).flatMap(List::stream).toList();
    }

    public static final List<HfType> SUPPORTED = List.of(
            new HfType("mixtral", "MixtralForCausalLM", "Mixtral", List.of("num_local_experts"), "intermediate_size", null,
                    "true", null, "false", QkNorm.NONE, "sliding_window", rules(BASE, experts(true)), Attention.STANDARD, Routing.SOFTMAX, null, null,
                    "router_jitter_noise"),
            new HfType("qwen2_moe", "Qwen2MoeForCausalLM", "Qwen2Moe", List.of("num_experts", "num_local_experts"), "moe_intermediate_size",
                    "intermediate_size", "norm_topk_prob", "shared_expert_intermediate_size", "qkv_bias", QkNorm.NONE, null,
                    rules(BASE, experts(false), QWEN2_SHARED)),
            new HfType("olmoe", "OlmoeForCausalLM", "Olmoe", List.of("num_experts", "num_local_experts"), "intermediate_size", null,
                    "norm_topk_prob", null, "false", QkNorm.FULL, null, rules(BASE, experts(false))),
            new HfType("qwen3_moe", "Qwen3MoeForCausalLM", "Qwen3Moe", List.of("num_local_experts", "num_experts"), "moe_intermediate_size",
                    "intermediate_size", "norm_topk_prob", null, "false", QkNorm.PER_HEAD, null, rules(BASE, experts(false))),
            // DEEPSEEK first: its attention rules must win over BASE's q/k/v (first match wins).
            new HfType("deepseek_v3", "DeepseekV3ForCausalLM", "DeepseekV3", List.of("n_routed_experts"), "moe_intermediate_size",
                    "intermediate_size", "norm_topk_prob", null, "false", QkNorm.NONE, null, rules(DEEPSEEK, BASE, experts(false)),
                    Attention.LATENT, Routing.SIGMOID_GROUPED, "first_k_dense_replace", "n_shared_experts", null));

    /** Families we know but the language cannot express yet, with the reason. */
    public static final Map<String, String> KNOWN_UNSUPPORTED = Map.of(
            "deepseek_v2", "DeepSeek-V2's softmax router with group-limited greedy selection is not mapped yet (its attention, MLA, is: "
                    + "see deepseek_v3)",
            "qwen3_next", "Qwen3-Next mixes linear (gated DeltaNet) and full attention, which the language cannot declare yet");

    public static String supportedList() {
        return SUPPORTED.stream().map(HfType::modelType).collect(Collectors.joining(", "));
    }

    /** The family of {@code modelType}, or an error that lists the supported ones. */
    public static HfType forModelType(String modelType) throws InteropException {
        for (HfType t : SUPPORTED) {
            if (t.modelType().equals(modelType)) {
                return t;
            }
        }
        String why = KNOWN_UNSUPPORTED.get(modelType);
        throw new InteropException("model_type `" + modelType + "` is not supported" + (why != null ? ": " + why : "")
                + "; supported: " + supportedList());
    }
}
