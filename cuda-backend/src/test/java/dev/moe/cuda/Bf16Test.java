package dev.moe.cuda;

import static com.google.common.truth.Truth.assertThat;

import org.junit.jupiter.api.Test;

class Bf16Test {

    @Test
    void roundsToNearestEven() {
        assertThat(Bf16.fromFloat(1f)).isEqualTo((short) 0x3f80);
        // 1 + 2^-8 lies exactly between 1 and 1 + 2^-7: ties go to the even pattern, 1.
        assertThat(Bf16.fromFloat(Float.intBitsToFloat(0x3f808000))).isEqualTo((short) 0x3f80);
        // 1 + 3·2^-8 lies between 1 + 2^-7 (odd) and 1 + 2^-6: ties to even rounds up.
        assertThat(Bf16.fromFloat(Float.intBitsToFloat(0x3f818000))).isEqualTo((short) 0x3f82);
        assertThat(Bf16.fromFloat(Float.intBitsToFloat(0x3f808001))).isEqualTo((short) 0x3f81);
        assertThat(Bf16.toFloat(Bf16.fromFloat(-2.5f))).isEqualTo(-2.5f);
    }

    @Test
    void keepsInfinitiesAndNaN() {
        assertThat(Bf16.round(Float.POSITIVE_INFINITY)).isEqualTo(Float.POSITIVE_INFINITY);
        assertThat(Bf16.round(Float.NEGATIVE_INFINITY)).isEqualTo(Float.NEGATIVE_INFINITY);
        assertThat(Float.isNaN(Bf16.round(Float.NaN))).isTrue();
        assertThat(Bf16.round(Float.MAX_VALUE)).isEqualTo(Float.POSITIVE_INFINITY);
    }

    @Test
    void relativeErrorIsAtMostHalfAnUlp() {
        java.util.Random r = new java.util.Random(3);
        for (int i = 0; i < 100_000; i++) {
            float v = (float) (r.nextGaussian() * Math.pow(10, r.nextInt(10) - 5));
            assertThat((double) Math.abs(Bf16.round(v) - v)).isAtMost(Math.abs(v) * 0x1p-8 + 1e-45);
        }
    }
}
