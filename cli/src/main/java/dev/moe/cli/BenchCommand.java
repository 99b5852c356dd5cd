package dev.moe.cli;

import dev.moe.runtime.Activation;
import dev.moe.runtime.Backend;
import dev.moe.runtime.Elementwise;
import dev.moe.runtime.Init;
import dev.moe.runtime.Routing;
import dev.moe.runtime.cpu.CpuBackend;
import java.io.PrintWriter;
import java.util.List;
import java.util.Locale;
import java.util.concurrent.Callable;
import picocli.CommandLine.Command;
import picocli.CommandLine.Mixin;
import picocli.CommandLine.Model.CommandSpec;
import picocli.CommandLine.Option;
import picocli.CommandLine.Spec;

/**
 * {@code moe bench}: one dropless MoE layer of SwiGLU experts on the CPU backend, forward and
 * forward+backward, in GFLOP/s (6·T·k·d·f forward, 3× that with the backward), with the same op
 * sequence the generated code runs: router matmul, top-k, counting sort, gather, grouped matmuls,
 * SwiGLU, weighted scatter.
 */
@Command(name = "bench", description = {"Benchmark one MoE layer on the CPU and print a table of GFLOP/s.",
    "Shapes: T=2048, d=256, E=16, f=512, k=2 and the fine-grained T=2048, d=256, E=64, f=128, k=6.",
    "Then the first shape with 16 zero experts added: time as routed, with every slot on a zero expert, and on an FFN expert.",
    "With --backend cuda: the GPU layer (bf16) in TFLOP/s on the Mixtral (4096, 14336, 8, 2), DeepSeek (2048, 1408, 64, 6)",
    "and OLMoE (2048, 1024, 64, 8) shapes (d, f, E, k), uniform and skewed routing, with the share of routing, permutation and",
    "combine in the forward and in forward+backward, the peak device memory, and each phase's GPU and host time."})
final class BenchCommand implements Callable<Integer> {
    @Spec
    CommandSpec spec;

    @Mixin
    HelpOption help;

    @Option(names = "--threads", paramLabel = "N", description = "CPU threads (default: ${DEFAULT-VALUE}).")
    int threads = 2;

    @Option(names = "--seconds", paramLabel = "S", description = "Measuring time per figure, after warm-up (default: ${DEFAULT-VALUE}).")
    double seconds = 3;

    @Option(names = "--scalar", description = "Use the scalar reference path instead of the Vector API.")
    boolean scalar;

    @Option(names = "--backend", paramLabel = "NAME", description = "cpu (default) or cuda.")
    String backendName = "cpu";

    @Option(names = "--tokens", paramLabel = "N", description = "Tokens per batch with --backend cuda (default: ${DEFAULT-VALUE}).")
    int tokens = 8192;

    @Option(names = "--fp32", description = "With --backend cuda: fp32 instead of bf16.")
    boolean fp32;

    @Option(names = "--attention-experts", description = "Instead: the forward of JetMoE's attention experts (recipes/jetmoe.moe scaled up to d=256, "
            + "context 256, batch 8, 8 experts of 2 heads x 32 with shared keys and values) at top-k 1, 2, 4 and 8, with the FLOPs per "
            + "token that `moe info` counts. Queries, outputs and attention rows run for routed tokens only: top-8 costs what every k "
            + "cost when every expert ran for every token.")
    boolean attentionExperts;

    record Shape(int tokens, int dim, int experts, int hidden, int k) {}

    /** recipes/jetmoe.moe's mixer, scaled up, with dense FFNs so that the attention experts' time stands out. */
    private static final String JETMOE = """
            moe moa {
              routed 8 x attention(heads: 2, head_dim: 32, shared_kv: true)
              router {
                order topk_then_softmax
                top_k %d
              }
              balance aux(coef: 0.01)
              balance z_loss(coef: 0.001)
            }
            model JetMoEBench {
              vocab 256
              context 256
              dim 256
              heads 4
              layers 2 {
                all: moa, swiglu(hidden: 512)
              }
            }
            """;

