package dev.moe.codegen;

import static com.google.common.truth.Truth.assertThat;
import static com.google.common.truth.Truth.assertWithMessage;

import dev.moe.codegen.reference.Float64Model;
import dev.moe.compiler.ir.Model;
import dev.moe.runtime.Init;
import dev.moe.runtime.Parameter;
import dev.moe.runtime.TrainableModel;
import java.io.IOException;
import java.io.UncheckedIOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.LinkedHashSet;
import java.util.List;
import java.util.Set;
import java.util.stream.Stream;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.Arguments;
import org.junit.jupiter.params.provider.MethodSource;

/**
 * The generated fp32 models against an independent float64 oracle ({@link Float64Model}): the forward
 * loss agrees to 1e-5 relative, and the generated analytic gradient of every parameter tensor agrees
 * with float64 central differences of the oracle within {@code 1e-5 + 1e-3 |numeric|}.
 *
 * <p>Routing is kept away from ties: weights are drawn from successive seeds until every discrete
 * decision of the oracle (top-k and group ranks, the top-p threshold, capacity cuts, ReLU kinks) has a
 * margin of at least {@value #MARGIN}, a hundred times the finite-difference step; the generated model
 * must then route exactly as the oracle (equal expert loads), and every probe must leave the oracle's
 * routing unchanged.
 */
class Float64GradientTest {
    static final double MARGIN = 1e-4;
    static final double H = 1e-6;
    static final int BATCH = 2;
    static final int SEQ = 4;
    static final int VOCAB = 11;
    /** The optimiser step of every check: part-way through an annealed temperature's schedule. */
    static final long STEP = 150;

    /** The starter recipes and the new ones, scaled down to a tiny size (vocabulary, context, width, FFN hidden, ranks, layers). */
    static List<String> recipes() {
        try (Stream<Path> files = Files.list(Path.of("../recipes"))) {
            return files.map(Path::getFileName).map(Path::toString).filter(f -> f.endsWith(".moe")).sorted().toList();
        } catch (IOException e) {
            throw new UncheckedIOException(e);
        }
    }

    static String tiny(String recipe) {
        // at most 3 layers, or as many as the layer plan names explicitly
        int named = 0;
        java.util.regex.Matcher entry = java.util.regex.Pattern.compile("(?m)^\\s*(?:\\d+\\.\\.)?(\\d+):").matcher(recipe);
        while (entry.find()) {
            named = Math.max(named, Integer.parseInt(entry.group(1)) + 1);
        }
        int most = Math.max(3, named);
        java.util.regex.Matcher layers = java.util.regex.Pattern.compile("(?m)^(\\s*layers\\s+)(\\d+)").matcher(recipe);
        recipe = layers.replaceAll(r -> r.group(1) + Math.min(most, Integer.parseInt(r.group(2))));
        return recipe.replaceAll("(?m)^(\\s*)vocab\\s+\\S+", "$1vocab " + VOCAB)
                .replaceAll("(?m)^(\\s*)context\\s+\\S+", "$1context 6")
                .replaceAll("(?m)^(\\s*)dim\\s+\\S+", "$1dim 8")
                .replaceAll("const DIM = \\d+", "const DIM = 8")
                .replaceAll("hidden:\\s*[^,)\\n]+", "hidden: 5")
                .replaceAll("rank:\\s*\\d+", "rank: 3")
                .replaceAll("parts:\\s*\\d+", "parts: 1") // the FFN hidden is now 5: split upcycling into 1 part keeps it valid
                .replaceAll("sliding_window\\s+\\d+", "sliding_window 3");
    }

