package dev.moe.cli;

import static com.google.common.truth.Truth.assertThat;
import static com.google.common.truth.Truth.assertWithMessage;

import dev.moe.compiler.ir.CompiledFile;
import dev.moe.dsl.SourceFile;
import dev.moe.runtime.Init;
import dev.moe.runtime.Parameter;
import dev.moe.runtime.TrainableModel;
import dev.moe.runtime.train.Checkpoint;
import dev.moe.runtime.upcycle.Upcycle;
import dev.moe.runtime.upcycle.Weights;
import java.io.IOException;
import java.io.PrintWriter;
import java.io.StringWriter;
import java.nio.file.Path;
import java.util.List;
import java.util.Map;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * Upcycling transforms on generated models: the methods that promise to preserve the dense model's
 * function are checked on its logits; the others on the weights they must produce.
 */
class UpcycleTest {
    static final String MODELS = """
            model Dense {
              vocab 256
              context 16
              dim 16
              heads 2
              layers 2 { all: attention, swiglu(hidden: 32) }
            }

            // granular: 4 slices of the dense FFN; every expert chosen, weights 1/4 scaled back to 1
            moe slices {
              routed 4 x swiglu(hidden: 8)
              router { top_k 4  scale 4 }
            }
            model Split {
              vocab 256
              context 16
              dim 16
              heads 2
              layers 2 { all: attention, slices }
            }

            // Innovator-style: one shared slice, three routed slices, all three chosen and scaled back
            moe sharedSlices {
              shared 1 x swiglu(hidden: 8)
              routed 3 x swiglu(hidden: 8)
              router { top_k 3  scale 3 }
            }
            model SharedSplit {
              vocab 256
              context 16
              dim 16
              heads 2
              layers 2 { all: attention, sharedSlices }
            }

            moe copies {
              routed 4 x swiglu(hidden: 32)
              router { top_k 2  normalize true }
            }
            model Copied {
              vocab 256
              context 16
              dim 16
              heads 2
              layers 2 { all: attention, copies }
            }

            moe more {
              routed 6 x swiglu(hidden: 32)
              router { top_k 2  normalize true }
            }
            model Extended {
              vocab 256
              context 16
              dim 16
              heads 2
              layers 2 { all: attention, more }
            }

            // scale-up's zero padding changes what the norms' epsilon adds to the mean square: a tiny
            // epsilon in both models shows that everything else is exact
            model SmallDense {
              vocab 256
              context 16
              dim 16
              heads 2
              norm rms(eps: 1e-10)
              layers 2 { all: attention, swiglu(hidden: 32) }
            }
            model Wide {
              vocab 256
              context 16
              dim 32
              heads 4
              norm rms(eps: 1e-10)
              layers 3 { all: attention, swiglu(hidden: 64) }
            }
            """;

    static CompiledFile compiled;

    @TempDir
    static Path dir;

    @BeforeAll
    static void compile() throws Recipes.UserError {
        StringWriter err = new StringWriter();
        compiled = Recipes.compile(new SourceFile("upcycle.moe", MODELS), new PrintWriter(err));
    }

    static TrainableModel model(String name, long seed) throws Recipes.UserError {
        TrainableModel m = Recipes.instantiate(Curricula.find(compiled.models(), name).orElseThrow(), "upcycle.moe", 1);
        m.initialize(seed);
        return m;
    }

    /** A dense model with weights far from their initial scale, saved and read back as an upcycling step reads it. */
    static Weights trainedDense(long seed) throws IOException, Recipes.UserError {
        return trainedDense("Dense", seed);
    }

