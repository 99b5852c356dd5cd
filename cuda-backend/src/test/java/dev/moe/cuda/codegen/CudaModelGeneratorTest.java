package dev.moe.cuda.codegen;

import static com.google.common.truth.Truth.assertThat;
import static com.google.common.truth.Truth.assertWithMessage;

import dev.moe.compiler.MoeCompiler;
import dev.moe.compiler.ir.Model;
import dev.moe.cuda.model.DeviceModel;
import dev.moe.cuda.model.DeviceModels;
import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.TreeMap;
import java.util.stream.Stream;
import org.junit.jupiter.api.Test;

/**
 * The device-resident generator on every recipe, without a GPU: each model either compiles as a
 * {@link DeviceModel} subclass together with its CPU host class, or is refused with a reason that
 * names the feature. Running the generated classes is {@code DeviceModelParity}'s job on a GPU.
 */
class CudaModelGeneratorTest {
    private static final Path RECIPES = Path.of("..", "recipes");

    private static List<Model> models(Path file) {
        return MoeCompiler.compile(file).orThrow().models();
    }

    @Test
    void everySupportedRecipeCompilesAndTheOthersSayWhy() throws IOException {
        Map<String, String> outcome = new TreeMap<>();
        List<Path> files;
        try (Stream<Path> s = Files.list(RECIPES)) {
            files = s.filter(p -> p.toString().endsWith(".moe")).sorted().toList();
        }
        assertThat(files).isNotEmpty();
        for (Path file : files) {
            for (Model m : models(file)) {
                var why = CudaModelGenerator.unsupported(m);
                if (why.isPresent()) {
                    assertThat(why.get()).isNotEmpty();
                    outcome.put(file.getFileName() + "/" + m.name(), "refused: " + why.get());
                    continue;
                }
                DeviceModels.Classes classes = DeviceModels.compile(m, file.getFileName().toString());
                assertThat(DeviceModel.class.isAssignableFrom(classes.device())).isTrue();
                outcome.put(file.getFileName() + "/" + m.name(), "device-resident");
            }
        }
        List<String> resident = new ArrayList<>();
        outcome.forEach((k, v) -> {
            if (v.equals("device-resident")) {
                resident.add(k);
            }
        });
        assertWithMessage("outcomes: %s", outcome).that(resident).containsAtLeast("mixtral.moe/MixtralTiny", "deepseek-moe.moe/DeepSeekMoETiny",
                "switch.moe/SwitchTiny");
        assertThat(outcome.get("deepseek-v3.moe/DeepSeekV3Tiny")).contains("multi-head latent attention");
    }

    @Test
    void theParityCheckSigmoidModelIsDeviceResident() {
        for (Model m : dev.moe.cuda.model.DeviceModelParity.sigmoidModels()) {
            assertThat(CudaModelGenerator.unsupported(m)).isEmpty();
            DeviceModels.compile(m, "sigmoid-tiny.moe");
        }
    }

    /** The parity check's models of the dense features (LayerNorm, qk-norm both ways, q/k/v biases, ungated FFNs) compile device-resident. */
    @Test
    void theParityCheckDenseFeatureModelsAreDeviceResident() {
        List<Model> models = dev.moe.cuda.model.DeviceModelParity.denseFeatureModels();
        assertThat(models).hasSize(2);
        for (Model m : models) {
            assertThat(CudaModelGenerator.unsupported(m)).isEmpty();
            DeviceModels.Classes classes = DeviceModels.compile(m, "dense-features.moe");
            assertThat(DeviceModel.class.isAssignableFrom(classes.device())).isTrue();
        }
    }

