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
                // top-p with an entropy loss; top-p with an annealed tanh temperature; MoGE quota groups
                "dynamic-top-p.moe/DynamicTopPTiny", "evomoe-dts.moe/EvoMoETiny", "pangu-moge.moe/PanguMoGETiny",
                // pre-gating (every router reads the embeddings)
                "read-me.moe/ReadMETiny",
                // relu experts, top-1 with a capacity factor
                "switch.moe/SwitchTiny",
                // shortcut blocks, copy experts with an expert bias
                "longcat-flash.moe/LongCatFlashTiny",
                // residual blocks, a pyramid of expert counts
                "pr-moe.moe/PRMoETiny",
                // expert-choice routing
                "expert-choice.moe/ExpertChoiceTiny",
                // several named gates, chosen per sequence by its domain
                "unimoe-audio-gates.moe/UniMoEAudioTiny",
                // MoE++: zero, copy and constant experts, gating residuals
                "moe-plus-plus.moe/MoEPlusPlusTiny",
                // MoLE's latent experts
                "mole.moe/MoLETiny",
                // MoLA: LoRA experts over a frozen base, a different count per layer
                "mola.moe/MoLATiny",
                // RMoE: recurrent routers sharing one GRU
                "rmoe.moe/RMoETiny");

        assertThat(outcome.get("deepseek-v3.moe/DeepSeekV3Tiny")).isEqualTo("device-resident");
    }

    @Test
    void theParityCheckSigmoidModelIsDeviceResident() {
        for (Model m : dev.moe.cuda.model.DeviceModelParity.sigmoidModels()) {
            assertThat(CudaModelGenerator.unsupported(m)).isEmpty();
            DeviceModels.compile(m, "sigmoid-tiny.moe");
        }
    }

    /**
     * Random capacity drops are device-resident: a training forward hands the layer the seed of the CPU class's priorities
     * (JitterNoiseKernelTest checks the kernel draws the same floats), and the class counts micro-batches for it.
     */
    @Test
    void randomDropsAreDeviceResident() {
        Model m = dev.moe.cuda.model.DeviceModelParity.randomDropModels().getFirst();
        assertThat(CudaModelGenerator.unsupported(m)).isEmpty();
        DeviceModels.compile(m, "random-drops.moe");
        String src = CudaModelGenerator.generate(m, "dev.moe.generated", "random-drops.moe").toString();
        assertThat(src).contains("moe1.setDropSeed(jitterSeed(step, microBatch, 1) ^ 0x5DEECE66DL);");
        assertThat(src).contains(".withCapacity(1.25f, MoeKernelSource.Drop.RANDOM))");
        assertThat(src).contains("microBatch++;");
    }

    /** Closing a device model closes its MoE layers (their saved activations and pinned host buffers), then the model itself. */
    @Test
    void closingTheModelClosesItsMoeLayers() {
        Model m = dev.moe.cuda.model.DeviceModelParity.sigmoidModels().getFirst();
        String src = CudaModelGenerator.generate(m, "dev.moe.generated", "sigmoid-tiny.moe").toString();
        assertThat(src).contains("""
                    @Override
                    public void close() {
                        moe1.close();
                        moe2.close();
                        moe3.close();
                        super.close();
                    }
                """);
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

    /** The parity check's router-options model (top-p, entropy, annealed tanh temperature, quota, group-limited) is device-resident. */
    @Test
    void theParityCheckRouterOptionsModelIsDeviceResident() {
        List<Model> models = dev.moe.cuda.model.DeviceModelParity.routerOptionModels();
        assertThat(models).hasSize(3);
        Model m = models.getFirst();
        assertThat(CudaModelGenerator.unsupported(m)).isEmpty();
        DeviceModels.Classes classes = DeviceModels.compile(m, "router-options.moe");
        assertThat(DeviceModel.class.isAssignableFrom(classes.device())).isTrue();
        String source = CudaModelGenerator.generate(m, "dev.moe.generated", "router-options.moe").toString();
        assertThat(source).contains(".withTopP(0.45f).withEntropy()");
        assertThat(source).contains(".withTopP(0.8f).withTemperature(MoeKernelSource.LogitActivation.TANH)");
        assertThat(source).contains(".withQuotaGroups(2)");
        assertThat(source).contains(".withGroupLimit(4, 2)");
        // the annealed temperature as the CPU class computes it, from the step
        assertThat(source).contains("moe2.setTemperature((float) (2.0 + (0.5 - 2.0) * (double) Math.min(step, 200L) / 200))");
        // the aux loss's f over the slots top-p dispatched, the entropy loss from the layer's statistics
        assertThat(source).contains("double fe = (double) counts0[ex] / slots0");
        assertThat(source).contains("balance0 += 0.01 * stats[9] / rows");
        assertThat(source).contains("moe0.backwardInto(dx, scaled(aux0, scale), 0f, scale * 0.01f / rows, dNormed)");
        // pre-gating: the router reads the embeddings and sends its input gradient to them
        assertThat(source).contains("copy(embedded, stream, (long) rows * DIM)");
        assertThat(source).contains("moe4.forwardInto(f4Normed, embedded, rows, stream)");
        assertThat(source).contains("moe4.backwardInto(dx, scaled(aux4, scale), 0f, 0f, dNormed, dEmbedded)");
        assertThat(source).contains("ops.addInPlace(dx, dEmbedded, (long) rows * DIM)");
    }

    /**
     * Parallel blocks (their GPU parity check passed on 2026-12-02): the parity check's models compile device-resident, the FFN branch reads the attention's normed input (the block's one norm), both branches
     * read the block output's gradient, and each runs the shared norm's backward for its part.
     */
    @Test
    void parallelBlocksAreDeviceResident() {
        List<Model> models = dev.moe.cuda.model.DeviceModelParity.parallelModels();
        assertThat(models).hasSize(2);
        {
            for (Model m : models) {
                assertThat(CudaModelGenerator.unsupported(m)).isEmpty();
                DeviceModels.Classes classes = DeviceModels.compile(m, "parallel.moe");
                assertThat(DeviceModel.class.isAssignableFrom(classes.device())).isTrue();
            }
            String source = CudaModelGenerator.generate(models.getFirst(), "dev.moe.generated", "parallel.moe").toString();
            // layer 0: one norm, the dense FFN on the attention's normed input, no FFN norm
            assertThat(source).contains("ops.rmsNorm(a0Input, l0NormWeight, a0Normed, a0Rstd, rows, DIM, EPS)");
            assertThat(source).contains("linear(a0Normed, l0FfnGate, f0Gate, rows, DIM, 64, false)");
            assertThat(source).contains("linear(f0Act, l0FfnDown, stream, rows, 64, DIM, true)");
            assertThat(source).doesNotContain("l0FfnNorm");
            assertThat(source).contains("copy(p0DOut, dx, (long) rows * DIM)");
            assertThat(source).contains("linearBackward(f0Act, l0FfnDown, p0DOut, dAct, l0FfnDownGrad, rows, 64, DIM, false)");
            String normBackward = "ops.rmsNormBackward(a0Input, l0NormWeight, a0Rstd, dNormed, dx, l0NormWeightGrad, rows, DIM)";
            assertThat(source.split(java.util.regex.Pattern.quote(normBackward), -1).length - 1).isEqualTo(2);
            // layer 2: the MoE (and its shared expert) on the same normed input, from the kept output gradient
            // the shared expert runs beside the routed ones: handed to the layer, which queues it while its experts work
            assertThat(source).contains("moe2.forwardInto(a2Normed, a2Normed, rows, stream, shared2)");
            assertThat(source).contains("linear(a2Normed, l2MoeShared0Gate, f2S0Gate, rows, DIM, 24, false)");
            assertThat(source).contains("moe2.backwardInto(p2DOut, scaled(aux2, scale), scale * 0.001f / rows, 0f, dNormed, dNormed, dShared2)");
            // the pre-norm layer between them keeps its two norms
            assertThat(source).contains("moe1.forwardInto(f1Normed, f1Normed, rows, stream, shared1)");
            // the backward: the output gradient kept before the attention's backward adds its input gradient to dx
            String backward2 = source.substring(source.indexOf("private void backwardLayer2("));
            assertThat(backward2.indexOf("copy(p2DOut, dx")).isLessThan(backward2.indexOf("linearBackward(a2Att, l2AttnO, dx"));
            // LayerNorm: the shared norm's bias, in both branches' backward
            String ln = CudaModelGenerator.generate(models.get(1), "dev.moe.generated", "parallel.moe").toString();
            assertThat(ln).contains("ops.layerNorm(a0Input, l0NormWeight, l0NormBias, a0Normed, a0Mean, a0Rstd, rows, DIM, EPS)");
            assertThat(ln).contains("moe1.forwardInto(a1Normed, rows, stream)");
        }
    }

    /**
     * Shared experts are handed to the routed layer as work to run beside its experts (while an expert-parallel stage's rows
     * travel), forward and backward, once each: not also run after the layer.
     */
    @Test
    void sharedExpertsRunBesideTheRoutedExperts() throws IOException {
        Model m = compileText(Files.readString(RECIPES.resolve("deepseek-moe.moe"))).getFirst();
        String src = CudaModelGenerator.generate(m, "dev.moe.generated", "deepseek-moe.moe").toString();
        String forward = src.substring(src.indexOf("Runnable shared1 = () -> {"), src.indexOf("moe1.forwardInto("));
        assertThat(forward).contains("linear(f1Normed, l1MoeShared0Gate, f1S0Gate");
        assertThat(forward).contains("linear(f1Normed, l1MoeShared1Gate, f1S1Gate");
        assertThat(src).contains("moe1.forwardInto(f1Normed, f1Normed, rows, stream, shared1)");
        assertThat(src.split(java.util.regex.Pattern.quote("linear(f1Normed, l1MoeShared0Gate, f1S0Gate"), -1).length - 1).isEqualTo(1);
        String backward = src.substring(src.indexOf("Runnable dShared1 = () -> {"), src.indexOf("moe1.backwardInto("));
        assertThat(backward).contains("l1MoeShared0DownGrad");
        assertThat(src.split(java.util.regex.Pattern.quote("l1MoeShared0DownGrad,"), -1).length - 1).isEqualTo(1);
        assertThat(src).containsMatch("moe1\\.backwardInto\\(dx, [^;]*, dNormed, dNormed, dShared1\\);");
    }

    /** The shortcut block's parity model is device-resident: the MoE reads ffn0's input, adds into its own buffer, joins at the end. */
    @Test
    void theShortcutBlockIsDeviceResident() {
        Model m = dev.moe.cuda.model.DeviceModelParity.blockModels().getFirst();
        assertThat(CudaModelGenerator.unsupported(m)).isEmpty();
        DeviceModels.Classes classes = DeviceModels.compile(m, "blocks.moe");
        assertThat(DeviceModel.class.isAssignableFrom(classes.device())).isTrue();
        String source = CudaModelGenerator.generate(m, "dev.moe.generated", "blocks.moe").toString();
        assertThat(source).contains("moe0.forwardInto(f0Normed, f0Normed, rows, s0MoeOut, shared0)");
        assertThat(source).contains("ops.addInPlace(stream, s0MoeOut, (long) rows * DIM)");
        assertThat(source).contains("copy(s0DMoeOut, dx, (long) rows * DIM)");
        assertThat(source).contains("moe0.backwardInto(s0DMoeOut, null, scale * 0.001f / rows, 0f, dNormed, dNormed, dShared0)");
        // the shared expert's output joins the MoE's, and its backward reads the same output gradient
        assertThat(source).contains("linear(f0S0Act, l0MoeShared0Down, s0MoeOut, rows, 24, DIM, true)");
        assertThat(source).contains("linearBackward(f0S0Act, l0MoeShared0Down, s0DMoeOut, dAct, l0MoeShared0DownGrad, rows, 24, DIM, false)");
        for (String prefix : List.of("attn0", "attn1")) {
            assertThat(source).contains("w.value(\"layers.1." + prefix + ".q\")");
        }
        assertThat(source).contains("w.value(\"layers.1.ffn1.down\")");
    }

    /** Expert choice: every token ranks every expert (k = E) and the layer keeps each expert's best tokens per sequence. */
    @Test
    void expertChoiceIsDeviceResident() {
        Model m = dev.moe.cuda.model.DeviceModelParity.routerOptionModels().get(1);
        assertThat(CudaModelGenerator.unsupported(m)).isEmpty();
        DeviceModels.compile(m, "router-options.moe");
        String source = CudaModelGenerator.generate(m, "dev.moe.generated", "router-options.moe").toString();
        assertThat(source).contains("new MoeKernelSource.Spec(DIM, 32, 8, 0, 0, 8, MoeKernelSource.Score.SOFTMAX");
        assertThat(source).contains(".withExpertChoice(1.5f)");
        assertThat(source).contains("moe0.setSequenceLength(seq)");
        assertThat(source).doesNotContain("setTraining");
        assertThat(source).contains("int[] rowOf1 = moe1.lastPositions()");
    }

    /**
     * The CPU classes' dispatch record (which the GPU parity check compares slot by slot) agrees with their expert loads: a
     * capacity factor's dropped slots, top-p's unused slots and expert choice's unpicked slots go nowhere.
     */
    @Test
    void theCpuDispatchAgreesWithTheLoads() {
        for (String recipe : List.of("switch.moe", "dynamic-top-p.moe", "expert-choice.moe", "moe-plus-plus.moe")) {
            Model m = models(RECIPES.resolve(recipe)).getFirst();
            dev.moe.runtime.TrainableModel cpu = DeviceModels.compile(m, recipe).createHost(new dev.moe.runtime.cpu.CpuBackend(2,
                    dev.moe.runtime.cpu.CpuBackend.VECTOR_API));
            cpu.initialize(3);
            cpu.beginStep();
            int batch = 2, seq = 32;
            int[] in = new int[batch * seq];
            java.util.SplittableRandom rng = new java.util.SplittableRandom(7);
            for (int i = 0; i < in.length; i++) {
                in[i] = rng.nextInt(m.config().vocab());
            }
            cpu.forward(in, in, batch, seq);
            int[][] dispatch = cpu.lastDispatch();
            int[][] loads = cpu.expertLoads();
            assertWithMessage(recipe).that(dispatch).hasLength(loads.length);
            int nowhere = 0;
            for (int l = 0; l < loads.length; l++) {
                int[] counted = new int[loads[l].length];
                for (int ex : dispatch[l]) {
                    if (ex < 0) {
                        nowhere++;
                    } else {
                        counted[ex]++;
                    }
                }
                assertWithMessage("%s layer %s", recipe, l).that(counted).isEqualTo(loads[l]);
            }
            if (!recipe.equals("moe-plus-plus.moe")) {
                assertWithMessage("%s sends some slots nowhere", recipe).that(nowhere).isGreaterThan(0);
            }
        }
    }

    /** Named gates: each gate's router weights are set on the layer, and each forward gives the gate of every sequence. */
    @Test
    void namedGatesAreDeviceResident() {
        Model m = dev.moe.cuda.model.DeviceModelParity.routerOptionModels().get(2);
        assertThat(m.name()).isEqualTo("NamedGatesTiny");
        assertThat(CudaModelGenerator.unsupported(m)).isEmpty();
        DeviceModels.compile(m, "router-options.moe");
        String source = CudaModelGenerator.generate(m, "dev.moe.generated", "router-options.moe").toString();
        assertThat(source).contains("moe1.setGates(new long[] {w.value(\"layers.1.moe.router.speech.weight\"), w.value(\"layers.1.moe.router.music.weight\")}, "
                + "new long[] {w.grad(\"layers.1.moe.router.speech.weight\"), w.grad(\"layers.1.moe.router.music.weight\")})");
        assertThat(source).contains("moe1.setSequenceGates(gatesOfSequences(new String[] {\"speech\", \"music\"}, batch), seq)");
    }

    /** Gates that differ beyond their weights stay on the hybrid path, with the reason. */
    @Test
    void gatesThatDifferInTheirOptionsAreRefused() {
        String text = dev.moe.cuda.model.DeviceModelParity.ROUTER_OPTIONS_MODEL.replace("router music {\n    top_p 0.6", "router music {\n    top_p 0.8");
        assertThat(text).contains("top_p 0.8");
        Model m = dev.moe.compiler.MoeCompiler.compile(((dev.moe.dsl.SourceFile.ReadResult.Ok) dev.moe.dsl.SourceFile.decode("g.moe",
                text.getBytes(java.nio.charset.StandardCharsets.UTF_8))).source()).orThrow().models().get(2);
        assertThat(CudaModelGenerator.unsupported(m).orElseThrow()).contains("named gates that differ beyond their weights");
    }

    /** PR-MoE's residual block mixes the dense FFN's and the MoE's outputs per token; both read the same normed input. */
    @Test
    void theResidualBlockIsDeviceResident() {
        Model m = dev.moe.cuda.model.DeviceModelParity.blockModels().get(2);
        assertThat(m.name()).isEqualTo("ResidualTiny");
        assertThat(CudaModelGenerator.unsupported(m)).isEmpty();
        DeviceModels.compile(m, "blocks.moe");
        String source = CudaModelGenerator.generate(m, "dev.moe.generated", "blocks.moe").toString();
        assertThat(source).contains("moe1.forwardInto(f1Normed, rows, r1Moe)");
        assertThat(source).contains("linear(f1Normed, l1ResidualMix, r1Mix, rows, DIM, 2, false)");
        assertThat(source).contains("ops.residualMix(r1Mix, r1Moe, r1Dense, stream, rows, DIM)");
        assertThat(source).contains("ops.residualMixBackward(r1Mix, r1Moe, r1Dense, dx, r1DMoe, r1DDense, r1DMix, rows, DIM)");
        assertThat(source).contains("moe1.backwardInto(r1DMoe, scaled(aux1, scale), 0f, 0f, dNormed)");
        assertThat(source).contains("private int[] counts2 = new int[6]");
    }

    /** Zero and copy experts go to the GPU layer after the FFN experts, counted and balanced with them. */
    @Test
    void zeroAndCopyExpertsAreDeviceResident() {
        Model m = dev.moe.cuda.model.DeviceModelParity.blockModels().get(1);
        assertThat(m.name()).isEqualTo("ZeroCopyTiny");
        assertThat(CudaModelGenerator.unsupported(m)).isEmpty();
        DeviceModels.compile(m, "blocks.moe");
        String source = CudaModelGenerator.generate(m, "dev.moe.generated", "blocks.moe").toString();
        // FFN, zero and copy experts in the layer's spec
        assertThat(source).contains("new MoeKernelSource.Spec(DIM, 32, 6, 1, 2, 2, MoeKernelSource.Score.SOFTMAX");
        assertThat(source).contains("new MoeKernelSource.Spec(DIM, 32, 8, 0, 4, 3, MoeKernelSource.Score.SOFTMAX");
        // counts, aux (with MoE++'s tau for the zero-computation experts) and the bias over every routed expert
        assertThat(source).contains("private int[] counts0 = new int[9]");
        assertThat(source).contains("double eta = ex < 6 ? 1.0 : 0.75");
        assertThat(source).contains("for (int ex = 0; ex < 12; ex++)");
        assertThat(source).contains("double mean2 = (double) stepSlots2 / 12");
    }

    /** moe-plus-plus.moe (FFN, zero, copy and constant experts; gating residuals from the second MoE layer on) is device-resident. */
    @Test
    void moePlusPlusIsDeviceResident() {
        Model m = models(RECIPES.resolve("moe-plus-plus.moe")).getFirst();
        assertThat(CudaModelGenerator.unsupported(m)).isEmpty();
        DeviceModels.Classes classes = DeviceModels.compile(m, "moe-plus-plus.moe");
        assertThat(DeviceModel.class.isAssignableFrom(classes.device())).isTrue();
        String src = CudaModelGenerator.generate(m, "dev.moe.generated", "moe-plus-plus.moe").toString();
        // 8 FFN, 1 zero, 1 copy, 2 constant experts; every layer's logits touch a gating residual (the first feeds the second)
        for (int l = 0; l < 4; l++) {
            assertThat(src).contains("moe" + l + " = CudaMoeLayer.onExternalWeights(ctx, new MoeKernelSource.Spec(DIM, 256, 8, 1, 1, 2, 2, "
                    + "MoeKernelSource.Score.SOFTMAX, false, 1.0f, false, ctx.expertPrecision, MoeKernelSource.Options.NONE.withGatingResidual())");
            // the constant experts' vectors and mix weights, contiguous in the arena after the experts
            assertThat(src).contains("\"layers." + l + ".moe.experts.10.vector\", \"layers." + l + ".moe.experts.11.vector\", \"layers." + l
                    + ".moe.experts.10.mix\", \"layers." + l + ".moe.experts.11.mix\"");
            assertThat(src).contains("moe" + l + ".setConstantExperts(w.value(\"layers." + l + ".moe.experts.10.vector\"), w.value(\"layers." + l
                    + ".moe.experts.10.mix\"), w.grad(\"layers." + l + ".moe.experts.10.vector\"), w.grad(\"layers." + l + ".moe.experts.10.mix\"))");
            assertThat(src).contains("private int[] counts" + l + " = new int[12]");
        }
        // each layer after the first adds the previous one's logits; the first has no residual
        for (int l = 1; l < 4; l++) {
            assertThat(src).contains("moe" + l + ".setResidualFrom(moe" + (l - 1) + ", w.value(\"layers." + l + ".moe.router.residual\"), w.grad(\"layers."
                    + l + ".moe.router.residual\"))");
        }
        assertThat(src).doesNotContain("moe0.setResidualFrom");
        assertThat(src).doesNotContain("layers.0.moe.router.residual");
        // the aux loss weighs the zero-computation experts (zero, copy and constant) by tau
        assertThat(src).contains("double eta = ex < 8 ? 1.0 : 0.75");
        assertThat(src).contains("for (int ex = 0; ex < 12; ex++)");
    }

    /** The parity model of constant experts and gating residuals (MoEs of different widths) compiles device-resident. */
    @Test
    void theParityCheckMoePlusPlusModelIsDeviceResident() {
        List<Model> models = dev.moe.cuda.model.DeviceModelParity.moeppModels();
        assertThat(models).hasSize(1);
        Model m = models.getFirst();
        assertThat(m.name()).isEqualTo("ConstantResidualTiny");
        assertThat(CudaModelGenerator.unsupported(m)).isEmpty();
        DeviceModels.compile(m, "moepp.moe");
        String src = CudaModelGenerator.generate(m, "dev.moe.generated", "moepp.moe").toString();
        assertThat(src).contains("new MoeKernelSource.Spec(DIM, 32, 6, 1, 1, 2, 2, MoeKernelSource.Score.SOFTMAX");
        assertThat(src).contains("new MoeKernelSource.Spec(DIM, 32, 4, 0, 1, 3, 3, MoeKernelSource.Score.SOFTMAX");
        assertThat(src).contains("moe1.setResidualFrom(moe0, w.value(\"layers.1.moe.router.residual\")");
        assertThat(src).contains("moe2.setResidualFrom(moe1, w.value(\"layers.2.moe.router.residual\")");
        assertThat(src).contains("moe1.setConstantExperts(w.value(\"layers.1.moe.experts.5.vector\")");
    }

    /** mola.moe (2, 4, 6 and 8 LoRA experts of rank 8, alpha 16, over a frozen swiglu base per layer) runs on the LoRA layer. */
    @Test
    void molaIsDeviceResident() {
        Model m = models(RECIPES.resolve("mola.moe")).getFirst();
        assertThat(CudaModelGenerator.unsupported(m)).isEmpty();
        DeviceModels.Classes classes = DeviceModels.compile(m, "mola.moe");
        assertThat(DeviceModel.class.isAssignableFrom(classes.device())).isTrue();
        String src = CudaModelGenerator.generate(m, "dev.moe.generated", "mola.moe").toString();
        int[] experts = {2, 4, 6, 8};
        for (int l = 0; l < 4; l++) {
            String pre = "layers." + l + ".moe.";
            assertThat(src).contains("private final CudaLoraMoeLayer moe" + l + ";");
            // fp32 whatever the expert precision; scale alpha / rank = 2
            assertThat(src).contains("moe" + l + " = new CudaLoraMoeLayer(ctx, new MoeKernelSource.Spec(DIM, 256, " + experts[l] + ", 0, 0, 2, "
                    + "MoeKernelSource.Score.SOFTMAX, true, 1.0f, false, MoeKernelSource.Precision.FP32, MoeKernelSource.Options.NONE), 8, 2.0f, "
                    + "new CudaLoraMoeLayer.Weights(w.value(\"" + pre + "router.weight\"), w.grad(\"" + pre + "router.weight\"), 0L, ");
            for (String proj : List.of("gate", "up", "down")) {
                assertThat(src).contains("loraProjection(\"" + pre + "group0.base." + proj + "\", \"" + pre + "experts.\", " + experts[l] + ", \""
                        + proj + "\")");
            }
            assertThat(src).contains("moe" + l + ".forwardInto(f" + l + "Normed, rows, stream)");
            assertThat(src).contains("moe" + l + ".backwardInto(dx, scaled(aux" + l + ", scale), 0f, 0f, dNormed)");
        }
        // no expert weights are packed for the FFN layer
        assertThat(src).contains("PLACED_FIRST = List.of()");
    }

    /** The LoRA parity model: gated and ungated bases, a shared expert, sigmoid scores with a bias and a scale, the z-loss. */
    @Test
    void theParityCheckLoraModelIsDeviceResident() {
        List<Model> models = dev.moe.cuda.model.DeviceModelParity.loraModels();
        assertThat(models).hasSize(1);
        Model m = models.getFirst();
        assertThat(CudaModelGenerator.unsupported(m)).isEmpty();
        DeviceModels.compile(m, "lora.moe");
        String src = CudaModelGenerator.generate(m, "dev.moe.generated", "lora.moe").toString();
        // alpha 6 / rank 4
        assertThat(src).contains("new MoeKernelSource.Spec(DIM, 40, 2, 0, 0, 2, MoeKernelSource.Score.SOFTMAX, true, 1.0f, false, "
                + "MoeKernelSource.Precision.FP32, MoeKernelSource.Options.NONE), 4, 1.5f");
        // the ungated base has no gate projection; the shared expert is group 0, so the LoRA group (and its base) is group 1
        assertThat(src).contains("new MoeKernelSource.Spec(DIM, 36, 8, 0, 0, 3, MoeKernelSource.Score.SIGMOID, true, 2.0f, true, "
                + "MoeKernelSource.Precision.FP32, MoeKernelSource.Options.NONE.withActivation(MoeKernelSource.ExpertActivation.GELU)), 3, 1.0f");
        assertThat(src).contains("w.value(\"layers.1.moe.router.expert_bias\"), null, loraProjection(\"layers.1.moe.group1.base.up\"");
        assertThat(src).contains("linear(f1Normed, l1MoeShared0Gate, f1S0Gate, rows, DIM, 24, false)");
        assertThat(src).contains("moe2.backwardInto(dx, null, scale * 0.001f / rows, 0f, dNormed)");
        assertThat(src).contains("uploadParameter(\"layers.1.moe.router.expert_bias\")");
    }

    /** What the LoRA layer does not take stays on the hybrid path: LoRA beside FFN experts, and routing that leaves slots without a row. */
    @Test
    void loraExpertsOutsideTheLayersRoutingAreRefused() {
        String beside = dev.moe.cuda.model.DeviceModelParity.LORA_MODEL.replace("""
                  routed 5 x lora(rank: 2, alpha: 4, base: swiglu(hidden: 32))
                """, """
                  routed 5 x lora(rank: 2, alpha: 4, base: swiglu(hidden: 32))
                  routed 2 x swiglu(hidden: 16)
                """);
        assertThat(CudaModelGenerator.unsupported(compileLoraText(beside)).orElseThrow()).contains("LoRA experts beside other routed experts");
        String topP = dev.moe.cuda.model.DeviceModelParity.LORA_MODEL.replace("""
                    top_k 1
                """, """
                    top_p 0.5
                    max_k 3
                """);
        assertThat(CudaModelGenerator.unsupported(compileLoraText(topP)).orElseThrow()).contains("LoRA experts with top-p");
    }

    private static Model compileLoraText(String text) {
        assertThat(text).isNotEqualTo(dev.moe.cuda.model.DeviceModelParity.LORA_MODEL);
        return dev.moe.dsl.SourceFile.decode("lora.moe", text.getBytes(java.nio.charset.StandardCharsets.UTF_8)) instanceof
                dev.moe.dsl.SourceFile.ReadResult.Ok ok ? dev.moe.compiler.MoeCompiler.compile(ok.source()).orThrow().models().getFirst() : null;
    }

    /**
     * rmoe.moe: the recurrent routers' GRU runs in the generated code, as the CPU class's: the state starts at 0, each recurrent
     * layer steps the shared cell and hands h · gru_outᵀ to its layer as extra logits; the backward takes the layer's fp32 logit
     * gradient and carries dGruState back to the recurrent layer before. The first layer's router is plain.
     */
    @Test
    void recurrentRoutersAreDeviceResident() {
        Model m = models(RECIPES.resolve("rmoe.moe")).getFirst();
        assertThat(CudaModelGenerator.unsupported(m)).isEmpty();
        DeviceModels.Classes classes = DeviceModels.compile(m, "rmoe.moe");
        assertThat(DeviceModel.class.isAssignableFrom(classes.device())).isTrue();
        String src = CudaModelGenerator.generate(m, "dev.moe.generated", "rmoe.moe").toString();
        assertThat(src).contains("static final int GRU_WIDTH = 32;");
        assertThat(src).contains("zero(gruState, (long) rows * GRU_WIDTH);\n        forwardLayer0();");
        assertThat(src).contains("zero(dGruState, (long) rows * GRU_WIDTH);");
        assertThat(src).contains("MoeKernelSource.Options.NONE.withExtraLogits())");
        assertThat(src).doesNotContain("moe0.setExtraLogits");
        assertThat(src).doesNotContain("l0MoeRouterGru");
        // forward: u, the previous state, the cell's two products, the cell, the new state, the extra logits
        assertThat(src).contains("""
                        linear(f1Normed, l1MoeRouterGruIn, gru1U, rows, DIM, GRU_WIDTH, false);
                        copy(gru1Prev, gruState, (long) rows * GRU_WIDTH);
                        linear(gru1U, routerGruWIh, gruGi, rows, GRU_WIDTH, 3 * GRU_WIDTH, false);
                        linear(gru1Prev, routerGruWHh, gruGh, rows, GRU_WIDTH, 3 * GRU_WIDTH, false);
                        ops.gruCell(gruGi, gruGh, routerGruBIh, routerGruBHh, gru1Prev, gru1Gates, gru1H, rows, GRU_WIDTH);
                        copy(gruState, gru1H, (long) rows * GRU_WIDTH);
                        linear(gru1H, l1MoeRouterGruOut, gru1Logits, rows, GRU_WIDTH, 8, false);
                        moe1.setExtraLogits(gru1Logits);
                        moe1.forwardInto(f1Normed, rows, stream);
                """);
        // backward, after the layer's: gru_out, the cell, its biases and products, the state's gradient for the layer before, gru_in
        assertThat(src).contains("""
                        moe5.backwardInto(dx, scaled(aux5, scale), 0f, 0f, dNormed);
                        // recurrent router backward: dh = dLogits · gru_out + what later recurrent layers sent back (in dGruState); through the GRU to u and the previous state; then gru_in
                        linearBackward(gru5H, l5MoeRouterGruOut, moe5.lastLogitGradient(), dGruState, l5MoeRouterGruOutGrad, rows, GRU_WIDTH, 8, true);
                        ops.gruCellBackward(dGruState, gru5Prev, gru5Gates, gruGi, gruGh, gruDPrev, rows, GRU_WIDTH);
                        ops.biasBackward(gruGi, routerGruBIhGrad, rows, 3 * GRU_WIDTH);
                        ops.biasBackward(gruGh, routerGruBHhGrad, rows, 3 * GRU_WIDTH);
                        linearBackward(gru5U, routerGruWIh, gruGi, gruDu, routerGruWIhGrad, rows, GRU_WIDTH, 3 * GRU_WIDTH, false);
                        linearBackward(gru5Prev, routerGruWHh, gruGh, gruDPrev, routerGruWHhGrad, rows, GRU_WIDTH, 3 * GRU_WIDTH, true);
                        copy(dGruState, gruDPrev, (long) rows * GRU_WIDTH);
                        linearBackward(f5Normed, l5MoeRouterGruIn, gruDu, dNormed, l5MoeRouterGruInGrad, rows, DIM, GRU_WIDTH, true);
                """);
        // the layers' backwards run last to first, so the state's gradient flows back across the MoE layers
        assertThat(src.indexOf("backwardLayer5(scale);")).isLessThan(src.indexOf("backwardLayer1(scale);"));
    }

    /** The parity model of recurrent routers: the state crosses a dense and a plain layer; a recurrent layer feeds a gating residual. */
    @Test
    void theParityCheckRecurrentModelIsDeviceResident() {
        List<Model> models = dev.moe.cuda.model.DeviceModelParity.recurrentModels();
        assertThat(models).hasSize(1);
        Model m = models.getFirst();
        assertThat(CudaModelGenerator.unsupported(m)).isEmpty();
        DeviceModels.compile(m, "recurrent.moe");
        String src = CudaModelGenerator.generate(m, "dev.moe.generated", "recurrent.moe").toString();
        assertThat(src).contains("static final int GRU_WIDTH = 12;");
        // layer 4 is recurrent and feeds layer 5's gating residual: both fp32 logit-gradient users on one layer
        assertThat(src).contains("new MoeKernelSource.Spec(DIM, 40, 4, 1, 0, 2, MoeKernelSource.Score.SOFTMAX, false, 1.0f, false, ctx.expertPrecision, "
                + "MoeKernelSource.Options.NONE.withActivation(MoeKernelSource.ExpertActivation.GELU).withGatingResidual().withExtraLogits())");
        assertThat(src).contains("moe5.setResidualFrom(moe4, w.value(\"layers.5.moe.router.residual\")");
        assertThat(src).contains("linear(gru4H, l4MoeRouterGruOut, gru4Logits, rows, GRU_WIDTH, 5, false);");
        for (int plain : new int[] {0, 3}) {
            assertThat(src).doesNotContain("moe" + plain + ".setExtraLogits");
        }
        assertThat(src).contains("moe1.setExtraLogits(gru1Logits);");
        assertThat(src).contains("moe5.setExtraLogits(gru5Logits);");
    }

    /**
     * Router jitter: a training forward uploads the host-drawn noise (the CPU class's seed: step, micro-batch, layer), multiplies
     * the router's input (the embeddings for pre-gating) by it and routes on that; the backward sends the router's input gradient
     * through the same noise. Inference forwards route on the plain input. The micro-batch counts training forwards since
     * beginStep and the step counts on at endStep, as on the CPU.
     */
    @Test
    void jitterIsDeviceResident() {
        List<Model> models = dev.moe.cuda.model.DeviceModelParity.jitterModels();
        assertThat(models).hasSize(1);
        Model m = models.getFirst();
        assertThat(CudaModelGenerator.unsupported(m)).isEmpty();
        DeviceModels.compile(m, "jitter.moe");
        String src = CudaModelGenerator.generate(m, "dev.moe.generated", "jitter.moe").toString();
        assertThat(src).contains("""
                        jitterOn0 = counting;
                        if (counting) {
                            ops.jitterNoise(j0Noise, (long) rows * DIM, jitterSeed(step, microBatch, 0), 0.2f);
                            ops.multiply(f0Normed, j0Noise, j0Input, (long) rows * DIM);
                            moe0.forwardInto(f0Normed, j0Input, rows, stream);
                        } else {
                            moe0.forwardInto(f0Normed, rows, stream);
                        }
                """);
        assertThat(src).contains("""
                        if (jitterOn0) {
                            zero(dJittered, (long) rows * DIM);
                            moe0.backwardInto(dx, scaled(aux0, scale), 0f, 0f, dNormed, dJittered);
                            // the router read the jittered input: d(input) += d(jittered) · noise
                            ops.addProduct(dNormed, dJittered, j0Noise, (long) rows * DIM);
                        } else {
                            moe0.backwardInto(dx, scaled(aux0, scale), 0f, 0f, dNormed);
                        }
                """);
        // pre-gating: the noise multiplies the embeddings, and the gradient goes back to them
        assertThat(src).contains("ops.multiply(embedded, j1Noise, j1Input, (long) rows * DIM);");
        assertThat(src).contains("moe1.forwardInto(f1Normed, embedded, rows, stream);");
        assertThat(src).contains("ops.addProduct(dEmbedded, dJittered, j1Noise, (long) rows * DIM);");
        // the recurrent router's GRU reads the input without noise
        assertThat(src).contains("linear(f2Normed, l2MoeRouterGruIn, gru2U, rows, DIM, GRU_WIDTH, false);");
        assertThat(src).contains("moe3.setSequenceGates(");
        assertThat(src).contains("ops.jitterNoise(j3Noise, (long) rows * DIM, jitterSeed(step, microBatch, 3), 0.2f);");
        assertThat(src).contains("if (counting) {\n            microBatch++;\n        }\n        return loss;");
        assertThat(src).contains("microBatch = 0;");
        assertThat(src).contains("step++;");
    }

    /**
     * The device model's host-drawn jitter noise is the CPU class's, float for float: at two steps, over a step's two training
     * forwards (the micro-batch counter) and for two layers; an evaluation forward neither draws noise nor counts a micro-batch.
     */
    @Test
    void theJitterNoiseIsTheCpuClasss() throws ReflectiveOperationException {
        Model m = dev.moe.cuda.model.DeviceModelParity.jitterModels().getFirst();
        dev.moe.runtime.TrainableModel cpu = DeviceModels.compile(m, "jitter.moe").createHost(new dev.moe.runtime.cpu.CpuBackend(2,
                dev.moe.runtime.cpu.CpuBackend.VECTOR_API));
        cpu.initialize(3);
        int batch = 2, seq = 16, dim = m.config().dim();
        int[] in = new int[batch * seq];
        for (int i = 0; i < in.length; i++) {
            in[i] = (7 * i + 3) % m.config().vocab();
        }
        int checked = 0;
        for (long step : new long[] {0, 41}) {
            cpu.setStep(step);
            cpu.beginStep();
            for (int micro = 0; micro < 2; micro++) {
                cpu.setTraining(false);
                cpu.forward(in, in, batch, seq);
                cpu.setTraining(true);
                cpu.forward(in, in, batch, seq);
                for (int layer : new int[] {0, 3}) {
                    java.lang.reflect.Field state = cpu.getClass().getDeclaredField("moe" + layer);
                    state.setAccessible(true);
                    Object moe = state.get(cpu);
                    java.lang.reflect.Field noise = moe.getClass().getDeclaredField("noise");
                    noise.setAccessible(true);
                    float[] cpuNoise = java.util.Arrays.copyOf((float[]) noise.get(moe), batch * seq * dim);
                    float[] hostNoise = DeviceModel.jitterNoise(batch * seq * dim, 0.2f, step, micro, layer);
                    assertWithMessage("step %s micro-batch %s layer %s", step, micro, layer).that(hostNoise).isEqualTo(cpuNoise);
                    checked++;
                }
            }
            cpu.endStep();
        }
        assertThat(checked).isEqualTo(8);
    }

    /** Named gates that differ in their jitter stay on the hybrid path, named. */
    @Test
    void gatesThatDifferInJitterAreRefused() {
        String text = dev.moe.cuda.model.DeviceModelParity.JITTER_MODEL.replace("""
                  router music {
                    top_k 2
                    jitter 0.2
                """, """
                  router music {
                    top_k 2
                    jitter 0.1
                """);
        assertThat(text).isNotEqualTo(dev.moe.cuda.model.DeviceModelParity.JITTER_MODEL);
        Model m = dev.moe.dsl.SourceFile.decode("jitter.moe", text.getBytes(java.nio.charset.StandardCharsets.UTF_8)) instanceof
                dev.moe.dsl.SourceFile.ReadResult.Ok ok ? dev.moe.compiler.MoeCompiler.compile(ok.source()).orThrow().models().getFirst() : null;
        assertThat(CudaModelGenerator.unsupported(m).orElseThrow()).contains("several named gates that differ beyond their weights");
    }

    /** MoE++ experts in another order than FFN, zero, copy, constant (the GPU router's row order) stay on the hybrid path. */
    @Test
    void constantExpertsBeforeCopyExpertsAreRefused() {
        String text = dev.moe.cuda.model.DeviceModelParity.MOEPP_MODEL.replace("""
                  routed 1 x copy
                  routed 3 x constant
                """, """
                  routed 3 x constant
                  routed 1 x copy
                """);
        assertThat(text).isNotEqualTo(dev.moe.cuda.model.DeviceModelParity.MOEPP_MODEL);
        Model m = dev.moe.dsl.SourceFile.decode("order.moe", text.getBytes(java.nio.charset.StandardCharsets.UTF_8)) instanceof
                dev.moe.dsl.SourceFile.ReadResult.Ok ok ? dev.moe.compiler.MoeCompiler.compile(ok.source()).orThrow().models().getFirst() : null;
        assertThat(CudaModelGenerator.unsupported(m).orElseThrow()).contains("then zero, copy and constant experts");
    }

    /**
     * mole.moe: the shared down-projection runs as a dense GEMM, the layer's experts read its output (rank wide) while the router
     * reads the normed input, and the backward sends the experts' input gradient through the projection.
     */
    @Test
    void moleIsDeviceResident() {
        Model m = models(RECIPES.resolve("mole.moe")).getFirst();
        assertThat(CudaModelGenerator.unsupported(m)).isEmpty();
        DeviceModels.Classes classes = DeviceModels.compile(m, "mole.moe");
        assertThat(DeviceModel.class.isAssignableFrom(classes.device())).isTrue();
        String src = CudaModelGenerator.generate(m, "dev.moe.generated", "mole.moe").toString();
        for (int l = 0; l < 4; l++) {
            assertThat(src).contains("moe" + l + " = CudaMoeLayer.onExternalWeights(ctx, new MoeKernelSource.Spec(DIM, 128, 8, 0, 0, 2, "
                    + "MoeKernelSource.Score.SOFTMAX, true, 1.0f, false, ctx.expertPrecision, MoeKernelSource.Options.NONE).withExpertIn(32), ");
            assertThat(src).contains("linear(f" + l + "Normed, l" + l + "MoeGroup0LatentDown, m" + l + "Latent, rows, DIM, 32, false)");
            assertThat(src).contains("moe" + l + ".forwardInto(m" + l + "Latent, f" + l + "Normed, rows, stream)");
            assertThat(src).contains("zero(m" + l + "DLatent, (long) rows * 32)");
            assertThat(src).contains("moe" + l + ".backwardInto(dx, scaled(aux" + l + ", scale), 0f, 0f, m" + l + "DLatent, dNormed)");
            assertThat(src).contains("linearBackward(f" + l + "Normed, l" + l + "MoeGroup0LatentDown, m" + l + "DLatent, dNormed, l" + l
                    + "MoeGroup0LatentDownGrad, rows, DIM, 32, true)");
            assertThat(src).contains("m" + l + "Latent = allocate((long) rows * 32)");
            assertThat(src).contains("w.value(\"layers." + l + ".moe.group0.latent_down\")");
            // the experts' gate and up rows [E, 2F, rank], then their down projections, contiguous in the arena
            assertThat(src).contains("\"layers." + l + ".moe.experts.7.gate\", \"layers." + l + ".moe.experts.7.up\", \"layers." + l
                    + ".moe.experts.0.down\"");
        }
        // the down-projection's backward follows the layer's (which fills d(z)) in each layer's backward
        int layer = src.indexOf("moe0.backwardInto(");
        assertThat(layer).isGreaterThan(0);
        assertThat(src.indexOf("linearBackward(f0Normed, l0MoeGroup0LatentDown", layer)).isGreaterThan(layer);
    }

    /** The parity model of latent experts (with a shared expert, pre-gating and a capacity factor, zero experts in a shortcut block). */
    @Test
    void theParityCheckLatentModelIsDeviceResident() {
        List<Model> models = dev.moe.cuda.model.DeviceModelParity.latentModels();
        assertThat(models).hasSize(1);
        Model m = models.getFirst();
        assertThat(CudaModelGenerator.unsupported(m)).isEmpty();
        DeviceModels.compile(m, "latent.moe");
        String src = CudaModelGenerator.generate(m, "dev.moe.generated", "latent.moe").toString();
        assertThat(src).contains(".withExpertIn(16)");
        // pre-gating: the router reads the embeddings and sends its gradient there; the experts read z
        assertThat(src).contains("moe1.forwardInto(m1Latent, embedded, rows, stream)");
        assertThat(src).contains("moe1.backwardInto(dx, scaled(aux1, scale), 0f, 0f, m1DLatent, dEmbedded)");
        assertThat(src).contains("MoeKernelSource.Options.NONE.withActivation(MoeKernelSource.ExpertActivation.GELU).withCapacity(1.0f, "
                + "MoeKernelSource.Drop.PROBABILITY)).withExpertIn(20)");
        // zero experts after the latent experts, in a shortcut block
        assertThat(src).contains("new MoeKernelSource.Spec(DIM, 40, 6, 2, 0, 2, MoeKernelSource.Score.SIGMOID");
        assertThat(src).contains("moe2.forwardInto(m2Latent, f2Normed, rows, s2MoeOut)");
        assertThat(src).contains("moe2.backwardInto(s2DMoeOut, null, 0f, 0f, m2DLatent, dNormed)");
    }

    /** Latent experts the GPU layer cannot run stay on the hybrid path, with the reason. */
    @Test
    void latentExpertsTheLayerCannotRunAreRefused() {
        String copy = dev.moe.cuda.model.DeviceModelParity.LATENT_MODEL.replace("routed 2 x zero", "routed 2 x copy");
        assertThat(CudaModelGenerator.unsupported(compileText(copy).getFirst()).orElseThrow()).contains("latent experts with copy or constant experts");
        String beside = dev.moe.cuda.model.DeviceModelParity.LATENT_MODEL.replace("routed 2 x zero", "routed 2 x swiglu(hidden: 32)");
        assertThat(CudaModelGenerator.unsupported(compileText(beside).getFirst()).orElseThrow()).contains("latent experts beside FFN");
        String gates = dev.moe.cuda.model.DeviceModelParity.LATENT_MODEL.replace("""
                  router {
                    score softmax
                    top_k 2
                    normalize true
                  }
                """, """
                  router speech {
                    top_k 2
                  }
                  router music {
                    top_k 2
                  }
                """);
        assertThat(gates).isNotEqualTo(dev.moe.cuda.model.DeviceModelParity.LATENT_MODEL);
        assertThat(CudaModelGenerator.unsupported(compileText(gates).getFirst()).orElseThrow()).contains("latent experts with several named gates");
    }

    private static List<Model> compileText(String text) {
        return dev.moe.compiler.MoeCompiler.compile(((dev.moe.dsl.SourceFile.ReadResult.Ok) dev.moe.dsl.SourceFile.decode("t.moe",
                text.getBytes(java.nio.charset.StandardCharsets.UTF_8))).source()).orThrow().models();
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
        // global batch aux over the kept slots; every layer's slots are the sum of its counts (rows · k when dropless)
        assertThat(act).contains("double fe = stepSlots0 > 0 ? (double) stepCounts0[ex] / stepSlots0 : (double) counts0[ex] / slots0");
        assertThat(act).contains("moe1.setTraining(counting)");
        assertThat(act).contains("slots2 += counts2[ex]");
        assertThat(act).doesNotContain("moe2.setTraining");
    }

    /** The expert options' parity model with random drops instead of drops by position is device-resident too. */
    @Test
    void theExpertsModelWithRandomDropsIsDeviceResident() {
        String text = dev.moe.cuda.model.DeviceModelParity.EXPERTS_MODEL.replace("drop: position", "drop: random");
        assertThat(text).isNotEqualTo(dev.moe.cuda.model.DeviceModelParity.EXPERTS_MODEL);
        Model m = dev.moe.dsl.SourceFile.decode("random.moe", text.getBytes(java.nio.charset.StandardCharsets.UTF_8)) instanceof
                dev.moe.dsl.SourceFile.ReadResult.Ok ok ? dev.moe.compiler.MoeCompiler.compile(ok.source()).orThrow().models().getFirst() : null;
        assertThat(CudaModelGenerator.unsupported(m)).isEmpty();
    }

    @Test
    void fieldNamesAreCamelCase() {
        assertThat(CudaModelGenerator.field("layers.12.attn_norm.weight")).isEqualTo("l12AttnNormWeight");
        assertThat(CudaModelGenerator.field("embed.weight")).isEqualTo("embedWeight");
        assertThat(CudaModelGenerator.field("layers.3.moe.router.expert_bias")).isEqualTo("l3MoeRouterExpertBias");
    }

    /**
     * The parity check's models of attention experts and the jetmoe and bam recipes compile
     * device-resident with their CPU classes; the routing state lists each layer's mixer before its FFN's MoE, as the CPU class's
     * does; every expert runs densely and joins the output by its gate; shared keys and values come from the group's projections,
     * once, and their gradient goes back after the last expert that reads them.
     */
    @Test
    void attentionExpertsAreDeviceResident() {
        {
            Map<String, String> source = new TreeMap<>();
            List<Model> models = new ArrayList<>(dev.moe.cuda.model.DeviceModelParity.moaModels());
            models.addAll(models(RECIPES.resolve("jetmoe.moe")));
            models.addAll(models(RECIPES.resolve("bam.moe")));
            for (Model m : models) {
                assertWithMessage(m.name()).that(CudaModelGenerator.unsupported(m)).isEmpty();
                DeviceModels.Classes classes = DeviceModels.compile(m, m.name() + ".moe");
                assertThat(DeviceModel.class.isAssignableFrom(classes.device())).isTrue();
                String src = CudaModelGenerator.generate(m, "dev.moe.generated", m.name() + ".moe").toString();
                source.put(m.name(), src);
                // every parameter of the attention experts and their routers is read (and gets its gradient) on the device
                int expertParams = 0;
                for (dev.moe.compiler.ir.Param p : m.params()) {
                    if (p.name().contains(".attn_moe.")) {
                        assertWithMessage("%s reads %s", m.name(), p.name()).that(src).contains("w.value(\"" + p.name() + "\")");
                        assertWithMessage("%s's gradient of %s", m.name(), p.name()).that(src).contains("w.grad(\"" + p.name() + "\")");
                        expertParams++;
                    }
                }
                assertWithMessage(m.name()).that(expertParams).isGreaterThan(0);
                // the routed states in the CPU class's order: the loads, dispatch and step loads line up layer by layer
                dev.moe.runtime.TrainableModel cpu = classes.createHost(new dev.moe.runtime.cpu.CpuBackend(1, dev.moe.runtime.cpu.CpuBackend.VECTOR_API));
                String layers = java.util.Arrays.toString(cpu.moeLayers());
                assertWithMessage(m.name()).that(src).contains("return new int[] {" + layers.substring(1, layers.length() - 1) + "}");
            }
            String jet = source.get("JetMoETiny");
            assertThat(jet).contains("return new int[] {0, 0, 1, 1, 2, 2, 3, 3}");
            assertThat(jet).contains("moeAttn0 = new CudaAttentionRouter(ctx, new MoeKernelSource.Spec(DIM, 1, 4, 0, 0, 0, 2, MoeKernelSource.Score.SOFTMAX, "
                    + "true, 1.0f, false, MoeKernelSource.Precision.FP32, MoeKernelSource.Options.NONE), w.value(\"layers.0.attn_moe.router.weight\"), "
                    + "w.grad(\"layers.0.attn_moe.router.weight\"))");
            assertThat(jet).contains("moeAttn0.route(a0Normed, rows, a0Gates)");
            // one key and value projection for the group, read by every expert of it
            assertThat(jet).contains("linear(a0Normed, l0AttnMoeGroup0K, a0K0, rows, DIM, 64, false)");
            assertThat(jet).doesNotContain("l0AttnMoeExperts1K");
            assertThat(jet).contains("ops.attention(a0Q3, a0K0, a0V0, a0Att3, a0Lse3, batch, seq, 2, 2, 32, CAUSAL, WINDOW)");
            assertThat(jet).contains("linear(a0Att3, l0AttnMoeExperts3O, a0Y3, rows, 64, DIM, false)");
            assertThat(jet).contains("ops.moaCombine(a0Y3, a0Gates, 3, 4, rows, DIM, a0Out)");
            assertThat(jet).contains("ops.addInPlace(stream, a0Out, (long) rows * DIM)");
            assertThat(jet).contains("loss += balanceAttn0");
            assertThat(jet).contains("balanceAttn0 += 0.001 * stats[4] / rows");
            String backward0 = jet.substring(jet.indexOf("private void backwardLayer0("));
            backward0 = backward0.substring(0, backward0.indexOf("private void", 10));
            assertThat(backward0).contains("ops.moaCombineBackward(dx, a0Y2, a0Gates, 2, 4, rows, DIM, a0DY, a0DGates)");
            assertThat(backward0).contains("ops.attentionBackward(a0Q2, a0K0, a0V0, a0Att2, a0Lse2, a0DAtt, a0Dq, a0Dk0, a0Dv0, batch, seq, 2, 2, 32, "
                    + "CAUSAL, WINDOW)");
            assertThat(backward0).contains("moeAttn0.backwardInto(a0DGates, scaled(auxAttn0, scale), scale * 0.001f / rows, 0f, dNormed)");
            String keysBack = "linearBackward(a0Normed, l0AttnMoeGroup0K, a0Dk0, dNormed, l0AttnMoeGroup0KGrad, rows, DIM, 64, true)";
            assertThat(backward0.split(java.util.regex.Pattern.quote(keysBack), -1).length - 1).isEqualTo(1);
            assertThat(backward0.indexOf(keysBack)).isGreaterThan(backward0.indexOf("ops.attentionBackward(a0Q3"));
            // the FFN's MoE after the mixer, from the pre-norm block's second norm
            assertThat(backward0.indexOf("moe0.backwardInto(")).isLessThan(backward0.indexOf("moeAttn0.backwardInto("));

            // BAM: soft routing (k = E = 3), own keys and values per expert, the FFN's MoE on the parallel block's one norm
            String bam = source.get("BAMTiny");
            assertThat(bam).contains("new MoeKernelSource.Spec(DIM, 1, 3, 0, 0, 0, 3, MoeKernelSource.Score.SOFTMAX, false, 1.0f, false");
            assertThat(bam).contains("linear(a0Normed, l0AttnMoeExperts2K, a0K2, rows, DIM, 128, false)");
            assertThat(bam).contains("ops.attention(a0Q2, a0K2, a0V2, a0Att2, a0Lse2, batch, seq, 4, 4, 32, CAUSAL, WINDOW)");
            assertThat(bam).contains("moe0.forwardInto(a0Normed, rows, stream)");
            assertThat(bam).contains("moeAttn0.backwardInto(a0DGates, null, scale * 0.001f / rows, 0f, dNormed)");

            // partial RoPE on each expert's head width; a group sharing keys and values after one that does not
            String moa = source.get("MoaTiny");
            assertThat(moa).contains("ops.rope(a0Q1, rows, seq, 2, 12, 6, THETA, false)");
            assertThat(moa).contains("ops.rope(a0K0, rows, seq, 2, 12, 6, THETA, false)");
            assertThat(moa).contains("ops.attention(a1Q, a1K, a1V, a1Att, a1Lse, batch, seq, HEADS, KV_HEADS, HEAD_DIM, CAUSAL, WINDOW)");
            String soft = source.get("SoftMoaTiny");
            assertThat(soft).contains("linear(a0Normed, l0AttnMoeGroup1K, a0K3, rows, DIM, 32, false)");
            assertThat(soft).contains("ops.attention(a0Q4, a0K3, a0V3, a0Att4, a0Lse4, batch, seq, 2, 2, 16, CAUSAL, WINDOW)");
            assertThat(soft).contains("ops.attention(a0Q1, a0K1, a0V1, a0Att1, a0Lse1, batch, seq, 3, 3, 8, CAUSAL, WINDOW)");
            assertThat(soft).contains("moeAttn0.backwardInto(a0DGates, scaled(auxAttn0, scale), scale * 0.001f / rows, 0f, dNormed)");
            // the global-batch aux loss reads the step's counts of the mixer's own routing state
            assertThat(soft).contains("double fe = stepSlotsAttn0 > 0 ? (double) stepCountsAttn0[ex] / stepSlotsAttn0 : (double) countsAttn0[ex] / slotsAttn0");
        }
    }

    /** Attention experts the GPU router does not take stay on the hybrid path, named. */
    @Test
    void attentionExpertsOutsideTheRoutersReachAreRefused() {
        Model m = dev.moe.cuda.model.DeviceModelParity.moaModelWithTemperature();
        assertThat(CudaModelGenerator.unsupported(m).orElseThrow()).startsWith("layer 0's mixer (attention experts with an expert bias");
    }

    /**
     * The parity check's latent attention models compile device-resident, and their attention is the CPU
     * class's: low-rank query and latent with their RMSNorms at the latent eps, the shared rotary key turned by RoPE on
     * ROPE_DIM, keys and values in the kernels' HEAD_DIM layout with every head its own (HEADS key/value heads), values
     * packed back to V_DIM per head for o; the backward through the same steps.
     */
    @Test
    void theParityCheckLatentAttentionModelsAreDeviceResident() {
        {
            List<Model> models = dev.moe.cuda.model.DeviceModelParity.mlaModels();
            assertThat(models).hasSize(2);
            Map<String, String> source = new TreeMap<>();
            for (Model m : models) {
                assertThat(CudaModelGenerator.unsupported(m)).isEmpty();
                DeviceModels.Classes classes = DeviceModels.compile(m, "mla.moe");
                assertThat(DeviceModel.class.isAssignableFrom(classes.device())).isTrue();
                source.put(m.name(), CudaModelGenerator.generate(m, "dev.moe.generated", "mla.moe").toString());
            }
            String low = source.get("MlaTiny");
            assertThat(low).contains("static final int HEAD_DIM = 16;");
            assertThat(low).contains("static final int KVB_DIM = 80;");
            assertThat(low).contains("static final int VO_DIM = 48;");
            assertThat(low).contains("linear(a0Normed, l0AttnQA, a0Qa, rows, DIM, Q_RANK, false)");
            assertThat(low).contains("ops.rmsNorm(a0Qa, l0AttnQANorm, a0QaNormed, a0QaRstd, rows, Q_RANK, MLA_EPS)");
            assertThat(low).contains("linear(a0QaNormed, l0AttnQB, a0Q, rows, Q_RANK, Q_DIM, false)");
            assertThat(low).contains("ops.rmsNorm(a0Ckv, l0AttnKvANorm, a0CkvNormed, a0CkvRstd, rows, KV_RANK, MLA_EPS)");
            assertThat(low).contains("ops.rope(a0Q, rows, seq, HEADS, HEAD_DIM, ROPE_DIM, THETA, false)");
            assertThat(low).contains("ops.rope(a0Kpe, rows, seq, 1, ROPE_DIM, ROPE_DIM, THETA, false)");
            assertThat(low).contains("ops.mlaKeysAndValues(a0Kpe, a0Kvb, a0K, a0V, rows, HEADS, NOPE_DIM, ROPE_DIM, V_DIM)");
            assertThat(low).contains("ops.attention(a0Q, a0K, a0V, a0Att, a0Lse, batch, seq, HEADS, HEADS, HEAD_DIM, CAUSAL, WINDOW)");
            assertThat(low).contains("ops.mlaValuesOut(a0Att, a0AttV, rows, HEADS, HEAD_DIM, V_DIM)");
            assertThat(low).contains("linear(a0AttV, l0AttnO, stream, rows, VO_DIM, DIM, true)");
            assertThat(low).contains("a0K = allocate((long) rows * Q_DIM)");
            // backward: values in, the rotary key's gradient summed over heads and turned back, then the latent and query paths
            assertThat(low).contains("linearBackward(a0AttV, l0AttnO, dx, dAttV, l0AttnOGrad, rows, VO_DIM, DIM, false)");
            assertThat(low).contains("ops.mlaValuesIn(dAttV, dAtt, rows, HEADS, HEAD_DIM, V_DIM)");
            assertThat(low).contains("ops.mlaKeysAndValuesBackward(dk, dv, dKpe, dKvb, rows, HEADS, NOPE_DIM, ROPE_DIM, V_DIM)");
            assertThat(low).contains("ops.rope(dKpe, rows, seq, 1, ROPE_DIM, ROPE_DIM, THETA, true)");
            assertThat(low).contains("ops.rmsNormBackward(a0Ckv, l0AttnKvANorm, a0CkvRstd, dCkvNormed, dCkv, l0AttnKvANormGrad, rows, KV_RANK)");
            assertThat(low).contains("linearBackward(a0Normed, l0AttnKRope, dKpe, dNormed, l0AttnKRopeGrad, rows, DIM, ROPE_DIM, true)");
            assertThat(low).contains("ops.rmsNormBackward(a0Qa, l0AttnQANorm, a0QaRstd, dQaNormed, dQa, l0AttnQANormGrad, rows, Q_RANK)");
            assertThat(low).contains("linearBackward(a0Normed, l0AttnQA, dQa, dNormed, l0AttnQAGrad, rows, DIM, Q_RANK, true)");
            assertThat(low).doesNotContain("ROTARY_DIMS, THETA");
            String direct = source.get("MlaDirectQTiny");
            assertThat(direct).contains("static final float MLA_EPS = 1.0E-5f;");
            assertThat(direct).contains("static final int HEAD_DIM = 20;");
            assertThat(direct).contains("linear(a0Normed, l0AttnQ, a0Q, rows, DIM, Q_DIM, false)");
            assertThat(direct).contains("linearBackward(a0Normed, l0AttnQ, dq, dNormed, l0AttnQGrad, rows, DIM, Q_DIM, true)");
            assertThat(direct).doesNotContain("rows, Q_RANK");
            // the shortcut block's two latent attentions
            assertThat(direct).contains("ops.mlaKeysAndValues(a1Kpe, a1Kvb, a1K, a1V, rows, HEADS, NOPE_DIM, ROPE_DIM, V_DIM)");
            assertThat(direct).contains("ops.mlaKeysAndValues(a1bKpe, a1bKvb, a1bK, a1bV, rows, HEADS, NOPE_DIM, ROPE_DIM, V_DIM)");
        }
    }

    /**
     * deepseek-v3.moe: nothing keeps it on the hybrid path any more. Its latent attention and its MoE with the sequence-wise aux
     * loss compile device-resident.
     */
    @Test
    void deepSeekV3IsDeviceResident() {
        {
            Model v3 = models(RECIPES.resolve("deepseek-v3.moe")).getFirst();
            assertThat(CudaModelGenerator.unsupported(v3)).isEmpty();
            DeviceModels.Classes classes = DeviceModels.compile(v3, "deepseek-v3.moe");
            assertThat(DeviceModel.class.isAssignableFrom(classes.device())).isTrue();
            String src = CudaModelGenerator.generate(v3, "dev.moe.generated", "deepseek-v3.moe").toString();
            assertThat(src).contains("ops.mlaKeysAndValues(a3Kpe, a3Kvb, a3K, a3V, rows, HEADS, NOPE_DIM, ROPE_DIM, V_DIM)");
            assertThat(src).contains("balance3 += moe3.sequenceBalanceStats(seq).auxLoss(1.0E-4f, 4, rows, aux3);");
        }
    }

    /**
     * deepseek-v3.moe's MoE (sigmoid scores, expert bias, group-limited top-4, normalised and scaled by 2.5, the sequence-wise aux
     * loss) runs device-resident without the latent attention property once its attention is grouped-query: the loss no
     * longer keeps it on the hybrid path. Each sequence's aux gradient rows go to the layer's backward.
     */
    @Test
    void deepSeekV3sMoeIsDeviceResident() throws IOException {
        String text = Files.readString(RECIPES.resolve("deepseek-v3.moe"));
        String gqa = text.replaceAll("(?m)^\\s*attention mla\\(.*$", "");
        assertThat(gqa).isNotEqualTo(text);
        Model v3 = compileText(gqa).getFirst();
        assertThat(v3.config().mla()).isEmpty();
        assertThat(CudaModelGenerator.unsupported(v3)).isEmpty();
        DeviceModels.Classes classes = DeviceModels.compile(v3, "deepseek-v3.moe");
        assertThat(DeviceModel.class.isAssignableFrom(classes.device())).isTrue();
        String src = CudaModelGenerator.generate(v3, "dev.moe.generated", "deepseek-v3.moe").toString();
        for (int l = 1; l < 4; l++) {
            assertThat(src).contains("aux" + l + " = new float[batch * 16];");
            assertThat(src).contains("balance" + l + " += moe" + l + ".sequenceBalanceStats(seq).auxLoss(1.0E-4f, 4, rows, aux" + l + ");");
            assertThat(src).contains("moe" + l + ".backwardInto(dx, scaled(aux" + l + ", scale), 0f, 0f, dNormed, dNormed, dShared" + l + ");");
        }
        // the sequence-wise loss needs no batch-wide statistics
        assertThat(src).doesNotContain("balanceStats()");
        assertThat(src).contains(".withGroupLimit(4, 2)");
    }

    /**
     * The parity model of the balancing losses on sigmoid scores and per sequence is device-resident: the micro-batch aux loss
     * on sigmoid scores reads the layer's batch-wide statistics (scores over each token's sum), top-p's sequence-wise loss
     * counts each sequence's used slots (k 0), beside the z-loss.
     */
    @Test
    void theParityCheckSequenceAuxModelIsDeviceResident() {
        Model m = dev.moe.cuda.model.DeviceModelParity.sequenceAuxModels().getFirst();
        assertThat(CudaModelGenerator.unsupported(m)).isEmpty();
        DeviceModels.compile(m, "sequence-aux.moe");
        String src = CudaModelGenerator.generate(m, "dev.moe.generated", "sequence-aux.moe").toString();
        assertThat(src).contains("balance1 += moe1.sequenceBalanceStats(seq).auxLoss(0.01f, 0, rows, aux1);");
        assertThat(src).contains("moe1.backwardInto(dx, scaled(aux1, scale), scale * 0.001f / rows, 0f, dNormed);");
        assertThat(src).contains("float[] stats = moe2.balanceStats();");
        assertThat(src).contains("aux2 = new float[8];");
        assertThat(src).contains("balance3 += moe3.sequenceBalanceStats(seq).auxLoss(0.01f, 4, rows, aux3);");
    }

    /** The balancing losses the GPU layers do not take stay on the hybrid path, named. */
    @Test
    void balancingLossesTheLayersCannotRunAreRefused() {
        String seqAux = dev.moe.cuda.model.DeviceModelParity.SEQUENCE_AUX_MODEL;
        // the layer takes one aux gradient
        String two = seqAux.replace("balance aux(coef: 0.01, scope: sequence)\n  balance z_loss", "balance aux(coef: 0.01, scope: sequence)\n"
                + "  balance aux(coef: 0.01, scope: micro_batch)\n  balance z_loss");
        assertThat(two).isNotEqualTo(seqAux);
        assertThat(CudaModelGenerator.unsupported(compileText(two).getFirst()).orElseThrow()).contains("more than one aux loss");
        // the z-loss on sigmoid scores
        String zSigmoid = seqAux.replace("balance aux(coef: 0.01, scope: micro_batch)", "balance z_loss(coef: 0.001)");
        assertThat(zSigmoid).isNotEqualTo(seqAux);
        assertThat(CudaModelGenerator.unsupported(compileText(zSigmoid).getFirst()).orElseThrow()).contains("with sigmoid scores");
        // MoE++'s tau on a sequence-wise loss
        String moepp = dev.moe.cuda.model.DeviceModelParity.MOEPP_MODEL.replace("scope: micro_batch, tau: 0.75", "scope: sequence, tau: 0.75");
        assertThat(moepp).isNotEqualTo(dev.moe.cuda.model.DeviceModelParity.MOEPP_MODEL);
        assertThat(CudaModelGenerator.unsupported(compileText(moepp).getFirst()).orElseThrow()).contains("a sequence-wise aux loss with tau");
        // LoRA's layer: the softmax micro- or global-batch aux loss only
        String lora = dev.moe.cuda.model.DeviceModelParity.LORA_MODEL.replaceFirst("scope: micro_batch", "scope: sequence");
        assertThat(lora).isNotEqualTo(dev.moe.cuda.model.DeviceModelParity.LORA_MODEL);
        assertThat(CudaModelGenerator.unsupported(compileText(lora).getFirst()).orElseThrow()).contains("on LoRA experts");
    }

    /**
     * The MoE layers a generated model hands to expert parallelism ({@code DeviceModel.useExpertParallel}): every MoE layer of routed
     * FFN experts, by its layer index, and neither LoRA experts nor attention experts.
     */
    @Test
    void theGeneratedModelListsItsFfnMoeLayersForExpertParallelism() {
        String mixtral = CudaModelGenerator.generate(models(RECIPES.resolve("mixtral.moe")).getFirst(), "dev.moe.generated", "mixtral.moe").toString();
        assertThat(mixtral).contains("""
                    @Override
                    protected SortedMap<Integer, CudaMoeLayer> expertLayers() {
                        SortedMap<Integer, CudaMoeLayer> layers = new TreeMap<>();
                        layers.put(0, moe0);
                        layers.put(1, moe1);
                        layers.put(2, moe2);
                        layers.put(3, moe3);
                        return layers;
                    }
                """);
        String mola = CudaModelGenerator.generate(models(RECIPES.resolve("mola.moe")).getFirst(), "dev.moe.generated", "mola.moe").toString();
        assertThat(mola).contains("protected SortedMap<Integer, CudaMoeLayer> expertLayers()");
        assertThat(mola).doesNotContain("layers.put(");
        Model jetmoe = models(RECIPES.resolve("jetmoe.moe")).getFirst();
        String jet = CudaModelGenerator.generate(jetmoe, "dev.moe.generated", "jetmoe.moe").toString();
        // its attention experts (moeAttn<i>) stay replicated; its FFN MoE layers are listed
        assertThat(jet).doesNotContain("moeAttn0);");
        assertThat(jet).contains("layers.put(0, moe0);");
    }

    @Test
    void expertParallelismNamesTheLayerItCannotTake() {
        assertThat(CudaModelGenerator.expertParallelRefusal(models(RECIPES.resolve("mixtral.moe")).getFirst())).isEmpty();
        assertThat(CudaModelGenerator.expertParallelRefusal(models(RECIPES.resolve("longcat-flash.moe")).getFirst())).isEmpty();
        assertThat(CudaModelGenerator.expertParallelRefusal(models(RECIPES.resolve("mola.moe")).getFirst()).orElseThrow())
                .startsWith("layer 0's MoE has LoRA experts (MoLA)");
        assertThat(CudaModelGenerator.expertParallelRefusal(models(RECIPES.resolve("mole.moe")).getFirst()).orElseThrow())
                .contains("'s MoE has latent experts (MoLE)");
        assertThat(CudaModelGenerator.expertParallelRefusal(models(RECIPES.resolve("moe-plus-plus.moe")).getFirst()).orElseThrow())
                .isEqualTo("layer 0's MoE has MoE++ constant experts, which the expert-parallel stage does not run");
        Model notResident = dev.moe.cuda.model.DeviceModelParity.moaModelWithTemperature();
        assertThat(CudaModelGenerator.expertParallelRefusal(notResident).orElseThrow()).startsWith(notResident.name()
                + " does not run device-resident on the GPU (");
        Model dense = compileText("""
                ffn mlp = swiglu(hidden: 64)
                model DenseTiny {
                  vocab 97
                  context 32
                  dim 32
                  heads 2
                  norm rms(eps: 1e-6)
                  position rope(theta: 10000)
                  causal true
                  layers 2 {
                    all: attention, mlp
                  }
                }
                """).getFirst();
        assertThat(CudaModelGenerator.expertParallelRefusal(dense)).hasValue("DenseTiny has no MoE layer of routed FFN experts (attention experts stay"
                + " replicated)");
    }
}
