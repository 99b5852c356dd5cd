package dev.moe.cuda.codegen;

import com.palantir.javapoet.ClassName;
import com.palantir.javapoet.CodeBlock;
import com.palantir.javapoet.FieldSpec;
import com.palantir.javapoet.JavaFile;
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
import dev.moe.cuda.CudaAttentionRouter;
import dev.moe.cuda.CudaContext;
import dev.moe.cuda.CudaLoraMoeLayer;
import dev.moe.cuda.CudaMoeLayer;
import dev.moe.cuda.kernels.MoeKernelSource;
import dev.moe.cuda.model.DeviceModel;
import dev.moe.runtime.Activation;
import dev.moe.runtime.TrainableModel;
import java.util.ArrayList;
import java.util.List;
import java.util.Locale;
import java.util.Optional;
import java.util.Set;
import java.util.stream.Collectors;
import javax.lang.model.element.Modifier;

/**
 * Writes the device-resident twin of a generated model: a {@link DeviceModel} subclass whose
 * forward and backward passes, unrolled per layer like the CPU class's, run on device pointers
 * (cuBLASLt for the matrix products, {@code DeviceOps} kernels, one {@link CudaMoeLayer} per MoE
 * layer with kernels specialised to that layer's router). Activations, gradients and, in training,
 * the weights and AdamW's moments stay on the GPU.
 *
 * <p>It covers pre-norm, shortcut (LongCat-Flash) and residual (PR-MoE) blocks, and parallel blocks of attention beside a dense
 * FFN or an MoE, with RMSNorm or
 * LayerNorm, RoPE, grouped-query attention (causal or not, sliding window, q/k/v biases, per-head or
 * full qk-norm), multi-head latent attention (DeepSeek-V2/V3), mixtures of attention experts in the mixer slot of pre-norm and
 * parallel blocks (JetMoE's MoA, BAM; {@link #attentionExperts}; their GPU parity check passed on 2026-12-02), gated and ungated dense FFNs, and MoE layers of routed FFN experts of any activation
 * followed by zero, copy and constant experts (MoE++), or of MoLE's latent experts (a shared down-projection to the rank,
 * then FFN experts on it) followed by zero experts, or one group of MoLA's LoRA experts over a frozen FFN base
 * ({@link CudaLoraMoeLayer}, fp32, dropless token choice by one router), with shared FFN experts without a sigmoid gate. Routers: softmax
 * or sigmoid scores, top-k or top-p, normalisation, scaling, aux-free selection bias, group-limited
 * top-k, quota groups, a constant or annealed temperature (through tanh or sigmoid), pre-gating,
 * expert choice, several named gates that differ in their weights, MoE++'s gating residual (a router adds a map of the
 * previous MoE layer's logits; {@link CudaMoeLayer#setResidualFrom}), RMoE's recurrent routers (one GRU cell shared by the
 * layers, run here with cuBLASLt and {@code DeviceOps.gruCell}, its state carried from layer to layer and its output map
 * added to the layer's logits through {@link CudaMoeLayer#setExtraLogits}), router jitter (training forwards multiply the
 * router's input by noise the GPU draws exactly as the CPU class draws it, {@code DeviceOps.jitterNoise}), and capacity
 * factors dropping by position, by probability or at random (the CPU class's seeded priorities) in training forwards;
 * the micro- or global-batch aux loss (with tau) and the sequence-wise one (DeepSeek-V3's; sigmoid scores normalised per token
 * as the CPU class's aux loss sees them), the z-loss and the entropy loss (softmax scores). {@link #unsupported}
 * names what else a model uses; such models run on the hybrid backend instead.
 */
public final class CudaModelGenerator {
    /** The generated class is the CPU class's name plus this suffix. */
    public static final String SUFFIX = "Cuda";

    private static final ClassName DEVICE_MODEL = ClassName.get(DeviceModel.class);
    private static final ClassName MOE_LAYER = ClassName.get(CudaMoeLayer.class);
    private static final ClassName LORA_LAYER = ClassName.get(CudaLoraMoeLayer.class);
    private static final ClassName MOA_ROUTER = ClassName.get(CudaAttentionRouter.class);
    private static final ClassName EXTERNAL = ClassName.get(CudaMoeLayer.ExternalWeights.class);
    private static final ClassName SPEC = ClassName.get(MoeKernelSource.Spec.class);
    private static final ClassName SCORE = ClassName.get(MoeKernelSource.Score.class);
    private static final ClassName OPTIONS = ClassName.get(MoeKernelSource.Options.class);
    private static final ClassName EXPERT_ACTIVATION = ClassName.get(MoeKernelSource.ExpertActivation.class);
    private static final ClassName DROP = ClassName.get(MoeKernelSource.Drop.class);
    private static final ClassName ACTIVATION = ClassName.get(Activation.class);

    private final Model model;
    private final ModelConfig cfg;
    private final Set<String> paramNames;

    private CudaModelGenerator(Model model) {
        this.model = model;
        this.cfg = model.config();
        this.paramNames = model.params().stream().map(Param::name).collect(Collectors.toSet());
    }

    /** Why {@code model} cannot be generated device-resident, or empty when it can. */
    public static Optional<String> unsupported(Model model) {
        ModelConfig c = model.config();
        if (c.mla().isPresent() && c.mla().get().vDim() > c.headDim()) {
            // the CPU generator refuses it too: values are padded to the query/key head width
            return Optional.of("multi-head latent attention with v_dim above nope_dim + rope_dim");
        }
        if (c.headDim() > 256) {
            return Optional.of("head_dim above 256");
        }
        for (Layer l : model.layers()) {
            if (l.block() instanceof Block.Shortcut || l.block() instanceof Block.Residual) {
                Block.Part mixer = l.block() instanceof Block.Shortcut sc ? sc.mixer() : ((Block.Residual) l.block()).mixer();
                Moe blockMoe = l.block() instanceof Block.Shortcut sc ? sc.moe() : ((Block.Residual) l.block()).moe();
                Optional<String> why = mixer instanceof Block.Part.Attention ? unsupported(blockMoe)
                        : Optional.of("attention experts in a shortcut or residual block");
                if (why.isPresent()) {
                    return why.map(w -> "layer " + l.index() + ": " + w);
                }
                continue;
            }
            if (l.block() instanceof Block.Parallel par) {
                Optional<String> why = par.mixer() instanceof Block.Part.MoePart mix && unsupportedMixer(c, mix.moe()).isPresent()
                        ? unsupportedMixer(c, mix.moe()).map(w -> "mixer (" + w + ")")
                        : !(par.mixer() instanceof Block.Part.Attention || par.mixer() instanceof Block.Part.MoePart) ? Optional.of("mixer")
                        : par.ffn() instanceof Block.Part.MoePart m ? unsupported(m.moe())
                        : par.ffn() instanceof Block.Part.Dense ? Optional.empty() : Optional.of("attention in the FFN slot");
                if (why.isPresent()) {
                    return why.map(w -> "layer " + l.index() + "'s " + w);
                }
                continue;
            }
            if (!(l.block() instanceof Block.PreNorm p)) {
                return Optional.of("layer " + l.index() + "'s " + l.block().getClass().getSimpleName().toLowerCase(Locale.ROOT) + " block");
            }
            if (p.mixer() instanceof Block.Part.MoePart mix && unsupportedMixer(c, mix.moe()).isPresent()) {
                return unsupportedMixer(c, mix.moe()).map(w -> "layer " + l.index() + "'s mixer (" + w + ")");
            }
            if (!(p.mixer() instanceof Block.Part.Attention || p.mixer() instanceof Block.Part.MoePart)) {
                return Optional.of("layer " + l.index() + "'s mixer");
            }
            Optional<String> why = switch (p.ffn()) {
                case Block.Part.Dense d -> Optional.empty();
                case Block.Part.MoePart m -> unsupported(m.moe());
                case Block.Part.Attention a -> Optional.of("attention in the FFN slot");
            };
            if (why.isPresent()) {
                return why.map(w -> "layer " + l.index() + ": " + w);
            }
        }
        return Optional.empty();
    }

    /**
     * Why {@code model} cannot train with its MoE layers' routed FFN experts spread over ranks ({@code moe train --expert-parallel},
     * {@code DeviceModel.useExpertParallel}), naming the layer, or empty when it can: it must run device-resident, have at least one
     * MoE layer of routed FFN experts, and none of LoRA experts (MoLA), latent experts (MoLE) or MoE++ constant experts, which the
     * expert-parallel stage does not run. Attention experts (mixers) stay replicated, as data parallelism keeps them.
     */
    public static Optional<String> expertParallelRefusal(Model model) {
        Optional<String> why = unsupported(model);
        if (why.isPresent()) {
            return Optional.of(model.name() + " does not run device-resident on the GPU (" + why.get() + ")");
        }
        int layers = 0;
        for (Layer l : model.layers()) {
            Moe moe = l.block() instanceof Block.PreNorm p && p.ffn() instanceof Block.Part.MoePart mp ? mp.moe()
                    : l.block() instanceof Block.Parallel par && par.ffn() instanceof Block.Part.MoePart mp ? mp.moe()
                    : l.block() instanceof Block.Shortcut sc ? sc.moe() : l.block() instanceof Block.Residual res ? res.moe() : null;
            if (moe == null) {
                continue;
            }
            for (ExpertGroup g : moe.groups()) {
                if (g.role() != ExpertGroup.Role.ROUTED) {
                    continue;
                }
                if (g.expert() instanceof Expert.Lora) {
                    return Optional.of("layer " + l.index() + "'s MoE has LoRA experts (MoLA), whose shared base and low-rank factors the expert-parallel"
                            + " stage does not run");
                }
                if (g.expert() instanceof Expert.Latent) {
                    return Optional.of("layer " + l.index() + "'s MoE has latent experts (MoLE), which the expert-parallel stage does not run yet");
                }
                if (g.expert() instanceof Expert.Constant) {
                    return Optional.of("layer " + l.index() + "'s MoE has MoE++ constant experts, which the expert-parallel stage does not run");
                }
            }
            layers++;
        }
        if (layers == 0) {
            return Optional.of(model.name() + " has no MoE layer of routed FFN experts (attention experts stay replicated)");
        }
        return Optional.empty();
    }

    /**
     * Why the mixer MoE {@code moe} (attention experts, which the CPU generator takes in pre-norm and parallel blocks only) cannot
     * run device-resident, or empty when it can: routed attention experts (own or group-shared keys and values) under one dropless
     * top-k or soft router without a temperature, whose balancing losses the GPU router computes.
     */
    private static Optional<String> unsupportedMixer(ModelConfig c, Moe moe) {
        if (c.mla().isPresent()) {
            return Optional.of("attention experts beside multi-head latent attention");
        }
        for (ExpertGroup g : moe.groups()) {
            if (g.role() != ExpertGroup.Role.ROUTED || !(g.expert() instanceof Expert.Attention a) || g.sigmoidGate()) {
                return Optional.of("attention experts other than routed ones without a sigmoid gate");
            }
            if (a.headDim() > 256) {
                return Optional.of("attention experts of head_dim above 256");
            }
        }
        Router r = moe.routers().getFirst();
        int k = moaSlots(moe, r);
        if (moe.routers().size() > 1 || k == 0 || k > 32 || moe.routedExperts() > 1024) {
            return Optional.of("attention experts routed other than by one top-k or soft router (k <= 32, at most 1024 experts)");
        }
        if (r.bias().isPresent() || r.groupLimit().isPresent() || r.quotaGroups().isPresent() || r.jitter() != 0 || r.gatingResidual()
                || r.recurrentWidth().isPresent() || r.pregate() || r.temperature().isPresent() || !(r.capacity() instanceof Router.Capacity.Dropless)) {
            return Optional.of("attention experts with an expert bias, groups, jitter, a gating residual, a recurrent router, pre-gating, "
                    + "a temperature or a capacity factor");
        }
        for (Loss loss : moe.losses()) {
            switch (loss) {
                case Loss.Aux a when a.scope() != Loss.Scope.SEQUENCE && r.score() == Router.Score.SOFTMAX -> {}
                case Loss.ZLoss z when r.score() == Router.Score.SOFTMAX -> {}
                case Loss.Entropy h when r.score() == Router.Score.SOFTMAX -> {}
                default -> {
                    return Optional.of("attention experts with the balancing loss " + loss + " and " + r.score().name().toLowerCase(Locale.ROOT)
                            + " scores");
                }
            }
        }
        return Optional.empty();
    }

    /** The slots per token of attention experts' router: k, or (soft) every expert; 0 for other routing. */
    private static int moaSlots(Moe moe, Router r) {
        return r.selection() instanceof Router.Selection.Soft ? moe.routedExperts() : r.selection() instanceof Router.Selection.TopK t ? t.k() : 0;
    }

