package dev.moe.cli;

import dev.moe.compiler.ir.ExpertParallel;
import dev.moe.compiler.ir.Layer;
import dev.moe.compiler.ir.Model;
import dev.moe.compiler.ir.Moe;
import dev.moe.compiler.ir.Training;
import dev.moe.cuda.dist.ExpertPlacement;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Locale;
import java.util.Map;

/**
 * Where expert parallelism puts each MoE layer's routed experts for a run on a given number of ranks:
 * the recipe's {@code parallel} block (checked and resolved to lists by the compiler), else
 * {@code experts_per_rank}, else contiguous blocks. Pure bookkeeping: no GPU is touched.
 */
final class ExpertPlacements {
    private ExpertPlacements() {}

    /**
     * Each MoE layer's placement on {@code world} ranks, keyed by the layer's index in the model and
     * iterating in layer order (the order of a run's expert loads and of {@code moe placement}).
     *
     * @param training the model's train block, or null for a file without one (contiguous blocks)
     * @throws Recipes.UserError when the recipe places the experts on another number of ranks than
     *     {@code world}
     */
    static Map<Integer, ExpertPlacement> forWorld(Model model, Training training, int world) throws Recipes.UserError {
        if (world < 1) {
            throw new IllegalArgumentException("a world of " + world + " ranks");
        }
        Map<Integer, ExpertPlacement> out = new LinkedHashMap<>();
        if (training != null && training.parallel().isPresent()) {
            ExpertParallel p = training.parallel().get();
            if (p.ranks() != world) {
                throw new Recipes.UserError(String.format(Locale.ROOT,
                        "train `%s` places its experts on %d ranks (`parallel { ranks %d }`), but this run has %d: run it on %d GPUs, or change"
                                + " `ranks`", training.model(), p.ranks(), p.ranks(), world, p.ranks()));
            }
            for (ExpertParallel.LayerPlacement l : p.layers()) {
                int[][] lists = l.expertsOfRank().stream().map(r -> r.stream().mapToInt(Integer::intValue).toArray()).toArray(int[][]::new);
                out.put(l.layer(), ExpertPlacement.explicit(l.experts(), lists));
            }
            return out;
        }
        int perRank = training == null ? 0 : training.expertsPerRank();
        for (Layer l : model.layers()) {
            if (l.block().ffnMoe().isEmpty()) {
                continue;
            }
            Moe moe = l.block().ffnMoe().get();
            int experts = moe.routedExperts();
            if (perRank > 0 && experts / perRank != world) {
                throw new Recipes.UserError(String.format(Locale.ROOT,
                        "train `%s` declares `experts_per_rank %d`, which puts the %d routed experts of moe `%s` (layer %d) on %d ranks, but this"
                                + " run has %d: run it on %d GPUs, or declare `parallel { ranks %d }` instead", training.model(), perRank, experts,
                        moe.name(), l.index(), experts / perRank, world, experts / perRank, world));
            }
            out.put(l.index(), ExpertPlacement.contiguous(experts, world));
        }
        return out;
    }

    /**
     * The placement as {@code moe info} shows it: per MoE layer, the experts each rank holds, e.g.
     * {@code layer 1 (moe wide, contiguous): rank 0: 0-3  rank 1: 4-7}.
     */
    static List<String> describe(ExpertParallel p) {
        List<String> lines = new ArrayList<>();
        for (ExpertParallel.LayerPlacement l : p.layers()) {
            StringBuilder b = new StringBuilder(String.format(Locale.ROOT, "layer %d (moe %s, %d experts, %s):", l.layer(), l.moe(), l.experts(),
                    switch (l.source()) {
                        case CONTIGUOUS -> "contiguous";
                        case LISTED -> "per_rank";
                        case FILE -> "from file";
                    }));
            for (int r = 0; r < l.expertsOfRank().size(); r++) {
                b.append(r == 0 ? " " : "  ").append("rank ").append(r).append(": ").append(ranges(l.expertsOfRank().get(r)));
            }
            lines.add(b.toString());
        }
        return lines;
    }

    /** {@code 0-3, 6, 9-10} for ascending ids; {@code none} for a rank without experts. */
    static String ranges(List<Integer> ids) {
        if (ids.isEmpty()) {
            return "none";
        }
        List<String> parts = new ArrayList<>();
        int start = ids.getFirst();
        int prev = start;
        for (int i = 1; i <= ids.size(); i++) {
            if (i < ids.size() && ids.get(i) == prev + 1) {
                prev = ids.get(i);
                continue;
            }
            parts.add(start == prev ? String.valueOf(start) : start + "-" + prev);
            if (i < ids.size()) {
                start = ids.get(i);
                prev = start;
            }
        }
        return String.join(", ", parts);
    }
}
