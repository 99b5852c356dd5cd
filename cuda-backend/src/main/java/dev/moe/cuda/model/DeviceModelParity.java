package dev.moe.cuda.model;

import dev.moe.compiler.MoeCompiler;
import dev.moe.compiler.ir.Model;
import dev.moe.cuda.CudaContext;
import dev.moe.cuda.codegen.CudaModelGenerator;
import dev.moe.dsl.SourceFile;
import dev.moe.runtime.Parameter;
import dev.moe.runtime.TrainableModel;
import dev.moe.runtime.cpu.CpuBackend;
import dev.moe.runtime.train.AdamW;
import java.nio.charset.StandardCharsets;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Locale;
import java.util.SplittableRandom;

/**
 * The device-resident generated models against their CPU-generated twins (run on a GPU machine;
 * {@code bench/gpu/run-gpu-tests.sh} calls it). Per model, three optimiser steps of two
 * micro-batches each: the loss of every step within 1e-4 relative, every parameter's gradient of
 * the first step within 1e-3 of the largest magnitude of that gradient, the gradient norm, and
 * after the steps the weights and AdamW moments brought back to the host: every weight within 1e-4 and
 * every moment within 1e-2 of its tensor's largest, or, where a few elements sit on a kink (a ReLU
 * input within rounding of zero, a gradient that is rounding noise under AdamW's normalisation), all
 * but 0.1% of the weights within 1e-4 and the weights' movement and the moments within 5% in norm.
 *
 * <p>The models: the recipes named on the command line (by default mixtral, deepseek-moe, switch, mole, mola and rmoe), then always
 * {@link #SIGMOID_MODEL}, {@link #SEQUENCE_AUX_MODEL}, {@link #DENSE_FEATURES_MODEL}, {@link #EXPERTS_MODEL}, {@link #ROUTER_OPTIONS_MODEL},
 * {@link #BLOCKS_MODEL}, {@link #MOEPP_MODEL}, {@link #LATENT_MODEL}, {@link #LORA_MODEL}, {@link #RECURRENT_MODEL}, {@link #JITTER_MODEL}, {@link #PARALLEL_MODEL}, {@link #MLA_MODEL} and {@link #MOA_MODEL}
 * with the jetmoe and bam recipes. After each training forward the expert loads (kept slots per expert, after any capacity drops) must
 * equal the CPU's exactly.
 *
 * <pre>java ... [-Dmoe.parity.only=Moa,JetMoE] dev.moe.cuda.model.DeviceModelParity [recipes/x.moe ...]</pre>
 */
public final class DeviceModelParity {
    /** A DeepSeek-V3-style layer the recipes do not cover on the GPU: sigmoid scores, selection bias, normalisation, scaling, a shared expert, z-loss-free. */
    static final String SIGMOID_MODEL = """
            moe v3 {
              shared 1 x swiglu(hidden: 48)
              routed 12 x swiglu(hidden: 48)
              router {
                score sigmoid
                top_k 3
                normalize true
                scale 2.5
                bias aux_free(rate: 0.01)
              }
            }
            moe soft {
              routed 6 x swiglu(hidden: 40)
              router {
                score softmax
                top_k 2
                normalize false
              }
              balance aux(coef: 0.01, scope: global_batch)
              balance z_loss(coef: 0.001)
            }
            model SigmoidTiny {
              vocab 97
              context 64
              dim 64
              heads 4
              kv_heads 2
              norm rms(eps: 1e-6)
              position rope(theta: 10000)
              causal true
              tie_embeddings true
              ffn dense = geglu(hidden: 96)
              layers 4 {
                first 1: attention, dense
                2: attention, soft
                rest: attention, v3
              }
            }
            """;

    /** The models of {@link #SIGMOID_MODEL}. */
    public static List<Model> sigmoidModels() {
        return compile("sigmoid-tiny.moe", SIGMOID_MODEL);
    }

    /**
     * DeepSeek-V3's MoE without its latent attention: sigmoid scores, selection bias, group-limited top-k, normalisation,
     * scaling, a shared expert and the sequence-wise aux loss (its coefficient raised so that the loss shows in the gradients);
     * then a micro-batch aux loss on sigmoid scores through a sigmoid-activated temperature, and a sequence-wise one on
     * top-p (f over each sequence's used slots) beside a z-loss.
     */
    public static final String SEQUENCE_AUX_MODEL = """
            moe v3 {
              shared 1 x swiglu(hidden: 48)
              routed 16 x swiglu(hidden: 48)
              router {
                score sigmoid
                top_k 4
                normalize true
                scale 2.5
                bias aux_free(rate: 0.01)
                groups limited(groups: 4, top: 2)
              }
              balance aux(coef: 0.01, scope: sequence)
            }
            moe sig {
              routed 8 x swiglu(hidden: 40)
              router {
                score sigmoid
                top_k 2
                normalize false
                temperature 1.5
                activation sigmoid
              }
              balance aux(coef: 0.01, scope: micro_batch)
            }
            moe topp {
              routed 8 x swiglu(hidden: 40)
              router {
                score softmax
                top_p 0.45
                max_k 4
                normalize false
              }
              balance aux(coef: 0.01, scope: sequence)
              balance z_loss(coef: 0.001)
            }
            model SequenceAuxTiny {
              vocab 97
              context 64
              dim 64
              heads 4
              kv_heads 2
              norm rms(eps: 1e-6)
              position rope(theta: 10000)
              causal true
              tie_embeddings true
              ffn dense = swiglu(hidden: 96)
              layers 4 {
                first 1: attention, dense
                1: attention, topp
                2: attention, sig
                rest: attention, v3
              }
            }
            """;

    /** The models of {@link #SEQUENCE_AUX_MODEL}. */
    public static List<Model> sequenceAuxModels() {
        return compile("sequence-aux.moe", SEQUENCE_AUX_MODEL);
    }

    /**
     * The dense-model features no starter recipe combines with device-resident routing: LayerNorm (with its bias), qk-norm over
     * the whole q and k and per head (grouped-query, so the two norms run over different row counts), q/k/v biases, ungated
     * ReLU and GELU dense FFNs and an ungated shared expert, partial rotary.
     */
    static final String DENSE_FEATURES_MODEL = """
            ffn plain = relu(hidden: 80)
            ffn smooth = gelu(hidden: 72)
            moe small {
              shared 1 x gelu(hidden: 40)
              routed 6 x swiglu(hidden: 40)
              router {
                score softmax
                top_k 2
                normalize true
              }
              balance aux(coef: 0.01, scope: micro_batch)
            }
            model LayerNormTiny {
              vocab 97
              context 64
              dim 48
              heads 4
              kv_heads 2
              norm layer(eps: 1e-5)
              position rope(theta: 10000)
              causal true
              qk_norm full
              qkv_bias true
              layers 3 {
                first 1: attention, plain
                2: attention, smooth
                rest: attention, small
              }
            }
            model QkNormTiny {
              vocab 97
              context 64
              dim 64
              heads 4
              kv_heads 2
              head_dim 12
              norm rms(eps: 1e-6)
              position rope(theta: 10000, fraction: 0.5)
              causal true
              qk_norm true
              qkv_bias true
              tie_embeddings true
              layers 2 {
                first 1: attention, smooth
                rest: attention, small
              }
            }
            """;

