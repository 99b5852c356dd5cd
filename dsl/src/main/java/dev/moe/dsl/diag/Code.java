package dev.moe.dsl.diag;

import java.util.Locale;
import java.util.Optional;

/**
 * Every diagnostic the front end can report, with a stable id ({@code MOEnnnn}) and the text that
 * {@code moe explain} prints. Ids are never reused or renumbered. Each has a golden test.
 *
 * <p>Ranges: 00xx input and syntax, 01xx names and values, 02xx model structure, 03xx routers,
 * 04xx experts, 05xx balancing losses, 06xx training recipes.
 */
public enum Code {
    // ---- 00xx: input and syntax ----
    SYNTAX(1, "syntax error", """
            The parser found a token where the grammar allows something else. The message lists every
            token or construct that would be valid at that point, in sorted order.

                model M { vocab = 256 }     // error: found `=`, expected <expression>
                model M { vocab 256 }       // ok: settings are `key value`
            """),
    UNTERMINATED_STRING(2, "unterminated string", """
            A string literal opens with `"` and must close with `"` on the same line.

                import "common.moe          // error
                import "common.moe"         // ok
            """),
    UNTERMINATED_COMMENT(3, "unterminated block comment", """
            A block comment opened with `/*` was never closed with `*/` before the end of the file.
            Block comments do not nest.
            """),
    INVALID_CHARACTER(4, "invalid character", """
            The character cannot start any token of the language. Names use ASCII letters, digits and
            `_`; the only punctuation is `{ } ( ) [ ] , : = .. + - * /` and `//` or `/* */` comments.
            A NUL or other control character usually means the file is binary.
            """),
    INVALID_UTF8(5, "file is not valid UTF-8", """
            .moe files are UTF-8. The message gives the offset of the first byte that is not part of
            a valid UTF-8 sequence. Save the file as UTF-8.
            """),
    INVALID_ESCAPE(6, "invalid escape in string", """
            Strings allow the escapes \\" \\\\ \\n and \\t only.

                import "dir\\common.moe"     // error: `\\c` is not an escape
                import "dir/common.moe"     // ok
            """),
    NESTING_TOO_DEEP(7, "nesting too deep", """
            Brackets, parentheses, braces and unary signs may nest at most 64 levels deep. The limit
            keeps the parser's stack bounded whatever the input; real recipes nest a few levels.
            """),
    NUMBER_OUT_OF_RANGE(8, "number out of range", """
            A number literal must be finite as a 64-bit float, and an integer literal at most 2^53
            (9007199254740992), the largest integer a 64-bit float holds exactly. Arithmetic on
            constants whose result overflows is reported the same way.
            """),
    EMPTY_FILE(9, "file declares nothing", """
            The file holds no declaration (only whitespace or comments). A .moe file declares at
            least one of: import, const, ffn, moe, model, train.
            """),
    CANNOT_READ(10, "cannot read file", """
            The file does not exist, is a directory, is larger than the 1 MiB limit, or cannot be
            read. The message says which.
            """),

