package dev.moe.compiler;

import dev.moe.compiler.ir.Block;
import dev.moe.compiler.ir.Count;
import dev.moe.compiler.ir.Expert;
import dev.moe.compiler.ir.ExpertGroup;
import dev.moe.compiler.ir.Ffn;
import dev.moe.compiler.ir.ModelConfig;
import dev.moe.compiler.ir.Moe;
import dev.moe.compiler.ir.Param;
import dev.moe.compiler.ir.Router;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;

/**
 * The tensors of a model and what a token costs. Conventions (stated in {@code moe info} too):
 *
 * <ul>
 *   <li>total parameters: every weight, frozen ones included, buffers (expert bias) excluded;
 *   <li>active parameters: what one token runs through; embedding and head count fully (as the
 *       Mixtral and DeepSeek papers count), routed experts as selected, one gate of several named
 *       gates, shared-per-group tensors (latent down-projection, LoRA base) fully, and the keys and
 *       values of routed attention experts fully (every token's are read by later queries);
 *   <li>forward FLOPs: 2 per weight used (the embedding lookup is free; a tied head costs
 *       2·vocab·dim), plus 4·heads·head_dim·L for attention scores and values, L the full context
 *       or the sliding window (latent attention: 2·heads·(nope_dim + rope_dim + v_dim)·L).
 * </ul>
 */
final class Costs {
    private final ModelConfig cfg;
    final List<Param> params = new ArrayList<>();

    Costs(ModelConfig cfg) {
        this.cfg = cfg;
    }

    /** Params, active params and FLOPs of one part of the model. */
    record Cost(long params, Count active, Count flops) {
        static final Cost NONE = new Cost(0, Count.ZERO, Count.ZERO);

        Cost plus(Cost o) {
            return new Cost(params + o.params, active.plus(o.active), flops.plus(o.flops));
        }
    }

    private long d() {
        return cfg.dim();
    }

    private long attentionLength() {
        return cfg.slidingWindow() > 0 ? Math.min(cfg.slidingWindow(), cfg.context()) : cfg.context();
    }

    /** Adds a tensor and returns its size when it counts towards the totals. */
    private long add(Param p) {
        params.add(p);
        return p.kind() == Param.Kind.BUFFER ? 0 : p.numel();
    }

    private long weight(String name, long... shape) {
        return add(Param.of(name, shape));
    }

    private static Cost dense(long n, long extraFlops) {
        return new Cost(n, Count.exactly(n), Count.exactly(2 * n + extraFlops));
    }

    Cost embedding() {
        long n = weight("embed.weight", cfg.vocab(), d());
        return new Cost(n, Count.exactly(n), Count.ZERO);
    }

    Cost head() {
        long n = norm("final_norm", d());
        long headFlops = 2L * cfg.vocab() * d();
        if (!cfg.tieEmbeddings()) {
            long h = weight("head.weight", cfg.vocab(), d());
            return new Cost(n + h, Count.exactly(n + h), Count.exactly(2 * n + headFlops));
        }
        return new Cost(n, Count.exactly(n), Count.exactly(2 * n + headFlops));
    }

    private long norm(String prefix, long width) {
        long n = weight(prefix + ".weight", width);
        if (cfg.norm().kind() == ModelConfig.NormKind.LAYER) {
            n += weight(prefix + ".bias", width);
        }
        return n;
    }