    /**
     * Routed experts other than SwiGLU and capacity factors: a Switch-like model (top-1 softmax over ungated ReLU experts,
     * capacity factor 1.25 dropping by position, micro-batch aux loss) and one of ungated GELU experts under top-2 with a
     * capacity factor 1.0 dropping by probability, a global-batch aux loss and the aux-free bias, and gated GEGLU experts,
     * dropless. At 64 tokens a step, the capacities (10 of 64 for the switch layer, 16 of 128 for the others) drop slots.
     */
    public static final String EXPERTS_MODEL = """
            ffn dense = relu(hidden: 96)
            moe switch {
              routed 8 x relu(hidden: 64)
              router {
                score softmax
                top_k 1
                capacity factor(1.25, drop: position)
              }
              balance aux(coef: 0.01, scope: micro_batch)
            }
            moe heavy {
              shared 1 x swiglu(hidden: 32)
              routed 8 x gelu(hidden: 48)
              router {
                score softmax
                top_k 2
                normalize true
                bias aux_free(rate: 0.01)
                capacity factor(1.0, drop: probability)
              }
              balance aux(coef: 0.01, scope: global_batch)
            }
            moe glu {
              routed 6 x geglu(hidden: 40)
              router {
                score sigmoid
                top_k 2
                normalize true
                scale 2.0
              }
            }
            model SwitchLikeTiny {
              vocab 97
              context 64
              dim 64
              heads 4
              norm rms(eps: 1e-6)
              position rope(theta: 10000)
              causal true
              tie_embeddings true
              layers 4 {
                every 2: attention, switch
                rest: attention, dense
              }
            }
            model ExpertActivationsTiny {
              vocab 97
              context 64
              dim 48
              heads 4
              kv_heads 2
              norm rms(eps: 1e-6)
              position rope(theta: 10000)
              causal true
              layers 3 {
                first 1: attention, heavy
                2: attention, glu
                rest: attention, heavy
              }
            }
            """;

    /** The models of {@link #EXPERTS_MODEL}. */
    public static List<Model> expertModels() {
        return compile("experts-tiny.moe", EXPERTS_MODEL);
    }

    /** The models of {@link #DENSE_FEATURES_MODEL}. */
    public static List<Model> denseFeatureModels() {
        return compile("dense-features.moe", DENSE_FEATURES_MODEL);
    }

    /**
     * The router options of the zoo on the GPU: top-p with an entropy loss, top-p with a temperature annealed through tanh
     * (read at the step the parity loop sets), MoGE quota groups, DeepSeek-V3's group-limited sigmoid routing with an
     * expert bias, a routed scale and a shared expert, Read-ME's pre-gating router (it reads the embeddings); and expert-choice
     * routing (each expert picks its tokens in each sequence); several named gates chosen per sequence by its domain (UniMoE-Audio).
     */
    public static final String ROUTER_OPTIONS_MODEL = """
            moe topp {
              routed 8 x swiglu(hidden: 40)
              router {
                score softmax
                top_p 0.45
                max_k 4
                normalize false
              }
              balance aux(coef: 0.01, scope: micro_batch)
              balance entropy(coef: 0.01)
            }
            moe dts {
              routed 8 x swiglu(hidden: 40)
              router {
                top_p 0.8
                max_k 6
                temperature anneal(start: 2.0, end: 0.5, steps: 200)
                activation tanh
              }
              balance aux(coef: 0.01, scope: global_batch)
              balance z_loss(coef: 0.001)
            }
            moe quota {
              shared 1 x swiglu(hidden: 32)
              routed 8 x swiglu(hidden: 32)
              router {
                score softmax
                top_k 4
                normalize false
                groups quota(2)
              }
              balance aux(coef: 0.01, scope: micro_batch)
            }
            moe limited {
              shared 1 x swiglu(hidden: 32)
              routed 16 x swiglu(hidden: 24)
              router {
                score sigmoid
                top_k 4
                normalize true
                scale 2.5
                bias aux_free(rate: 0.01)
                groups limited(groups: 4, top: 2)
              }
            }
            moe pre {
              routed 6 x swiglu(hidden: 32)
              router {
                top_k 2
                normalize true
                pregate true
              }
              balance aux(coef: 0.01, scope: micro_batch)
            }
            model RouterOptionsTiny {
              vocab 97
              context 64
              dim 64
              heads 4
              kv_heads 2
              norm rms(eps: 1e-6)
              position rope(theta: 10000)
              causal true
              tie_embeddings true
              layers 5 {
                first 1: attention, topp
                2: attention, dts
                3: attention, quota
                4: attention, pre
                rest: attention, limited
              }
            }
            moe ec {
              shared 1 x swiglu(hidden: 24)
              routed 8 x swiglu(hidden: 32)
              router {
                mode expert_choice
                capacity factor(1.5)
              }
              balance z_loss(coef: 0.001)
            }
            model ExpertChoiceParityTiny {
              vocab 97
              context 64
              dim 48
              heads 4
              kv_heads 2
              norm rms(eps: 1e-6)
              position rope(theta: 10000)
              causal true
              tie_embeddings true
              layers 2 {
                all: attention, ec
              }
            }
            moe gated {
              shared 1 x swiglu(hidden: 24)
              routed 6 x swiglu(hidden: 32)
              routed 1 x zero
              router speech {
                top_p 0.6
                max_k 3
              }
              router music {
                top_p 0.6
                max_k 3
              }
              balance aux(coef: 0.01, tau: 0.5)
            }
            model NamedGatesTiny {
              vocab 97
              context 64
              dim 48
              heads 4
              kv_heads 2
              norm rms(eps: 1e-6)
              position rope(theta: 10000)
              causal true
              tie_embeddings true
              layers 2 {
                first 1: attention, swiglu(hidden: 64)
                rest: attention, gated
              }
            }
            """;

    /** The models of {@link #ROUTER_OPTIONS_MODEL}. */
    public static List<Model> routerOptionModels() {
        return compile("router-options.moe", ROUTER_OPTIONS_MODEL);
    }

