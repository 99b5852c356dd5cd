package dev.moe.runtime.train;

import static com.google.common.truth.Truth.assertThat;

import org.junit.jupiter.api.Test;

/** Model FLOP/s and MFU from tokens/s: 3x the forward count per token, over the peak. */
class ThroughputTest {
    @Test
    void modelFlopsAndMfuFollowPalmsDefinition() {
        // the 954 M model of bench/gpu: 439 MFLOP forward per token, 93.7k tokens/s on an H200 (989 TFLOP/s dense bf16)
        Throughput t = Throughput.ofForward(439e6, 989e12, "NVIDIA H200, dense bf16");
        assertThat(t.trainFlopsPerToken()).isEqualTo(1317e6);
        assertThat(t.modelFlops(93_700)).isWithin(1).of(1317e6 * 93_700);
        assertThat(t.mfu(93_700)).isWithin(1e-9).of(1317e6 * 93_700 / 989e12);
        assertThat(t.progress(93_700)).isEqualTo("  123.4 TFLOP/s  MFU 12.5%");
        assertThat(t.json(93_700)).isEqualTo(",\"model_tflops\":123.4,\"mfu\":0.1248");
    }

    @Test
    void aSmallMfuKeepsTwoSignificantDigits() {
        // mixtral.moe's tiny model on an H200: 259.7 GFLOP/s
        Throughput t = Throughput.ofForward(2.5e6, 989e12, "NVIDIA H200, dense bf16");
        assertThat(t.progress(34_600)).isEqualTo("  259.5 GFLOP/s  MFU 0.026%");
    }

    @Test
    void withoutAPeakOnlyModelFlopsAreShown() {
        Throughput t = Throughput.ofForward(4.6e6, Double.NaN, "");
        assertThat(t.mfu(10_000)).isNaN();
        assertThat(t.progress(10_000)).isEqualTo("  138.0 GFLOP/s");
        assertThat(t.json(10_000)).isEqualTo(",\"model_tflops\":0.1380");
        // a test-sized model on one CPU thread
        assertThat(Throughput.ofForward(22.3e3, Double.NaN, "").progress(162)).isEqualTo("  10.8 MFLOP/s");
    }

    @Test
    void withoutACountNothingIsShown() {
        assertThat(Throughput.NONE.progress(1e5)).isEmpty();
        assertThat(Throughput.NONE.json(1e5)).isEmpty();
    }
}
