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
        assertWithMessage("outcomes: %s", outcome).that(resident).containsAtLeast("mixtral.moe/MixtralTiny", "deepseek-moe.moe/DeepSeekMoETiny");
        assertThat(outcome.get("deepseek-v3.moe/DeepSeekV3Tiny")).contains("multi-head latent attention");
    }

    @Test
    void theParityCheckSigmoidModelIsDeviceResident() {
        for (Model m : dev.moe.cuda.model.DeviceModelParity.sigmoidModels()) {
            assertThat(CudaModelGenerator.unsupported(m)).isEmpty();
            DeviceModels.compile(m, "sigmoid-tiny.moe");
        }
    }

    @Test
    void fieldNamesAreCamelCase() {
        assertThat(CudaModelGenerator.field("layers.12.attn_norm.weight")).isEqualTo("l12AttnNormWeight");
        assertThat(CudaModelGenerator.field("embed.weight")).isEqualTo("embedWeight");
        assertThat(CudaModelGenerator.field("layers.3.moe.router.expert_bias")).isEqualTo("l3MoeRouterExpertBias");
    }
}
