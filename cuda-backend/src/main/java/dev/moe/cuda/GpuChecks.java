package dev.moe.cuda;

import dev.moe.cuda.kernels.MoeKernelSource.Drop;
import dev.moe.cuda.kernels.MoeKernelSource.ExpertActivation;
import dev.moe.cuda.kernels.MoeKernelSource.Options;
import dev.moe.cuda.kernels.MoeKernelSource.Precision;
import dev.moe.cuda.kernels.MoeKernelSource.Score;
import dev.moe.cuda.kernels.MoeKernelSource.Spec;
import java.util.ArrayList;
import java.util.List;
import java.util.Random;

/**
 * The GPU parity checks: the MoE layer's forward output and every gradient, computed on the GPU,
 * against {@link MoeLayerReference} (float64, one token at a time) on shapes that include experts
 * that receive no tokens, odd sizes and k = 1, the expert activations (SwiGLU, GEGLU, ReLU, GELU) and
 * capacity factors (by position, by probability; the expert counts and which slots were dropped must
 * equal the reference's exactly), MoE++ constant experts (their vector and mix gradients too) and MoLE's latent experts (experts
 * that read another input, of another width, than the router: the layer's fp32 entry points with both input gradients,
 * the router's counted in dx), and the balancing losses' statistics and aux gradients per sequence ({@link #checkBalance}). Relative error (norm of the difference over norm of
 * the reference) at most 1e-4 in fp32 mode and 2e-2 in bf16. Prints a table; exits 1 on any failure.
 * {@code bench/gpu/run-gpu-tests.sh} runs it on a machine with a GPU.
 */
public final class GpuChecks {

    /** One case: a layer declaration, a number of tokens, and whether the forward is a training one (capacity drops apply). */
    public record Case(Spec spec, int tokens, boolean training) {
        public Case(Spec spec, int tokens) {
            this(spec, tokens, true);
        }

        @Override
        public String toString() {
            Options o = spec.options();
            return String.format("D=%d%s F=%d E=%d%s k=%d %s%s%s%s%s%s T=%d %s", spec.dim(),
                    spec.expertIn() != spec.dim() ? " DIN=" + spec.expertIn() : "", spec.hidden(), spec.experts(),
                    spec.zeroExperts() + spec.copyExperts() + spec.constantExperts() > 0 ? "+" + spec.zeroExperts() + "z+" + spec.copyExperts() + "c"
                            + (spec.constantExperts() > 0 ? "+" + spec.constantExperts() + "v" : "") : "", spec.topK(),
                    spec.score() == Score.SOFTMAX ? "softmax" : "sigmoid", spec.normalize() ? " norm" : "",
                    spec.scale() != 1f ? " scale=" + spec.scale() : "", spec.bias() ? " bias" : "",
                    o.activation() == ExpertActivation.SWIGLU ? "" : " " + o.activation().name().toLowerCase(java.util.Locale.ROOT),
                    o.capacityFactor() > 0 ? " cap=" + o.capacityFactor() + "/" + o.drop().name().toLowerCase(java.util.Locale.ROOT).substring(0, 4)
                            + (training ? "" : " infer") : "",
                    tokens, spec.precision().name().toLowerCase(java.util.Locale.ROOT));
        }
    }

