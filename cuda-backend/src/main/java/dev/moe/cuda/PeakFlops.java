package dev.moe.cuda;

import java.util.List;
import java.util.Locale;
import java.util.OptionalDouble;

/**
 * The dense bf16 tensor-core peak of the GPUs the field reports model FLOP utilisation against (NVIDIA's datasheets,
 * without structured sparsity), found by the device name the driver reports. The most specific names come first: an
 * "H100 PCIe" is not an SXM H100. Unknown devices have no peak ({@code MOE_PEAK_TFLOPS} supplies one).
 */
public final class PeakFlops {
    private record Entry(String nameContains, double teraFlops) {}

    private static final List<Entry> DENSE_BF16 = List.of(
            new Entry("H200 NVL", 835),
            new Entry("H200", 989),
            new Entry("GH200", 989),
            new Entry("H100 PCIE", 756),
            new Entry("H100 NVL", 835),
            new Entry("H100", 989),
            new Entry("B200", 2250),
            new Entry("A100", 312),
            new Entry("L40S", 362),
            new Entry("L4", 121),
            new Entry("A10", 125));

    private PeakFlops() {}

    /** The dense bf16 peak in FLOP/s of the device called {@code deviceName} (e.g. "NVIDIA H200"), empty when not in the table. */
    public static OptionalDouble denseBf16(String deviceName) {
        String name = deviceName.toUpperCase(Locale.ROOT);
        for (Entry e : DENSE_BF16) {
            // whole words only: "L4" must not match "L40S", nor "A10" "A100"
            if (name.matches(".*(^|[^A-Z0-9])" + java.util.regex.Pattern.quote(e.nameContains()) + "($|[^A-Z0-9]).*")) {
                return OptionalDouble.of(e.teraFlops() * 1e12);
            }
        }
        return OptionalDouble.empty();
    }
}
