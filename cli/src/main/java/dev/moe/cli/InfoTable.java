package dev.moe.cli;

import static dev.moe.cli.TextTable.Align.LEFT;
import static dev.moe.cli.TextTable.Align.RIGHT;

import dev.moe.compiler.ir.Count;
import dev.moe.compiler.ir.Layer;
import dev.moe.compiler.ir.Model;
import dev.moe.compiler.ir.ModelConfig;
import dev.moe.compiler.ir.Param;
import java.util.ArrayList;
import java.util.List;
import java.util.stream.Collectors;

/**
 * What {@code moe info} prints for one model:
 *
 * <pre>
 * model MixtralTiny (4 layers)
 *   config  vocab 256, context 256, dim 128, heads 4, kv_heads 2, head_dim 32, norm rms(eps: 0.00001), ...
 *
 *   layer  block               params  active     FLOPs/token
 *       0  attention, mixtral   1.64M    483K      1.16 MFLOP
 *   ...
 *          embeddings, head     65.5K   65.5K    65.5 KFLOP
 *
 *   total params      6.62M (6,621,440)
 *   ...
 * </pre>
 *
 * The row without an index holds what lies outside the layers (embeddings, final norm, output head):
 * the model's totals minus the sum of its layers, shown when that difference is not negative.
 */
public final class InfoTable {
    private InfoTable() {}

    public static String render(Model model) {
        return render(model, false);
    }

    public static String render(Model model, boolean withParams) {
        StringBuilder out = new StringBuilder();
        int n = model.layers().size();
        out.append("model ").append(model.name()).append(" (").append(n).append(n == 1 ? " layer" : " layers").append(")\n");
        out.append("  config  ").append(config(model.config())).append("\n\n");

        TextTable layers = new TextTable(List.of("layer", "block", "params", "active", "FLOPs/token"),
                List.of(RIGHT, LEFT, RIGHT, RIGHT, RIGHT));
        long layerParams = 0;
        Count layerActive = Count.ZERO;
        Count layerFlops = Count.ZERO;
        for (Layer l : model.layers()) {
            layers.row(Integer.toString(l.index()), l.block().describe(), Units.count(l.params()), Units.count(l.active()),
                    Units.flops(l.flops()));
            layerParams += l.params();
            layerActive = layerActive.plus(l.active());
            layerFlops = layerFlops.plus(l.flops());
        }
        long outsideParams = model.totalParams() - layerParams;
        Count outsideActive = minus(model.activeParams(), layerActive);
        Count outsideFlops = minus(model.flopsPerToken(), layerFlops);
        if (outsideParams >= 0 && nonNegative(outsideActive) && nonNegative(outsideFlops) && (outsideParams > 0 || outsideFlops.max() > 0)) {
            String label = model.config().tieEmbeddings() ? "embeddings (tied head), final norm" : "embeddings, final norm, head";
            layers.row("", label, Units.count(outsideParams), Units.count(outsideActive), Units.flops(outsideFlops));
        }
        layers.render(out, "  ");
        out.append('\n');

        List<String[]> totals = new ArrayList<>();
        totals.add(new String[] {"total params", Units.count(model.totalParams()) + " (" + Units.exact(model.totalParams()) + ")"});
        Count active = model.activeParams();
        totals.add(new String[] {"active params", active.fixed()
                ? Units.count(active.min()) + " (" + Units.exact(active.min()) + ")"
                : "min " + Units.count(active.min()) + ", expected " + Units.count(active.expected()) + ", max " + Units.count(active.max())});
        totals.add(new String[] {"activation ratio", ratio(active, model.totalParams())});
        Count flops = model.flopsPerToken();
        totals.add(new String[] {"FLOPs/token", (flops.fixed()
                ? Units.flops(flops.min())
                : "min " + Units.flops(flops.min()) + ", expected " + Units.flops(flops.expected()) + ", max " + Units.flops(flops.max()))
                + " (forward pass, full context)"});
        int keyWidth = totals.stream().mapToInt(t -> t[0].length()).max().orElse(0);
        for (String[] t : totals) {
            out.append("  ").append(t[0]).append(" ".repeat(keyWidth - t[0].length() + 2)).append(t[1]).append('\n');
        }

        if (withParams) {
            out.append('\n');
            params(out, model.params());
        }
        return out.toString();
    }

