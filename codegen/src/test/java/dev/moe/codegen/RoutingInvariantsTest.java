package dev.moe.codegen;

import static com.google.common.truth.Truth.assertThat;
import static com.google.common.truth.Truth.assertWithMessage;

import dev.moe.runtime.Backend;
import dev.moe.runtime.Init;
import dev.moe.runtime.Parameter;
import dev.moe.runtime.TrainableModel;
import dev.moe.runtime.cpu.CpuBackend;
import java.lang.reflect.InvocationTargetException;
import java.lang.reflect.Proxy;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import org.junit.jupiter.api.Test;

/**
 * Routing invariants of the generated models over 10^3 seeded cases per router, beyond
 * {@link RouterInvariantTest} and {@link CapacityFactorTest}: every router kind takes exactly k
 * distinct experts per token, capacity keeps exactly the dropless loads capped (drops counted), an aux
 * coefficient of 0 leaves every router's gradient bitwise unchanged, the expert bias moves the step's
 * load toward balance, and slots routed to zero-computation experts run no expert matmul.
 */
class RoutingInvariantsTest {
    static final int CASES = 1000;
    static final int VOCAB = 13;

    static String model(String experts, String router, String balance) {
        return """
                model R {
                  vocab 13  context 8  dim 8  heads 2
                  moe m {
                    %s
                    router { %s }
                    %s
                  }
                  layers 2 { all: attention, m }
                }
                """.formatted(experts, router, balance);
    }

    private static int[] tokens(Init.SplitMix rng, int n) {
        int[] t = new int[n];
        for (int i = 0; i < n; i++) {
            t[i] = (int) Long.remainderUnsigned(rng.nextLong(), VOCAB);
        }
        return t;
    }

    private static int below(Init.SplitMix rng, int n) {
        return (int) Long.remainderUnsigned(rng.nextLong(), n);
    }

    /** A field of the MoE state {@code moe<layer>} of a generated model (routing internals are not in the API). */
    private static Object state(TrainableModel m, int layer, String field) {
        try {
            java.lang.reflect.Field f = m.getClass().getDeclaredField("moe" + layer);
            f.setAccessible(true);
            Object s = f.get(m);
            java.lang.reflect.Field g = s.getClass().getDeclaredField(field);
            g.setAccessible(true);
            return g.get(s);
        } catch (ReflectiveOperationException e) {
            throw new AssertionError(e);
        }
    }

    private static Parameter param(TrainableModel m, String name) {
        return m.parameters().stream().filter(p -> p.name().equals(name)).findFirst().orElseThrow();
    }

    /** A router over {@code count} routed experts; {@code groups} > 0 with at most {@code topGroups} used, or exactly {@code quota} in each. */
    record Case(String experts, String router, int count, int k, int groups, int topGroups, int quota) {}

