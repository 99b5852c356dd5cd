package dev.moe.codegen.reference;

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
import dev.moe.runtime.Init;
import dev.moe.runtime.Parameter;
import dev.moe.runtime.TrainableModel;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Comparator;
import java.util.HashMap;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/**
 * A test oracle: the training loss of a checked model, computed in float64 straight from the IR, one
 * token and one expert at a time, with no code shared with the generator or the CPU backend. Central
 * differences of {@link #forward} give the reference gradient of every parameter.
 *
 * <p>It follows the semantics the generated models document: pre-norm, parallel, residual (PR-MoE) and
 * shortcut (LongCat-Flash) blocks; RMSNorm and LayerNorm; NeoX RoPE; causal/windowed grouped-query
 * attention with qk-norm and biases; multi-head latent attention (DeepSeek-V2/V3); gated and plain FFNs (GELU as its tanh form); MoE layers with
 * softmax or sigmoid scores, temperature (annealed linearly by the step) and activation, top-k (either order), top-p, expert choice,
 * group limits, quotas, an expert bias for selection only, normalisation and scaling, capacity factors
 * with every drop policy, gating residuals, pre-gating routers reading the embeddings (Read-ME), recurrent GRU routers (RMoE), several named gates chosen per sequence by its data domain, soft routing, attention experts in the mixer slot (JetMoE top-k, BAM soft, own or group-shared keys and values), shared (gated) experts, zero, copy, constant, latent and
 * LoRA experts; the aux loss at every scope with tau, the z-loss and the entropy loss. Jitter is not
 * modelled: compare against a model without it, in training mode.
 *
 * <p>Each forward also reports the routing it chose and its {@linkplain Result#margin margin}: the
 * smallest gap, over every discrete decision (top-k ranks, group ranks, the top-p threshold, capacity
 * ranks, ReLU kinks), between the winner and what it beat. A finite-difference step well inside the
 * margin leaves the routing unchanged, so the loss is differentiable there.
 */
public final class Float64Model {
    private final Model ir;
    private final ModelConfig cfg;
    private final Map<String, double[]> values = new LinkedHashMap<>();
    private final Map<String, int[]> shapes = new HashMap<>();
    private List<String> domains = List.of();

    public Float64Model(Model ir) {
        this.ir = ir;
        this.cfg = ir.config();
        for (Param p : ir.params()) {
            int[] shape = p.shape().stream().mapToInt(Long::intValue).toArray();
            shapes.put(p.name(), shape);
            values.put(p.name(), new double[(int) p.numel()]);
        }
    }

    /** Why this oracle cannot model {@code ir} (a feature it does not know yet), or empty. */
    public static java.util.Optional<String> unsupported(Model ir) {
        for (Layer l : ir.layers()) {
            Block b = l.block();
            List<Moe> moes = new ArrayList<>(switch (b) {
                case Block.PreNorm p -> p.ffn() instanceof Block.Part.MoePart m ? List.of(m.moe()) : List.of();
                case Block.Parallel p -> p.ffn() instanceof Block.Part.MoePart m ? List.of(m.moe()) : List.of();
                case Block.Shortcut sc -> List.of(sc.moe());
                case Block.Residual r -> List.of(r.moe());
            });
            Block.Part mixer = switch (b) {
                case Block.PreNorm p -> p.mixer();
                case Block.Parallel p -> p.mixer();
                case Block.Shortcut sc -> sc.mixer();
                case Block.Residual r -> r.mixer();
            };
            if (mixer instanceof Block.Part.MoePart m) {
                if (!(b instanceof Block.PreNorm || b instanceof Block.Parallel)) {
                    return java.util.Optional.of("layer " + l.index() + ": attention experts in a shortcut or residual block");
                }
                moes.add(m.moe());
            }
            for (Moe m : moes) {
                if (m.routers().size() == 1 && m.routers().getFirst().jitter() != 0) {
                    return java.util.Optional.of("layer " + l.index() + ": jitter");
                }
                if (m.losses().stream().anyMatch(x -> x instanceof Loss.Device)) {
                    return java.util.Optional.of("layer " + l.index() + ": the device loss");
                }
            }
        }
        return java.util.Optional.empty();
    }

    /** The data domain of each sequence: an MoE with named gates routes sequence b with the gate named domains[b], else its first gate. */
    public void setDomains(List<String> domains) {
        this.domains = List.copyOf(domains);
    }

    /** Copies every parameter and buffer of a generated model, by name. */
    public void load(TrainableModel m) {
        for (Parameter p : m.parameters()) {
            double[] v = values.get(p.name());
            if (v == null || v.length != p.size()) {
                throw new IllegalArgumentException("the IR has no tensor " + p.name() + Arrays.toString(p.shape()));
            }
            for (int i = 0; i < v.length; i++) {
                v[i] = p.value()[p.offset() + i];
            }
        }
    }

    /** The live values of one tensor (change them to probe the loss). */
    public double[] param(String name) {
        double[] v = values.get(name);
        if (v == null) {
            throw new IllegalArgumentException("no tensor " + name);
        }
        return v;
    }

    /** Per-step state: expert counts for the global-batch aux loss, the step and micro-batch numbers for random drops. */
    public static final class Step {
        final Map<String, long[]> counts = new HashMap<>();
        final Map<String, long[]> slots = new HashMap<>();
        final long step;
        int microBatch;

        public Step(long step) {
            this.step = step;
        }

        public Step copy() {
            Step s = new Step(step);
            counts.forEach((k, v) -> s.counts.put(k, v.clone()));
            slots.forEach((k, v) -> s.slots.put(k, v.clone()));
            s.microBatch = microBatch;
            return s;
        }
    }

    /**
     * @param loss cross-entropy plus balancing losses
     * @param loads tokens dispatched to each routed expert, per MoE layer
     * @param routing every token's chosen experts and dropped slots, per MoE layer (equal routings give equal lists)
     * @param margin the smallest gap of any discrete decision (infinite when there is none)
     */
    public record Result(double loss, double crossEntropy, int[][] loads, List<int[]> routing, double margin) {
        public boolean sameRouting(Result o) {
            if (routing.size() != o.routing.size()) {
                return false;
            }
            for (int i = 0; i < routing.size(); i++) {
                if (!Arrays.equals(routing.get(i), o.routing.get(i))) {
                    return false;
                }
            }
            return true;
        }
    }

