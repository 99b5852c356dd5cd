package dev.moe.cuda;

import dev.moe.cuda.kernels.MoeKernelSource.Precision;
import dev.moe.cuda.kernels.MoeKernelSource.Score;
import dev.moe.cuda.kernels.MoeKernelSource.Spec;
import java.lang.foreign.MemorySegment;
import java.util.Arrays;
import java.util.List;
import java.util.Map;
import java.util.Random;

/**
 * Times one MoE layer (SwiGLU experts, softmax top-k, normalised) on the GPU, forward and
 * forward+backward, and prints TFLOP/s with FLOPs counted as 6·T·k·d·f forward and 3× that for
 * forward+backward (the convention of the PyTorch peer script), the share of the forward pass
 * spent outside the expert GEMMs, and the allocator's peak. Routing is uniform (random router) or
 * skewed (an expert bias that favours low-numbered experts). Median of CUDA-event timings.
 *
 * <pre>java ... dev.moe.cuda.MoeLayerBench [--tokens 8192] [--reps 20] [--fp32] [--shapes mixtral,deepseek,olmoe]</pre>
 */
public final class MoeLayerBench {

    record Shape(String name, int d, int f, int e, int k) {}

    static final Map<String, Shape> SHAPES = Map.of(
            "mixtral", new Shape("mixtral", 4096, 14336, 8, 2),
            "deepseek", new Shape("deepseek", 2048, 1408, 64, 6),
            "olmoe", new Shape("olmoe", 2048, 1024, 64, 8));

    public static void main(String[] args) {
        int tokens = 8192, reps = 20;
        Precision precision = Precision.BF16;
        String[] shapes = {"mixtral", "deepseek", "olmoe"};
        for (int i = 0; i < args.length; i++) {
            switch (args[i]) {
                case "--tokens" -> tokens = Integer.parseInt(args[++i]);
                case "--reps" -> reps = Integer.parseInt(args[++i]);
                case "--fp32" -> precision = Precision.FP32;
                case "--shapes" -> shapes = args[++i].split(",");
                default -> {
                    System.err.println("usage: MoeLayerBench [--tokens N] [--reps N] [--fp32] [--shapes mixtral,deepseek,olmoe]");
                    System.exit(2);
                }
            }
        }
        try {
            run(new java.io.PrintWriter(System.out, true), tokens, reps, precision, shapes);
        } catch (CudaException e) {
            System.err.println("moe: " + e.getMessage());
            System.exit(2);
        }
    }

    /** Opens GPU 0 and prints the table for {@code shapes} (names of {@link #SHAPES}). */
    public static void run(java.io.PrintWriter out, int tokens, int reps, Precision precision, String... shapes) {
        for (String name : shapes) {
            if (!SHAPES.containsKey(name)) {
                throw new IllegalArgumentException("unknown shape " + name + "; known: " + new java.util.TreeSet<>(SHAPES.keySet()));
            }
        }
        try (CudaContext ctx = new CudaContext(0)) {
            out.printf("MoE layer on %s (%s), %s, %d tokens, median of %d%n", ctx.deviceName, ctx.arch,
                    precision.name().toLowerCase(java.util.Locale.ROOT), tokens, reps);
            out.printf("%-9s %-7s %8s %8s %10s %10s %11s %11s %12s %10s%n", "shape", "routing", "fwd ms", "f+b ms", "fwd TF/s",
                    "f+b TF/s", "route% fwd", "route% f+b", "peak memory", "max/mean");
            out.flush();
            for (String name : shapes) {
                for (boolean skewed : new boolean[] {false, true}) {
                    run(out, ctx, SHAPES.get(name), skewed, tokens, reps, precision);
                }
            }
        }
    }

