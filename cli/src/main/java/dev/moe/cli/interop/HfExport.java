package dev.moe.cli.interop;

import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.node.ObjectNode;
import dev.moe.compiler.CompileResult;
import dev.moe.compiler.MoeCompiler;
import dev.moe.compiler.ir.Block;
import dev.moe.compiler.ir.Expert;
import dev.moe.compiler.ir.ExpertGroup;
import dev.moe.compiler.ir.Ffn;
import dev.moe.compiler.ir.Layer;
import dev.moe.compiler.ir.Model;
import dev.moe.compiler.ir.ModelConfig;
import dev.moe.compiler.ir.Moe;
import dev.moe.compiler.ir.Router;
import dev.moe.dsl.SourceFile;
import dev.moe.runtime.Parameter;
import dev.moe.runtime.io.Tensor;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Optional;

/**
 * From one of our models to a Hugging Face {@code config.json} and tensors in transformers 5's layout
 * (fused 3-D experts). The config is checked by importing it again: the model it declares must be the
 * one exported, or the model uses something the family cannot hold and export refuses.
 */
public final class HfExport {
    private HfExport() {}

    /**
     * The config of {@code model} as a {@code type} checkpoint. Fields we do not model (token ids,
     * initializer range) come from {@code base}, the config the model was imported from, when there is one.
     */
    public static ObjectNode config(Model model, HfType type, ObjectNode base) throws InteropException {
        ModelConfig c = model.config();
        if (c.norm().kind() != ModelConfig.NormKind.RMS) {
            throw refuse(model, type, "its norm is not RMSNorm");
        }
        if (c.position().kind() != ModelConfig.PositionKind.ROPE) {
            throw refuse(model, type, "it has no RoPE");
        }
        Moe moe = null;
        Ffn dense = null;
        List<Integer> denseLayers = new ArrayList<>();
        for (Layer l : model.layers()) {
            if (!(l.block() instanceof Block.PreNorm p) || !(p.mixer() instanceof Block.Part.Attention)) {
                throw refuse(model, type, "layer " + l.index() + " is `" + l.block().describe() + "`, not `attention, FFN`");
            }
            switch (p.ffn()) {
                case Block.Part.MoePart m -> moe = m.moe();
                case Block.Part.Dense d -> {
                    dense = d.ffn();
                    denseLayers.add(l.index());
                }
                default -> throw refuse(model, type, "layer " + l.index() + " is not a pre-norm block");
            }
        }
        if (moe == null) {
            throw refuse(model, type, "it has no MoE layer");
        }
        ExpertGroup routed = null;
        ExpertGroup shared = null;
        for (ExpertGroup g : moe.groups()) {
            if (g.role() == ExpertGroup.Role.ROUTED) {
                routed = g;
            } else {
                shared = g;
            }
        }
        if (routed == null || !(routed.expert() instanceof Expert.FeedForward ff) || moe.routers().size() != 1
                || !(moe.routers().getFirst().selection() instanceof Router.Selection.TopK topK)) {
            throw refuse(model, type, "its MoE `" + moe.name() + "` is not one top-k router over feed-forward experts");
        }
        ObjectNode cfg = base != null ? base.deepCopy() : new ObjectMapper().createObjectNode();
        cfg.putArray("architectures").add(type.architecture());
        cfg.put("model_type", type.modelType());
        cfg.put("vocab_size", c.vocab());
        cfg.put("hidden_size", c.dim());
        cfg.put("num_hidden_layers", model.layers().size());
        cfg.put("num_attention_heads", c.heads());
        cfg.put("num_key_value_heads", c.kvHeads());
        cfg.put("head_dim", c.headDim());
        cfg.put("hidden_act", "silu");
        cfg.put("max_position_embeddings", c.context());
        cfg.put("rms_norm_eps", c.norm().eps());
        ObjectNode rope = cfg.putObject("rope_parameters");
        rope.put("rope_theta", c.position().theta());
        rope.put("rope_type", "default");
        cfg.remove("rope_theta");
        cfg.remove("rope_scaling");
        cfg.put("tie_word_embeddings", c.tieEmbeddings());
        cfg.put("num_experts_per_tok", topK.k());
        cfg.put(type.expertsFields().getFirst(), routed.count());
        cfg.put(type.expertHiddenField(), ff.ffn().hidden());
        if (!type.normalize().equals("true")) {
            cfg.put(type.normalize(), moe.routers().getFirst().normalize());
        }
        if (type.sharedHiddenField() != null) {
            cfg.put(type.sharedHiddenField(), shared != null && shared.expert() instanceof Expert.FeedForward sf ? sf.ffn().hidden() : 0);
        }
        if (!type.qkvBias().equals("true") && !type.qkvBias().equals("false")) {
            cfg.put(type.qkvBias(), c.qkvBias());
        }
        if (type.attention() == HfType.Attention.LATENT) {
            if (c.mla().isEmpty()) {
                throw refuse(model, type, "its attention is not latent (`attention mla(...)`)");
            }
            ModelConfig.Mla m = c.mla().get();
            if (m.qRank() > 0) {
                cfg.put("q_lora_rank", m.qRank());
            } else {
                cfg.putNull("q_lora_rank");
            }
            cfg.put("kv_lora_rank", m.kvRank());
            cfg.put("qk_nope_head_dim", m.nopeDim());
            cfg.put("qk_rope_head_dim", m.ropeDim());
            cfg.put("qk_head_dim", m.qkDim());
            cfg.put("v_head_dim", m.vDim());
            cfg.put("head_dim", m.ropeDim()); // transformers' RoPE reads its width from head_dim
            cfg.put("rope_interleave", true); // tensors() writes the rotary rows interleaved
        } else if (c.mla().isPresent()) {
            throw refuse(model, type, "it has latent attention, which `" + type.modelType() + "` does not");
        }
        if (type.routing() == HfType.Routing.SIGMOID_GROUPED) {
            Router r = moe.routers().getFirst();
            cfg.put("n_group", r.groupLimit().map(Router.GroupLimit::groups).orElse(1));
            cfg.put("topk_group", r.groupLimit().map(Router.GroupLimit::top).orElse(1));
            cfg.put("routed_scaling_factor", r.scale());
        }
        if (type.jitterField() != null) {
            cfg.put(type.jitterField(), moe.routers().getFirst().jitter());
        }
        if (type.sharedCountField() != null) {
            int n = 0;
            if (shared != null && shared.expert() instanceof Expert.FeedForward sf && sf.ffn().hidden() % ff.ffn().hidden() == 0) {
                n = sf.ffn().hidden() / ff.ffn().hidden();
            } else if (shared != null) {
                throw refuse(model, type, "its shared expert's width is not a multiple of the routed experts'");
            }
            cfg.put(type.sharedCountField(), n);
        }
        if (type.denseFirstField() != null) {
            cfg.put(type.denseHiddenField(), dense != null ? dense.hidden() : cfg.path(type.denseHiddenField()).asInt(ff.ffn().hidden()));
            cfg.put(type.denseFirstField(), denseLayers.size()); // the re-import below checks that they come first
        } else if (type.denseHiddenField() != null) {
            if (dense != null) {
                cfg.put(type.denseHiddenField(), dense.hidden());
            } else if (!cfg.has(type.denseHiddenField())) {
                cfg.put(type.denseHiddenField(), ff.ffn().hidden());
            }
            cfg.put("decoder_sparse_step", 1);
            var only = cfg.putArray("mlp_only_layers");
            denseLayers.forEach(only::add);
        }
        if (type.slidingWindowField() != null) {
            if (c.slidingWindow() > 0) {
                cfg.put(type.slidingWindowField(), c.slidingWindow());
            } else {
                cfg.putNull(type.slidingWindowField());
            }
        }
        cfg.put("output_router_logits", false);
        cfg.put("dtype", "float32");
        // The check: the config, imported again, must declare this very model.
        HfImport.Arch arch = HfImport.architecture(cfg, "the exported config.json");
        CompileResult r = MoeCompiler.compile(new SourceFile("exported.moe", arch.recipe("the exported config")));
        if (r.output().isEmpty() || r.output().get().models().isEmpty()) {
            throw refuse(model, type, "its configuration does not import back (" + r.diagnostics().stream().map(d -> d.message()).toList() + ")");
        }
        Model back = r.output().get().models().getFirst();
        if (!back.config().equals(c)) {
            throw refuse(model, type, "its settings differ from what the family can say: " + differences(c, back.config()));
        }
        for (int i = 0; i < model.layers().size(); i++) {
            String ours = canonical(model.layers().get(i).block());
            String theirs = canonical(back.layers().get(i).block());
            if (!ours.equals(theirs)) {
                throw refuse(model, type, "layer " + i + " is " + ours + "; the nearest `" + type.modelType() + "` layer is " + theirs);
            }
        }
        return cfg;
    }