    /**
     * LongCat-Flash's shortcut-connected block (its MoE reads the first FFN's input and joins the stream at the block's end), and
     * MoE++'s zero and copy experts (with the aux loss's tau), null experts under top-p (UniMoE-Audio) and LongCat's copy
     * experts with an expert bias in a shortcut block; PR-MoE's residual blocks (a dense FFN and a top-1 MoE mixed per token)
     * with a different expert count per layer.
     */
    static final String BLOCKS_MODEL = """
            moe flash {
              shared 1 x swiglu(hidden: 24)
              routed 8 x swiglu(hidden: 32)
              router {
                score softmax
                top_k 2
                normalize false
                scale 2.0
                bias aux_free(rate: 0.01)
              }
              balance z_loss(coef: 0.001)
            }
            model ShortcutTiny {
              vocab 97
              context 64
              dim 48
              heads 4
              kv_heads 2
              norm rms(eps: 1e-6)
              position rope(theta: 10000)
              causal true
              tie_embeddings true
              layers 2 {
                all: shortcut(attention, swiglu(hidden: 64), flash)
              }
            }
            moe zc {
              routed 6 x swiglu(hidden: 32)
              routed 1 x zero
              routed 2 x copy
              router {
                score softmax
                top_k 2
                normalize false
              }
              balance aux(coef: 0.01, scope: micro_batch, tau: 0.75)
            }
            moe nulls {
              shared 1 x swiglu(hidden: 24)
              routed 6 x swiglu(hidden: 32)
              routed 2 x zero
              router {
                score softmax
                top_p 0.5
                max_k 3
                normalize true
              }
              balance aux(coef: 0.01, scope: global_batch)
            }
            moe flashcopy {
              routed 8 x swiglu(hidden: 32)
              routed 4 x copy
              router {
                score softmax
                top_k 3
                normalize false
                scale 3.0
                bias aux_free(rate: 0.01)
              }
            }
            model ZeroCopyTiny {
              vocab 97
              context 64
              dim 48
              heads 4
              kv_heads 2
              norm rms(eps: 1e-6)
              position rope(theta: 10000)
              causal true
              tie_embeddings true
              layers 3 {
                first 1: attention, zc
                1: attention, nulls
                rest: shortcut(attention, swiglu(hidden: 64), flashcopy)
              }
            }
            moe pyramid(n = 4) {
              routed n x gelu(hidden: 40)
              router {
                score softmax
                top_k 1
              }
              balance aux(coef: 0.01, scope: micro_batch)
            }
            model ResidualTiny {
              vocab 97
              context 64
              dim 48
              heads 4
              norm layer(eps: 1e-5)
              position rope(theta: 10000)
              causal true
              tie_embeddings true
              layers 3 {
                first 1: residual(attention, gelu(hidden: 56), pyramid)
                rest: residual(attention, gelu(hidden: 56), pyramid(n: 6))
              }
            }
            """;

    /**
     * MoE++ (moe-plus-plus.moe, smaller): constant experts after zero and copy experts, and gating residuals (each router adds
     * a map of the previous MoE layer's logits; the first has none), across MoEs of different widths (a non-square map), with
     * and without a balancing loss (the router backward's two kernels).
     */
    public static final String MOEPP_MODEL = """
            moe mpp(residual = true) {
              routed 6 x swiglu(hidden: 32)
              routed 1 x zero
              routed 1 x copy
              routed 2 x constant
              router {
                score softmax
                top_k 2
                normalize false
                gating_residual residual
              }
              balance aux(coef: 0.01, scope: micro_batch, tau: 0.75)
            }
            moe mpz {
              shared 1 x swiglu(hidden: 24)
              routed 4 x swiglu(hidden: 32)
              routed 1 x copy
              routed 3 x constant
              router {
                score softmax
                top_k 3
                normalize true
                gating_residual true
              }
            }
            model ConstantResidualTiny {
              vocab 97
              context 64
              dim 48
              heads 4
              kv_heads 2
              norm rms(eps: 1e-6)
              position rope(theta: 10000)
              causal true
              tie_embeddings true
              layers 3 {
                first 1: attention, mpp(residual: false)
                1: attention, mpz
                rest: attention, mpp
              }
            }
            """;

    /**
     * MoLE's latent experts (mole.moe, smaller): each layer's experts share a down-projection to the rank and read the latent
     * vector, while the router reads the layer's input. Softmax top-2 with a shared expert and the aux and z losses; pre-gating
     * (the router reads the embeddings) over GELU experts with a capacity factor dropping by probability; sigmoid scores with an
     * expert bias over ungated ReLU experts and zero experts, in a shortcut block.
     */
    public static final String LATENT_MODEL = """
            moe mole {
              shared 1 x swiglu(hidden: 24)
              routed 8 x latent(rank: 16, ffn: swiglu(hidden: 32))
              router {
                score softmax
                top_k 2
                normalize true
              }
              balance aux(coef: 0.01, scope: micro_batch)
              balance z_loss(coef: 0.001)
            }
            moe molepre {
              routed 6 x latent(rank: 20, ffn: gelu(hidden: 32))
              router {
                top_k 2
                normalize true
                pregate true
                capacity factor(1.0, drop: probability)
              }
              balance aux(coef: 0.01, scope: global_batch)
            }
            moe molez {
              routed 6 x latent(rank: 12, ffn: relu(hidden: 40))
              routed 2 x zero
              router {
                score sigmoid
                top_k 2
                normalize true
                scale 2.0
                bias aux_free(rate: 0.01)
              }
            }
            model LatentTiny {
              vocab 97
              context 64
              dim 48
              heads 4
              kv_heads 2
              norm rms(eps: 1e-6)
              position rope(theta: 10000)
              causal true
              tie_embeddings true
              layers 3 {
                first 1: attention, mole
                1: attention, molepre
                rest: shortcut(attention, swiglu(hidden: 64), molez)
              }
            }
            """;

    /** The models of {@link #LATENT_MODEL}. */
    public static List<Model> latentModels() {
        return compile("latent.moe", LATENT_MODEL);
    }