    private static Optional<String> unsupported(Moe moe) {
        Router r = moe.routers().getFirst();
        List<ExpertGroup> routed = moe.groups().stream().filter(g -> g.role() == ExpertGroup.Role.ROUTED).toList();
        boolean latent = !routed.isEmpty() && routed.getFirst().expert() instanceof Expert.Latent;
        if (moe.routers().size() > 1) {
            // named gates that differ in their weights only: each sequence's logits come from its gate's router
            for (Router g : moe.routers()) {
                if (!unnamed(g).equals(unnamed(r))) {
                    return Optional.of("several named gates that differ beyond their weights");
                }
            }
            if (r.bias().isPresent() || r.pregate() || r.gatingResidual() || r.selection() instanceof Router.Selection.ExpertChoice
                    || !(r.capacity() instanceof Router.Capacity.Dropless)) {
                return Optional.of("several named gates with an expert bias, pre-gating, a gating residual, expert choice or a capacity factor");
            }
        }
        boolean lora = !routed.isEmpty() && routed.getFirst().expert() instanceof Expert.Lora;
        if (lora && (routed.size() > 1 || routed.getFirst().sigmoidGate())) {
            return Optional.of("LoRA experts beside other routed experts");
        }
        if (lora && (r.selection() instanceof Router.Selection.TopP || r.selection() instanceof Router.Selection.ExpertChoice
                || !(r.capacity() instanceof Router.Capacity.Dropless) || moe.routers().size() > 1 || r.pregate() || r.gatingResidual()
                || r.jitter() != 0 || r.recurrentWidth().isPresent())) {
            // the GPU's LoRA layer gives every slot a row: dropless token choice, one router reading the layer's input
            return Optional.of("LoRA experts with top-p, expert choice, a capacity factor, named gates, pre-gating, a gating residual, "
                    + "jitter or a recurrent router");
        }
        if (routed.isEmpty() || !(routed.getFirst().expert() instanceof Expert.FeedForward || latent || lora) || routed.getFirst().sigmoidGate()) {
            return Optional.of("routed experts other than one group of FFN experts or of latent experts, then zero, copy and constant experts, "
                    + "or one group of LoRA experts");
        }
        // the GPU layer scores FFN, then zero, then copy, then constant experts: the router's rows must come in that order
        int rank = 0;
        for (ExpertGroup g : routed.subList(1, routed.size())) {
            int kind = g.expert() instanceof Expert.Zero ? 1 : g.expert() instanceof Expert.Copy ? 2 : g.expert() instanceof Expert.Constant ? 3 : -1;
            if (kind < 0 || kind < rank || g.sigmoidGate()) {
                return Optional.of("routed experts other than one group of FFN experts or of latent experts, then zero, copy and constant "
                        + "experts, or one group of LoRA experts (latent experts beside FFN or other latent experts)");
            }
            if (latent && kind > 1) {
                // the layer's copy and constant experts read the experts' input, which for latent experts is the rank wide
                return Optional.of("latent experts with copy or constant experts");
            }
            rank = kind;
        }
        if (latent && moe.routers().size() > 1) {
            return Optional.of("latent experts with several named gates");
        }
        if (latent && r.jitter() != 0) {
            return Optional.of("latent experts with router jitter");
        }
        if (routed.size() > 1 && !(r.capacity() instanceof Router.Capacity.Dropless)) {
            return Optional.of("a capacity factor with zero, copy or constant experts");
        }
        for (ExpertGroup g : moe.groups()) {
            if (g.role() == ExpertGroup.Role.SHARED && (!(g.expert() instanceof Expert.FeedForward) || g.sigmoidGate())) {
                return Optional.of("shared experts other than FFNs without a sigmoid gate");
            }
        }
        if (slots(moe, r) == 0 || slots(moe, r) > 32 || routed.getFirst().count() > 1024) {
            return Optional.of("routing other than top-k or top-p (k or max_k <= 32, at most 1024 experts)");
        }
        boolean topkFirst = r.score() == Router.Score.SOFTMAX && r.order() == Router.Order.TOPK_THEN_SOFTMAX;
        // top-k then softmax selects and weighs as softmax then top-k renormalised (the CPU class weighs the chosen logits'
        // softmax whatever `normalize` says, and the layer's spec normalises); with a bias, groups or top-p the selection reads
        // the logits themselves
        if (topkFirst && (r.bias().isPresent() || r.groupLimit().isPresent() || r.selection() instanceof Router.Selection.TopP)) {
            return Optional.of("top-k then softmax with an expert bias, expert groups or top-p");
        }
        if (r.groupLimit().isPresent() && r.groupLimit().get().groups() > 32) {
            return Optional.of("group-limited routing over more than 32 groups");
        }
        if (r.selection() instanceof Router.Selection.TopP && (r.bias().isPresent() || r.groupLimit().isPresent() || r.quotaGroups().isPresent())) {
            return Optional.of("top-p with an expert bias or expert groups");
        }
        if (r.temperature().isPresent() && !List.of("none", "tanh", "sigmoid").contains(r.temperature().get().activation().orElse("none"))) {
            return Optional.of("a router activation other than tanh or sigmoid");
        }
        if (r.selection() instanceof Router.Selection.ExpertChoice x) {
            if (routed.size() > 1) {
                return Optional.of("expert choice with zero or copy experts");
            }
            if (Double.parseDouble(Float.toString((float) x.factor())) != x.factor()) {
                return Optional.of("an expert-choice factor of more digits than a float holds (" + x.factor() + ")");
            }
        } else if (r.capacity() instanceof Router.Capacity.Factor cf) {
            if (cf.factor() <= 0 || Double.parseDouble(Float.toString((float) cf.factor())) != cf.factor()) {
                return Optional.of("a capacity factor of more digits than a float holds (" + cf.factor() + ")");
            }
        }
        if (moe.losses().stream().filter(x -> x instanceof Loss.Aux).count() > 1) {
            // the layer takes one aux gradient: the CPU class's second aux loss (another scope) would be left out
            return Optional.of("more than one aux loss");
        }
        for (Loss loss : moe.losses()) {
            switch (loss) {
                // sigmoid scores: the aux loss sees them normalised per token, as the CPU class does (router_backward_balance
                // takes its gradient back through that normalisation); LoRA's layer has the softmax micro- or global-batch path only
                case Loss.Aux a when a.scope() == Loss.Scope.SEQUENCE && a.tau() != 1.0 && routed.size() > 1 -> {
                    return Optional.of("a sequence-wise aux loss with tau");
                }
                case Loss.Aux a when !lora || (a.scope() != Loss.Scope.SEQUENCE && r.score() == Router.Score.SOFTMAX) -> {}
                case Loss.ZLoss z when r.score() == Router.Score.SOFTMAX -> {}
                case Loss.Entropy h when r.score() == Router.Score.SOFTMAX -> {}
                default -> {
                    return Optional.of("the balancing loss " + loss + " with " + r.score().name().toLowerCase(Locale.ROOT) + " scores"
                            + (lora ? " on LoRA experts" : ""));
                }
            }
        }
        return Optional.empty();
    }

    private static Router unnamed(Router r) {
        return new Router(Optional.empty(), r.score(), r.order(), r.selection(), r.normalize(), r.scale(), r.bias(), r.groupLimit(), r.quotaGroups(),
                r.jitter(), r.temperature(), r.gatingResidual(), r.recurrentWidth(), r.pregate(), r.capacity());
    }

    /** The slots per token: k, top-p's max_k, or (expert choice) every routed expert; 0 for other routing. */
    private static int slots(Moe moe, Router r) {
        return switch (r.selection()) {
            case Router.Selection.TopK t -> t.k();
            case Router.Selection.TopP t -> t.maxK();
            // expert choice: every token ranks every expert
            case Router.Selection.ExpertChoice x -> moe.routedExperts();
            default -> 0;
        };
    }

    /** The GPU layer's options for a router and its losses (SwiGLU experts, dropless). */
    private static MoeKernelSource.Options options(Moe moe, Router r) {
        MoeKernelSource.Options o = MoeKernelSource.Options.NONE;
        Ffn ffn = routedFfn(moe);
        o = o.withActivation(switch (ffn.activation()) {
            case SWIGLU -> MoeKernelSource.ExpertActivation.SWIGLU;
            case GEGLU -> MoeKernelSource.ExpertActivation.GEGLU;
            case RELU -> MoeKernelSource.ExpertActivation.RELU;
            case GELU -> MoeKernelSource.ExpertActivation.GELU;
        });
        if (r.selection() instanceof Router.Selection.ExpertChoice x) {
            o = o.withExpertChoice((float) x.factor());
        } else if (r.capacity() instanceof Router.Capacity.Factor cf) {
            o = o.withCapacity((float) cf.factor(), switch (cf.drop()) {
                case PROBABILITY -> MoeKernelSource.Drop.PROBABILITY;
                case POSITION -> MoeKernelSource.Drop.POSITION;
                case RANDOM -> MoeKernelSource.Drop.RANDOM;
            });
        }
        if (r.selection() instanceof Router.Selection.TopP tp) {
            o = o.withTopP((float) tp.p());
        }
        if (r.quotaGroups().isPresent()) {
            o = o.withQuotaGroups(r.quotaGroups().get());
        }
        if (r.groupLimit().isPresent()) {
            o = o.withGroupLimit(r.groupLimit().get().groups(), r.groupLimit().get().top());
        }
        if (r.temperature().isPresent()) {
            o = o.withTemperature(switch (r.temperature().get().activation().orElse("none")) {
                case "tanh" -> MoeKernelSource.LogitActivation.TANH;
                case "sigmoid" -> MoeKernelSource.LogitActivation.SIGMOID;
                default -> MoeKernelSource.LogitActivation.NONE;
            });
        }
        if (entropy(moe).isPresent()) {
            o = o.withEntropy();
        }
        return o;
    }

    /** The routed experts' FFN: the first routed group's, a latent group's (which reads the latent vector), or a LoRA group's base. */
    private static Ffn routedFfn(Moe moe) {
        return switch (moe.groups().stream().filter(g -> g.role() == ExpertGroup.Role.ROUTED).findFirst().orElseThrow().expert()) {
            case Expert.FeedForward f -> f.ffn();
            case Expert.Latent lat -> lat.ffn();
            case Expert.Lora lo -> lo.base();
            default -> throw new IllegalStateException("routed experts of no FFN");
        };
    }

    private static Optional<Loss.Entropy> entropy(Moe moe) {
        return moe.losses().stream().filter(x -> x instanceof Loss.Entropy h && h.coef() > 0).map(x -> (Loss.Entropy) x).findFirst();
    }

    /** The options as Java source for the generated constructor. */
    private static CodeBlock optionsCode(MoeKernelSource.Options o) {
        ClassName opts = ClassName.get(MoeKernelSource.Options.class);
        CodeBlock.Builder b = CodeBlock.builder().add("$T.NONE", opts);
        if (o.activation() != MoeKernelSource.ExpertActivation.SWIGLU) {
            b.add(".withActivation($T.$L)", EXPERT_ACTIVATION, o.activation().name());
        }
        if (o.capacityFactor() > 0) {
            b.add(".withCapacity($Lf, $T.$L)", Float.toString(o.capacityFactor()), DROP, o.drop().name());
        }
        if (o.topP() > 0) {
            b.add(".withTopP($Lf)", o.topP());
        }
        if (o.quotaGroups() > 0) {
            b.add(".withQuotaGroups($L)", o.quotaGroups());
        }
        if (o.limitGroups() > 0) {
            b.add(".withGroupLimit($L, $L)", o.limitGroups(), o.limitTop());
        }
        if (o.temperature()) {
            b.add(".withTemperature($T.$L)", ClassName.get(MoeKernelSource.LogitActivation.class), o.logitActivation().name());
        }
        if (o.entropy()) {
            b.add(".withEntropy()");
        }
        if (o.expertChoice() > 0) {
            b.add(".withExpertChoice($Lf)", Float.toString(o.expertChoice()));
        }
        if (o.gatingResidual()) {
            b.add(".withGatingResidual()");
        }
        if (o.extraLogits()) {
            b.add(".withExtraLogits()");
        }
        return b.build();
    }

    /** The class name the device twin of {@code model} gets. */
    public static String className(Model model) {
        return javaType(model.name()) + SUFFIX;
    }

    /** The device-resident class of {@code model}; throws IllegalArgumentException when {@link #unsupported} is not empty. */
    public static JavaFile generate(Model model, String packageName, String sourceName) {
        Optional<String> why = unsupported(model);
        if (why.isPresent()) {
            throw new IllegalArgumentException(model.name() + " cannot run device-resident: " + why.get());
        }
        TypeSpec type = new CudaModelGenerator(model).type(sourceName);
        return JavaFile.builder(packageName, type).skipJavaLangImports(true)
                .addFileComment("Generated by moe from $L for the CUDA backend. Do not edit: change the .moe file and regenerate.", sourceName)
                .indent("    ").build();
    }

    // ---- names ----

    private static String javaType(String modelName) {
        String s = modelName.replaceAll("[^A-Za-z0-9_]", "_");
        return Character.isJavaIdentifierStart(s.charAt(0)) ? Character.toUpperCase(s.charAt(0)) + s.substring(1) : "M" + s;
    }

    /** {@code layers.0.attn.q} → {@code l0AttnQ}. */
    static String field(String param) {
        StringBuilder b = new StringBuilder();
        String[] parts = param.split("[._]");
        for (int i = 0; i < parts.length; i++) {
            String p = parts[i];
            if (p.isEmpty()) {
                continue;
            }
            if (p.equals("layers") && i + 1 < parts.length) {
                b.append('l').append(parts[++i]);
                continue;
            }
            b.append(b.isEmpty() ? p : Character.toUpperCase(p.charAt(0)) + p.substring(1));
        }
        return b.toString();
    }

    private String need(String param) {
        if (!paramNames.contains(param)) {
            throw new IllegalStateException("the IR of " + model.name() + " has no parameter " + param);
        }
        return param;
    }

    // ---- the class ----

    /**
     * An MoE layer: FFN experts (then zero, copy and constant experts), MoLE's latent experts ({@code latentRank} and
     * {@code latentDown}, the rank and the shared down-projection's parameter; 0 and null otherwise), or MoLA's LoRA experts
     * ({@code lora}, with {@code loraGroup} the index of their group among the MoE's, which names the frozen base; hidden and
     * activation are the base's), or ({@code mixer}) the layer's mixer of attention experts, whose routing state the class keeps
     * as an MoE layer's (a {@link CudaAttentionRouter}; no FFN, hidden 0).
     */
    private record MoeInfo(Layer layer, Moe moe, Router router, int experts, int zero, int copy, int constant, int k, int hidden, List<Ffn> shared,
            Ffn.Activation activation, int latentRank, String latentDown, Expert.Lora lora, int loraGroup, boolean mixer) {
        int index() {
            return layer.index();
        }

        /** What names the layer's routing state ({@code moe<id>}, {@code counts<id>}, ...): the index, or Attn and the index for a mixer. */
        String id() {
            return mixer ? "Attn" + index() : Integer.toString(index());
        }

        boolean latent() {
            return latentRank > 0;
        }

        /** The frozen base FFN's parameter prefix of a LoRA layer: {@code layers.i.moe.group<g>.base}. */
        String loraBase() {
            return "layers." + index() + ".moe.group" + loraGroup + ".base";
        }

        /** Every expert the router scores: FFN, then zero, then copy, then constant experts. */
        int routed() {
            return experts + zero + copy + constant;
        }

        /** The parameter prefix of its router: {@code layers.i.moe.router}, or a mixer's {@code layers.i.attn_moe.router}. */
        String routerPrefix() {
            return "layers." + index() + (mixer ? ".attn_moe" : ".moe") + ".router";
        }

        /** The capacity factor of a training forward, or null when dropless. */
        Router.Capacity.Factor capacity() {
            return router.capacity() instanceof Router.Capacity.Factor cf && !(router.selection() instanceof Router.Selection.ExpertChoice) ? cf : null;
        }
    }

    private final List<String> pointerParams = new ArrayList<>();
    /** MoE++ gating residuals: MoE layer → the previous MoE layer whose logits its router adds. */
    private final java.util.Map<Integer, Integer> residualFrom = new java.util.LinkedHashMap<>();
    /** The width of the GRU that recurrent routers share (RMoE), or 0 when no router is recurrent. */
    private int gruWidth;
    private final List<String> buffers = new ArrayList<>();
    private final List<String> bufferSizes = new ArrayList<>();

    private String pointer(String param) {
        need(param);
        if (!pointerParams.contains(param)) {
            pointerParams.add(param);
        }
        return field(param);
    }

    private String grad(String param) {
        pointer(param);
        return field(param) + "Grad";
    }

    private String buffer(String name, String floatsPerRow) {
        if (!buffers.contains(name)) {
            buffers.add(name);
            bufferSizes.add(floatsPerRow);
        }
        return name;
    }

    private Optional<MoeInfo> moeOf(Layer l) {
        Moe moe = l.block() instanceof Block.PreNorm p && p.ffn() instanceof Block.Part.MoePart mp ? mp.moe()
                : l.block() instanceof Block.Parallel par && par.ffn() instanceof Block.Part.MoePart mp ? mp.moe()
                : l.block() instanceof Block.Shortcut sc ? sc.moe() : l.block() instanceof Block.Residual res ? res.moe() : null;
        if (moe != null) {
            Moe m = moe;
            ExpertGroup routed = m.groups().stream().filter(g -> g.role() == ExpertGroup.Role.ROUTED).findFirst().orElseThrow();
            Ffn routedFfn = routedFfn(m);
            int hidden = routedFfn.hidden();
            // latent experts: the group's down-projection is named after the group's place among all the MoE's groups
            int latentRank = routed.expert() instanceof Expert.Latent lat ? lat.rank() : 0;
            String latentDown = latentRank > 0 ? need("layers." + l.index() + ".moe.group" + m.groups().indexOf(routed) + ".latent_down") : null;
            Expert.Lora lora = routed.expert() instanceof Expert.Lora lo ? lo : null;
            // the CPU class names a LoRA group's base after the group's index among all of the MoE's groups
            int loraGroup = m.groups().indexOf(routed);
            List<Ffn> shared = new ArrayList<>();
            for (ExpertGroup g : m.groups()) {
                if (g.role() == ExpertGroup.Role.SHARED) {
                    for (int s = 0; s < g.count(); s++) {
                        shared.add(((Expert.FeedForward) g.expert()).ffn());
                    }
                }
            }
            Router r = m.routers().getFirst();
            int zero = 0, copy = 0, constant = 0;
            for (ExpertGroup g : m.groups()) {
                if (g.role() == ExpertGroup.Role.ROUTED && g.expert() instanceof Expert.Zero) {
                    zero += g.count();
                } else if (g.role() == ExpertGroup.Role.ROUTED && g.expert() instanceof Expert.Copy) {
                    copy += g.count();
                } else if (g.role() == ExpertGroup.Role.ROUTED && g.expert() instanceof Expert.Constant) {
                    constant += g.count();
                }
            }
            return Optional.of(new MoeInfo(l, m, r, routed.count(), zero, copy, constant, slots(moe, r), hidden, shared, routedFfn.activation(),
                    latentRank, latentDown, lora, loraGroup, false));
        }
        return Optional.empty();
    }

