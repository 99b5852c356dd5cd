package dev.moe.compiler;

import com.fasterxml.jackson.core.JacksonException;
import com.fasterxml.jackson.databind.DeserializationFeature;
import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import dev.moe.compiler.Read.Args;
import dev.moe.compiler.Read.SettingMap;
import dev.moe.compiler.ir.ExpertParallel;
import dev.moe.compiler.ir.ExpertParallel.LayerPlacement;
import dev.moe.compiler.ir.Layer;
import dev.moe.compiler.ir.Model;
import dev.moe.compiler.ir.Moe;
import dev.moe.dsl.SourceFile;
import dev.moe.dsl.Span;
import dev.moe.dsl.ast.ParallelBlock;
import dev.moe.dsl.diag.Code;
import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.NoSuchFileException;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Optional;
import java.util.OptionalInt;
import java.util.Set;
import java.util.TreeSet;

/**
 * Checks a train block's {@code parallel { ranks n  experts ... }}: how many ranks expert parallelism
 * spreads over, and which rank holds each routed expert of each MoE layer. The placement of every MoE
 * layer is resolved here into explicit lists, so that the trainer needs no rules of its own.
 */
final class ParallelChecker {
    static final Set<String> KEYS = Set.of("ranks", "experts");
    private static final List<String> FORMS = List.of("contiguous", "per_rank", "file");
    /** Every layer gets a list per rank: a bound keeps a typo from allocating billions of them. */
    static final int MAX_RANKS = 1 << 16;
    /** A placement of a few hundred layers of a few hundred experts is well under this. */
    private static final long MAX_FILE_BYTES = 16 << 20;

    private final Evaluator evaluator;
    private final Read read;
    private final Reporter reporter;

    ParallelChecker(Evaluator evaluator, Read read) {
        this.evaluator = evaluator;
        this.read = read;
        this.reporter = read.reporter();
    }

    /** An MoE layer: the model's layer index, its position among the MoE layers, and its MoE. */
    private record MoeLayer(int layer, int position, Moe moe) {}

    /** One {@code experts} line and the MoE layers it places. */
    private record Line(Value value, Value.Call call, List<MoeLayer> targets) {}

    /**
     * @param model the block's model, when it checked; without it only the block's own shape is checked
     */
    Optional<ExpertParallel> check(ParallelBlock block, SourceFile src, Optional<Model> model) {
        int before = reporter.errorCount();
        Span keyword = TrainChecker.keyword(block.span(), "parallel");
        SettingMap map = read.settings(block.settings(), "`parallel`", KEYS, Set.of("experts"), s -> evaluator.eval(s.value(), src));
        OptionalInt ranks = OptionalInt.empty();
        if (map.get("ranks").isPresent()) {
            ranks = read.integer(map.get("ranks").get(), "ranks", 1, MAX_RANKS);
        } else if (!map.hadUnknown()) {
            var d = reporter.error(Code.MISSING_SETTING, src, keyword, "`parallel` lacks `ranks`");
            reporter.help(d, "add `ranks n`: the GPUs that share each MoE layer's experts");
        }
        if (model.isEmpty()) {
            return Optional.empty();
        }
        Model m = model.get();
        List<MoeLayer> moeLayers = new ArrayList<>();
        for (Layer l : m.layers()) {
            ModelChecker.ffnMoe(l.block()).ifPresent(moe -> moeLayers.add(new MoeLayer(l.index(), moeLayers.size(), moe)));
        }
        if (moeLayers.isEmpty()) {
            var d = reporter.error(Code.PLACEMENT_LAYER, src, keyword, "`parallel` places routed experts, but model `%s` has no MoE layers", m.name());
            reporter.help(d, "remove the `parallel` block: a dense model is replicated on every GPU");
            return Optional.empty();
        }

        List<Line> lines = lines(map.all("experts"), m, moeLayers);
        if (ranks.isEmpty()) {
            return Optional.empty();
        }
        int n = ranks.getAsInt();
        Map<Integer, LayerPlacement> placed = new HashMap<>();
        Map<String, Optional<List<List<List<Integer>>>>> files = new HashMap<>();
        for (Line line : lines) {
            switch (line.call().callee()) {
                case "contiguous" -> {
                    for (MoeLayer t : line.targets()) {
                        int e = t.moe().routedExperts();
                        placed.putIfAbsent(t.layer(), new LayerPlacement(t.layer(), t.moe().name(), e, ExpertParallel.Source.CONTIGUOUS,
                                ExpertParallel.contiguous(e, n)));
                    }
                }
                case "per_rank" -> listed(line, n).forEach((layer, p) -> placed.putIfAbsent(layer, p));
                default -> {
                    Value path = argument(line.call(), "path");
                    Optional<String> p = read.string(path, "path");
                    if (p.isEmpty()) {
                        continue;
                    }
                    Optional<List<List<List<Integer>>>> file = files.computeIfAbsent(p.get(), k -> readFile(path, p.get(), n, m, moeLayers));
                    if (file.isPresent()) {
                        for (MoeLayer t : line.targets()) {
                            placed.putIfAbsent(t.layer(), new LayerPlacement(t.layer(), t.moe().name(), t.moe().routedExperts(),
                                    ExpertParallel.Source.FILE, file.get().get(t.position())));
                        }
                    }
                }
            }
        }
        if (reporter.errorCount() != before) {
            return Optional.empty();
        }
        List<LayerPlacement> out = new ArrayList<>();
        for (MoeLayer t : moeLayers) {
            int e = t.moe().routedExperts();
            out.add(placed.getOrDefault(t.layer(), new LayerPlacement(t.layer(), t.moe().name(), e, ExpertParallel.Source.CONTIGUOUS,
                    ExpertParallel.contiguous(e, n))));
        }
        return Optional.of(new ExpertParallel(n, out));
    }