    /**
     * Multi-head latent attention (deepseek-v3.moe's attention, smaller): a low-rank query with its RMSNorm, the latent and its
     * RMSNorm, one rotary key shared by the heads, values narrower than the query/key heads (padded to them on the GPU) under
     * DeepSeek-V3's group-limited sigmoid routing with an expert bias, a scale and a shared expert; and a direct query
     * projection with values as wide as the heads (20, not a power of two), a non-default latent eps and a sliding window, in a shortcut block (two
     * latent attentions per layer).
     */
    public static final String MLA_MODEL = """
            moe v3 {
              shared 1 x swiglu(hidden: 32)
              routed 8 x swiglu(hidden: 32)
              router {
                score sigmoid
                top_k 2
                normalize true
                scale 2.5
                bias aux_free(rate: 0.01)
                groups limited(groups: 4, top: 2)
              }
            }
            moe soft {
              routed 6 x swiglu(hidden: 40)
              router {
                score softmax
                top_k 2
                normalize true
              }
              balance aux(coef: 0.01, scope: micro_batch)
            }
            model MlaTiny {
              vocab 97
              context 64
              dim 48
              heads 4
              attention mla(q_rank: 24, kv_rank: 16, nope_dim: 8, rope_dim: 8, v_dim: 12)
              norm rms(eps: 1e-6)
              position rope(theta: 10000)
              causal true
              tie_embeddings false
              layers 3 {
                first 1: attention, swiglu(hidden: 96)
                rest: attention, v3
              }
            }
            model MlaDirectQTiny {
              vocab 97
              context 64
              dim 48
              heads 3
              attention mla(kv_rank: 20, nope_dim: 14, rope_dim: 6, v_dim: 20, eps: 1e-5)
              norm rms(eps: 1e-6)
              position rope(theta: 500)
              causal true
              sliding_window 12
              tie_embeddings true
              layers 2 {
                first 1: attention, soft
                rest: shortcut(attention, swiglu(hidden: 64), soft)
              }
            }
            """;

    /** The models of {@link #MLA_MODEL}. */
    public static List<Model> mlaModels() {
        return compile("mla.moe", MLA_MODEL);
    }

    /**
     * MoLA's LoRA experts over a frozen base (mola.moe, smaller): a different expert count per layer, a gated base with a
     * non-integer alpha / rank (1.5), and an ungated GELU base beside a shared expert, routed by sigmoid scores with a scale and
     * the aux-free bias, with the z-loss (the router backward's two kernels), ranks 2 and 3 (low-rank rows padded for alignment).
     */
    public static final String LORA_MODEL = """
            moe mola(n = 4) {
              routed n x lora(rank: 4, alpha: 6, base: swiglu(hidden: 40))
              router {
                score softmax
                top_k 2
                normalize true
              }
              balance aux(coef: 0.01, scope: micro_batch)
            }
            moe plain {
              shared 1 x swiglu(hidden: 24)
              routed 8 x lora(rank: 3, alpha: 3, base: gelu(hidden: 36))
              router {
                score sigmoid
                top_k 3
                normalize true
                scale 2.0
                bias aux_free(rate: 0.01)
              }
            }
            moe zl {
              routed 5 x lora(rank: 2, alpha: 4, base: swiglu(hidden: 32))
              router {
                score softmax
                top_k 1
              }
              balance z_loss(coef: 0.001)
            }
            model LoraTiny {
              vocab 97
              context 64
              dim 48
              heads 4
              kv_heads 2
              norm rms(eps: 1e-6)
              position rope(theta: 10000)
              causal true
              tie_embeddings true
              layers 4 {
                0: attention, mola(n: 2)
                1: attention, plain
                2: attention, zl
                3: attention, mola(n: 5)
              }
            }
            """;

    /** The models of {@link #LORA_MODEL}. */
    public static List<Model> loraModels() {
        return compile("lora.moe", LORA_MODEL);
    }

    /**
     * RMoE (rmoe.moe, smaller): recurrent routers sharing one GRU (width 12) whose state is carried past a dense layer and a
     * plain MoE layer (the first layer's router is plain, so the first recurrent layer starts from the zero state), with and
     * without a balancing loss (the router backward's two kernels), one over ungated experts and a zero expert; the last adds a
     * gating residual of that one's logits, so its logit gradient is both what the residual sends back and what its GRU reads.
     */
    public static final String RECURRENT_MODEL = """
            ffn dense = swiglu(hidden: 64)
            moe plain {
              routed 6 x swiglu(hidden: 32)
              router {
                score softmax
                top_k 2
                normalize true
              }
              balance aux(coef: 0.01, scope: micro_batch)
            }
            moe rec(residual = false) {
              routed 6 x swiglu(hidden: 32)
              router {
                score softmax
                top_k 2
                normalize true
                recurrent gru(width: 12)
                gating_residual residual
              }
              balance aux(coef: 0.01, scope: micro_batch)
              balance z_loss(coef: 0.001)
            }
            moe recz {
              routed 4 x gelu(hidden: 40)
              routed 1 x zero
              router {
                score softmax
                top_k 2
                normalize false
                recurrent gru(width: 12)
              }
            }
            model RecurrentTiny {
              vocab 97
              context 64
              dim 48
              heads 4
              kv_heads 2
              norm rms(eps: 1e-6)
              position rope(theta: 10000)
              causal true
              tie_embeddings true
              layers 6 {
                first 1: attention, plain
                1: attention, rec
                2: attention, dense
                3: attention, plain
                4: attention, recz
                rest: attention, rec(residual: true)
              }
            }
            """;

    /** The models of {@link #RECURRENT_MODEL}. */
    public static List<Model> recurrentModels() {
        return compile("recurrent.moe", RECURRENT_MODEL);
    }

    /**
     * Router jitter (Mixtral's router_jitter_noise, Switch's input jitter): in training forwards each router reads its input times
     * uniform noise the device model draws on the GPU as the CPU class draws it (seeded by the step, the micro-batch and the
     * layer), so both sides route alike; with a balancing loss, with pre-gating (the noise multiplies the embeddings, and their
     * gradient), with a recurrent router (whose GRU reads the input without noise), and with several named gates (each
     * sequence's gate reads its jittered rows).
     */
    public static final String JITTER_MODEL = """
            moe jit {
              routed 6 x swiglu(hidden: 32)
              router {
                score softmax
                top_k 2
                normalize true
                jitter 0.2
              }
              balance aux(coef: 0.01, scope: micro_batch)
            }
            moe jitpre {
              routed 6 x swiglu(hidden: 32)
              router {
                top_k 2
                normalize true
                pregate true
                jitter 0.1
              }
            }
            moe jitrec {
              routed 6 x swiglu(hidden: 32)
              router {
                top_k 2
                normalize true
                recurrent gru(width: 8)
                jitter 0.2
              }
              balance z_loss(coef: 0.001)
            }
            moe jitgates {
              routed 6 x swiglu(hidden: 32)
              router speech {
                top_k 2
                jitter 0.2
              }
              router music {
                top_k 2
                jitter 0.2
              }
              balance aux(coef: 0.01, scope: micro_batch)
            }
            model JitterTiny {
              vocab 97
              context 64
              dim 48
              heads 4
              kv_heads 2
              norm rms(eps: 1e-6)
              position rope(theta: 10000)
              causal true
              tie_embeddings true
              layers 4 {
                first 1: attention, jit
                1: attention, jitpre
                2: attention, jitrec
                rest: attention, jitgates
              }
            }
            """;