    /** The layer's mixer MoE of attention experts, if its mixer is one (pre-norm and parallel blocks). */
    private static Optional<MoeInfo> mixerOf(Layer l) {
        Block.Part mixer = l.block() instanceof Block.PreNorm p ? p.mixer() : l.block() instanceof Block.Parallel par ? par.mixer() : null;
        if (!(mixer instanceof Block.Part.MoePart mp)) {
            return Optional.empty();
        }
        Router r = mp.moe().routers().getFirst();
        return Optional.of(new MoeInfo(l, mp.moe(), r, mp.moe().routedExperts(), 0, 0, 0, moaSlots(mp.moe(), r), 0, List.of(), Ffn.Activation.SWIGLU, 0,
                null, null, 0, true));
    }

    private TypeSpec type(String sourceName) {
        String name = className(model);
        TypeSpec.Builder t = TypeSpec.classBuilder(name).addModifiers(Modifier.PUBLIC, Modifier.FINAL).superclass(DEVICE_MODEL)
                .addJavadoc("$L on the GPU: the device-resident twin of the generated $L (same parameters, same results within\n"
                        + "floating-point tolerance), from $L.\n", model.name(), javaType(model.name()), sourceName);
        constant(t, "VOCAB", cfg.vocab());
        constant(t, "DIM", cfg.dim());
        constant(t, "HEADS", cfg.heads());
        constant(t, "KV_HEADS", cfg.kvHeads());
        constant(t, "HEAD_DIM", cfg.headDim());
        constant(t, "Q_DIM", cfg.heads() * cfg.headDim());
        constant(t, "KV_DIM", cfg.kvHeads() * cfg.headDim());
        constant(t, "ROTARY_DIMS", cfg.position().rotaryDims(cfg.headDim()));
        constant(t, "WINDOW", cfg.slidingWindow());
        t.addField(FieldSpec.builder(TypeName.FLOAT, "EPS", Modifier.STATIC, Modifier.FINAL).initializer("$Lf", (float) cfg.norm().eps()).build());
        t.addField(FieldSpec.builder(TypeName.FLOAT, "THETA", Modifier.STATIC, Modifier.FINAL).initializer("$Lf", (float) cfg.position().theta())
                .build());
        t.addField(FieldSpec.builder(TypeName.BOOLEAN, "CAUSAL", Modifier.STATIC, Modifier.FINAL).initializer("$L", cfg.causal()).build());
        cfg.mla().ifPresent(m -> {
            constant(t, "Q_RANK", m.qRank());
            constant(t, "KV_RANK", m.kvRank());
            constant(t, "NOPE_DIM", m.nopeDim());
            constant(t, "ROPE_DIM", m.ropeDim());
            constant(t, "V_DIM", m.vDim());
            constant(t, "KVB_DIM", cfg.heads() * (m.nopeDim() + m.vDim()));
            constant(t, "VO_DIM", cfg.heads() * m.vDim());
            t.addField(FieldSpec.builder(TypeName.FLOAT, "MLA_EPS", Modifier.STATIC, Modifier.FINAL).initializer("$Lf", (float) m.eps()).build());
        });

        // in layer order, a layer's mixer of attention experts before its FFN's MoE (the CPU class's routed states)
        List<MoeInfo> moes = model.layers().stream().flatMap(l -> java.util.stream.Stream.concat(mixerOf(l).stream(), moeOf(l).stream())).toList();
        List<MoeInfo> ffnMoes = moes.stream().filter(m -> !m.mixer()).toList();
        // RMoE: one GRU shared by every recurrent router (the CPU generator refuses recurrent routers of different widths)
        gruWidth = moes.stream().flatMap(m -> m.router().recurrentWidth().stream()).findFirst().orElse(0);
        if (gruWidth > 0) {
            constant(t, "GRU_WIDTH", gruWidth);
        }
        // MoE++ gating residuals, as the CPU class: a layer with a router.residual parameter adds the previous MoE layer's logits
        for (int j = 1; j < ffnMoes.size(); j++) {
            if (paramNames.contains(ffnMoes.get(j).routerPrefix() + ".residual")) {
                residualFrom.put(ffnMoes.get(j).index(), ffnMoes.get(j - 1).index());
            }
        }
        int maxHidden = 1;
        for (Layer l : model.layers()) {
            if (l.block() instanceof Block.Shortcut sc) {
                maxHidden = Math.max(maxHidden, sc.dense().hidden());
            }
            if (l.block() instanceof Block.Residual res) {
                maxHidden = Math.max(maxHidden, res.dense().hidden());
            }
            if (l.block() instanceof Block.PreNorm p && p.ffn() instanceof Block.Part.Dense d) {
                maxHidden = Math.max(maxHidden, d.ffn().hidden());
            }
            if (l.block() instanceof Block.Parallel par && par.ffn() instanceof Block.Part.Dense d) {
                maxHidden = Math.max(maxHidden, d.ffn().hidden());
            }
        }
        for (MoeInfo m : moes) {
            for (Ffn s : m.shared()) {
                maxHidden = Math.max(maxHidden, s.hidden());
            }
        }

        // forward, backward (these register the pointers and buffers they use)
        CodeBlock.Builder fwd = CodeBlock.builder();
        String embed = pointer("embed.weight");
        fwd.addStatement("ops.embedding(tokens, $L, $L, rows, DIM)", embed, buffer("stream", "DIM"));
        boolean pregate = moes.stream().anyMatch(m -> m.router().pregate());
        if (pregate) {
            fwd.add("// Read-ME: pre-gating routers read the embeddings\n");
            fwd.addStatement("copy($L, stream, (long) rows * DIM)", buffer("embedded", "DIM"));
        }
        if (gruWidth > 0) {
            fwd.add("// RMoE: the routers' GRU state starts at 0\n");
            fwd.addStatement("zero($L, (long) rows * GRU_WIDTH)", buffer("gruState", "GRU_WIDTH"));
        }
        for (Layer l : model.layers()) {
            fwd.addStatement("forwardLayer$L()", l.index());
        }
        fwd.addStatement("mark($S)", "forward: embedding");
        fwd.add("// final norm and head\n");
        fwd.addStatement("copy($L, stream, (long) rows * DIM)", buffer("finalInput", "DIM"));
        String head = cfg.tieEmbeddings() ? embed : pointer("head.weight");
        norm(fwd, "final_norm", "finalInput", buffer("finalNormed", "DIM"), "final");
        fwd.addStatement("linear(finalNormed, $L, $L, rows, DIM, VOCAB, false)", head, buffer("logitsBuf", "VOCAB"));
        fwd.addStatement("lastCrossEntropy = ops.crossEntropy(logitsBuf, targets, $L, rows, VOCAB)", buffer("dLogits", "VOCAB"));
        fwd.addStatement("double loss = lastCrossEntropy");
        for (MoeInfo m : moes) {
            fwd.addStatement("loss += balance$L", m.id());
        }
        if (jitters(moes)) {
            fwd.beginControlFlow("if (counting)").addStatement("microBatch++").endControlFlow();
        }
        fwd.addStatement("return loss");

        CodeBlock.Builder bwd = CodeBlock.builder();
        bwd.add("// dLogits holds the gradient of the mean cross-entropy; scale it for gradient accumulation\n");
        bwd.beginControlFlow("if (scale != 1f)").addStatement("ops.scaleInPlace(dLogits, scale, (long) rows * VOCAB)").endControlFlow();
        bwd.addStatement("zero($L, (long) rows * DIM)", buffer("dx", "DIM"));
        if (pregate) {
            bwd.addStatement("zero($L, (long) rows * DIM)", buffer("dEmbedded", "DIM"));
        }
        if (gruWidth > 0) {
            bwd.add("// RMoE: the gradient of the GRU state, carried back from each recurrent layer to the one before\n");
            bwd.addStatement("zero($L, (long) rows * GRU_WIDTH)", buffer("dGruState", "GRU_WIDTH"));
        }
        bwd.addStatement("linearBackward(finalNormed, $L, dLogits, $L, $L, rows, DIM, VOCAB, false)", head, buffer("dNormed", "DIM"),
                cfg.tieEmbeddings() ? grad("embed.weight") : grad("head.weight"));
        normBackward(bwd, "final_norm", "finalInput", "final");
        bwd.addStatement("mark($S)", "backward: head and loss");
        for (int i = model.layers().size() - 1; i >= 0; i--) {
            bwd.addStatement("backwardLayer$L(scale)", model.layers().get(i).index());
            bwd.addStatement("layerGradientsDone($L)", model.layers().get(i).index());
        }
        if (pregate) {
            bwd.add("// the pre-gating routers' gradient joins the embeddings'\n");
            bwd.addStatement("ops.addInPlace(dx, dEmbedded, (long) rows * DIM)");
        }
        bwd.addStatement("ops.embeddingBackward(tokens, dx, $L, rows, DIM)", grad("embed.weight"));

        List<MethodSpec> layerMethods = new ArrayList<>();
        for (Layer l : model.layers()) {
            layerMethods.addAll(layerMethods(l, moeOf(l)));
        }
        // shared scratch (registered after the layers so their sizes are known)
        buffer("dAct", Integer.toString(maxHidden));
        buffer("dGate", Integer.toString(maxHidden));
        buffer("dUp", Integer.toString(maxHidden));

        // fields: weight and gradient pointers, MoE layers, host-side routing state, buffers
        for (String p : pointerParams) {
            t.addField(TypeName.LONG, field(p), Modifier.PRIVATE, Modifier.FINAL);
            t.addField(TypeName.LONG, field(p) + "Grad", Modifier.PRIVATE, Modifier.FINAL);
        }
        for (MoeInfo m : moes) {
            String l = m.id();
            t.addField(m.mixer() ? MOA_ROUTER : m.lora() != null ? LORA_LAYER : MOE_LAYER, "moe" + l, Modifier.PRIVATE, Modifier.FINAL);
            t.addField(FieldSpec.builder(int[].class, "counts" + l, Modifier.PRIVATE).initializer("new int[$L]", m.routed()).build());
            t.addField(FieldSpec.builder(long[].class, "stepCounts" + l, Modifier.PRIVATE, Modifier.FINAL).initializer("new long[$L]", m.routed())
                    .build());
            t.addField(TypeName.LONG, "stepSlots" + l, Modifier.PRIVATE);
            t.addField(FieldSpec.builder(TypeName.LONG, "slots" + l, Modifier.PRIVATE)
                    .addJavadoc("The last forward's dispatched slots: rows · k, less top-p's unused slots and the slots dropped over capacity.\n").build());
            t.addField(TypeName.DOUBLE, "balance" + l, Modifier.PRIVATE);
            t.addField(float[].class, "aux" + l, Modifier.PRIVATE);
            if (m.router().jitter() != 0) {
                t.addField(FieldSpec.builder(TypeName.BOOLEAN, "jitterOn" + l, Modifier.PRIVATE)
                        .addJavadoc("Whether the last forward jittered this router's input (a training forward).\n").build());
            }
        }
        for (String b : buffers) {
            t.addField(TypeName.LONG, b, Modifier.PRIVATE);
        }

        // constructor
        CodeBlock.Builder ctor = CodeBlock.builder();
        ctor.addStatement("super(ctx, host, PLACED_FIRST)");
        for (String p : pointerParams) {
            ctor.addStatement("$L = w.value($S)", field(p), p);
            ctor.addStatement("$LGrad = w.grad($S)", field(p), p);
        }
        List<String> placed = new ArrayList<>();
        for (MoeInfo m : moes) {
            if (m.mixer()) {
                attentionRouter(ctor, m);
                continue;
            }
            int l = m.index();
            String pre = "layers." + l + ".moe.";
            if (m.lora() != null) {
                loraLayer(ctor, m);
                continue;
            }
            // the layer's w13: per expert its gate then up rows ([E, 2F, D]), or its up rows only when ungated ([E, F, D])
            boolean gated = m.activation().gated();
            for (int e = 0; e < m.experts(); e++) {
                if (gated) {
                    placed.add(need(pre + "experts." + e + ".gate"));
                }
                placed.add(need(pre + "experts." + e + ".up"));
            }
            for (int e = 0; e < m.experts(); e++) {
                placed.add(need(pre + "experts." + e + ".down"));
            }
            Router r = m.router();
            String bias = pre + "router.expert_bias";
            boolean hasBias = r.bias().isPresent();
            String w13 = pre + "experts.0." + (gated ? "gate" : "up");
            MoeKernelSource.Options options = options(m.moe(), r);
            if (residualFrom.containsKey(l) || residualFrom.containsValue(l)) {
                options = options.withGatingResidual();
            }
            if (r.recurrentWidth().isPresent()) {
                // RMoE: the generated code runs the GRU and hands the layer h · gru_outᵀ as extra logits
                options = options.withExtraLogits();
            }
            CodeBlock constants = m.constant() > 0 ? CodeBlock.of("$L, ", m.constant()) : CodeBlock.of("");
            // latent experts read the rank-wide latent vector (w13 [E, GW, rank]); the router reads the layer's input
            CodeBlock expertIn = m.latent() ? CodeBlock.of(".withExpertIn($L)", m.latentRank()) : CodeBlock.of("");
            ctor.addStatement("moe$L = $T.onExternalWeights(ctx, new $T(DIM, $L, $L, $L, $L, $L$L, $T.$L, $L, $Lf, $L, ctx.expertPrecision, $L)$L, new $T(w.value($S), $L, "
                    + "w.value($S), w.value($S), w.grad($S), w.grad($S), w.grad($S)))", l, MOE_LAYER, SPEC, m.hidden(), m.experts(), m.zero(), m.copy(), constants,
                    m.k(), SCORE, r.score().name(), r.normalize() || r.order() == Router.Order.TOPK_THEN_SOFTMAX, (float) r.scale(), hasBias,
                    optionsCode(options), expertIn, EXTERNAL, routerParam(m), hasBias ? CodeBlock.of("w.value($S)", need(bias)) : "0L", w13,
                    pre + "experts.0.down", routerParam(m), w13, pre + "experts.0.down");
            if (m.moe().routers().size() > 1) {
                List<String> gates = m.moe().routers().stream().map(g -> need(pre + "router." + g.name().orElseThrow() + ".weight")).toList();
                ctor.addStatement("moe$L.setGates(new long[] {$L}, new long[] {$L})", l,
                        String.join(", ", gates.stream().map(g -> "w.value(\"" + g + "\")").toList()),
                        String.join(", ", gates.stream().map(g -> "w.grad(\"" + g + "\")").toList()));
            }
            if (m.constant() > 0) {
                // MoE++ constant experts (router rows after the copy experts'): vectors [C, D] and mix weights [C, 2, D], each contiguous
                int first = m.experts() + m.zero() + m.copy();
                for (int c = 0; c < m.constant(); c++) {
                    placed.add(need(pre + "experts." + (first + c) + ".vector"));
                }
                for (int c = 0; c < m.constant(); c++) {
                    placed.add(need(pre + "experts." + (first + c) + ".mix"));
                }
                String v = pre + "experts." + first + ".vector", mx = pre + "experts." + first + ".mix";
                ctor.addStatement("moe$L.setConstantExperts(w.value($S), w.value($S), w.grad($S), w.grad($S))", l, v, mx, v, mx);
            }
        }
        for (var res : residualFrom.entrySet()) {
            String g = need("layers." + res.getKey() + ".moe.router.residual");
            ctor.add("// MoE++ gating residual: layer $L's router logits add layer $L's through $L\n", res.getKey(), res.getValue(), g);
            ctor.addStatement("moe$L.setResidualFrom(moe$L, w.value($S), w.grad($S))", res.getKey(), res.getValue(), g, g);
        }
        t.addField(FieldSpec.builder(ParameterizedTypeName.get(List.class, String.class), "PLACED_FIRST", Modifier.PRIVATE, Modifier.STATIC,
                Modifier.FINAL).initializer("$L", placedList(placed)).build());
        t.addMethod(MethodSpec.constructorBuilder().addModifiers(Modifier.PUBLIC)
                .addJavadoc("The GPU twin of {@code host} (the CPU-generated class of the same model), on {@code ctx}'s device.\n")
                .addParameter(CudaContext.class, "ctx").addParameter(TrainableModel.class, "host").addCode(ctor.build()).build());

        // activations
        CodeBlock.Builder alloc = CodeBlock.builder();
        for (int i = 0; i < buffers.size(); i++) {
            alloc.addStatement("$L = allocate((long) rows * $L)", buffers.get(i), bufferSizes.get(i));
        }
        t.addMethod(MethodSpec.methodBuilder("allocateActivations").addAnnotation(Override.class).addModifiers(Modifier.PROTECTED)
                .addParameter(TypeName.INT, "rows").addCode(alloc.build()).build());
        t.addMethod(MethodSpec.methodBuilder("forwardPass").addAnnotation(Override.class).addModifiers(Modifier.PROTECTED).returns(TypeName.DOUBLE)
                .addCode(fwd.build()).build());
        t.addMethod(MethodSpec.methodBuilder("backwardPass").addAnnotation(Override.class).addModifiers(Modifier.PROTECTED)
                .addParameter(TypeName.FLOAT, "scale").addCode(bwd.build()).build());
        t.addMethod(MethodSpec.methodBuilder("logits").addAnnotation(Override.class).addModifiers(Modifier.PROTECTED).returns(TypeName.LONG)
                .addStatement("return logitsBuf").build());
        t.addMethods(layerMethods);
        // the MoE layers expert parallelism may spread (DeviceModel.useExpertParallel): routed FFN experts, not LoRA or attention ones
        CodeBlock.Builder el = CodeBlock.builder().addStatement("$T<Integer, $T> layers = new $T<>()", java.util.SortedMap.class, MOE_LAYER,
                java.util.TreeMap.class);
        for (MoeInfo m : moes) {
            if (!m.mixer() && m.lora() == null) {
                el.addStatement("layers.put($L, moe$L)", m.index(), m.index());
            }
        }
        t.addMethod(MethodSpec.methodBuilder("expertLayers").addAnnotation(Override.class).addModifiers(Modifier.PROTECTED)
                .returns(ParameterizedTypeName.get(ClassName.get(java.util.SortedMap.class), ClassName.get(Integer.class), MOE_LAYER))
                .addCode(el.addStatement("return layers").build()).build());
        routingMethods(t, moes);
        return t.build();
    }

