package dev.moe.cli;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.node.ArrayNode;
import com.fasterxml.jackson.databind.node.ObjectNode;
import dev.moe.cuda.dist.ExpertPlacement;
import java.io.IOException;
import java.io.PrintWriter;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.Locale;
import java.util.concurrent.Callable;
import picocli.CommandLine.Command;
import picocli.CommandLine.Mixin;
import picocli.CommandLine.Model.CommandSpec;
import picocli.CommandLine.Option;
import picocli.CommandLine.Parameters;
import picocli.CommandLine.Spec;

/**
 * {@code moe placement RUN --ranks N}: from the expert loads a training run measured, the placement of
 * each MoE layer's routed experts on N ranks that balances their tokens (as MoETuner does, by longest
 * processing time first with equal experts per rank), next to the contiguous default.
 */
@Command(
        name = "placement",
        description = {"Plan expert parallelism from measured routing: which rank should hold which expert.",
            "Sums the expert loads that `moe train` recorded in RUN/metrics.jsonl (over --steps), and for each MoE layer"
                    + " prints how unevenly N ranks would be loaded with contiguous blocks of experts (rank r holds experts"
                    + " r·E/N ...) and with a placement that balances the measured loads (the heaviest expert first to the"
                    + " least loaded rank with room; every rank keeps E/N experts), and that placement. --json writes it."},
        exitCodeListHeading = "%nExit status:%n",
        exitCodeList = {"0:printed", "1:the run has no readable expert loads", "2:usage error"})
final class PlacementCommand implements Callable<Integer> {
    @Spec
    CommandSpec spec;

    @Mixin
    HelpOption help;

    @Parameters(paramLabel = "RUN", description = "A run directory of `moe train` (or its metrics.jsonl).")
    Path run;

    @Option(names = "--ranks", required = true, paramLabel = "N", description = "How many ranks (GPUs) share the experts.")
    int ranks;

    @Option(names = "--steps", paramLabel = "FROM:TO", description = "Which logged steps to sum, inclusive (default: every step).")
    String steps;

    @Option(names = "--json", paramLabel = "FILE", description = "Also write the balanced placement: per layer, each rank's experts.")
    Path json;

    @Override
    public Integer call() throws IOException {
        PrintWriter stdout = spec.commandLine().getOut();
        PrintWriter err = spec.commandLine().getErr();
        try {
            if (ranks < 1) {
                throw new Recipes.UserError("--ranks must be at least 1");
            }
            long[] range = stepRange();
            Path metrics = Files.isDirectory(run) ? run.resolve("metrics.jsonl") : run;
            if (!Files.isRegularFile(metrics)) {
                throw new Recipes.UserError(metrics + " does not exist: give a run directory of `moe train` or its metrics.jsonl");
            }
            List<long[]> loads = sumLoads(metrics, range);
            ObjectNode out = new ObjectMapper().createObjectNode();
            out.put("ranks", ranks);
            ArrayNode layers = out.putArray("layers");
            stdout.printf(Locale.ROOT, "expert placement on %d ranks from %s (%s)%n", ranks, metrics, steps == null ? "every step" : "steps " + steps);
            stdout.printf(Locale.ROOT, "%-6s %8s %14s %14s %12s%n", "layer", "experts", "contiguous", "balanced", "tokens");
            List<ExpertPlacement> plans = new ArrayList<>();
            for (int l = 0; l < loads.size(); l++) {
                long[] load = loads.get(l);
                ExpertPlacement contiguous = ExpertPlacement.contiguous(load.length, ranks);
                ExpertPlacement balanced = ExpertPlacement.balanced(load, ranks);
                plans.add(balanced);
                stdout.printf(Locale.ROOT, "%-6d %8d %13.3fx %13.3fx %12d%n", l, load.length, contiguous.imbalance(load), balanced.imbalance(load),
                        Arrays.stream(load).sum());
                ObjectNode layer = layers.addObject();
                layer.put("moe_layer", l);
                layer.put("imbalance_contiguous", contiguous.imbalance(load));
                layer.put("imbalance_balanced", balanced.imbalance(load));
                ArrayNode experts = layer.putArray("experts_of_rank");
                for (int r = 0; r < ranks; r++) {
                    ArrayNode list = experts.addArray();
                    for (int e : balanced.expertsOf(r)) {
                        list.add(e);
                    }
                }
            }
            stdout.println("imbalance: the busiest rank's tokens over the mean (1.000x is even); layers count the MoE layers in order");
            for (int l = 0; l < plans.size(); l++) {
                stdout.printf(Locale.ROOT, "layer %d: %s%n", l, plans.get(l));
            }
            if (json != null) {
                Path parent = json.toAbsolutePath().getParent();
                if (parent != null) {
                    Files.createDirectories(parent);
                }
                Path tmp = Files.createTempFile(parent, json.getFileName().toString(), ".tmp");
                new ObjectMapper().writerWithDefaultPrettyPrinter().writeValue(tmp.toFile(), out);
                Files.move(tmp, json, java.nio.file.StandardCopyOption.REPLACE_EXISTING, java.nio.file.StandardCopyOption.ATOMIC_MOVE);
                stdout.println("wrote " + json);
            }
            stdout.flush();
            return 0;
        } catch (Recipes.UserError e) {
            err.println("moe placement: " + e.getMessage());
            err.flush();
            return 1;
        }
    }