    @Test
    void everyRouterKindTakesExactlyKDistinctExpertsPerToken() {
        String ffn = "routed 6 x swiglu(hidden: 4)";
        List<Case> cases = List.of(
                new Case(ffn, "top_k 2  temperature 0.5  activation tanh", 6, 2, 0, 0, 0),
                new Case(ffn, "order topk_then_softmax  top_k 3  temperature 0.25", 6, 3, 0, 0, 0),
                new Case(ffn, "top_k 3  groups limited(groups: 3, top: 2)", 6, 3, 3, 2, 0),
                new Case(ffn, "score sigmoid  top_k 2  normalize true  scale 2.5  bias aux_free(rate: 0.01)  groups limited(groups: 3, top: 1)", 6, 2, 3,
                        1, 0),
                new Case(ffn, "score sigmoid  top_k 3  groups quota(3)", 6, 3, 3, 0, 1),
                new Case("routed 3 x swiglu(hidden: 4)\n routed 1 x zero\n routed 1 x copy\n routed 2 x constant", "top_k 3", 7, 3, 0, 0, 0),
                new Case("routed 1 x copy\n routed 4 x latent(rank: 3, ffn: swiglu(hidden: 4))", "top_k 2  normalize true", 5, 2, 0, 0, 0),
                new Case("routed 5 x lora(rank: 2, alpha: 4, base: gelu(hidden: 4))", "top_k 2", 5, 2, 0, 0, 0),
                new Case("routed 8 x relu(hidden: 4)", "top_k 1  capacity factor(8.0)", 8, 1, 0, 0, 0));
        for (Case c : cases) {
            TrainableModel m = Generated.instantiate(Generated.model(model(c.experts(), c.router(), "balance z_loss(coef: 0.01)")));
            m.initialize(1);
            for (Parameter p : m.parameters()) {
                if (p.name().endsWith("router.weight")) {
                    Init.normal(p, 2, 1.0); // spread the scores: confident and unsure tokens
                } else if (p.isBuffer()) {
                    Init.normal(p, 3, 0.1); // an expert bias that changes selections
                }
            }
            Init.SplitMix rng = new Init.SplitMix(42);
            int e = c.count();
            int k = c.k();
            for (int n = 0; n < CASES; n++) {
                int batch = 1 + below(rng, 3);
                int seq = 1 + below(rng, 8);
                int rows = batch * seq;
                m.beginStep();
                m.forward(tokens(rng, rows), tokens(rng, rows), batch, seq);
                int[][] loads = m.expertLoads();
                for (int layer = 0; layer < 2; layer++) {
                    String what = String.format("%s, case %d, layer %d", c.router(), n, layer);
                    int[] selected = (int[]) state(m, layer, "selected");
                    for (int t = 0; t < rows; t++) {
                        int[] chosen = Arrays.copyOfRange(selected, t * k, (t + 1) * k);
                        assertWithMessage("%s, token %s: %s", what, t, Arrays.toString(chosen)).that(Arrays.stream(chosen).distinct().count())
                                .isEqualTo(k);
                        int[] perGroup = new int[Math.max(1, c.groups())];
                        for (int ex : chosen) {
                            assertThat(ex).isIn(com.google.common.collect.Range.closedOpen(0, e));
                            perGroup[c.groups() == 0 ? 0 : ex / (e / c.groups())]++;
                        }
                        if (c.topGroups() > 0) {
                            assertWithMessage("%s, token %s: groups %s", what, t, Arrays.toString(perGroup))
                                    .that(Arrays.stream(perGroup).filter(g -> g > 0).count()).isAtMost(c.topGroups());
                        }
                        if (c.quota() > 0) {
                            for (int g : perGroup) {
                                assertWithMessage("%s, token %s: groups %s", what, t, Arrays.toString(perGroup)).that(g).isEqualTo(c.quota());
                            }
                        }
                    }
                    assertWithMessage("%s: loads %s", what, Arrays.toString(loads[layer])).that(Arrays.stream(loads[layer]).sum()).isEqualTo(rows * k);
                    for (int load : loads[layer]) {
                        assertWithMessage("%s: loads %s", what, Arrays.toString(loads[layer])).that(load).isAtMost(rows);
                    }
                }
            }
        }
    }