    /** Router and expert variants beyond GeneratedModelTest's tiny models (which run here too, but for jitter). */
    static List<String> variants() {
        String header = """
                model V {
                  vocab 11  context 6  dim 8  heads 2  kv_heads 1
                """;
        return List.of(
                // ReLU experts and dense FFN, sigmoid scores without normalisation, a non-causal windowed attention without RoPE
                header + """
                  causal false
                  sliding_window 2
                  position none
                  moe m {
                    routed 4 x relu(hidden: 5)
                    router { score sigmoid  top_k 2 }
                    balance aux(coef: 0.1)
                    balance z_loss(coef: 0.01)
                  }
                  layers 2 { first 1: attention, relu(hidden: 6)  rest: attention, m }
                }
                """,
                // softmax group-limited top-k with an expert bias and scaling
                header + """
                  moe m {
                    routed 8 x swiglu(hidden: 4)
                    router { top_k 3  normalize true  scale 2.0  bias aux_free(rate: 0.01)  groups limited(groups: 4, top: 2) }
                    balance aux(coef: 0.1, scope: sequence)
                  }
                  layers 2 { all: attention, m }
                }
                """,
                // sigmoid MoGE quotas with a gated shared expert
                header + """
                  moe m {
                    shared 1 x swiglu(hidden: 4, gate: sigmoid)
                    routed 6 x geglu(hidden: 4)
                    router { score sigmoid  top_k 2  normalize true  groups quota(2) }
                    balance aux(coef: 0.1)
                    balance z_loss(coef: 0.01)
                  }
                  layers 2 { all: attention, m }
                }
                """,
                // expert choice, renormalised and scaled, with a zero and a copy expert among FFN experts
                header + """
                  moe m {
                    routed 3 x swiglu(hidden: 5)
                    routed 1 x zero
                    routed 1 x copy
                    router { mode expert_choice  capacity factor(2.0)  normalize true  scale 1.5 }
                    balance z_loss(coef: 0.01)
                  }
                  layers 2 { all: attention, m }
                }
                """,
                // top-k of the logits then softmax, with a capacity factor dropping by probability, and constant experts
                header + """
                  moe m {
                    routed 4 x swiglu(hidden: 5)
                    routed 2 x constant
                    router { order topk_then_softmax  top_k 2  capacity factor(0.5, drop: probability) }
                    balance aux(coef: 0.1, tau: 0.25)
                  }
                  layers 2 { all: attention, m }
                }
                """,
                // DeepSeek-V3: multi-head latent attention with a query rank, sigmoid scores with a bias, group-limited top-k
                """
                model V {
                  vocab 11  context 6  dim 8  heads 2
                  attention mla(q_rank: 6, kv_rank: 5, nope_dim: 2, rope_dim: 4, v_dim: 3)
                  moe m {
                    shared 1 x swiglu(hidden: 4)
                    routed 4 x swiglu(hidden: 3)
                    router { score sigmoid  top_k 2  normalize true  scale 2.5  bias aux_free(rate: 0.001)  groups limited(groups: 2, top: 1) }
                  }
                  layers 2 { first 1: attention, swiglu(hidden: 6)  rest: attention, m }
                }
                """,
                // latent attention with a direct query projection, sliding window, no RoPE dimensions beyond the rotary key's
                """
                model V {
                  vocab 11  context 6  dim 8  heads 2
                  sliding_window 3
                  attention mla(kv_rank: 4, nope_dim: 0, rope_dim: 2, v_dim: 2, eps: 1e-5)
                  layers 2 { all: attention, swiglu(hidden: 6) }
                }
                """,
                // named gates that differ beyond their weights: softmax renormalised, sigmoid scaled, top-k of the logits
                header + """
                  moe m {
                    shared 1 x swiglu(hidden: 4)
                    routed 4 x swiglu(hidden: 5)
                    router text { top_k 2  normalize true }
                    router image { score sigmoid  top_k 2  normalize true  scale 2.5 }
                    router audio { order topk_then_softmax  top_k 2 }
                    balance aux(coef: 0.1)
                    balance z_loss(coef: 0.01)
                  }
                  layers 2 { first 1: attention, swiglu(hidden: 6)  rest: attention, m }
                }
                """,
                header + """
                  moe m {
                    routed 4 x swiglu(hidden: 5)
                    router speech { score sigmoid  top_k 2 }
                    router music { top_k 2  scale 1.5 }
                    balance aux(coef: 0.1, scope: sequence)
                  }
                  layers 2 { all: attention, m }
                }
                """,
                // named gates of different top_k (and score): a gate of k = 1 leaves two of the three slots unused
                header + """
                  moe m {
                    routed 1 x zero
                    routed 4 x swiglu(hidden: 5)
                    router text { top_k 1 }
                    router image { score sigmoid  top_k 3  normalize true }
                    balance aux(coef: 0.1)
                    balance z_loss(coef: 0.01)
                  }
                  layers 2 { all: attention, m }
                }
                """,
                header + """
                  moe m {
                    shared 1 x swiglu(hidden: 4)
                    routed 4 x swiglu(hidden: 5)
                    router speech { order topk_then_softmax  top_k 3 }
                    router music { top_k 2  normalize true  scale 2.0 }
                    balance aux(coef: 0.1, scope: sequence)
                    balance z_loss(coef: 0.01)
                  }
                  layers 2 { first 1: attention, swiglu(hidden: 6)  rest: attention, m }
                }
                """,
                // two aux losses of different scopes in one MoE (each with its own f in the generated code)
                header + """
                  moe m {
                    routed 4 x swiglu(hidden: 5)
                    router { top_k 2 }
                    balance aux(coef: 0.1, scope: micro_batch)
                    balance aux(coef: 0.05, scope: global_batch)
                    balance aux(coef: 0.02, scope: sequence)
                  }
                  layers 2 { all: attention, m }
                }
                """,
                // random drops by a seeded priority over a latent (MoLE) group
                header + """
                  moe m {
                    routed 4 x latent(rank: 3, ffn: gelu(hidden: 5))
                    router { top_k 2  normalize true  capacity factor(0.5, drop: random) }
                    balance aux(coef: 0.1, scope: global_batch)
                  }
                  layers 2 { all: attention, m }
                }
                """,
                // latent (MoLE) experts declared before FFN experts of another width, beside a zero expert and a shared one:
                // the FFN experts packed, the latent group run on its own weights after them
                header + """
                  moe m {
                    shared 1 x swiglu(hidden: 4)
                    routed 3 x latent(rank: 3, ffn: swiglu(hidden: 6))
                    routed 3 x swiglu(hidden: 5)
                    routed 1 x zero
                    router { top_k 3  normalize true }
                    balance aux(coef: 0.1)
                  }
                  layers 2 { all: attention, m }
                }
                """,
                // two latent groups of different ranks and activations, one gated, beside ReLU experts, with a capacity factor
                header + """
                  moe m {
                    routed 2 x relu(hidden: 5)
                    routed 2 x latent(rank: 3, ffn: geglu(hidden: 4))
                    routed 3 x latent(rank: 2, ffn: gelu(hidden: 7))
                    router { top_k 2  capacity factor(1.0, drop: probability) }
                    balance aux(coef: 0.1)
                  }
                  layers 2 { all: attention, m }
                }
                """,
                // FFN experts of three shapes (the first packed, the others on their own weights) and a copy expert
                header + """
                  moe m {
                    routed 2 x swiglu(hidden: 5)
                    routed 1 x copy
                    routed 2 x gelu(hidden: 7)
                    routed 2 x swiglu(hidden: 3)
                    router { top_k 3  score sigmoid  normalize true }
                    balance aux(coef: 0.1)
                  }
                  layers 2 { all: attention, m }
                }
                """,
                // LoRA experts (MoLA) declared first, beside FFN experts, a latent group and a zero expert: the LoRA group runs
                // last over its own copy of the frozen base's activations
                header + """
                  moe m {
                    routed 3 x lora(rank: 2, alpha: 4.0, base: swiglu(hidden: 6))
                    routed 2 x gelu(hidden: 5)
                    routed 2 x latent(rank: 3, ffn: relu(hidden: 4))
                    routed 1 x zero
                    router { top_k 3  normalize true }
                    balance aux(coef: 0.1)
                  }
                  layers 2 { all: attention, m }
                }
                """,
                // FFN experts then LoRA experts over an ungated base, with a capacity factor
                header + """
                  moe m {
                    shared 1 x swiglu(hidden: 4)
                    routed 2 x swiglu(hidden: 5)
                    routed 3 x lora(rank: 3, alpha: 3.0, base: gelu(hidden: 7))
                    router { top_k 2  capacity factor(1.0, drop: position) }
                    balance aux(coef: 0.1)
                  }
                  layers 2 { all: attention, m }
                }
                """,
                // two latent groups and nothing else, under top-p
                header + """
                  moe m {
                    routed 3 x latent(rank: 2, ffn: swiglu(hidden: 4))
                    routed 2 x latent(rank: 4, ffn: relu(hidden: 6))
                    router { top_p 0.6  max_k 3 }
                    balance aux(coef: 0.1)
                    balance entropy(coef: 0.01)
                  }
                  layers 2 { all: attention, m }
                }
                """,
                // named gates that differ in their temperature: none beside one annealed through a sigmoid (the annealed
                // value recomputed per gate), with different top_k and the z-loss reading each gate's scaled logits
                header + """
                  moe m {
                    routed 4 x swiglu(hidden: 5)
                    router text { top_k 2  normalize true }
                    router code { top_k 1  temperature anneal(start: 2.0, end: 0.5, steps: 300)  activation sigmoid }
                    balance aux(coef: 0.1)
                    balance z_loss(coef: 0.01)
                  }
                  layers 2 { all: attention, m }
                }
                """,
                // a top-k gate beside a top-p one of larger max_k (every token has 3 slots; the top-2 gate leaves one unused)
                header + """
                  moe m {
                    routed 5 x swiglu(hidden: 5)
                    router text { top_k 2  normalize true }
                    router code { top_p 0.5  max_k 3  temperature 0.8 }
                    balance aux(coef: 0.1, scope: sequence)
                    balance entropy(coef: 0.01)
                  }
                  layers 2 { all: attention, m }
                }
                """,
                // two LoRA groups (MoLA), each over its own frozen base, around a zero expert
                header + """
                  moe m {
                    routed 2 x lora(rank: 2, alpha: 4.0, base: swiglu(hidden: 4))
                    routed 1 x zero
                    routed 2 x lora(rank: 1, alpha: 1.0, base: relu(hidden: 3))
                    router { top_k 2  normalize true }
                    balance aux(coef: 0.1)
                  }
                  layers 2 { all: attention, m }
                }
                """,
                // two LoRA groups after FFN experts, under a capacity factor
                header + """
                  moe m {
                    shared 1 x swiglu(hidden: 4)
                    routed 2 x gelu(hidden: 5)
                    routed 2 x lora(rank: 1, alpha: 2.0, base: gelu(hidden: 3))
                    routed 2 x lora(rank: 2, alpha: 1.0, base: swiglu(hidden: 4))
                    router { top_k 2  capacity factor(1.0, drop: position) }
                    balance aux(coef: 0.1)
                  }
                  layers 2 { all: attention, m }
                }
                """,
                // named gates of different capacities: each gate's experts keep their own share of its sequences' slots
                header + """
                  moe m {
                    shared 1 x swiglu(hidden: 4)
                    routed 4 x swiglu(hidden: 5)
                    router text { top_k 2  capacity factor(0.5, drop: probability) }
                    router code { score sigmoid  top_k 2  normalize true  capacity factor(1.0, drop: position) }
                    balance aux(coef: 0.1)
                  }
                  layers 2 { all: attention, m }
                }
                """,
                // a dropless gate beside one dropping by a seeded random priority, with a zero expert
                header + """
                  moe m {
                    routed 4 x gelu(hidden: 5)
                    routed 1 x zero
                    router text { top_k 2 }
                    router code { top_k 2  capacity factor(0.5, drop: random) }
                    balance aux(coef: 0.1, scope: sequence)
                  }
                  layers 2 { all: attention, m }
                }
                """,
                // named gates that differ in their expert bias: each selects with its own buffer (the sigmoid gate has none)
                header + """
                  moe m {
                    routed 4 x swiglu(hidden: 5)
                    router text { top_k 2  bias aux_free(rate: 0.01) }
                    router code { score sigmoid  top_k 2  normalize true }
                    router math { top_k 2  bias aux_free(rate: 0.02)  capacity factor(0.75) }
                    balance aux(coef: 0.1)
                  }
                  layers 2 { all: attention, m }
                }
                """,
                // named gates that differ in jitter (seeded by the step, the micro-batch and the layer), one of them none
                header + """
                  moe m {
                    routed 4 x swiglu(hidden: 5)
                    router text { top_k 2  normalize true }
                    router code { top_k 2  normalize true  jitter 0.3 }
                    balance aux(coef: 0.1)
                    balance z_loss(coef: 0.01)
                  }
                  layers 2 { all: attention, m }
                }
                """,
                // two top-p gates of different p and max_k beside a zero expert
                header + """
                  moe m {
                    routed 4 x gelu(hidden: 5)
                    routed 1 x zero
                    router text { top_p 0.7  max_k 2 }
                    router code { top_p 0.4  max_k 4  normalize true }
                    balance aux(coef: 0.1)
                  }
                  layers 2 { all: attention, m }
                }
                """,
                // a constant temperature through tanh beside an annealed one
                header + """
                  moe m {
                    routed 4 x gelu(hidden: 5)
                    router text { top_k 2  temperature 0.5  activation tanh }
                    router code { top_k 2  temperature anneal(start: 0.3, end: 3.0, steps: 200) }
                    balance aux(coef: 0.1, scope: sequence)
                  }
                  layers 2 { all: attention, m }
                }
                """);
    }