    // ---- 01xx: names and values ----
    UNKNOWN_NAME(101, "unknown name", """
            A name refers to nothing declared: no constant, ffn, moe, model or expert kind of that
            name is visible here (in this file or the files it imports). A name standing where a
            number belongs is taken for a misspelt constant. The nearest declared name is suggested.

                ffn dense = swiglu(hidden: 512)
                model M { ... layers 2 { all: attention, dnese } }   // error: did you mean `dense`?
            """),
    DUPLICATE_NAME(102, "duplicate name", """
            Two declarations share a name in one scope. All top-level names of a file and its imports
            (constants, ffn and moe definitions, models) share one namespace, and a model's own
            definitions may not reuse them; stages of a train block, data domains (the built-in
            synthetic ones included), routers of one MoE and parameters of one moe definition are
            unique too. Names are unique so that every reference is unambiguous.
            """),
    UNKNOWN_SETTING(103, "unknown setting", """
            The key is not a setting of this block. Each block has its own vocabulary (model,
            moe, router, train, stage); the message lists the nearest valid key, and `moe explain
            MOE0103` readers can find the full list in the language reference (docs/language.md).
            """),
    DUPLICATE_SETTING(104, "setting given twice", """
            A setting appears twice in one block. Only `routed`, `shared` and `balance` may repeat
            (one line per expert group or per loss).
            """),
    MISSING_SETTING(105, "missing setting", """
            A block lacks a setting it needs. A model needs `vocab`, `context`, `dim`, `heads` and a
            `layers` plan; a token-choice router needs `top_k` or `top_p`; an expert-choice router
            needs `capacity factor(c)`; a stage needs `steps`; a train block needs `steps` unless it
            has stages.
            """),
    WRONG_TYPE(106, "value of the wrong kind", """
            The value does not have the kind the setting takes: an integer where a count is needed, a
            number, a string, a list, or one of a fixed set of words (the message lists them).

                norm rms(eps: "small")      // error: expected a number
                score softmin               // error: expected one of `sigmoid`, `softmax`
            """),
    BAD_ARGUMENTS(107, "bad arguments", """
            A call such as `swiglu(hidden: 512)` has an argument it does not take, lacks one it needs,
            or names one twice. Arguments are named (`hidden: 512`); where a call takes one main
            value it may be given positionally (`checkpoint("runs/a.safetensors")`).
            """),
    IMPORT_NOT_FOUND(108, "imported file not found", """
            `import "path"` names a file relative to the importing file's directory, and it must
            exist and be readable.
            """),
    CYCLIC_IMPORT(109, "cyclic import", """
            A file imports itself, directly or through other files. The message shows the cycle.
            Move the shared declarations into a third file that both import.
            """),
    OUT_OF_RANGE(110, "value out of range", """
            The value has the right kind but lies outside what the setting allows: counts and sizes
            are positive, probabilities and mixture shares lie in (0, 1], coefficients are
            non-negative, eps is positive. The message gives the allowed range. Division by zero in
            a constant expression, and a train block whose `steps` differs from its stages' total,
            are reported with this code too.
            """),
    CYCLIC_CONSTANT(111, "defined in terms of itself", """
            A `const` (or an `ffn` definition) refers to itself, directly or through others. The note
            shows the cycle.

                const A = B * 2
                const B = A / 2             // error
            """),

    // ---- 02xx: model structure ----
    HEADS_DO_NOT_DIVIDE(201, "heads do not divide", """
            Without an explicit `head_dim`, the width `dim` must be divisible by `heads`; and `heads`
            must always be divisible by `kv_heads` (grouped-query attention shares each key/value head
            among heads / kv_heads query heads).
            """),
    LAYER_NOT_COVERED(202, "layer not covered by the layer plan", """
            Every layer index 0..n-1 of `layers n { ... }` must be given a block. Add an entry for
            the missing layers, or end the plan with `rest: ...`.
            """),
    LAYER_COVERED_TWICE(203, "layer covered twice by the layer plan", """
            Two entries of the layer plan select the same layer. Each layer gets exactly one block.
            `rest` selects only the layers no other entry selects.
            """),
    LAYER_OUT_OF_RANGE(204, "layer index out of range", """
            A selector names a layer at or past the layer count, or a range runs backwards.

                layers 4 { 0..5: attention, dense }    // error: the layers are 0..3
            """),
    WRONG_BLOCK(205, "block does not fit its slot", """
            A layer is `mixer, ffn` (pre-norm residual), or one of the forms `parallel(mixer, ffn)`,
            `shortcut(mixer, dense_ffn, moe)` or `residual(mixer, dense_ffn, moe)`. The mixer is
            `attention` or an MoE of attention experts; the ffn is an ffn definition or an MoE of
            feed-forward experts. The message says which slot got what.
            """),
    ROTARY_DIMENSION(206, "partial rotary dimension", """
            `rope(fraction: f)` rotates f * head_dim dimensions of each head; that number must be a
            positive even integer (dimensions rotate in pairs).
            """),
    WINDOW_COVERS_CONTEXT(207, "sliding window covers the whole context", """
            A warning: `sliding_window` is at least `context`, so every token already sees the whole
            context and the window has no effect. Remove it or make it smaller.
            """),
    LATENT_ATTENTION(208, "latent attention does not fit", """
            `attention mla(...)` (DeepSeek-V2/V3 multi-head latent attention) projects queries through
            an optional rank `q_rank`, keys and values through the rank `kv_rank`, and gives every
            head `nope_dim + rope_dim` query/key dimensions and `v_dim` value dimensions; one rotary
            key of `rope_dim` dimensions is shared by all heads. So `rope_dim` must be even (RoPE
            turns pairs), every head has its own keys and values (`kv_heads` equals `heads`),
            `head_dim`, when given, is `nope_dim + rope_dim`, partial rotary fractions do not apply
            (`rope_dim` says what rotates), and `qk_norm` and `qkv_bias` do not apply.

                attention mla(q_rank: 32, kv_rank: 16, nope_dim: 8, rope_dim: 8, v_dim: 16)
            """),