    /** One training forward (counting loads towards {@code step}); the step's micro-batch number advances. */
    public Result forward(int[] inputs, int[] targets, int batch, int seq, Step step) {
        Run run = new Run(batch, seq, step);
        double loss = run.forward(inputs, targets);
        step.microBatch++;
        return new Result(loss, run.crossEntropy, run.loads.toArray(int[][]::new), run.routing, run.margin);
    }

    // ---------------------------------------------------------------------------------------------

    private double[] w(String name) {
        return param(name);
    }

    /** y[rows][out] = x[rows][in] · W[out, in]ᵀ. */
    private double[][] linear(double[][] x, String name) {
        int[] s = shapes.get(name);
        return linear(x, w(name), s[0], s[1]);
    }

    private static double[][] linear(double[][] x, double[] w, int out, int in) {
        double[][] y = new double[x.length][out];
        for (int t = 0; t < x.length; t++) {
            for (int o = 0; o < out; o++) {
                double s = 0;
                for (int i = 0; i < in; i++) {
                    s += w[o * in + i] * x[t][i];
                }
                y[t][o] = s;
            }
        }
        return y;
    }

    private static double[] row(double[] x, double[] w, int out, int in) {
        return linear(new double[][] {x}, w, out, in)[0];
    }

    private static void addInto(double[][] y, double[][] x) {
        for (int t = 0; t < y.length; t++) {
            for (int d = 0; d < y[t].length; d++) {
                y[t][d] += x[t][d];
            }
        }
    }

    private static double sigmoid(double x) {
        return 1 / (1 + Math.exp(-x));
    }

    private static double logSumExp(double[] z) {
        double max = Double.NEGATIVE_INFINITY;
        for (double v : z) {
            max = Math.max(max, v);
        }
        double s = 0;
        for (double v : z) {
            s += Math.exp(v - max);
        }
        return max + Math.log(s);
    }

    private static double[] softmax(double[] z) {
        double lse = logSumExp(z);
        double[] p = new double[z.length];
        for (int i = 0; i < z.length; i++) {
            p[i] = Math.exp(z[i] - lse);
        }
        return p;
    }

    private final class Run {
        final int batch;
        final int seq;
        final int rows;
        final Step step;
        double crossEntropy;
        double balance;
        double margin = Double.POSITIVE_INFINITY;
        final List<int[]> loads = new ArrayList<>();
        final List<int[]> routing = new ArrayList<>();
        /** The router logits of the last MoE layer run (for the next one's gating residual). */
        double[][] lastLogits;
        /** The token embeddings, which pre-gating (Read-ME) routers read instead of their layer's input. */
        double[][] embedded;
        /** RMoE: the routers' GRU state, zero before the first recurrent MoE layer, carried to the next one. */
        double[][] gruState;

        Run(int batch, int seq, Step step) {
            this.batch = batch;
            this.seq = seq;
            this.rows = batch * seq;
            this.step = step;
        }

        void gap(double g) {
            margin = Math.min(margin, Math.abs(g));
        }

        double forward(int[] inputs, int[] targets) {
            int dim = cfg.dim();
            double[] embed = w("embed.weight");
            double[][] x = new double[rows][dim];
            for (int t = 0; t < rows; t++) {
                System.arraycopy(embed, inputs[t] * dim, x[t], 0, dim);
            }
            embedded = new double[rows][];
            for (int t = 0; t < rows; t++) {
                embedded[t] = x[t].clone();
            }
            for (Layer l : ir.layers()) {
                layer(l, x);
            }
            double[][] h = norm(x, "final_norm");
            double[][] logits = linear(h, cfg.tieEmbeddings() ? "embed.weight" : "head.weight");
            double ce = 0;
            for (int t = 0; t < rows; t++) {
                ce += logSumExp(logits[t]) - logits[t][targets[t]];
            }
            crossEntropy = ce / rows;
            return crossEntropy + balance;
        }

        void layer(Layer l, double[][] x) {
            String p = "layers." + l.index() + ".";
            switch (l.block()) {
                case Block.PreNorm b -> {
                    addInto(x, mixer(b.mixer(), norm(x, p + "attn_norm"), p, l.index()));
                    addInto(x, part(b.ffn(), norm(x, p + "ffn_norm"), p, l.index()));
                }
                case Block.Parallel b -> {
                    double[][] h = norm(x, p + "norm");
                    double[][] a = mixer(b.mixer(), h, p, l.index());
                    double[][] f = part(b.ffn(), h, p, l.index());
                    addInto(x, a);
                    addInto(x, f);
                }
                case Block.Residual b -> {
                    addInto(x, attention(norm(x, p + "attn_norm"), p + "attn"));
                    double[][] h = norm(x, p + "ffn_norm");
                    double[][] dense = ffn(h, p + "ffn", b.dense());
                    double[][] moe = moe(h, b.moe(), p + "moe", l.index());
                    double[][] mix = linear(h, p + "residual_mix");
                    for (int t = 0; t < rows; t++) {
                        double[] c = softmax(mix[t]);
                        for (int d = 0; d < x[t].length; d++) {
                            x[t][d] += c[0] * moe[t][d] + c[1] * dense[t][d];
                        }
                    }
                }
                case Block.Shortcut b -> {
                    addInto(x, attention(norm(x, p + "attn0_norm"), p + "attn0"));
                    double[][] m = norm(x, p + "ffn0_norm");
                    double[][] moe = moe(m, b.moe(), p + "moe", l.index());
                    addInto(x, ffn(m, p + "ffn0", b.dense()));
                    addInto(x, attention(norm(x, p + "attn1_norm"), p + "attn1"));
                    addInto(x, ffn(norm(x, p + "ffn1_norm"), p + "ffn1", b.dense()));
                    addInto(x, moe);
                }
            }
        }

        double[][] mixer(Block.Part part, double[][] h, String p, int layer) {
            return switch (part) {
                case Block.Part.Attention a -> attention(h, p + "attn");
                case Block.Part.MoePart m -> moe(h, m.moe(), p + "attn_moe", layer);
                case Block.Part.Dense d -> throw new IllegalArgumentException("a dense FFN in the mixer slot");
            };
        }

        double[][] part(Block.Part part, double[][] h, String p, int layer) {
            return switch (part) {
                case Block.Part.Dense d -> ffn(h, p + "ffn", d.ffn());
                case Block.Part.MoePart m -> moe(h, m.moe(), p + "moe", layer);
                case Block.Part.Attention a -> throw new IllegalArgumentException("attention in an ffn slot");
            };
        }