    static Weights trainedDense(String name, long seed) throws IOException, Recipes.UserError {
        TrainableModel dense = model(name, seed);
        Init.SplitMix rng = new Init.SplitMix(seed + 100);
        for (Parameter p : dense.parameters()) {
            float[] v = p.values();
            for (int i = 0; i < v.length; i++) {
                v[i] = (float) (p.shape().length == 1 ? 1 + 0.3 * rng.gaussian() : 0.2 * rng.gaussian());
            }
            p.load(v);
        }
        Path file = dir.resolve(name + "-" + seed + ".safetensors");
        Checkpoint.save(file, dense.parameters(), null, Map.of("model", name));
        return Weights.read(file);
    }

    static TrainableModel loaded(String name, Weights w) throws Recipes.UserError {
        TrainableModel m = model(name, 0);
        for (Parameter p : m.parameters()) {
            p.load(w.get(p.name()).clone());
        }
        return m;
    }

    /** Logits at the last position of prefixes of several lengths, so that every position is compared. */
    static void assertSameFunction(TrainableModel expected, TrainableModel actual, double tolerance) {
        Init.SplitMix rng = new Init.SplitMix(7);
        int batch = 3;
        for (int seq = 1; seq <= 16; seq += 3) {
            int[] tokens = new int[batch * seq];
            for (int i = 0; i < tokens.length; i++) {
                tokens[i] = (int) (rng.nextDouble() * 256);
            }
            float[] want = expected.lastLogits(tokens, batch, seq);
            float[] got = actual.lastLogits(tokens, batch, seq);
            double worst = 0;
            double scale = 0;
            for (int i = 0; i < want.length; i++) {
                worst = Math.max(worst, Math.abs(want[i] - got[i]));
                scale = Math.max(scale, Math.abs(want[i]));
            }
            assertWithMessage("seq %s: largest logit difference (logits up to %s)", seq, scale).that(worst).isAtMost(tolerance);
            assertThat(scale).isGreaterThan(0.1); // not trivially zero
        }
    }

    @Test
    void granularSplitComputesTheDenseFunction() throws Exception {
        Weights w = trainedDense(1);
        TrainableModel split = model("Split", 2);
        List<String> left = Upcycle.split(w, split.parameters(), 4);
        assertThat(left).isEmpty();
        assertSameFunction(loaded("Dense", w), split, 1e-5);
        // and the experts' slices put back side by side are the dense FFN
        float[] gate = w.get("layers.1.ffn.gate"); // [32, 16]
        for (int e = 0; e < 4; e++) {
            float[] slice = param(split, "layers.1.moe.experts." + e + ".gate").values(); // [8, 16]
            for (int i = 0; i < slice.length; i++) {
                assertThat(slice[i]).isEqualTo(gate[e * 8 * 16 + i]);
            }
        }
    }

    @Test
    void splitWithASharedSliceComputesTheDenseFunction() throws Exception {
        Weights w = trainedDense(3);
        TrainableModel split = model("SharedSplit", 4);
        assertThat(Upcycle.split(w, split.parameters(), 4)).isEmpty();
        assertSameFunction(loaded("Dense", w), split, 1e-5);
    }

    @Test
    void copiesWithoutNoiseComputeTheDenseFunctionAndNoiseMakesThemDiffer() throws Exception {
        Weights w = trainedDense(5);
        TrainableModel copied = model("Copied", 6);
        List<String> left = Upcycle.copy(w, copied.parameters(), 0, 1);
        assertThat(left).containsExactly("layers.0.moe.router.weight", "layers.1.moe.router.weight");
        assertSameFunction(loaded("Dense", w), copied, 1e-5);

        TrainableModel noisy = model("Copied", 6);
        Upcycle.copy(w, noisy.parameters(), 0.01, 1);
        float[] a = param(noisy, "layers.0.moe.experts.0.up").values();
        float[] b = param(noisy, "layers.0.moe.experts.1.up").values();
        float[] dense = w.get("layers.0.ffn.up");
        double rel = 0;
        for (int i = 0; i < a.length; i++) {
            rel = Math.max(rel, Math.abs(a[i] - dense[i]) / Math.abs(dense[i]));
        }
        assertThat(a).isNotEqualTo(b);
        assertThat(rel).isGreaterThan(0.005);
        assertThat(rel).isLessThan(0.1); // 1% noise: a few standard deviations at most
    }