    /**
     * The constructor's statement for MoLA's LoRA experts: a {@link CudaLoraMoeLayer} on the arena's router, frozen base and
     * low-rank factors, routed by the layer's own router kernels (fp32, whatever the expert precision).
     */
    private void loraLayer(CodeBlock.Builder ctor, MoeInfo m) {
        int l = m.index();
        String pre = "layers." + l + ".moe.";
        Router r = m.router();
        String bias = pre + "router.expert_bias";
        boolean hasBias = r.bias().isPresent();
        String router = routerParam(m);
        List<String> projections = m.activation().gated() ? List.of("gate", "up", "down") : List.of("up", "down");
        List<CodeBlock> args = new ArrayList<>();
        for (String proj : List.of("gate", "up", "down")) {
            if (!projections.contains(proj)) {
                args.add(CodeBlock.of("null"));
                continue;
            }
            need(m.loraBase() + "." + proj);
            for (int e = 0; e < m.experts(); e++) {
                need(pre + "experts." + e + "." + proj + "_a");
                need(pre + "experts." + e + "." + proj + "_b");
            }
            args.add(CodeBlock.of("loraProjection($S, $S, $L, $S)", m.loraBase() + "." + proj, pre + "experts.", m.experts(), proj));
        }
        Expert.Lora lo = m.lora();
        ctor.add("// MoLA: $L x $L, fp32\n", m.experts(), lo.describe());
        ctor.addStatement("moe$L = new $T(ctx, new $T(DIM, $L, $L, 0, 0, $L, $T.$L, $L, $Lf, $L, $T.FP32, $L), $L, $Lf, new $T(w.value($S), "
                + "w.grad($S), $L, $L, $L, $L))", l, LORA_LAYER, SPEC, m.hidden(), m.experts(), m.k(), SCORE, r.score().name(),
                r.normalize() || r.order() == Router.Order.TOPK_THEN_SOFTMAX, (float) r.scale(), hasBias,
                ClassName.get(MoeKernelSource.Precision.class), optionsCode(options(m.moe(), r)), lo.rank(), (float) (lo.alpha() / lo.rank()), ClassName.get(CudaLoraMoeLayer.Weights.class), router,
                router, hasBias ? CodeBlock.of("w.value($S)", need(bias)) : "0L", args.get(0), args.get(1), args.get(2));
    }

    private static CodeBlock placedList(List<String> names) {
        if (names.isEmpty()) {
            return CodeBlock.of("$T.of()", List.class);
        }
        CodeBlock.Builder b = CodeBlock.builder().add("$T.of(", List.class);
        for (int i = 0; i < names.size(); i++) {
            b.add(i == 0 ? "$S" : ", $S", names.get(i));
        }
        return b.add(")").build();
    }

    private static void constant(TypeSpec.Builder t, String name, int value) {
        t.addField(FieldSpec.builder(TypeName.INT, name, Modifier.STATIC, Modifier.FINAL).initializer("$L", value).build());
    }

    /** The runtime activation of an FFN: SiLU for SwiGLU, GELU (tanh form) for GEGLU and GELU, ReLU. */
    private static CodeBlock activation(Ffn.Activation a) {
        return CodeBlock.of("$T.$L", ACTIVATION, switch (a) {
            case SWIGLU -> "SILU";
            case GEGLU, GELU -> "GELU";
            case RELU -> "RELU";
        });
    }

    private boolean layerNorm() {
        return cfg.norm().kind() == ModelConfig.NormKind.LAYER;
    }

    /**
     * {@code out = norm(in)} with the weights of {@code prefix} ({@code layers.0.attn_norm}, ...): RMSNorm, or LayerNorm with
     * its bias; the statistics go to {@code <stats>Rstd} (and {@code <stats>Mean}) for the backward.
     */
    private void norm(CodeBlock.Builder f, String prefix, String in, String out, String stats) {
        String w = pointer(prefix + ".weight"), rstd = buffer(stats + "Rstd", "1");
        if (layerNorm()) {
            f.addStatement("ops.layerNorm($L, $L, $L, $L, $L, $L, rows, DIM, EPS)", in, w, normBias(prefix).map(this::pointer).orElse("0L"), out,
                    buffer(stats + "Mean", "1"), rstd);
        } else {
            f.addStatement("ops.rmsNorm($L, $L, $L, $L, rows, DIM, EPS)", in, w, out, rstd);
        }
    }

    /** The backward of {@link #norm}: {@code dx += } the input gradient of {@code dNormed}, and the weight (and bias) gradients. */
    private void normBackward(CodeBlock.Builder b, String prefix, String in, String stats) {
        String w = pointer(prefix + ".weight");
        if (layerNorm()) {
            b.addStatement("ops.layerNormBackward($L, $L, $L, $L, dNormed, dx, $L, $L, rows, DIM)", in, w, stats + "Mean", stats + "Rstd",
                    grad(prefix + ".weight"), normBias(prefix).map(this::grad).orElse("0L"));
        } else {
            b.addStatement("ops.rmsNormBackward($L, $L, $L, dNormed, dx, $L, rows, DIM)", in, w, stats + "Rstd", grad(prefix + ".weight"));
        }
    }

    private Optional<String> normBias(String prefix) {
        return Optional.of(prefix + ".bias").filter(paramNames::contains);
    }

    private List<MethodSpec> layerMethods(Layer l, Optional<MoeInfo> moe) {
        int i = l.index();
        String p = "layers." + i + ".";
        CodeBlock.Builder f = CodeBlock.builder();
        CodeBlock.Builder b = CodeBlock.builder();
        if (l.block() instanceof Block.Shortcut sc) {
            shortcut(f, b, i, sc, moe.orElseThrow());
        } else if (l.block() instanceof Block.Residual res) {
            residual(f, b, i, res, moe.orElseThrow());
        } else if (l.block() instanceof Block.Parallel par) {
            parallel(f, b, i, par, moe);
        } else {
            Block.PreNorm block = (Block.PreNorm) l.block();
            CodeBlock.Builder ba = CodeBlock.builder();
            mixer(f, ba, l, "a" + i, p + "attn", p + "attn_norm");
            // the FFN slot
            String fin = buffer("f" + i + "Input", "DIM"), fnormed = buffer("f" + i + "Normed", "DIM");
            f.addStatement("copy($L, stream, (long) rows * DIM)", fin);
            norm(f, p + "ffn_norm", fin, fnormed, "f" + i);
            CodeBlock.Builder bf = CodeBlock.builder();
            bf.addStatement("zero(dNormed, (long) rows * DIM)");
            if (block.ffn() instanceof Block.Part.Dense d) {
                f.add("// stream += dense(norm(stream))\n");
                bf.add("// stream += dense(norm(stream))\n");
                denseForward(f, fnormed, "f" + i, p + "ffn", d.ffn(), "stream");
                denseBackward(bf, fnormed, "f" + i, p + "ffn", d.ffn(), "dx");
            } else {
                moe(f, bf, moe.orElseThrow(), fnormed, "stream", "dx");
            }
            normBackward(bf, p + "ffn_norm", fin, "f" + i);
            bf.addStatement("mark($S)", moe.isPresent() ? "backward: moe" : "backward: dense ffn");
            f.addStatement("mark($S)", moe.isPresent() ? "forward: moe" : "forward: dense ffn");
            b.add(bf.build());
            b.add(ba.build());
        }
        return List.of(
                MethodSpec.methodBuilder("forwardLayer" + i).addModifiers(Modifier.PRIVATE)
                        .addJavadoc("Layer $L: $L.\n", i, l.block().describe()).addCode(f.build()).build(),
                MethodSpec.methodBuilder("backwardLayer" + i).addModifiers(Modifier.PRIVATE).addParameter(TypeName.FLOAT, "scale").addCode(b.build())
                        .build());
    }

    /**
     * LongCat-Flash's shortcut-connected block: attention, dense FFN, attention, dense FFN in sequence, and an MoE that reads
     * the input of the first FFN (norm of the stream after the first attention) and whose output joins the stream at the end.
     */
    private void shortcut(CodeBlock.Builder f, CodeBlock.Builder b, int i, Block.Shortcut sc, MoeInfo m) {
        String p = "layers." + i + ".";
        String moeOut = buffer("s" + i + "MoeOut", "DIM"), dMoeOut = buffer("s" + i + "DMoeOut", "DIM");
        CodeBlock.Builder ba0 = CodeBlock.builder(), ba1 = CodeBlock.builder();
        f.add("// attn0\n");
        attention(f, ba0, "a" + i, p + "attn0", p + "attn0_norm");
        f.add("// m = norm(stream): the input of ffn0 and of the MoE, whose output is added at the end of the block\n");
        String fin0 = buffer("f" + i + "Input", "DIM"), m0 = buffer("f" + i + "Normed", "DIM");
        f.addStatement("copy($L, stream, (long) rows * DIM)", fin0);
        norm(f, p + "ffn0_norm", fin0, m0, "f" + i);
        f.addStatement("zero($L, (long) rows * DIM)", moeOut);
        CodeBlock.Builder bm = CodeBlock.builder();
        moe(f, bm, m, m0, moeOut, dMoeOut);
        f.add("// stream += ffn0(m)\n");
        denseForward(f, m0, "f" + i, p + "ffn0", sc.dense(), "stream");
        f.add("// attn1\n");
        attention(f, ba1, "a" + i + "b", p + "attn1", p + "attn1_norm");
        f.add("// stream += ffn1(norm(stream)) + moe(m)\n");
        String fin1 = buffer("f" + i + "bInput", "DIM"), n1 = buffer("f" + i + "bNormed", "DIM");
        f.addStatement("copy($L, stream, (long) rows * DIM)", fin1);
        norm(f, p + "ffn1_norm", fin1, n1, "f" + i + "b");
        denseForward(f, n1, "f" + i + "b", p + "ffn1", sc.dense(), "stream");
        f.addStatement("ops.addInPlace(stream, $L, (long) rows * DIM)", moeOut);
        f.addStatement("mark($S)", "forward: shortcut block");

        b.add("// the MoE's output gradient is the block output's\n");
        b.addStatement("copy($L, dx, (long) rows * DIM)", dMoeOut);
        b.add("// stream += ffn1(norm(stream))\n");
        b.addStatement("zero(dNormed, (long) rows * DIM)");
        denseBackward(b, n1, "f" + i + "b", p + "ffn1", sc.dense(), "dx");
        normBackward(b, p + "ffn1_norm", fin1, "f" + i + "b");
        b.add(ba1.build());
        b.add("// stream += ffn0(m), and the MoE of m\n");
        b.addStatement("zero(dNormed, (long) rows * DIM)");
        denseBackward(b, m0, "f" + i, p + "ffn0", sc.dense(), "dx");
        b.add(bm.build());
        normBackward(b, p + "ffn0_norm", fin0, "f" + i);
        b.addStatement("mark($S)", "backward: shortcut ffn and moe");
        b.add(ba0.build());
    }

    /**
     * A parallel block (GPT-J, BAM), as the CPU class: {@code h = norm(stream)} with the block's one norm ({@code layers.i.norm}),
     * then {@code stream += attention(h) + ffn(h)}, the FFN a dense one ({@code layers.i.ffn}) or the layer's MoE. The attention
     * sub-block's own norm is that shared norm, so the FFN reads its normed input; both branches' output gradient is the block
     * output's, kept before the attention's backward adds its input gradient to {@code dx}. The norm's backward is linear in
     * its output gradient and accumulates, so each branch runs it for its own part instead of once for their sum.
     */
    private void parallel(CodeBlock.Builder f, CodeBlock.Builder b, int i, Block.Parallel par, Optional<MoeInfo> moe) {
        String p = "layers." + i + ".";
        String tag = "a" + i, h = tag + "Normed";
        String dOut = buffer("p" + i + "DOut", "DIM");
        CodeBlock.Builder ba = CodeBlock.builder(), bf = CodeBlock.builder();
        f.add("// h = norm(stream); stream += $L(h) + $L(h)\n", mixerOf(layerAt(i)).map(m -> m.moe().name()).orElse("attention"),
                moe.isPresent() ? moe.get().moe().name() : "dense");
        mixer(f, ba, layerAt(i), tag, p + "attn", p + "norm");
        if (!buffers.contains(tag + "Input") || !buffers.contains(h)) {
            // the FFN branch reads the attention sub-block's norm input and output by their buffer names
            throw new IllegalStateException("attention(...) no longer keeps its norm's input and output in " + tag + "Input and " + h);
        }
        bf.addStatement("zero(dNormed, (long) rows * DIM)");
        if (par.ffn() instanceof Block.Part.Dense d) {
            f.add("// stream += dense(h), h the attention's normed input\n");
            denseForward(f, h, "f" + i, p + "ffn", d.ffn(), "stream");
            denseBackward(bf, h, "f" + i, p + "ffn", d.ffn(), dOut);
        } else {
            f.add("// stream += moe(h), h the attention's normed input\n");
            moe(f, bf, moe.orElseThrow(), h, "stream", dOut);
        }
        normBackward(bf, p + "norm", tag + "Input", tag);
        f.addStatement("mark($S)", moe.isPresent() ? "forward: moe" : "forward: dense ffn");

        b.add("// both branches' output gradient is the block output's: keep it before the attention's backward adds to dx\n");
        b.addStatement("copy($L, dx, (long) rows * DIM)", dOut);
        b.add(ba.build());
        b.add("// the FFN branch, then its part of the shared norm's backward\n");
        b.add(bf.build());
        b.addStatement("mark($S)", moe.isPresent() ? "backward: moe" : "backward: dense ffn");
    }