    /** Each new feature is used by the generated code with the CPU class's parameters (names the CPU model owns). */
    @Test
    void theDenseFeaturesAreGeneratedOnTheCpuModelsParameters() {
        Map<String, String> source = new TreeMap<>();
        for (Model m : dev.moe.cuda.model.DeviceModelParity.denseFeatureModels()) {
            source.put(m.name(), CudaModelGenerator.generate(m, "dev.moe.generated", "dense-features.moe").toString());
        }
        String ln = source.get("LayerNormTiny");
        assertThat(ln).contains("ops.layerNorm(a0Input, l0AttnNormWeight, l0AttnNormBias, a0Normed, a0Mean, a0Rstd, rows, DIM, EPS)");
        assertThat(ln).contains("ops.layerNormBackward(finalInput, finalNormWeight, finalMean, finalRstd, dNormed, dx, finalNormWeightGrad, "
                + "finalNormBiasGrad, rows, DIM)");
        assertThat(ln).contains("w.value(\"layers.0.ffn_norm.bias\")");
        assertThat(ln).doesNotContain("rmsNorm(a0Input");
        // qk_norm full: one norm over each token's q and k
        assertThat(ln).contains("ops.rmsNorm(a0QRaw, l0AttnQNorm, a0Q, a0QRstd, rows, Q_DIM, EPS)");
        assertThat(ln).contains("ops.rmsNormBackward(a0KRaw, l0AttnKNorm, a0KRstd, dk, dkRaw, l0AttnKNormGrad, rows, KV_DIM)");
        assertThat(ln).contains("ops.addBias(a0QRaw, l0AttnQBias, rows, Q_DIM)");
        assertThat(ln).contains("ops.addBias(a0V, l0AttnVBias, rows, KV_DIM)");
        assertThat(ln).contains("ops.biasBackward(dqRaw, l0AttnQBiasGrad, rows, Q_DIM)");
        assertThat(ln).contains("ops.biasBackward(dv, l0AttnVBiasGrad, rows, KV_DIM)");
        assertThat(ln).contains("ops.activation(Activation.RELU, f0Up, f0Act, (long) rows * 80)");
        assertThat(ln).contains("ops.activationBackward(Activation.GELU, f2Up, dAct, dUp, (long) rows * 72)");
        assertThat(ln).contains("ops.activation(Activation.GELU, f1S0Up, f1S0Act, (long) rows * 40)");
        assertThat(ln).doesNotContain("l0FfnGate");
        String qk = source.get("QkNormTiny");
        // per-head qk-norm: rows * heads rows of one head's width, k over the key/value heads
        assertThat(qk).contains("ops.rmsNorm(a0QRaw, l0AttnQNorm, a0Q, a0QRstd, rows * HEADS, HEAD_DIM, EPS)");
        assertThat(qk).contains("ops.rmsNorm(a0KRaw, l0AttnKNorm, a0K, a0KRstd, rows * KV_HEADS, HEAD_DIM, EPS)");
        assertThat(qk).contains("a0QRstd = allocate((long) rows * HEADS)");
        assertThat(qk).contains("a0KRstd = allocate((long) rows * KV_HEADS)");
        assertThat(qk).contains("ops.rmsNorm(finalInput, finalNormWeight, finalNormed, finalRstd, rows, DIM, EPS)");
        assertThat(qk).contains("linearBackward(a1Normed, l1AttnQ, dqRaw, dNormed, l1AttnQGrad, rows, DIM, Q_DIM, true)");
    }

    @Test
    void theRefusalsNoLongerNameTheDenseFeatures() {
        for (Model m : dev.moe.cuda.model.DeviceModelParity.denseFeatureModels()) {
            assertThat(CudaModelGenerator.unsupported(m)).isEmpty();
        }
        // pr-moe has layer norm and an ungated dense FFN; what keeps it on the hybrid path is its residual block
        Model pr = models(RECIPES.resolve("pr-moe.moe")).getFirst();
        assertThat(CudaModelGenerator.unsupported(pr).orElseThrow()).contains("residual block");
    }