        double[][] norm(double[][] x, String prefix) {
            double[][] y = new double[x.length][];
            for (int t = 0; t < x.length; t++) {
                y[t] = normRow(x[t], w(prefix + ".weight"), cfg.norm().kind() == ModelConfig.NormKind.LAYER ? w(prefix + ".bias") : null);
            }
            return y;
        }

        double[] normRow(double[] x, double[] weight, double[] bias) {
            int n = x.length;
            double eps = cfg.norm().eps();
            double[] y = new double[n];
            if (bias == null) {
                double ms = 0;
                for (double v : x) {
                    ms += v * v;
                }
                double r = 1 / Math.sqrt(ms / n + eps);
                for (int i = 0; i < n; i++) {
                    y[i] = x[i] * r * weight[i];
                }
            } else {
                double mean = Arrays.stream(x).sum() / n;
                double var = 0;
                for (double v : x) {
                    var += (v - mean) * (v - mean);
                }
                double r = 1 / Math.sqrt(var / n + eps);
                for (int i = 0; i < n; i++) {
                    y[i] = (x[i] - mean) * r * weight[i] + bias[i];
                }
            }
            return y;
        }

        double[][] attention(double[][] h, String prefix) {
            if (cfg.mla().isPresent()) {
                return latentAttention(h, prefix, cfg.mla().get());
            }
            int heads = cfg.heads();
            int kvHeads = cfg.kvHeads();
            int hd = cfg.headDim();
            double[][] q = linear(h, prefix + ".q");
            double[][] k = linear(h, prefix + ".k");
            double[][] v = linear(h, prefix + ".v");
            if (cfg.qkvBias()) {
                addBias(q, w(prefix + ".q_bias"));
                addBias(k, w(prefix + ".k_bias"));
                addBias(v, w(prefix + ".v_bias"));
            }
            for (int t = 0; t < rows; t++) {
                int pos = t % seq;
                if (cfg.qkNormFull()) { // OLMoE: one RMSNorm over the whole q and k, then RoPE per head
                    q[t] = normRow(q[t], w(prefix + ".q_norm"), null);
                    k[t] = normRow(k[t], w(prefix + ".k_norm"), null);
                }
                boolean perHead = cfg.qkNorm() && !cfg.qkNormFull();
                headwise(q[t], heads, hd, pos, perHead ? w(prefix + ".q_norm") : null);
                headwise(k[t], kvHeads, hd, pos, perHead ? w(prefix + ".k_norm") : null);
            }
            return linear(attend(q, k, v, heads, kvHeads, hd), prefix + ".o");
        }

        /**
         * Multi-head latent attention, written per head from its definition: score(i, j) =
         * (q_rope(i) · k_rope(j) + q_nope(i) · k_nope(j)) / sqrt(nope + rope), with k_rope one rotary key
         * shared by every head and k_nope, v from kv_b · rms(kv_a · x).
         */
        double[][] latentAttention(double[][] h, String prefix, ModelConfig.Mla m) {
            int heads = cfg.heads();
            int qk = m.qkDim();
            int rope = m.ropeDim();
            int nope = m.nopeDim();
            int vd = m.vDim();
            int kvw = nope + vd;
            double[][] q = m.qRank() > 0 ? linear(rms(linear(h, prefix + ".q_a"), w(prefix + ".q_a_norm"), m.eps()), prefix + ".q_b")
                    : linear(h, prefix + ".q");
            double[][] kvb = linear(rms(linear(h, prefix + ".kv_a"), w(prefix + ".kv_a_norm"), m.eps()), prefix + ".kv_b");
            double[][] kpe = linear(h, prefix + ".k_rope");
            if (cfg.position().kind() == ModelConfig.PositionKind.ROPE) {
                for (int t = 0; t < rows; t++) {
                    for (int hh = 0; hh < heads; hh++) {
                        rotate(q[t], hh * qk, rope, t % seq);
                    }
                    rotate(kpe[t], 0, rope, t % seq);
                }
            }
            double scale = 1 / Math.sqrt(qk);
            int window = cfg.slidingWindow();
            double[][] out = new double[rows][heads * vd];
            for (int b = 0; b < batch; b++) {
                for (int i = 0; i < seq; i++) {
                    double[] qi = q[b * seq + i];
                    for (int hh = 0; hh < heads; hh++) {
                        List<Integer> keys = new ArrayList<>();
                        for (int j = 0; j < seq; j++) {
                            if ((!cfg.causal() || j <= i) && (window == 0 || j > i - window)) {
                                keys.add(j);
                            }
                        }
                        double[] sc = new double[keys.size()];
                        for (int n = 0; n < sc.length; n++) {
                            int j = b * seq + keys.get(n);
                            double dot = 0;
                            for (int d = 0; d < rope; d++) {
                                dot += qi[hh * qk + d] * kpe[j][d];
                            }
                            for (int d = 0; d < nope; d++) {
                                dot += qi[hh * qk + rope + d] * kvb[j][hh * kvw + d];
                            }
                            sc[n] = dot * scale;
                        }
                        double[] a = softmax(sc);
                        for (int n = 0; n < sc.length; n++) {
                            int j = b * seq + keys.get(n);
                            for (int d = 0; d < vd; d++) {
                                out[b * seq + i][hh * vd + d] += a[n] * kvb[j][hh * kvw + nope + d];
                            }
                        }
                    }
                }
            }
            return linear(out, prefix + ".o");
        }

        /** RMSNorm of every row with its own eps. */
        double[][] rms(double[][] x, double[] weight, double eps) {
            double[][] y = new double[x.length][];
            for (int t = 0; t < x.length; t++) {
                double ms = 0;
                for (double v : x[t]) {
                    ms += v * v;
                }
                double r = 1 / Math.sqrt(ms / x[t].length + eps);
                y[t] = new double[x[t].length];
                for (int i = 0; i < y[t].length; i++) {
                    y[t][i] = x[t][i] * r * weight[i];
                }
            }
            return y;
        }

        /** NeoX RoPE ("rotate half") of x[from, from + dims) at position pos, in place. */
        void rotate(double[] x, int from, int dims, int pos) {
            int half = dims / 2;
            double[] r = Arrays.copyOfRange(x, from, from + dims);
            for (int i = 0; i < half; i++) {
                double angle = pos * Math.pow(cfg.position().theta(), -2.0 * i / dims);
                x[from + i] = r[i] * Math.cos(angle) - r[i + half] * Math.sin(angle);
                x[from + i + half] = r[i + half] * Math.cos(angle) + r[i] * Math.sin(angle);
            }
        }