    /** The cases: every precision crossed with shapes and router variants. */
    public static List<Case> cases() {
        List<Case> out = new ArrayList<>();
        for (Precision p : Precision.values()) {
            out.add(new Case(new Spec(64, 128, 8, 2, Score.SOFTMAX, true, 1f, false, p), 64));
            out.add(new Case(new Spec(64, 96, 16, 1, Score.SOFTMAX, false, 1f, false, p), 50));
            out.add(new Case(new Spec(128, 64, 64, 6, Score.SOFTMAX, true, 1f, false, p), 100));
            out.add(new Case(new Spec(32, 48, 16, 4, Score.SIGMOID, true, 2.5f, true, p), 40));
            out.add(new Case(new Spec(40, 24, 8, 2, Score.SIGMOID, false, 1f, false, p), 33));
            out.add(new Case(new Spec(64, 64, 32, 2, Score.SOFTMAX, true, 1f, false, p), 3)); // most experts get no tokens
            out.add(new Case(new Spec(48, 80, 40, 3, Score.SOFTMAX, false, 1f, true, p), 17)); // E not a multiple of 32
            out.add(new Case(new Spec(256, 128, 128, 8, Score.SOFTMAX, true, 1f, false, p), 64));
            out.add(new Case(new Spec(16, 16, 2, 2, Score.SOFTMAX, true, 1f, false, p), 7)); // k = E
            out.add(new Case(new Spec(128, 352, 8, 2, Score.SOFTMAX, true, 1f, false, p), 256));
            out.add(new Case(new Spec(64, 32, 256, 8, Score.SIGMOID, true, 2.5f, true, p), 96));
            // MoE++ zero-computation experts folded into the combine
            out.add(new Case(new Spec(64, 96, 8, 2, 2, 2, Score.SOFTMAX, true, 1f, false, p), 80));
            out.add(new Case(new Spec(32, 48, 16, 4, 0, 6, Score.SIGMOID, false, 1f, true, p), 40));
            out.add(new Case(new Spec(48, 64, 4, 8, 0, 3, Score.SOFTMAX, false, 1f, false, p), 30)); // mostly zero experts
            // other expert activations: GEGLU gated, ReLU and GELU ungated (w13 of up rows only)
            for (ExpertActivation a : new ExpertActivation[] {ExpertActivation.GEGLU, ExpertActivation.RELU, ExpertActivation.GELU}) {
                out.add(new Case(new Spec(64, 96, 8, 2, Score.SOFTMAX, true, 1f, false, p).with(Options.NONE.withActivation(a)), 64));
                out.add(new Case(new Spec(40, 24, 16, 4, Score.SIGMOID, true, 2.5f, true, p).with(Options.NONE.withActivation(a)), 33));
            }
            out.add(new Case(new Spec(64, 48, 8, 2, 2, 2, Score.SOFTMAX, true, 1f, false, p).with(Options.NONE.withActivation(ExpertActivation.RELU)), 50));
            // capacity factors (training forwards): Switch-like top-1 relu by position, top-2 by position and by probability,
            // a factor that drops most slots, one that drops none, and an inference forward (dropless)
            Spec switchLike = new Spec(64, 128, 8, 1, Score.SOFTMAX, false, 1f, false, p);
            out.add(new Case(switchLike.with(Options.NONE.withActivation(ExpertActivation.RELU).withCapacity(1.25f, Drop.POSITION)), 96));
            out.add(new Case(switchLike.with(Options.NONE.withActivation(ExpertActivation.RELU).withCapacity(1.25f, Drop.PROBABILITY)), 96));
            Spec top2 = new Spec(48, 64, 8, 2, Score.SOFTMAX, true, 1f, false, p);
            for (Drop drop : List.of(Drop.POSITION, Drop.PROBABILITY)) {
                out.add(new Case(top2.with(Options.NONE.withCapacity(1f, drop)), 80));
                out.add(new Case(top2.with(Options.NONE.withActivation(ExpertActivation.GELU).withCapacity(0.5f, drop)), 70));
                out.add(new Case(new Spec(32, 48, 16, 4, Score.SIGMOID, true, 2.5f, true, p)
                        .with(Options.NONE.withActivation(ExpertActivation.GEGLU).withCapacity(1f, drop)), 40));
            }
            out.add(new Case(top2.with(Options.NONE.withCapacity(8f, Drop.PROBABILITY)), 64)); // capacity above every load
            out.add(new Case(top2.with(Options.NONE.withCapacity(0.5f, Drop.POSITION)), 64, false)); // inference: dropless
        }
        // MoE++ constant experts (after zero and copy experts; last in the list, so the cases above keep their seeds)
        for (Precision p : Precision.values()) {
            out.add(new Case(new Spec(64, 96, 8, 1, 1, 2, 2, Score.SOFTMAX, false, 1f, false, p, Options.NONE), 80));
            out.add(new Case(new Spec(48, 64, 4, 0, 0, 4, 3, Score.SOFTMAX, true, 1f, false, p, Options.NONE), 40)); // mostly constant experts
            out.add(new Case(new Spec(40, 24, 16, 2, 1, 3, 4, Score.SIGMOID, true, 2.5f, true, p, Options.NONE.withActivation(ExpertActivation.RELU)), 33));
            out.add(new Case(new Spec(130, 64, 8, 1, 1, 2, 2, Score.SOFTMAX, false, 1f, false, p, Options.NONE), 7)); // D > 128, few tokens
        }
        // MoLE's latent experts: the experts read DIN values (the rank), the router D; after the others, so they keep their seeds
        for (Precision p : Precision.values()) {
            out.add(new Case(new Spec(128, 128, 8, 2, Score.SOFTMAX, true, 1f, false, p).withExpertIn(32), 64)); // mole.moe's shape
            // ungated, sigmoid with a bias; rows of 20 (not 16-byte multiples in bf16)
            out.add(new Case(new Spec(40, 24, 16, 4, Score.SIGMOID, true, 2.5f, true, p).with(Options.NONE.withActivation(ExpertActivation.RELU))
                    .withExpertIn(20), 33));
            // wider than D, with zero experts; a capacity factor dropping by position
            out.add(new Case(new Spec(32, 48, 8, 2, 0, 2, Score.SOFTMAX, false, 1f, false, p).with(Options.NONE.withActivation(ExpertActivation.GEGLU))
                    .withExpertIn(48), 40));
            out.add(new Case(new Spec(48, 64, 8, 2, Score.SOFTMAX, true, 1f, false, p).with(Options.NONE.withCapacity(1f, Drop.POSITION))
                    .withExpertIn(24), 80));
        }
        // random drops (last, so the cases before keep their seeds): the layer's default seed, 0, for the priorities
        for (Precision p : Precision.values()) {
            out.add(new Case(new Spec(48, 64, 8, 2, Score.SOFTMAX, true, 1f, false, p).with(Options.NONE.withCapacity(1f, Drop.RANDOM)), 80));
            out.add(new Case(new Spec(64, 128, 8, 1, Score.SOFTMAX, false, 1f, false, p)
                    .with(Options.NONE.withActivation(ExpertActivation.RELU).withCapacity(1.25f, Drop.RANDOM)), 96));
        }
        return out;
    }

    /** {@code constErr}: the larger error of the constant experts' vector and mix gradients (0 without constant experts). */
    public record Outcome(Case c, double outErr, double dxErr, double dRouterErr, double dGateUpErr, double dDownErr, double constErr, boolean pass) {}

    /**
     * A case's random inputs (the same for a seed), and the float64 reference's results on them; {@code routerX} is the router's
     * own input {@code [tokens, D]} of a layer whose experts read another (latent experts), else null.
     */
    record Inputs(float[] x, float[] router, float[] bias, float[] gateUp, float[] down, float[] dOut, float[] vectors, float[] mix,
            float[] routerX, MoeLayerReference.Result ref) {}

