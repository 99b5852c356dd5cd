package dev.moe.runtime.upcycle;

import dev.moe.runtime.Init;
import dev.moe.runtime.Parameter;
import dev.moe.runtime.data.SplitMix64;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.Map;
import java.util.TreeMap;
import java.util.regex.Matcher;
import java.util.regex.Pattern;

/**
 * Weight transforms that grow a model from trained ones: the target's parameters (already given
 * their declared initialisation) are overwritten from source checkpoints, by tensor name. A dense
 * layer's FFN is {@code layers.L.ffn.P}; an MoE layer's experts are {@code layers.L.moe.experts.E.P}
 * and {@code layers.L.moe.shared.S.P}, its router {@code layers.L.moe.router.weight}; every other
 * tensor (embeddings, attention, norms, head) has the same name in both.
 *
 * <p>Each method returns the names of the target tensors it left as initialised (routers, new
 * experts), for the run's log.
 */
public final class Upcycle {
    private static final Pattern EXPERT = Pattern.compile("layers\\.(\\d+)\\.moe\\.(experts|shared)\\.(\\d+)\\.(\\w+)");
    private static final Pattern ROUTER = Pattern.compile("layers\\.(\\d+)\\.moe\\.router\\.weight");

    private Upcycle() {}

    /** An expert tensor's place: layer, routed or shared, index, projection. */
    record ExpertName(int layer, boolean shared, int index, String projection) {
        static ExpertName parse(String name) {
            Matcher m = EXPERT.matcher(name);
            return m.matches() ? new ExpertName(Integer.parseInt(m.group(1)), m.group(2).equals("shared"), Integer.parseInt(m.group(3)), m.group(4))
                    : null;
        }

        String denseFfn() {
            return "layers." + layer + ".ffn." + projection;
        }
    }

    /**
     * Sparse upcycling (Komatsuzaki et al.): every expert, routed or shared, a copy of its layer's dense
     * FFN; routed copies perturbed by multiplicative noise {@code w (1 + noise z)}, z standard normal,
     * so that they can drift apart. Routers keep their declared initialisation.
     */
    public static List<String> copy(Weights dense, List<Parameter> target, double noise, long seed) {
        List<String> left = new ArrayList<>();
        for (Parameter p : target) {
            if (dense.has(p.name(), p.shape())) {
                p.load(dense.get(p.name()).clone());
                continue;
            }
            ExpertName e = ExpertName.parse(p.name());
            if (e != null && dense.has(e.denseFfn(), p.shape())) {
                float[] v = dense.get(e.denseFfn()).clone();
                if (noise > 0 && !e.shared()) {
                    Init.SplitMix rng = new Init.SplitMix(SplitMix64.hash(seed, SplitMix64.hash(p.name())));
                    for (int i = 0; i < v.length; i++) {
                        v[i] *= (float) (1 + noise * rng.gaussian());
                    }
                }
                p.load(v);
                continue;
            }
            left.add(p.name());
        }
        return left;
    }

