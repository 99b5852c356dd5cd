package dev.moe.cuda.dist;

import java.util.ArrayList;
import java.util.Arrays;
import java.util.Comparator;
import java.util.List;
import java.util.stream.IntStream;

/**
 * Which rank holds each routed expert, and each expert's index among its rank's experts. A rank's
 * experts are kept in ascending global order, so that its local expert {@code i} is the {@code i}-th
 * smallest expert id it holds; ranks may hold different numbers of experts (and possibly none).
 */
public final class ExpertPlacement {
    private final int[][] expertsOfRank;
    private final int[] rankOf;
    private final int[] localIndex;

    private ExpertPlacement(int[][] expertsOfRank, int experts) {
        this.expertsOfRank = expertsOfRank;
        this.rankOf = new int[experts];
        this.localIndex = new int[experts];
        for (int r = 0; r < expertsOfRank.length; r++) {
            for (int i = 0; i < expertsOfRank[r].length; i++) {
                rankOf[expertsOfRank[r][i]] = r;
                localIndex[expertsOfRank[r][i]] = i;
            }
        }
    }

    /**
     * Contiguous blocks: rank r holds experts [r·E/R, (r+1)·E/R) when R divides E; otherwise the first
     * E mod R ranks hold one expert more.
     */
    public static ExpertPlacement contiguous(int experts, int ranks) {
        if (experts < 1 || ranks < 1) {
            throw new IllegalArgumentException("an expert placement needs at least one expert and one rank (got " + experts
                    + " experts, " + ranks + " ranks)");
        }
        int[][] blocks = new int[ranks][];
        int next = 0;
        for (int r = 0; r < ranks; r++) {
            int n = experts / ranks + (r < experts % ranks ? 1 : 0);
            blocks[r] = IntStream.range(next, next + n).toArray();
            next += n;
        }
        return new ExpertPlacement(blocks, experts);
    }

    /** An explicit placement: {@code expertsOfRank[r]} lists rank r's experts; every expert exactly once. */
    public static ExpertPlacement explicit(int experts, int[][] expertsOfRank) {
        if (experts < 1 || expertsOfRank.length < 1) {
            throw new IllegalArgumentException("an expert placement needs at least one expert and one rank");
        }
        int[] owner = new int[experts];
        Arrays.fill(owner, -1);
        int[][] sorted = new int[expertsOfRank.length][];
        for (int r = 0; r < expertsOfRank.length; r++) {
            sorted[r] = expertsOfRank[r].clone();
            Arrays.sort(sorted[r]);
            for (int e : sorted[r]) {
                if (e < 0 || e >= experts) {
                    throw new IllegalArgumentException("rank " + r + " lists expert " + e + ", but the experts are 0.." + (experts - 1));
                }
                if (owner[e] >= 0) {
                    throw new IllegalArgumentException("expert " + e + " is placed on both rank " + owner[e] + " and rank " + r);
                }
                owner[e] = r;
            }
        }
        for (int e = 0; e < experts; e++) {
            if (owner[e] < 0) {
                throw new IllegalArgumentException("expert " + e + " is placed on no rank");
            }
        }
        return new ExpertPlacement(sorted, experts);
    }

    /**
     * A placement that balances measured per-expert token loads across ranks, with the same number of
     * experts per rank as {@link #contiguous} (so that the ranks' memory stays even): longest
     * processing time first, each expert, heaviest first, goes to the least loaded rank that still has
     * room (ties to the lower rank). LPT is within 4/3 of the best makespan without the room
     * constraint; MoETuner solves the same assignment with an ILP.
     */
    public static ExpertPlacement balanced(long[] loads, int ranks) {
        int experts = loads.length;
        ExpertPlacement shape = contiguous(experts, ranks);
        for (int e = 0; e < experts; e++) {
            if (loads[e] < 0) {
                throw new IllegalArgumentException("expert " + e + " has a negative load (" + loads[e] + ")");
            }
        }
        Integer[] order = IntStream.range(0, experts).boxed().toArray(Integer[]::new);
        Arrays.sort(order, Comparator.comparingLong((Integer e) -> -loads[e]).thenComparingInt(e -> e));
        long[] rankLoad = new long[ranks];
        List<List<Integer>> held = new ArrayList<>();
        for (int r = 0; r < ranks; r++) {
            held.add(new ArrayList<>());
        }
        for (int e : order) {
            int best = -1;
            for (int r = 0; r < ranks; r++) {
                if (held.get(r).size() < shape.expertsOfRank[r].length && (best < 0 || rankLoad[r] < rankLoad[best])) {
                    best = r;
                }
            }
            held.get(best).add(e);
            rankLoad[best] += loads[e];
        }
        int[][] lists = new int[ranks][];
        for (int r = 0; r < ranks; r++) {
            lists[r] = held.get(r).stream().mapToInt(Integer::intValue).toArray();
        }
        return explicit(experts, lists);
    }

    public int experts() {
        return rankOf.length;
    }

    public int ranks() {
        return expertsOfRank.length;
    }

    public int rankOf(int expert) {
        return rankOf[expert];
    }

    /** The expert's index among its rank's experts. */
    public int localIndex(int expert) {
        return localIndex[expert];
    }

    /** Rank r's experts, ascending. */
    public int[] expertsOf(int rank) {
        return expertsOfRank[rank].clone();
    }

    public int localExperts(int rank) {
        return expertsOfRank[rank].length;
    }

    /** The global id of rank r's local expert i. */
    public int globalExpert(int rank, int local) {
        return expertsOfRank[rank][local];
    }

    /** Tokens each rank would process under these per-expert loads. */
    public long[] rankLoads(long[] loads) {
        long[] out = new long[ranks()];
        for (int e = 0; e < experts(); e++) {
            out[rankOf[e]] += loads[e];
        }
        return out;
    }

    /** The busiest rank's load over the mean (1 is perfect balance; 0 loads give 1). */
    public double imbalance(long[] loads) {
        long[] per = rankLoads(loads);
        long max = Arrays.stream(per).max().orElse(0);
        long sum = Arrays.stream(per).sum();
        return sum == 0 ? 1 : (double) max * ranks() / sum;
    }

    @Override
    public String toString() {
        StringBuilder sb = new StringBuilder();
        for (int r = 0; r < ranks(); r++) {
            sb.append(r == 0 ? "" : " ").append("rank ").append(r).append(": ").append(Arrays.toString(expertsOfRank[r]));
        }
        return sb.toString();
    }
}