    static Inputs inputs(Case c, long seed) {
        Spec s = c.spec();
        int t = c.tokens(), d = s.dim(), in = s.expertIn(), f = s.hidden(), e = s.experts(), er = s.routed();
        boolean bf16 = s.precision() == Precision.BF16;
        Random rnd = new Random(seed);
        float[] x = Compare.gaussian(rnd, t * in, 1f, bf16);
        float[] router = Compare.gaussian(rnd, er * d, (float) (1 / Math.sqrt(d)), bf16);
        float[] bias = s.bias() ? Compare.gaussian(rnd, er, 0.05f, false) : null;
        int gw = s.options().activation().gated ? 2 * f : f;
        float[] gateUp = Compare.gaussian(rnd, e * gw * in, (float) (1 / Math.sqrt(in)), bf16);
        float[] down = Compare.gaussian(rnd, e * d * f, (float) (1 / Math.sqrt(f)), bf16);
        float[] dOut = Compare.gaussian(rnd, t * d, 1f, bf16);
        // constant experts' weights stay fp32 on the GPU in both precisions (drawn last: the other cases keep their inputs)
        int ce = s.constantExperts();
        float[] vectors = ce > 0 ? Compare.gaussian(rnd, ce * d, 1f, false) : new float[0];
        float[] mix = ce > 0 ? Compare.gaussian(rnd, ce * 2 * d, (float) (1 / Math.sqrt(d)), false) : new float[0];
        if (in != d) {
            float[] routerX = Compare.gaussian(rnd, t * d, 1f, bf16);
            MoeLayerReference.Result ref = MoeLayerReference.runWithRouterInput(s, t, c.training(), Compare.doubles(x), Compare.doubles(routerX),
                    Compare.doubles(router), bias == null ? null : Compare.doubles(bias), Compare.doubles(gateUp), Compare.doubles(down),
                    Compare.doubles(dOut));
            return new Inputs(x, router, bias, gateUp, down, dOut, vectors, mix, routerX, ref);
        }
        MoeLayerReference.Result ref = MoeLayerReference.run(s, t, c.training(), Compare.doubles(x), Compare.doubles(router),
                bias == null ? null : Compare.doubles(bias), Compare.doubles(gateUp), Compare.doubles(down), Compare.doubles(vectors),
                Compare.doubles(mix), Compare.doubles(dOut));
        return new Inputs(x, router, bias, gateUp, down, dOut, vectors, mix, null, ref);
    }

    public static Outcome check(CudaContext ctx, Case c, long seed) {
        Spec s = c.spec();
        int t = c.tokens(), d = s.dim(), e = s.experts();
        boolean bf16 = s.precision() == Precision.BF16;
        Inputs in = inputs(c, seed);
        if (in.routerX() != null) {
            return checkLatent(ctx, c, in);
        }
        float[] x = in.x(), router = in.router(), bias = in.bias(), gateUp = in.gateUp(), down = in.down(), dOut = in.dOut();
        MoeLayerReference.Result ref = in.ref();
        try (CudaMoeLayer layer = new CudaMoeLayer(ctx, s, false);
                DeviceAllocator.Block xd = layer.allocateActivations((long) t * d);
                DeviceAllocator.Block gd = layer.allocateActivations((long) t * d)) {
            layer.setWeights(router, bias, gateUp, down);
            if (s.constantExperts() > 0) {
                layer.setConstantWeights(in.vectors(), in.mix());
            }
            layer.setTraining(c.training());
            layer.upload(x, xd.pointer);
            layer.upload(dOut, gd.pointer);
            long out = layer.forward(xd.pointer, t);
            float[] got = layer.download(out, t * d);
            long dx = layer.backward(gd.pointer);
            float[] gotDx = layer.download(dx, t * d);
            double constErr = s.constantExperts() == 0 ? 0
                    : Math.max(Compare.rel(layer.constantVectorGrad(), ref.dVectors()), Compare.rel(layer.constantMixGrad(), ref.dMix()));
            Outcome o = new Outcome(c, Compare.rel(got, ref.out()), Compare.rel(gotDx, ref.dx()), Compare.rel(layer.routerGrad(), ref.dRouter()),
                    Compare.rel(layer.gateUpGrad(), ref.dGateUp()), Compare.rel(layer.downGrad(), ref.dDown()), constErr, false);
            double tol = bf16 ? 2e-2 : 1e-4;
            boolean pass = o.outErr() <= tol && o.dxErr() <= tol && o.dRouterErr() <= tol && o.dGateUpErr() <= tol && o.dDownErr() <= tol
                    && o.constErr() <= tol
                    && java.util.Arrays.equals(layer.lastCounts(), ref.counts())
                    && sameDrops(layer.lastPositions(), layer.lastSelection(), ref, e);
            return new Outcome(c, o.outErr(), o.dxErr(), o.dRouterErr(), o.dGateUpErr(), o.dDownErr(), o.constErr(), pass);
        }
    }
    /**
     * A layer whose experts read another input than its router (latent experts), through the fp32 entry points a model uses
     * ({@link CudaMoeLayer#forwardInto(long, long, int, long)}, {@link CudaMoeLayer#backwardInto(long, float[], float, float, long, long)}):
     * the output and both input gradients (dxErr is the larger of the experts' input's and the router input's), the weight gradients.
     */
    private static Outcome checkLatent(CudaContext ctx, Case c, Inputs in) {
        Spec s = c.spec();
        int t = c.tokens(), d = s.dim(), din = s.expertIn();
        MoeLayerReference.Result ref = in.ref();
        try (CudaMoeLayer layer = new CudaMoeLayer(ctx, s, false);
                DeviceAllocator.Block xd = ctx.allocator.allocate((long) t * din * 4);
                DeviceAllocator.Block rxd = ctx.allocator.allocate((long) t * d * 4);
                DeviceAllocator.Block gd = ctx.allocator.allocate((long) t * d * 4);
                DeviceAllocator.Block outd = ctx.allocator.allocate((long) t * d * 4);
                DeviceAllocator.Block dxd = ctx.allocator.allocate((long) t * din * 4);
                DeviceAllocator.Block drxd = ctx.allocator.allocate((long) t * d * 4)) {
            layer.setWeights(in.router(), in.bias(), in.gateUp(), in.down());
            layer.setTraining(c.training());
            ctx.upload(in.x(), xd.pointer);
            ctx.upload(in.routerX(), rxd.pointer);
            ctx.upload(in.dOut(), gd.pointer);
            // the entry points ADD to their outputs
            for (DeviceAllocator.Block b : new DeviceAllocator.Block[] {outd, dxd, drxd}) {
                ctx.driver.memsetZero(b.pointer, b.bytes, ctx.stream);
            }
            layer.forwardInto(xd.pointer, rxd.pointer, t, outd.pointer);
            float[] got = ctx.downloadFloats(outd.pointer, t * d);
            layer.backwardInto(gd.pointer, null, 0f, 0f, dxd.pointer, drxd.pointer);
            double dxErr = Math.max(Compare.rel(ctx.downloadFloats(dxd.pointer, t * din), ref.dx()),
                    Compare.rel(ctx.downloadFloats(drxd.pointer, t * d), ref.dRouterX()));
            Outcome o = new Outcome(c, Compare.rel(got, ref.out()), dxErr, Compare.rel(layer.routerGrad(), ref.dRouter()),
                    Compare.rel(layer.gateUpGrad(), ref.dGateUp()), Compare.rel(layer.downGrad(), ref.dDown()), 0, false);
            double tol = s.precision() == Precision.BF16 ? 2e-2 : 1e-4;
            boolean pass = o.outErr() <= tol && o.dxErr() <= tol && o.dRouterErr() <= tol && o.dGateUpErr() <= tol && o.dDownErr() <= tol
                    && java.util.Arrays.equals(layer.lastCounts(), ref.counts())
                    && sameDrops(layer.lastPositions(), layer.lastSelection(), ref, s.experts());
            return new Outcome(c, o.outErr(), o.dxErr(), o.dRouterErr(), o.dGateUpErr(), o.dDownErr(), 0, pass);
        }
    }

