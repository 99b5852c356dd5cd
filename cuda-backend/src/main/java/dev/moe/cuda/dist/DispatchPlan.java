package dev.moe.cuda.dist;

import java.util.Arrays;

/**
 * Who sends what to whom, for one rank's routed assignments. Assignment {@code a} is token
 * {@code token[a]}'s {@code slot[a]}-th choice, expert {@code expert[a]}. The send buffer holds one
 * row per assignment, grouped by destination rank, within a rank by the destination's local expert,
 * and within an expert in token order (then slot order): so each destination receives, from each
 * source, its experts' rows already grouped, and the exchange is an all-to-all with variable sizes
 * after an all-to-all of the per-expert counts ({@link #countsMessage}).
 *
 * <p>The combine goes the other way with the same counts: expert outputs come back into the send
 * buffer's positions, and {@link #sendPosition} (the inverse of {@link #sendOrder}) finds each
 * assignment's row.
 */
public final class DispatchPlan {
    private final ExpertPlacement placement;
    /** [ranks] rows to each destination. */
    private final int[] sendCounts;
    /** [ranks + 1] first row of each destination in the send buffer. */
    private final int[] sendOffsets;
    /** [ranks][localExperts(r)] rows for each of destination r's local experts. */
    private final int[][] sendSplits;
    /** [assignments] the assignment whose row is at each send position. */
    private final int[] sendOrder;
    /** [assignments] the send position of each assignment. */
    private final int[] sendPosition;
    /** [assignments] each assignment's token. */
    private final int[] token;

    private DispatchPlan(ExpertPlacement placement, int[] token, int[] sendCounts, int[] sendOffsets, int[][] sendSplits, int[] sendOrder,
            int[] sendPosition) {
        this.placement = placement;
        this.token = token;
        this.sendCounts = sendCounts;
        this.sendOffsets = sendOffsets;
        this.sendSplits = sendSplits;
        this.sendOrder = sendOrder;
        this.sendPosition = sendPosition;
    }

    /**
     * The plan for assignments given as three parallel arrays; tokens are 0..tokens-1. Two stable
     * counting sorts (by token, then by destination rank and local expert) give the send order in
     * O(assignments + tokens + experts).
     */
    public static DispatchPlan build(ExpertPlacement placement, int tokens, int[] token, int[] slot, int[] expert) {
        int n = token.length;
        if (slot.length != n || expert.length != n) {
            throw new IllegalArgumentException("token, slot and expert arrays differ in length (" + n + ", " + slot.length + ", "
                    + expert.length + ")");
        }
        int experts = placement.experts();
        for (int a = 0; a < n; a++) {
            if (token[a] < 0 || token[a] >= tokens) {
                throw new IllegalArgumentException("assignment " + a + " names token " + token[a] + " of " + tokens);
            }
            if (expert[a] < 0 || expert[a] >= experts) {
                throw new IllegalArgumentException("assignment " + a + " names expert " + expert[a] + " of " + experts);
            }
        }
        // By (token, slot): counting sort by slot, then a stable one by token.
        int maxSlot = 0;
        for (int s : slot) {
            if (s < 0) {
                throw new IllegalArgumentException("negative slot " + s);
            }
            maxSlot = Math.max(maxSlot, s);
        }
        int[] bySlot = countingSort(identity(n), slot, maxSlot + 1);
        int[] byToken = countingSort(bySlot, token, tokens);
        // Then by the key (destination rank, local expert), which orders experts the way the ranks hold them.
        int ranks = placement.ranks();
        int[] keyBase = new int[ranks + 1];
        for (int r = 0; r < ranks; r++) {
            keyBase[r + 1] = keyBase[r] + placement.localExperts(r);
        }
        int[] key = new int[n];
        for (int a = 0; a < n; a++) {
            key[a] = keyBase[placement.rankOf(expert[a])] + placement.localIndex(expert[a]);
        }
        int[] order = countingSort(byToken, key, experts);
        int[] position = new int[n];
        for (int p = 0; p < n; p++) {
            position[order[p]] = p;
        }
        int[][] splits = new int[ranks][];
        int[] counts = new int[ranks];
        for (int r = 0; r < ranks; r++) {
            splits[r] = new int[placement.localExperts(r)];
        }
        for (int a = 0; a < n; a++) {
            int r = placement.rankOf(expert[a]);
            splits[r][placement.localIndex(expert[a])]++;
            counts[r]++;
        }
        int[] offsets = new int[ranks + 1];
        for (int r = 0; r < ranks; r++) {
            offsets[r + 1] = offsets[r] + counts[r];
        }
        return new DispatchPlan(placement, token.clone(), counts, offsets, splits, order, position);
    }