    Cost layer(int index, Block block, Moe previousMoe, Moe previousMixerMoe) {
        String p = "layers." + index + ".";
        return switch (block) {
            case Block.PreNorm b -> dense(norm(p + "attn_norm", d()), 0)
                    .plus(part(p, b.mixer(), previousMixerMoe, "attn"))
                    .plus(dense(norm(p + "ffn_norm", d()), 0))
                    .plus(part(p, b.ffn(), previousMoe, "ffn"));
            case Block.Parallel b -> dense(norm(p + "norm", d()), 0)
                    .plus(part(p, b.mixer(), previousMixerMoe, "attn"))
                    .plus(part(p, b.ffn(), previousMoe, "ffn"));
            case Block.Shortcut b -> dense(norm(p + "attn0_norm", d()), 0)
                    .plus(part(p, b.mixer(), previousMixerMoe, "attn0"))
                    .plus(dense(norm(p + "ffn0_norm", d()), 0))
                    .plus(ffn(p + "ffn0", b.dense()))
                    .plus(dense(norm(p + "attn1_norm", d()), 0))
                    .plus(part(p, b.mixer(), previousMixerMoe, "attn1"))
                    .plus(dense(norm(p + "ffn1_norm", d()), 0))
                    .plus(ffn(p + "ffn1", b.dense()))
                    .plus(moe(p + "moe", b.moe(), previousMoe));
            case Block.Residual b -> dense(norm(p + "attn_norm", d()), 0)
                    .plus(part(p, b.mixer(), previousMixerMoe, "attn"))
                    .plus(dense(norm(p + "ffn_norm", d()), 0))
                    .plus(ffn(p + "ffn", b.dense()))
                    .plus(moe(p + "moe", b.moe(), previousMoe))
                    .plus(dense(weight(p + "residual_mix", 2, d()), 0));
        };
    }

    private Cost part(String layerPrefix, Block.Part part, Moe previous, String slot) {
        return switch (part) {
            case Block.Part.Attention a -> attention(layerPrefix + slot);
            case Block.Part.Dense f -> ffn(layerPrefix + slot, f.ffn());
            case Block.Part.MoePart m -> moe(layerPrefix + (slot.startsWith("attn") ? slot + "_moe" : "moe"), m.moe(), previous);
        };
    }

    Cost attention(String prefix) {
        if (cfg.mla().isPresent()) {
            return latentAttention(prefix, cfg.mla().get());
        }
        long hd = cfg.headDim();
        long q = cfg.heads() * hd;
        long kv = cfg.kvHeads() * hd;
        long n = weight(prefix + ".q", q, d()) + weight(prefix + ".k", kv, d()) + weight(prefix + ".v", kv, d()) + weight(prefix + ".o", d(), q);
        if (cfg.qkvBias()) {
            n += weight(prefix + ".q_bias", q) + weight(prefix + ".k_bias", kv) + weight(prefix + ".v_bias", kv);
        }
        if (cfg.qkNorm()) {
            n += cfg.qkNormFull() ? weight(prefix + ".q_norm", q) + weight(prefix + ".k_norm", kv)
                    : weight(prefix + ".q_norm", hd) + weight(prefix + ".k_norm", hd);
        }
        return dense(n, 4L * cfg.heads() * hd * attentionLength());
    }

    /** Multi-head latent attention: scores over nope_dim + rope_dim, values of v_dim, per head. */
    private Cost latentAttention(String prefix, ModelConfig.Mla m) {
        long h = cfg.heads();
        long n = 0;
        if (m.qRank() > 0) {
            n += weight(prefix + ".q_a", m.qRank(), d()) + weight(prefix + ".q_a_norm", m.qRank()) + weight(prefix + ".q_b", h * m.qkDim(), m.qRank());
        } else {
            n += weight(prefix + ".q", h * m.qkDim(), d());
        }
        n += weight(prefix + ".kv_a", m.kvRank(), d()) + weight(prefix + ".kv_a_norm", m.kvRank()) + weight(prefix + ".k_rope", m.ropeDim(), d())
                + weight(prefix + ".kv_b", h * (m.nopeDim() + m.vDim()), m.kvRank()) + weight(prefix + ".o", d(), h * m.vDim());
        return dense(n, 2L * h * (m.qkDim() + m.vDim()) * attentionLength());
    }

    Cost ffn(String prefix, Ffn f) {
        long h = f.hidden();
        long n = 0;
        if (f.activation().gated()) {
            n += weight(prefix + ".gate", h, d());
        }
        n += weight(prefix + ".up", h, d()) + weight(prefix + ".down", d(), h);
        return dense(n, 0);
    }