        /**
         * An attention expert (JetMoE, BAM): its own queries and output, its own keys and values or
         * those its group shares at {@code kvPrefix}; RoPE, no biases or qk-norm; as many key heads as query heads.
         */
        double[][] attentionExpert(double[][] h, String prefix, String kvPrefix, Expert.Attention a) {
            double[][] q = linear(h, prefix + ".q");
            double[][] k = linear(h, kvPrefix + ".k");
            double[][] v = linear(h, kvPrefix + ".v");
            for (int t = 0; t < rows; t++) {
                headwise(q[t], a.heads(), a.headDim(), t % seq, null);
                headwise(k[t], a.heads(), a.headDim(), t % seq, null);
            }
            return linear(attend(q, k, v, a.heads(), a.heads(), a.headDim()), prefix + ".o");
        }

        /** Scaled dot-product attention per head (causal and windowed as configured), query heads grouped over the key heads. */
        double[][] attend(double[][] q, double[][] k, double[][] v, int heads, int kvHeads, int hd) {
            double scale = 1 / Math.sqrt(hd);
            int group = heads / kvHeads;
            int window = cfg.slidingWindow();
            double[][] att = new double[rows][heads * hd];
            for (int b = 0; b < batch; b++) {
                for (int i = 0; i < seq; i++) {
                    for (int hh = 0; hh < heads; hh++) {
                        int kvh = hh / group;
                        List<Integer> keys = new ArrayList<>();
                        for (int j = 0; j < seq; j++) {
                            boolean visible = (!cfg.causal() || j <= i) && (window == 0 || j > i - window);
                            if (visible) {
                                keys.add(j);
                            }
                        }
                        double[] s = new double[keys.size()];
                        for (int n = 0; n < s.length; n++) {
                            double dot = 0;
                            for (int d = 0; d < hd; d++) {
                                dot += q[b * seq + i][hh * hd + d] * k[b * seq + keys.get(n)][kvh * hd + d];
                            }
                            s[n] = dot * scale;
                        }
                        double[] a = softmax(s);
                        for (int n = 0; n < s.length; n++) {
                            for (int d = 0; d < hd; d++) {
                                att[b * seq + i][hh * hd + d] += a[n] * v[b * seq + keys.get(n)][kvh * hd + d];
                            }
                        }
                    }
                }
            }
            return att;
        }

        void addBias(double[][] y, double[] bias) {
            for (double[] r : y) {
                for (int i = 0; i < r.length; i++) {
                    r[i] += bias[i];
                }
            }
        }

        /** qk-norm (RMSNorm over each head) then NeoX RoPE ("rotate half") of one token's heads, in place. */
        void headwise(double[] x, int heads, int hd, int pos, double[] normWeight) {
            int rot = cfg.position().rotaryDims(hd);
            for (int h = 0; h < heads; h++) {
                double[] head = Arrays.copyOfRange(x, h * hd, (h + 1) * hd);
                if (normWeight != null) {
                    head = normRow(head, normWeight, null);
                }
                if (cfg.position().kind() == ModelConfig.PositionKind.ROPE && rot > 0) {
                    int half = rot / 2;
                    double[] r = head.clone();
                    for (int i = 0; i < half; i++) {
                        double angle = pos * Math.pow(cfg.position().theta(), -2.0 * i / rot);
                        double c = Math.cos(angle);
                        double s = Math.sin(angle);
                        r[i] = head[i] * c - head[i + half] * s;
                        r[i + half] = head[i + half] * c + head[i] * s;
                    }
                    head = r;
                }
                System.arraycopy(head, 0, x, h * hd, hd);
            }
        }

        double act(Ffn.Activation a, double x) {
            return switch (a) {
                case SWIGLU -> x * sigmoid(x);
                case GEGLU, GELU -> 0.5 * x * (1 + Math.tanh(Math.sqrt(2 / Math.PI) * (x + 0.044715 * x * x * x)));
                case RELU -> {
                    gap(x);
                    yield Math.max(0, x);
                }
            };
        }

        /** A dense FFN at {@code prefix} (gate, up, down) on every row. */
        double[][] ffn(double[][] x, String prefix, Ffn f) {
            double[][] y = new double[x.length][];
            for (int t = 0; t < x.length; t++) {
                y[t] = ffnRow(x[t], prefix, f);
            }
            return y;
        }

        double[] ffnRow(double[] x, String prefix, Ffn f) {
            int h = f.hidden();
            int in = x.length;
            double[] up = row(x, w(prefix + ".up"), h, in);
            double[] a = new double[h];
            double[] gate = f.activation().gated() ? row(x, w(prefix + ".gate"), h, in) : null;
            for (int j = 0; j < h; j++) {
                a[j] = gate != null ? act(f.activation(), gate[j]) * up[j] : act(f.activation(), up[j]);
            }
            return row(a, w(prefix + ".down"), cfg.dim(), h);
        }

        // ---- MoE ----