    /** switch.moe (routed relu experts, top-1, capacity factor 1.25 by position) runs device-resident, its options in the layer's spec. */
    @Test
    void switchIsDeviceResident() {
        Model sw = models(RECIPES.resolve("switch.moe")).getFirst();
        assertThat(CudaModelGenerator.unsupported(sw)).isEmpty();
        DeviceModels.Classes classes = DeviceModels.compile(sw, "switch.moe");
        assertThat(DeviceModel.class.isAssignableFrom(classes.device())).isTrue();
        String src = CudaModelGenerator.generate(sw, "dev.moe.generated", "switch.moe").toString();
        assertThat(src).contains("new MoeKernelSource.Spec(DIM, 512, 8, 0, 0, 1, MoeKernelSource.Score.SOFTMAX, false, 1.0f, false, ctx.expertPrecision, "
                + "MoeKernelSource.Options.NONE.withActivation(MoeKernelSource.ExpertActivation.RELU).withCapacity(1.25f, MoeKernelSource.Drop.POSITION))");
        // ungated experts: w13 is the up rows, one block per expert, then the down projections
        assertThat(src).contains("\"layers.1.moe.experts.0.up\", \"layers.1.moe.experts.1.up\"");
        assertThat(src).contains("\"layers.1.moe.experts.7.up\", \"layers.1.moe.experts.0.down\"");
        assertThat(src).doesNotContain("experts.0.gate");
        assertThat(src).contains("w.value(\"layers.1.moe.experts.0.up\"), w.value(\"layers.1.moe.experts.0.down\")");
        // drops in training forwards only, the aux loss's f over the kept slots, loads by sequence without the dropped slots
        assertThat(src).contains("moe1.setTraining(counting)");
        assertThat(src).contains("slots1 += counts1[ex]");
        assertThat(src).contains("stepSlots1 += slots1");
        assertThat(src).contains("double fe = (double) counts1[ex] / slots1");
        assertThat(src).contains("int[] rowOf1 = moe1.lastPositions()");
        assertThat(src).contains("if (rowOf1[slot] >= 0)");
    }

    @Test
    void theParityCheckExpertModelsAreDeviceResident() {
        List<Model> models = dev.moe.cuda.model.DeviceModelParity.expertModels();
        assertThat(models).hasSize(2);
        Map<String, String> source = new TreeMap<>();
        for (Model m : models) {
            assertWithMessage("%s", m.name()).that(CudaModelGenerator.unsupported(m)).isEmpty();
            DeviceModels.Classes classes = DeviceModels.compile(m, "experts-tiny.moe");
            assertThat(DeviceModel.class.isAssignableFrom(classes.device())).isTrue();
            source.put(m.name(), CudaModelGenerator.generate(m, "dev.moe.generated", "experts-tiny.moe").toString());
        }
        String act = source.get("ExpertActivationsTiny");
        assertThat(act).contains("Options.NONE.withActivation(MoeKernelSource.ExpertActivation.GELU).withCapacity(1.0f, MoeKernelSource.Drop.PROBABILITY))");
        assertThat(act).contains("Options.NONE.withActivation(MoeKernelSource.ExpertActivation.GEGLU))");
        assertThat(act).contains("\"layers.2.moe.experts.0.gate\", \"layers.2.moe.experts.0.up\", \"layers.2.moe.experts.1.gate\"");
        // global batch aux over the kept slots; a dropless layer's slots are rows · k
        assertThat(act).contains("double fe = stepSlots0 > 0 ? (double) stepCounts0[ex] / stepSlots0 : (double) counts0[ex] / slots0");
        assertThat(act).contains("moe1.setTraining(counting)");
        assertThat(act).contains("slots2 = (long) rows * 2");
        assertThat(act).doesNotContain("moe2.setTraining");
    }

    /** What the device path still refuses of the expert options: random drops. */
    @Test
    void randomDropsAreRefused() {
        String text = dev.moe.cuda.model.DeviceModelParity.EXPERTS_MODEL.replace("drop: position", "drop: random");
        Model m = dev.moe.dsl.SourceFile.decode("random.moe", text.getBytes(java.nio.charset.StandardCharsets.UTF_8)) instanceof
                dev.moe.dsl.SourceFile.ReadResult.Ok ok ? dev.moe.compiler.MoeCompiler.compile(ok.source()).orThrow().models().getFirst() : null;
        assertThat(CudaModelGenerator.unsupported(m).orElseThrow()).contains("capacity factor that drops at random");
    }

    @Test
    void fieldNamesAreCamelCase() {
        assertThat(CudaModelGenerator.field("layers.12.attn_norm.weight")).isEqualTo("l12AttnNormWeight");
        assertThat(CudaModelGenerator.field("embed.weight")).isEqualTo("embedWeight");
        assertThat(CudaModelGenerator.field("layers.3.moe.router.expert_bias")).isEqualTo("l3MoeRouterExpertBias");
    }
}
