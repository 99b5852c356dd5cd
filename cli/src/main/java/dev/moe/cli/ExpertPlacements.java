package dev.moe.cli;

import dev.moe.compiler.ir.Expert;
import dev.moe.compiler.ir.ExpertGroup;
import dev.moe.compiler.ir.ExpertParallel;
import dev.moe.compiler.ir.Layer;
import dev.moe.compiler.ir.Model;
import dev.moe.compiler.ir.Moe;
import dev.moe.compiler.ir.Training;
import dev.moe.cuda.codegen.CudaModelGenerator;
import dev.moe.cuda.dist.ExpertPlacement;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.Optional;

/**
 * Where expert parallelism puts each MoE layer's routed experts for a run on a given number of ranks:
 * the recipe's {@code parallel} block (checked and resolved to lists by the compiler), else
 * {@code experts_per_rank}, else contiguous blocks. Pure bookkeeping: no GPU is touched.
 */
final class ExpertPlacements {
    /** Device bytes of one parameter in training: its fp32 value, gradient and AdamW's two moments. */
    static final long TRAINING_BYTES_PER_PARAM = 16;

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

    /**
     * Parameter memory of training on one rank under {@code --expert-parallel}, which keeps the replicated parameters (the
     * model's {@code totalParams} less the {@code placedParams} of every placed expert) and the {@code rankParams} of the
     * rank's own experts, {@link #TRAINING_BYTES_PER_PARAM} each. With {@code rankParams == placedParams}: the whole model,
     * what every rank holds under data parallelism.
     */
    static long trainingBytes(long totalParams, long placedParams, long rankParams) {
        if (rankParams < 0 || rankParams > placedParams || placedParams > totalParams) {
            throw new IllegalArgumentException("a rank's " + rankParams + " expert parameters of " + placedParams + " placed, of "
                    + totalParams + " in all");
        }
        return TRAINING_BYTES_PER_PARAM * (totalParams - placedParams + rankParams);
    }

    /**
     * The parameters of each rank's experts under {@code p}: summed over the MoE layers, the weights of the routed experts the
     * rank holds (numbered over the routed groups in order, as in checkpoints; zero and copy experts have none).
     *
     * @throws IllegalArgumentException for a routed expert that expert parallelism does not run (latent, LoRA, constant)
     */
    static long[] expertParamsOfRanks(Model model, ExpertParallel p) {
        long[] out = new long[p.ranks()];
        for (ExpertParallel.LayerPlacement l : p.layers()) {
            Moe moe = model.layers().stream().filter(x -> x.index() == l.layer()).findFirst().flatMap(x -> x.block().ffnMoe())
                    .orElseThrow(() -> new IllegalArgumentException("layer " + l.layer() + " of " + model.name() + " has no MoE"));
            List<Long> perExpert = new ArrayList<>();
            for (ExpertGroup g : moe.groups()) {
                if (g.role() != ExpertGroup.Role.ROUTED) {
                    continue;
                }
                long n = switch (g.expert()) {
                    case Expert.FeedForward f -> f.ffn().params(model.config().dim());
                    case Expert.Zero z -> 0;
                    case Expert.Copy c -> 0;
                    default -> throw new IllegalArgumentException("layer " + l.layer() + "'s " + g.expert().describe()
                            + " experts do not run expert-parallel");
                };
                for (int i = 0; i < g.count(); i++) {
                    perExpert.add(n);
                }
            }
            for (int r = 0; r < l.expertsOfRank().size(); r++) {
                for (int e : l.expertsOfRank().get(r)) {
                    out[r] += perExpert.get(e);
                }
            }
        }
        return out;
    }

    /**
     * Each rank's parameter memory for training under {@code p} as {@code moe info} shows it, then the whole model's (every
     * rank's under data parallelism); one line saying why when {@code --expert-parallel} does not take the model.
     */
    static List<String> describeMemory(Model model, ExpertParallel p) {
        Optional<String> refused = CudaModelGenerator.expertParallelRefusal(model);
        if (refused.isPresent()) {
            return List.of("parameter memory per rank: not shown, --expert-parallel refuses this model: " + refused.get());
        }
        long[] ranks = expertParamsOfRanks(model, p);
        long placed = java.util.Arrays.stream(ranks).sum();
        long total = model.totalParams();
        List<String> lines = new ArrayList<>();
        lines.add("parameter memory for training with --expert-parallel (values, gradients, AdamW moments: " + TRAINING_BYTES_PER_PARAM
                + " bytes a parameter):");
        for (int r = 0; r < ranks.length; r++) {
            long params = total - placed + ranks[r];
            lines.add("  rank " + r + ": about " + Units.bytes(trainingBytes(total, placed, ranks[r])) + " (" + Units.count(params) + " params)");
        }
        lines.add("  every rank with data parallelism: about " + Units.bytes(trainingBytes(total, placed, placed)) + " (" + Units.count(total)
                + " params)");
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