    /** Whether the GPU dropped exactly the FFN slots the reference dropped (a slot of an FFN expert without a row). */
    private static boolean sameDrops(int[] positions, int[] selection, MoeLayerReference.Result ref, int experts) {
        for (int i = 0; i < positions.length; i++) {
            if (selection[i] != ref.selected()[i]) {
                return false;
            }
            if (selection[i] < experts && (positions[i] < 0) != ref.dropped()[i]) {
                return false;
            }
        }
        return true;
    }

    /**
     * MoE++'s gating residual over two layers: A's logits feed B's router through {@code g [B.routed, A.routed]}. The pairs of
     * layer specs (both with {@link Options#gatingResidual}) checked in each precision.
     */
    public static List<Spec[]> residualPairs() {
        List<Spec[]> out = new ArrayList<>();
        for (Precision p : Precision.values()) {
            Options o = Options.NONE.withGatingResidual();
            // constant experts on both sides, a non-square map (10 → 8 experts), top-2 then a normalised top-3
            out.add(new Spec[] {new Spec(64, 96, 6, 1, 1, 2, 2, Score.SOFTMAX, false, 1f, false, p, o),
                new Spec(64, 64, 4, 0, 1, 3, 3, Score.SOFTMAX, true, 1f, false, p, o)});
            // plain FFN experts, sigmoid scores with a bias on the second layer
            out.add(new Spec[] {new Spec(48, 64, 8, 0, 0, 0, 2, Score.SOFTMAX, true, 1f, false, p, o),
                new Spec(48, 32, 16, 0, 0, 0, 4, Score.SIGMOID, true, 2.5f, true, p, o)});
        }
        return out;
    }

    /** The float64 results of a gating-residual pair: A's (with the logit gradient B sent back), B's, and the map's gradient. */
    public record ResidualReference(MoeLayerReference.Result a, MoeLayerReference.Result b, double[] dG) {}

    /**
     * The reference of two layers joined by a gating residual: B's logits add A's logits · gᵀ ({@code g [eb, ea]}); the loss is
     * Σ outA · dOutA + Σ outB · dOutB, so A's logit gradient also gets B's logit gradient · g.
     */
    public static ResidualReference residualReference(Spec a, Spec b, int tokens, double[] xa, double[] routerA, double[] biasA, double[] gateUpA,
            double[] downA, double[] vectorsA, double[] mixA, double[] dOutA, double[] xb, double[] routerB, double[] biasB, double[] gateUpB,
            double[] downB, double[] vectorsB, double[] mixB, double[] dOutB, double[] g) {
        int ea = a.routed(), eb = b.routed();
        double[] logitsA = MoeLayerReference.run(a, tokens, true, xa, routerA, biasA, gateUpA, downA, vectorsA, mixA, null, null, dOutA).logits();
        double[] offset = new double[tokens * eb];
        for (int t = 0; t < tokens; t++) {
            for (int i = 0; i < eb; i++) {
                double v = 0;
                for (int j = 0; j < ea; j++) {
                    v += g[i * ea + j] * logitsA[t * ea + j];
                }
                offset[t * eb + i] = v;
            }
        }
        MoeLayerReference.Result rb = MoeLayerReference.run(b, tokens, true, xb, routerB, biasB, gateUpB, downB, vectorsB, mixB, offset, null, dOutB);
        double[] back = new double[tokens * ea];
        double[] dG = new double[eb * ea];
        for (int t = 0; t < tokens; t++) {
            for (int i = 0; i < eb; i++) {
                double dl = rb.dLogits()[t * eb + i];
                for (int j = 0; j < ea; j++) {
                    back[t * ea + j] += dl * g[i * ea + j];
                    dG[i * ea + j] += dl * logitsA[t * ea + j];
                }
            }
        }
        MoeLayerReference.Result ra = MoeLayerReference.run(a, tokens, true, xa, routerA, biasA, gateUpA, downA, vectorsA, mixA, null, back, dOutA);
        return new ResidualReference(ra, rb, dG);
    }

