package dev.moe.cuda.model;

import static com.google.common.truth.Truth.assertThat;

import dev.moe.compiler.ir.Model;
import dev.moe.cuda.codegen.CudaModelGenerator;
import dev.moe.cuda.dist.ExpertPlacement;
import java.nio.file.Path;
import java.util.List;
import java.util.SortedMap;
import java.util.TreeMap;
import org.junit.jupiter.api.Test;

/** What the GPU check of expert-parallel training covers, checked without a GPU. */
class ExpertParallelTrainCheckTest {

    @Test
    void itsModelsRunExpertParallelAndCompileDeviceResident() {
        List<Model> models = ExpertParallelTrainCheck.models(Path.of("..", "recipes"));
        assertThat(models.stream().map(Model::name).toList()).containsExactly("MixtralTiny", "EpZeroCopyTiny").inOrder();
        for (Model m : models) {
            assertThat(CudaModelGenerator.expertParallelRefusal(m)).isEmpty();
            assertThat(DeviceModel.class.isAssignableFrom(DeviceModels.compile(m, m.name()).device())).isTrue();
        }
        // the zero/copy model's layer of 3 experts leaves a rank without experts at 4 ranks, and its 6 experts split unevenly
        assertThat(ExpertParallelTrainCheck.layout(ExpertPlacement.contiguous(3, 4))).isEqualTo("1,1,1,0");
        assertThat(ExpertParallelTrainCheck.layout(ExpertPlacement.contiguous(6, 4))).isEqualTo("2,2,1,1");
        assertThat(ExpertParallelTrainCheck.RANKS).asList().containsAtLeast(1, 2, 4);
    }

    @Test
    void itsMemoryModelHasExpertsOfWholePages() {
        dev.moe.dsl.SourceFile.ReadResult read = dev.moe.dsl.SourceFile.decode("ep-memory.moe",
                ExpertParallelTrainCheck.MEMORY_MODEL.getBytes(java.nio.charset.StandardCharsets.UTF_8));
        Model m = dev.moe.compiler.MoeCompiler.compile(((dev.moe.dsl.SourceFile.ReadResult.Ok) read).source()).orThrow().models().getFirst();
        assertThat(CudaModelGenerator.expertParallelRefusal(m)).isEmpty();
        // 16 experts a layer of gate, up and down [1024, 256]: 3 MiB of fp32 each, more than a 2 MiB page
        long expertBytes = 3L * 1024 * 256 * 4;
        assertThat(expertBytes).isGreaterThan(2L << 20);
        assertThat(m.config().dim()).isEqualTo(256);
    }

    @Test
    void theExpertsARankDoesNotHoldAreNamedByTheirParameters() {
        SortedMap<Integer, Integer> experts = new TreeMap<>();
        experts.put(1, 3);
        experts.put(2, 6);
        SortedMap<Integer, ExpertPlacement> p = ExpertParallelTrainCheck.placements(experts, 2);
        List<String> names = List.of("layers.1.moe.experts.0.gate", "layers.1.moe.experts.1.up", "layers.1.moe.experts.2.down",
                "layers.1.moe.router.weight", "layers.2.moe.experts.3.gate", "layers.2.moe.experts.5.down", "layers.2.moe.shared.0.gate",
                "layers.0.ffn.gate");
        // rank 0 holds layer 1's experts 0-1 and layer 2's 0-2
        assertThat(ExpertParallelTrainCheck.foreignExperts(p, 0, names)).containsExactly("layers.1.moe.experts.2.down",
                "layers.2.moe.experts.3.gate", "layers.2.moe.experts.5.down").inOrder();
        assertThat(ExpertParallelTrainCheck.foreignExperts(p, 1, names)).containsExactly("layers.1.moe.experts.0.gate",
                "layers.1.moe.experts.1.up").inOrder();
    }

    @Test
    void thePermutedPlacementsAreNotContiguousInRankOrder() {
        assertThat(ExpertParallelTrainCheck.PERMUTED_RANKS).asList().containsExactly(2, 4);
        // every layer of both models: mixtral's 8 experts, the zero/copy model's 6 and 3
        for (int experts : new int[] {8, 6, 3}) {
            for (int ranks : ExpertParallelTrainCheck.PERMUTED_RANKS) {
                ExpertPlacement p = ExpertParallelTrainCheck.permuted(experts, ranks);
                assertThat(p.experts()).isEqualTo(experts);
                assertThat(p.ranks()).isEqualTo(ranks);
                assertThat(dev.moe.cuda.dist.ExpertOrder.of(p).identity()).isFalse();
            }
        }
        assertThat(ExpertParallelTrainCheck.permuted(8, 2).expertsOf(0)).asList().containsExactly(0, 2, 4, 6).inOrder();
        ExpertPlacement uneven = ExpertParallelTrainCheck.permuted(8, 4);
        assertThat(uneven.expertsOf(1)).asList().containsExactly(7);
        assertThat(uneven.expertsOf(2)).asList().containsExactly(0, 5, 6).inOrder();
        assertThat(ExpertParallelTrainCheck.permuted(6, 4).localExperts(2)).isEqualTo(0);
        // the fallback: contiguous ranges in reverse rank order
        assertThat(ExpertParallelTrainCheck.permuted(5, 2).expertsOf(0)).asList().containsExactly(3, 4).inOrder();
        // the foreign experts follow the placement, not the ranges
        SortedMap<Integer, Integer> experts = new TreeMap<>();
        experts.put(0, 8);
        SortedMap<Integer, ExpertPlacement> p = ExpertParallelTrainCheck.placements(experts, 2, true);
        assertThat(ExpertParallelTrainCheck.foreignExperts(p, 0, List.of("layers.0.moe.experts.1.gate", "layers.0.moe.experts.2.gate")))
                .containsExactly("layers.0.moe.experts.1.gate");
    }
}