        double[][] moe(double[][] x, Moe moe, String p, int layer) {
            Router r = moe.routers().getFirst();
            int e = moe.routedExperts();
            int dim = cfg.dim();
            List<Expert> experts = new ArrayList<>();
            List<String> kvOf = new ArrayList<>(); // attention experts: where each routed expert's keys and values live
            List<Integer> groupOf = new ArrayList<>(); // each routed expert's group: a latent expert reads its own group's projection
            List<Integer> loraGroups = new ArrayList<>(); // MoLA: each LoRA group adapts its own frozen base
            int gi = 0;
            for (ExpertGroup g : moe.groups()) {
                if (g.role() == ExpertGroup.Role.ROUTED) {
                    for (int i = 0; i < g.count(); i++) {
                        kvOf.add(g.expert() instanceof Expert.Attention a && a.sharedKv() ? p + ".group" + gi : p + ".experts." + experts.size());
                        experts.add(g.expert());
                        groupOf.add(gi);
                    }
                    if (g.expert() instanceof Expert.Lora) {
                        loraGroups.add(gi);
                    }
                }
                gi++;
            }

            // router logits, with the gating residual of the previous MoE layer's logits
            double[][] logits;
            if (moe.routers().size() > 1) {
                // several named gates (equal but for their weights): each sequence's tokens read the gate of its domain
                logits = new double[rows][];
                // named gates with jitter: the generated models' seeded noise, uniform in [1 - eps, 1 + eps] of each sequence's gate
                double[][] routerIn = x;
                if (moe.routers().stream().anyMatch(g -> g.jitter() != 0)) {
                    Init.SplitMix rng = new Init.SplitMix(step.step * 0x9E3779B97F4A7C15L + step.microBatch * 0xC2B2AE3D27D4EB4FL + layer * 0x165667B19E3779F9L);
                    routerIn = new double[rows][dim];
                    for (int t = 0; t < rows; t++) {
                        double eps = (float) gateOf(moe, t / seq).jitter();
                        for (int i = 0; i < dim; i++) {
                            routerIn[t][i] = x[t][i] * (float) (1 - eps + 2 * eps * rng.nextDouble());
                        }
                    }
                }
                for (int t = 0; t < rows; t++) {
                    int b = t / seq;
                    String gate = moe.routers().getFirst().name().orElseThrow();
                    for (Router g : moe.routers()) {
                        if (b < domains.size() && g.name().orElseThrow().equals(domains.get(b))) {
                            gate = domains.get(b);
                        }
                    }
                    logits[t] = row(routerIn[t], w(p + ".router." + gate + ".weight"), e, dim);
                }
            } else {
                logits = linear(r.pregate() ? embedded : x, p + ".router.weight");
            }
            if (values.containsKey(p + ".router.residual")) {
                int prevE = shapes.get(p + ".router.residual")[1];
                double[][] extra = linear(lastLogits, w(p + ".router.residual"), e, prevE);
                addInto(logits, extra);
            }
            if (r.recurrentWidth().isPresent()) {
                addInto(logits, recurrent(x, p, r.recurrentWidth().get(), e));
            }
            boolean attentionMoe = p.endsWith(".attn_moe");
            if (!attentionMoe) { // a gating residual reads the previous layer's FFN MoE
                lastLogits = logits;
            }
            // several named gates may differ in score, order, normalisation and scale: each token uses its sequence's gate's
            Router[] gateOf = new Router[rows];
            for (int t = 0; t < rows; t++) {
                int b = t / seq;
                gateOf[t] = r;
                for (Router g : moe.routers()) {
                    if (moe.routers().size() > 1 && b < domains.size() && g.name().orElseThrow().equals(domains.get(b))) {
                        gateOf[t] = g;
                    }
                }
            }
            double[] bias = r.bias().isPresent() && moe.routers().size() == 1 ? w(p + ".router.expert_bias") : new double[e];

            // gates of different top_k or top-p max_k: slots for the largest; a gate that takes fewer leaves the rest unused
            int most = moe.routers().stream().mapToInt(g -> switch (g.selection()) {
                case Router.Selection.TopK u -> u.k();
                case Router.Selection.TopP u -> u.maxK();
                default -> 0;
            }).max().orElse(0);
            int k = switch (r.selection()) {
                case Router.Selection.TopK t -> most;
                case Router.Selection.TopP t -> most;
                case Router.Selection.ExpertChoice c -> e;
                case Router.Selection.Soft s -> e; // every expert, weighted by its score: top-k with k = E
            };
            double[][] scores = new double[rows][];
            double[][] probs = new double[rows][];
            double[] lse = new double[rows];
            int[] selected = new int[rows * k];
            double[] weight = new double[rows * k];
            int[] used = new int[rows];
            for (int t = 0; t < rows; t++) {
                Router rt = gateOf[t];
                boolean sigmoidScore = rt.score() == Router.Score.SIGMOID;
                boolean topkFirst = !sigmoidScore && rt.order() == Router.Order.TOPK_THEN_SOFTMAX;
                double[] z = logits[t].clone();
                if (rt.temperature().isPresent()) {
                    // each named gate its own temperature
                    Router.Temperature tp = rt.temperature().get();
                    double tau = temperature(tp);
                    for (int ex = 0; ex < e; ex++) {
                        double a = switch (tp.activation().orElse("none")) {
                            case "tanh" -> Math.tanh(z[ex]);
                            case "sigmoid" -> sigmoid(z[ex]);
                            default -> z[ex];
                        };
                        z[ex] = a / tau;
                    }
                }
                scores[t] = z;
                lse[t] = logSumExp(z);
                double[] pr = new double[e];
                for (int ex = 0; ex < e; ex++) {
                    pr[ex] = sigmoidScore ? sigmoid(z[ex]) : Math.exp(z[ex] - lse[t]);
                }
                probs[t] = pr;
                double[] sel = new double[e];
                // several named gates: each its own expert bias, or none
                double[] biasOfRow = moe.routers().size() == 1 ? bias
                        : rt.bias().isPresent() ? w(p + ".router." + rt.name().orElseThrow() + ".expert_bias") : new double[e];
                for (int ex = 0; ex < e; ex++) {
                    sel[ex] = (topkFirst ? z[ex] : pr[ex]) + biasOfRow[ex];
                }
                int[] chosen = select(rt, sel, pr, rt.selection() instanceof Router.Selection.TopK tk ? tk.k() : k, e);
                used[t] = chosen.length;
                Arrays.fill(selected, t * k, (t + 1) * k, e);
                System.arraycopy(chosen, 0, selected, t * k, chosen.length);
                // weights
                double[] wt = new double[chosen.length];
                if (topkFirst) {
                    double[] zz = new double[chosen.length];
                    for (int i = 0; i < chosen.length; i++) {
                        zz[i] = z[chosen[i]];
                    }
                    wt = softmax(zz);
                } else {
                    double sum = 0;
                    for (int i = 0; i < chosen.length; i++) {
                        wt[i] = pr[chosen[i]];
                        sum += wt[i];
                    }
                    if (rt.normalize()) {
                        for (int i = 0; i < wt.length; i++) {
                            wt[i] /= sum;
                        }
                    }
                }
                for (int i = 0; i < wt.length; i++) {
                    weight[t * k + i] = wt[i] * rt.scale();
                }
            }

            // drops: expert choice, or a capacity factor (training forwards)
            boolean[] dropped = new boolean[rows * k];
            if (r.selection() instanceof Router.Selection.ExpertChoice c) {
                int cap = (int) Math.ceil(c.factor() * seq / e);
                Arrays.fill(dropped, true);
                for (int b = 0; b < batch; b++) {
                    for (int ex = 0; ex < e; ex++) {
                        List<Integer> idx = new ArrayList<>();
                        for (int s = b * seq * k; s < (b + 1) * seq * k; s++) {
                            if (selected[s] == ex) {
                                idx.add(s);
                            }
                        }
                        idx.sort(Comparator.<Integer>comparingDouble(s -> -weight[s]).thenComparingInt(s -> s));
                        keep(idx, cap, dropped, s -> weight[s]);
                    }
                }
            } else if (moe.routers().stream().map(Router::capacity).distinct().count() > 1) {
                // named gates of different capacities: each gate's experts keep at most ceil(factor · its rows · k / e) of its sequences' slots
                for (Router g : moe.routers()) {
                    if (!(g.capacity() instanceof Router.Capacity.Factor cf)) {
                        continue;
                    }
                    int gateRows = 0;
                    for (int t = 0; t < rows; t++) {
                        gateRows += gateOf[t] == g ? 1 : 0;
                    }
                    int cap = (int) Math.ceil(cf.factor() * gateRows * k / e);
                    double[] priority = switch (cf.drop()) {
                        case PROBABILITY -> weight;
                        case POSITION -> null;
                        case RANDOM -> randomPriority(rows * k, layer);
                    };
                    for (int ex = 0; ex < e; ex++) {
                        List<Integer> idx = new ArrayList<>();
                        for (int s = 0; s < rows * k; s++) {
                            if (selected[s] == ex && gateOf[s / k] == g) {
                                idx.add(s);
                            }
                        }
                        if (idx.size() <= cap) {
                            continue;
                        }
                        if (priority != null) {
                            idx.sort(Comparator.<Integer>comparingDouble(s -> -priority[s]).thenComparingInt(s -> s));
                        }
                        for (int j = cap; j < idx.size(); j++) {
                            dropped[idx.get(j)] = true;
                        }
                        if (cf.drop() == Router.DropPolicy.PROBABILITY) {
                            gap(priority[idx.get(cap - 1)] - priority[idx.get(cap)]);
                        }
                    }
                }
            } else if (r.capacity() instanceof Router.Capacity.Factor cf) {
                int cap = (int) Math.ceil(cf.factor() * rows * k / e);
                double[] priority = switch (cf.drop()) {
                    case PROBABILITY -> weight;
                    case POSITION -> null;
                    case RANDOM -> randomPriority(rows * k, layer);
                };
                for (int ex = 0; ex < e; ex++) {
                    List<Integer> idx = new ArrayList<>();
                    for (int s = 0; s < rows * k; s++) {
                        if (selected[s] == ex) {
                            idx.add(s);
                        }
                    }
                    if (idx.size() <= cap) {
                        continue;
                    }
                    if (priority != null) {
                        idx.sort(Comparator.<Integer>comparingDouble(s -> -priority[s]).thenComparingInt(s -> s));
                    }
                    for (int j = cap; j < idx.size(); j++) {
                        dropped[idx.get(j)] = true;
                    }
                    if (cf.drop() == Router.DropPolicy.PROBABILITY) {
                        gap(priority[idx.get(cap - 1)] - priority[idx.get(cap)]);
                    }
                }
            }

            int[] counts = new int[e];
            long dispatched = 0;
            for (int s = 0; s < rows * k; s++) {
                if (selected[s] < e && !dropped[s]) {
                    counts[selected[s]]++;
                    dispatched++;
                }
            }
            loads.add(counts);
            int[] signature = new int[rows * k * 2];
            for (int s = 0; s < rows * k; s++) {
                signature[2 * s] = selected[s];
                signature[2 * s + 1] = dropped[s] ? 1 : 0;
            }
            routing.add(signature);
            long[] stepCounts = step.counts.computeIfAbsent(p, i -> new long[e]);
            long[] stepSlots = step.slots.computeIfAbsent(p, i -> new long[1]);
            for (int ex = 0; ex < e; ex++) {
                stepCounts[ex] += counts[ex];
            }
            stepSlots[0] += dispatched;

            // experts
            double[][] out = new double[rows][dim];
            java.util.Map<Integer, double[][]> latent = new java.util.HashMap<>(); // per latent group: z = x · latent_downᵀ per token
            for (int ex = 0; ex < e; ex++) {
                if (experts.get(ex) instanceof Expert.Latent) {
                    latent.computeIfAbsent(groupOf.get(ex), g -> linear(x, p + ".group" + g + ".latent_down"));
                }
            }
            // attention experts read the whole sequence: each one's output for every token, used where chosen
            double[][][] attended = new double[e][][];
            for (int ex = 0; ex < e; ex++) {
                if (experts.get(ex) instanceof Expert.Attention a) {
                    attended[ex] = attentionExpert(x, p + ".experts." + ex, kvOf.get(ex), a);
                }
            }
            for (int loraGroup : loraGroups) {
                loraExperts(x, out, p, loraGroup, (Expert.Lora) moe.groups().get(loraGroup).expert(), groupOf, selected, weight, dropped, k, e);
            }
            for (int s = 0; s < rows * k; s++) {
                int ex = selected[s];
                if (ex == e || dropped[s]) {
                    continue;
                }
                int t = s / k;
                String ep = p + ".experts." + ex;
                double[] y = switch (experts.get(ex)) {
                    case Expert.FeedForward f -> ffnRow(x[t], ep, f.ffn());
                    case Expert.Latent l -> ffnRow(latent.get(groupOf.get(ex))[t], ep, l.ffn());
                    case Expert.Zero z -> new double[dim];
                    case Expert.Copy c -> x[t].clone();
                    case Expert.Constant c -> {
                        double[] a = softmax(row(x[t], w(ep + ".mix"), 2, dim));
                        double[] v = w(ep + ".vector");
                        double[] yy = new double[dim];
                        for (int d = 0; d < dim; d++) {
                            yy[d] = a[0] * x[t][d] + a[1] * v[d];
                        }
                        yield yy;
                    }
                    case Expert.Lora l -> new double[dim]; // added above, with the base FFN
                    case Expert.Attention a -> attended[ex][t];
                };
                for (int d = 0; d < dim; d++) {
                    out[t][d] += weight[s] * y[d];
                }
            }
            int shared = 0;
            int sg = 0;
            for (ExpertGroup g : moe.groups()) {
                String gp = p + ".group" + sg++;
                if (g.role() != ExpertGroup.Role.SHARED) {
                    continue;
                }
                for (int i = 0; i < g.count(); i++, shared++) {
                    String sp = p + ".shared." + shared;
                    if (g.expert() instanceof Expert.Attention a) {
                        addInto(out, attentionExpert(x, sp, a.sharedKv() ? gp : sp, a));
                        continue;
                    }
                    Ffn f = ((Expert.FeedForward) g.expert()).ffn();
                    for (int t = 0; t < rows; t++) {
                        double[] y = ffnRow(x[t], sp, f);
                        double gate = g.sigmoidGate() ? sigmoid(row(x[t], w(sp + ".sigmoid_gate"), 1, dim)[0]) : 1;
                        for (int d = 0; d < dim; d++) {
                            out[t][d] += gate * y[d];
                        }
                    }
                }
            }

            // balancing losses
            for (Loss loss : moe.losses()) {
                switch (loss) {
                    case Loss.Aux a when a.coef() > 0 -> {
                        double[] eta = new double[e];
                        for (int ex = 0; ex < e; ex++) {
                            eta[ex] = experts.get(ex).zeroCompute() ? a.tau() : 1;
                        }
                        double[][] pAux = new double[rows][];
                        for (int t = 0; t < rows; t++) {
                            pAux[t] = probs[t].clone();
                            if (gateOf[t].score() == Router.Score.SIGMOID) {
                                double z = Arrays.stream(probs[t]).sum();
                                for (int ex = 0; ex < e; ex++) {
                                    pAux[t][ex] /= z;
                                }
                            }
                        }
                        if (a.scope() == Loss.Scope.SEQUENCE) {
                            for (int b = 0; b < batch; b++) {
                                double[] f = new double[e];
                                double n = 0;
                                for (int t = b * seq; t < (b + 1) * seq; t++) {
                                    for (int i = 0; i < used[t]; i++) {
                                        f[selected[t * k + i]]++;
                                        n++;
                                    }
                                }
                                for (int t = b * seq; t < (b + 1) * seq; t++) {
                                    for (int ex = 0; ex < e; ex++) {
                                        balance += a.coef() * e * eta[ex] * (f[ex] / n) * pAux[t][ex] / rows;
                                    }
                                }
                            }
                        } else {
                            double[] f = new double[e];
                            for (int ex = 0; ex < e; ex++) {
                                f[ex] = a.scope() == Loss.Scope.GLOBAL_BATCH ? (double) stepCounts[ex] / stepSlots[0] : (double) counts[ex] / dispatched;
                            }
                            for (int t = 0; t < rows; t++) {
                                for (int ex = 0; ex < e; ex++) {
                                    balance += a.coef() * e * eta[ex] * f[ex] * pAux[t][ex] / rows;
                                }
                            }
                        }
                    }
                    case Loss.ZLoss z when z.coef() > 0 -> {
                        for (int t = 0; t < rows; t++) {
                            balance += z.coef() * lse[t] * lse[t] / rows;
                        }
                    }
                    case Loss.Entropy h when h.coef() > 0 -> {
                        for (int t = 0; t < rows; t++) {
                            for (int ex = 0; ex < e; ex++) {
                                double q = probs[t][ex];
                                if (q > 0) {
                                    balance -= h.coef() * q * Math.log(q) / rows;
                                }
                            }
                        }
                    }
                    default -> throw new IllegalArgumentException("no reference for " + loss);
                }
            }
            return out;
        }