    /** {@code vocab 256, context 256, dim 128, heads 4, kv_heads 2, head_dim 32, norm rms(eps: 0.00001), position rope(theta: 10000)}. */
    static String config(ModelConfig c) {
        List<String> parts = new ArrayList<>(List.of(
                "vocab " + c.vocab(),
                "context " + c.context(),
                "dim " + c.dim(),
                "heads " + c.heads(),
                "kv_heads " + c.kvHeads(),
                "head_dim " + c.headDim(),
                "norm " + norm(c.norm()),
                "position " + position(c.position())));
        if (c.slidingWindow() > 0) {
            parts.add("sliding_window " + c.slidingWindow());
        }
        if (!c.causal()) {
            parts.add("causal false");
        }
        if (c.qkNorm()) {
            parts.add(c.qkNormFull() ? "qk_norm full" : "qk_norm true");
        }
        if (c.qkvBias()) {
            parts.add("qkv_bias true");
        }
        c.mla().ifPresent(m -> parts.add("attention mla(" + (m.qRank() > 0 ? "q_rank: " + m.qRank() + ", " : "") + "kv_rank: " + m.kvRank()
                + ", nope_dim: " + m.nopeDim() + ", rope_dim: " + m.ropeDim() + ", v_dim: " + m.vDim() + ")"));
        if (c.tieEmbeddings()) {
            parts.add("tie_embeddings true");
        }
        return String.join(", ", parts);
    }

    private static String norm(ModelConfig.Norm n) {
        String kind = n.kind() == ModelConfig.NormKind.RMS ? "rms" : "layer";
        return kind + "(eps: " + Units.decimal(n.eps()) + ")";
    }

    private static String position(ModelConfig.Position p) {
        if (p.kind() == ModelConfig.PositionKind.NONE) {
            return "none";
        }
        String fraction = p.fraction() == 1.0 ? "" : ", fraction: " + Units.decimal(p.fraction());
        return "rope(theta: " + Units.decimal(p.theta()) + fraction + ")";
    }

    private static String ratio(Count active, long total) {
        if (total <= 0) {
            return "n/a";
        }
        if (active.fixed()) {
            return Units.percent((double) active.min() / total);
        }
        return Units.percent((double) active.min() / total) + "–" + Units.percent((double) active.max() / total)
                + " (expected " + Units.percent(active.expected() / total) + ")";
    }

    private static void params(StringBuilder out, List<Param> params) {
        long elements = params.stream().mapToLong(Param::numel).sum();
        long trainable = params.stream().filter(Param::trainable).mapToLong(Param::numel).sum();
        out.append("  parameters: ").append(params.size()).append(params.size() == 1 ? " tensor, " : " tensors, ")
                .append(Units.exact(elements)).append(" elements");
        if (trainable != elements) {
            out.append(" (").append(Units.exact(trainable)).append(" trainable)");
        }
        out.append('\n');
        if (params.isEmpty()) {
            return;
        }
        TextTable table = new TextTable(List.of("name", "shape", "numel", "trainable"), List.of(LEFT, LEFT, RIGHT, LEFT));
        for (Param p : params) {
            String shape = p.shape().stream().map(String::valueOf).collect(Collectors.joining(", ", "[", "]"));
            table.row(p.name(), shape, Units.exact(p.numel()), trainable(p));
        }
        table.render(out, "  ");
    }

    private static String trainable(Param p) {
        return switch (p.kind()) {
            case WEIGHT -> "yes";
            case FROZEN -> "no (frozen)";
            case BUFFER -> "no (buffer)";
        };
    }

    private static Count minus(Count a, Count b) {
        return new Count(a.min() - b.min(), a.expected() - b.expected(), a.max() - b.max());
    }

    private static boolean nonNegative(Count c) {
        return c.min() >= 0 && c.max() >= 0 && c.expected() >= -1e-6;
    }
}
