package dev.moe.cuda.nccl;

import static com.google.common.truth.Truth.assertThat;
import static org.junit.jupiter.api.Assertions.assertThrows;

import dev.moe.cuda.nccl.Nccl.DataType;
import org.junit.jupiter.api.Test;

/** How the device exchange turns rows into NCCL counts (no GPU needed). */
class NcclDeviceExchangeTest {

    @Test
    void rowsMoveAsTheWidestTypeThatDividesThem() {
        assertThat(NcclDeviceExchange.unit(64 * 4)).isEqualTo(DataType.FLOAT32);
        assertThat(NcclDeviceExchange.unit(20 * 2)).isEqualTo(DataType.FLOAT32); // 20 bf16 values: 10 four-byte units
        assertThat(NcclDeviceExchange.unit(7 * 2)).isEqualTo(DataType.BFLOAT16);
        assertThat(NcclDeviceExchange.unit(3)).isEqualTo(DataType.UINT8);
        assertThat(assertThrows(IllegalArgumentException.class, () -> NcclDeviceExchange.unit(0))).hasMessageThat().isEqualTo("rows of 0 bytes");
    }

    @Test
    void countsAreRowsTimesUnitsPerRowAndMustFitAnInt() {
        assertThat(NcclDeviceExchange.elements(new int[] {0, 3, 5}, 16)).asList().containsExactly(0, 48, 80).inOrder();
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class,
                () -> NcclDeviceExchange.elements(new int[] {1, 1 << 20}, 4096));
        assertThat(e).hasMessageThat().isEqualTo("1048576 rows of 4096 elements for rank 1: more than an all-to-all's int count");
    }
}