        /**
         * RMoE: u = gru_in · x; the shared GRU cell (gates r, z, n) steps from the previous recurrent
         * layer's state to h; the router's logits gain gru_out · h.
         */
        double[][] recurrent(double[][] x, String p, int width, int e) {
            if (gruState == null) {
                gruState = new double[rows][width];
            }
            double[][] u = linear(x, p + ".router.gru_in");
            double[] wih = w("router_gru.w_ih");
            double[] whh = w("router_gru.w_hh");
            double[] bih = w("router_gru.b_ih");
            double[] bhh = w("router_gru.b_hh");
            double[][] next = new double[rows][width];
            for (int t = 0; t < rows; t++) {
                double[] h = gruState[t];
                for (int j = 0; j < width; j++) {
                    // pre-activations of gate row j of block b (0 reset, 1 update, 2 candidate), from u and from h
                    double[] fromU = new double[3];
                    double[] fromH = new double[3];
                    for (int b = 0; b < 3; b++) {
                        int o = b * width + j;
                        fromU[b] = bih[o];
                        fromH[b] = bhh[o];
                        for (int i = 0; i < width; i++) {
                            fromU[b] += wih[o * width + i] * u[t][i];
                            fromH[b] += whh[o * width + i] * h[i];
                        }
                    }
                    double reset = sigmoid(fromU[0] + fromH[0]);
                    double update = sigmoid(fromU[1] + fromH[1]);
                    double cand = Math.tanh(fromU[2] + reset * fromH[2]);
                    next[t][j] = (1 - update) * cand + update * h[j];
                }
            }
            gruState = next;
            return linear(next, p + ".router.gru_out");
        }