    static Stream<Arguments> cases() {
        List<Arguments> all = new ArrayList<>();
        for (String r : recipes()) {
            all.add(Arguments.of("recipe " + r, tiny(read(r))));
        }
        List<String> tinies = GeneratedModelTest.tinyModels();
        for (int i = 0; i < tinies.size(); i++) {
            all.add(Arguments.of("GeneratedModelTest #" + i, tinies.get(i)));
        }
        List<String> variants = variants();
        for (int i = 0; i < variants.size(); i++) {
            all.add(Arguments.of("variant #" + i, variants.get(i)));
        }
        return all.stream();
    }

    private static String read(String recipe) {
        try {
            return Files.readString(Path.of("../recipes").resolve(recipe));
        } catch (IOException e) {
            throw new UncheckedIOException(e);
        }
    }

    /** Weights large enough that every path's gradient shows; norms near 1, an expert bias that changes selections. */
    static void randomize(TrainableModel m, long seed) {
        m.initialize(seed);
        for (Parameter p : m.parameters()) {
            if (p.isBuffer()) {
                Init.normal(p, seed + 1, 0.05);
            } else if (p.shape().length > 1) {
                Init.normal(p, seed, 0.3);
            } else {
                Init.normal(p, seed, 0.2);
                if (p.name().endsWith("norm.weight") || p.name().endsWith("_norm")) {
                    for (int i = 0; i < p.size(); i++) {
                        p.value()[p.offset() + i] += 1f;
                    }
                }
            }
        }
    }

