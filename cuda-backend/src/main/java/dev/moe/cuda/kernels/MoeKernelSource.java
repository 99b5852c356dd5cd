package dev.moe.cuda.kernels;

import java.util.Locale;

/**
 * CUDA C for one MoE layer, specialised to its declaration: the number of experts, k, the score
 * function, normalisation and scaling are compile-time constants, so the router keeps a token's
 * scores in registers and its top-k loop unrolls. NVRTC compiles the text at first use.
 *
 * <p>Data flow of the forward pass (T tokens, k slots each, M = T·k routed rows):
 * <pre>
 *  logits[T,E] (cuBLASLt) ─router_topk─▶ idx[T,k], weight[T,k], probs[T,E]
 *  idx ─rank_tile_counts, rank_tile_scan, rank_tile_ranks─▶ rank[M], counts[E] ─expert_offsets─▶ offsets[E+1]
 *    (expert_offsets_ordered instead: the experts' ranges in another order, an expert-parallel placement's slots)
 *  x[T,DIN], idx, rank, offsets ─permute_gather─▶ pos[M], h[M,DIN] (rows sorted by expert)
 *  h ─grouped GEMM (cuBLASLt per expert)─▶ g[M,GW] ─expert_act─▶ a[M,F] ─grouped GEMM─▶ y[M,D]
 *  y, pos, weight ─combine─▶ out[T,D]
 * </pre>
 * DIN is D but for MoLE's latent experts, which read the layer's shared projection to the rank
 * (the router's logits come from its own input, D wide, then). GW is 2F for gated experts (SwiGLU, GEGLU: gate then up columns) and F for ungated ones (ReLU,
 * GELU). With a capacity factor, a training forward runs capacity_order and capacity_keep, then ranks
 * again counting the kept rows only, before expert_offsets: a dropped slot gets rank -1, hence
 * pos -1 and no row, and the combine kernels treat it as a zero expert's slot.
 * The sort is a counting sort that is stable and deterministic (each expert's rows keep token
 * order), so the same input gives bitwise the same output; no host loop touches tokens.
 *
 * <p>MoE++ (compiled in only when the spec has them): constant experts get their [a1, a2] =
 * softmax(W_c x) per slot from constant_mix, the combine adds weight · (a1 x + a2 v), combine_backward
 * also gives the mix logits' gradient dz, unpermute_sum the input's through a1 and W_c, and
 * constant_grads sums dv and dW_c over each expert's slots in slot order (no atomics). With
 * FP32_DLOGITS (a gating residual, or extra logits such as a recurrent router's) the router backward
 * kernels add an incoming fp32 logit gradient (the next layer's gating residual) and keep an fp32 copy
 * of theirs for this layer's own residual or the caller's extra logits.
 *
 * <p>Storage: {@code act_t} is bf16 (kept as raw 16-bit patterns, converted with round-to-nearest-
 * even, so no header is needed) or fp32 for parity runs; arithmetic is always fp32.
 */
public final class MoeKernelSource {

    public enum Score { SOFTMAX, SIGMOID }

    public enum Precision { BF16, FP32 }

    /** The routed experts' FFN: gated (the gate and up rows of {@code w13}) or not (up rows only). */
    public enum ExpertActivation {
        SWIGLU(true), GEGLU(true), RELU(false), GELU(false);

        public final boolean gated;

        ExpertActivation(boolean gated) {
            this.gated = gated;
        }
    }

    /** Which slots a capacity factor keeps when an expert is over capacity. */
    /** Which slots a capacity factor drops: the latest, those of lowest routing weight, or those of lowest seeded random priority. */
    public enum Drop { POSITION, PROBABILITY, RANDOM }

    /** What the router applies to its logits before the score function: nothing, tanh or sigmoid (then / temperature). */
    public enum LogitActivation { NONE, TANH, SIGMOID }

    /**
     * The options beyond top-k over SwiGLU experts, {@link #NONE} for none.
     *
     * @param activation the routed experts' FFN
     * @param capacityFactor 0 for dropless; otherwise each expert keeps at most ceil(factor · T · k / E) slots in training
     * @param drop which slots an expert over capacity keeps
     * @param quotaGroups MoGE: k / quotaGroups experts from each of this many equal groups (0: off)
     * @param limitGroups group-limited top-k: the experts form this many equal groups (0: off) ...
     * @param limitTop ... of which the best {@code limitTop} (by the sum of their top-2 selection scores) are kept
     * @param topP top-p selection (0: off): experts by probability until their mass reaches p, 1 to k of them
     * @param temperature whether the logits are divided by a temperature passed at each forward pass (after {@code logitActivation})
     * @param logitActivation applied to the logits before the temperature
     * @param entropy whether an entropy loss on the router probabilities is trained (its coefficient passed to the backward)
     * @param expertChoice expert-choice routing's factor (0: token choice); k must then be E
     * @param gatingResidual MoE++'s gating residual touches this layer's logits (its router adds a map of the previous layer's, or
     *     the next layer's adds a map of its own): the router backward kernels take an fp32 incoming logit gradient and write an fp32 copy of theirs
     * @param extraLogits the router's logits add an fp32 term the caller computes at each forward (RMoE's recurrent router: its GRU
     *     state through an output map): the router backward kernels write an fp32 copy of the logit gradient, which the caller backpropagates
     */
    public record Options(ExpertActivation activation, float capacityFactor, Drop drop, int quotaGroups, int limitGroups, int limitTop, float topP,
            boolean temperature, LogitActivation logitActivation, boolean entropy, float expertChoice, boolean gatingResidual, boolean extraLogits) {
        public static final Options NONE = new Options(ExpertActivation.SWIGLU, 0f, Drop.POSITION, 0, 0, 0, 0f, false, LogitActivation.NONE, false, 0f,
                false, false);

        public Options {
            if (capacityFactor < 0 || quotaGroups < 0 || limitGroups < 0 || limitTop < 0 || topP < 0 || topP > 1) {
                throw new IllegalArgumentException("bad MoE options: " + this);
            }
            if (limitGroups > 0 && (limitTop <= 0 || limitTop > limitGroups)) {
                throw new IllegalArgumentException("group-limited routing keeps 1 to " + limitGroups + " groups, not " + limitTop);
            }
        }

        public Options withActivation(ExpertActivation a) {
            return new Options(a, capacityFactor, drop, quotaGroups, limitGroups, limitTop, topP, temperature, logitActivation, entropy, expertChoice, gatingResidual, extraLogits);
        }

        public Options withCapacity(float factor, Drop d) {
            return new Options(activation, factor, d, quotaGroups, limitGroups, limitTop, topP, temperature, logitActivation, entropy, expertChoice, gatingResidual, extraLogits);
        }

        public Options withQuotaGroups(int groups) {
            return new Options(activation, capacityFactor, drop, groups, limitGroups, limitTop, topP, temperature, logitActivation, entropy, expertChoice, gatingResidual, extraLogits);
        }

        public Options withGroupLimit(int groups, int top) {
            return new Options(activation, capacityFactor, drop, quotaGroups, groups, top, topP, temperature, logitActivation, entropy, expertChoice, gatingResidual, extraLogits);
        }

        public Options withTopP(float p) {
            return new Options(activation, capacityFactor, drop, quotaGroups, limitGroups, limitTop, p, temperature, logitActivation, entropy, expertChoice, gatingResidual, extraLogits);
        }

        public Options withTemperature(LogitActivation a) {
            return new Options(activation, capacityFactor, drop, quotaGroups, limitGroups, limitTop, topP, true, a, entropy, expertChoice, gatingResidual, extraLogits);
        }

        public Options withEntropy() {
            return new Options(activation, capacityFactor, drop, quotaGroups, limitGroups, limitTop, topP, temperature, logitActivation, true, expertChoice, gatingResidual, extraLogits);
        }

        /** Expert-choice routing: every token ranks every expert (k = E) and in each sequence each expert keeps its best ceil(factor · seq / E) tokens. */
        public Options withExpertChoice(float factor) {
            return new Options(activation, capacityFactor, drop, quotaGroups, limitGroups, limitTop, topP, temperature, logitActivation, entropy, factor, gatingResidual, extraLogits);
        }

        public Options withGatingResidual() {
            return new Options(activation, capacityFactor, drop, quotaGroups, limitGroups, limitTop, topP, temperature, logitActivation, entropy, expertChoice, true, extraLogits);
        }

        /** RMoE's recurrent router: the logits add an fp32 term set with each forward, and the backward keeps an fp32 logit gradient for the caller. */
        public Options withExtraLogits() {
            return new Options(activation, capacityFactor, drop, quotaGroups, limitGroups, limitTop, topP, temperature, logitActivation, entropy, expertChoice, gatingResidual, true);
        }

        /** Whether the router backward kernels take an fp32 incoming logit gradient and write an fp32 copy of theirs. */
        public boolean fp32LogitGradient() {
            return gatingResidual || extraLogits;
        }
    }