    /**
     * PR-MoE's residual block: attention, then {@code h = norm(stream)}, {@code [c1, c2] = softmax(residual_mix · h)} and
     * {@code stream += c1 · moe(h) + c2 · dense(h)}.
     */
    private void residual(CodeBlock.Builder f, CodeBlock.Builder b, int i, Block.Residual res, MoeInfo m) {
        String p = "layers." + i + ".";
        CodeBlock.Builder ba = CodeBlock.builder();
        attention(f, ba, "a" + i, p + "attn", p + "attn_norm");
        String fin = buffer("f" + i + "Input", "DIM"), h = buffer("f" + i + "Normed", "DIM");
        String moeOut = buffer("r" + i + "Moe", "DIM"), denseOut = buffer("r" + i + "Dense", "DIM"), mix = buffer("r" + i + "Mix", "2");
        String dMoe = buffer("r" + i + "DMoe", "DIM"), dDense = buffer("r" + i + "DDense", "DIM"), dMix = buffer("r" + i + "DMix", "2");
        f.add("// h = norm(stream); [c1, c2] = softmax(residual_mix · h); stream += c1 · $L(h) + c2 · $L(h)\n", m.moe().name(), res.dense());
        f.addStatement("copy($L, stream, (long) rows * DIM)", fin);
        norm(f, p + "ffn_norm", fin, h, "f" + i);
        f.addStatement("zero($L, (long) rows * DIM)", denseOut);
        denseForward(f, h, "f" + i, p + "ffn", res.dense(), denseOut);
        f.addStatement("zero($L, (long) rows * DIM)", moeOut);
        CodeBlock.Builder bm = CodeBlock.builder();
        moe(f, bm, m, h, moeOut, dMoe);
        f.addStatement("linear($L, $L, $L, rows, DIM, 2, false)", h, pointer(p + "residual_mix"), mix);
        f.addStatement("ops.residualMix($L, $L, $L, stream, rows, DIM)", mix, moeOut, denseOut);
        f.addStatement("mark($S)", "forward: residual moe");

        b.add("// the mix's logits' gradient, and each branch's output gradient\n");
        b.addStatement("ops.residualMixBackward($L, $L, $L, dx, $L, $L, $L, rows, DIM)", mix, moeOut, denseOut, dMoe, dDense, dMix);
        b.addStatement("zero(dNormed, (long) rows * DIM)");
        b.addStatement("linearBackward($L, $L, $L, dNormed, $L, rows, DIM, 2, true)", h, pointer(p + "residual_mix"), dMix, grad(p + "residual_mix"));
        denseBackward(b, h, "f" + i, p + "ffn", res.dense(), dDense);
        b.add(bm.build());
        normBackward(b, p + "ffn_norm", fin, "f" + i);
        b.addStatement("mark($S)", "backward: residual moe");
        b.add(ba.build());
    }

    private Layer layerAt(int index) {
        return model.layers().stream().filter(x -> x.index() == index).findFirst().orElseThrow();
    }

    /** The layer's mixer: {@link #attention}, or its MoE of attention experts ({@link #attentionExperts}). */
    private void mixer(CodeBlock.Builder f, CodeBlock.Builder ba, Layer l, String tag, String attnPrefix, String normPrefix) {
        Optional<MoeInfo> moa = mixerOf(l);
        if (moa.isPresent()) {
            attentionExperts(f, ba, moa.get(), tag, normPrefix);
        } else {
            attention(f, ba, tag, attnPrefix, normPrefix);
        }
    }

    /**
     * One attention expert, as the CPU class's {@code AttnUnit}: its parameter prefix ({@code q} and {@code o}), the prefix of the
     * keys and values it reads (its own, or its group's when the group shares them) and the expert that computes those, and
     * its heads and head size.
     */
    private record AttnUnit(int index, String prefix, String kvPrefix, int kvOwner, int heads, int headDim) {
        int width() {
            return heads * headDim;
        }
    }

    /** The routed attention experts of a mixer MoE in the router's order, named as the CPU class names them. */
    private static List<AttnUnit> attnUnits(MoeInfo m) {
        String p = "layers." + m.index() + ".attn_moe";
        List<AttnUnit> units = new ArrayList<>();
        int group = 0;
        for (ExpertGroup g : m.moe().groups()) {
            Expert.Attention a = (Expert.Attention) g.expert();
            String gp = p + ".group" + group++;
            int first = units.size();
            for (int e = 0; e < g.count(); e++) {
                int index = first + e;
                String prefix = p + ".experts." + index;
                units.add(new AttnUnit(index, prefix, a.sharedKv() ? gp : prefix, a.sharedKv() ? first : index, a.heads(), a.headDim()));
            }
        }
        return units;
    }

    /** The constructor's statement for a mixer's router: a {@link CudaAttentionRouter} on the arena's router weights, fp32. */
    private void attentionRouter(CodeBlock.Builder ctor, MoeInfo m) {
        Router r = m.router();
        String router = routerParam(m);
        CodeBlock options = entropy(m.moe()).isPresent() ? CodeBlock.of("$T.NONE.withEntropy()", OPTIONS) : CodeBlock.of("$T.NONE", OPTIONS);
        ctor.add("// attention experts ($L): the router's $L on the MoE kernels, fp32; the spec's hidden width is unused\n", m.moe().name(),
                r.selection() instanceof Router.Selection.Soft ? "softmax over every expert (soft)" : "top-" + m.k());
        ctor.addStatement("moe$L = new $T(ctx, new $T(DIM, 1, $L, 0, 0, 0, $L, $T.$L, $L, $Lf, false, $T.FP32, $L), w.value($S), w.grad($S))", m.id(),
                MOA_ROUTER, SPEC, m.experts(), m.k(), SCORE, r.score().name(), r.normalize() || r.order() == Router.Order.TOPK_THEN_SOFTMAX,
                (float) r.scale(), ClassName.get(MoeKernelSource.Precision.class), options, router, router);
    }

    /**
     * {@code stream += Σ_e gate_e · o_e(attention(rope(q_e x), rope(k x), v x))} of {@code x = norm(stream)}: an MoE of attention
     * experts in the mixer slot (JetMoE's MoA, top-k; BAM's soft mixture, every expert), as the CPU class's
     * {@code attentionExperts}: own query and output projections per expert, keys and values per expert or shared by its group,
     * RoPE and the model's causal mask and window, each token's output the sum of its chosen experts' outputs by routing weight.
     * The router is the MoE layer's ({@link CudaAttentionRouter}), with the balancing losses.
     *
     * <p>Each expert runs densely, for every token, and its output is weighed by the dense gate row (0 where a token did not
     * choose it): exact (an unchosen token's row contributes exactly 0 forward and backward, as in the CPU class, which runs an
     * expert's queries for its tokens only), and simple, at E / k times the CPU class's query, attention and output work for
     * top-k routing (the same for soft routing, where every expert runs anyway).
     */
    private void attentionExperts(CodeBlock.Builder f, CodeBlock.Builder ba, MoeInfo m, String tag, String normPrefix) {
        String id = m.id();
        int e = m.experts();
        boolean rope = cfg.position().kind() == ModelConfig.PositionKind.ROPE;
        List<AttnUnit> units = attnUnits(m);
        int maxWidth = units.stream().mapToInt(AttnUnit::width).max().orElseThrow();
        String in = buffer(tag + "Input", "DIM"), normed = buffer(tag + "Normed", "DIM");
        String gates = buffer(tag + "Gates", Integer.toString(e)), out = buffer(tag + "Out", "DIM");
        f.add("// stream += $L(norm(stream)): $L attention experts, each for every token, weighed by the router's gates (0 where not chosen)\n",
                m.moe().name(), e);
        f.addStatement("copy($L, stream, (long) rows * DIM)", in);
        norm(f, normPrefix, in, normed, tag);
        f.addStatement("moe$L.route($L, rows, $L)", id, normed, gates);
        f.addStatement("counts$L = moe$L.lastCounts()", id, id);
        f.addStatement("slots$L = 0", id);
        f.beginControlFlow("for (int ex = 0; ex < $L; ex++)", e).addStatement("slots$L += counts$L[ex]", id, id).endControlFlow();
        f.beginControlFlow("if (counting)");
        f.beginControlFlow("for (int ex = 0; ex < $L; ex++)", e).addStatement("stepCounts$L[ex] += counts$L[ex]", id, id).endControlFlow();
        f.addStatement("stepSlots$L += slots$L", id, id);
        f.endControlFlow();
        f.addStatement("zero($L, (long) rows * DIM)", out);
        for (AttnUnit u : units) {
            int w = u.width();
            int rotary = rope ? cfg.position().rotaryDims(u.headDim()) : 0;
            f.add("// attention expert $L ($L heads of $L)$L\n", u.index(), u.heads(), u.headDim(), u.kvOwner() != u.index()
                    ? ", keys and values of expert " + u.kvOwner() : u.kvPrefix().equals(u.prefix()) ? "" : ", keys and values shared with its group");
            String q = buffer(tag + "Q" + u.index(), Integer.toString(w)), att = buffer(tag + "Att" + u.index(), Integer.toString(w));
            String lse = buffer(tag + "Lse" + u.index(), Integer.toString(u.heads())), y = buffer(tag + "Y" + u.index(), "DIM");
            String k = tag + "K" + u.kvOwner(), v = tag + "V" + u.kvOwner();
            if (u.kvOwner() == u.index()) {
                f.addStatement("linear($L, $L, $L, rows, DIM, $L, false)", normed, pointer(u.kvPrefix() + ".k"), buffer(k, Integer.toString(w)), w);
                f.addStatement("linear($L, $L, $L, rows, DIM, $L, false)", normed, pointer(u.kvPrefix() + ".v"), buffer(v, Integer.toString(w)), w);
                if (rotary > 0) {
                    f.addStatement("ops.rope($L, rows, seq, $L, $L, $L, THETA, false)", k, u.heads(), u.headDim(), rotary);
                }
            }
            f.addStatement("linear($L, $L, $L, rows, DIM, $L, false)", normed, pointer(u.prefix() + ".q"), q, w);
            if (rotary > 0) {
                f.addStatement("ops.rope($L, rows, seq, $L, $L, $L, THETA, false)", q, u.heads(), u.headDim(), rotary);
            }
            f.addStatement("ops.attention($L, $L, $L, $L, $L, batch, seq, $L, $L, $L, CAUSAL, WINDOW)", q, k, v, att, lse, u.heads(), u.heads(),
                    u.headDim());
            f.addStatement("linear($L, $L, $L, rows, $L, DIM, false)", att, pointer(u.prefix() + ".o"), y, w);
            f.addStatement("ops.moaCombine($L, $L, $L, $L, rows, DIM, $L)", y, gates, u.index(), e, out);
        }
        f.addStatement("ops.addInPlace(stream, $L, (long) rows * DIM)", out);
        f.addStatement("mark($S)", "forward: attention experts");
        f.add("{\n").indent();
        balanceForward(f, m);
        f.unindent().add("}\n");

        String dGates = buffer(tag + "DGates", Integer.toString(e)), dy = buffer(tag + "DY", "DIM");
        String dAtt = buffer(tag + "DAtt", Integer.toString(maxWidth)), dq = buffer(tag + "Dq", Integer.toString(maxWidth));
        ba.add("// stream += $L(norm(stream)): each expert's gate gradient <dOut, its output>, its output's gradient gate · dOut\n", m.moe().name());
        ba.addStatement("zero(dNormed, (long) rows * DIM)");
        for (AttnUnit u : units) {
            if (u.kvOwner() == u.index()) {
                ba.addStatement("zero($L, (long) rows * $L)", buffer(tag + "Dk" + u.index(), Integer.toString(u.width())), u.width());
                ba.addStatement("zero($L, (long) rows * $L)", buffer(tag + "Dv" + u.index(), Integer.toString(u.width())), u.width());
            }
        }
        for (AttnUnit u : units) {
            int w = u.width(), i = u.index();
            int rotary = rope ? cfg.position().rotaryDims(u.headDim()) : 0;
            String k = tag + "K" + u.kvOwner(), v = tag + "V" + u.kvOwner(), dk = tag + "Dk" + u.kvOwner(), dv = tag + "Dv" + u.kvOwner();
            ba.add("// attention expert $L\n", i);
            ba.addStatement("ops.moaCombineBackward(dx, $LY$L, $L, $L, $L, rows, DIM, $L, $L)", tag, i, gates, i, e, dy, dGates);
            ba.addStatement("linearBackward($LAtt$L, $L, $L, $L, $L, rows, $L, DIM, false)", tag, i, pointer(u.prefix() + ".o"), dy, dAtt,
                    grad(u.prefix() + ".o"), w);
            ba.addStatement("zero($L, (long) rows * $L)", dq, w);
            ba.addStatement("ops.attentionBackward($LQ$L, $L, $L, $LAtt$L, $LLse$L, $L, $L, $L, $L, batch, seq, $L, $L, $L, CAUSAL, WINDOW)", tag, i, k, v,
                    tag, i, tag, i, dAtt, dq, dk, dv, u.heads(), u.heads(), u.headDim());
            if (rotary > 0) {
                ba.addStatement("ops.rope($L, rows, seq, $L, $L, $L, THETA, true)", dq, u.heads(), u.headDim(), rotary);
            }
            ba.addStatement("linearBackward($L, $L, $L, dNormed, $L, rows, DIM, $L, true)", normed, pointer(u.prefix() + ".q"), dq,
                    grad(u.prefix() + ".q"), w);
            boolean lastOfKv = units.stream().noneMatch(x -> x.kvOwner() == u.kvOwner() && x.index() > i);
            if (lastOfKv) {
                AttnUnit owner = units.get(u.kvOwner());
                ba.add("// keys and values of expert $L, after every expert that reads them\n", owner.index());
                if (rotary > 0) {
                    ba.addStatement("ops.rope($L, rows, seq, $L, $L, $L, THETA, true)", dk, owner.heads(), owner.headDim(), rotary);
                }
                ba.addStatement("linearBackward($L, $L, $L, dNormed, $L, rows, DIM, $L, true)", normed, pointer(owner.kvPrefix() + ".k"), dk,
                        grad(owner.kvPrefix() + ".k"), owner.width());
                ba.addStatement("linearBackward($L, $L, $L, dNormed, $L, rows, DIM, $L, true)", normed, pointer(owner.kvPrefix() + ".v"), dv,
                        grad(owner.kvPrefix() + ".v"), owner.width());
            }
        }
        ba.add("// the router, with the balancing losses' gradients\n");
        CodeBlock aux = m.moe().losses().stream().anyMatch(x -> x instanceof Loss.Aux) ? CodeBlock.of("scaled(aux$L, scale)", id) : CodeBlock.of("null");
        CodeBlock zc = zLoss(m).map(z -> CodeBlock.of("scale * $Lf / rows", (float) z.coef())).orElse(CodeBlock.of("0f"));
        CodeBlock ent = entropy(m.moe()).map(h -> CodeBlock.of("scale * $Lf / rows", (float) h.coef())).orElse(CodeBlock.of("0f"));
        ba.addStatement("moe$L.backwardInto($L, $L, $L, $L, dNormed)", id, dGates, aux, zc, ent);
        normBackward(ba, normPrefix, in, tag);
        ba.addStatement("mark($S)", "backward: attention experts");
    }