    static int[] tokens(long seed, int n) {
        Init.SplitMix rng = new Init.SplitMix(seed);
        int[] t = new int[n];
        for (int i = 0; i < n; i++) {
            t[i] = (int) Long.remainderUnsigned(rng.nextLong(), VOCAB);
        }
        return t;
    }

    @ParameterizedTest(name = "{0}")
    @MethodSource("cases")
    void generatedLossAndGradientsMatchTheFloat64Oracle(String name, String text) {
        check(text, 1);
    }

    /**
     * Two micro-batches in one optimiser step: the second's global-batch aux loss counts the first's
     * loads (and random drops see the second micro-batch's seed).
     */
    @ParameterizedTest(name = "{0}")
    @MethodSource("globalBatchCases")
    void secondMicroBatchOfAStepMatchesTheOracle(String name, String text) {
        check(text, 2);
    }

    static Stream<Arguments> globalBatchCases() {
        return Stream.of(Arguments.of("recipe global-batch-lbl.moe", tiny(read("global-batch-lbl.moe"))),
                Arguments.of("global batch, random drops", variants().getLast()));
    }

    private static void check(String text, int microBatches) {
        Model ir = Generated.model(text);
        // a feature the generator supports and the oracle does not know yet shows as a skipped case
        java.util.Optional<String> unknown = Float64Model.unsupported(ir);
        org.junit.jupiter.api.Assumptions.assumeTrue(unknown.isEmpty(), () -> "the float64 oracle does not model " + unknown.orElseThrow());
        TrainableModel m = Generated.instantiate(ir);
        Float64Model ref = new Float64Model(ir);
        // named gates: the first sequence takes the last gate by its domain, the second an unknown domain (the first gate)
        List<String> domains = ir.layers().stream().flatMap(l -> moeRouters(l).stream()).filter(rs -> rs.size() > 1).findFirst()
                .map(rs -> List.of(rs.getLast().name().orElseThrow(), "no such domain")).orElse(List.of());
        m.setDomains(domains);
        ref.setDomains(domains);
        int n = BATCH * SEQ;
        int[][] inputs = new int[microBatches][];
        int[][] targets = new int[microBatches][];
        Float64Model.Result base = null;
        long seed = 0;
        for (; seed < 200; seed++) {
            randomize(m, 100 + seed);
            ref.load(m);
            for (int b = 0; b < microBatches; b++) {
                inputs[b] = tokens(3 * seed + b, n);
                targets[b] = tokens(1000 + 3 * seed + b, n);
            }
            base = refLoss(ref, inputs, targets);
            if (base.margin() >= MARGIN) {
                break;
            }
        }
        assertWithMessage("no seed routes away from ties").that(base.margin()).isAtLeast(MARGIN);

        m.parameters().forEach(Parameter::zeroGrad);
        m.setStep(STEP);
        m.beginStep();
        double loss = 0;
        for (int b = 0; b < microBatches; b++) {
            loss = m.forward(inputs[b], targets[b], BATCH, SEQ);
        }
        m.backward(1f);
        assertWithMessage("expert loads (seed %s)", seed).that(m.expertLoads()).isEqualTo(base.loads());
        assertWithMessage("fp32 loss vs float64 (seed %s)", seed).that(loss).isWithin(1e-5 * Math.abs(base.loss())).of(base.loss());

        List<String> failures = new ArrayList<>();
        int probes = 0;
        Init.SplitMix rng = new Init.SplitMix(seed);
        for (Parameter p : m.parameters()) {
            if (p.isBuffer()) {
                continue;
            }
            double[] v = ref.param(p.name());
            for (int i : probeIndices(p, rng)) {
                double analytic = p.grad()[p.offset() + i];
                double saved = v[i];
                v[i] = saved + H;
                Float64Model.Result up = refLoss(ref, inputs, targets);
                v[i] = saved - H;
                Float64Model.Result down = refLoss(ref, inputs, targets);
                v[i] = saved;
                assertWithMessage("%s[%s]: a probe changed the routing", p.name(), i).that(up.sameRouting(base) && down.sameRouting(base)).isTrue();
                double numeric = (up.loss() - down.loss()) / (2 * H);
                probes++;
                if (Math.abs(analytic - numeric) > 1e-5 + 1e-3 * Math.abs(numeric)) {
                    failures.add(String.format("%s[%d]: analytic %.8g numeric %.8g", p.name(), i, analytic, numeric));
                }
            }
        }
        assertWithMessage("gradient mismatches (seed %s, %s probes)", seed, probes).that(failures).isEmpty();
        assertThat(probes).isAtLeast(m.parameters().size());
    }