    /**
     * Parallel blocks (GPT-J, BAM without its attention experts): attention and a dense FFN or an MoE side by side on the block's
     * one norm, beside a pre-norm layer; with RMSNorm, a shared expert and the aux and z losses, and with LayerNorm (the shared
     * norm's bias), q/k/v biases, an ungated ReLU FFN and a sigmoid router over GELU experts.
     */
    public static final String PARALLEL_MODEL = """
            moe side {
              shared 1 x swiglu(hidden: 24)
              routed 6 x swiglu(hidden: 32)
              router {
                score softmax
                top_k 2
                normalize true
              }
              balance aux(coef: 0.01, scope: micro_batch)
              balance z_loss(coef: 0.001)
            }
            moe sig {
              routed 6 x gelu(hidden: 40)
              router {
                score sigmoid
                top_k 2
                normalize true
                scale 2.0
              }
            }
            model ParallelTiny {
              vocab 97
              context 64
              dim 48
              heads 4
              kv_heads 2
              norm rms(eps: 1e-6)
              position rope(theta: 10000)
              causal true
              tie_embeddings true
              ffn dense = swiglu(hidden: 64)
              layers 3 {
                first 1: parallel(attention, dense)
                1: attention, side
                rest: parallel(attention, side)
              }
            }
            model ParallelLayerNormTiny {
              vocab 97
              context 64
              dim 48
              heads 4
              norm layer(eps: 1e-5)
              position rope(theta: 10000)
              causal true
              qkv_bias true
              ffn plain = relu(hidden: 80)
              layers 2 {
                first 1: parallel(attention, plain)
                rest: parallel(attention, sig)
              }
            }
            """;

    /** The models of {@link #PARALLEL_MODEL}. */
    public static List<Model> parallelModels() {
        return compile("parallel.moe", PARALLEL_MODEL);
    }

    /**
     * Mixtures of attention experts in the mixer slot: JetMoE-like (top-2 then softmax over four experts of two heads that share
     * their group's keys and values, aux and z losses) in pre-norm layers beside a plain attention layer, with partial RoPE; and
     * BAM-like (soft routing: every expert by its softmax weight; three experts with their own keys and values, a global-batch aux loss and the z-loss)
     * in parallel blocks beside an MoE, with LayerNorm, a sliding window and a group of experts that shares keys and values after
     * one that does not.
     */
    public static final String MOA_MODEL = """
            moe heads {
              routed 4 x attention(heads: 2, head_dim: 12, shared_kv: true)
              router {
                order topk_then_softmax
                top_k 2
              }
              balance aux(coef: 0.01)
              balance z_loss(coef: 0.001)
            }
            moe side {
              routed 4 x swiglu(hidden: 32)
              router {
                top_k 2
                normalize true
              }
              balance aux(coef: 0.01, scope: micro_batch)
            }
            moe blend {
              routed 3 x attention(heads: 3, head_dim: 8)
              routed 2 x attention(heads: 2, head_dim: 16, shared_kv: true)
              router {
                mode soft
              }
              balance aux(coef: 0.02, scope: global_batch)
              balance z_loss(coef: 0.001)
            }
            model MoaTiny {
              vocab 97
              context 64
              dim 48
              heads 4
              norm rms(eps: 1e-6)
              position rope(theta: 10000, fraction: 0.5)
              causal true
              tie_embeddings true
              layers 3 {
                0: heads, side
                1: attention, side
                2: heads, swiglu(hidden: 64)
              }
            }
            model SoftMoaTiny {
              vocab 97
              context 64
              dim 48
              heads 4
              norm layer(eps: 1e-5)
              position rope(theta: 10000)
              causal true
              sliding_window 12
              layers 2 {
                all: parallel(blend, side)
              }
            }
            """;

    /** The models of {@link #MOA_MODEL}. */
    public static List<Model> moaModels() {
        return compile("moa.moe", MOA_MODEL);
    }

    /** {@link #MOA_MODEL}'s first model with a router temperature of 2, which the GPU router of attention experts does not take. */
    public static Model moaModelWithTemperature() {
        String text = MOA_MODEL.replace("""
                    order topk_then_softmax
                """, """
                    order topk_then_softmax
                    temperature 2.0
                """);
        if (text.equals(MOA_MODEL)) {
            throw new IllegalStateException("MOA_MODEL no longer has the router line the temperature goes after");
        }
        return compile("moa.moe", text).getFirst();
    }

    /** The models of {@link #JITTER_MODEL}. */
    public static List<Model> jitterModels() {
        return compile("jitter.moe", JITTER_MODEL);
    }

    /**
     * Capacity factors that drop at random: each training forward's slot priorities are the CPU class's seeded draws (step,
     * micro-batch, layer), which the GPU computes slot by slot; top-1 with the aux loss, and top-2 over ReLU experts.
     */
    public static final String RANDOM_DROP_MODEL = """
            moe rd1 {
              routed 6 x swiglu(hidden: 32)
              router {
                top_k 1
                capacity factor(1.0, drop: random)
              }
              balance aux(coef: 0.01, scope: micro_batch)
            }
            moe rd2 {
              routed 4 x relu(hidden: 40)
              router {
                top_k 2
                normalize true
                capacity factor(1.25, drop: random)
              }
            }
            model RandomDropTiny {
              vocab 97
              context 64
              dim 48
              heads 4
              kv_heads 2
              norm rms(eps: 1e-6)
              position rope(theta: 10000)
              causal true
              tie_embeddings true
              layers 3 {
                0: attention, rd1
                1: attention, rd2
                2: attention, rd1
              }
            }
            """;

    /** The models of {@link #RANDOM_DROP_MODEL}. */
    public static List<Model> randomDropModels() {
        return compile("random-drops.moe", RANDOM_DROP_MODEL);
    }

    /** The models of {@link #MOEPP_MODEL}. */
    public static List<Model> moeppModels() {
        return compile("moepp.moe", MOEPP_MODEL);
    }

    /** The models of {@link #BLOCKS_MODEL}. */
    public static List<Model> blockModels() {
        return compile("blocks.moe", BLOCKS_MODEL);
    }

    private static List<Model> compile(String name, String text) {
        SourceFile.ReadResult read = SourceFile.decode(name, text.getBytes(StandardCharsets.UTF_8));
        return MoeCompiler.compile(((SourceFile.ReadResult.Ok) read).source()).orThrow().models();
    }

