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
        // attention experts under a router temperature are not covered on the device: the feature is named, before any mask
        Model m = dev.moe.cuda.model.DeviceModelParity.moaModelWithTemperature();
        assertThat(Recipes.deviceRefusal(m, false).orElseThrow()).contains("attention experts");
        assertThat(Recipes.deviceRefusal(m, true).orElseThrow()).contains("attention experts");
    }

    @Test
    void attentionExpertsRunDeviceResident() {
        // JetMoE's top-k MoA and BAM's soft mixture (their GPU parity check passed on 2026-12-02)
        assertThat(Recipes.deviceRefusal(model("jetmoe.moe"), false)).isEmpty();
        assertThat(Recipes.deviceRefusal(model("bam.moe"), false)).isEmpty();
    }

    @Test
    void molaRunsDeviceResident() {
        // LoRA experts over a frozen base, a different count per layer: covered; padded documents still are not
        assertThat(Recipes.deviceRefusal(model("mola.moe"), false)).isEmpty();
        assertThat(Recipes.deviceRefusal(model("mola.moe"), true)).hasValue("padding masks (`documents pad`)");
    }

    @Test
    void moleRunsDeviceResident() {
        // latent experts: the shared down-projection as a dense GEMM, the experts on the latent vector
        assertThat(Recipes.deviceRefusal(model("mole.moe"), false)).isEmpty();
    }

    @Test
    void switchRunsDeviceResident() {
        // routed relu experts under top-1 with a capacity factor: covered; padded documents still are not
        assertThat(Recipes.deviceRefusal(model("switch.moe"), false)).isEmpty();
        assertThat(Recipes.deviceRefusal(model("switch.moe"), true)).hasValue("padding masks (`documents pad`)");
    }
}