    /**
     * {@code stream += o(attention(rope(q), rope(k), v))} of {@code norm(stream)}: the forward into {@code f}, its backward
     * (from {@code dx}, adding the input gradient to {@code dx}) into {@code ba}. {@code tag} names the sub-block's buffers.
     */
    private void attention(CodeBlock.Builder f, CodeBlock.Builder ba, String tag, String attnPrefix, String normPrefix) {
        if (cfg.mla().isPresent()) {
            latentAttention(f, ba, tag, attnPrefix, normPrefix);
            return;
        }
        String in = buffer(tag + "Input", "DIM"), normed = buffer(tag + "Normed", "DIM");
        String q = buffer(tag + "Q", "Q_DIM"), k = buffer(tag + "K", "KV_DIM"), v = buffer(tag + "V", "KV_DIM");
        String att = buffer(tag + "Att", "Q_DIM"), lse = buffer(tag + "Lse", "HEADS");
        // with qk-norm the projections (and biases) go to the raw q and k, which the backward needs, and the norms write q and k
        boolean qkNorm = cfg.qkNorm();
        String qIn = qkNorm ? buffer(tag + "QRaw", "Q_DIM") : q, kIn = qkNorm ? buffer(tag + "KRaw", "KV_DIM") : k;
        f.add("// stream += attention(norm(stream))\n");
        f.addStatement("copy($L, stream, (long) rows * DIM)", in);
        norm(f, normPrefix, in, normed, tag);
        f.addStatement("linear($L, $L, $L, rows, DIM, Q_DIM, false)", normed, pointer(attnPrefix + ".q"), qIn);
        f.addStatement("linear($L, $L, $L, rows, DIM, KV_DIM, false)", normed, pointer(attnPrefix + ".k"), kIn);
        f.addStatement("linear($L, $L, $L, rows, DIM, KV_DIM, false)", normed, pointer(attnPrefix + ".v"), v);
        if (cfg.qkvBias()) {
            f.addStatement("ops.addBias($L, $L, rows, Q_DIM)", qIn, pointer(attnPrefix + ".q_bias"));
            f.addStatement("ops.addBias($L, $L, rows, KV_DIM)", kIn, pointer(attnPrefix + ".k_bias"));
            f.addStatement("ops.addBias($L, $L, rows, KV_DIM)", v, pointer(attnPrefix + ".v_bias"));
        }
        if (qkNorm) {
            // per head (rows * heads rows of HEAD_DIM), or `qk_norm full`: one RMSNorm over each row's whole q (and k)
            f.addStatement("ops.rmsNorm($L, $L, $L, $L, $L, EPS)", qIn, pointer(attnPrefix + ".q_norm"), q, buffer(tag + "QRstd", qkRstdWidth(true)),
                    qkNormRows(true));
            f.addStatement("ops.rmsNorm($L, $L, $L, $L, $L, EPS)", kIn, pointer(attnPrefix + ".k_norm"), k, buffer(tag + "KRstd", qkRstdWidth(false)),
                    qkNormRows(false));
        }
        f.addStatement("ops.rope($L, rows, seq, HEADS, HEAD_DIM, ROTARY_DIMS, THETA, false)", q);
        f.addStatement("ops.rope($L, rows, seq, KV_HEADS, HEAD_DIM, ROTARY_DIMS, THETA, false)", k);
        f.addStatement("ops.attention($L, $L, $L, $L, $L, batch, seq, HEADS, KV_HEADS, HEAD_DIM, CAUSAL, WINDOW)", q, k, v, att, lse);
        f.addStatement("linear($L, $L, stream, rows, Q_DIM, DIM, true)", att, pointer(attnPrefix + ".o"));
        f.addStatement("mark($S)", "forward: attention");

        ba.add("// stream += attention(norm(stream))\n");
        ba.addStatement("zero(dNormed, (long) rows * DIM)");
        ba.addStatement("linearBackward($L, $L, dx, $L, $L, rows, Q_DIM, DIM, false)", att, pointer(attnPrefix + ".o"), buffer("dAtt", "Q_DIM"),
                grad(attnPrefix + ".o"));
        ba.addStatement("zero($L, (long) rows * Q_DIM)", buffer("dq", "Q_DIM"));
        ba.addStatement("zero($L, (long) rows * KV_DIM)", buffer("dk", "KV_DIM"));
        ba.addStatement("zero($L, (long) rows * KV_DIM)", buffer("dv", "KV_DIM"));
        ba.addStatement("ops.attentionBackward($L, $L, $L, $L, $L, dAtt, dq, dk, dv, batch, seq, HEADS, KV_HEADS, HEAD_DIM, CAUSAL, WINDOW)", q, k,
                v, att, lse);
        ba.addStatement("ops.rope(dq, rows, seq, HEADS, HEAD_DIM, ROTARY_DIMS, THETA, true)");
        ba.addStatement("ops.rope(dk, rows, seq, KV_HEADS, HEAD_DIM, ROTARY_DIMS, THETA, true)");
        String dq = "dq", dk = "dk";
        if (qkNorm) {
            dq = buffer("dqRaw", "Q_DIM");
            dk = buffer("dkRaw", "KV_DIM");
            ba.addStatement("zero(dqRaw, (long) rows * Q_DIM)");
            ba.addStatement("zero(dkRaw, (long) rows * KV_DIM)");
            ba.addStatement("ops.rmsNormBackward($L, $L, $L, dq, dqRaw, $L, $L)", qIn, pointer(attnPrefix + ".q_norm"), tag + "QRstd",
                    grad(attnPrefix + ".q_norm"), qkNormRows(true));
            ba.addStatement("ops.rmsNormBackward($L, $L, $L, dk, dkRaw, $L, $L)", kIn, pointer(attnPrefix + ".k_norm"), tag + "KRstd",
                    grad(attnPrefix + ".k_norm"), qkNormRows(false));
        }
        if (cfg.qkvBias()) {
            ba.addStatement("ops.biasBackward($L, $L, rows, Q_DIM)", dq, grad(attnPrefix + ".q_bias"));
            ba.addStatement("ops.biasBackward($L, $L, rows, KV_DIM)", dk, grad(attnPrefix + ".k_bias"));
            ba.addStatement("ops.biasBackward(dv, $L, rows, KV_DIM)", grad(attnPrefix + ".v_bias"));
        }
        ba.addStatement("linearBackward($L, $L, $L, dNormed, $L, rows, DIM, Q_DIM, true)", normed, pointer(attnPrefix + ".q"), dq, grad(attnPrefix + ".q"));
        ba.addStatement("linearBackward($L, $L, $L, dNormed, $L, rows, DIM, KV_DIM, true)", normed, pointer(attnPrefix + ".k"), dk, grad(attnPrefix + ".k"));
        ba.addStatement("linearBackward($L, $L, dv, dNormed, $L, rows, DIM, KV_DIM, true)", normed, pointer(attnPrefix + ".v"), grad(attnPrefix + ".v"));
        normBackward(ba, normPrefix, in, tag);

        ba.addStatement("mark($S)", "backward: attention");
    }

    /**
     * {@link #attention} for multi-head latent attention (DeepSeek-V2/V3), as the CPU class's {@code latentAttentionForward}: the
     * query {@code q_b · rms(q_a · x)} (or {@code q · x}), the latent {@code c = rms(kv_a · x)} whose {@code kv_b} product gives
     * each head's nope keys and values, and one rotary key {@code k_rope · x} shared by the heads. RoPE turns the first
     * ROPE_DIM of each query head and the shared key; keys and values then go into the attention kernels' HEAD_DIM-wide layout
     * (key = [rotary key, nope keys], value = [V_DIM values, zeros]), so the kernels' 1/sqrt(HEAD_DIM) is MLA's
     * 1/sqrt(nope + rope) and the zero value columns give zero outputs, dropped before {@code o}. Exact, as on the CPU.
     */
    private void latentAttention(CodeBlock.Builder f, CodeBlock.Builder ba, String tag, String attnPrefix, String normPrefix) {
        ModelConfig.Mla m = cfg.mla().orElseThrow();
        boolean rope = cfg.position().kind() == ModelConfig.PositionKind.ROPE;
        String in = buffer(tag + "Input", "DIM"), normed = buffer(tag + "Normed", "DIM");
        // every head has its own keys and values: KV_HEADS is HEADS, and k and v are as wide as q
        String q = buffer(tag + "Q", "Q_DIM"), k = buffer(tag + "K", "Q_DIM"), v = buffer(tag + "V", "Q_DIM");
        String att = buffer(tag + "Att", "Q_DIM"), lse = buffer(tag + "Lse", "HEADS"), attV = buffer(tag + "AttV", "VO_DIM");
        String ckv = buffer(tag + "Ckv", "KV_RANK"), ckvNormed = buffer(tag + "CkvNormed", "KV_RANK"), ckvRstd = buffer(tag + "CkvRstd", "1");
        String kvb = buffer(tag + "Kvb", "KVB_DIM"), kpe = buffer(tag + "Kpe", "ROPE_DIM");
        String kva = pointer(attnPrefix + ".kv_a"), kvaNorm = pointer(attnPrefix + ".kv_a_norm"), kvbW = pointer(attnPrefix + ".kv_b");
        String kRope = pointer(attnPrefix + ".k_rope"), o = pointer(attnPrefix + ".o");
        f.add("// stream += latent attention(norm(stream))\n");
        f.addStatement("copy($L, stream, (long) rows * DIM)", in);
        norm(f, normPrefix, in, normed, tag);
        String qa = null, qaNormed = null, qaRstd = null;
        if (m.qRank() > 0) {
            qa = buffer(tag + "Qa", "Q_RANK");
            qaNormed = buffer(tag + "QaNormed", "Q_RANK");
            qaRstd = buffer(tag + "QaRstd", "1");
            f.add("// q = q_b · rms(q_a · x)\n");
            f.addStatement("linear($L, $L, $L, rows, DIM, Q_RANK, false)", normed, pointer(attnPrefix + ".q_a"), qa);
            f.addStatement("ops.rmsNorm($L, $L, $L, $L, rows, Q_RANK, MLA_EPS)", qa, pointer(attnPrefix + ".q_a_norm"), qaNormed, qaRstd);
            f.addStatement("linear($L, $L, $L, rows, Q_RANK, Q_DIM, false)", qaNormed, pointer(attnPrefix + ".q_b"), q);
        } else {
            f.addStatement("linear($L, $L, $L, rows, DIM, Q_DIM, false)", normed, pointer(attnPrefix + ".q"), q);
        }
        f.add("// the latent c = rms(kv_a · x); kv_b · c gives each head's keys (without RoPE) and values\n");
        f.addStatement("linear($L, $L, $L, rows, DIM, KV_RANK, false)", normed, kva, ckv);
        f.addStatement("ops.rmsNorm($L, $L, $L, $L, rows, KV_RANK, MLA_EPS)", ckv, kvaNorm, ckvNormed, ckvRstd);
        f.addStatement("linear($L, $L, $L, rows, KV_RANK, KVB_DIM, false)", ckvNormed, kvbW, kvb);
        f.add("// one rotary key for all heads\n");
        f.addStatement("linear($L, $L, $L, rows, DIM, ROPE_DIM, false)", normed, kRope, kpe);
        if (rope) {
            f.addStatement("ops.rope($L, rows, seq, HEADS, HEAD_DIM, ROPE_DIM, THETA, false)", q);
            f.addStatement("ops.rope($L, rows, seq, 1, ROPE_DIM, ROPE_DIM, THETA, false)", kpe);
        }
        f.addStatement("ops.mlaKeysAndValues($L, $L, $L, $L, rows, HEADS, NOPE_DIM, ROPE_DIM, V_DIM)", kpe, kvb, k, v);
        f.addStatement("ops.attention($L, $L, $L, $L, $L, batch, seq, HEADS, HEADS, HEAD_DIM, CAUSAL, WINDOW)", q, k, v, att, lse);
        f.addStatement("ops.mlaValuesOut($L, $L, rows, HEADS, HEAD_DIM, V_DIM)", att, attV);
        f.addStatement("linear($L, $L, stream, rows, VO_DIM, DIM, true)", attV, o);
        f.addStatement("mark($S)", "forward: attention");

        ba.add("// stream += latent attention(norm(stream))\n");
        ba.addStatement("zero(dNormed, (long) rows * DIM)");
        ba.addStatement("linearBackward($L, $L, dx, $L, $L, rows, VO_DIM, DIM, false)", attV, o, buffer("dAttV", "VO_DIM"), grad(attnPrefix + ".o"));
        ba.addStatement("ops.mlaValuesIn(dAttV, $L, rows, HEADS, HEAD_DIM, V_DIM)", buffer("dAtt", "Q_DIM"));
        ba.addStatement("zero($L, (long) rows * Q_DIM)", buffer("dq", "Q_DIM"));
        ba.addStatement("zero($L, (long) rows * Q_DIM)", buffer("dk", "Q_DIM"));
        ba.addStatement("zero($L, (long) rows * Q_DIM)", buffer("dv", "Q_DIM"));
        ba.addStatement("ops.attentionBackward($L, $L, $L, $L, $L, dAtt, dq, dk, dv, batch, seq, HEADS, HEADS, HEAD_DIM, CAUSAL, WINDOW)", q, k, v,
                att, lse);
        ba.add("// the shared rotary key gathers every head's gradient\n");
        ba.addStatement("ops.mlaKeysAndValuesBackward(dk, dv, $L, $L, rows, HEADS, NOPE_DIM, ROPE_DIM, V_DIM)", buffer("dKpe", "ROPE_DIM"),
                buffer("dKvb", "KVB_DIM"));
        if (rope) {
            ba.addStatement("ops.rope(dq, rows, seq, HEADS, HEAD_DIM, ROPE_DIM, THETA, true)");
            ba.addStatement("ops.rope(dKpe, rows, seq, 1, ROPE_DIM, ROPE_DIM, THETA, true)");
        }
        ba.addStatement("linearBackward($L, $L, dKvb, $L, $L, rows, KV_RANK, KVB_DIM, false)", ckvNormed, kvbW, buffer("dCkvNormed", "KV_RANK"),
                grad(attnPrefix + ".kv_b"));
        ba.addStatement("zero($L, (long) rows * KV_RANK)", buffer("dCkv", "KV_RANK"));
        ba.addStatement("ops.rmsNormBackward($L, $L, $L, dCkvNormed, dCkv, $L, rows, KV_RANK)", ckv, kvaNorm, ckvRstd, grad(attnPrefix + ".kv_a_norm"));
        ba.addStatement("linearBackward($L, $L, dCkv, dNormed, $L, rows, DIM, KV_RANK, true)", normed, kva, grad(attnPrefix + ".kv_a"));
        ba.addStatement("linearBackward($L, $L, dKpe, dNormed, $L, rows, DIM, ROPE_DIM, true)", normed, kRope, grad(attnPrefix + ".k_rope"));
        if (m.qRank() > 0) {
            String qaNorm = pointer(attnPrefix + ".q_a_norm");
            ba.addStatement("linearBackward($L, $L, dq, $L, $L, rows, Q_RANK, Q_DIM, false)", qaNormed, pointer(attnPrefix + ".q_b"),
                    buffer("dQaNormed", "Q_RANK"), grad(attnPrefix + ".q_b"));
            ba.addStatement("zero($L, (long) rows * Q_RANK)", buffer("dQa", "Q_RANK"));
            ba.addStatement("ops.rmsNormBackward($L, $L, $L, dQaNormed, dQa, $L, rows, Q_RANK)", qa, qaNorm, qaRstd, grad(attnPrefix + ".q_a_norm"));
            ba.addStatement("linearBackward($L, $L, dQa, dNormed, $L, rows, DIM, Q_RANK, true)", normed, pointer(attnPrefix + ".q_a"),
                    grad(attnPrefix + ".q_a"));
        } else {
            ba.addStatement("linearBackward($L, $L, dq, dNormed, $L, rows, DIM, Q_DIM, true)", normed, pointer(attnPrefix + ".q"), grad(attnPrefix + ".q"));
        }
        normBackward(ba, normPrefix, in, tag);
        ba.addStatement("mark($S)", "backward: attention");
    }