    // ---- 03xx: routers ----
    TOP_K_EXCEEDS_EXPERTS(301, "top-k exceeds the routed experts", """
            A token cannot pick more distinct experts than there are routed experts (expert slots
            of every kind in the MoE's `routed` groups).

                routed 4 x swiglu(hidden: 64)
                router { top_k 6 }          // error: at most 4
            """),
    TOP_P_RANGE(302, "top-p outside (0, 1]", """
            `top_p p` keeps the smallest set of experts whose probabilities sum to at least p; p must
            lie in (0, 1].
            """),
    MAX_K(303, "top-p needs a valid max_k", """
            Top-p routing selects a variable number of experts per token; `max_k` bounds it and sizes
            the dispatch buffers. It is required with `top_p` and must not exceed the routed experts.
            """),
    QUOTA_DOES_NOT_DIVIDE(304, "expert groups do not divide", """
            Grouped experts with a per-group quota (MoGE, `groups quota(n)`) take top_k / n experts
            in each of n equal groups, so n must divide both the routed experts and top_k.
            """),
    GROUP_LIMIT(305, "group-limited routing does not fit", """
            Group-limited top-k (`groups limited(groups: g, top: t)`) splits the experts into g equal
            groups, keeps the best t groups per token and takes top_k inside them. g must divide the
            routed experts, t must not exceed g, and the t kept groups must hold at least top_k
            experts.
            """),
    NO_PREDECESSOR(306, "router needs a previous MoE layer", """
            A gating residual (MoE++: logits plus a map of the previous layer's logits) or a recurrent
            router (RMoE: a GRU state carried from the previous layer's router) reads the previous
            MoE layer; the first MoE layer of a model has none. Give the first MoE layer a router
            without them, for example through a parameter of the moe definition.
            """),
    CONFLICTING_ROUTER(307, "conflicting router settings", """
            Two router settings exclude each other: `top_k` and `top_p`; `max_k` without `top_p`;
            `order` with sigmoid scores (order only applies to softmax); expert-choice or soft
            routing with `top_k`/`top_p`; `groups quota(...)` without `top_k`; a pre-gating router
            with a gating residual or a recurrent state.
            """),
    ROUTER_MISMATCH(308, "routed experts and router do not match", """
            An MoE with routed experts needs a router, and a router needs routed experts to choose
            from. An MoE made only of shared experts is a dense FFN: declare it with `ffn`.
            """),
    GATE_NAMES(309, "several routers must be named", """
            An MoE may hold several named gates (one per data domain or task, chosen per batch):
            `router text { ... }  router audio { ... }`. When there is more than one router, each
            must have a name.
            """),
    RESIDUAL_NEEDS_TOP1(310, "residual MoE needs top-1 routing", """
            `residual(mixer, dense, moe)` is PR-MoE's residual block: a dense FFN plus one routed
            expert per token. Its router must select exactly one expert (`top_k 1`).
            """),

