package dev.moe.runtime.train;

import java.util.Locale;

/**
 * How a training step's tokens/s turns into model FLOP/s and model FLOP utilisation (MFU, PaLM's definition: the FLOPs the
 * model needs per token, forward and backward, times tokens/s, over the hardware's peak; recomputation and padding do not
 * count).
 *
 * @param trainFlopsPerToken forward + backward FLOPs per token (3 x the forward's: the backward costs two forwards)
 * @param peakFlops the peak FLOP/s of one device (or worker) that the MFU is measured against; NaN when unknown
 * @param peakSource what the peak is, for the run's header (e.g. "NVIDIA H200, dense bf16"); empty when unknown
 */
public record Throughput(double trainFlopsPerToken, double peakFlops, String peakSource) {
    /** No FLOP figures: the progress line and the metrics show tokens/s only. */
    public static final Throughput NONE = new Throughput(Double.NaN, Double.NaN, "");

    /** From the forward FLOPs per token ({@code moe info}'s count) and a peak, NaN when unknown. */
    public static Throughput ofForward(double forwardFlopsPerToken, double peakFlops, String peakSource) {
        return new Throughput(3 * forwardFlopsPerToken, peakFlops, peakSource);
    }

    /** Model FLOP/s at {@code tokensPerSecond}, NaN without a FLOP count. */
    public double modelFlops(double tokensPerSecond) {
        return trainFlopsPerToken * tokensPerSecond;
    }

    /** Model FLOP utilisation in [0, 1] (more if the count is off), NaN without a FLOP count or a peak. */
    public double mfu(double tokensPerSecond) {
        return peakFlops > 0 ? modelFlops(tokensPerSecond) / peakFlops : Double.NaN;
    }

    /** The progress line's part, e.g. {@code "  118 TFLOP/s  MFU 11.9%"}; empty without a FLOP count. */
    String progress(double tokensPerSecond) {
        double f = modelFlops(tokensPerSecond);
        if (!Double.isFinite(f)) {
            return "";
        }
        String flops = f >= 1e12 ? String.format(Locale.ROOT, "%.1f TFLOP/s", f / 1e12) : f >= 1e9 ? String.format(Locale.ROOT, "%.1f GFLOP/s", f / 1e9)
                : String.format(Locale.ROOT, "%.1f MFLOP/s", f / 1e6);
        double mfu = mfu(tokensPerSecond);
        // a tiny model on a large GPU is far below 1%: two significant digits rather than "0.0%"
        String percent = !Double.isFinite(mfu) ? "" : 100 * mfu >= 1 ? String.format(Locale.ROOT, "  MFU %.1f%%", 100 * mfu)
                : String.format(Locale.ROOT, "  MFU %.2g%%", 100 * mfu);
        return "  " + flops + percent;
    }

    /** The metrics line's fields, e.g. {@code ",\"model_tflops\":118.2,\"mfu\":0.1195"}; empty without a FLOP count. */
    String json(double tokensPerSecond) {
        double f = modelFlops(tokensPerSecond);
        if (!Double.isFinite(f)) {
            return "";
        }
        double mfu = mfu(tokensPerSecond);
        return String.format(Locale.ROOT, ",\"model_tflops\":%.4g", f / 1e12) + (Double.isFinite(mfu) ? String.format(Locale.ROOT, ",\"mfu\":%.4g", mfu) : "");
    }
}