    /**
     * Granular upcycling (Megatron's granularity; Innovator): the dense FFN's hidden units are cut
     * into {@code parts} slices and each expert takes one: gate and up rows, down columns. Slices go to
     * the layer's shared experts first, then to its routed experts, round robin, so that the sum of
     * one set of {@code parts} experts is the dense FFN exactly. Routers start at zero: softmax
     * weights are then uniform, and with {@code scale} undoing them the MoE computes the dense
     * function before training.
     */
    public static List<String> split(Weights dense, List<Parameter> target, int parts) {
        Map<Integer, Integer> sharedPerLayer = new TreeMap<>();
        for (Parameter p : target) {
            ExpertName e = ExpertName.parse(p.name());
            if (e != null && e.shared()) {
                sharedPerLayer.merge(e.layer(), e.index() + 1, Math::max);
            }
        }
        List<String> left = new ArrayList<>();
        for (Parameter p : target) {
            if (dense.has(p.name(), p.shape())) {
                p.load(dense.get(p.name()).clone());
                continue;
            }
            if (ROUTER.matcher(p.name()).matches()) {
                Init.constant(p, 0f);
                continue;
            }
            ExpertName e = ExpertName.parse(p.name());
            if (e == null || !dense.has(e.denseFfn()) || p.shape().length != 2) {
                left.add(p.name());
                continue;
            }
            int slot = (e.shared() ? e.index() : sharedPerLayer.getOrDefault(e.layer(), 0) + e.index()) % parts;
            int[] ds = dense.shape(e.denseFfn());
            float[] w = dense.get(e.denseFfn());
            float[] v = new float[p.size()];
            if (e.projection().equals("down")) {
                // [dim, hidden] -> columns slot*h/m .. (slot+1)*h/m
                int rows = ds[0];
                int h = ds[1];
                int part = h / parts;
                check(p, rows, part, e, ds, parts);
                for (int r = 0; r < rows; r++) {
                    System.arraycopy(w, r * h + slot * part, v, r * part, part);
                }
            } else {
                // [hidden, dim] -> rows slot*h/m .. (slot+1)*h/m
                int h = ds[0];
                int cols = ds[1];
                int part = h / parts;
                check(p, part, cols, e, ds, parts);
                System.arraycopy(w, slot * part * cols, v, 0, part * cols);
            }
            p.load(v);
        }
        return left;
    }

    private static void check(Parameter p, int rows, int cols, ExpertName e, int[] denseShape, int parts) {
        if (p.shape()[0] != rows || p.shape()[1] != cols || denseShape[e.projection().equals("down") ? 1 : 0] % parts != 0) {
            throw new IllegalArgumentException("`" + p.name() + "` " + Arrays.toString(p.shape()) + " is not a 1/" + parts + " slice of `"
                    + e.denseFfn() + "` " + Arrays.toString(denseShape));
        }
    }

    /**
     * Extension (MoExtend): tensors of the trained MoE are copied by name; where the target has more
     * rows (router rows, expert biases) the old rows are copied and the new keep their
     * initialisation, as do the new experts.
     */
    public static List<String> extend(Weights moe, List<Parameter> target) {
        List<String> left = new ArrayList<>();
        for (Parameter p : target) {
            if (moe.has(p.name(), p.shape())) {
                p.load(moe.get(p.name()).clone());
            } else if (moe.has(p.name()) && sameButFirst(moe.shape(p.name()), p.shape())) {
                float[] v = p.values();
                float[] old = moe.get(p.name());
                System.arraycopy(old, 0, v, 0, old.length);
                p.load(v);
                left.add(p.name() + " (new rows)");
            } else {
                left.add(p.name());
            }
        }
        return left;
    }

    private static boolean sameButFirst(int[] small, int[] big) {
        if (small.length != big.length || small.length == 0 || small[0] > big[0]) {
            return false;
        }
        for (int i = 1; i < small.length; i++) {
            if (small[i] != big[i]) {
                return false;
            }
        }
        return true;
    }

    /**
     * Diversification (EvoMoE): every routed expert starts as expert {@code expert} of the source (or
     * its dense FFN when it has none), with each weight zeroed with probability {@code mask},
     * independently per expert, so that the copies differ. Shared experts take the unmasked copy.
     */
    public static List<String> diversify(Weights source, List<Parameter> target, int expert, double mask, long seed) {
        List<String> left = new ArrayList<>();
        for (Parameter p : target) {
            ExpertName e = ExpertName.parse(p.name());
            if (e != null) {
                String from = "layers." + e.layer() + ".moe.experts." + expert + "." + e.projection();
                from = source.has(from) ? from : e.denseFfn();
                if (!source.has(from, p.shape())) {
                    throw new IllegalArgumentException(source.origin() + " has no tensor `" + from + "` of shape " + Arrays.toString(p.shape())
                            + " to spawn `" + p.name() + "` from");
                }
                float[] v = source.get(from).clone();
                if (!e.shared() && mask > 0) {
                    Init.SplitMix rng = new Init.SplitMix(SplitMix64.hash(seed, SplitMix64.hash(p.name())));
                    for (int i = 0; i < v.length; i++) {
                        if (rng.nextDouble() < mask) {
                            v[i] = 0f;
                        }
                    }
                }
                p.load(v);
            } else if (source.has(p.name(), p.shape())) {
                p.load(source.get(p.name()).clone());
            } else {
                left.add(p.name());
            }
        }
        return left;
    }