    /**
     * The {@code experts} lines with the MoE layers each places: those of {@code layers: [...]}, or, for
     * the one line without it, every MoE layer that no other line names.
     */
    private List<Line> lines(List<Value> values, Model m, List<MoeLayer> moeLayers) {
        List<Line> out = new ArrayList<>();
        Value defaultLine = null;
        Map<Integer, Value> named = new LinkedHashMap<>();
        Line fallback = null;
        for (Value v : values) {
            Optional<Value.Call> call = read.callOf(v, "experts", FORMS);
            if (call.isEmpty()) {
                continue;
            }
            List<String> required = switch (call.get().callee()) {
                case "per_rank" -> List.of("experts");
                case "file" -> List.of("path");
                default -> List.of();
            };
            Optional<Args> args = read.args(call.get(), required, List.of("layers"), required);
            if (args.isEmpty()) {
                continue;
            }
            if (args.get().get("layers").isEmpty()) {
                if (defaultLine != null) {
                    var d = reporter.error(Code.PLACEMENT_TWICE, v, "a second `experts` line for every MoE layer");
                    reporter.help(d, "the first is at line " + defaultLine.span().line() + "; name the layers this one places: `"
                            + call.get().callee() + "(..., layers: [i])`");
                    continue;
                }
                defaultLine = v;
                fallback = new Line(v, call.get(), new ArrayList<>());
                out.add(fallback);
                continue;
            }
            List<MoeLayer> targets = new ArrayList<>();
            Value layersValue = args.get().required("layers");
            List<Value> items = layersValue instanceof Value.ListV l ? l.items() : List.of(layersValue);
            for (Value item : items) {
                OptionalInt index = read.integer(item, "layer", 0, Integer.MAX_VALUE);
                if (index.isEmpty()) {
                    continue;
                }
                int i = index.getAsInt();
                Optional<MoeLayer> target = moeLayers.stream().filter(t -> t.layer() == i).findFirst();
                if (i >= m.layers().size()) {
                    reporter.error(Code.PLACEMENT_LAYER, item, "model `%s` has layers 0..%d; there is no layer %d", m.name(), m.layers().size() - 1, i);
                } else if (target.isEmpty()) {
                    var d = reporter.error(Code.PLACEMENT_LAYER, item, "layer %d of model `%s` is not an MoE layer", i, m.name());
                    reporter.help(d, "its MoE layers are " + String.join(", ", moeLayers.stream().map(t -> String.valueOf(t.layer())).toList()));
                } else if (named.containsKey(i)) {
                    var d = reporter.error(Code.PLACEMENT_TWICE, item, "layer %d is placed twice", i);
                    reporter.note(d, "first placed at line " + named.get(i).span().line());
                } else {
                    named.put(i, item);
                    targets.add(target.get());
                }
            }
            out.add(new Line(v, call.get(), targets));
        }
        if (fallback != null) {
            for (MoeLayer t : moeLayers) {
                if (!named.containsKey(t.layer())) {
                    fallback.targets().add(t);
                }
            }
        }
        return out;
    }