    @Test
    void scaleUpIsFunctionPreservingInWidthHeadsHiddenAndDepth() throws Exception {
        Weights w = trainedDense("SmallDense", 7);
        TrainableModel wide = model("Wide", 8);
        Upcycle.scaleUp(w, wide.parameters(), 16, 32);
        assertSameFunction(loaded("SmallDense", w), wide, 1e-5);
        assertThat(param(wide, "layers.2.ffn.down").values()).isEqualTo(new float[32 * 64]); // a new layer is the identity
        float[] q = param(wide, "layers.0.attn.q").values(); // [32, 32]: new heads and input columns keep their init
        assertThat(q[31 * 32 + 31]).isNotEqualTo(0f);
    }

    @Test
    void extendKeepsTheTrainedExpertsAndRouterRows() throws Exception {
        TrainableModel old = model("Copied", 9);
        Path file = dir.resolve("copied.safetensors");
        Checkpoint.save(file, old.parameters(), null, Map.of("model", "Copied"));
        TrainableModel extended = model("Extended", 10);
        List<String> left = Upcycle.extend(Weights.read(file), extended.parameters());
        assertThat(left).contains("layers.0.moe.experts.5.up");
        assertThat(left).contains("layers.0.moe.router.weight (new rows)");
        for (Parameter p : old.parameters()) {
            float[] now = param(extended, p.name()).values();
            float[] before = p.values();
            for (int i = 0; i < before.length; i++) {
                assertWithMessage(p.name()).that(now[i]).isEqualTo(before[i]); // router: the first 4 rows
            }
        }
    }

    @Test
    void mergeMakesEachSpecialistsFfnAnExpertAndAveragesTheRest() throws Exception {
        Weights a = trainedDense(11);
        Weights b = trainedDense(12);
        TrainableModel merged = model("Copied", 13);
        Upcycle.merge(List.of(a, b), merged.parameters());
        assertThat(param(merged, "layers.1.moe.experts.0.down").values()).isEqualTo(a.get("layers.1.ffn.down"));
        assertThat(param(merged, "layers.1.moe.experts.1.down").values()).isEqualTo(b.get("layers.1.ffn.down"));
        assertThat(param(merged, "layers.1.moe.experts.2.down").values()).isEqualTo(a.get("layers.1.ffn.down"));
        float[] q = param(merged, "layers.0.attn.q").values();
        for (int i = 0; i < q.length; i++) {
            assertThat((double) q[i]).isWithin(1e-6).of((a.get("layers.0.attn.q")[i] + (double) b.get("layers.0.attn.q")[i]) / 2);
        }
    }

    @Test
    void diversifyMasksEachSpawnedExpertDifferently() throws Exception {
        Weights w = trainedDense(14);
        TrainableModel spawned = model("Copied", 15);
        Upcycle.diversify(w, spawned.parameters(), 0, 0.25, 3);
        float[] dense = w.get("layers.0.ffn.gate");
        float[] e0 = param(spawned, "layers.0.moe.experts.0.gate").values();
        float[] e1 = param(spawned, "layers.0.moe.experts.1.gate").values();
        int masked = 0;
        for (int i = 0; i < dense.length; i++) {
            assertThat(e0[i] == 0f || e0[i] == dense[i]).isTrue();
            masked += e0[i] == 0f ? 1 : 0;
        }
        assertThat((double) masked / dense.length).isWithin(0.06).of(0.25);
        assertThat(e0).isNotEqualTo(e1);
    }

    private static Parameter param(TrainableModel m, String name) {
        return m.parameters().stream().filter(p -> p.name().equals(name)).findFirst().orElseThrow(() -> new AssertionError("no " + name));
    }
}
