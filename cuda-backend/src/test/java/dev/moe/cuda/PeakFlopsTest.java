package dev.moe.cuda;

import static com.google.common.truth.Truth.assertThat;

import org.junit.jupiter.api.Test;

/** The names the driver reports (as nvidia-smi shows them) map to their datasheet's dense bf16 peak. */
class PeakFlopsTest {
    @Test
    void theDatasheetPeaksByDriverName() {
        assertThat(PeakFlops.denseBf16("NVIDIA H200").getAsDouble()).isEqualTo(989e12);
        assertThat(PeakFlops.denseBf16("NVIDIA H100 80GB HBM3").getAsDouble()).isEqualTo(989e12);
        assertThat(PeakFlops.denseBf16("NVIDIA H100 PCIe").getAsDouble()).isEqualTo(756e12);
        assertThat(PeakFlops.denseBf16("NVIDIA H200 NVL").getAsDouble()).isEqualTo(835e12);
        assertThat(PeakFlops.denseBf16("NVIDIA GH200 480GB").getAsDouble()).isEqualTo(989e12);
        assertThat(PeakFlops.denseBf16("NVIDIA A100-SXM4-80GB").getAsDouble()).isEqualTo(312e12);
        assertThat(PeakFlops.denseBf16("NVIDIA A100 80GB PCIe").getAsDouble()).isEqualTo(312e12);
    }

    @Test
    void similarNamesDoNotMatchEachOther() {
        assertThat(PeakFlops.denseBf16("NVIDIA L40S").getAsDouble()).isEqualTo(362e12);
        assertThat(PeakFlops.denseBf16("NVIDIA L4").getAsDouble()).isEqualTo(121e12);
        assertThat(PeakFlops.denseBf16("NVIDIA A10").getAsDouble()).isEqualTo(125e12);
        assertThat(PeakFlops.denseBf16("NVIDIA GeForce RTX 4090")).isEmpty();
        assertThat(PeakFlops.denseBf16("NVIDIA L40")).isEmpty();
    }
}