    /** {@code per_rank([[...], ...])}: the lists, checked against each layer they place. */
    private Map<Integer, LayerPlacement> listed(Line line, int ranks) {
        Value lists = argument(line.call(), "experts");
        Map<Integer, LayerPlacement> out = new LinkedHashMap<>();
        if (lists instanceof Value.Invalid) {
            return out;
        }
        if (!(lists instanceof Value.ListV outer) || !outer.items().stream().allMatch(i -> i instanceof Value.ListV)) {
            if (!(lists instanceof Value.Invalid)) {
                var d = reporter.error(Code.WRONG_TYPE, lists, "`per_rank` takes a list of lists, one per rank, found %s", lists instanceof Value.ListV
                        ? "a list of " + ((Value.ListV) lists).items().stream().filter(i -> !(i instanceof Value.ListV)).findFirst().map(Value::kind).orElse("")
                        .replaceFirst("^an? ", "") + "s" : lists.kind());
                reporter.help(d, "e.g. `per_rank([[0, 1], [2, 3]])`: experts 0 and 1 on rank 0, 2 and 3 on rank 1");
            }
            return out;
        }
        if (outer.items().size() != ranks) {
            var d = reporter.error(Code.PLACEMENT_RANKS, lists, "`per_rank` lists %d ranks, but `ranks` is %d", outer.items().size(), ranks);
            reporter.help(d, "give one list per rank 0.." + (ranks - 1) + " (`[]` for a rank without experts)");
            return out;
        }
        // Read the integers once; each layer then checks them against its own expert count.
        List<List<Value>> perRank = new ArrayList<>();
        List<List<Integer>> ids = new ArrayList<>();
        boolean ok = true;
        for (Value rank : outer.items()) {
            List<Value> items = ((Value.ListV) rank).items();
            List<Integer> r = new ArrayList<>();
            for (Value item : items) {
                OptionalInt e = read.integer(item, "expert", 0, Integer.MAX_VALUE);
                ok &= e.isPresent();
                r.add(e.orElse(-1));
            }
            perRank.add(items);
            ids.add(r);
        }
        if (!ok) {
            return out;
        }
        for (MoeLayer t : line.targets()) {
            int experts = t.moe().routedExperts();
            String layer = "moe `" + t.moe().name() + "` (layer " + t.layer() + ")";
            int[] owner = new int[experts];
            java.util.Arrays.fill(owner, -1);
            boolean fits = true;
            for (int r = 0; r < ids.size() && fits; r++) {
                for (int i = 0; i < ids.get(r).size(); i++) {
                    int e = ids.get(r).get(i);
                    Value at = perRank.get(r).get(i);
                    if (e >= experts) {
                        reporter.error(Code.EXPERT_NOT_PLACED_ONCE, at, "%s has routed experts 0..%d; there is no expert %d", layer, experts - 1, e);
                        fits = false;
                        break;
                    }
                    if (owner[e] >= 0) {
                        reporter.error(Code.EXPERT_NOT_PLACED_ONCE, at, "expert %d is placed twice: on rank %d and rank %d", e, owner[e], r);
                        fits = false;
                        break;
                    }
                    owner[e] = r;
                }
            }
            if (fits) {
                List<String> missing = new ArrayList<>();
                for (int e = 0; e < experts; e++) {
                    if (owner[e] < 0) {
                        missing.add(String.valueOf(e));
                    }
                }
                if (!missing.isEmpty()) {
                    var d = reporter.error(Code.EXPERT_NOT_PLACED_ONCE, lists, "%s %s of %s %s on no rank", missing.size() == 1 ? "expert" : "experts",
                            shortList(missing), layer, missing.size() == 1 ? "is" : "are");
                    reporter.help(d, "list every expert 0.." + (experts - 1) + " once");
                    fits = false;
                }
            }
            if (!fits) {
                break; // one layer's report is enough: the lists are the same for the others
            }
            out.put(t.layer(), new LayerPlacement(t.layer(), t.moe().name(), experts, ExpertParallel.Source.LISTED, sorted(ids)));
        }
        return out;
    }