    /** Forward time of attention-expert models that differ only in top-k; the FLOPs are {@code moe info}'s, at full context. */
    private int attentionExperts(PrintWriter out) {
        int batch = 8;
        out.printf(Locale.ROOT, "attention experts (recipes/jetmoe.moe scaled up), fp32, %d thread(s), %s path: d=256, context 256, batch %d, 2 layers,%n",
                threads, scalar ? "scalar" : "Vector API", batch);
        out.printf(Locale.ROOT, "8 experts of 2 heads x 32 (shared K/V), dense SwiGLU FFNs (f=512)%n");
        out.printf(Locale.ROOT, "%-8s %20s %12s %12s%n", "top-k", "fwd MFLOP/token", "fwd ms", "tokens/s");
        for (int k : new int[] {1, 2, 4, 8}) {
            dev.moe.dsl.SourceFile source = new dev.moe.dsl.SourceFile("jetmoe-bench.moe", JETMOE.formatted(k));
            dev.moe.compiler.ir.Model model = dev.moe.compiler.MoeCompiler.compile(source).orThrow().models().getFirst();
            dev.moe.runtime.TrainableModel m;
            try {
                m = Recipes.instantiate(model, source.name(), () -> new CpuBackend(threads, !scalar));
            } catch (Recipes.UserError e) {
                throw new IllegalStateException(e);
            }
            m.initialize(1);
            m.setTraining(false);
            int seq = m.context();
            int[] inputs = new int[batch * seq];
            for (int i = 0; i < inputs.length; i++) {
                inputs[i] = (i * 131 + 7) % 256;
            }
            double fwd = time(() -> {
                m.beginStep();
                m.forward(inputs, inputs, batch, seq);
            });
            out.printf(Locale.ROOT, "%-8d %20.2f %12.2f %12.0f%n", k, model.flopsPerToken().expected() / 1e6, fwd * 1e3, batch * seq / fwd);
            out.flush();
        }
        return 0;
    }

    @Override
    public Integer call() {
        PrintWriter out = spec.commandLine().getOut();
        if (!backendName.equals("cpu")) {
            return gpu(out);
        }
        if (attentionExperts) {
            return attentionExperts(out);
        }
        Backend backend = new CpuBackend(threads, !scalar);
        out.printf(Locale.ROOT, "MoE layer, fp32, %d thread(s), %s path, %s%n", threads, scalar ? "scalar" : "Vector API",
                System.getProperty("os.arch"));
        out.printf(Locale.ROOT, "%-30s %12s %12s %14s%n", "shape (T, d, E, f, k)", "fwd GFLOP/s", "fwd ms", "fwd+bwd GFLOP/s");
        for (Shape s : List.of(new Shape(2048, 256, 16, 512, 2), new Shape(2048, 256, 64, 128, 6))) {
            Layer layer = new Layer(s, backend);
            double flops = 6.0 * s.tokens() * s.k() * s.dim() * s.hidden();
            double fwd = time(layer::forward);
            double both = time(() -> {
                layer.forward();
                layer.backward();
            });
            out.printf(Locale.ROOT, "%-30s %12.1f %12.2f %14.1f%n", String.format(Locale.ROOT, "%d, %d, %d, %d, %d", s.tokens(), s.dim(),
                    s.experts(), s.hidden(), s.k()), flops / fwd / 1e9, fwd * 1e3, 3 * flops / both / 1e9);
            out.flush();
        }
        zeroComputation(out, backend);
        return 0;
    }

    /** The GPU layer benchmark; a machine without a GPU gets the reason and exit status 1. */
    private int gpu(PrintWriter out) {
        PrintWriter err = spec.commandLine().getErr();
        if (!backendName.equals("cuda")) {
            err.println("moe: error: unknown backend `" + backendName + "`: use cpu or cuda");
            return 1;
        }
        if (tokens < 1) {
            err.println("moe: error: --tokens must be at least 1");
            return 1;
        }
        try {
            int reps = Math.max(3, (int) Math.round(seconds * 5));
            dev.moe.cuda.MoeLayerBench.run(out, tokens, reps,
                    fp32 ? dev.moe.cuda.kernels.MoeKernelSource.Precision.FP32 : dev.moe.cuda.kernels.MoeKernelSource.Precision.BF16,
                    "mixtral", "deepseek", "olmoe");
            return 0;
        } catch (dev.moe.cuda.CudaException e) {
            err.println("moe: error: --backend cuda: " + e.getMessage());
            return 1;
        }
    }