    /** The assignments of {@code tokens} tokens that each chose {@code k} experts, row-major [tokens, k]. */
    public static DispatchPlan buildTopK(ExpertPlacement placement, int tokens, int k, int[] experts) {
        if (experts.length != tokens * k) {
            throw new IllegalArgumentException("expected " + tokens + "×" + k + " expert choices, got " + experts.length);
        }
        int[] token = new int[experts.length];
        int[] slot = new int[experts.length];
        for (int a = 0; a < experts.length; a++) {
            token[a] = a / k;
            slot[a] = a % k;
        }
        return build(placement, tokens, token, slot, experts);
    }

    /** A stable counting sort of {@code items} by {@code keys[item]} in [0, range). */
    private static int[] countingSort(int[] items, int[] keys, int range) {
        int[] start = new int[range + 1];
        for (int item : items) {
            start[keys[item] + 1]++;
        }
        for (int i = 0; i < range; i++) {
            start[i + 1] += start[i];
        }
        int[] out = new int[items.length];
        for (int item : items) {
            out[start[keys[item]]++] = item;
        }
        return out;
    }

    private static int[] identity(int n) {
        int[] out = new int[n];
        for (int i = 0; i < n; i++) {
            out[i] = i;
        }
        return out;
    }

    public ExpertPlacement placement() {
        return placement;
    }

    /** The token of assignment {@code a}. */
    public int token(int a) {
        return token[a];
    }

    public int assignments() {
        return sendOrder.length;
    }

    public int sendCount(int rank) {
        return sendCounts[rank];
    }

    public int[] sendCounts() {
        return sendCounts.clone();
    }

    /** The first send row for {@code rank}; {@code sendOffset(ranks())} is the number of rows. */
    public int sendOffset(int rank) {
        return sendOffsets[rank];
    }

    /** Rows for destination {@code rank}'s local expert {@code local}. */
    public int sendSplit(int rank, int local) {
        return sendSplits[rank][local];
    }

    /** The assignment whose row is at send position {@code p}. */
    public int sendOrder(int p) {
        return sendOrder[p];
    }

    public int[] sendOrder() {
        return sendOrder.clone();
    }

    /** The send (and combine) position of assignment {@code a}. */
    public int sendPosition(int a) {
        return sendPosition[a];
    }

    /** The largest number of experts on any rank: the block size of {@link #countsMessage}. */
    public static int countsBlock(ExpertPlacement placement) {
        int max = 1;
        for (int r = 0; r < placement.ranks(); r++) {
            max = Math.max(max, placement.localExperts(r));
        }
        return max;
    }

    /**
     * The first all-to-all's payload: block r (of {@link #countsBlock} ints, zero-padded) holds the
     * rows this rank sends to each of rank r's local experts.
     */
    public int[] countsMessage() {
        int block = countsBlock(placement);
        int[] out = new int[placement.ranks() * block];
        for (int r = 0; r < placement.ranks(); r++) {
            System.arraycopy(sendSplits[r], 0, out, r * block, sendSplits[r].length);
        }
        return out;
    }

    /** Rows of width {@code width} gathered into the send order ({@code rows} is [tokens, width]). */
    public float[] gather(float[] rows, int width) {
        float[] out = new float[sendOrder.length * width];
        for (int p = 0; p < sendOrder.length; p++) {
            System.arraycopy(rows, token[sendOrder[p]] * width, out, p * width, width);
        }
        return out;
    }

    @Override
    public String toString() {
        return "send " + Arrays.toString(sendCounts) + " per rank, " + Arrays.deepToString(sendSplits) + " per local expert";
    }
}
