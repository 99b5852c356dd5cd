package dev.moe.cli;

import static com.google.common.truth.Truth.assertThat;

import dev.moe.compiler.MoeCompiler;
import dev.moe.compiler.ir.Model;
import java.nio.file.Path;
import org.junit.jupiter.api.Test;

/**
 * Which models `--backend cuda` runs device-resident: the GPU code generator's coverage, and no
 * padding masks (a recipe trained on `documents pad` runs on the hybrid path, which takes them).
 */
class DeviceRefusalTest {
    private static Model model(String recipe) {
        return MoeCompiler.compile(Path.of("../recipes", recipe)).orThrow().models().getFirst();
    }

    @Test
    void aCoveredModelRunsDeviceResidentUnlessItTrainsOnPaddedDocuments() {
        Model mixtral = model("mixtral.moe");
        assertThat(Recipes.deviceRefusal(mixtral, false)).isEmpty();
        assertThat(Recipes.deviceRefusal(mixtral, true)).hasValue("padding masks (`documents pad`)");
    }

    @Test
    void anUncoveredModelNamesItsFeature() {
        // switch's dense relu FFN runs on the device; its routed relu experts do not (the GPU MoE layer is SwiGLU only)
        assertThat(Recipes.deviceRefusal(model("switch.moe"), false).orElseThrow()).contains("routed experts other than one group of swiglu experts");
        assertThat(Recipes.deviceRefusal(model("switch.moe"), true).orElseThrow()).contains("routed experts other than one group of swiglu experts");
    }
}