    /**
     * Merging dense specialists (Branch-Train-MiX, BAM): routed expert e of each layer is specialist
     * e mod n's FFN; shared experts and every other tensor (attention, norms, embeddings, head) the
     * mean of the specialists'.
     */
    public static List<String> merge(List<Weights> specialists, List<Parameter> target) {
        List<String> left = new ArrayList<>();
        for (Parameter p : target) {
            ExpertName e = ExpertName.parse(p.name());
            String from = e == null ? p.name() : e.denseFfn();
            for (Weights s : specialists) {
                if (!s.has(from, p.shape())) {
                    from = null;
                    break;
                }
            }
            if (from == null) {
                left.add(p.name());
            } else if (e != null && !e.shared()) {
                p.load(specialists.get(e.index() % specialists.size()).get(from).clone());
            } else {
                double[] sum = new double[p.size()];
                for (Weights s : specialists) {
                    float[] v = s.get(from);
                    for (int i = 0; i < sum.length; i++) {
                        sum[i] += v[i];
                    }
                }
                float[] mean = new float[p.size()];
                for (int i = 0; i < sum.length; i++) {
                    mean[i] = (float) (sum[i] / specialists.size());
                }
                p.load(mean);
            }
        }
        return left;
    }

    /**
     * Function-preserving growth of a dense model (Net2Net-style zero blocks; AquilaMoE's scale-up):
     * every source tensor fills the top-left block of its target; the new parts of the embedding and
     * of every projection that writes the residual stream (attention {@code o}, FFN {@code down}) are
     * zero, so the wider residual stream carries zeros in its new dimensions, new heads and hidden
     * units add nothing and new layers are the identity. RMS norms of the stream are scaled by
     * sqrt(dimFrom / dimTo), which undoes the longer zero-padded vector in their mean square. The
     * model then computes the small model's function (up to the norms' epsilon) with every new
     * weight that reads zeros free to learn.
     */
    public static List<String> scaleUp(Weights small, List<Parameter> target, int dimFrom, int dimTo) {
        List<String> left = new ArrayList<>();
        double normScale = Math.sqrt((double) dimFrom / dimTo);
        for (Parameter p : target) {
            String n = p.name();
            boolean writer = n.endsWith(".o") || n.endsWith(".down");
            boolean zeroOutside = writer || n.equals("embed.weight");
            if (!small.has(n)) {
                if (writer) {
                    Init.constant(p, 0f); // a new layer's block adds nothing: identity
                } else {
                    left.add(n);
                }
                continue;
            }
            int[] from = small.shape(n);
            int[] to = p.shape();
            if (from.length != to.length || from.length > 2 || from.length == 0) {
                throw new IllegalArgumentException("`" + n + "` has shape " + Arrays.toString(from) + " in " + small.origin() + " and "
                        + Arrays.toString(to) + " in the target");
            }
            int rowsFrom = from[0];
            int colsFrom = from.length == 2 ? from[1] : 1;
            int rowsTo = to[0];
            int colsTo = to.length == 2 ? to[1] : 1;
            if (rowsFrom > rowsTo || colsFrom > colsTo) {
                throw new IllegalArgumentException("`" + n + "` shrinks from " + Arrays.toString(from) + " to " + Arrays.toString(to));
            }
            float[] src = small.get(n);
            float[] v = zeroOutside ? new float[p.size()] : p.values();
            boolean streamNorm = n.endsWith("_norm.weight") && from.length == 1 && rowsFrom == dimFrom && rowsTo == dimTo;
            for (int r = 0; r < rowsFrom; r++) {
                for (int c = 0; c < colsFrom; c++) {
                    float x = src[r * colsFrom + c];
                    v[r * colsTo + c] = streamNorm ? (float) (x * normScale) : x;
                }
            }
            p.load(v);
        }
        return left;
    }