    /** The worst relative error of a gating-residual pair on the GPU (outputs, input, router, expert, constant and map gradients). */
    public static double checkResidual(CudaContext ctx, Spec a, Spec b, int tokens, long seed) {
        Inputs ia = inputs(new Case(a, tokens), seed), ib = inputs(new Case(b, tokens), seed + 1000);
        int ea = a.routed(), eb = b.routed(), d = a.dim();
        float[] g = Compare.gaussian(new Random(seed + 2000), eb * ea, (float) (0.5 / Math.sqrt(ea)), false);
        ResidualReference ref = residualReference(a, b, tokens, Compare.doubles(ia.x()), Compare.doubles(ia.router()),
                ia.bias() == null ? null : Compare.doubles(ia.bias()), Compare.doubles(ia.gateUp()), Compare.doubles(ia.down()),
                Compare.doubles(ia.vectors()), Compare.doubles(ia.mix()), Compare.doubles(ia.dOut()), Compare.doubles(ib.x()),
                Compare.doubles(ib.router()), ib.bias() == null ? null : Compare.doubles(ib.bias()), Compare.doubles(ib.gateUp()),
                Compare.doubles(ib.down()), Compare.doubles(ib.vectors()), Compare.doubles(ib.mix()), Compare.doubles(ib.dOut()), Compare.doubles(g));
        try (CudaMoeLayer la = new CudaMoeLayer(ctx, a, false);
                CudaMoeLayer lb = new CudaMoeLayer(ctx, b, false);
                DeviceAllocator.Block xa = la.allocateActivations((long) tokens * d);
                DeviceAllocator.Block ga = la.allocateActivations((long) tokens * d);
                DeviceAllocator.Block xb = lb.allocateActivations((long) tokens * d);
                DeviceAllocator.Block gb = lb.allocateActivations((long) tokens * d);
                DeviceAllocator.Block gd = ctx.allocator.allocate((long) eb * ea * 4);
                DeviceAllocator.Block dgd = ctx.allocator.allocate((long) eb * ea * 4)) {
            for (var pair : List.of(java.util.Map.entry(la, ia), java.util.Map.entry(lb, ib))) {
                Inputs in = pair.getValue();
                pair.getKey().setWeights(in.router(), in.bias(), in.gateUp(), in.down());
                if (pair.getKey().spec.constantExperts() > 0) {
                    pair.getKey().setConstantWeights(in.vectors(), in.mix());
                }
            }
            la.upload(ia.x(), xa.pointer);
            la.upload(ia.dOut(), ga.pointer);
            lb.upload(ib.x(), xb.pointer);
            lb.upload(ib.dOut(), gb.pointer);
            ctx.upload(g, gd.pointer);
            ctx.driver.memsetZero(dgd.pointer, (long) eb * ea * 4, ctx.stream);
            lb.setResidualFrom(la, gd.pointer, dgd.pointer);
            float[] outA = la.download(la.forward(xa.pointer, tokens), tokens * d);
            float[] outB = lb.download(lb.forward(xb.pointer, tokens), tokens * d);
            float[] dxB = lb.download(lb.backward(gb.pointer), tokens * d);
            float[] dxA = la.download(la.backward(ga.pointer), tokens * d);
            double worst = 0;
            for (double err : new double[] {Compare.rel(outA, ref.a().out()), Compare.rel(outB, ref.b().out()), Compare.rel(dxA, ref.a().dx()),
                Compare.rel(dxB, ref.b().dx()), Compare.rel(la.routerGrad(), ref.a().dRouter()), Compare.rel(lb.routerGrad(), ref.b().dRouter()),
                Compare.rel(la.gateUpGrad(), ref.a().dGateUp()), Compare.rel(la.downGrad(), ref.a().dDown()),
                Compare.rel(lb.gateUpGrad(), ref.b().dGateUp()), Compare.rel(lb.downGrad(), ref.b().dDown()),
                Compare.rel(ctx.downloadFloats(dgd.pointer, eb * ea), ref.dG())}) {
                worst = Math.max(worst, err);
            }
            if (a.constantExperts() > 0) {
                worst = Math.max(worst, Math.max(Compare.rel(la.constantVectorGrad(), ref.a().dVectors()), Compare.rel(la.constantMixGrad(), ref.a().dMix())));
            }
            if (b.constantExperts() > 0) {
                worst = Math.max(worst, Math.max(Compare.rel(lb.constantVectorGrad(), ref.b().dVectors()), Compare.rel(lb.constantMixGrad(), ref.b().dMix())));
            }
            if (!java.util.Arrays.equals(la.lastSelection(), ref.a().selected()) || !java.util.Arrays.equals(lb.lastSelection(), ref.b().selected())) {
                worst = Double.POSITIVE_INFINITY; // B's routing must see A's logits through the map
            }
            return worst;
        }
    }

