package dev.moe.cuda;

import static com.google.common.truth.Truth.assertThat;
import static org.junit.jupiter.api.Assertions.assertThrows;

import org.junit.jupiter.api.Test;

/**
 * A launch's arguments against the kernel's parameter sizes (which the driver reports): a missing argument or a wrong width
 * is an error naming the kernel, not a crash inside libcuda. The case that motivated it: a kernel that gained a parameter
 * while one caller kept the old argument list.
 */
class LaunchArgumentsTest {

    @Test
    void matchingArgumentsPass() {
        Object[] args = {1L, 2, 3f};
        assertThat(CudaContext.fitArguments("k", new int[] {8, 4, 4}, args)).isSameInstanceAs(args);
        Object[] unknown = {1L};
        assertThat(CudaContext.fitArguments("k", null, unknown)).isSameInstanceAs(unknown); // a driver that cannot tell: no check
    }

    @Test
    void anIntForALongParameterIsWidenedAsCWould() {
        Object[] args = {1L, -3, 2f};
        Object[] fitted = CudaContext.fitArguments("expert_act", new int[] {8, 8, 4}, args);
        assertThat(fitted).asList().containsExactly(1L, -3L, 2f).inOrder();
        assertThat(args[1]).isEqualTo(-3); // the caller's array is left alone
    }

    @Test
    void aMissingArgumentNamesTheKernelAndTheCounts() {
        // router_backward_balance gained `int auxSeq` after `aux`: the old call passes 10 of its 11 arguments
        int[] sizes = {8, 8, 8, 8, 4, 8, 4, 4, 4, 4, 8};
        Object[] old = {1L, 2L, 3L, 4L, 64, 5L, 0.1f, 0f, 1f, 6L};
        CudaException e = assertThrows(CudaException.class, () -> CudaContext.fitArguments("router_backward_balance", sizes, old));
        assertThat(e).hasMessageThat().isEqualTo("kernel router_backward_balance takes 11 arguments, launched with 10");
    }

    @Test
    void aLongThatFitsAnIntIsNarrowedAndOneThatDoesNotNamesTheArgument() {
        assertThat(CudaContext.fitArguments("combine", new int[] {8, 4}, new Object[] {1L, 2L})).asList().containsExactly(1L, 2).inOrder();
        long pointer = 0x7f00_1234_0000L;
        CudaException e = assertThrows(CudaException.class, () -> CudaContext.fitArguments("combine", new int[] {8, 4}, new Object[] {1L, pointer}));
        assertThat(e).hasMessageThat().isEqualTo("kernel combine's argument 2 is 4 bytes wide, launched with a Long of 8");
    }
}