    /**
     * The {@code keep} most used experts of one MoE layer by routed-token counts (ties to the lower
     * index), in their original order.
     */
    public static int[] mostUsed(long[] counts, int keep) {
        if (keep < 1 || keep > counts.length) {
            throw new IllegalArgumentException("cannot keep " + keep + " of " + counts.length + " experts");
        }
        Integer[] order = new Integer[counts.length];
        for (int i = 0; i < order.length; i++) {
            order[i] = i;
        }
        Arrays.sort(order, (a, b) -> counts[a] != counts[b] ? Long.compare(counts[b], counts[a]) : Integer.compare(a, b));
        int[] kept = new int[keep];
        for (int i = 0; i < keep; i++) {
            kept[i] = order[i];
        }
        Arrays.sort(kept);
        return kept;
    }

    /**
     * Pruning for inference: the target has fewer routed experts per MoE layer; its expert j of layer
     * L is the source's expert {@code kept.get(L)[j]}, and router rows (and any per-expert buffer such
     * as the aux-free bias) are taken at the kept indices. Every other tensor is copied by name, and
     * must be there: the pruned model differs from the source in its expert counts only.
     */
    public static void prune(Weights source, List<Parameter> target, Map<Integer, int[]> kept) {
        Pattern perExpert = Pattern.compile("layers\\.(\\d+)\\.moe\\.[\\w.]+");
        for (Parameter p : target) {
            ExpertName e = ExpertName.parse(p.name());
            if (e != null && !e.shared()) {
                int[] keep = kept.get(e.layer());
                if (keep == null || e.index() >= keep.length) {
                    throw new IllegalArgumentException("no kept expert for `" + p.name() + "`");
                }
                String from = "layers." + e.layer() + ".moe.experts." + keep[e.index()] + "." + e.projection();
                if (!source.has(from, p.shape())) {
                    throw new IllegalArgumentException(source.origin() + " has no `" + from + "` of shape " + Arrays.toString(p.shape()));
                }
                p.load(source.get(from).clone());
            } else if (source.has(p.name(), p.shape())) {
                p.load(source.get(p.name()).clone());
            } else if (source.has(p.name()) && perExpert.matcher(p.name()).matches() && sameButFirst(p.shape(), source.shape(p.name()))) {
                int layer = Integer.parseInt(p.name().split("\\.")[1]);
                int[] keep = kept.get(layer);
                int[] s = source.shape(p.name());
                int row = p.size() / p.shape()[0];
                if (keep == null || keep.length != p.shape()[0]) {
                    throw new IllegalArgumentException("`" + p.name() + "` " + Arrays.toString(p.shape()) + " does not have one row per kept expert");
                }
                float[] src = source.get(p.name());
                float[] v = new float[p.size()];
                for (int j = 0; j < keep.length; j++) {
                    if (keep[j] >= s[0]) {
                        throw new IllegalArgumentException("expert " + keep[j] + " is outside `" + p.name() + "` " + Arrays.toString(s));
                    }
                    System.arraycopy(src, keep[j] * row, v, j * row, row);
                }
                p.load(v);
            } else {
                throw new IllegalArgumentException("`" + p.name() + "` " + Arrays.toString(p.shape()) + " has no counterpart in " + source.origin()
                        + (source.has(p.name()) ? " (it has shape " + Arrays.toString(source.shape(p.name())) + ")" : "")
                        + ": the pruned model must differ from the trained one in its routed expert counts only");
            }
        }
    }
}
