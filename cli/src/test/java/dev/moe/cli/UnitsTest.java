package dev.moe.cli;

import static com.google.common.truth.Truth.assertThat;

import dev.moe.compiler.ir.Count;
import org.junit.jupiter.api.Test;

class UnitsTest {
    @Test
    void countsHaveThreeSignificantDigits() {
        assertThat(Units.count(0)).isEqualTo("0");
        assertThat(Units.count(7)).isEqualTo("7");
        assertThat(Units.count(512)).isEqualTo("512");
        assertThat(Units.count(1_000)).isEqualTo("1K");
        assertThat(Units.count(65_664)).isEqualTo("65.7K");
        assertThat(Units.count(6_621_440)).isEqualTo("6.62M");
        assertThat(Units.count(2_300_000)).isEqualTo("2.3M");
        assertThat(Units.count(1_500_000_000L)).isEqualTo("1.5B");
        assertThat(Units.count(1.2e12)).isEqualTo("1.2T");
    }

    @Test
    void roundingUpCrossesIntoTheNextUnit() {
        assertThat(Units.count(999)).isEqualTo("999");
        assertThat(Units.count(999.7)).isEqualTo("1K");
        assertThat(Units.count(999_700)).isEqualTo("1M");
        assertThat(Units.count(999_499)).isEqualTo("999K");
    }

    @Test
    void bytesUseBinaryUnitsWithOneDecimal() {
        assertThat(Units.bytes(0)).isEqualTo("0 bytes");
        assertThat(Units.bytes(1023)).isEqualTo("1023 bytes");
        assertThat(Units.bytes(1024)).isEqualTo("1.0 KiB");
        assertThat(Units.bytes(4_158_464)).isEqualTo("4.0 MiB");
        assertThat(Units.bytes(3_765_248)).isEqualTo("3.6 MiB");
        assertThat(Units.bytes(16L * 46_700_000_000L)).isEqualTo("695.9 GiB");
        // rounding up crosses into the next unit
        assertThat(Units.bytes((1L << 30) - 1)).isEqualTo("1.0 GiB");
        assertThat(Units.bytes((1L << 30) - (1L << 20))).isEqualTo("1023.0 MiB");
    }

    @Test
    void flopsUseSiPrefixes() {
        assertThat(Units.flops(512)).isEqualTo("512 FLOP");
        assertThat(Units.flops(4_600_000)).isEqualTo("4.6 MFLOP");
        assertThat(Units.flops(2.5e9)).isEqualTo("2.5 GFLOP");
    }

    @Test
    void countsThatDependOnRoutingShowTheirRange() {
        assertThat(Units.count(Count.exactly(2_310_000))).isEqualTo("2.31M");
        assertThat(Units.count(new Count(1_200_000, 2_310_000, 3_400_000))).isEqualTo("1.2M–3.4M (expected 2.31M)");
        assertThat(Units.flops(new Count(3_100_000, 4_600_000, 5_200_000))).isEqualTo("3.1–5.2 MFLOP (expected 4.6 MFLOP)");
        assertThat(Units.flops(new Count(950_000, 1_000_000, 1_200_000))).isEqualTo("950 KFLOP–1.2 MFLOP (expected 1 MFLOP)");
    }

    @Test
    void decimalsPrintAsWritten() {
        assertThat(Units.decimal(1_000_000)).isEqualTo("1000000");
        assertThat(Units.decimal(1e-5)).isEqualTo("0.00001");
        assertThat(Units.decimal(1e-8)).isEqualTo("1e-8");
        assertThat(Units.decimal(0.5)).isEqualTo("0.5");
        assertThat(Units.exact(6_621_440)).isEqualTo("6,621,440");
    }
}