    private long ffnWeights(String prefix, Ffn f, long in, Param.Kind kind) {
        long h = f.hidden();
        long n = 0;
        if (f.activation().gated()) {
            n += add(new Param(prefix + ".gate", List.of(h, in), kind));
        }
        n += add(new Param(prefix + ".up", List.of(h, in), kind));
        n += add(new Param(prefix + ".down", List.of(d(), h), kind));
        return n;
    }

    private final java.util.Set<Integer> gruWidths = new java.util.HashSet<>();

    Cost moe(String prefix, Moe moe, Moe previous) {
        long e = moe.routedExperts();
        Cost fixed = Cost.NONE;
        // Routers: all are parameters; one runs per batch.
        long oneRouter = 0;
        long allRouters = 0;
        for (Router r : moe.routers()) {
            String rp = prefix + ".router" + r.name().map(n -> "." + n).orElse("");
            long n = weight(rp + ".weight", e, d());
            if (r.bias().isPresent()) {
                add(Param.buffer(rp + ".expert_bias", e));
            }
            if (r.gatingResidual() && previous != null) {
                n += weight(rp + ".residual", e, previous.routedExperts());
            }
            if (r.recurrentWidth().isPresent()) {
                int width = r.recurrentWidth().get();
                n += weight(rp + ".gru_in", width, d()) + weight(rp + ".gru_out", e, width);
                long cell = 2 * 3L * width * width + 2 * 3L * width;
                if (gruWidths.add(width)) {
                    // One GRU cell shared by every layer's router (RMoE): its weights count once per model.
                    weight("router_gru.w_ih", 3L * width, width);
                    weight("router_gru.w_hh", 3L * width, width);
                    weight("router_gru.b_ih", 3L * width);
                    weight("router_gru.b_hh", 3L * width);
                    fixed = fixed.plus(dense(cell, 0));
                } else {
                    // ... and its FLOPs once per layer that steps it
                    fixed = fixed.plus(new Cost(0, Count.ZERO, Count.exactly(2 * cell)));
                }
            }
            oneRouter = Math.max(oneRouter, n);
            allRouters += n;
        }
        fixed = fixed.plus(new Cost(allRouters, Count.exactly(oneRouter), Count.exactly(2 * oneRouter)));

        // Shared experts run for every token.
        int shared = 0;
        int routed = 0;
        List<Long> routedCosts = new ArrayList<>();
        List<Long> routedExtraFlops = new ArrayList<>();
        int group = 0;
        for (ExpertGroup g : moe.groups()) {
            String gp = prefix + ".group" + group++;
            long groupShared = groupSharedWeights(gp, g.expert());
            fixed = fixed.plus(dense(groupShared, 0));
            for (int i = 0; i < g.count(); i++) {
                if (g.role() == ExpertGroup.Role.SHARED) {
                    String sp = prefix + ".shared." + shared++;
                    long n = expertWeights(sp, g.expert());
                    if (g.sigmoidGate()) {
                        n += weight(sp + ".sigmoid_gate", 1, d());
                    }
                    fixed = fixed.plus(dense(n, expertExtraFlops(g.expert())));
                } else {
                    String ep = prefix + ".experts." + routed++;
                    long n = expertWeights(ep, g.expert());
                    if (g.expert() instanceof Expert.Attention a && !a.sharedKv()) {
                        // An attention expert's keys and values are needed at every token a later query
                        // of that expert reads: they run for every token; its query and output as chosen.
                        long kv = 2L * a.heads() * a.headDim() * d();
                        fixed = fixed.plus(dense(kv, 0));
                        n -= kv;
                    }
                    routedCosts.add(n);
                    routedExtraFlops.add(expertExtraFlops(g.expert()));
                }
            }
        }
        if (routedCosts.isEmpty()) {
            return fixed;
        }
        long total = routedCosts.stream().mapToLong(Long::longValue).sum();
        Count active = selectionCount(moe.routers(), routedCosts);
        List<Long> flopCosts = new ArrayList<>();
        for (int i = 0; i < routedCosts.size(); i++) {
            flopCosts.add(2 * routedCosts.get(i) + routedExtraFlops.get(i));
        }
        Count flops = selectionCount(moe.routers(), flopCosts);
        return fixed.plus(new Cost(total, active, flops));
    }

