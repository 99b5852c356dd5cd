package dev.moe.cuda.dist;

import java.util.Arrays;

/**
 * The renumbering that lets any placement run on sorted rows: each expert's <em>slot</em> is its position in the rank-major
 * concatenation of the placement's lists (rank 0's experts ascending, then rank 1's, ...), so in slot order each rank's experts
 * are a contiguous range in rank order ({@link #renumbered}, which {@link SortedDispatch} takes). A layer that sorts its rows by
 * slot instead of by expert id sends each rank's rows as one slice; everything else (the routing, the counts, each row's rank
 * within its expert, the expert loads) keeps the original ids. A placement that is already contiguous in rank order gives the
 * identity ({@link #identity}), and its layer sorts by expert id as before.
 */
public final class ExpertOrder {
    private final ExpertPlacement placement;
    /** [E] the expert in each slot. */
    private final int[] order;
    /** [E] each expert's slot. */
    private final int[] slot;
    private final boolean identity;
    private final ExpertPlacement renumbered;

    private ExpertOrder(ExpertPlacement placement) {
        this.placement = placement;
        int e = placement.experts();
        order = new int[e];
        slot = new int[e];
        int[][] ranges = new int[placement.ranks()][];
        int next = 0;
        boolean same = true;
        for (int r = 0; r < placement.ranks(); r++) {
            ranges[r] = new int[placement.localExperts(r)];
            for (int l = 0; l < ranges[r].length; l++) {
                int expert = placement.globalExpert(r, l);
                order[next] = expert;
                slot[expert] = next;
                ranges[r][l] = next;
                same &= expert == next;
                next++;
            }
        }
        identity = same;
        renumbered = same ? placement : ExpertPlacement.explicit(e, ranges);
    }

    public static ExpertOrder of(ExpertPlacement placement) {
        return new ExpertOrder(placement);
    }

    public ExpertPlacement placement() {
        return placement;
    }

    /** Whether every slot holds its own expert: the placement is contiguous in rank order and nothing needs renumbering. */
    public boolean identity() {
        return identity;
    }

    /** The expert in slot {@code s}. */
    public int expertAt(int s) {
        return order[s];
    }

    /** Expert {@code e}'s slot. */
    public int slotOf(int e) {
        return slot[e];
    }

    /** [E] the expert in each slot (a copy): the table a layer's offsets kernel reads. */
    public int[] order() {
        return order.clone();
    }

    /** The placement of the slots: each rank the same number of experts as in {@link #placement}, as a contiguous range in rank order. */
    public ExpertPlacement renumbered() {
        return renumbered;
    }

    /** Per-expert {@code counts} ([E], by expert id) in slot order. */
    public int[] toSlots(int[] counts) {
        if (counts.length != order.length) {
            throw new IllegalArgumentException(counts.length + " counts for " + order.length + " experts");
        }
        int[] out = new int[counts.length];
        for (int s = 0; s < out.length; s++) {
            out[s] = counts[order[s]];
        }
        return out;
    }

    @Override
    public String toString() {
        return identity ? "identity" : "slots " + Arrays.toString(order);
    }
}
