package dev.moe.cuda;

import static com.google.common.truth.Truth.assertThat;

import dev.moe.cuda.kernels.GemmAttentionKernelSource;
import org.junit.jupiter.api.Test;

/** The pure-Java parts of {@link GemmAttention}: chunking under the score budget and the kernel source per storage type. */
class GemmAttentionTest {
    @Test
    void chunksKeepTheScoresUnderTheBudget() {
        // 16 heads x 1024² scores, fp32 scores + bf16 probabilities: 96 MiB per sequence
        long perSequence = 16L * 1024 * 1024 * 6;
        assertThat(GemmAttention.chunk(8, 1024, 16, 2, GemmAttention.SCORE_BUDGET_BYTES)).isEqualTo(8);
        assertThat(GemmAttention.chunk(64, 1024, 16, 2, 10 * perSequence + 1)).isEqualTo(10);
        assertThat(GemmAttention.chunk(64, 1024, 16, 2, perSequence - 1)).isEqualTo(1); // never fewer than one sequence
        assertThat(GemmAttention.chunk(3, 8, 2, 4, Long.MAX_VALUE)).isEqualTo(3);
    }

    @Test
    void sourceIsSpecialisedToTheStorageType() {
        String bf16 = GemmAttentionKernelSource.generate(true), f32 = GemmAttentionKernelSource.generate(false);
        assertThat(bf16).contains("typedef unsigned short elem_t;");
        assertThat(f32).contains("typedef float elem_t;");
        for (String kernel : new String[] {"pack_heads", "unpack_heads", "softmax_rows", "softmax_recompute", "row_dot", "softmax_backward"}) {
            assertThat(bf16).contains("void " + kernel + "(");
            assertThat(f32).contains("void " + kernel + "(");
        }
    }
}