    private static final double LOSS_TOLERANCE = 1e-4;
    private static final double GRAD_TOLERANCE = 1e-3;

    public static void main(String[] args) throws Exception {
        List<Model> models = new ArrayList<>();
        List<String> files = args.length > 0 ? List.of(args) : List.of("recipes/mixtral.moe", "recipes/deepseek-moe.moe", "recipes/switch.moe",
                "recipes/mole.moe", "recipes/mola.moe", "recipes/rmoe.moe");
        for (String f : files) {
            models.addAll(MoeCompiler.compile(Path.of(f)).orThrow().models());
        }
        models.addAll(sigmoidModels());
        models.addAll(sequenceAuxModels());
        models.addAll(denseFeatureModels());
        models.addAll(expertModels());
        models.addAll(routerOptionModels());
        models.addAll(blockModels());
        models.addAll(moeppModels());
        models.addAll(latentModels());
        models.addAll(loraModels());
        models.addAll(recurrentModels());
        models.addAll(jitterModels());
        models.addAll(randomDropModels());
        models.addAll(parallelModels());
        models.addAll(mlaModels());
        models.addAll(moaModels());
        for (String recipe : List.of("recipes/jetmoe.moe", "recipes/bam.moe")) {
            if (!files.contains(recipe)) {
                models.addAll(MoeCompiler.compile(Path.of(recipe)).orThrow().models());
            }
        }
        // -Dmoe.parity.only=Moa,JetMoE: only the models whose names contain one of these (a quick re-check of one feature)
        String only = System.getProperty("moe.parity.only");
        if (only != null && !only.isBlank()) {
            List<String> wanted = List.of(only.split(","));
            models.removeIf(m -> wanted.stream().noneMatch(w -> m.name().contains(w.strip())));
        }
        int failures = 0;
        try (CudaContext ctx = new CudaContext(0)) {
            System.out.println("device-resident models against the CPU-generated classes on " + ctx.deviceName);
            for (Model m : models) {
                failures += check(ctx, m);
            }
            // attention as batched GEMMs with exact fp32 products: the same tolerances as the tiled kernels
            System.out.println("-- attention as batched GEMMs (fp32 products)");
            ctx.attentionGemm = dev.moe.cuda.GemmAttention.Storage.F32;
            for (Model m : models) {
                failures += check(ctx, m);
            }
            // --precision bf16: bf16 routing, expert GEMMs and attention against the fp32 CPU; loose tolerances
            ctx.expertPrecision = dev.moe.cuda.kernels.MoeKernelSource.Precision.BF16;
            ctx.attentionGemm = dev.moe.cuda.GemmAttention.Storage.BF16;
            ctx.blas.setTf32(true);
            for (Model m : models) {
                failures += checkBf16(ctx, m);
            }
            ctx.expertPrecision = dev.moe.cuda.kernels.MoeKernelSource.Precision.FP32;
            ctx.attentionGemm = null;
            ctx.blas.setTf32(false);
        }
        System.out.println(failures == 0 ? "all device-model checks passed" : failures + " device-model checks FAILED");
        System.exit(failures == 0 ? 0 : 1);
    }