    /**
     * The MoE of layer {@code m}: its routed experts (the GPU layer) and shared experts on {@code fnormed}, their output ADDED to
     * {@code target}, and the balancing losses; the backward (from the output gradient {@code dOut}, adding the input gradient to
     * {@code dNormed}) into {@code bf}.
     */
    private void moe(CodeBlock.Builder f, CodeBlock.Builder bf, MoeInfo m, String fnormed, String target, String dOut) {
        int i = m.index();
        String p = "layers." + i + ".";
        f.add("// $L += moe $L($L): routed experts on the GPU layer, then shared experts\n", target, m.moe().name(), fnormed);
        m.router().temperature().ifPresent(tp -> {
            if (tp.steps() > 0 && tp.start() != tp.end()) {
                f.add("// dense to sparse: the temperature moves linearly from $L to $L over the first $L steps, then stays\n", tp.start(), tp.end(),
                        tp.steps());
                f.addStatement("moe$L.setTemperature((float) ($L + ($L - $L) * (double) Math.min(step, $LL) / $L))", i, tp.start(), tp.end(), tp.start(),
                        tp.steps(), tp.steps());
            } else {
                f.addStatement("moe$L.setTemperature($Lf)", i, (float) tp.start());
            }
        });
        if (m.capacity() != null) {
            Router.Capacity.Factor cf = m.capacity();
            f.add("// capacity factor $L (training forwards only): each expert keeps at most ceil($L · rows · $L / $L) slots, by $L\n", cf.factor(),
                    cf.factor(), m.k(), m.experts(), cf.drop() == Router.DropPolicy.PROBABILITY ? "highest weight" : "earliest token");
            f.addStatement("moe$L.setTraining(counting)", i);
        }
        if (m.moe().routers().size() > 1) {
            f.add("// several named gates: each sequence is routed by the gate named after its domain (the first, $L, when none is)\n",
                    m.router().name().orElseThrow());
            f.addStatement("moe$L.setSequenceGates(gatesOfSequences(new String[] {$L}, batch), seq)", i,
                    String.join(", ", m.moe().routers().stream().map(g -> "\"" + g.name().orElseThrow() + "\"").toList()));
        }
        if (m.router().selection() instanceof Router.Selection.ExpertChoice x) {
            f.add("// expert choice: in each sequence each expert keeps its best ceil($L · seq / $L) tokens by probability\n", x.factor(), m.experts());
            f.addStatement("moe$L.setSequenceLength(seq)", i);
        }
        if (randomDrops(m)) {
            f.add("// random drops (training forwards): the priorities the CPU class draws for this step, micro-batch and layer\n");
            f.addStatement("moe$L.setDropSeed(jitterSeed(step, microBatch, $L) ^ 0x5DEECE66DL)", i, i);
        }
        if (m.router().recurrentWidth().isPresent()) {
            recurrentRouterForward(f, m, fnormed);
        }
        // Shared experts beside the routed ones: the GPU layer queues them where they overlap its experts' work (under expert
        // parallelism, while the rows travel between ranks), before it adds its own output, so the sum's order never changes.
        boolean besides = !m.shared().isEmpty() && m.lora() == null && !m.mixer();
        String sharedArg = "";
        if (besides) {
            CodeBlock.Builder sf = CodeBlock.builder();
            for (int s = 0; s < m.shared().size(); s++) {
                sf.add("// shared expert $L: $L\n", s, m.shared().get(s));
                denseForward(sf, fnormed, "f" + i + "S" + s, p + "moe.shared." + s, m.shared().get(s), target);
            }
            f.add("// the shared experts, which the layer runs beside its routed experts\n");
            f.add("$T shared$L = () -> {\n$>$L$<};\n", Runnable.class, i, sf.build());
            sharedArg = ", shared" + i;
        }
        float eps = (float) m.router().jitter();
        if (eps != 0) {
            // (latent experts with jitter stay on the hybrid path)
            String routerIn = m.router().pregate() ? "embedded" : fnormed;
            f.add("// jitter (training forwards only): the router reads its input times uniform noise in [1 - $L, 1 + $L], drawn on the GPU as the CPU class draws it\n",
                    eps, eps);
            f.addStatement("jitterOn$L = counting", i);
            f.beginControlFlow("if (counting)");
            f.addStatement("ops.jitterNoise($L, (long) rows * DIM, jitterSeed(step, microBatch, $L), $Lf)", buffer("j" + i + "Noise", "DIM"), i,
                    Float.toString(eps));
            f.addStatement("ops.multiply($L, j$LNoise, $L, (long) rows * DIM)", routerIn, i, buffer("j" + i + "Input", "DIM"));
            f.addStatement("moe$L.forwardInto($L, j$LInput, rows, $L$L)", i, fnormed, i, target, sharedArg);
            f.nextControlFlow("else");
        }
        String latentIn = null, dLatent = null;
        if (m.latent()) {
            latentIn = buffer("m" + i + "Latent", Integer.toString(m.latentRank()));
            dLatent = buffer("m" + i + "DLatent", Integer.toString(m.latentRank()));
            f.add("// latent experts (MoLE): z = x · latent_downᵀ once per token; the experts read z, the router $L\n",
                    m.router().pregate() ? "the embeddings" : "x");
            f.addStatement("linear($L, $L, $L, rows, DIM, $L, false)", fnormed, pointer(m.latentDown()), latentIn, m.latentRank());
            f.addStatement("moe$L.forwardInto($L, $L, rows, $L$L)", i, latentIn, m.router().pregate() ? "embedded" : fnormed, target, sharedArg);
        } else if (m.router().pregate()) {
            f.addStatement("moe$L.forwardInto($L, embedded, rows, $L$L)", i, fnormed, target, sharedArg);
        } else if (besides) {
            f.addStatement("moe$L.forwardInto($L, $L, rows, $L$L)", i, fnormed, fnormed, target, sharedArg);
        } else {
            f.addStatement("moe$L.forwardInto($L, rows, $L)", i, fnormed, target);
        }
        if (eps != 0) {
            f.endControlFlow();
        }
        f.addStatement("counts$L = moe$L.lastCounts()", i, i);
        f.add("// the slots dispatched to experts (top-p leaves some unused, a capacity factor drops some): the aux loss's f and the loads count these, as the CPU class does\n");
        f.addStatement("slots$L = 0", i);
        f.beginControlFlow("for (int ex = 0; ex < $L; ex++)", m.routed()).addStatement("slots$L += counts$L[ex]", i, i).endControlFlow();
        f.beginControlFlow("if (counting)");
        f.beginControlFlow("for (int ex = 0; ex < $L; ex++)", m.routed()).addStatement("stepCounts$L[ex] += counts$L[ex]", i, i).endControlFlow();
        f.addStatement("stepSlots$L += slots$L", i, i);
        f.endControlFlow();
        f.addStatement("mark($S)", besides ? "forward: moe routed and shared experts" : "forward: moe routed experts");
        if (!besides) {
            for (int s = 0; s < m.shared().size(); s++) {
                f.add("// shared expert $L: $L\n", s, m.shared().get(s));
                denseForward(f, fnormed, "f" + i + "S" + s, p + "moe.shared." + s, m.shared().get(s), target);
            }
            f.addStatement("mark($S)", "forward: shared experts");
        }
        balanceForward(f, m);
        if (besides) {
            CodeBlock.Builder sb = CodeBlock.builder();
            for (int s = 0; s < m.shared().size(); s++) {
                sb.add("// shared expert $L\n", s);
                denseBackward(sb, fnormed, "f" + i + "S" + s, p + "moe.shared." + s, m.shared().get(s), dOut);
            }
            bf.add("// the shared experts' backward, which the layer runs beside its routed experts' (before it adds its own input gradient)\n");
            bf.add("$T dShared$L = () -> {\n$>$L$<};\n", Runnable.class, i, sb.build());
        } else {
            for (int s = 0; s < m.shared().size(); s++) {
                bf.add("// shared expert $L\n", s);
                denseBackward(bf, fnormed, "f" + i + "S" + s, p + "moe.shared." + s, m.shared().get(s), dOut);
            }
            bf.addStatement("mark($S)", "backward: shared experts");
        }
        String dSharedArg = besides ? ", dShared" + i : "";
        bf.add("// routed experts and router (with the balancing losses' gradients)\n");
        CodeBlock aux = m.moe().losses().stream().anyMatch(x -> x instanceof Loss.Aux) ? CodeBlock.of("scaled(aux$L, scale)", i) : CodeBlock.of("null");
        CodeBlock zc = zLoss(m).map(z -> CodeBlock.of("scale * $Lf / rows", (float) z.coef())).orElse(CodeBlock.of("0f"));
        CodeBlock ent = entropy(m.moe()).map(h -> CodeBlock.of("scale * $Lf / rows", (float) h.coef())).orElse(CodeBlock.of("0f"));
        CodeBlock losses = CodeBlock.of("$L, $L, $L", aux, zc, ent);
        if (m.latent()) {
            bf.add("// latent experts: d(z) from the experts, the router's input gradient to $L; then the shared down-projection's backward\n",
                    m.router().pregate() ? "the embeddings" : "x");
            bf.addStatement("zero($L, (long) rows * $L)", dLatent, m.latentRank());
            bf.addStatement("moe$L.backwardInto($L, $L, $L, $L$L)", i, dOut, losses, dLatent, m.router().pregate() ? "dEmbedded" : "dNormed", dSharedArg);
            bf.addStatement("linearBackward($L, $L, $L, dNormed, $L, rows, DIM, $L, true)", fnormed, pointer(m.latentDown()), dLatent,
                    grad(m.latentDown()), m.latentRank());
        } else {
            if (eps != 0) {
                bf.beginControlFlow("if (jitterOn$L)", i);
                bf.addStatement("zero($L, (long) rows * DIM)", buffer("dJittered", "DIM"));
                bf.addStatement("moe$L.backwardInto($L, $L, dNormed, dJittered$L)", i, dOut, losses, dSharedArg);
                bf.add("// the router read the jittered input: d(input) += d(jittered) · noise\n");
                bf.addStatement("ops.addProduct($L, dJittered, j$LNoise, (long) rows * DIM)", m.router().pregate() ? "dEmbedded" : "dNormed", i);
                bf.nextControlFlow("else");
            }
            bf.addStatement("moe$L.backwardInto($L, $L, dNormed$L$L)", i, dOut, losses, m.router().pregate() ? ", dEmbedded" : besides ? ", dNormed" : "",
                    dSharedArg);
            if (eps != 0) {
                bf.endControlFlow();
            }
        }
        if (m.router().recurrentWidth().isPresent()) {
            recurrentRouterBackward(bf, m, fnormed);
        }
        bf.addStatement("mark($S)", besides ? "backward: moe routed and shared experts" : "backward: moe routed experts");
    }

    /**
     * RMoE's recurrent router, as the CPU class: {@code u = x · gru_inᵀ}, {@code h = GRU(u, h of the previous recurrent layer)}
     * (the shared cell's two products, then {@code DeviceOps.gruCell}), and {@code h · gru_outᵀ} set as the layer's extra logits.
     */
    private void recurrentRouterForward(CodeBlock.Builder f, MoeInfo m, String fnormed) {
        int i = m.index();
        String rp = m.routerPrefix() + ".";
        String tag = "gru" + i;
        String u = buffer(tag + "U", "GRU_WIDTH"), prev = buffer(tag + "Prev", "GRU_WIDTH"), gates = buffer(tag + "Gates", "4 * GRU_WIDTH");
        String h = buffer(tag + "H", "GRU_WIDTH"), logits = buffer(tag + "Logits", Integer.toString(m.routed()));
        f.add("// recurrent router (RMoE): u = x · gru_inᵀ; h = GRU(u, h of the previous recurrent layer); the router's logits add h · gru_outᵀ\n");
        f.addStatement("linear($L, $L, $L, rows, DIM, GRU_WIDTH, false)", fnormed, pointer(rp + "gru_in"), u);
        f.addStatement("copy($L, gruState, (long) rows * GRU_WIDTH)", prev);
        f.addStatement("linear($L, $L, $L, rows, GRU_WIDTH, 3 * GRU_WIDTH, false)", u, pointer("router_gru.w_ih"), buffer("gruGi", "3 * GRU_WIDTH"));
        f.addStatement("linear($L, $L, $L, rows, GRU_WIDTH, 3 * GRU_WIDTH, false)", prev, pointer("router_gru.w_hh"), buffer("gruGh", "3 * GRU_WIDTH"));
        f.addStatement("ops.gruCell(gruGi, gruGh, $L, $L, $L, $L, $L, rows, GRU_WIDTH)", pointer("router_gru.b_ih"), pointer("router_gru.b_hh"), prev,
                gates, h);
        f.addStatement("copy(gruState, $L, (long) rows * GRU_WIDTH)", h);
        f.addStatement("linear($L, $L, $L, rows, GRU_WIDTH, $L, false)", h, pointer(rp + "gru_out"), logits, m.routed());
        f.addStatement("moe$L.setExtraLogits($L)", i, logits);
    }

    /**
     * The backward of {@link #recurrentRouterForward}, after the layer's: {@code dh = dLogits · gru_out + } what later recurrent
     * layers sent back (in dGruState); through the GRU to u and the previous state (which dGruState then holds, for the recurrent
     * layer before); then {@code gru_in}, whose input gradient joins dNormed.
     */
    private void recurrentRouterBackward(CodeBlock.Builder b, MoeInfo m, String fnormed) {
        int i = m.index();
        String rp = m.routerPrefix() + ".";
        String tag = "gru" + i;
        String wih = pointer("router_gru.w_ih"), whh = pointer("router_gru.w_hh");
        b.add("// recurrent router backward: dh = dLogits · gru_out + what later recurrent layers sent back (in dGruState); through the GRU to u and the previous state; then gru_in\n");
        b.addStatement("linearBackward($LH, $L, moe$L.lastLogitGradient(), dGruState, $L, rows, GRU_WIDTH, $L, true)", tag, pointer(rp + "gru_out"), i,
                grad(rp + "gru_out"), m.routed());
        b.addStatement("ops.gruCellBackward(dGruState, $LPrev, $LGates, gruGi, gruGh, $L, rows, GRU_WIDTH)", tag, tag, buffer("gruDPrev", "GRU_WIDTH"));
        b.addStatement("ops.biasBackward(gruGi, $L, rows, 3 * GRU_WIDTH)", grad("router_gru.b_ih"));
        b.addStatement("ops.biasBackward(gruGh, $L, rows, 3 * GRU_WIDTH)", grad("router_gru.b_hh"));
        b.addStatement("linearBackward($LU, $L, gruGi, $L, $L, rows, GRU_WIDTH, 3 * GRU_WIDTH, false)", tag, wih, buffer("gruDu", "GRU_WIDTH"),
                grad("router_gru.w_ih"));
        b.addStatement("linearBackward($LPrev, $L, gruGh, gruDPrev, $L, rows, GRU_WIDTH, 3 * GRU_WIDTH, true)", tag, whh, grad("router_gru.w_hh"));
        b.addStatement("copy(dGruState, gruDPrev, (long) rows * GRU_WIDTH)");
        b.addStatement("linearBackward($L, $L, gruDu, dNormed, $L, rows, DIM, GRU_WIDTH, true)", fnormed, pointer(rp + "gru_in"), grad(rp + "gru_in"));
    }

    /** The router's weight parameter: the router's own, or with named gates the first gate's (each gate is set on the layer). */
    private String routerParam(MoeInfo m) {
        if (m.mixer()) {
            return need(m.routerPrefix() + ".weight");
        }
        String pre = "layers." + m.index() + ".moe.";
        return m.moe().routers().size() > 1 ? need(pre + "router." + m.router().name().orElseThrow() + ".weight") : need(pre + "router.weight");
    }