    @Test
    void capacityKeepsTheDroplessLoadsCappedAndCountsTheDrops() {
        String[][] configs = {
                {"routed 6 x swiglu(hidden: 4)", "top_k 2", "6", "2"},
                {"routed 8 x relu(hidden: 4)", "top_k 1", "8", "1"},
                {"routed 1 x zero\n routed 4 x swiglu(hidden: 4)\n routed 1 x copy", "top_k 2  normalize true", "6", "2"},
        };
        for (String[] cfg : configs) {
            // 10^3 cases per router, spread over the drop policies and factors
            for (String policy : new String[] {"position", "probability", "random"}) {
                for (double factor : new double[] {0.5, 1.25}) {
                    int e = Integer.parseInt(cfg[2]);
                    int k = Integer.parseInt(cfg[3]);
                    TrainableModel m = Generated.instantiate(Generated.model(
                            model(cfg[0], cfg[1] + "  capacity factor(" + factor + ", drop: " + policy + ")", "balance aux(coef: 0.01)")));
                    m.initialize(1);
                    for (Parameter p : m.parameters()) {
                        if (p.name().endsWith("router.weight")) {
                            Init.normal(p, 2, 1.0); // uneven loads, so capacity binds
                        }
                    }
                    Init.SplitMix rng = new Init.SplitMix(17);
                    long dropped = 0;
                    for (int n = 0; n < CASES / 6; n++) {
                        int batch = 1 + below(rng, 3);
                        int seq = 1 + below(rng, 8);
                        int rows = batch * seq;
                        int capacity = (int) Math.ceil(factor * rows * k / e);
                        int[] in = tokens(rng, rows);
                        m.beginStep();
                        m.forward(in, in, batch, seq);
                        int[][] loads = m.expertLoads();
                        for (int layer = 0; layer < 2; layer++) {
                            // what the router chose before capacity (a layer's drops change the next layer's input, so not an evaluation forward's)
                            int[] demand = new int[e];
                            int[] selected = (int[]) state(m, layer, "selected");
                            for (int s = 0; s < rows * k; s++) {
                                demand[selected[s]]++;
                            }
                            String what = String.format("%s %s %s case %d layer %d: demand %s, loads %s, capacity %d", cfg[1], policy, factor, n, layer,
                                    Arrays.toString(demand), Arrays.toString(loads[layer]), capacity);
                            int kept = 0;
                            int over = 0;
                            for (int ex = 0; ex < e; ex++) {
                                assertWithMessage(what).that(loads[layer][ex]).isEqualTo(Math.min(demand[ex], capacity));
                                kept += loads[layer][ex];
                                over += Math.max(0, demand[ex] - capacity);
                            }
                            // every slot is dispatched or dropped, and the dropped ones are marked
                            boolean[] marks = (boolean[]) state(m, layer, "dropped");
                            int marked = 0;
                            for (int s = 0; s < rows * k; s++) {
                                marked += marks[s] ? 1 : 0;
                            }
                            assertWithMessage(what).that(marked).isEqualTo(over);
                            assertWithMessage(what).that(kept + marked).isEqualTo(rows * k);
                            dropped += marked;
                        }
                    }
                    if (factor < 1) {
                        assertWithMessage("%s %s %s: slots dropped", cfg[1], policy, factor).that(dropped).isGreaterThan(0L);
                    }
                }
            }
        }
    }

    @Test
    void auxCoefficientZeroLeavesEveryRoutersGradientBitwiseAndAPositiveOneChangesIt() {
        String ffn = "routed 6 x swiglu(hidden: 4)";
        String[][] routers = {
                {ffn, "score sigmoid  top_k 2  normalize true  bias aux_free(rate: 0.01)", "micro_batch"},
                {ffn, "order topk_then_softmax  top_k 3", "sequence"},
                {ffn, "top_p 0.5  max_k 3", "global_batch"},
                {"routed 4 x swiglu(hidden: 4)\n routed 1 x zero\n routed 1 x constant", "top_k 2  capacity factor(0.75, drop: probability)", "sequence"},
        };
        for (String[] r : routers) {
            for (String tau : r[0].contains("zero") ? new String[] {"", ", tau: 0.5"} : new String[] {""}) {
                float[] none = routerGradients(model(r[0], r[1], ""));
                float[] zero = routerGradients(model(r[0], r[1], "balance aux(coef: 0, scope: " + r[2] + tau + ")"));
                float[] some = routerGradients(model(r[0], r[1], "balance aux(coef: 0.5, scope: " + r[2] + tau + ")"));
                assertWithMessage("%s, %s: coef 0", r[1], r[2]).that(zero).isEqualTo(none);
                assertWithMessage("%s, %s: coef 0.5", r[1], r[2]).that(some).isNotEqualTo(none);
                int differ = 0;
                for (int i = 0; i < none.length; i++) {
                    differ += some[i] != none[i] ? 1 : 0;
                }
                // the aux loss reaches every router row, not just a few entries
                assertWithMessage("%s, %s: entries changed", r[1], r[2]).that(differ).isGreaterThan(none.length / 2);
            }
        }
    }