    private static int check(CudaContext ctx, Model m) {
        DeviceModels.Classes classes = DeviceModels.compile(m, m.name());
        CpuBackend backend = new CpuBackend(4, CpuBackend.VECTOR_API);
        TrainableModel cpu = classes.createHost(backend);
        int failures = 0;
        List<float[]> firstGradC = new ArrayList<>(), firstGradG = new ArrayList<>();
        int divergedAt = 0;
        double divergedSlots = 0;
        try (DeviceModel gpu = classes.create(ctx, backend)) {
            cpu.initialize(11);
            gpu.initialize(11);
            List<Parameter> pc = cpu.parameters();
            List<Parameter> pg = gpu.parameters();
            List<float[]> initial = pc.stream().map(a -> java.util.Arrays.copyOfRange(a.value(), a.offset(), a.offset() + a.size())).toList();
            AdamW adamC = new AdamW(pc, 0.9, 0.95, 1e-8, 0.1);
            AdamW adamG = new AdamW(pg, 0.9, 0.95, 1e-8, 0.1);
            SplittableRandom rng = new SplittableRandom(5);
            int batch = 2, seq = Math.min(32, m.config().context());
            // named gates: the first sequence takes the second gate, the second the first
            List<String> gates = gateNames(m);
            if (!gates.isEmpty()) {
                List<String> domains = List.of(gates.get(1 % gates.size()), gates.get(0));
                cpu.setDomains(domains);
                gpu.setDomains(domains);
            }
            for (int step = 0; step < 3; step++) {
                double lossC = 0, lossG = 0;
                pc.forEach(Parameter::zeroGrad);
                pg.forEach(Parameter::zeroGrad);
                // an annealed temperature reads the step: 0, 100 and 200 of its 200 steps
                cpu.setStep(step * 100L);
                gpu.setStep(step * 100L);
                cpu.beginStep();
                gpu.beginStep();
                for (int micro = 0; micro < 2; micro++) {
                    int[] in = new int[batch * seq], tg = new int[batch * seq];
                    for (int i = 0; i < in.length; i++) {
                        in[i] = rng.nextInt(m.config().vocab());
                        tg[i] = rng.nextInt(m.config().vocab());
                    }
                    lossC += cpu.forward(in, tg, batch, seq) / 2;
                    cpu.backward(0.5f);
                    lossG += gpu.forward(in, tg, batch, seq) / 2;
                    gpu.backward(0.5f);
                    int moved = dispatchDifference(cpu.lastDispatch(), gpu.lastDispatch());
                    if (step == 0 && micro == 0) {
                        failures += report(m.name() + " dispatch (each slot's expert)", "slots sent elsewhere", moved, 0);
                        failures += report(m.name() + " expert loads (kept slots)", "slots placed differently", loadDifference(cpu.expertLoads(),
                                gpu.expertLoads()), 0);
                        failures += report(m.name() + " expert loads by sequence", "slots placed differently",
                                loadDifference(flatten(cpu.expertLoadsBySequence()), flatten(gpu.expertLoadsBySequence())), 0);
                    } else if (divergedAt == 0 && moved != 0) {
                        // weights that differ by rounding can flip a near-tie between experts (or a capacity drop) later on
                        divergedAt = step + 1;
                        divergedSlots = moved;
                    }
                }
                cpu.endStep();
                gpu.endStep();
                double rel = Math.abs(lossC - lossG) / Math.abs(lossC);
                failures += report(m.name() + " step " + (step + 1) + " loss", String.format(Locale.ROOT, "cpu %.6f gpu %.6f", lossC, lossG), rel,
                        LOSS_TOLERANCE);
                if (step == 0) {
                    for (int i = 0; i < pc.size(); i++) {
                        Parameter a = pc.get(i), b = pg.get(i);
                        firstGradC.add(a.grad() == null ? new float[a.size()] : java.util.Arrays.copyOfRange(a.grad(), a.offset(), a.offset() + a.size()));
                        firstGradG.add(b.grad() == null ? new float[b.size()] : java.util.Arrays.copyOfRange(b.grad(), b.offset(), b.offset() + b.size()));
                    }
                    double worst = 0;
                    String where = "";
                    for (int i = 0; i < pc.size(); i++) {
                        Parameter a = pc.get(i), b = pg.get(i);
                        if (a.isBuffer()) {
                            continue;
                        }
                        double max = 1e-12, diff = 0;
                        for (int j = 0; j < a.size(); j++) {
                            max = Math.max(max, Math.abs(a.grad()[a.offset() + j]));
                            diff = Math.max(diff, Math.abs(a.grad()[a.offset() + j] - b.grad()[b.offset() + j]));
                        }
                        if (diff / max > worst) {
                            worst = diff / max;
                            where = a.name();
                        }
                    }
                    failures += report(m.name() + " gradients (" + pc.size() + " tensors)", "worst " + where, worst, GRAD_TOLERANCE);
                }
                double normC = clip(pc, 1.0);
                adamC.step(pc, 1e-3);
                gpu.gradientsStayOnDevice(step > 0); // step 1 compares host gradients; later steps leave them on the GPU
                double normG = gpu.clipAndStep(adamG, pg, 1e-3, 1.0);
                failures += report(m.name() + " step " + (step + 1) + " gradient norm", String.format(Locale.ROOT, "cpu %.6f gpu %.6f", normC, normG),
                        Math.abs(normC - normG) / normC, GRAD_TOLERANCE);
            }
            gpu.pullToHost(adamG);
            double worstW = 0, worstM = 0;
            String whereW = "";
            for (int i = 0; i < pc.size(); i++) {
                Parameter a = pc.get(i), b = pg.get(i);
                for (int j = 0; j < a.size(); j++) {
                    double diff = Math.abs(a.value()[a.offset() + j] - b.value()[b.offset() + j]);
                    if (diff > worstW) {
                        worstW = diff;
                        // AdamW's first steps move a weight by about lr whatever its gradient's size, so a gradient that is
                        // rounding noise on both sides (opposite signs) shows here: name it with its step-1 gradients
                        whereW = String.format(Locale.ROOT, "%s[%d] (step-1 grad cpu %.2e gpu %.2e)", a.name(), j, firstGradC.get(i)[j],
                                firstGradG.get(i)[j]);
                    }
                }
                float[] ma = adamC.firstMoments().get(a.name()), mb = adamG.firstMoments().get(b.name());
                if (ma != null) {
                    double max = 1e-12, diff = 0;
                    for (int j = 0; j < ma.length; j++) {
                        max = Math.max(max, Math.abs(ma[j]));
                        diff = Math.max(diff, Math.abs(ma[j] - mb[j]));
                    }
                    worstM = Math.max(worstM, diff / max);
                }
            }
            // three AdamW steps at lr 1e-3 move a weight by at most ~3e-3; the two runs must agree far below that
            if (divergedAt > 0 && (worstW > 1e-4 || worstM > GRAD_TOLERANCE * 10)) {
                // a discrete choice went the other way: AdamW then moves the weights it touches by about lr on one side only.
                // The losses above still bound the difference; the weights are not comparable element by element.
                System.out.printf(Locale.ROOT, "%-58s %s%n", m.name() + " weights after 3 steps", String.format(Locale.ROOT,
                        "not compared: routing diverged at step %d (%.0f slots sent elsewhere), max |difference| %.2e at %s", divergedAt,
                        divergedSlots, worstW, whereW));
            } else if (worstW <= 1e-4 && worstM <= GRAD_TOLERANCE * 10) {
                failures += report(m.name() + " weights after 3 steps", "max |difference|", worstW, 1e-4);
                failures += report(m.name() + " first moments after 3 steps", "worst relative", worstM, GRAD_TOLERANCE * 10);
            } else {
                // A ReLU unit whose input lies within rounding of zero for some token takes that token's gradient on one
                // backend only, and AdamW moves a weight whose gradient is rounding noise by about lr in either direction:
                // both touch a few elements (one hidden unit's row and column). Then the check is that all but 0.1% of the
                // weights agree within 1e-4 and that the weights' movement and the moments agree within 5% in norm; an error
                // in the device code moves far more elements than that.
                long beyond = 0, total = 0;
                double dMove = 0, move = 0, dMoment = 0, moment = 0;
                for (int i = 0; i < pc.size(); i++) {
                    Parameter a = pc.get(i), b = pg.get(i);
                    for (int j = 0; j < a.size(); j++) {
                        double wc = a.value()[a.offset() + j], wg = b.value()[b.offset() + j];
                        beyond += Math.abs(wc - wg) > 1e-4 ? 1 : 0;
                        dMove += (wg - wc) * (wg - wc);
                        move += (wc - initial.get(i)[j]) * (wc - initial.get(i)[j]);
                    }
                    total += a.size();
                    float[] ma = adamC.firstMoments().get(a.name()), mb = adamG.firstMoments().get(b.name());
                    if (ma != null) {
                        for (int j = 0; j < ma.length; j++) {
                            dMoment += (double) (ma[j] - mb[j]) * (ma[j] - mb[j]);
                            moment += (double) ma[j] * ma[j];
                        }
                    }
                }
                System.out.printf(Locale.ROOT, "    max |difference| %.2e at %s%n    %s%n", worstW, whereW, outliers(pc, pg, 1e-4));
                failures += report(m.name() + " weights after 3 steps", String.format(Locale.ROOT, "%d of %d beyond 1e-4", beyond, total),
                        (double) beyond / total, 1e-3);
                failures += report(m.name() + " weights' movement after 3 steps", "relative difference (norm)", Math.sqrt(dMove / move), 0.05);
                failures += report(m.name() + " first moments after 3 steps", "relative difference (norm)", Math.sqrt(dMoment / moment), 0.05);
            }
        }
        return failures;
    }

