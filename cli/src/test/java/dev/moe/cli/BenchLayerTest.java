package dev.moe.cli;

import static com.google.common.truth.Truth.assertThat;

import dev.moe.runtime.cpu.CpuBackend;
import org.junit.jupiter.api.Test;

/** The layer `moe bench` times, with zero experts: steering decides what runs, and zero experts' slots output nothing. */
class BenchLayerTest {
    static final BenchCommand.Shape SHAPE = new BenchCommand.Shape(64, 16, 4, 8, 2);

    @Test
    void slotsSteeredAwayFromZeroExpertsComputeWhatTheLayerWithoutThemComputes() {
        BenchCommand.Layer plain = new BenchCommand.Layer(SHAPE, new CpuBackend(1, false));
        BenchCommand.Layer steered = new BenchCommand.Layer(SHAPE, 4, -1e4f, new CpuBackend(1, false));
        plain.forward();
        plain.backward();
        steered.forward();
        steered.backward();
        assertThat(steered.offsets[SHAPE.experts()]).isEqualTo(SHAPE.tokens() * SHAPE.k());
        assertThat(steered.out).isEqualTo(plain.out);
        assertThat(steered.dx).isEqualTo(plain.dx);
        assertThat(steered.dGateW).isEqualTo(plain.dGateW);
    }

    @Test
    void slotsOnZeroExpertsOutputZeroAndRunNoExpert() {
        BenchCommand.Layer zero = new BenchCommand.Layer(SHAPE, 4, 1e4f, new CpuBackend(1, false));
        zero.forward();
        zero.backward();
        assertThat(zero.offsets[SHAPE.experts()]).isEqualTo(0);
        assertThat(zero.out).isEqualTo(new float[zero.out.length]);
        assertThat(zero.dx).isEqualTo(new float[zero.dx.length]);
        assertThat(zero.dGateW).isEqualTo(new float[zero.dGateW.length]);
    }

    @Test
    void routedNormallyBothKindsTakeSlots() {
        BenchCommand.Layer mixed = new BenchCommand.Layer(SHAPE, 4, 0f, new CpuBackend(1, false));
        mixed.forward();
        int ffnRows = mixed.offsets[SHAPE.experts()];
        assertThat(ffnRows).isGreaterThan(0);
        assertThat(ffnRows).isLessThan(SHAPE.tokens() * SHAPE.k());
    }
}