    /** --steps FROM:TO as {from, to}; every step without it. */
    private long[] stepRange() throws Recipes.UserError {
        if (steps == null) {
            return new long[] {Long.MIN_VALUE, Long.MAX_VALUE};
        }
        String[] parts = steps.split(":", -1);
        try {
            if (parts.length == 2) {
                long from = parts[0].isEmpty() ? Long.MIN_VALUE : Long.parseLong(parts[0].trim());
                long to = parts[1].isEmpty() ? Long.MAX_VALUE : Long.parseLong(parts[1].trim());
                if (from <= to) {
                    return new long[] {from, to};
                }
            }
        } catch (NumberFormatException e) {
            // reported below
        }
        throw new Recipes.UserError("--steps takes FROM:TO with FROM <= TO (either may be empty), not `" + steps + "`");
    }

    /** Per MoE layer, each expert's tokens summed over the steps in range. */
    private static List<long[]> sumLoads(Path metrics, long[] range) throws IOException, Recipes.UserError {
        ObjectMapper mapper = new ObjectMapper();
        List<long[]> sums = new ArrayList<>();
        int lineNo = 0, used = 0;
        for (String line : Files.readAllLines(metrics)) {
            lineNo++;
            if (line.isBlank()) {
                continue;
            }
            JsonNode row;
            try {
                row = mapper.readTree(line);
            } catch (com.fasterxml.jackson.core.JacksonException e) {
                throw new Recipes.UserError(metrics + ":" + lineNo + ": not a JSON line (" + e.getOriginalMessage() + ")");
            }
            long step = row.path("step").asLong(-1);
            JsonNode layers = row.get("expert_loads");
            if (layers == null || !layers.isArray() || step < range[0] || step > range[1]) {
                continue;
            }
            if (!sums.isEmpty() && sums.size() != layers.size()) {
                throw new Recipes.UserError(metrics + ":" + lineNo + ": " + layers.size() + " MoE layers of loads, earlier lines had " + sums.size());
            }
            for (int l = 0; l < layers.size(); l++) {
                JsonNode counts = layers.get(l);
                if (sums.size() <= l) {
                    sums.add(new long[counts.size()]);
                }
                if (counts.size() != sums.get(l).length) {
                    throw new Recipes.UserError(metrics + ":" + lineNo + ": layer " + l + " has " + counts.size() + " experts, earlier lines had "
                            + sums.get(l).length);
                }
                for (int e = 0; e < counts.size(); e++) {
                    sums.get(l)[e] += counts.get(e).asLong();
                }
            }
            used++;
        }
        if (used == 0) {
            throw new Recipes.UserError(metrics + " has no expert loads" + (range[0] != Long.MIN_VALUE || range[1] != Long.MAX_VALUE ? " in the steps given"
                    : " (a model without MoE layers, or a run that logged none)"));
        }
        return sums;
    }
}