    /** One step in bf16 expert mode: the loss within 2e-2 and the gradient norm within 5e-2 of the fp32 CPU. */
    private static int checkBf16(CudaContext ctx, Model m) {
        DeviceModels.Classes classes = DeviceModels.compile(m, m.name());
        CpuBackend backend = new CpuBackend(4, CpuBackend.VECTOR_API);
        TrainableModel cpu = classes.createHost(backend);
        try (DeviceModel gpu = classes.create(ctx, backend)) {
            cpu.initialize(11);
            gpu.initialize(11);
            SplittableRandom rng = new SplittableRandom(5);
            int batch = 2, seq = Math.min(32, m.config().context());
            int[] in = new int[batch * seq], tg = new int[batch * seq];
            for (int i = 0; i < in.length; i++) {
                in[i] = rng.nextInt(m.config().vocab());
                tg[i] = rng.nextInt(m.config().vocab());
            }
            cpu.parameters().forEach(Parameter::zeroGrad);
            gpu.parameters().forEach(Parameter::zeroGrad);
            cpu.beginStep();
            gpu.beginStep();
            double lossC = cpu.forward(in, tg, batch, seq);
            cpu.backward(1f);
            double lossG = gpu.forward(in, tg, batch, seq);
            gpu.backward(1f);
            double normC = norm(cpu.parameters()), normG = norm(gpu.parameters());
            return report(m.name() + " bf16 (experts and attention): loss", String.format(Locale.ROOT, "cpu %.6f gpu %.6f", lossC, lossG),
                    Math.abs(lossC - lossG) / Math.abs(lossC), 2e-2)
                    + report(m.name() + " bf16 (experts and attention): gradient norm", String.format(Locale.ROOT, "cpu %.6f gpu %.6f", normC, normG),
                            Math.abs(normC - normG) / normC, 5e-2);
        }
    }

    /** Slots the two models sent to different experts (or one of them nowhere); every slot when the shapes differ. */
    /**
     * Where the weights differ by more than {@code tolerance}: per tensor the count and the rows and columns (of its
     * last two dimensions) they fall in. One token whose ReLU unit sits on the other side of zero on one backend
     * changes one hidden unit's row of the up projection and that unit's column of the down projection, a pattern
     * that this makes visible; scattered rows point to a systematic error instead.
     */
    static String outliers(List<Parameter> pc, List<Parameter> pg, double tolerance) {
        StringBuilder out = new StringBuilder("weights beyond " + tolerance + ":");
        for (int i = 0; i < pc.size(); i++) {
            Parameter a = pc.get(i), b = pg.get(i);
            int cols = a.shape().length >= 2 ? a.shape()[a.shape().length - 1] : 1;
            int count = 0;
            java.util.TreeSet<Integer> rows = new java.util.TreeSet<>(), columns = new java.util.TreeSet<>();
            for (int j = 0; j < a.size(); j++) {
                if (Math.abs(a.value()[a.offset() + j] - b.value()[b.offset() + j]) > tolerance) {
                    count++;
                    rows.add(j / cols % (a.shape().length >= 2 ? a.shape()[a.shape().length - 2] : 1));
                    columns.add(j % cols);
                }
            }
            if (count > 0) {
                out.append(String.format(Locale.ROOT, " %s %s: %d in rows %s, columns %s;", a.name(), java.util.Arrays.toString(a.shape()), count,
                        abbreviate(rows), abbreviate(columns)));
            }
        }
        return out.toString();
    }

    private static String abbreviate(java.util.SortedSet<Integer> s) {
        return s.size() <= 8 ? s.toString() : s.stream().limit(8).toList() + "... (" + s.size() + ")";
    }

    private static int dispatchDifference(int[][] cpu, int[][] gpu) {
        if (cpu == null || gpu == null || cpu.length != gpu.length) {
            return Integer.MAX_VALUE;
        }
        int moved = 0;
        for (int l = 0; l < cpu.length; l++) {
            if (cpu[l].length != gpu[l].length) {
                return Integer.MAX_VALUE;
            }
            for (int i = 0; i < cpu[l].length; i++) {
                moved += cpu[l][i] != gpu[l][i] ? 1 : 0;
            }
        }
        return moved;
    }

    /** The names of a model's named gates, in order of their first parameter. */
    private static List<String> gateNames(Model m) {
        java.util.regex.Pattern gate = java.util.regex.Pattern.compile("^layers\\.\\d+\\.moe\\.router\\.([A-Za-z_][A-Za-z0-9_]*)\\.weight$");
        List<String> out = new ArrayList<>();
        for (var p : m.params()) {
            java.util.regex.Matcher x = gate.matcher(p.name());
            if (x.matches() && !out.contains(x.group(1))) {
                out.add(x.group(1));
            }
        }
        return out;
    }

    /** Half the sum of |cpu - gpu| over every layer's expert loads: the slots the two placed differently (NaN, a failure, if the shapes differ). */
    private static double loadDifference(int[][] cpu, int[][] gpu) {
        if (cpu.length != gpu.length) {
            return Double.NaN;
        }
        double diff = 0;
        for (int l = 0; l < cpu.length; l++) {
            if (cpu[l].length != gpu[l].length) {
                return Double.NaN;
            }
            for (int e = 0; e < cpu[l].length; e++) {
                diff += Math.abs(cpu[l][e] - gpu[l][e]);
            }
        }
        return diff / 2;
    }

    private static int[][] flatten(int[][][] bySequence) {
        List<int[]> out = new ArrayList<>();
        for (int[][] layer : bySequence) {
            out.addAll(List.of(layer));
        }
        return out.toArray(int[][]::new);
    }

    private static double norm(List<Parameter> params) {
        double sq = 0;
        for (Parameter p : params) {
            if (!p.isBuffer()) {
                for (int i = 0; i < p.size(); i++) {
                    double g = p.grad()[p.offset() + i];
                    sq += g * g;
                }
            }
        }
        return Math.sqrt(sq);
    }

    private static double clip(List<Parameter> params, double max) {
        double sq = 0;
        for (Parameter p : params) {
            if (p.trainable()) {
                for (int i = 0; i < p.size(); i++) {
                    double g = p.grad()[p.offset() + i];
                    sq += g * g;
                }
            }
        }
        double norm = Math.sqrt(sq);
        if (norm > max) {
            float s = (float) (max / norm);
            for (Parameter p : params) {
                if (p.trainable()) {
                    for (int i = 0; i < p.size(); i++) {
                        p.grad()[p.offset() + i] *= s;
                    }
                }
            }
        }
        return norm;
    }

    private static int report(String what, String detail, double error, double tolerance) {
        boolean ok = error <= tolerance && Double.isFinite(error);
        System.out.printf(Locale.ROOT, "%-58s %-34s %.2e %s%n", what, detail, error, ok ? "ok" : "FAIL (tolerance " + tolerance + ")");
        return ok ? 0 : 1;
    }
}