    /** The settings that differ, as {@code name: ours, the family's}. */
    private static String differences(ModelConfig ours, ModelConfig theirs) {
        List<String> out = new ArrayList<>();
        for (var component : ModelConfig.class.getRecordComponents()) {
            try {
                Object a = component.getAccessor().invoke(ours);
                Object b = component.getAccessor().invoke(theirs);
                if (!a.equals(b)) {
                    out.add(component.getName() + " " + a + " (the config gives " + b + ")");
                }
            } catch (ReflectiveOperationException e) {
                throw new IllegalStateException(e);
            }
        }
        return String.join(", ", out);
    }

    private static InteropException refuse(Model model, HfType type, String why) {
        return new InteropException("model " + model.name() + " cannot be exported as `" + type.modelType() + "`: " + why);
    }

    /** A block without names, balancing losses and training-only router noise: what the weights compute. */
    static String canonical(Block b) {
        if (b instanceof Block.PreNorm p) {
            return "prenorm(" + part(p.mixer()) + ", " + part(p.ffn()) + ")";
        }
        return b.toString();
    }

    private static String part(Block.Part p) {
        return switch (p) {
            case Block.Part.Attention a -> "attention";
            case Block.Part.Dense d -> d.ffn().toString();
            case Block.Part.MoePart m -> {
                List<Router> routers = new ArrayList<>();
                for (Router r : m.moe().routers()) {
                    routers.add(new Router(Optional.empty(), r.score(), r.order(), r.selection(), r.normalize(), r.scale(), r.bias(),
                            r.groupLimit(), r.quotaGroups(), 0.0, r.temperature(), r.gatingResidual(), r.recurrentWidth(), r.pregate(),
                            r.capacity()));
                }
                yield "moe(" + m.moe().groups() + ", " + routers + ")";
            }
        };
    }