    /** Layer specs with extra logits (RMoE's recurrent router adds its GRU state's map), checked in each precision. */
    public static List<Spec> extraLogitSpecs() {
        List<Spec> out = new ArrayList<>();
        for (Precision p : Precision.values()) {
            // normalised top-2 over FFN experts; top-3 over FFN, a zero and a constant expert; sigmoid scores with a bias
            out.add(new Spec(64, 96, 8, 0, 0, 0, 2, Score.SOFTMAX, true, 1f, false, p, Options.NONE.withExtraLogits()));
            out.add(new Spec(48, 64, 6, 1, 0, 1, 3, Score.SOFTMAX, false, 1f, false, p, Options.NONE.withExtraLogits()));
            out.add(new Spec(48, 32, 16, 0, 0, 0, 4, Score.SIGMOID, true, 2.5f, true, p, Options.NONE.withExtraLogits()));
        }
        return out;
    }

    /**
     * The worst relative error of a layer whose logits add an fp32 term ({@link CudaMoeLayer#setExtraLogits}) against the float64
     * reference with that logit offset: outputs, input, router and expert gradients, and the fp32 logit gradient the layer hands
     * back ({@link CudaMoeLayer#lastLogitGradient}); infinite when the routing differs.
     */
    public static double checkExtraLogits(CudaContext ctx, Spec s, int tokens, long seed) {
        Inputs in = inputs(new Case(s, tokens), seed);
        int e = s.routed(), d = s.dim();
        // large enough to move the routing away from the router's own choice
        float[] extra = Compare.gaussian(new Random(seed + 3000), tokens * e, 1f, false);
        MoeLayerReference.Result ref = MoeLayerReference.run(s, tokens, true, Compare.doubles(in.x()), Compare.doubles(in.router()),
                in.bias() == null ? null : Compare.doubles(in.bias()), Compare.doubles(in.gateUp()), Compare.doubles(in.down()),
                Compare.doubles(in.vectors()), Compare.doubles(in.mix()), Compare.doubles(extra), null, Compare.doubles(in.dOut()));
        try (CudaMoeLayer layer = new CudaMoeLayer(ctx, s, false);
                DeviceAllocator.Block xd = layer.allocateActivations((long) tokens * d);
                DeviceAllocator.Block gd = layer.allocateActivations((long) tokens * d);
                DeviceAllocator.Block ed = ctx.allocator.allocate((long) tokens * e * 4)) {
            layer.setWeights(in.router(), in.bias(), in.gateUp(), in.down());
            if (s.constantExperts() > 0) {
                layer.setConstantWeights(in.vectors(), in.mix());
            }
            layer.upload(in.x(), xd.pointer);
            layer.upload(in.dOut(), gd.pointer);
            ctx.upload(extra, ed.pointer);
            layer.setExtraLogits(ed.pointer);
            float[] out = layer.download(layer.forward(xd.pointer, tokens), tokens * d);
            float[] dx = layer.download(layer.backward(gd.pointer), tokens * d);
            float[] dLogits = ctx.downloadFloats(layer.lastLogitGradient(), tokens * e);
            double worst = 0;
            for (double err : new double[] {Compare.rel(out, ref.out()), Compare.rel(dx, ref.dx()), Compare.rel(layer.routerGrad(), ref.dRouter()),
                Compare.rel(layer.gateUpGrad(), ref.dGateUp()), Compare.rel(layer.downGrad(), ref.dDown()), Compare.rel(dLogits, ref.dLogits())}) {
                worst = Math.max(worst, err);
            }
            if (s.constantExperts() > 0) {
                worst = Math.max(worst, Math.max(Compare.rel(layer.constantVectorGrad(), ref.dVectors()), Compare.rel(layer.constantMixGrad(), ref.dMix())));
            }
            if (!java.util.Arrays.equals(layer.lastSelection(), ref.selected())) {
                worst = Double.POSITIVE_INFINITY; // the routing must see the extra logits
            }
            return worst;
        }
    }

    /**
     * Two layers with the same weights, one replaying its routing as a graph and one launching it kernel by kernel, run six
     * forwards over two alternating inputs (so the graph is captured for each and then replayed): their outputs must be
     * bitwise equal every time, and the graph must have been replayed.
     */
    static String checkGraphReplay(CudaContext ctx, Spec s, int tokens, long seed) {
        java.util.Random rnd = new java.util.Random(seed);
        float[] router = Compare.gaussian(rnd, s.experts() * s.dim(), 0.3f, false);
        float[] bias = s.bias() ? Compare.gaussian(rnd, s.experts(), 0.1f, false) : null;
        float[] w13 = Compare.gaussian(rnd, s.experts() * 2 * s.hidden() * s.dim(), 0.2f, false);
        float[] w2 = Compare.gaussian(rnd, s.experts() * s.dim() * s.hidden(), 0.2f, false);
        String before = System.getProperty("moe.cuda.graphs");
        CudaMoeLayer graphed, plain;
        try {
            System.setProperty("moe.cuda.graphs", "true");
            graphed = new CudaMoeLayer(ctx, s, true);
            System.setProperty("moe.cuda.graphs", "false");
            plain = new CudaMoeLayer(ctx, s, true);
        } finally {
            if (before == null) {
                System.clearProperty("moe.cuda.graphs");
            } else {
                System.setProperty("moe.cuda.graphs", before);
            }
        }
        try (graphed; plain;
                DeviceAllocator.Block x1 = graphed.allocateActivations((long) tokens * s.dim());
                DeviceAllocator.Block x2 = graphed.allocateActivations((long) tokens * s.dim())) {
            if (graphed.routingGraph() == null) {
                return "FAIL (the layer made no graph)";
            }
            for (CudaMoeLayer l : new CudaMoeLayer[] {graphed, plain}) {
                l.setWeights(router, bias, w13, w2);
            }
            graphed.upload(Compare.gaussian(rnd, tokens * s.dim(), 1f, false), x1.pointer);
            graphed.upload(Compare.gaussian(rnd, tokens * s.dim(), 1f, false), x2.pointer);
            for (int i = 0; i < 6; i++) {
                long x = i % 2 == 0 ? x1.pointer : x2.pointer;
                float[] a = graphed.download(graphed.forward(x, tokens), tokens * s.dim());
                float[] b = plain.download(plain.forward(x, tokens), tokens * s.dim());
                if (!java.util.Arrays.equals(a, b)) {
                    return "FAIL (forward " + (i + 1) + " differs)";
                }
            }
            LaunchGraph g = graphed.routingGraph();
            if (g.hits() == 0 || g.broken()) {
                return "FAIL (" + g.captures() + " captures, " + g.hits() + " replays" + (g.broken() ? ", broken" : "") + ")";
            }
            return "ok (" + g.captures() + " captures, " + g.hits() + " replays)";
        }
    }