        /** The router temperature at this step: linear from start to end over the first {@code steps} optimiser steps, then the end. */
        double temperature(Router.Temperature tp) {
            if (tp.steps() <= 0) {
                return tp.start();
            }
            double f = Math.min(step.step, tp.steps()) / (double) tp.steps();
            return tp.start() * (1 - f) + tp.end() * f;
        }

        /** Keeps the first {@code cap} of the ranked slots (the rest stay dropped); records the rank gap at the cut. */
        void keep(List<Integer> ranked, int cap, boolean[] dropped, java.util.function.IntToDoubleFunction by) {
            for (int j = 0; j < Math.min(cap, ranked.size()); j++) {
                dropped[ranked.get(j)] = false;
            }
            if (cap > 0 && ranked.size() > cap) {
                gap(by.applyAsDouble(ranked.get(cap - 1)) - by.applyAsDouble(ranked.get(cap)));
            }
        }

        /** The generated models' random drop priorities: SplitMix64 seeded by the step, the micro-batch and the layer. */
        /** The gate of sequence b: the one named after its domain, else the first. */
        Router gateOf(Moe moe, int b) {
            for (Router g : moe.routers()) {
                if (b < domains.size() && g.name().orElseThrow().equals(domains.get(b))) {
                    return g;
                }
            }
            return moe.routers().getFirst();
        }

