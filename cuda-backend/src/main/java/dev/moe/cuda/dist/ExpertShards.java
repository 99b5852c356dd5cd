package dev.moe.cuda.dist;

import java.util.Arrays;

/**
 * Expert tensors between their global layout {@code [E, ...]} (one block of {@code perExpert}
 * values per expert, in expert order: how checkpoints store them) and a rank's local layout (its
 * experts' blocks in local order), so that a checkpoint saved on any number of GPUs loads on any
 * other: each rank slices what it holds out of the global tensor, and saving gathers the slices back.
 */
public final class ExpertShards {
    private ExpertShards() {}

    /** Rank {@code rank}'s blocks of a global tensor, in local order. */
    public static float[] local(float[] global, int perExpert, ExpertPlacement placement, int rank) {
        check(global.length, (long) placement.experts() * perExpert, "global expert tensor");
        int n = placement.localExperts(rank);
        float[] out = new float[n * perExpert];
        for (int l = 0; l < n; l++) {
            System.arraycopy(global, placement.globalExpert(rank, l) * perExpert, out, l * perExpert, perExpert);
        }
        return out;
    }

    /** The global tensor from every rank's local blocks. */
    public static float[] assemble(float[][] locals, int perExpert, ExpertPlacement placement) {
        if (locals.length != placement.ranks()) {
            throw new IllegalArgumentException(locals.length + " shards for a placement on " + placement.ranks() + " ranks");
        }
        float[] out = new float[placement.experts() * perExpert];
        for (int r = 0; r < locals.length; r++) {
            check(locals[r].length, (long) placement.localExperts(r) * perExpert, "rank " + r + "'s shard");
            for (int l = 0; l < placement.localExperts(r); l++) {
                System.arraycopy(locals[r], l * perExpert, out, placement.globalExpert(r, l) * perExpert, perExpert);
            }
        }
        return out;
    }

    /**
     * Gathers every rank's local blocks to rank 0 (an all-to-all in which only rank 0 receives) and
     * returns the global tensor there; the other ranks get an empty array.
     */
    public static float[] gatherToRankZero(Exchange exchange, float[] local, int perExpert, ExpertPlacement placement) {
        int size = exchange.size(), me = exchange.rank();
        check(local.length, (long) placement.localExperts(me) * perExpert, "rank " + me + "'s shard");
        int[] send = new int[size];
        send[0] = placement.localExperts(me);
        int[] recv = new int[size];
        if (me == 0) {
            for (int r = 0; r < size; r++) {
                recv[r] = placement.localExperts(r);
            }
        }
        float[] got = exchange.allToAllV(local, send, recv, perExpert);
        if (me != 0) {
            return new float[0];
        }
        float[][] shards = new float[size][];
        int at = 0;
        for (int r = 0; r < size; r++) {
            shards[r] = Arrays.copyOfRange(got, at, at + recv[r] * perExpert);
            at += recv[r] * perExpert;
        }
        return assemble(shards, perExpert, placement);
    }

    private static void check(long got, long want, String what) {
        if (got != want) {
            throw new IllegalArgumentException(what + " has " + got + " values, expected " + want);
        }
    }
}
