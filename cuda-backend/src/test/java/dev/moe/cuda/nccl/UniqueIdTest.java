package dev.moe.cuda.nccl;

import static com.google.common.truth.Truth.assertThat;
import static org.junit.jupiter.api.Assertions.assertThrows;

import java.util.SplittableRandom;
import org.junit.jupiter.api.Test;

/**
 * The unique id of the expert exchange's own communicator travels as a sum over the world's ranks, rank 0 sending it one long a
 * byte and the others zeros: every byte value (those with the sign bit too) must come back, and two ids summed must be refused.
 */
class UniqueIdTest {

    private static UniqueId random(long seed) {
        byte[] b = new byte[UniqueId.BYTES];
        new SplittableRandom(seed).nextBytes(b);
        return new UniqueId(b);
    }

    @Test
    void anIdSummedWithZerosArrivesWhole() {
        for (long seed = 0; seed < 20; seed++) {
            UniqueId id = random(seed);
            long[] sum = id.toLongs();
            long[] zeros = new long[UniqueId.BYTES]; // another rank's contribution
            for (int i = 0; i < sum.length; i++) {
                assertThat(sum[i]).isAtLeast(0L);
                assertThat(sum[i]).isAtMost(255L);
                sum[i] += zeros[i];
            }
            assertThat(UniqueId.fromLongs(sum).bytes()).isEqualTo(id.bytes());
        }
    }

    @Test
    void twoIdsSummedOrAShortArrayAreRefused() {
        byte[] high = new byte[UniqueId.BYTES];
        java.util.Arrays.fill(high, (byte) 0xff);
        long[] a = new UniqueId(high).toLongs(), b = new UniqueId(high).toLongs();
        for (int i = 0; i < a.length; i++) {
            a[i] += b[i];
        }
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class, () -> UniqueId.fromLongs(a));
        assertThat(e).hasMessageThat().contains("more than one rank");
        assertThrows(IllegalArgumentException.class, () -> UniqueId.fromLongs(new long[3]));
    }
}