    /**
     * What the kernels are specialised to: {@code experts} FFN experts, plus MoE++'s
     * zero-computation experts ({@code zeroExperts} that output 0, {@code copyExperts} that output
     * their input, {@code constantExperts} that output a1·x + a2·v with [a1, a2] = softmax(W_c x)),
     * which the router scores after the FFN experts in that order and the combine folds in, and the
     * {@link Options} of the router and experts. The experts read rows of {@code expertIn} values
     * and write rows of {@code dim}: {@code expertIn} is {@code dim} but for MoLE's latent experts,
     * which read the layer's shared down-projection to the rank while the router reads the input.
     */
    public record Spec(int dim, int hidden, int experts, int zeroExperts, int copyExperts, int constantExperts, int topK, Score score,
            boolean normalize, float scale, boolean bias, Precision precision, Options options, int expertIn) {
        public Spec {
            if (dim <= 0 || hidden <= 0 || experts <= 0 || topK <= 0 || zeroExperts < 0 || copyExperts < 0 || constantExperts < 0 || expertIn <= 0) {
                throw new IllegalArgumentException("sizes must be positive: " + this);
            }
            if (expertIn != dim && copyExperts + constantExperts > 0) {
                // copy and constant experts output (a mix of) the experts' input, which must then be the model width
                throw new IllegalArgumentException("copy or constant experts need the experts' input as wide as the output: " + this);
            }
            int routed = experts + zeroExperts + copyExperts + constantExperts;
            if (topK > routed) {
                throw new IllegalArgumentException("k = " + topK + " exceeds the " + routed + " experts");
            }
            if (routed > 1024) {
                throw new IllegalArgumentException("at most 1024 experts per layer on the GPU (got " + routed + ")");
            }
            if (topK > 32) {
                throw new IllegalArgumentException("at most k = 32 on the GPU (got " + topK + ")");
            }
            if (options.quotaGroups() > 0 && (experts % options.quotaGroups() != 0 || topK % options.quotaGroups() != 0)) {
                throw new IllegalArgumentException("quota groups must divide E = " + experts + " and k = " + topK);
            }
            if (options.expertChoice() > 0 && (topK != experts || zeroExperts + copyExperts > 0 || options.capacityFactor() > 0 || options.topP() > 0)) {
                throw new IllegalArgumentException("expert choice ranks every FFN expert (k = E = " + experts + "), without zero or copy experts, capacity or top-p");
            }
            if (options.limitGroups() > 0 && (experts % options.limitGroups() != 0 || options.limitGroups() > 32)) {
                throw new IllegalArgumentException("expert groups (at most 32 on the GPU) must divide E = " + experts);
            }
        }

        /** Experts that read the layer's input ({@code expertIn = dim}). */
        public Spec(int dim, int hidden, int experts, int zeroExperts, int copyExperts, int constantExperts, int topK, Score score,
                boolean normalize, float scale, boolean bias, Precision precision, Options options) {
            this(dim, hidden, experts, zeroExperts, copyExperts, constantExperts, topK, score, normalize, scale, bias, precision, options, dim);
        }

        /** FFN, zero and copy experts (no constant experts). */
        public Spec(int dim, int hidden, int experts, int zeroExperts, int copyExperts, int topK, Score score, boolean normalize, float scale,
                boolean bias, Precision precision, Options options) {
            this(dim, hidden, experts, zeroExperts, copyExperts, 0, topK, score, normalize, scale, bias, precision, options);
        }

        /** FFN, zero and copy experts with no options. */
        public Spec(int dim, int hidden, int experts, int zeroExperts, int copyExperts, int topK, Score score, boolean normalize, float scale,
                boolean bias, Precision precision) {
            this(dim, hidden, experts, zeroExperts, copyExperts, 0, topK, score, normalize, scale, bias, precision, Options.NONE);
        }

        /** A layer of SwiGLU experts only. */
        public Spec(int dim, int hidden, int experts, int topK, Score score, boolean normalize, float scale, boolean bias,
                Precision precision) {
            this(dim, hidden, experts, 0, 0, 0, topK, score, normalize, scale, bias, precision, Options.NONE);
        }

        /** The same layer with other options. */
        public Spec with(Options o) {
            return new Spec(dim, hidden, experts, zeroExperts, copyExperts, constantExperts, topK, score, normalize, scale, bias, precision, o, expertIn);
        }

        /** The same layer with {@code n} constant experts after the copy experts. */
        public Spec withConstantExperts(int n) {
            return new Spec(dim, hidden, experts, zeroExperts, copyExperts, n, topK, score, normalize, scale, bias, precision, options, expertIn);
        }

        /** The same layer with experts that read rows of {@code width} (MoLE: the latent rank) instead of the router's input. */
        public Spec withExpertIn(int width) {
            return new Spec(dim, hidden, experts, zeroExperts, copyExperts, constantExperts, topK, score, normalize, scale, bias, precision, options, width);
        }

        /** The router's width: every expert it scores (FFN, zero, copy, then constant experts). */
        public int routed() {
            return experts + zeroExperts + copyExperts + constantExperts;
        }

        /** The first constant expert's index among the routed experts. */
        public int firstConstant() {
            return experts + zeroExperts + copyExperts;
        }
    }

    private MoeKernelSource() {}