    /**
     * Layer specs the balancing losses' path is checked on: DeepSeek-V3's sigmoid router (normalised, scaled, with a bias; without
     * its group limit, which the reference does not route by), a plain sigmoid one, softmax.
     */
    public static List<Spec> balanceSpecs() {
        List<Spec> out = new ArrayList<>();
        for (Precision p : Precision.values()) {
            out.add(new Spec(48, 32, 16, 4, Score.SIGMOID, true, 2.5f, true, p));
            out.add(new Spec(40, 24, 8, 2, Score.SIGMOID, false, 1f, false, p));
            out.add(new Spec(48, 64, 8, 2, Score.SOFTMAX, true, 1f, false, p));
        }
        return out;
    }

    /**
     * The balancing losses' float64 reference: per sequence the slots per expert ({@code counts}) and the sums of the scores as
     * the aux loss sees them ({@code scores}: softmax, or sigmoid over each token's sum), and the gradient with respect to the
     * logits of {@code Σ_t Σ_e aux[t / seq, e] · score[t, e]} ({@code dLogits}), the part an aux gradient per sequence adds to the
     * layer's logit gradient.
     */
    public record BalanceReference(int[] counts, double[] scores, double[] dLogits) {}

    /** {@link BalanceReference} for the layer's raw logits {@code [tokens, routed]} and chosen experts {@code [tokens, k]}. */
    public static BalanceReference balanceReference(Spec s, int tokens, int seq, double[] logits, int[] selected, float[] aux) {
        int er = s.routed(), k = s.topK(), sequences = tokens / seq;
        double[] scores = new double[sequences * er], dAux = new double[tokens * er];
        int[] counts = new int[sequences * er];
        for (int t = 0; t < tokens; t++) {
            int b = t / seq;
            double[] q = new double[er];
            double max = Double.NEGATIVE_INFINITY, sum = 0;
            for (int e = 0; e < er; e++) {
                max = Math.max(max, logits[t * er + e]);
            }
            for (int e = 0; e < er; e++) {
                double l = logits[t * er + e];
                q[e] = s.score() == Score.SOFTMAX ? Math.exp(l - max) : 1 / (1 + Math.exp(-l));
                sum += q[e];
            }
            if (s.score() == Score.SOFTMAX) {
                double pa = 0;
                for (int e = 0; e < er; e++) {
                    q[e] /= sum;
                    pa += q[e] * aux[b * er + e];
                }
                for (int e = 0; e < er; e++) {
                    scores[b * er + e] += q[e];
                    dAux[t * er + e] = q[e] * (aux[b * er + e] - pa);
                }
            } else {
                // the aux loss saw q / Σ q
                double cz = 0;
                for (int e = 0; e < er; e++) {
                    cz += aux[b * er + e] * q[e] / sum;
                }
                for (int e = 0; e < er; e++) {
                    scores[b * er + e] += q[e] / sum;
                    dAux[t * er + e] = (aux[b * er + e] - cz) / sum * q[e] * (1 - q[e]);
                }
            }
            for (int r = 0; r < k; r++) {
                counts[b * er + selected[t * k + r]]++;
            }
        }
        return new BalanceReference(counts, scores, dAux);
    }

