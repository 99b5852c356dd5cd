package dev.moe.runtime;

/**
 * Dispatch for dropless MoE layers: slots (token t's r-th choice is slot t·k + r) are grouped by
 * expert with a stable counting sort, so that each expert's tokens are contiguous for one grouped
 * matmul and no loop runs per token per expert.
 */
public final class Routing {
    private Routing() {}

    /**
     * @param expertOfSlot the expert of each of {@code slots} slots
     * @param order filled with the slots grouped by expert, in slot order within an expert
     * @param offsets filled with the start of each expert's group; {@code offsets[experts]} = slots
     */
    public static void sortByExpert(int[] expertOfSlot, int slots, int experts, int[] order, int[] offsets) {
        java.util.Arrays.fill(offsets, 0, experts + 1, 0);
        for (int s = 0; s < slots; s++) {
            offsets[expertOfSlot[s] + 1]++;
        }
        for (int e = 0; e < experts; e++) {
            offsets[e + 1] += offsets[e];
        }
        int[] next = new int[experts];
        for (int e = 0; e < experts; e++) {
            next[e] = offsets[e];
        }
        for (int s = 0; s < slots; s++) {
            order[next[expertOfSlot[s]]++] = s;
        }
    }
}