    /**
     * MoE++ zero-computation experts: the first shape with as many zero experts as FFN experts, timed
     * as the router routes and with every slot steered to a zero expert (or to an FFN expert) by a
     * logit shift; slots of zero experts skip the grouped matmuls, so their time is the router's,
     * the dispatch's and the combine's.
     */
    private void zeroComputation(PrintWriter out, Backend backend) {
        Shape s = new Shape(2048, 256, 16, 512, 2);
        int zero = 16;
        out.printf(Locale.ROOT, "%nzero-computation experts: T=%d, d=%d, %d FFN experts (f=%d) + %d zero experts, k=%d%n", s.tokens(), s.dim(), s.experts(),
                s.hidden(), zero, s.k());
        out.printf(Locale.ROOT, "%-30s %12s %12s %14s%n", "routing", "FFN slots", "fwd ms", "fwd+bwd ms");
        String[] names = {"as the router routes", "every slot to a zero expert", "every slot to an FFN expert"};
        float[] shifts = {0f, 1e4f, -1e4f};
        for (int i = 0; i < names.length; i++) {
            Layer layer = new Layer(s, zero, shifts[i], backend);
            double fwd = time(layer::forward);
            double both = time(() -> {
                layer.forward();
                layer.backward();
            });
            double ffnShare = (double) layer.offsets[s.experts()] / (s.tokens() * s.k());
            out.printf(Locale.ROOT, "%-30s %11.0f%% %12.2f %14.2f%n", names[i], 100 * ffnShare, fwd * 1e3, both * 1e3);
            out.flush();
        }
    }

    /** Median seconds per call over the measuring time, after a warm-up of the same length. */
    private double time(Runnable r) {
        long end = System.nanoTime() + (long) (seconds * 1e9);
        while (System.nanoTime() < end) {
            r.run();
        }
        java.util.List<Long> runs = new java.util.ArrayList<>();
        end = System.nanoTime() + (long) (seconds * 1e9);
        while (System.nanoTime() < end || runs.size() < 3) {
            long t0 = System.nanoTime();
            r.run();
            runs.add(System.nanoTime() - t0);
        }
        runs.sort(null);
        return runs.get(runs.size() / 2) / 1e9;
    }

    /**
     * The buffers and op sequence of one MoE layer (what generated code does for `routed E x swiglu(f)`,
     * top-k), optionally with zero experts after the FFN ones (`routed Z x zero`): their slots sort last
     * and skip the experts' matmuls.
     */
    static final class Layer {
        final Shape s;
        final Backend b;
        /** Zero experts, numbered after the FFN experts. */
        final int zero;
        /** Added to the zero experts' logits for selection: steers slots to them (positive) or away (negative). */
        final float zeroShift;
        final float[] x;
        final float[] router;
        final float[] gate;
        final float[] up;
        final float[] down;
        final float[] dGateW;
        final float[] dUpW;
        final float[] dDownW;
        final float[] dRouter;
        final float[] logits;
        final int[] selected;
        final float[] weight;
        final int[] order;
        final int[] offsets;
        final int[] tokenOfRow;
        final float[] weightOfRow;
        final float[] xs;
        final float[] g;
        final float[] u;
        final float[] a;
        final float[] ys;
        final float[] out;
        final float[] dOut;
        final float[] dys;
        final float[] dAct;
        final float[] dG;
        final float[] dU;
        final float[] dxs;
        final float[] dx;

        Layer(Shape s, Backend backend) {
            this(s, 0, 0f, backend);
        }