    /**
     * The worst relative error of the balancing losses' path against float64, for sequences of {@code seq} tokens: the layer's
     * {@link CudaMoeLayer#sequenceBalanceStats} (each sequence's slots per expert, which must be exact, and its scores as the aux
     * loss sees them: softmax, or sigmoid over each token's sum), then a backward with a random aux gradient per sequence, whose
     * part of the logit gradient (back through that normalisation and the score function) the reference takes as an incoming
     * logit gradient: input, router and expert gradients. Infinite when the routing or the counts differ.
     */
    public static double checkBalance(CudaContext ctx, Spec s, int tokens, int seq, long seed) {
        Inputs in = inputs(new Case(s, tokens), seed);
        int er = s.routed(), d = s.dim(), sequences = tokens / seq;
        float[] aux = Compare.gaussian(new Random(seed + 4000), sequences * er, 0.05f, false);
        double[] x = Compare.doubles(in.x()), router = Compare.doubles(in.router()), bias = in.bias() == null ? null : Compare.doubles(in.bias());
        double[] gateUp = Compare.doubles(in.gateUp()), down = Compare.doubles(in.down()), dOut = Compare.doubles(in.dOut());
        double[] vectors = Compare.doubles(in.vectors()), mix = Compare.doubles(in.mix());
        MoeLayerReference.Result plain = MoeLayerReference.run(s, tokens, true, x, router, bias, gateUp, down, vectors, mix, dOut);
        BalanceReference bal = balanceReference(s, tokens, seq, plain.logits(), plain.selected(), aux);
        MoeLayerReference.Result ref = MoeLayerReference.run(s, tokens, true, x, router, bias, gateUp, down, vectors, mix, null, bal.dLogits(), dOut);
        try (CudaMoeLayer layer = new CudaMoeLayer(ctx, s, false);
                DeviceAllocator.Block xd = layer.allocateActivations((long) tokens * d);
                DeviceAllocator.Block gd = layer.allocateActivations((long) tokens * d)) {
            layer.setWeights(in.router(), in.bias(), in.gateUp(), in.down());
            layer.upload(in.x(), xd.pointer);
            layer.upload(in.dOut(), gd.pointer);
            layer.forward(xd.pointer, tokens);
            CudaMoeLayer.SequenceStats stats = layer.sequenceBalanceStats(seq);
            float[] dx = layer.download(layer.backward(gd.pointer, aux, 0f), tokens * d);
            double worst = 0;
            for (double err : new double[] {Compare.rel(stats.scores(), bal.scores()), Compare.rel(dx, ref.dx()), Compare.rel(layer.routerGrad(), ref.dRouter()),
                Compare.rel(layer.gateUpGrad(), ref.dGateUp()), Compare.rel(layer.downGrad(), ref.dDown())}) {
                worst = Math.max(worst, err);
            }
            if (!java.util.Arrays.equals(layer.lastSelection(), ref.selected()) || !java.util.Arrays.equals(stats.counts(), bal.counts())) {
                worst = Double.POSITIVE_INFINITY;
            }
            return worst;
        }
    }

    public static void main(String[] args) {
        try (CudaContext ctx = new CudaContext(0)) {
            System.out.printf("GPU parity checks on %s (%s), against a float64 reference%n", ctx.deviceName, ctx.arch);
            System.out.printf("%-80s %9s %9s %9s %9s %9s %9s  %s%n", "case", "out", "dx", "dRouter", "dGateUp", "dDown", "dConst", "");
            int failures = 0;
            long seed = 1;
            for (Case c : cases()) {
                Outcome o = check(ctx, c, seed++);
                failures += o.pass() ? 0 : 1;
                System.out.printf("%-80s %9.2e %9.2e %9.2e %9.2e %9.2e %9.2e  %s%n", c, o.outErr(), o.dxErr(), o.dRouterErr(), o.dGateUpErr(),
                        o.dDownErr(), o.constErr(), o.pass() ? "ok" : "FAIL");
            }
            System.out.printf("%d of %d cases passed (tolerance 1e-4 fp32, 2e-2 bf16)%n", cases().size() - failures, cases().size());
            System.out.println("MoE++ gating residual (A's logits into B's router): worst relative error over outputs and gradients, the map's too");
            for (Spec[] pair : residualPairs()) {
                double worst = checkResidual(ctx, pair[0], pair[1], 40, seed++);
                boolean ok = worst <= (pair[0].precision() == Precision.BF16 ? 2e-2 : 1e-4);
                failures += ok ? 0 : 1;
                System.out.printf("%-80s %9.2e  %s%n", new Case(pair[0], 40) + " -> " + new Case(pair[1], 40).toString().replaceAll(" T=.*", ""), worst,
                        ok ? "ok" : "FAIL");
            }
            System.out.println("Extra logits (RMoE's recurrent router): worst relative error over outputs and gradients, the fp32 logit gradient too");
            for (Spec s : extraLogitSpecs()) {
                double worst = checkExtraLogits(ctx, s, 40, seed++);
                boolean ok = worst <= (s.precision() == Precision.BF16 ? 2e-2 : 1e-4);
                failures += ok ? 0 : 1;
                System.out.printf("%-80s %9.2e  %s%n", new Case(s, 40), worst, ok ? "ok" : "FAIL");
            }
            System.out.println("Balancing losses (the sequence-wise aux loss's statistics and an aux gradient per sequence): worst relative error");
            for (Spec s : balanceSpecs()) {
                double worst = checkBalance(ctx, s, 64, 16, seed++);
                boolean ok = worst <= (s.precision() == Precision.BF16 ? 2e-2 : 1e-4);
                failures += ok ? 0 : 1;
                System.out.printf("%-80s %9.2e  %s%n", new Case(s, 64) + " seq=16", worst, ok ? "ok" : "FAIL");
            }
            System.out.println("Routing replayed as a CUDA graph: outputs bitwise those of the same layer without graphs, inputs alternating");
            for (Spec s : new Spec[] {new Spec(64, 128, 8, 2, Score.SOFTMAX, true, 1f, false, Precision.BF16),
                new Spec(48, 32, 16, 4, Score.SIGMOID, true, 2.5f, true, Precision.FP32)}) {
                String result = checkGraphReplay(ctx, s, 64, seed++);
                failures += result.startsWith("ok") ? 0 : 1;
                System.out.printf("%-80s %s%n", new Case(s, 64), result);
            }
            System.exit(failures == 0 ? 0 : 1);
        } catch (CudaException e) {
            System.err.println("moe: " + e.getMessage());
            System.exit(2);
        }
    }
}
