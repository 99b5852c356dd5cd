package dev.moe.cuda.dist;

/**
 * Where one rank's experts lie in a layer's buffers that hold every expert ({@code w13 [E, GW, DIN]}, {@code w2 [E, D, F]} and
 * their gradients, as a device-resident model's arena does): the byte offsets of the rank's first expert in each, and the bytes
 * its experts take, for a placement whose ranks hold contiguous ranges ({@link SortedDispatch#requireContiguous}): one slice of each
 * buffer; a rank without experts has empty slices. Any placement: {@link #ofExperts}, each local expert's own offsets.
 *
 * @param w13 offset of the rank's first expert in w13 (weights, {@code weightBytes} per element)
 * @param w2 offset in w2
 * @param dW13 offset in w13's gradient ({@code gradBytes} per element)
 * @param dW2 offset in w2's gradient
 * @param w13Bytes the rank's experts' bytes of w13 (likewise for w2: {@code w2Bytes})
 */
public record ArenaSlices(long w13, long w2, long dW13, long dW2, long w13Bytes, long w2Bytes) {
    /**
     * Rank {@code rank}'s slices under {@code placement} for experts of {@code gw} gate/up rows of {@code in} inputs, {@code d}
     * outputs and {@code f} hidden units.
     */
    public static ArenaSlices of(ExpertPlacement placement, int rank, int gw, int in, int d, int f, int weightBytes, int gradBytes) {
        SortedDispatch.requireContiguous(placement);
        long first = 0;
        for (int r = 0; r < rank; r++) {
            first += placement.localExperts(r);
        }
        long n = placement.localExperts(rank), per13 = (long) gw * in, per2 = (long) d * f;
        return new ArenaSlices(first * per13 * weightBytes, first * per2 * weightBytes, first * per13 * gradBytes, first * per2 * gradBytes,
                n * per13 * weightBytes, n * per2 * weightBytes);
    }

    /**
     * Where each of a rank's experts lies in buffers that hold every expert, for any placement: local expert l (the rank's l-th
     * smallest expert id, {@link ExpertPlacement#globalExpert}) at {@code w13[l]} in w13, {@code w2[l]} in w2, and likewise in
     * the gradients. Byte offsets.
     */
    public record Experts(long[] w13, long[] w2, long[] dW13, long[] dW2) {}

    /** Rank {@code rank}'s experts' offsets under {@code placement}, the sizes as in {@link #of}. */
    public static Experts ofExperts(ExpertPlacement placement, int rank, int gw, int in, int d, int f, int weightBytes, int gradBytes) {
        int n = placement.localExperts(rank);
        long per13 = (long) gw * in, per2 = (long) d * f;
        long[] w13 = new long[n], w2 = new long[n], dW13 = new long[n], dW2 = new long[n];
        for (int l = 0; l < n; l++) {
            long e = placement.globalExpert(rank, l);
            w13[l] = e * per13 * weightBytes;
            w2[l] = e * per2 * weightBytes;
            dW13[l] = e * per13 * gradBytes;
            dW2[l] = e * per2 * gradBytes;
        }
        return new Experts(w13, w2, dW13, dW2);
    }
}