    /** Both layers' router weight gradients after one step of two micro-batches. */
    private static float[] routerGradients(String text) {
        TrainableModel m = Generated.instantiate(Generated.model(text));
        m.initialize(3);
        Init.SplitMix rng = new Init.SplitMix(5);
        m.parameters().forEach(Parameter::zeroGrad);
        m.beginStep();
        for (int micro = 0; micro < 2; micro++) {
            m.forward(tokens(rng, 16), tokens(rng, 16), 2, 8);
            m.backward(0.5f);
        }
        Parameter p0 = param(m, "layers.0.moe.router.weight");
        Parameter p1 = param(m, "layers.1.moe.router.weight");
        float[] g = new float[p0.size() + p1.size()];
        System.arraycopy(p0.grad(), p0.offset(), g, 0, p0.size());
        System.arraycopy(p1.grad(), p1.offset(), g, p0.size(), p1.size());
        return g;
    }

    @Test
    void expertBiasMovesTheStepsLoadTowardBalanceForEveryScoreFunction() {
        String[][] routers = {
                {"routed 6 x swiglu(hidden: 4)", "top_k 2  bias aux_free(rate: 0.01)"},
                {"routed 6 x swiglu(hidden: 4)", "score sigmoid  top_k 2  normalize true  scale 2.5  bias aux_free(rate: 0.01)  groups limited(groups: 3, top: 2)"},
                // LongCat-Flash: identity experts among FFN experts, softmax, no renormalisation
                {"routed 4 x swiglu(hidden: 4)\n routed 2 x copy", "top_k 2  scale 2.0  bias aux_free(rate: 0.01)"},
        };
        for (String[] r : routers) {
            TrainableModel m = Generated.instantiate(Generated.model(model(r[0], r[1], "")));
            m.initialize(7);
            for (Parameter p : m.parameters()) {
                if (p.name().endsWith("router.weight")) {
                    Init.normal(p, 8, 0.5);
                }
            }
            Parameter bias = param(m, "layers.0.moe.router.expert_bias");
            // a skewed start: experts 0 and 1 favoured, so the updates have an imbalance to undo
            bias.value()[bias.offset()] = 0.3f;
            bias.value()[bias.offset() + 1] = 0.2f;
            Init.SplitMix rng = new Init.SplitMix(11);
            double first = 0;
            double last = 0;
            int steps = 300;
            for (int step = 0; step < steps; step++) {
                float[] before = bias.values();
                m.beginStep();
                int[] load = new int[6];
                for (int micro = 0; micro < 2; micro++) {
                    m.forward(tokens(rng, 32), tokens(rng, 32), 4, 8);
                    int[] l = m.expertLoads()[0];
                    for (int ex = 0; ex < 6; ex++) {
                        load[ex] += l[ex];
                    }
                }
                m.endStep();
                float[] after = bias.values();
                double mean = Arrays.stream(load).average().orElseThrow();
                for (int ex = 0; ex < 6; ex++) {
                    // the step's load over both micro-batches decides the direction
                    double moved = after[ex] - before[ex];
                    String what = String.format("%s step %d expert %d: loads %s", r[1], step, ex, Arrays.toString(load));
                    if (load[ex] < mean) {
                        assertWithMessage(what).that(moved).isGreaterThan(0);
                    } else if (load[ex] > mean) {
                        assertWithMessage(what).that(moved).isLessThan(0);
                    } else {
                        assertWithMessage(what).that(moved).isEqualTo(0);
                    }
                }
                double imbalance = Arrays.stream(load).max().orElseThrow() / mean;
                if (step < 20) {
                    first += imbalance / 20;
                }
                if (step >= steps - 20) {
                    last += imbalance / 20;
                }
            }
            assertWithMessage("%s: max/mean load, first 20 steps %s, last 20 %s", r[1], first, last).that(last).isLessThan(first);
        }
    }