    private static Optional<Loss.ZLoss> zLoss(MoeInfo m) {
        return m.moe().losses().stream().filter(x -> x instanceof Loss.ZLoss).map(x -> (Loss.ZLoss) x).findFirst();
    }

    /** {@code stream += down(act(gate(x)) * up(x))}, or {@code down(act(up(x)))} for an ungated FFN. */
    private void denseForward(CodeBlock.Builder f, String normed, String prefix, String param, Ffn ffn, String target) {
        String h = Integer.toString(ffn.hidden());
        String up = buffer(prefix + "Up", h), act = buffer(prefix + "Act", h);
        if (ffn.activation().gated()) {
            String gate = buffer(prefix + "Gate", h);
            f.addStatement("linear($L, $L, $L, rows, DIM, $L, false)", normed, pointer(param + ".gate"), gate, h);
            f.addStatement("linear($L, $L, $L, rows, DIM, $L, false)", normed, pointer(param + ".up"), up, h);
            f.addStatement("ops.glu($L, $L, $L, $L, (long) rows * $L)", activation(ffn.activation()), gate, up, act, h);
        } else {
            f.addStatement("linear($L, $L, $L, rows, DIM, $L, false)", normed, pointer(param + ".up"), up, h);
            f.addStatement("ops.activation($L, $L, $L, (long) rows * $L)", activation(ffn.activation()), up, act, h);
        }
        f.addStatement("linear($L, $L, $L, rows, $L, DIM, true)", act, pointer(param + ".down"), target, h);
    }

    private void denseBackward(CodeBlock.Builder b, String normed, String prefix, String param, Ffn ffn, String dOut) {
        String h = Integer.toString(ffn.hidden());
        b.addStatement("linearBackward($L, $L, $L, dAct, $L, rows, $L, DIM, false)", prefix + "Act", pointer(param + ".down"), dOut, grad(param + ".down"),
                h);
        if (ffn.activation().gated()) {
            b.addStatement("ops.gluBackward($L, $L, $L, dAct, dGate, dUp, (long) rows * $L)", activation(ffn.activation()), prefix + "Gate",
                    prefix + "Up", h);
            b.addStatement("linearBackward($L, $L, dGate, dNormed, $L, rows, DIM, $L, true)", normed, pointer(param + ".gate"), grad(param + ".gate"),
                    h);
        } else {
            b.addStatement("ops.activationBackward($L, $L, dAct, dUp, (long) rows * $L)", activation(ffn.activation()), prefix + "Up", h);
        }
        b.addStatement("linearBackward($L, $L, dUp, dNormed, $L, rows, DIM, $L, true)", normed, pointer(param + ".up"), grad(param + ".up"), h);
    }

    /** The rows and width the qk-norm of q ({@code query}) or k runs over: one per head, or `qk_norm full` one per token. */
    private String qkNormRows(boolean query) {
        if (cfg.qkNormFull()) {
            return query ? "rows, Q_DIM" : "rows, KV_DIM";
        }
        return query ? "rows * HEADS, HEAD_DIM" : "rows * KV_HEADS, HEAD_DIM";
    }

    /** The qk-norm's rstd values per token. */
    private String qkRstdWidth(boolean query) {
        return cfg.qkNormFull() ? "1" : query ? "HEADS" : "KV_HEADS";
    }

    /** The aux and z losses' values (from the layer's probability sums) and the aux gradient per expert, as the CPU class computes them. */
    private void balanceForward(CodeBlock.Builder f, MoeInfo m) {
        String i = m.id();
        int e = m.routed();
        f.addStatement("balance$L = 0", i);
        Optional<Loss.Aux> aux = m.moe().losses().stream().filter(x -> x instanceof Loss.Aux).map(x -> (Loss.Aux) x).findFirst();
        Optional<Loss.ZLoss> z = zLoss(m);
        Optional<Loss.Entropy> h = entropy(m.moe());
        if (aux.isEmpty() && z.isEmpty() && h.isEmpty()) {
            return;
        }
        if (aux.isPresent() && aux.get().scope() == Loss.Scope.SEQUENCE) {
            Loss.Aux a = aux.get();
            f.add("// aux loss (sequence scope): coef * E * mean over the sequences of Σ f_e P_e, each sequence's own f (its slots) and P "
                    + "(its mean score$L), as the CPU class\n", m.router().score() == Router.Score.SIGMOID ? ", sigmoid scores over each token's sum" : "");
            f.addStatement("aux$L = new float[batch * $L]", i, e);
            f.addStatement("balance$L += moe$L.sequenceBalanceStats(seq).auxLoss($Lf, $L, rows, aux$L)", i, i, (float) a.coef(),
                    m.router().selection() instanceof Router.Selection.TopP ? 0 : m.k(), i);
            aux = Optional.empty();
            if (z.isEmpty() && h.isEmpty()) {
                return;
            }
        }
        f.addStatement("float[] stats = moe$L.balanceStats()", i);
        aux.ifPresent(a -> {
            boolean global = a.scope() == Loss.Scope.GLOBAL_BATCH;
            f.add("// aux loss ($L scope): coef * E * Σ f_e P_e; f from counts, P the mean score\n", a.scope().name().toLowerCase(Locale.ROOT));
            f.addStatement("aux$L = new float[$L]", i, e);
            f.beginControlFlow("for (int ex = 0; ex < $L; ex++)", e);
            if (global) {
                f.addStatement("double fe = stepSlots$L > 0 ? (double) stepCounts$L[ex] / stepSlots$L : (double) counts$L[ex] / slots$L", i, i, i, i, i);
            } else {
                f.addStatement("double fe = (double) counts$L[ex] / slots$L", i, i);
            }
            if (a.tau() != 1.0 && m.zero() + m.copy() + m.constant() > 0) {
                f.add("// MoE++: the zero-computation experts' terms weigh tau = $L\n", a.tau());
                f.addStatement("double eta = ex < $L ? 1.0 : $L", m.experts(), a.tau());
                f.addStatement("balance$L += $L * eta * $L * fe * stats[ex] / rows", i, a.coef(), e);
                f.addStatement("aux$L[ex] = (float) ($L * eta * $L * fe / rows)", i, a.coef(), e);
            } else {
                f.addStatement("balance$L += $L * $L * fe * stats[ex] / rows", i, a.coef(), e);
                f.addStatement("aux$L[ex] = (float) ($L * $L * fe / rows)", i, a.coef(), e);
            }
            f.endControlFlow();
        });
        z.ifPresent(zl -> {
            f.add("// z-loss: coef * mean(logsumexp(logits)²)\n");
            f.addStatement("balance$L += $L * stats[$L] / rows", i, zl.coef(), e);
        });
        h.ifPresent(hl -> {
            f.add("// entropy loss: coef * mean over tokens of -Σ p log p\n");
            f.addStatement("balance$L += $L * stats[$L] / rows", i, hl.coef(), e + 1);
        });
    }

    /** Whether a router draws seeded random numbers (jitter noise, random drop priorities): the class then counts micro-batches. */
    private static boolean jitters(List<MoeInfo> moes) {
        return moes.stream().anyMatch(m -> m.router().jitter() != 0 || randomDrops(m));
    }

    private static boolean randomDrops(MoeInfo m) {
        return m.router().capacity() instanceof Router.Capacity.Factor cf && cf.drop() == Router.DropPolicy.RANDOM
                && !(m.router().selection() instanceof Router.Selection.ExpertChoice);
    }

    private void routingMethods(TypeSpec.Builder t, List<MoeInfo> moes) {
        MethodSpec.Builder loads = MethodSpec.methodBuilder("expertLoads").addAnnotation(Override.class).addModifiers(Modifier.PUBLIC)
                .returns(int[][].class).addStatement("int[][] loads = new int[$L][]", moes.size());
        MethodSpec.Builder bySeq = MethodSpec.methodBuilder("expertLoadsBySequence").addAnnotation(Override.class).addModifiers(Modifier.PUBLIC)
                .returns(int[][][].class).addStatement("int[][][] loads = new int[$L][batch][]", moes.size());
        MethodSpec.Builder reset = MethodSpec.methodBuilder("resetStepCounts").addAnnotation(Override.class).addModifiers(Modifier.PROTECTED);
        MethodSpec.Builder end = MethodSpec.methodBuilder("endStep").addAnnotation(Override.class).addModifiers(Modifier.PUBLIC);
        // Data parallelism sums the step's counts over the ranks before endStep (TrainableModel.stepLoads).
        int loadCount = moes.stream().mapToInt(m -> m.routed() + 1).sum();
        MethodSpec.Builder getLoads = MethodSpec.methodBuilder("stepLoads").addAnnotation(Override.class).addModifiers(Modifier.PUBLIC)
                .returns(long[].class).addStatement("long[] out = new long[$L]", loadCount);
        MethodSpec.Builder setLoads = MethodSpec.methodBuilder("setStepLoads").addAnnotation(Override.class).addModifiers(Modifier.PUBLIC)
                .addParameter(long[].class, "loads")
                .beginControlFlow("if (loads.length != $L)", loadCount)
                .addStatement("throw new $T($S + loads.length)", IllegalArgumentException.class, "step loads of " + loadCount + " counts expected, got ")
                .endControlFlow();
        int loadAt = 0;
        StringBuilder layers = new StringBuilder();
        for (int j = 0; j < moes.size(); j++) {
            MoeInfo m = moes.get(j);
            String i = m.id();
            layers.append(j == 0 ? "" : ", ").append(m.index());
            loads.addStatement("loads[$L] = counts$L.clone()", j, i);
            bySeq.addStatement("int[] chosen$L = moe$L.lastSelection()", i, i);
            if (m.capacity() != null || m.router().selection() instanceof Router.Selection.ExpertChoice) {
                bySeq.addCode("// the kept slots only: a slot dropped over capacity has no row\n");
                bySeq.addStatement("int[] rowOf$L = moe$L.lastPositions()", i, i);
            }
            bySeq.beginControlFlow("for (int b = 0; b < batch; b++)");
            bySeq.addStatement("int[] counts = new int[$L]", m.routed());
            bySeq.beginControlFlow("for (int slot = b * seq * $L; slot < (b + 1) * seq * $L; slot++)", m.k(), m.k());
            if (m.capacity() != null || m.router().selection() instanceof Router.Selection.ExpertChoice) {
                bySeq.beginControlFlow("if (rowOf$L[slot] >= 0)", i).addStatement("counts[chosen$L[slot]]++", i).endControlFlow();
            } else {
                bySeq.beginControlFlow("if (chosen$L[slot] < $L)", i, m.routed()).addStatement("counts[chosen$L[slot]]++", i).endControlFlow();
            }
            bySeq.endControlFlow();
            bySeq.addStatement("loads[$L][b] = counts", j);
            bySeq.endControlFlow();
            reset.addStatement("$T.fill(stepCounts$L, 0L)", java.util.Arrays.class, i);
            reset.addStatement("stepSlots$L = 0", i);
            getLoads.addStatement("$T.arraycopy(stepCounts$L, 0, out, $L, $L)", System.class, i, loadAt, m.routed());
            getLoads.addStatement("out[$L] = stepSlots$L", loadAt + m.routed(), i);
            setLoads.addStatement("$T.arraycopy(loads, $L, stepCounts$L, 0, $L)", System.class, loadAt, i, m.routed());
            setLoads.addStatement("stepSlots$L = loads[$L]", i, loadAt + m.routed());
            loadAt += m.routed() + 1;
            m.router().bias().ifPresent(bias -> {
                String name = "layers." + i + ".moe.router.expert_bias";
                end.addComment("layer $L: aux-free balancing, bias += rate * sign(mean load - load), on the host copy, then to the GPU", i);
                end.addStatement("float[] bias$L = hostValues($S)", i, name);
                end.addStatement("double mean$L = (double) stepSlots$L / $L", i, i, m.routed());
                end.beginControlFlow("for (int ex = 0; ex < $L; ex++)", m.routed());
                end.addStatement("bias$L[ex] += $Lf * (float) Math.signum(mean$L - stepCounts$L[ex])", i, (float) bias.rate(), i, i);
                end.endControlFlow();
                end.addStatement("uploadParameter($S)", name);
            });
        }
        MethodSpec.Builder dispatch = MethodSpec.methodBuilder("lastDispatch").addAnnotation(Override.class).addModifiers(Modifier.PUBLIC)
                .returns(int[][].class).addJavadoc("Each slot's routed expert in the last forward, per MoE layer; -1 where it went nowhere.\n")
                .addStatement("int[][] out = new int[$L][]", moes.size());
        for (int j = 0; j < moes.size(); j++) {
            MoeInfo m = moes.get(j);
            String i = m.id();
            dispatch.addStatement("int[] chosen$L = moe$L.lastSelection()", i, i);
            dispatch.addStatement("out[$L] = new int[chosen$L.length]", j, i);
            if (m.mixer()) {
                dispatch.addComment("attention experts: dropless, every slot has its expert");
                dispatch.addStatement("System.arraycopy(chosen$L, 0, out[$L], 0, chosen$L.length)", i, j, i);
                continue;
            }
            dispatch.addStatement("int[] row$L = moe$L.lastPositions()", i, i);
            dispatch.beginControlFlow("for (int slot = 0; slot < chosen$L.length; slot++)", i);
            dispatch.addComment("an FFN expert's slot without a row was dropped; NONE (top-p) is past the routed experts");
            dispatch.addStatement("int ex = chosen$L[slot]", i);
            dispatch.addStatement("out[$L][slot] = ex >= $L || ex < $L && row$L[slot] < 0 ? -1 : ex", j, m.routed(), m.experts(), i);
            dispatch.endControlFlow();
        }
        t.addMethod(dispatch.addStatement("return out").build());
        t.addMethod(loads.addStatement("return loads").build());
        t.addMethod(bySeq.addStatement("return loads").build());
        if (jitters(moes)) {
            t.addField(FieldSpec.builder(TypeName.INT, "microBatch", Modifier.PRIVATE)
                    .addJavadoc("Training forwards since beginStep: with the step and the layer, the jitter noise's seed (as the CPU class).\n").build());
            reset.addStatement("microBatch = 0");
        }
        end.addComment("the step counts on, as the CPU class's (the trainer sets it at each step too)");
        end.addStatement("step++");
        t.addMethod(reset.build());
        t.addMethod(end.build());
        if (!moes.isEmpty()) {
            t.addMethod(getLoads.addStatement("return out").build());
            t.addMethod(setLoads.build());
        }
        if (!moes.isEmpty()) {
            // the MoE layers hold their saved activations and a pinned host buffer: give them back with the model
            MethodSpec.Builder close = MethodSpec.methodBuilder("close").addAnnotation(Override.class).addModifiers(Modifier.PUBLIC);
            for (MoeInfo m : moes) {
                close.addStatement("moe$L.close()", m.id());
            }
            t.addMethod(close.addStatement("super.close()").build());
        }
        t.addField(TypeName.LONG, "step", Modifier.PRIVATE);
        t.addMethod(MethodSpec.methodBuilder("setStep").addAnnotation(Override.class).addModifiers(Modifier.PUBLIC)
                .addJavadoc("The optimiser step, which an annealed router temperature and the jitter noise's seed read.\n")
                .addParameter(TypeName.LONG, "step").addStatement("this.step = step").build());
        t.addMethod(MethodSpec.methodBuilder("moeLayers").addAnnotation(Override.class).addModifiers(Modifier.PUBLIC).returns(int[].class)
                .addStatement("return new int[] {$L}", layers).build());
        t.addMethod(MethodSpec.methodBuilder("scaled").addModifiers(Modifier.PRIVATE, Modifier.STATIC).returns(float[].class)
                .addParameter(float[].class, "values").addParameter(TypeName.FLOAT, "scale")
                .addStatement("float[] out = values.clone()")
                .beginControlFlow("for (int i = 0; i < out.length; i++)").addStatement("out[i] *= scale").endControlFlow()
                .addStatement("return out").build());
    }
}