        Layer(Shape s, int zero, float zeroShift, Backend backend) {
            this.s = s;
            this.b = backend;
            this.zero = zero;
            this.zeroShift = zeroShift;
            int slots = s.tokens() * s.k();
            x = random(s.tokens() * s.dim(), 1, 1.0);
            router = random((s.experts() + zero) * s.dim(), 2, 0.05);
            gate = random(s.experts() * s.hidden() * s.dim(), 3, 0.05);
            up = random(s.experts() * s.hidden() * s.dim(), 4, 0.05);
            down = random(s.experts() * s.dim() * s.hidden(), 5, 0.05);
            dGateW = new float[gate.length];
            dUpW = new float[up.length];
            dDownW = new float[down.length];
            dRouter = new float[router.length];
            logits = new float[s.tokens() * (s.experts() + zero)];
            selected = new int[slots];
            weight = new float[slots];
            order = new int[slots];
            offsets = new int[s.experts() + zero + 1];
            tokenOfRow = new int[slots];
            weightOfRow = new float[slots];
            xs = new float[slots * s.dim()];
            g = new float[slots * s.hidden()];
            u = new float[slots * s.hidden()];
            a = new float[slots * s.hidden()];
            ys = new float[slots * s.dim()];
            out = new float[s.tokens() * s.dim()];
            dOut = random(s.tokens() * s.dim(), 6, 1.0);
            dys = new float[slots * s.dim()];
            dAct = new float[slots * s.hidden()];
            dG = new float[slots * s.hidden()];
            dU = new float[slots * s.hidden()];
            dxs = new float[slots * s.dim()];
            dx = new float[s.tokens() * s.dim()];
        }

        private static float[] random(int n, long seed, double std) {
            Init.SplitMix rng = new Init.SplitMix(seed);
            float[] a = new float[n];
            for (int i = 0; i < n; i++) {
                a[i] = (float) (rng.gaussian() * std);
            }
            return a;
        }

        void forward() {
            int e = s.experts();
            int all = e + zero;
            int k = s.k();
            int slots = s.tokens() * k;
            b.matmul(x, 0, router, 0, logits, 0, s.tokens(), s.dim(), all);
            for (int t = 0; t < s.tokens(); t++) {
                int o = t * all;
                for (int r = 0; r < k; r++) {
                    int best = -1;
                    float bestScore = Float.NEGATIVE_INFINITY;
                    for (int x1 = 0; x1 < all; x1++) {
                        boolean taken = false;
                        for (int q = 0; q < r; q++) {
                            taken |= selected[t * k + q] == x1;
                        }
                        float score = logits[o + x1] + (x1 >= e ? zeroShift : 0f);
                        if (!taken && (best < 0 || score > bestScore)) {
                            best = x1;
                            bestScore = score;
                        }
                    }
                    selected[t * k + r] = best;
                    weight[t * k + r] = 1f / k;
                }
            }
            Routing.sortByExpert(selected, slots, all, order, offsets);
            for (int i = 0; i < slots; i++) {
                tokenOfRow[i] = order[i] / k;
                weightOfRow[i] = weight[order[i]];
            }
            // the FFN experts' rows come first; the zero experts' rows output 0
            int ffnRows = offsets[e];
            b.gatherRows(x, tokenOfRow, ffnRows, s.dim(), xs);
            b.groupedMatmul(xs, gate, 0, g, offsets, e, s.dim(), s.hidden());
            b.groupedMatmul(xs, up, 0, u, offsets, e, s.dim(), s.hidden());
            b.glu(Activation.SILU, g, u, a, ffnRows * s.hidden());
            b.groupedMatmul(a, down, 0, ys, offsets, e, s.hidden(), s.dim());
            java.util.Arrays.fill(ys, ffnRows * s.dim(), slots * s.dim(), 0f);
            Elementwise.zero(out, out.length);
            b.scatterAddRows(ys, tokenOfRow, weightOfRow, slots, s.dim(), out);
        }

        void backward() {
            int e = s.experts();
            int slots = s.tokens() * s.k();
            int ffnRows = offsets[e];
            b.gatherRows(dOut, tokenOfRow, slots, s.dim(), dys);
            Elementwise.scaleRows(dys, weightOfRow, slots, s.dim());
            Elementwise.zero(dAct, ffnRows * s.hidden());
            b.groupedMatmulBackward(a, down, 0, dys, dAct, dDownW, 0, offsets, e, s.hidden(), s.dim());
            b.gluBackward(Activation.SILU, g, u, dAct, dG, dU, ffnRows * s.hidden());
            Elementwise.zero(dxs, ffnRows * s.dim());
            b.groupedMatmulBackward(xs, gate, 0, dG, dxs, dGateW, 0, offsets, e, s.dim(), s.hidden());
            b.groupedMatmulBackward(xs, up, 0, dU, dxs, dUpW, 0, offsets, e, s.dim(), s.hidden());
            Elementwise.zero(dx, dx.length);
            b.scatterAddRows(dxs, tokenOfRow, null, ffnRows, s.dim(), dx);
        }
    }
}
