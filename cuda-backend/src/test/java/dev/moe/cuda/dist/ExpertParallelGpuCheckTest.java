package dev.moe.cuda.dist;

import static com.google.common.truth.Truth.assertThat;

import dev.moe.cuda.kernels.MoeKernelSource.Precision;
import java.util.List;
import org.junit.jupiter.api.Test;

/** What the GPU check's cases cover, checked without a GPU: every placement must be one the stage takes. */
class ExpertParallelGpuCheckTest {

    @Test
    void theCasesCoverWhatTheCheckPromisesAndTheStageAccepts() {
        List<ExpertParallelGpuCheck.Case> cases = ExpertParallelGpuCheck.cases();
        for (ExpertParallelGpuCheck.Case c : cases) {
            // the stage dispatches on the renumbered placement: contiguous in rank order whatever the case's placement
            new SortedDispatch(ExpertOrder.of(c.placement()).renumbered());
            for (int t : c.tokens()) {
                assertThat(t).isAtLeast(1);
            }
        }
        for (Precision p : Precision.values()) {
            List<ExpertParallelGpuCheck.Case> of = cases.stream().filter(c -> c.spec().precision() == p).toList();
            assertThat(of.stream().map(ExpertParallelGpuCheck.Case::ranks).distinct().toList()).containsAtLeast(2, 4);
            assertThat(of.stream().anyMatch(c -> c.spec().topK() == 1)).isTrue();
            // an uneven placement with a rank that holds no expert
            assertThat(of.stream().anyMatch(c -> c.experts() != null && java.util.Arrays.stream(c.experts()).anyMatch(e -> e.length == 0))).isTrue();
            // placements not contiguous in rank order, in worlds of 2 and 4, with capacity drops and with zero and copy experts
            List<ExpertParallelGpuCheck.Case> permuted = of.stream().filter(c -> !ExpertOrder.of(c.placement()).identity()).toList();
            assertThat(permuted.stream().map(ExpertParallelGpuCheck.Case::ranks).distinct().toList()).containsAtLeast(2, 4);
            assertThat(permuted.stream().anyMatch(c -> c.spec().options().capacityFactor() > 0)).isTrue();
            assertThat(permuted.stream().anyMatch(c -> c.spec().routed() > c.spec().experts())).isTrue();
            assertThat(permuted.stream().anyMatch(c -> c.toString().contains("permuted E/rank=2,1,3,2"))).isTrue();
        }
        assertThat(cases.stream().filter(c -> c.spec().precision() == Precision.FP32).toList().get(2).toString()).isEqualTo("D=48 F=80 E=10 k=3 softmax R=4 T=[17,40,5,29] E/rank=5,1,0,4 fp32");
    }

    @Test
    void theRelativeErrorOfAnExpertWithoutRowsIsItsAbsoluteNorm() {
        assertThat(ExpertParallelGpuCheck.rel(new float[] {3, 4}, new double[] {0, 0})).isEqualTo(5.0);
        assertThat(ExpertParallelGpuCheck.rel(new float[] {1, 1}, new double[] {1, 2})).isWithin(1e-12).of(Math.sqrt(1.0 / 5));
        assertThat(ExpertParallelGpuCheck.rel(new float[] {1}, new double[] {1, 2})).isPositiveInfinity();
    }
}