    public static String generate(Spec s) {
        int ept = (s.routed() + 31) / 32;
        StringBuilder c = new StringBuilder();
        c.append("// Generated by moe for an MoE layer: D=").append(s.dim()).append(s.expertIn() != s.dim() ? " DIN=" + s.expertIn() : "").append(" F=").append(s.hidden()).append(" E=")
                .append(s.experts()).append(s.zeroExperts() > 0 ? " zero=" + s.zeroExperts() : "")
                .append(s.copyExperts() > 0 ? " copy=" + s.copyExperts() : "").append(s.constantExperts() > 0 ? " constant=" + s.constantExperts() : "").append(" k=").append(s.topK()).append(' ').append(s.score().name().toLowerCase(Locale.ROOT))
                .append(s.normalize() ? " normalized" : "").append(" scale=").append(fmt(s.scale())).append(s.bias() ? " bias" : "")
                .append(' ').append(s.precision().name().toLowerCase(Locale.ROOT)).append(". Do not edit.\n");
        c.append("#define D ").append(s.dim()).append("\n#define DIN ").append(s.expertIn())
                .append("  // the experts' input width: D, or MoLE's latent rank (the router reads D)\n#define F ").append(s.hidden()).append("\n#define E ").append(s.experts())
                .append("  // FFN experts\n#define ER ").append(s.routed()).append("  // experts the router scores: FFN, then zero, copy and constant\n#define ZERO ")
                .append(s.zeroExperts()).append("\n#define K ").append(s.topK()).append("\n#define EPT ").append(ept).append("  // experts per lane\n")
                .append("#define SCALE ").append(fmt(s.scale())).append("f\n#define NORMALIZE ").append(s.normalize() ? 1 : 0)
                .append(s.constantExperts() > 0 ? "\n#define CONST " + s.constantExperts() + "  // MoE++ constant experts, the last routed ones: a1 x + a2 v, [a1, a2] = softmax(W_c x)\n#define CONST0 "
                        + s.firstConstant() : "\n#define CONST 0").append("\n#define FP32_DLOGITS ").append(s.options().fp32LogitGradient() ? 1 : 0)
                .append("  // a gating residual or extra logits: the router backward adds an incoming fp32 logit gradient and keeps an fp32 copy of its own")
                .append("\n#define HAS_BIAS ").append(s.bias() ? 1 : 0).append("\n#define SOFTMAX ")
                .append(s.score() == Score.SOFTMAX ? 1 : 0).append("\n#define INF __int_as_float(0x7f800000)\n");
        Options o = s.options();
        c.append("// router options: top-p mass (0 off), MoGE quota groups, group-limited top-k, logits transform, entropy loss\n")
                .append("#define HAS_TOP_P ").append(o.topP() > 0 ? 1 : 0).append("\n#define TOP_P ").append(fmt(o.topP())).append("\n#define QUOTA ").append(o.quotaGroups())
                .append("\n#define LIMIT_GROUPS ").append(o.limitGroups()).append("\n#define LIMIT_TOP ").append(o.limitTop())
                .append("\n#define TEMPERATURE ").append(o.temperature() ? 1 : 0).append("\n#define LOGIT_ACT ").append(o.logitActivation().ordinal())
                .append("  // 0 none, 1 tanh, 2 sigmoid\n#define ENTROPY ").append(o.entropy() ? 1 : 0)
                .append("\n// a slot may route to no expert (top-p's unused slots): it holds expert NONE, weight 0\n#define NONE ER\n");
        c.append("#define ACT ").append(switch (o.activation()) {
            case SWIGLU -> 0;
            case GEGLU, GELU -> 1;
            case RELU -> 2;
        }).append("  // the experts' activation: 0 SiLU, 1 GELU (tanh form), 2 ReLU\n#define GATED ").append(o.activation().gated ? 1 : 0)
                .append("  // w13 holds gate then up rows (2F), or up rows only (F)\n#define GW ").append(o.activation().gated ? 2 * s.hidden() : s.hidden())
                .append("\n#define CAPACITY ").append(o.capacityFactor() > 0 ? 1 : 0)
                .append("  // training forwards may drop slots over an expert's capacity\n#define DROP_BY_PROBABILITY ")
                .append(o.capacityFactor() > 0 && o.drop() != Drop.POSITION ? 1 : 0)
                .append("  // by a key per slot: the routing weight, or a seeded random priority\n#define RANDOM_DROP ")
                .append(o.capacityFactor() > 0 && o.drop() == Drop.RANDOM ? 1 : 0)
                .append("\n#define EXPERT_CHOICE ").append(o.expertChoice() > 0 ? 1 : 0).append("  // each expert picks its tokens in each sequence")
                .append("\n#define SLOT_KINDS (ER != E || CAPACITY || HAS_TOP_P || EXPERT_CHOICE)  // whether a slot may have no FFN row (zero, copy, dropped or NONE)\n\n");
        if (s.precision() == Precision.BF16) {
            c.append("""
                    typedef unsigned short act_t;
                    __device__ __forceinline__ float ld(const act_t* p, long i) { return __uint_as_float(((unsigned) p[i]) << 16); }
                    __device__ __forceinline__ act_t cvt(float f) {
                      unsigned u = __float_as_uint(f);
                      if ((u & 0x7fffffffu) > 0x7f800000u) return (act_t) ((u >> 16) | 0x40u);  // quiet NaN
                      u += 0x7fffu + ((u >> 16) & 1u);  // round to nearest even
                      return (act_t) (u >> 16);
                    }
                    """);
        } else {
            c.append("""
                    typedef float act_t;
                    __device__ __forceinline__ float ld(const act_t* p, long i) { return p[i]; }
                    __device__ __forceinline__ act_t cvt(float f) { return f; }
                    """);
        }
        c.append("""
                __device__ __forceinline__ void st(act_t* p, long i, float v) { p[i] = cvt(v); }
                // activations per 16-byte load: rows of D (or DIN) that are a multiple of it are read and written in such loads
                #define VEC ((int) (16 / sizeof(act_t)))
                __device__ __forceinline__ float warpMax(float v) {
                  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
                  return v;
                }
                __device__ __forceinline__ float warpSum(float v) {
                  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
                  return v;
                }
                __device__ __forceinline__ float sigmoidf(float x) { return 1.f / (1.f + __expf(-x)); }
                // The balancing losses' per-token functions are __host__ __device__, so that the tests compile the very text for
                // the host: on the GPU a warp's 32 lanes share a token's experts (e = lane, lane + 32, ...); on the host one
                // lane takes them all, its sums and maxima its own.
                #ifdef __CUDA_ARCH__
                #define LANES 32
                #else
                #define LANES 1
                #endif
                __host__ __device__ inline float tokenSum(float v) {
                #ifdef __CUDA_ARCH__
                  return warpSum(v);
                #else
                  return v;
                #endif
                }
                __host__ __device__ inline float tokenMax(float v) {
                #ifdef __CUDA_ARCH__
                  return warpMax(v);
                #else
                  return v;
                #endif
                }
                __host__ __device__ inline void addTo(float* p, float v) {
                #ifdef __CUDA_ARCH__
                  atomicAdd(p, v);
                #else
                  *p += v;
                #endif
                }
                __host__ __device__ inline void addTo(int* p, int v) {
                #ifdef __CUDA_ARCH__
                  atomicAdd(p, v);
                #else
                  *p += v;
                #endif
                }

                // The router's view of a logit: act(logit) / temperature when the layer has a temperature.
                __host__ __device__ __forceinline__ float scaledLogit(float l, float tau) {
                #if TEMPERATURE
                #if LOGIT_ACT == 1
                  l = tanhf(l);
                #elif LOGIT_ACT == 2
                  l = 1.f / (1.f + expf(-l));
                #endif
                  return l / tau;
                #else
                  return l;
                #endif
                }
                // d scaled / d logit
                __host__ __device__ __forceinline__ float scaledSlope(float l, float tau) {
                #if LOGIT_ACT == 1
                  float a = tanhf(l); return (1.f - a * a) / tau;
                #elif LOGIT_ACT == 2
                  float a = 1.f / (1.f + expf(-l)); return a * (1.f - a) / tau;
                #else
                  return 1.f / tau;
                #endif
                }

                // One warp per token: scores in registers, k rounds of a warp-wide argmax (ties: lower expert). With
                // QUOTA, round r searches group r / (K / QUOTA) only; with LIMIT_GROUPS, the experts of the groups
                // that are not among the best LIMIT_TOP (by the sum of their two best selection scores) are masked
                // first; with TOP_P, rounds stop once the chosen probabilities reach TOP_P (the rest hold NONE).
                extern "C" __global__ void router_topk(const float* __restrict__ logits, const float* __restrict__ bias, int T,
                    int* __restrict__ idx, float* __restrict__ weight, float* __restrict__ probs, float tau) {
                  int t = (blockIdx.x * blockDim.x + threadIdx.x) >> 5, lane = threadIdx.x & 31;
                  if (t >= T) return;
                  const float* row = logits + (long) t * ER;
                  float p[EPT], sel[EPT];
                #if SOFTMAX
                  float m = -INF;
                  #pragma unroll
                  for (int j = 0; j < EPT; j++) { int e = lane + 32 * j; p[j] = e < ER ? scaledLogit(row[e], tau) : -INF; m = fmaxf(m, p[j]); }
                  m = warpMax(m);
                  float s = 0.f;
                  #pragma unroll
                  for (int j = 0; j < EPT; j++) { int e = lane + 32 * j; p[j] = e < ER ? __expf(p[j] - m) : 0.f; s += p[j]; }
                  s = warpSum(s);
                  #pragma unroll
                  for (int j = 0; j < EPT; j++) p[j] /= s;
                #else
                  #pragma unroll
                  for (int j = 0; j < EPT; j++) { int e = lane + 32 * j; p[j] = e < ER ? sigmoidf(scaledLogit(row[e], tau)) : 0.f; }
                #endif
                  #pragma unroll
                  for (int j = 0; j < EPT; j++) {
                    int e = lane + 32 * j;
                    if (e < ER) probs[(long) t * ER + e] = p[j];
                    sel[j] = e < ER ? p[j] + (HAS_BIAS ? bias[e] : 0.f) : -INF;
                  }
                #if LIMIT_GROUPS
                  {
                    // lane g scores group g: the sum of its two best selection scores (read back from probs)
                    __syncwarp();
                    const int GS = E / LIMIT_GROUPS;
                    float gscore = -INF;
                    if (lane < LIMIT_GROUPS) {
                      float first = -INF, second = -INF;
                      for (int e = lane * GS; e < (lane + 1) * GS; e++) {
                        float v = probs[(long) t * ER + e] + (HAS_BIAS ? bias[e] : 0.f);
                        if (v > first) { second = first; first = v; } else if (v > second) second = v;
                      }
                      gscore = GS >= 2 ? first + second : first;
                    }
                    unsigned kept = 0u;
                    for (int q = 0; q < LIMIT_TOP; q++) {
                      float bv = (kept >> lane) & 1u ? -INF : gscore; int bg = lane < LIMIT_GROUPS && !((kept >> lane) & 1u) ? lane : 0x7fffffff;
                      for (int o = 16; o > 0; o >>= 1) {
                        float ov = __shfl_xor_sync(0xffffffffu, bv, o); int og = __shfl_xor_sync(0xffffffffu, bg, o);
                        if (ov > bv || (ov == bv && og < bg)) { bv = ov; bg = og; }
                      }
                      kept |= 1u << bg;
                    }
                    #pragma unroll
                    for (int j = 0; j < EPT; j++) { int e = lane + 32 * j; if (e < E && !((kept >> (e / GS)) & 1u)) sel[j] = -INF; }
                  }
                #endif
                  float chosen[K]; int which[K]; double sum = 0.0;
                  #pragma unroll
                  for (int r = 0; r < K; r++) {
                #if HAS_TOP_P
                    if (r > 0 && sum >= (double) TOP_P) { chosen[r] = 0.f; which[r] = NONE; continue; }
                #endif
                    float bv = -INF; int be = 0x7fffffff;
                    #pragma unroll
                    for (int j = 0; j < EPT; j++) {
                      int e = lane + 32 * j;
                #if QUOTA
                      const int GS = E / QUOTA, PER = K / QUOTA;
                      float v = e / GS == r / PER ? sel[j] : -INF;
                      if (e < E && (v > bv || (v == bv && e < be))) { bv = v; be = e; }
                #else
                      if (sel[j] > bv || (sel[j] == bv && e < be)) { bv = sel[j]; be = e; }
                #endif
                    }
                    for (int o = 16; o > 0; o >>= 1) {
                      float ov = __shfl_xor_sync(0xffffffffu, bv, o); int oe = __shfl_xor_sync(0xffffffffu, be, o);
                      if (ov > bv || (ov == bv && oe < be)) { bv = ov; be = oe; }
                    }
                    float pv = 0.f;
                    #pragma unroll
                    for (int j = 0; j < EPT; j++) if (lane + 32 * j == be) { pv = p[j]; sel[j] = -INF; }
                    pv = __shfl_sync(0xffffffffu, pv, be & 31);
                    chosen[r] = pv; which[r] = be; sum += pv;
                  }
                  if (lane == 0) {
                    #pragma unroll
                    for (int r = 0; r < K; r++) {
                      idx[(long) t * K + r] = which[r];
                      weight[(long) t * K + r] = SCALE * (NORMALIZE ? (float) (chosen[r] / sum) : chosen[r]);
                    }
                  }
                }

                // Each routed row's rank among the rows that chose the same expert, in token order, and each expert's count,
                // as a stable counting sort in three passes over tiles of RANK_TILE rows (one block each): rank_tile_counts
                // counts each tile's rows per expert; rank_tile_scan (one block per expert) turns the tile counts into each
                // tile's first rank and writes the total; rank_tile_ranks ranks the rows of a tile warp by warp. With keep,
                // only the kept rows are ranked and counted, a dropped row's rank set to -1. Experts numbered NE or above
                // (no expert, for top-p's empty slots) are neither ranked nor counted. Counts are laid out [expert][tile].
                #define RANK_TILE 256
                extern "C" __global__ void rank_tile_counts(const int* __restrict__ idx, const int* __restrict__ keep, int n, int ne, int tiles,
                    int* __restrict__ tileCounts) {
                  __shared__ int hist[ER + 1];
                  for (int e = threadIdx.x; e < ne; e += blockDim.x) hist[e] = 0;
                  __syncthreads();
                  int i = blockIdx.x * RANK_TILE + threadIdx.x;
                  if (i < n) {
                    int e = idx[i];
                    if (e >= 0 && e < ne && (keep == nullptr || keep[i])) atomicAdd(&hist[e], 1);
                  }
                  __syncthreads();
                  for (int e = threadIdx.x; e < ne; e += blockDim.x) tileCounts[(long) e * tiles + blockIdx.x] = hist[e];
                }

                extern "C" __global__ void rank_tile_scan(int* __restrict__ tileCounts, int tiles, int* __restrict__ counts) {
                  __shared__ int warpTotals[32];
                  __shared__ int base;
                  int* row = tileCounts + (long) blockIdx.x * tiles;
                  int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, warps = blockDim.x >> 5;
                  if (threadIdx.x == 0) base = 0;
                  __syncthreads();
                  for (int start = 0; start < tiles; start += blockDim.x) {
                    int t = start + threadIdx.x;
                    int v = t < tiles ? row[t] : 0, incl = v;
                    #pragma unroll
                    for (int o = 1; o < 32; o <<= 1) { int u = __shfl_up_sync(0xffffffffu, incl, o); if (lane >= o) incl += u; }
                    if (lane == 31) warpTotals[wid] = incl;
                    __syncthreads();
                    int before = base;
                    for (int w = 0; w < wid; w++) before += warpTotals[w];
                    if (t < tiles) row[t] = before + incl - v;  // exclusive: the tile's first rank
                    __syncthreads();
                    if (threadIdx.x == 0) { int total = 0; for (int w = 0; w < warps; w++) total += warpTotals[w]; base += total; }
                    __syncthreads();
                  }
                  if (threadIdx.x == 0) counts[blockIdx.x] = base;
                }

                extern "C" __global__ void rank_tile_ranks(const int* __restrict__ idx, const int* __restrict__ keep, int n, int ne, int tiles,
                    const int* __restrict__ tileCounts, int* __restrict__ rank) {
                  __shared__ int next[ER + 1];
                  for (int e = threadIdx.x; e < ne; e += blockDim.x) next[e] = tileCounts[(long) e * tiles + blockIdx.x];
                  int i = blockIdx.x * RANK_TILE + threadIdx.x, lane = threadIdx.x & 31, wid = threadIdx.x >> 5;
                  int e = i < n ? idx[i] : -1;
                  bool mine = e >= 0 && e < ne;
                  bool hit = mine && (keep == nullptr || keep[i]);
                  // lanes of this warp whose row chose the same expert: the row's rank within the warp, and the warp's count
                  unsigned same = __match_any_sync(0xffffffffu, hit ? e : -1);
                  int within = __popc(same & ((1u << lane) - 1u));
                  bool leader = within == 0;
                  __syncthreads();
                  // warps in order, so the ranks follow the rows' order
                  for (int w = 0; w < (int) (blockDim.x >> 5); w++) {
                    if (wid == w && hit) {
                      rank[i] = next[e] + within;
                      __syncwarp(same);
                      if (leader) next[e] += __popc(same);
                    }
                    __syncthreads();
                  }
                  if (mine && !hit) rank[i] = -1;
                }

                #if EXPERT_CHOICE
                // Expert choice: block (b, e) ranks the slots of sequence b that hold expert e (one per token, as every token ranks
                // every expert) by routing weight (ties: the earlier token) and keeps the best cap; the kept ones are then ranked.
                #define EC_MAX_SEQ 8192
                extern "C" __global__ void expert_choice_keep(const int* __restrict__ idx, const float* __restrict__ weight, int seq, int cap,
                    int* __restrict__ keep) {
                  __shared__ float w[EC_MAX_SEQ];
                  int b = blockIdx.x / E, e = blockIdx.x % E;
                  long t0 = (long) b * seq;
                  for (int u = threadIdx.x; u < seq; u += blockDim.x) {
                    float wu = -INF;
                    for (int r = 0; r < K; r++) if (idx[(t0 + u) * K + r] == e) wu = weight[(t0 + u) * K + r];
                    w[u] = wu;
                  }
                  __syncthreads();
                  for (int u = threadIdx.x; u < seq; u += blockDim.x) {
                    float wu = w[u];
                    int before = 0;
                    for (int v = 0; v < seq; v++) { float wv = w[v]; before += (wv > wu || (wv == wu && v < u)) ? 1 : 0; }
                    for (int r = 0; r < K; r++) if (idx[(t0 + u) * K + r] == e) keep[(t0 + u) * K + r] = before < cap ? 1 : 0;
                  }
                }
                #endif

                #if CAPACITY
                // Capacity (training forwards): each expert keeps at most cap of its routed rows, the rest are dropped (no row,
                // no output, no weight gradient). After expert_rank and expert_offsets over the routed rows (roffsets):
                // capacity_order lists each expert's rows in token order, capacity_keep marks the kept ones, and the rank
                // kernels rank and count the kept rows only. Every step is a pure function of the routing, so the drops are deterministic.
                extern "C" __global__ void capacity_order(const int* __restrict__ idx, const int* __restrict__ rank, const int* __restrict__ roffsets,
                    int n, int* __restrict__ order) {
                  int i = blockIdx.x * blockDim.x + threadIdx.x;
                  if (i >= n) return;
                  int e = idx[i];
                  if (e < E) order[roffsets[e] + rank[i]] = i;
                }

                #if RANDOM_DROP
                // Random drops: slot i's priority is the CPU class's i-th draw, (float) of a SplitMix64 double, whose state after
                // i + 1 draws is seed + (i + 1)·γ, so every slot's is computed on its own.
                __host__ __device__ inline float drop_priority(unsigned long long seed, long long i) {
                  unsigned long long z = seed + (unsigned long long) (i + 1) * 0x9E3779B97F4A7C15ULL;
                  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
                  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
                  z = z ^ (z >> 31);
                  double u = (double) (z >> 11) * 0x1.0p-53;
                #ifdef __CUDA_ARCH__
                  return __double2float_rn(u);
                #else
                  return (float) u;
                #endif
                }
                extern "C" __global__ void random_priority(float* __restrict__ out, int n, unsigned long long seed) {
                  int i = blockIdx.x * blockDim.x + threadIdx.x;
                  if (i < n) out[i] = drop_priority(seed, i);
                }
                #endif

                // By position: an expert keeps its earliest cap rows. By probability (or random priority): the cap rows of highest
                // routing weight (or priority; ties: the earlier row), each row counting the rows of its expert that go before it.
                extern "C" __global__ void capacity_keep(const int* __restrict__ idx, const int* __restrict__ rank, const float* __restrict__ weight,
                    const int* __restrict__ roffsets, const int* __restrict__ order, int n, int cap, int* __restrict__ keep) {
                  int i = blockIdx.x * blockDim.x + threadIdx.x;
                  if (i >= n) return;
                  int e = idx[i];
                  if (e >= E) { keep[i] = 1; return; }
                #if DROP_BY_PROBABILITY
                  int from = roffsets[e], count = roffsets[e + 1] - from;
                  if (count <= cap) { keep[i] = 1; return; }
                  float w = weight[i];
                  int before = 0;
                  for (int l = 0; l < count; l++) {
                    int j = order[from + l]; float wj = weight[j];
                    before += (wj > w || (wj == w && j < i)) ? 1 : 0;
                  }
                  keep[i] = before < cap ? 1 : 0;
                #else
                  keep[i] = rank[i] < cap ? 1 : 0;
                #endif
                }
                #endif

                extern "C" __global__ void expert_offsets(const int* __restrict__ counts, int* __restrict__ offsets) {
                  if (threadIdx.x == 0 && blockIdx.x == 0) {
                    int s = 0;
                    for (int e = 0; e < E; e++) { offsets[e] = s; s += counts[e]; }
                    offsets[E] = s;
                  }
                }

                // Expert parallelism with a placement that is not contiguous in rank order: the rows are laid out by slot (order[s]
                // is the expert in slot s, the rank-major concatenation of the placement's lists), so that each rank's rows are one
                // slice. offsets stays indexed by expert id (permute_gather reads offsets[idx] + rank as before); only the order in
                // which the experts' ranges follow each other changes.
                __host__ __device__ inline void ordered_offsets(const int* counts, const int* order, int* offsets) {
                  int s = 0;
                  for (int j = 0; j < E; j++) { int e = order[j]; offsets[e] = s; s += counts[e]; }
                  offsets[E] = s;
                }
                extern "C" __global__ void expert_offsets_ordered(const int* __restrict__ counts, const int* __restrict__ order,
                    int* __restrict__ offsets) {
                  if (threadIdx.x == 0 && blockIdx.x == 0) ordered_offsets(counts, order, offsets);
                }

                // Block t: token t's routed rows t·K + s go to positions offsets[idx] + rank; its hidden state is read once and
                // written to each of them (a zero or copy expert's or a dropped slot has no row: pos -1).
                extern "C" __global__ void permute_gather(const act_t* __restrict__ x, const int* __restrict__ idx, const int* __restrict__ rank,
                    const int* __restrict__ offsets, int* __restrict__ pos, act_t* __restrict__ h) {
                  int t = blockIdx.x;
                  __shared__ int sp[K];
                  if (threadIdx.x < K) {
                    long i = (long) t * K + threadIdx.x;
                    int e = idx[i], r = rank[i];
                    int p = e < E && r >= 0 ? offsets[e] + r : -1;
                    pos[i] = p;
                    sp[threadIdx.x] = p;
                  }
                  __syncthreads();
                  const act_t* src = x + (long) t * DIN;
                  constexpr int ROW_BYTES = DIN * (int) sizeof(act_t);
                  if constexpr (ROW_BYTES % 16 == 0) {  // 16-byte copies: rows start 16-byte aligned
                    const uint4* s4 = (const uint4*) src;
                    for (int c = threadIdx.x; c < ROW_BYTES / 16; c += blockDim.x) {
                      uint4 v = s4[c];
                      #pragma unroll
                      for (int s = 0; s < K; s++) if (sp[s] >= 0) ((uint4*) (h + (long) sp[s] * DIN))[c] = v;
                    }
                  } else {
                    for (int c = threadIdx.x; c < DIN; c += blockDim.x) {
                      act_t v = src[c];
                      #pragma unroll
                      for (int s = 0; s < K; s++) if (sp[s] >= 0) h[(long) sp[s] * DIN + c] = v;
                    }
                  }
                }

                #define SQRT_2_OVER_PI 0.7978845608028654f
                #define GELU_K 0.044715f
                __device__ __forceinline__ float act_fn(float x) {
                #if ACT == 0
                  return x * sigmoidf(x);
                #elif ACT == 1  // 0.5 x (1 + tanh(u)) = x / (1 + exp(-2u)), u = √(2/π) (x + 0.044715 x³), as the CPU computes it
                  return x / (1.f + expf(-2.f * SQRT_2_OVER_PI * (x + GELU_K * x * x * x)));
                #else
                  return fmaxf(x, 0.f);
                #endif
                }
                __device__ __forceinline__ float act_grad(float x) {
                #if ACT == 0
                  float s = sigmoidf(x);
                  return s * (1.f + x * (1.f - s));
                #elif ACT == 1
                  float s = 1.f / (1.f + expf(-2.f * SQRT_2_OVER_PI * (x + GELU_K * x * x * x)));
                  return s + 2.f * x * s * (1.f - s) * SQRT_2_OVER_PI * (1.f + 3.f * GELU_K * x * x);
                #else
                  return x > 0.f ? 1.f : 0.f;
                #endif
                }

                // Gated: a[r, c] = act(g[r, c]) * g[r, F + c] (g holds [gate | up], GW = 2F wide); ungated: a = act(g) (GW = F).
                // When F is a multiple of VEC each thread takes VEC consecutive columns of one row with 16-byte loads and stores
                // (one division per VEC elements); the arithmetic per element is the same, so the results are bitwise the same.
                extern "C" __global__ void expert_act(const act_t* __restrict__ g, act_t* __restrict__ a, long n) {
                  if constexpr (F % VEC == 0) {
                    for (long v = blockIdx.x * (long) blockDim.x + threadIdx.x; v < n / VEC; v += (long) gridDim.x * blockDim.x) {
                      long i = v * VEC;
                      __align__(16) act_t o[VEC];
                #if GATED
                      long r = i / F; int c = (int) (i - r * F);
                      __align__(16) act_t gv[VEC], uv[VEC];
                      *(uint4*) gv = *(const uint4*) (g + r * GW + c);
                      *(uint4*) uv = *(const uint4*) (g + r * GW + F + c);
                      #pragma unroll
                      for (int j = 0; j < VEC; j++) st(o, j, act_fn(ld(gv, j)) * ld(uv, j));
                #else
                      __align__(16) act_t gv[VEC];
                      *(uint4*) gv = *(const uint4*) (g + i);
                      #pragma unroll
                      for (int j = 0; j < VEC; j++) st(o, j, act_fn(ld(gv, j)));
                #endif
                      *(uint4*) (a + i) = *(const uint4*) o;
                    }
                  } else {
                    for (long i = blockIdx.x * (long) blockDim.x + threadIdx.x; i < n; i += (long) gridDim.x * blockDim.x) {
                #if GATED
                      long r = i / F; int c = (int) (i - r * F);
                      float gate = ld(g, r * GW + c), up = ld(g, r * GW + F + c);
                      st(a, i, act_fn(gate) * up);
                #else
                      st(a, i, act_fn(ld(g, i)));
                #endif
                    }
                  }
                }

                extern "C" __global__ void expert_act_backward(const act_t* __restrict__ g, const act_t* __restrict__ da, act_t* __restrict__ dg, long n) {
                  if constexpr (F % VEC == 0) {
                    for (long v = blockIdx.x * (long) blockDim.x + threadIdx.x; v < n / VEC; v += (long) gridDim.x * blockDim.x) {
                      long i = v * VEC;
                      __align__(16) act_t dv[VEC];
                      *(uint4*) dv = *(const uint4*) (da + i);
                #if GATED
                      long r = i / F; int c = (int) (i - r * F);
                      __align__(16) act_t gv[VEC], uv[VEC], dgate[VEC], dup[VEC];
                      *(uint4*) gv = *(const uint4*) (g + r * GW + c);
                      *(uint4*) uv = *(const uint4*) (g + r * GW + F + c);
                      #pragma unroll
                      for (int j = 0; j < VEC; j++) {
                        float gate = ld(gv, j), up = ld(uv, j), d = ld(dv, j);
                        st(dgate, j, d * up * act_grad(gate));
                        st(dup, j, d * act_fn(gate));
                      }
                      *(uint4*) (dg + r * GW + c) = *(const uint4*) dgate;
                      *(uint4*) (dg + r * GW + F + c) = *(const uint4*) dup;
                #else
                      __align__(16) act_t gv[VEC], o[VEC];
                      *(uint4*) gv = *(const uint4*) (g + i);
                      #pragma unroll
                      for (int j = 0; j < VEC; j++) st(o, j, ld(dv, j) * act_grad(ld(gv, j)));
                      *(uint4*) (dg + i) = *(const uint4*) o;
                #endif
                    }
                  } else {
                    for (long i = blockIdx.x * (long) blockDim.x + threadIdx.x; i < n; i += (long) gridDim.x * blockDim.x) {
                #if GATED
                      long r = i / F; int c = (int) (i - r * F);
                      float gate = ld(g, r * GW + c), up = ld(g, r * GW + F + c), d = ld(da, i);
                      st(dg, r * GW + c, d * up * act_grad(gate));
                      st(dg, r * GW + F + c, d * act_fn(gate));
                #else
                      st(dg, i, ld(da, i) * act_grad(ld(g, i)));
                #endif
                    }
                  }
                }

                // A slot's kind from its expert e and row p: 0 FFN, 1 zero (or dropped, or NONE), 2 copy, 3 constant.
                #if CONST
                #define SLOT_KIND(e, p) ((e) < E ? ((p) >= 0 ? 0 : 1) : ((e) < E + ZERO || (e) >= ER ? 1 : (e) < CONST0 ? 2 : 3))
                #else
                #define SLOT_KIND(e, p) ((e) < E ? ((p) >= 0 ? 0 : 1) : ((e) < E + ZERO || (e) >= ER ? 1 : 2))
                #endif

                #if CONST
                // One warp per slot: a constant expert's slot gets [a1, a2] = softmax(W_c x_t) in mix (fp32; W_c is [CONST, 2, D] fp32);
                // other slots are left alone. Warp sums in a fixed order, so the result is deterministic.
                extern "C" __global__ void constant_mix(const act_t* __restrict__ x, const int* __restrict__ idx, const float* __restrict__ wc, int n,
                    float* __restrict__ mix) {
                  int i = (blockIdx.x * blockDim.x + threadIdx.x) >> 5, lane = threadIdx.x & 31;
                  if (i >= n) return;
                  int e = idx[i];
                  if (e < CONST0 || e >= ER) return;  // the whole warp leaves together
                  const float* w = wc + (long) (e - CONST0) * 2 * D;
                  long xo = (long) (i / K) * D;
                  float z1 = 0.f, z2 = 0.f;
                  for (int c = lane; c < D; c += 32) { float v = ld(x, xo + c); z1 += w[c] * v; z2 += w[D + c] * v; }
                  z1 = warpSum(z1); z2 = warpSum(z2);
                  if (lane == 0) {
                    float m = fmaxf(z1, z2), e1 = expf(z1 - m), e2 = expf(z2 - m);
                    mix[2L * i] = e1 / (e1 + e2); mix[2L * i + 1] = e2 / (e1 + e2);
                  }
                }

                // Block (j, a tile of columns): constant expert j's gradients, summed over its slots in slot order (no atomics):
                // dv[j] (+)= Σ weight · a2 · dout_t, dW_c[j] (+)= Σ [dz1, dz2] ⊗ x_t (dz from combine_backward); accumulate 0 overwrites.
                extern "C" __global__ void constant_grads(const act_t* __restrict__ x, const act_t* __restrict__ dout, const int* __restrict__ idx,
                    const float* __restrict__ weight, const float* __restrict__ mix, const float* __restrict__ dz, int n, int accumulate,
                    float* __restrict__ dcv, float* __restrict__ dwc) {
                  int j = blockIdx.x, c = blockIdx.y * blockDim.x + threadIdx.x;
                  if (c >= D) return;
                  float gv = 0.f, g1 = 0.f, g2 = 0.f;
                  for (int i = 0; i < n; i++) {
                    if (idx[i] != CONST0 + j) continue;
                    long to = (long) (i / K) * D + c;
                    float xv = ld(x, to);
                    gv += weight[i] * mix[2L * i + 1] * ld(dout, to);
                    g1 += dz[2L * i] * xv;
                    g2 += dz[2L * i + 1] * xv;
                  }
                  long v = (long) j * D + c, w = (long) j * 2 * D + c;
                  if (accumulate) { dcv[v] += gv; dwc[w] += g1; dwc[w + D] += g2; }
                  else { dcv[v] = gv; dwc[w] = g1; dwc[w + D] = g2; }
                }
                #endif

                // Block t: out[t] = sum over its k slots of weight * (y[pos], or x[t] for a copy expert, or 0 for a zero
                // expert, or a1 x[t] + a2 v for a constant expert); a gather, so no atomics and a fixed order.
                extern "C" __global__ void combine(const act_t* __restrict__ y, const act_t* __restrict__ x, const int* __restrict__ idx,
                    const int* __restrict__ pos, const float* __restrict__ weight, act_t* __restrict__ out
                #if CONST
                    , const float* __restrict__ mix, const float* __restrict__ cv
                #endif
                    ) {
                  int t = blockIdx.x;
                  __shared__ int sp[K]; __shared__ float sw[K];
                #if SLOT_KINDS
                  __shared__ int sk[K];  // 0 FFN, 1 zero or dropped, 2 copy, 3 constant
                #endif
                #if CONST
                  __shared__ int sj[K]; __shared__ float sa1[K], sa2[K];
                #endif
                  if (threadIdx.x < K) {
                    long i = (long) t * K + threadIdx.x;
                    sp[threadIdx.x] = pos[i];
                    sw[threadIdx.x] = weight[i];
                #if SLOT_KINDS
                    int e = idx[i];
                    sk[threadIdx.x] = SLOT_KIND(e, pos[i]);  // dropped and NONE count as zero
                #endif
                #if CONST
                    if (sk[threadIdx.x] == 3) { sj[threadIdx.x] = e - CONST0; sa1[threadIdx.x] = mix[2 * i]; sa2[threadIdx.x] = mix[2 * i + 1]; }
                #endif
                  }
                  __syncthreads();
                #if !SLOT_KINDS
                  if constexpr (D % VEC == 0) {  // FFN experts only: 16-byte loads and stores, the same sums in the same order
                    for (int c = threadIdx.x * VEC; c < D; c += blockDim.x * VEC) {
                      float acc[VEC];
                      #pragma unroll
                      for (int j = 0; j < VEC; j++) acc[j] = 0.f;
                      #pragma unroll
                      for (int s = 0; s < K; s++) {
                        __align__(16) act_t v[VEC];
                        *(uint4*) v = *(const uint4*) (y + (long) sp[s] * D + c);
                        #pragma unroll
                        for (int j = 0; j < VEC; j++) acc[j] += sw[s] * ld(v, j);
                      }
                      __align__(16) act_t o[VEC];
                      #pragma unroll
                      for (int j = 0; j < VEC; j++) st(o, j, acc[j]);
                      *(uint4*) (out + (long) t * D + c) = *(const uint4*) o;
                    }
                  } else
                #endif
                  for (int c = threadIdx.x; c < D; c += blockDim.x) {
                    float acc = 0.f;
                    #pragma unroll
                    for (int s = 0; s < K; s++) {
                #if !SLOT_KINDS  // FFN experts only: unconditional loads, which the compiler can issue together
                      acc += sw[s] * ld(y, (long) sp[s] * D + c);
                #else
                      if (sk[s] == 0) acc += sw[s] * ld(y, (long) sp[s] * D + c);
                      else if (sk[s] == 2) acc += sw[s] * ld(x, (long) t * D + c);
                #if CONST
                      else if (sk[s] == 3) acc += sw[s] * (sa1[s] * ld(x, (long) t * D + c) + sa2[s] * cv[(long) sj[s] * D + c]);
                #endif
                #endif
                    }
                    st(out, (long) t * D + c, acc);
                  }
                }

                // Block t: dy[pos] = weight * dout[t] for FFN slots; dweight[t, s] = dout[t] . (y[pos], x[t], a1 x[t] + a2 v or 0); for a
                // constant expert's slot also dz = the gradient of its two mix logits (softmax backward of weight · [dout.x, dout.v]).
                extern "C" __global__ void combine_backward(const act_t* __restrict__ dout, const act_t* __restrict__ y,
                    const act_t* __restrict__ x, const int* __restrict__ idx, const int* __restrict__ pos, const float* __restrict__ weight,
                    act_t* __restrict__ dy, float* __restrict__ dweight
                #if CONST
                    , const float* __restrict__ mix, const float* __restrict__ cv, float* __restrict__ dz
                #endif
                    ) {
                  int t = blockIdx.x, lane = threadIdx.x & 31, wid = threadIdx.x >> 5, warps = blockDim.x >> 5;
                  __shared__ int sp[K]; __shared__ float sw[K]; __shared__ float partial[32][K];
                #if SLOT_KINDS
                  __shared__ int sk[K];
                #endif
                #if CONST
                  __shared__ int sj[K]; __shared__ float partialv[32][K];
                #endif
                  if (threadIdx.x < K) {
                    long i = (long) t * K + threadIdx.x;
                    sp[threadIdx.x] = pos[i];
                    sw[threadIdx.x] = weight[i];
                #if SLOT_KINDS
                    int e = idx[i];
                    sk[threadIdx.x] = SLOT_KIND(e, pos[i]);  // dropped and NONE count as zero
                #endif
                #if CONST
                    sj[threadIdx.x] = sk[threadIdx.x] == 3 ? e - CONST0 : 0;
                #endif
                  }
                  __syncthreads();
                  float dot[K];
                  #pragma unroll
                  for (int s = 0; s < K; s++) dot[s] = 0.f;
                #if CONST
                  float dotv[K];  // dout . v of constant slots (dot holds dout . x for them)
                  #pragma unroll
                  for (int s = 0; s < K; s++) dotv[s] = 0.f;
                #endif
                #if !SLOT_KINDS
                  if constexpr (D % VEC == 0) {  // FFN experts only: 16-byte loads and stores, each thread's VEC columns in turn
                    for (int c = threadIdx.x * VEC; c < D; c += blockDim.x * VEC) {
                      __align__(16) act_t gv[VEC];
                      *(uint4*) gv = *(const uint4*) (dout + (long) t * D + c);
                      #pragma unroll
                      for (int s = 0; s < K; s++) {
                        __align__(16) act_t yv[VEC], o[VEC];
                        *(uint4*) yv = *(const uint4*) (y + (long) sp[s] * D + c);
                        #pragma unroll
                        for (int j = 0; j < VEC; j++) {
                          float g = ld(gv, j);
                          dot[s] += g * ld(yv, j);
                          st(o, j, sw[s] * g);
                        }
                        *(uint4*) (dy + (long) sp[s] * D + c) = *(const uint4*) o;
                      }
                    }
                  } else
                #endif
                  for (int c = threadIdx.x; c < D; c += blockDim.x) {
                    float g = ld(dout, (long) t * D + c);
                    #pragma unroll
                    for (int s = 0; s < K; s++) {
                #if !SLOT_KINDS
                      dot[s] += g * ld(y, (long) sp[s] * D + c);
                      st(dy, (long) sp[s] * D + c, sw[s] * g);
                #else
                      if (sk[s] == 0) {
                        dot[s] += g * ld(y, (long) sp[s] * D + c);
                        st(dy, (long) sp[s] * D + c, sw[s] * g);
                      } else if (sk[s] == 2) {
                        dot[s] += g * ld(x, (long) t * D + c);
                      }
                #if CONST
                      else if (sk[s] == 3) {
                        dot[s] += g * ld(x, (long) t * D + c);
                        dotv[s] += g * cv[(long) sj[s] * D + c];
                      }
                #endif
                #endif
                    }
                  }
                  #pragma unroll
                  for (int s = 0; s < K; s++) { float v = warpSum(dot[s]); if (lane == 0) partial[wid][s] = v; }
                #if CONST
                  #pragma unroll
                  for (int s = 0; s < K; s++) { float v = warpSum(dotv[s]); if (lane == 0) partialv[wid][s] = v; }
                #endif
                  __syncthreads();
                  if (threadIdx.x < K) {
                    float v = 0.f;
                    for (int w = 0; w < warps; w++) v += partial[w][threadIdx.x];
                #if CONST
                    if (sk[threadIdx.x] == 3) {
                      long i = (long) t * K + threadIdx.x;
                      float vv = 0.f;
                      for (int w = 0; w < warps; w++) vv += partialv[w][threadIdx.x];
                      float a1 = mix[2 * i], a2 = mix[2 * i + 1], wt = sw[threadIdx.x];
                      float da1 = wt * v, da2 = wt * vv, mean = a1 * da1 + a2 * da2;
                      dz[2 * i] = a1 * (da1 - mean);
                      dz[2 * i + 1] = a2 * (da2 - mean);
                      v = a1 * v + a2 * vv;
                    }
                #endif
                    dweight[(long) t * K + threadIdx.x] = v;
                  }
                }

                // Block t: dx[t] = sum over its FFN slots of dh[pos], plus weight * dout[t] for copy slots, plus, for constant
                // slots, weight * a1 * dout[t] + dz1 W_c[j, 0] + dz2 W_c[j, 1] (overwrites dx).
                extern "C" __global__ void unpermute_sum(const act_t* __restrict__ dh, const act_t* __restrict__ dout,
                    const int* __restrict__ idx, const int* __restrict__ pos, const float* __restrict__ weight, act_t* __restrict__ dx
                #if CONST
                    , const float* __restrict__ mix, const float* __restrict__ dz, const float* __restrict__ wc
                #endif
                    ) {
                  int t = blockIdx.x;
                  __shared__ int sp[K];
                #if SLOT_KINDS
                  __shared__ int sk[K]; __shared__ float sw[K];
                #endif
                #if CONST
                  __shared__ int sj[K]; __shared__ float sa1[K], sz1[K], sz2[K];
                #endif
                  if (threadIdx.x < K) {
                    long i = (long) t * K + threadIdx.x;
                    sp[threadIdx.x] = pos[i];
                #if SLOT_KINDS
                    int e = idx[i];
                    sk[threadIdx.x] = SLOT_KIND(e, pos[i]);  // dropped and NONE count as zero
                    sw[threadIdx.x] = weight[i];
                #endif
                #if CONST
                    if (sk[threadIdx.x] == 3) {
                      sj[threadIdx.x] = e - CONST0; sa1[threadIdx.x] = mix[2 * i]; sz1[threadIdx.x] = dz[2 * i]; sz2[threadIdx.x] = dz[2 * i + 1];
                    }
                #endif
                  }
                  __syncthreads();
                #if !SLOT_KINDS
                  if constexpr (DIN % VEC == 0) {  // FFN experts only: 16-byte loads and stores, the same sums in the same order
                    for (int c = threadIdx.x * VEC; c < DIN; c += blockDim.x * VEC) {
                      float acc[VEC];
                      #pragma unroll
                      for (int j = 0; j < VEC; j++) acc[j] = 0.f;
                      #pragma unroll
                      for (int s = 0; s < K; s++) {
                        __align__(16) act_t v[VEC];
                        *(uint4*) v = *(const uint4*) (dh + (long) sp[s] * DIN + c);
                        #pragma unroll
                        for (int j = 0; j < VEC; j++) acc[j] += ld(v, j);
                      }
                      __align__(16) act_t o[VEC];
                      #pragma unroll
                      for (int j = 0; j < VEC; j++) st(o, j, acc[j]);
                      *(uint4*) (dx + (long) t * DIN + c) = *(const uint4*) o;
                    }
                  } else
                #endif
                  for (int c = threadIdx.x; c < DIN; c += blockDim.x) {  // copy and constant experts only when DIN == D
                    float acc = 0.f;
                    #pragma unroll
                    for (int s = 0; s < K; s++) {
                #if !SLOT_KINDS
                      acc += ld(dh, (long) sp[s] * DIN + c);
                #else
                      if (sk[s] == 0) acc += ld(dh, (long) sp[s] * DIN + c);
                      else if (sk[s] == 2) acc += sw[s] * ld(dout, (long) t * D + c);
                #if CONST
                      else if (sk[s] == 3) {
                        const float* w = wc + (long) sj[s] * 2 * D;
                        acc += sw[s] * sa1[s] * ld(dout, (long) t * D + c) + sz1[s] * w[c] + sz2[s] * w[D + c];
                      }
                #endif
                #endif
                    }
                    st(dx, (long) t * DIN + c, acc);
                  }
                }

                // One warp per token: the gradient of the routing weights back through normalisation and the score function
                // (and the temperature). A NONE slot has probability 0 and no expert.
                extern "C" __global__ void router_backward(const float* __restrict__ probs, const float* __restrict__ logits,
                    const int* __restrict__ idx, const float* __restrict__ dweight, int T, float tau, act_t* __restrict__ dlogits
                #if FP32_DLOGITS
                    , const float* __restrict__ dlogits_in, float* __restrict__ dlogits32
                #endif
                    ) {
                  int t = (blockIdx.x * blockDim.x + threadIdx.x) >> 5, lane = threadIdx.x & 31;
                  if (t >= T) return;
                  const float* p = probs + (long) t * ER;
                  int which[K]; float dp[K];
                  float sum = 0.f, dot = 0.f;
                  #pragma unroll
                  for (int r = 0; r < K; r++) {
                    which[r] = idx[(long) t * K + r];
                    float pr = which[r] < ER ? p[which[r]] : 0.f;
                    sum += pr; dot += dweight[(long) t * K + r] * pr;
                  }
                  #pragma unroll
                  for (int r = 0; r < K; r++) {
                    float g = dweight[(long) t * K + r];
                    dp[r] = SCALE * (NORMALIZE ? (g - dot / sum) / sum : g);
                  }
                #if SOFTMAX
                  float pdp = 0.f;
                  #pragma unroll
                  for (int r = 0; r < K; r++) if (which[r] < ER) pdp += p[which[r]] * dp[r];
                #endif
                  for (int e = lane; e < ER; e += 32) {
                    float d = 0.f;
                    #pragma unroll
                    for (int r = 0; r < K; r++) if (which[r] == e) d = dp[r];
                    float pe = p[e];
                #if SOFTMAX
                    float dl = pe * (d - pdp);
                #else
                    float dl = d * pe * (1.f - pe);
                #endif
                #if TEMPERATURE
                    dl *= scaledSlope(logits[(long) t * ER + e], tau);
                #endif
                #if FP32_DLOGITS
                    // the gradient the next MoE layer's gating residual sent back (w.r.t. these raw logits), then an fp32 copy
                    if (dlogits_in != nullptr) dl += dlogits_in[(long) t * ER + e];
                    if (dlogits32 != nullptr) dlogits32[(long) t * ER + e] = dl;
                #endif
                    st(dlogits, (long) t * ER + e, dl);
                  }
                }

                // Conversions at the layer's boundary with fp32 models: dst = src as act_t, and dst += src.
                extern "C" __global__ void cast_from_float(const float* __restrict__ src, act_t* __restrict__ dst, long n) {
                  for (long i = blockIdx.x * (long) blockDim.x + threadIdx.x; i < n; i += (long) gridDim.x * blockDim.x) st(dst, i, src[i]);
                }
                extern "C" __global__ void add_to_float(float* __restrict__ dst, const act_t* __restrict__ src, long n) {
                  for (long i = blockIdx.x * (long) blockDim.x + threadIdx.x; i < n; i += (long) gridDim.x * blockDim.x) dst[i] += ld(src, i);
                }
                // fp32 dst += src whatever the precision (extra logits joining the router's)
                extern "C" __global__ void add_floats(float* __restrict__ dst, const float* __restrict__ src, long n) {
                  for (long i = blockIdx.x * (long) blockDim.x + threadIdx.x; i < n; i += (long) gridDim.x * blockDim.x) dst[i] += src[i];
                }

                #if SOFTMAX
                // One warp per token: the column sums of the router probabilities (the aux loss's mean score times T)
                // into stats[0, ER), Σ_t logsumexp(scaled logits_t)² (the z-loss times T) into stats[ER], and
                // Σ_t -Σ_e p log p (the entropy loss times T) into stats[ER + 1].
                extern "C" __global__ void router_balance_stats(const float* __restrict__ logits, const float* __restrict__ probs, int T,
                    float tau, float* __restrict__ stats) {
                  int t = (blockIdx.x * blockDim.x + threadIdx.x) >> 5, lane = threadIdx.x & 31;
                  if (t >= T) return;
                  const float* row = logits + (long) t * ER;
                  float m = -INF, h = 0.f;
                  for (int e = lane; e < ER; e += 32) {
                    float q = probs[(long) t * ER + e];
                    atomicAdd(stats + e, q);
                    if (q > 0.f) h -= q * logf(q);
                    m = fmaxf(m, scaledLogit(row[e], tau));
                  }
                  m = warpMax(m);
                  h = warpSum(h);
                  float s = 0.f;
                  for (int e = lane; e < ER; e += 32) s += __expf(scaledLogit(row[e], tau) - m);
                  s = warpSum(s);
                  if (lane == 0) { float lse = m + logf(s); atomicAdd(stats + ER, lse * lse); atomicAdd(stats + ER + 1, h); }
                }
                #endif

                // A token's part of the aux loss's statistics: its scores as the aux loss sees them (softmax ones as they are,
                // sigmoid ones over the token's sum, as the CPU class's aux loss normalises them) added to score[0, ER), and one
                // per slot to count[expert] (count may be null; a NONE slot counts nothing). p is the token's probabilities, idx
                // its K slots.
                __host__ __device__ inline void balance_stats_row(const float* p, const int* idx, int lane, float* score, int* count) {
                #if SOFTMAX
                  float z = 1.f;
                #else
                  float z = 0.f;
                  for (int e = lane; e < ER; e += LANES) z += p[e];
                  z = tokenSum(z);
                #endif
                  for (int e = lane; e < ER; e += LANES) addTo(score + e, p[e] / z);
                  if (count != nullptr)
                    for (int r = lane; r < K; r += LANES) if (idx[r] < ER) addTo(count + idx[r], 1);
                }

                // The row of a [T / seq, ER] array that token t's sequence of seq tokens owns.
                __host__ __device__ inline float* seqRow(float* a, int t, int seq) { return a + (long) (t / seq) * ER; }
                __host__ __device__ inline int* seqRow(int* a, int t, int seq) { return a == nullptr ? nullptr : a + (long) (t / seq) * ER; }
                __host__ __device__ inline const float* seqRow(const float* a, int t, int seq) { return a + (long) (t / seq) * ER; }

                // One warp per token: the sequence-wise aux loss's statistics of each sequence of seq tokens (seq = T: the whole
                // batch, a micro-batch aux loss's scores), score [T / seq, ER] and count [T / seq, ER], both zeroed by the caller.
                extern "C" __global__ void router_sequence_stats(const float* __restrict__ probs, const int* __restrict__ idx, int T, int seq,
                    float* __restrict__ score, int* __restrict__ count) {
                  int t = (blockIdx.x * blockDim.x + threadIdx.x) >> 5, lane = threadIdx.x & 31;
                  if (t >= T) return;
                  balance_stats_row(probs + (long) t * ER, idx + (long) t * K, lane, seqRow(score, t, seq), seqRow(count, t, seq));
                }

                // What a token's balancing-loss backward needs besides its probabilities p and logits row: its slots, the
                // routing weights' gradient through normalisation and scaling per slot (dp), and the sums over its experts.
                struct BalanceRow { int which[K]; float dp[K]; float pdp, paux, lse, z, cz; };

                // The sums of a token's balancing-loss backward: aux[e] is d loss / d score[t,e] (the score the aux loss sees:
                // softmax, or sigmoid over the token's sum), dweight the token's K weight gradients, ent the entropy coefficient.
                __host__ __device__ inline void balance_row(const float* p, const float* row, const int* idx, const float* dweight,
                    const float* aux, float ent, float tau, int lane, BalanceRow* b) {
                  float sum = 0.f, dot = 0.f;
                  #pragma unroll
                  for (int r = 0; r < K; r++) {
                    b->which[r] = idx[r];
                    float pr = b->which[r] < ER ? p[b->which[r]] : 0.f;
                    sum += pr; dot += dweight[r] * pr;
                  }
                  #pragma unroll
                  for (int r = 0; r < K; r++) {
                    float g = dweight[r];
                    b->dp[r] = SCALE * (NORMALIZE ? (g - dot / sum) / sum : g);
                  }
                #if SOFTMAX
                  float pdp = 0.f;
                  #pragma unroll
                  for (int r = 0; r < K; r++) if (b->which[r] < ER) pdp += p[b->which[r]] * b->dp[r];
                  // the lowest float rather than -INF (a device intrinsic): a lane without experts leaves it to the others
                  float paux = 0.f, m = -3.40282347e+38f;
                  for (int e = lane; e < ER; e += LANES) {
                    float pe = p[e], a = aux[e];
                #if ENTROPY
                    if (pe > 0.f) a -= ent * (logf(pe) + 1.f);
                #endif
                    paux += pe * a;
                    m = fmaxf(m, scaledLogit(row[e], tau));
                  }
                  paux = tokenSum(paux);
                  m = tokenMax(m);
                  float s = 0.f;
                  for (int e = lane; e < ER; e += LANES) s += expf(scaledLogit(row[e], tau) - m);
                  s = tokenSum(s);
                  b->pdp = pdp; b->paux = paux; b->lse = m + logf(s); b->z = 1.f; b->cz = 0.f;
                #else
                  // the aux loss saw q = p / z: its gradient reaches p as (aux - Σ_j aux_j q_j) / z
                  float z = 0.f, cz = 0.f;
                  for (int e = lane; e < ER; e += LANES) { z += p[e]; cz += aux[e] * p[e]; }
                  z = tokenSum(z);
                  cz = tokenSum(cz);
                  b->pdp = 0.f; b->paux = 0.f; b->lse = 0.f; b->z = z; b->cz = cz / z;
                #endif
                }

                // The gradient of expert e's logit: the weights' part and the balancing losses' (the z-loss's coefficient zc,
                // softmax scores only), through the score function and the temperature.
                __host__ __device__ inline float balance_dlogit(int e, const float* p, const float* row, const float* aux, float zc, float ent,
                    float tau, const BalanceRow* b) {
                  float pe = p[e];
                #if SOFTMAX
                  float d = aux[e];
                #if ENTROPY
                  if (pe > 0.f) d -= ent * (logf(pe) + 1.f);
                #endif
                  #pragma unroll
                  for (int r = 0; r < K; r++) if (b->which[r] == e) d += b->dp[r];
                  float dl = pe * (d - b->pdp - b->paux) + zc * 2.f * b->lse * pe;
                #else
                  float d = 0.f;
                  #pragma unroll
                  for (int r = 0; r < K; r++) if (b->which[r] == e) d = b->dp[r];
                  float dl = (d + (aux[e] - b->cz) / b->z) * pe * (1.f - pe);
                #endif
                #if TEMPERATURE
                  dl *= scaledSlope(row[e], tau);
                #endif
                  return dl;
                }

                // router_backward with the balancing losses: aux [T / auxSeq, ER] (d loss / d score[t,e], the same for the
                // auxSeq tokens of a row: auxSeq = T for a micro- or global-batch aux loss, the sequence length for a
                // sequence-wise one) and the entropy loss's -ent (log p + 1) join the score gradient before the softmax
                // backward, or (sigmoid scores) reach the scores through their per-token normalisation; the z-loss (softmax)
                // adds zc · 2 · lse · softmax; then through the temperature.
                extern "C" __global__ void router_backward_balance(const float* __restrict__ probs, const float* __restrict__ logits,
                    const int* __restrict__ idx, const float* __restrict__ dweight, int T, const float* __restrict__ aux, int auxSeq, float zc,
                    float ent, float tau, act_t* __restrict__ dlogits
                #if FP32_DLOGITS
                    , const float* __restrict__ dlogits_in, float* __restrict__ dlogits32
                #endif
                    ) {
                  int t = (blockIdx.x * blockDim.x + threadIdx.x) >> 5, lane = threadIdx.x & 31;
                  if (t >= T) return;
                  const float* p = probs + (long) t * ER;
                  const float* row = logits + (long) t * ER;
                  const float* a = seqRow(aux, t, auxSeq);
                  BalanceRow b;
                  balance_row(p, row, idx + (long) t * K, dweight + (long) t * K, a, ent, tau, lane, &b);
                  for (int e = lane; e < ER; e += 32) {
                    float dl = balance_dlogit(e, p, row, a, zc, ent, tau, &b);
                #if FP32_DLOGITS
                    // the gradient the next MoE layer's gating residual sent back (w.r.t. these raw logits), then an fp32 copy
                    if (dlogits_in != nullptr) dl += dlogits_in[(long) t * ER + e];
                    if (dlogits32 != nullptr) dlogits32[(long) t * ER + e] = dl;
                #endif
                    st(dlogits, (long) t * ER + e, dl);
                  }
                }
                """);
        return c.toString();
    }

    private static String fmt(float v) {
        String s = Float.toString(v);
        return s.contains("E") ? String.format(Locale.ROOT, "%.9e", v) : s;
    }
}