    /** Tensors shared by all experts of a group. */
    private long groupSharedWeights(String gp, Expert expert) {
        return switch (expert) {
            case Expert.Latent l -> weight(gp + ".latent_down", l.rank(), d());
            case Expert.Lora l -> ffnWeights(gp + ".base", l.base(), d(), Param.Kind.FROZEN);
            case Expert.Attention a when a.sharedKv() -> weight(gp + ".k", (long) a.heads() * a.headDim(), d())
                    + weight(gp + ".v", (long) a.heads() * a.headDim(), d());
            default -> 0;
        };
    }

    private long expertWeights(String ep, Expert expert) {
        return switch (expert) {
            case Expert.FeedForward f -> ffnWeights(ep, f.ffn(), d(), Param.Kind.WEIGHT);
            case Expert.Zero z -> 0;
            case Expert.Copy c -> 0;
            case Expert.Constant c -> weight(ep + ".vector", d()) + weight(ep + ".mix", 2, d());
            case Expert.Latent l -> ffnWeights(ep, l.ffn(), l.rank(), Param.Kind.WEIGHT);
            case Expert.Lora l -> {
                long h = l.base().hidden();
                long r = l.rank();
                long n = 0;
                if (l.base().activation().gated()) {
                    n += weight(ep + ".gate_a", r, d()) + weight(ep + ".gate_b", h, r);
                }
                n += weight(ep + ".up_a", r, d()) + weight(ep + ".up_b", h, r);
                n += weight(ep + ".down_a", r, h) + weight(ep + ".down_b", d(), r);
                yield n;
            }
            case Expert.Attention a -> {
                long width = (long) a.heads() * a.headDim();
                long n = weight(ep + ".q", width, d()) + weight(ep + ".o", d(), width);
                if (!a.sharedKv()) {
                    n += weight(ep + ".k", width, d()) + weight(ep + ".v", width, d());
                }
                yield n;
            }
        };
    }

    private long expertExtraFlops(Expert expert) {
        return expert instanceof Expert.Attention a ? 4L * a.heads() * a.headDim() * attentionLength() : 0;
    }

    /**
     * What a token spends on routed experts, from the per-expert costs: the cheapest and dearest
     * choices the router allows, and the expectation when every expert is equally likely.
     */
    static Count selectionCount(List<Router> routers, List<Long> costs) {
        long[] sorted = costs.stream().mapToLong(Long::longValue).sorted().toArray();
        int e = sorted.length;
        double mean = Arrays.stream(sorted).average().orElse(0);
        Count result = null;
        for (Router r : routers) {
            Count c = switch (r.selection()) {
                case Router.Selection.TopK t -> new Count(sumSmallest(sorted, t.k()), t.k() * mean, sumLargest(sorted, t.k()));
                case Router.Selection.TopP p -> {
                    int expectedK = (int) Math.min(p.maxK(), Math.max(1, Math.ceil(p.p() * e - 1e-9)));
                    yield new Count(sumSmallest(sorted, 1), expectedK * mean, sumLargest(sorted, p.maxK()));
                }
                case Router.Selection.ExpertChoice x -> new Count(0, Math.min(x.factor(), e) * mean, sumLargest(sorted, e));
                case Router.Selection.Soft s -> Count.exactly(sumLargest(sorted, e));
            };
            result = result == null ? c : new Count(Math.min(result.min(), c.min()), result.expected(), Math.max(result.max(), c.max()));
        }
        return result == null ? Count.ZERO : result;
    }

    private static long sumSmallest(long[] sorted, int k) {
        long s = 0;
        for (int i = 0; i < Math.min(k, sorted.length); i++) {
            s += sorted[i];
        }
        return s;
    }

    private static long sumLargest(long[] sorted, int k) {
        long s = 0;
        for (int i = 0; i < Math.min(k, sorted.length); i++) {
            s += sorted[sorted.length - 1 - i];
        }
        return s;
    }
}