        double[] randomPriority(int slots, int layer) {
            Init.SplitMix rng = new Init.SplitMix((step.step * 0x9E3779B97F4A7C15L + step.microBatch * 0xC2B2AE3D27D4EB4FL
                    + layer * 0x165667B19E3779F9L) ^ 0x5DEECE66DL);
            double[] p = new double[slots];
            for (int i = 0; i < slots; i++) {
                p[i] = (float) rng.nextDouble();
            }
            return p;
        }

        /**
         * Token-choice selection: the experts in the order they are taken. Top-k ranks {@code sel}
         * (among the kept groups, or per quota group); top-p takes experts by probability until their
         * mass reaches p; expert choice ranks every expert.
         */
        int[] select(Router r, double[] sel, double[] pr, int k, int e) {
            boolean[] allowed = new boolean[e];
            Arrays.fill(allowed, true);
            if (r.groupLimit().isPresent()) {
                int groups = r.groupLimit().get().groups();
                int top = r.groupLimit().get().top();
                int gs = e / groups;
                double[] score = new double[groups];
                for (int g = 0; g < groups; g++) {
                    double[] in = Arrays.copyOfRange(sel, g * gs, (g + 1) * gs);
                    Arrays.sort(in);
                    score[g] = in[gs - 1] + (gs >= 2 ? in[gs - 2] : 0);
                }
                List<Integer> order = rank(score, null);
                Arrays.fill(allowed, false);
                for (int q = 0; q < top; q++) {
                    for (int ex = order.get(q) * gs; ex < (order.get(q) + 1) * gs; ex++) {
                        allowed[ex] = true;
                    }
                }
                if (top < groups) {
                    gap(score[order.get(top - 1)] - score[order.get(top)]);
                }
            }
            if (r.selection() instanceof Router.Selection.TopP tp) {
                List<Integer> order = rank(pr, allowed);
                List<Integer> chosen = new ArrayList<>();
                double mass = 0;
                for (int i = 0; i < tp.maxK(); i++) {
                    if (i > 0) {
                        gap(mass - tp.p());
                        if (mass >= tp.p()) {
                            break;
                        }
                    }
                    chosen.add(order.get(i));
                    mass += pr[order.get(i)];
                }
                rankGaps(sel, order, chosen.size());
                return chosen.stream().mapToInt(Integer::intValue).toArray();
            }
            if (r.selection() instanceof Router.Selection.ExpertChoice) {
                // every expert, by score: only the experts' picks (checked by the caller) decide
                return rank(sel, allowed).stream().mapToInt(Integer::intValue).toArray();
            }
            if (r.quotaGroups().isPresent()) {
                int groups = r.quotaGroups().get();
                int gs = e / groups;
                int per = k / groups;
                int[] chosen = new int[k];
                for (int g = 0; g < groups; g++) {
                    boolean[] in = new boolean[e];
                    Arrays.fill(in, g * gs, (g + 1) * gs, true);
                    List<Integer> order = rank(sel, in);
                    rankGaps(sel, order, per);
                    for (int i = 0; i < per; i++) {
                        chosen[g * per + i] = order.get(i);
                    }
                }
                return chosen;
            }
            List<Integer> order = rank(sel, allowed);
            rankGaps(sel, order, k);
            return order.subList(0, k).stream().mapToInt(Integer::intValue).toArray();
        }

        /** The gaps between consecutive ranks up to the first one not taken: the taken set and its order are stable inside them. */
        void rankGaps(double[] by, List<Integer> order, int taken) {
            for (int i = 0; i < taken && i + 1 < order.size(); i++) {
                gap(by[order.get(i)] - by[order.get(i + 1)]);
            }
        }

        /** Indices (where allowed) by descending value, ties to the lower index. */
        List<Integer> rank(double[] by, boolean[] allowed) {
            List<Integer> order = new ArrayList<>();
            for (int i = 0; i < by.length; i++) {
                if (allowed == null || allowed[i]) {
                    order.add(i);
                }
            }
            order.sort(Comparator.<Integer>comparingDouble(i -> -by[i]).thenComparingInt(i -> i));
            return order;
        }

        /**
         * MoLA: a frozen base FFN for every token; each dispatched slot adds weight · (alpha / rank) ·
         * B A to each projection (the gate and up pre-activations of the token, and the down projection
         * of the token's mixed activation).
         */
        void loraExperts(double[][] x, double[][] out, String p, int group, Expert.Lora lo, List<Integer> groupOf, int[] selected, double[] weight,
                boolean[] dropped, int k, int e) {
            Ffn f = lo.base();
            int h = f.hidden();
            int rank = lo.rank();
            int dim = cfg.dim();
            double sc = lo.alpha() / rank;
            String base = p + ".group" + group + ".base";
            for (int t = 0; t < rows; t++) {
                double[] up = row(x[t], w(base + ".up"), h, dim);
                double[] gate = f.activation().gated() ? row(x[t], w(base + ".gate"), h, dim) : null;
                List<Integer> slots = new ArrayList<>();
                for (int s = t * k; s < (t + 1) * k; s++) {
                    // only this group's LoRA experts adapt its base; other experts beside them add their own output
                    if (selected[s] < e && !dropped[s] && groupOf.get(selected[s]) == group) {
                        slots.add(s);
                    }
                }
                for (int s : slots) {
                    String ep = p + ".experts." + selected[s];
                    addLora(up, x[t], ep + ".up", weight[s] * sc, h, rank, dim);
                    if (gate != null) {
                        addLora(gate, x[t], ep + ".gate", weight[s] * sc, h, rank, dim);
                    }
                }
                double[] a = new double[h];
                for (int j = 0; j < h; j++) {
                    a[j] = gate != null ? act(f.activation(), gate[j]) * up[j] : act(f.activation(), up[j]);
                }
                double[] y = row(a, w(base + ".down"), dim, h);
                for (int s : slots) {
                    addLora(y, a, p + ".experts." + selected[s] + ".down", weight[s] * sc, dim, rank, h);
                }
                for (int d = 0; d < dim; d++) {
                    out[t][d] += y[d];
                }
            }
        }

        void addLora(double[] y, double[] x, String proj, double scale, int out, int rank, int in) {
            double[] z = row(x, w(proj + "_a"), rank, in);
            double[] b = row(z, w(proj + "_b"), out, rank);
            for (int i = 0; i < out; i++) {
                y[i] += scale * b[i];
            }
        }
    }
}