    static void run(java.io.PrintWriter out, CudaContext ctx, Shape sh, boolean skewed, int tokens, int reps, Precision precision) {
        Spec spec = new Spec(sh.d(), sh.f(), sh.e(), sh.k(), Score.SOFTMAX, true, 1f, skewed, precision);
        Random rnd = new Random(42);
        // Gradients in the activation type, as PyTorch keeps them for bf16 parameters: same bytes as the peer.
        try (CudaMoeLayer layer = new CudaMoeLayer(ctx, spec, true);
                DeviceAllocator.Block x = layer.allocateActivations((long) tokens * sh.d());
                DeviceAllocator.Block dOut = layer.allocateActivations((long) tokens * sh.d())) {
            float[] bias = null;
            if (skewed) {
                bias = new float[sh.e()];
                for (int e = 0; e < sh.e(); e++) {
                    bias[e] = 2f / sh.e() * (1f - e / (float) (sh.e() - 1)); // linear: expert 0 most favoured
                }
            }
            layer.setWeights(Compare.gaussian(rnd, sh.e() * sh.d(), (float) (1 / Math.sqrt(sh.d())), false), bias,
                    tiled(rnd, sh.e() * 2 * sh.f() * sh.d(), (float) (1 / Math.sqrt(sh.d()))),
                    tiled(rnd, sh.e() * sh.d() * sh.f(), (float) (1 / Math.sqrt(sh.f()))));
            layer.upload(Compare.gaussian(rnd, tokens * sh.d(), 1f, false), x.pointer);
            layer.upload(Compare.gaussian(rnd, tokens * sh.d(), 1e-3f, false), dOut.pointer);
            MemorySegment start = ctx.driver.createEvent(), end = ctx.driver.createEvent();
            for (int i = 0; i < 3; i++) { // warm-up: plans, caches
                layer.forward(x.pointer, tokens);
                layer.backward(dOut.pointer);
            }
            ctx.synchronize();
            ctx.allocator.resetHighWater();
            float[] fwd = new float[reps], fb = new float[reps];
            for (int i = 0; i < reps; i++) {
                ctx.driver.record(start, ctx.stream);
                layer.forward(x.pointer, tokens);
                ctx.driver.record(end, ctx.stream);
                fwd[i] = ctx.driver.elapsedMillis(start, end);
            }
            for (int i = 0; i < reps; i++) {
                ctx.driver.record(start, ctx.stream);
                layer.forward(x.pointer, tokens);
                layer.backward(dOut.pointer);
                ctx.driver.record(end, ctx.stream);
                fb[i] = ctx.driver.elapsedMillis(start, end);
            }
            long peak = ctx.allocator.highWater();
            // phases: the median over several profiled forwards (one forward's small phases vary with the host's launch timing)
            layer.setProfiling(true);
            List<Map<String, Float>> profiles = new java.util.ArrayList<>(), hostProfiles = new java.util.ArrayList<>();
            for (int i = 0; i < 9; i++) {
                layer.forward(x.pointer, tokens);
                layer.backward(dOut.pointer);
                ctx.synchronize();
                profiles.add(layer.phaseMillis());
                hostProfiles.add(layer.phaseHostMillis());
            }
            layer.setProfiling(false);
            Map<String, Float> phases = medians(profiles), hostPhases = medians(hostProfiles);
            // routing, permutation and combine: their share of the forward's phases and of the forward's and backward's
            float forward = 0, all = 0, routingForward = 0, routingAll = 0;
            for (var p : phases.entrySet()) {
                boolean backward = p.getKey().startsWith("backward");
                boolean routing = ROUTING_PHASES.contains(p.getKey());
                all += p.getValue();
                routingAll += routing ? p.getValue() : 0;
                forward += backward ? 0 : p.getValue();
                routingForward += routing && !backward ? p.getValue() : 0;
            }
            int[] counts = layer.lastCounts();
            double mean = Arrays.stream(counts).average().orElse(0);
            int max = Arrays.stream(counts).max().orElse(0);
            double flops = 6.0 * tokens * sh.k() * sh.d() * sh.f();
            double fwdMs = median(fwd), fbMs = median(fb);
            out.printf("%-9s %-7s %8.3f %8.3f %10.1f %10.1f %10.1f%% %10.1f%% %12s %10.2f%n", sh.name(), skewed ? "skewed" : "uniform", fwdMs,
                    fbMs, flops / (fwdMs * 1e-3) / 1e12, 3 * flops / (fbMs * 1e-3) / 1e12, 100 * routingForward / forward, 100 * routingAll / all,
                    DeviceAllocator.human(peak), max / mean);
            out.printf("          phases (ms): %s%n", phases);
            out.printf("          host time queueing each phase (ms): %s%n", hostPhases);
            out.flush();
        }
    }

    /**
     * The profile's phases that are routing, permutation or combine (the rest: the experts' GEMMs and activation): their share
     * of the layer's time is the target (under 10%).
     */
    static final java.util.Set<String> ROUTING_PHASES = java.util.Set.of("router gemm", "top-k", "rank+offsets", "routing (graph)", "gather",
            "host offsets", "combine", "backward: combine", "backward: unpermute", "backward: router");

    /** Each phase's median over the profiled forwards. */
    private static Map<String, Float> medians(List<Map<String, Float>> profiles) {
        Map<String, Float> phases = new java.util.LinkedHashMap<>();
        for (String phase : profiles.getFirst().keySet()) {
            float[] v = new float[profiles.size()];
            for (int i = 0; i < v.length; i++) {
                v[i] = profiles.get(i).get(phase);
            }
            phases.put(phase, (float) median(v));
        }
        return phases;
    }

    /** Expert weights for timing: a block of Gaussians repeated (GEMM speed does not depend on the values; this is fast). */
    static float[] tiled(Random rnd, int n, float std) {
        float[] block = Compare.gaussian(rnd, Math.min(n, 1 << 20), std, false);
        float[] out = new float[n];
        for (int i = 0; i < n; i += block.length) {
            System.arraycopy(block, 0, out, i, Math.min(block.length, n - i));
        }
        return out;
    }

    static double median(float[] v) {
        float[] s = v.clone();
        Arrays.sort(s);
        return s.length % 2 == 1 ? s[s.length / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2.0;
    }
}