    /**
     * A placement file of {@code moe placement --json}: per MoE layer, each rank's experts. Reports at
     * {@code at} (the path) whatever makes it unusable for this model and these ranks.
     */
    private Optional<List<List<List<Integer>>>> readFile(Value at, String path, int ranks, Model m, List<MoeLayer> moeLayers) {
        Path base = Optional.ofNullable(Path.of(at.source().name()).toAbsolutePath().getParent()).orElse(Path.of("."));
        Path file;
        try {
            file = base.resolve(path);
        } catch (java.nio.file.InvalidPathException e) {
            reporter.error(Code.PLACEMENT_FILE, at, "`%s` is not a valid path (%s)", path, e.getReason());
            return Optional.empty();
        }
        JsonNode root;
        try {
            if (Files.isDirectory(file)) {
                reporter.error(Code.PLACEMENT_FILE, at, "cannot read placement file `%s`: it is a directory", path);
                return Optional.empty();
            }
            if (Files.exists(file) && !Files.isRegularFile(file)) {
                // A device such as /dev/zero would never end.
                reporter.error(Code.PLACEMENT_FILE, at, "cannot read placement file `%s`: not a regular file", path);
                return Optional.empty();
            }
            byte[] bytes;
            try (var in = Files.newInputStream(file)) {
                bytes = in.readNBytes((int) MAX_FILE_BYTES + 1);
            }
            if (bytes.length > MAX_FILE_BYTES) {
                reporter.error(Code.PLACEMENT_FILE, at, "cannot read placement file `%s`: larger than %d MiB", path, MAX_FILE_BYTES >> 20);
                return Optional.empty();
            }
            root = new ObjectMapper().enable(DeserializationFeature.FAIL_ON_TRAILING_TOKENS).readTree(bytes);
        } catch (NoSuchFileException e) {
            var d = reporter.error(Code.PLACEMENT_FILE, at, "placement file `%s` does not exist", path);
            reporter.help(d, "paths are relative to this file's directory; `moe placement RUN --ranks " + ranks + " --json FILE` writes one");
            return Optional.empty();
        } catch (JacksonException e) {
            var loc = e.getLocation();
            // Jackson's message ends with where it was, as "(start marker at [Source: ...])": the line and column say it better.
            String why = String.valueOf(e.getOriginalMessage()).replaceAll("\\s*\\(?(start marker )?at \\[Source:.*", "").strip();
            why = why.isEmpty() ? why : Character.toLowerCase(why.charAt(0)) + why.substring(1);
            reporter.error(Code.PLACEMENT_FILE, at, "placement file `%s` is not JSON%s: %s", path,
                    loc == null || loc.getLineNr() < 1 ? "" : " (line " + loc.getLineNr() + ", column " + loc.getColumnNr() + ")", why);
            return Optional.empty();
        } catch (IOException | RuntimeException e) {
            // RuntimeException: an I/O error that a file system wraps.
            reporter.error(Code.PLACEMENT_FILE, at, "cannot read placement file `%s`: %s", path, e.getMessage() == null ? e.getClass().getSimpleName()
                    : e.getMessage());
            return Optional.empty();
        }
        String shape = "expected {\"ranks\": n, \"layers\": [{\"experts_of_rank\": [[...], ...]}, ...]} as `moe placement --json` writes";
        if (root == null || !root.isObject() || !root.path("ranks").canConvertToInt() || !root.path("ranks").isIntegralNumber()
                || !root.path("layers").isArray()) {
            var d = reporter.error(Code.PLACEMENT_FILE, at, "placement file `%s` lacks `ranks` or `layers`", path);
            reporter.note(d, shape);
            return Optional.empty();
        }
        int fileRanks = root.get("ranks").asInt();
        if (fileRanks != ranks) {
            var d = reporter.error(Code.PLACEMENT_FILE, at, "placement file `%s` places experts on %d ranks, but `ranks` is %d", path, fileRanks, ranks);
            reporter.help(d, "set `ranks " + fileRanks + "`, or recompute it: `moe placement RUN --ranks " + ranks + " --json " + path + "`");
            return Optional.empty();
        }
        JsonNode layers = root.get("layers");
        if (layers.size() != moeLayers.size()) {
            var d = reporter.error(Code.PLACEMENT_FILE, at, "placement file `%s` has %d MoE %s, but model `%s` has %d (layers %s)", path, layers.size(), layers.size() == 1 ? "layer" : "layers",
                    m.name(), moeLayers.size(), shortList(moeLayers.stream().map(t -> String.valueOf(t.layer())).toList()));
            reporter.help(d, "recompute it from a run of this model with `moe placement`");
            return Optional.empty();
        }
        List<List<List<Integer>>> out = new ArrayList<>();
        for (MoeLayer t : moeLayers) {
            int i = t.position();
            JsonNode entry = layers.get(i);
            JsonNode lists = entry.path("experts_of_rank");
            List<List<Integer>> perRank = new ArrayList<>();
            boolean wellFormed = lists.isArray() && lists.size() == ranks && (!entry.has("moe_layer") || entry.get("moe_layer").asInt(-1) == i);
            for (int r = 0; wellFormed && r < lists.size(); r++) {
                JsonNode rank = lists.get(r);
                wellFormed = rank.isArray();
                List<Integer> ids = new ArrayList<>();
                for (int k = 0; wellFormed && k < rank.size(); k++) {
                    wellFormed = rank.get(k).isIntegralNumber() && rank.get(k).canConvertToInt() && rank.get(k).asInt() >= 0;
                    ids.add(rank.get(k).asInt());
                }
                perRank.add(ids);
            }
            if (!wellFormed) {
                var d = reporter.error(Code.PLACEMENT_FILE, at, "placement file `%s`: MoE layer %d (`layers[%d]`) is not %d lists of expert ids", path, i, i,
                        ranks);
                reporter.note(d, shape);
                return Optional.empty();
            }
            int experts = t.moe().routedExperts();
            int listed = perRank.stream().mapToInt(List::size).sum();
            TreeSet<Integer> distinct = new TreeSet<>();
            perRank.forEach(distinct::addAll);
            if (listed != experts || distinct.size() != experts || distinct.last() >= experts) {
                var d = reporter.error(Code.PLACEMENT_FILE, at, "placement file `%s` places %d experts%s in its MoE layer %d, but moe `%s` (layer %d) routes %d",
                        path, distinct.size(), listed == distinct.size() ? "" : " (" + (listed - distinct.size()) + " twice)", i, t.moe().name(), t.layer(),
                        experts);
                reporter.help(d, "recompute it from a run of this model with `moe placement`");
                return Optional.empty();
            }
            out.add(sorted(perRank));
        }
        return Optional.of(out);
    }

    private static Value argument(Value.Call call, String name) {
        // A call that reached here passed read.args, so its one positional argument is `name` if unnamed.
        for (Value.Arg a : call.args()) {
            if (a.name().isEmpty() || a.name().get().equals(name)) {
                return a.value();
            }
        }
        throw new IllegalStateException("`" + call.callee() + "` without `" + name + "`");
    }

    private static List<List<Integer>> sorted(List<List<Integer>> perRank) {
        return perRank.stream().map(r -> r.stream().sorted().toList()).toList();
    }

    /** {@code 1, 2, 3} or, past eight, {@code 1, 2, ..., 40 (12 in all)}. */
    private static String shortList(List<String> items) {
        if (items.size() <= 8) {
            return String.join(", ", items);
        }
        return String.join(", ", items.subList(0, 6)) + ", ..., " + items.getLast() + " (" + items.size() + " in all)";
    }
}