    /**
     * Our parameters as the family's tensors: in the layout save_pretrained writes (per-expert
     * tensors), or in that of transformers 5's module parameters (fused 3-D experts).
     */
    public static List<Tensor> tensors(HfType type, List<Parameter> params, HfType.Layout layout) throws InteropException {
        int[] experts = HfImport.expertsPerLayer(params.stream().map(Parameter::name).toList());
        Map<String, Tensor> whole = new LinkedHashMap<>();
        Map<String, float[]> fused = new LinkedHashMap<>();
        Map<String, long[]> fusedShape = new LinkedHashMap<>();
        Map<String, long[]> shapes = new java.util.HashMap<>();
        for (Parameter p : params) {
            shapes.put(p.name(), HfImport.longs(p.shape()));
        }
        for (Parameter p : params) {
            HfType.Match m = type.match(p.name())
                    .orElseThrow(() -> new InteropException("our parameter `" + p.name() + "` has no `" + type.modelType() + "` tensor"));
            HfType.Source s = m.source(layout);
            String name = m.name(s);
            int[] ps = p.shape();
            if (s.slice() == HfType.Slice.WHOLE) {
                whole.put(name, Tensor.f32(name, HfImport.longs(ps), p.values()));
                continue;
            }
            if (s.slice().rows()) {
                // we export the rotary rows interleaved, as the config's rope_interleave (true) says
                int[] rows = HfImport.latentRows(s.slice(), p.name(), shapes::get, true);
                int cols = ps[1];
                float[] all = fused.computeIfAbsent(name, k -> new float[rows[rows.length - 1] * cols]);
                fusedShape.putIfAbsent(name, new long[] {rows[rows.length - 1], cols});
                whole.putIfAbsent(name, null);
                for (int r = 0; r < rows.length - 1; r++) {
                    System.arraycopy(p.value(), p.offset() + r * cols, all, rows[r] * cols, cols);
                }
                continue;
            }
            int layer = Integer.parseInt(m.layer());
            int expert = Integer.parseInt(m.expert());
            boolean halves = s.slice() != HfType.Slice.FUSED_EXPERT;
            int size = ps[0] * ps[1];
            int per = halves ? 2 * size : size;
            float[] all = fused.computeIfAbsent(name, k -> new float[experts[layer] * per]);
            fusedShape.putIfAbsent(name, new long[] {experts[layer], halves ? 2L * ps[0] : ps[0], ps[1]});
            whole.putIfAbsent(name, null); // keep the tensor's place in the order
            System.arraycopy(p.value(), p.offset(), all, expert * per + (s.slice() == HfType.Slice.FUSED_SECOND_HALF ? size : 0), size);
        }
        List<Tensor> out = new ArrayList<>();
        for (Map.Entry<String, Tensor> e : whole.entrySet()) {
            out.add(e.getValue() != null ? e.getValue() : Tensor.f32(e.getKey(), fusedShape.get(e.getKey()), fused.get(e.getKey())));
        }
        return out;
    }
}
