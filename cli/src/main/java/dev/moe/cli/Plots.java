package dev.moe.cli;

import dev.moe.runtime.TrainableModel;
import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import org.knowm.xchart.BitmapEncoder;
import org.knowm.xchart.HeatMapChart;
import org.knowm.xchart.HeatMapChartBuilder;
import org.knowm.xchart.XYChart;
import org.knowm.xchart.XYChartBuilder;

/** {@code loss.png} (loss per step) and {@code experts.png} (tokens per expert per MoE layer), from metrics.jsonl. */
final class Plots {
    private static final Pattern STEP = Pattern.compile("\"step\":(\\d+)");
    private static final Pattern LOSS = Pattern.compile("\"loss\":([-0-9.eE+]+|NaN|Infinity)");
    private static final Pattern LOADS = Pattern.compile("\"expert_loads\":\\[(.*)]}");

    private Plots() {}

    /** One row per (MoE layer, data domain): the share of that domain's tokens each expert took, in %. */
    private static void domainHeatmap(Path runDir, TrainableModel model, Path json) throws IOException {
        com.fasterxml.jackson.databind.JsonNode root = new com.fasterxml.jackson.databind.ObjectMapper().readTree(json.toFile());
        List<Integer> layers = new ArrayList<>();
        root.get("layers").forEach(n -> layers.add(n.asInt()));
        List<String> rows = new ArrayList<>();
        List<Number[]> cells = new ArrayList<>();
        int experts = 0;
        List<String> domains = new ArrayList<>();
        root.get("domains").fieldNames().forEachRemaining(domains::add);
        int y = 0;
        for (int li = 0; li < layers.size(); li++) {
            for (String d : domains) {
                com.fasterxml.jackson.databind.JsonNode counts = root.get("domains").get(d).get(li);
                long sum = 0;
                for (com.fasterxml.jackson.databind.JsonNode c : counts) {
                    sum += c.asLong();
                }
                for (int e = 0; e < counts.size(); e++) {
                    cells.add(new Number[] {e, y, sum == 0 ? 0 : 100.0 * counts.get(e).asLong() / sum});
                }
                experts = Math.max(experts, counts.size());
                rows.add("layer " + layers.get(li) + " · " + d);
                y++;
            }
        }
        List<Integer> xs = new ArrayList<>();
        for (int e = 0; e < experts; e++) {
            xs.add(e);
        }
        HeatMapChart heat = new HeatMapChartBuilder().width(Math.max(700, 60 * experts + 300)).height(140 + 22 * rows.size())
                .title(model.name() + ": % of each domain's tokens per expert (whole run)").xAxisTitle("expert").yAxisTitle("").build();
        heat.addSeries("load", xs, rows, cells);
        BitmapEncoder.saveBitmap(heat, runDir.resolve("experts.png").toString(), BitmapEncoder.BitmapFormat.PNG);
    }

    /**
     * {@link #write}, but a machine that cannot draw (a headless server without fonts, where AWT
     * throws an Error) gets a warning instead of a failed run: the metrics and checkpoints are there.
     */
    static void writeOrWarn(Path runDir, TrainableModel model, java.io.PrintWriter err) throws IOException {
        try {
            write(runDir, model);
        } catch (VirtualMachineError e) {
            throw e;
        } catch (Error | RuntimeException e) {
            err.println("moe: warning: could not draw loss.png and experts.png (" + e.getMessage()
                    + "); metrics.jsonl has the same data. Installing fonts (e.g. fontconfig and fonts-dejavu-core) fixes this.");
            err.flush();
        }
    }

    static void write(Path runDir, TrainableModel model) throws IOException {
        Path metrics = runDir.resolve("metrics.jsonl");
        if (!Files.exists(metrics)) {
            return;
        }
        List<Double> steps = new ArrayList<>();
        List<Double> losses = new ArrayList<>();
        long[][] totals = null;
        for (String line : Files.readAllLines(metrics)) {
            Matcher s = STEP.matcher(line);
            Matcher l = LOSS.matcher(line);
            if (!s.find() || !l.find()) {
                continue;
            }
            steps.add(Double.parseDouble(s.group(1)));
            losses.add(Double.parseDouble(l.group(1)));
            Matcher m = LOADS.matcher(line);
            if (m.find() && !m.group(1).isEmpty()) {
                String[] layers = m.group(1).substring(1, m.group(1).length() - 1).split("],\\[");
                if (totals == null) {
                    totals = new long[layers.length][];
                }
                for (int i = 0; i < layers.length && i < totals.length; i++) {
                    String[] counts = layers[i].split(",");
                    if (totals[i] == null) {
                        totals[i] = new long[counts.length];
                    }
                    for (int e = 0; e < counts.length && e < totals[i].length; e++) {
                        totals[i][e] += Long.parseLong(counts[e].trim());
                    }
                }
            }
        }
        if (steps.isEmpty()) {
            return;
        }
        XYChart chart = new XYChartBuilder().width(800).height(500).title(model.name() + ": training loss").xAxisTitle("step")
                .yAxisTitle("loss").build();
        chart.getStyler().setLegendVisible(false);
        chart.getStyler().setMarkerSize(0);
        chart.addSeries("loss", steps, losses);
        BitmapEncoder.saveBitmap(chart, runDir.resolve("loss.png").toString(), BitmapEncoder.BitmapFormat.PNG);
        Path byDomain = runDir.resolve("domain-loads.json");
        if (Files.exists(byDomain)) {
            domainHeatmap(runDir, model, byDomain);
            return;
        }
        if (totals != null && totals.length > 0 && totals[0] != null) {
            int[] layers = model.moeLayers();
            int experts = totals[0].length;
            List<Number[]> cells = new ArrayList<>();
            for (int i = 0; i < totals.length; i++) {
                long sum = 0;
                for (long c : totals[i]) {
                    sum += c;
                }
                for (int e = 0; e < totals[i].length; e++) {
                    cells.add(new Number[] {e, i, sum == 0 ? 0 : 100.0 * totals[i][e] / sum});
                }
            }
            List<Integer> xs = new ArrayList<>();
            for (int e = 0; e < experts; e++) {
                xs.add(e);
            }
            List<String> ys = new ArrayList<>();
            for (int i = 0; i < totals.length; i++) {
                ys.add("layer " + (i < layers.length ? layers[i] : i));
            }
            HeatMapChart heat = new HeatMapChartBuilder().width(900).height(120 + 40 * totals.length)
                    .title(model.name() + ": % of tokens per expert (whole run)").xAxisTitle("expert").yAxisTitle("MoE layer").build();
            heat.addSeries("load", xs, ys, cells);
            BitmapEncoder.saveBitmap(heat, runDir.resolve("experts.png").toString(), BitmapEncoder.BitmapFormat.PNG);
        }
    }
}