    /** Counts the FLOPs of the dense and the grouped (expert) matmuls a model asks its backend for. */
    static final class FlopCounter {
        long dense;
        long experts;

        Backend wrap(Backend inner) {
            return (Backend) Proxy.newProxyInstance(Backend.class.getClassLoader(), new Class<?>[] {Backend.class}, (proxy, method, args) -> {
                switch (method.getName()) {
                    case "matmul" -> dense += 2L * (int) args[6] * (int) args[7] * (int) args[8];
                    case "groupedMatmul" -> experts += 2L * ((int[]) args[4])[(int) args[5]] * (int) args[6] * (int) args[7];
                    default -> { }
                }
                try {
                    return method.invoke(inner, args);
                } catch (InvocationTargetException e) {
                    throw e.getCause();
                }
            });
        }
    }

    @Test
    void slotsRoutedToZeroComputationExpertsRunNoExpertMatmul() {
        // MoE++ / LongCat-Flash: 4 FFN experts, 2 zero, 1 copy, 1 constant; the expert bias (selection only) steers the routing
        String text = model("routed 4 x swiglu(hidden: 5)\n routed 2 x zero\n routed 1 x copy\n routed 1 x constant",
                "top_k 2  bias aux_free(rate: 0.01)", "balance aux(coef: 0.01, tau: 0.5)");
        int dim = 8;
        int hidden = 5;
        List<long[]> measured = new ArrayList<>();
        for (float zeroComputeBias : new float[] {0f, 100f, -100f}) {
            FlopCounter counter = new FlopCounter();
            TrainableModel m = Generated.instantiate(Generated.model(text), counter.wrap(new CpuBackend(1, false)));
            m.initialize(4);
            for (int layer = 0; layer < 2; layer++) {
                Parameter bias = param(m, "layers." + layer + ".moe.router.expert_bias");
                for (int ex = 4; ex < 8; ex++) {
                    bias.value()[bias.offset() + ex] = zeroComputeBias;
                }
            }
            Init.SplitMix rng = new Init.SplitMix(9);
            int[] in = tokens(rng, 16);
            m.beginStep();
            m.forward(in, tokens(rng, 16), 2, 8);
            int ffnSlots = 0;
            int zeroSlots = 0;
            for (int[] layer : m.expertLoads()) {
                ffnSlots += layer[0] + layer[1] + layer[2] + layer[3];
                zeroSlots += layer[4] + layer[5] + layer[6] + layer[7];
            }
            assertThat(ffnSlots + zeroSlots).isEqualTo(2 * 16 * 2);
            // a SwiGLU expert row: gate and up (dim -> hidden), down (hidden -> dim)
            assertWithMessage("bias %s: %s FFN slots", zeroComputeBias, ffnSlots).that(counter.experts).isEqualTo(2L * ffnSlots * 3 * dim * hidden);
            measured.add(new long[] {counter.dense, counter.experts, ffnSlots});
        }
        long[] normal = measured.get(0);
        long[] allZero = measured.get(1);
        long[] allFfn = measured.get(2);
        assertThat(allZero[2]).isEqualTo(0);
        assertThat(allZero[1]).isEqualTo(0);
        assertThat(allFfn[2]).isEqualTo(2 * 16 * 2);
        assertThat(normal[2]).isIn(com.google.common.collect.Range.open(0L, 64L));
        // everything else (attention, routers, head) costs the same whatever the routing
        assertThat(allZero[0]).isEqualTo(normal[0]);
        assertThat(allFfn[0]).isEqualTo(normal[0]);
    }
}