    // ---- 04xx: experts ----
    GATE_ON_ROUTED(401, "gate on routed experts", """
            `gate: sigmoid` scales a shared expert's output by a learned sigmoid (Qwen2-MoE). Routed
            experts are already weighted by the router, so the gate applies to `shared` groups only.
            """),
    LORA_RANK(402, "LoRA rank too large", """
            A LoRA expert adds B·A with A: rank x in and B: out x rank to each projection of its base
            FFN. A rank at or above min(in, out) of a projection is no longer low-rank.
            """),
    LATENT_RANK(403, "latent rank too large", """
            Latent experts (MoLE) share one down-projection from dim to rank; the rank must be below
            `dim`, or the projection saves nothing.
            """),
    MIXED_EXPERTS(404, "attention and feed-forward experts mixed", """
            An MoE routes tokens either among attention experts (it then stands in the mixer slot of
            a layer) or among feed-forward experts (the ffn slot), not both.
            """),
    NO_EXPERTS(405, "MoE without experts", """
            An moe definition declares at least one expert group: `routed n x kind` or
            `shared n x kind`.
            """),
    ZERO_COMPUTE_SHARED(406, "zero-compute expert declared shared", """
            Zero, copy and constant experts exist to be chosen (or not) by the router: as always-on
            shared experts they add 0, x or a fixed mix to every token, which is a residual, not an
            expert. Declare them `routed`.
            """),

    // ---- 05xx: balancing losses ----
    GLOBAL_BATCH_REQUIRED(501, "aux loss scope needs a global batch", """
            `aux(scope: global_batch)` counts expert loads over the global batch (all micro-batches
            of a step). The train block for the model must declare `global_batch`.
            """),
    ENTROPY_WITHOUT_TOP_P(502, "entropy loss without top-p routing", """
            The entropy loss (dynamic routing, top-p) pushes router distributions to be peaked so that
            top-p selects fewer experts. With top-k routing it has no such effect.
            """),
    TAU_WITHOUT_ZERO_COMPUTE(503, "tau without zero-compute experts", """
            `aux(tau: t)` weights the load-balancing term of zero-compute experts (zero, copy,
            constant; MoE++). The MoE declares none.
            """),
    DEVICE_GROUPS(504, "device loss groups do not divide", """
            The device-level balance loss (DeepSeekMoE) averages loads over `groups` equal groups of
            routed experts; the number of groups must divide the routed experts.
            """),