    private static List<List<dev.moe.compiler.ir.Router>> moeRouters(dev.moe.compiler.ir.Layer l) {
        List<dev.moe.compiler.ir.Moe> moes = switch (l.block()) {
            case dev.moe.compiler.ir.Block.PreNorm p -> p.ffn() instanceof dev.moe.compiler.ir.Block.Part.MoePart mp ? List.of(mp.moe()) : List.of();
            case dev.moe.compiler.ir.Block.Parallel p -> p.ffn() instanceof dev.moe.compiler.ir.Block.Part.MoePart mp ? List.of(mp.moe()) : List.of();
            case dev.moe.compiler.ir.Block.Shortcut sc -> List.of(sc.moe());
            case dev.moe.compiler.ir.Block.Residual r -> List.of(r.moe());
        };
        return moes.stream().map(dev.moe.compiler.ir.Moe::routers).toList();
    }

    private static Float64Model.Result refLoss(Float64Model ref, int[][] inputs, int[][] targets) {
        Float64Model.Step step = new Float64Model.Step(STEP);
        Float64Model.Result r = null;
        for (int b = 0; b < inputs.length; b++) {
            r = ref.forward(inputs[b], targets[b], BATCH, SEQ, step);
        }
        return r;
    }

    /**
     * Both entries of a tensor of two; otherwise the entry of largest analytic gradient and a seeded one
     * (CI time). {@code -Dmoe.float64.everyEntry=true} probes every entry of every tensor.
     */
    private static Set<Integer> probeIndices(Parameter p, Init.SplitMix rng) {
        Set<Integer> idx = new LinkedHashSet<>();
        if (p.size() <= 2 || Boolean.getBoolean("moe.float64.everyEntry")) {
            for (int i = 0; i < p.size(); i++) {
                idx.add(i);
            }
            return idx;
        }
        int best = 0;
        for (int i = 1; i < p.size(); i++) {
            if (Math.abs(p.grad()[p.offset() + i]) > Math.abs(p.grad()[p.offset() + best])) {
                best = i;
            }
        }
        idx.add(best);
        while (idx.size() < 2) {
            idx.add((int) Long.remainderUnsigned(rng.nextLong(), p.size()));
        }
        return idx;
    }
}