    // ---- 06xx: training recipes ----
    MIXTURE_SUM(601, "mixture weights do not sum to 1", """
            `data mix(a: wa, b: wb, ...)` gives the share of each domain in a batch; the shares must
            sum to 1 (within 1e-6). A share outside (0, 1] is reported as MOE0110.
            """),
    PATTERN_MATCHES_NOTHING(602, "parameter pattern matches nothing", """
            A `trainable` pattern selects parameters by name: `*` matches within one dot-separated
            segment, `**` across segments, `{a..b}` a number in a range. A pattern that matches no
            parameter of the model is almost always a typo. `moe info --params FILE` lists the names.
            """),
    SPLIT_DOES_NOT_DIVIDE(603, "hidden size not divisible by the split", """
            Granular upcycling (`split(..., parts: m)`) gives expert j the hidden units
            j*h/m .. (j+1)*h/m of the dense FFN, so m must divide the dense hidden size h, and the
            experts' hidden size must be h/m.
            """),
    UPCYCLE_SHAPE(604, "upcycling source does not fit the target", """
            The source model of `copy`, `split` and `merge` must be dense (no MoE layers) and have the
            target's vocab, dim, heads and layer count, and the target's experts must be able to take
            its FFN (same activation; hidden size equal for copy, h/m for split). `scale_up` starts
            from a dense model no larger than the target (same vocab); `extend` and `diversify` start
            from an MoE, and `extend` must add exactly the target's extra experts.
            """),
    NO_PREVIOUS_STAGE(605, "first stage starts from a previous stage", """
            `init previous` continues from the stage before; the first stage has none. Start it from
            `scratch`, a `checkpoint(...)`, or an upcycling step.
            """),
    GLOBAL_BATCH_MULTIPLE(606, "global batch not a multiple of the batch", """
            A step accumulates global_batch / batch micro-batches, so `global_batch` must be a
            positive multiple of `batch`.
            """),
    UNKNOWN_DOMAIN(607, "unknown data domain", """
            A data mixture names a domain that is neither one of the built-in synthetic domains nor
            declared with `domain name = file("...")` in the train block.
            """),
    EXPERT_PLACEMENT(608, "experts per rank do not divide the experts", """
            `experts_per_rank n` places each MoE layer's routed experts on GPUs n at a time, so
            every layer's routed expert count must be a multiple of n (a group of count / n ranks
            then holds every expert once), and the model must have routed experts.
            """),
    EXPERT_NOT_PLACED_ONCE(609, "expert not placed exactly once", """
            `experts per_rank([[...], ...])` in a `parallel` block lists each rank's experts; every
            routed expert of each MoE layer it applies to must appear exactly once, as an integer
            0..E-1 (E the layer's routed experts). The message names an expert listed twice, one
            past the layer's experts, or the experts no rank holds.

                parallel {
                  ranks 2
                  experts per_rank([[0, 1, 2], [2, 3]])    // error: expert 2 on both ranks
                }
            """),
    PLACEMENT_RANKS(610, "placement does not match the ranks", """
            A `parallel` block declares `ranks n`, and `experts per_rank([...])` lists one list of
            experts per rank, ranks 0..n-1 in order: exactly n lists (`[]` for a rank that holds
            no experts).
            """),
    PLACEMENT_LAYER(611, "placement names a layer without routed experts", """
            `experts ...(layers: [i, ...])` places the experts of the named layers; each index must
            be a layer of the model (0..L-1) whose ffn is an MoE. A `parallel` block needs a model
            with MoE layers: a dense model is replicated on every GPU. Attention experts (an MoE in
            the mixer slot) are not placed: every rank holds them.
            """),
    PLACEMENT_FILE(612, "placement file missing, malformed or not for this model", """
            `experts file("placement.json")` reads the placement that `moe placement RUN --ranks N
            --json placement.json` writes, relative to the .moe file: `ranks` and, per MoE layer in
            layer order, `experts_of_rank`. The file must exist and be that JSON, its ranks must equal
            the block's `ranks`, it must have one entry per MoE layer of the model, and each entry
            must place that layer's routed experts, each exactly once. Recompute it with
            `moe placement` after changing the model's MoE layers or expert counts.
            """),
    PLACEMENT_TWICE(613, "placement declared twice", """
            A train block has at most one `parallel` block, and not beside `experts_per_rank`. Within
            it, at most one `experts` line without `layers:` (the default for every MoE layer), and
            no layer named by two `experts` lines.
            """);

    private final int number;
    private final String title;
    private final String explanation;

    Code(int number, String title, String explanation) {
        this.number = number;
        this.title = title;
        this.explanation = explanation;
    }

    /** The stable id, e.g. {@code MOE0301}. */
    public String id() {
        return String.format(Locale.ROOT, "MOE%04d", number);
    }

    public String title() {
        return title;
    }

    public String explanation() {
        return explanation;
    }

    /** Accepts {@code MOE0301}, {@code moe0301}, {@code 0301} and {@code 301}. */
    public static Optional<Code> parse(String text) {
        String t = text.trim().toUpperCase(Locale.ROOT);
        if (t.startsWith("MOE")) {
            t = t.substring(3);
        }
        if (t.isEmpty() || t.length() > 6 || !t.chars().allMatch(Character::isDigit)) {
            return Optional.empty();
        }
        int n = Integer.parseInt(t);
        for (Code c : values()) {
            if (c.number == n) {
                return Optional.of(c);
            }
        }
        return Optional.empty();
    }
}
