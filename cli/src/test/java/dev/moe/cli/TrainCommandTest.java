package dev.moe.cli;

import static com.google.common.truth.Truth.assertThat;
import static com.google.common.truth.Truth.assertWithMessage;

import dev.moe.runtime.io.SafeTensors;
import dev.moe.runtime.io.SafeTensorsFile;
import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/** {@code moe train}, {@code generate} and {@code eval} end to end on a tiny recipe. */
class TrainCommandTest {
    static final String RECIPE = """
            // A tiny MoE for tests: trains in seconds.
            model Tiny {
              vocab 256
              context 16
              dim 16
              heads 2
              moe experts {
                shared 1 x swiglu(hidden: 16)
                routed 4 x swiglu(hidden: 16)
                router { top_k 2  normalize true  jitter 0.01 }
                balance aux(coef: 0.01)
              }
              layers 2 {
                first 1: attention, swiglu(hidden: 32)
                rest: attention, experts
              }
            }

            train Tiny {
              optimizer adamw(lr: 0.01, weight_decay: 0.01)
              schedule cosine(warmup: 2, min_lr: 0.001)
              batch 4
              steps 12
              seed 3
              data mix(arithmetic: 0.5, copy: 0.5)
            }
            """;

    @TempDir
    Path dir;

    Path recipe;

    @BeforeEach
    void writeRecipe() throws IOException {
        recipe = dir.resolve("tiny.moe");
        Files.writeString(recipe, RECIPE);
    }

    private Cli.Run train(Path out, String... more) {
        List<String> args = new java.util.ArrayList<>(List.of("train", recipe.toString(), "--out", out.toString()));
        args.addAll(List.of(more));
        return Cli.run(args.toArray(String[]::new));
    }

    @Test
    void trainsWritesARunDirectoryAndLearns() throws IOException {
        Path out = dir.resolve("run");
        Cli.Run r = train(out);
        assertWithMessage("%s", r).that(r.exit()).isEqualTo(0);
        assertThat(r.out()).contains("training Tiny");
        // model FLOPs per trained token: 3x moe info's forward count; on the CPU there is no peak, so no MFU
        assertThat(r.out()).containsMatch("model FLOPs: [0-9.]+ [KMG]FLOP per token trained \\(3 x the forward's [0-9.]+ [KMG]FLOP that moe info counts at context \\d+\\)\n");
        for (String f : List.of("last.safetensors", "metrics.jsonl", "loss.png", "experts.png", "domain-loads.json")) {
            assertWithMessage(f).that(Files.exists(out.resolve(f))).isTrue();
        }
        List<String> metrics = Files.readAllLines(out.resolve("metrics.jsonl"));
        assertThat(metrics).hasSize(12);
        assertThat(metrics.getFirst()).containsMatch("\"step\":1,\"loss\":[0-9.]+,.*\"lr\":.*\"tokens_per_s\":[0-9.]+,\"model_tflops\":[0-9.e-]+,\"expert_loads\":\\[\\[\\d+,\\d+,\\d+,\\d+]]");
        assertThat(metrics.getFirst()).doesNotContain("\"mfu\"");
        double first = loss(metrics.getFirst());
        double last = loss(metrics.getLast());
        assertWithMessage("loss should fall from %s", first).that(last).isLessThan(first);
    }

    @Test
    void resumeIsBitwiseTheSameAsAnUninterruptedRun() throws IOException {
        Path straight = dir.resolve("straight");
        assertThat(train(straight, "--threads", "2").exit()).isEqualTo(0);
        Path resumed = dir.resolve("resumed");
        Cli.Run first = train(resumed, "--stop-at", "5", "--threads", "2");
        assertWithMessage("%s", first).that(first.exit()).isEqualTo(0);
        assertThat(Files.readAllLines(resumed.resolve("metrics.jsonl"))).hasSize(5);
        Cli.Run second = train(resumed, "--resume", "--threads", "2");
        assertWithMessage("%s", second).that(second.exit()).isEqualTo(0);
        assertThat(tensors(resumed.resolve("last.safetensors"))).isEqualTo(tensors(straight.resolve("last.safetensors")));
        assertThat(Files.readAllLines(resumed.resolve("metrics.jsonl")).stream().map(TrainCommandTest::withoutSpeed).toList())
                .isEqualTo(Files.readAllLines(straight.resolve("metrics.jsonl")).stream().map(TrainCommandTest::withoutSpeed).toList());
    }

    @Test
    void oneAndTwoThreadsGiveTheSameCheckpoint() throws IOException {
        Path one = dir.resolve("one");
        Path two = dir.resolve("two");
        assertThat(train(one, "--steps", "4", "--threads", "1").exit()).isEqualTo(0);
        assertThat(train(two, "--steps", "4", "--threads", "2").exit()).isEqualTo(0);
        assertThat(tensors(one.resolve("last.safetensors"))).isEqualTo(tensors(two.resolve("last.safetensors")));
    }

    @Test
    void generateAndEvalReadTheCheckpoint() throws IOException {
        Path out = dir.resolve("run");
        assertThat(train(out, "--steps", "3").exit()).isEqualTo(0);
        Cli.Run g = Cli.run("generate", out.resolve("last.safetensors").toString(), "--prompt", "12+3=", "--max-tokens", "8", "--seed", "1");
        assertWithMessage("%s", g).that(g.exit()).isEqualTo(0);
        assertThat(g.out()).startsWith("12+3=");
        Cli.Run same = Cli.run("generate", out.toString(), "--prompt", "12+3=", "--max-tokens", "8", "--seed", "1");
        assertThat(same.out()).isEqualTo(g.out());
        Cli.Run e = Cli.run("eval", out.toString(), "--batches", "1");
        assertWithMessage("%s", e).that(e.exit()).isEqualTo(0);
        assertThat(e.out()).containsMatch("arithmetic +[0-9.]+ +[0-9.]+");
        assertThat(e.out()).containsMatch("all +[0-9.]+");
    }

    @Test
    void aCheckpointLoadsWithoutThePlacementFileItsRecipeNamed() throws IOException {
        // a data-parallel run ignores the placement; the file may be gone (or recomputed) by the time the weights are used
        Path placement = dir.resolve("p.json");
        Files.writeString(placement, """
                {"ranks": 1, "layers": [{"moe_layer": 0, "imbalance_contiguous": 1.0, "imbalance_balanced": 1.0, "experts_of_rank": [[0, 1, 2, 3]]}]}
                """);
        String placed = RECIPE.replace("  steps 12\n", "  steps 12\n  parallel { ranks 1  experts file(\"p.json\") }\n");
        assertThat(placed).isNotEqualTo(RECIPE);
        Files.writeString(recipe, placed);
        Path out = dir.resolve("placed");
        Cli.Run t = train(out, "--steps", "2");
        assertWithMessage("%s", t).that(t.exit()).isEqualTo(0);
        Files.delete(placement);
        assertThat(Cli.run("check", recipe.toString()).err()).contains("MOE0612");
        Cli.Run g = Cli.run("generate", out.toString(), "--prompt", "12+3=", "--max-tokens", "4", "--seed", "1");
        assertWithMessage("%s", g).that(g.exit()).isEqualTo(0);
        assertThat(g.out()).startsWith("12+3=");
        Cli.Run e = Cli.run("eval", out.toString(), "--batches", "1");
        assertWithMessage("%s", e).that(e.exit()).isEqualTo(0);
    }

    @Test
    void badInputsAreCleanErrors() throws IOException {
        Cli.Run missing = Cli.run("generate", dir.resolve("nope.safetensors").toString(), "--prompt", "x");
        assertThat(missing.exit()).isEqualTo(1);
        assertThat(missing.err()).contains("no checkpoint at");
        Path garbage = dir.resolve("garbage.safetensors");
        Files.write(garbage, new byte[] {1, 2, 3});
        Cli.Run bad = Cli.run("generate", garbage.toString(), "--prompt", "x");
        assertThat(bad.exit()).isEqualTo(1);
        assertThat(bad.err()).contains("moe: error:");
        assertThat(bad.err()).doesNotContain("Exception");
        Path unsupported = dir.resolve("gates.moe");
        Files.writeString(unsupported, RECIPE.replace("router { top_k 2  normalize true  jitter 0.01 }",
                "router arithmetic { top_k 2 }\n    router copy { top_k 2  pregate true }"));
        Cli.Run u = Cli.run("train", unsupported.toString(), "--out", dir.resolve("u").toString());
        assertThat(u.exit()).isEqualTo(1);
        assertThat(u.err()).contains("code generation does not support named gates that differ in more than their weights");
    }

    @Test
    void paddedDocumentsTrainWithTheirPaddingOutOfTheExpertLoads() throws IOException {
        Files.writeString(recipe, RECIPE.replace("steps 12", "steps 2\n  documents pad").replace("jitter 0.01", ""));
        Path out = dir.resolve("padded");
        Cli.Run r = train(out);
        assertWithMessage("%s", r).that(r.exit()).isEqualTo(0);
        // the mixture in the order the command sees it
        var training = dev.moe.compiler.MoeCompiler.compile(recipe).orThrow().trainings().getFirst();
        var mix = new java.util.LinkedHashMap<>(training.data().mixture());
        var data = dev.moe.runtime.data.DataStream.builder().mixture(mix).batch(4).context(16).seed(3).padDocuments(true).build();
        List<String> metrics = Files.readAllLines(out.resolve("metrics.jsonl"));
        for (int step = 0; step < 2; step++) {
            long kept = data.batch(step).keptTokens(16);
            assertThat(kept).isLessThan(4 * 16);
            String loads = metrics.get(step).replaceAll(".*\"expert_loads\":\\[\\[([0-9,]*)]].*", "$1");
            assertWithMessage(metrics.get(step)).that(java.util.Arrays.stream(loads.split(",")).mapToLong(Long::parseLong).sum()).isEqualTo(2 * kept);
        }
        // eval follows the recipe: whole held-out documents, the loss over their kept tokens only
        Cli.Run e = Cli.run("eval", out.toString(), "--batches", "1");
        assertWithMessage("%s", e).that(e.exit()).isEqualTo(0);
        var held = dev.moe.runtime.data.DataStream.builder().mixture(mix).batch(8).context(16).seed(0).padDocuments(true).build();
        long evalKept = held.evalBatch(0).keptTokens(16);
        assertThat(evalKept).isLessThan(8 * 16);
        assertThat(e.out()).containsMatch("all +[0-9.]+ +[0-9.]+ +" + evalKept + "\\n");
    }

    @Test
    void aCorruptLatestCheckpointFallsBackToTheNewestGoodOneWithAWarning() throws IOException {
        Path out = dir.resolve("run");
        assertThat(train(out, "--stop-at", "8", "--save-every", "4").exit()).isEqualTo(0);
        assertThat(Files.exists(out.resolve("step-000004.safetensors"))).isTrue();
        byte[] bytes = Files.readAllBytes(out.resolve("last.safetensors"));
        Files.write(out.resolve("last.safetensors"), java.util.Arrays.copyOf(bytes, bytes.length / 2)); // torn file
        Cli.Run resumed = train(out, "--resume");
        assertWithMessage("%s", resumed).that(resumed.exit()).isEqualTo(0);
        assertThat(Files.readAllLines(out.resolve("metrics.jsonl"))).hasSize(12);
        Files.delete(out.resolve("step-000004.safetensors"));
        Files.write(out.resolve("last.safetensors"), new byte[] {9, 9, 9});
        Cli.Run refused = train(out, "--resume");
        assertThat(refused.exit()).isEqualTo(1);
        assertThat(refused.err()).contains("moe: error: cannot resume:");
        assertThat(refused.err()).doesNotContain("Exception");
    }

    private static double loss(String metricsLine) {
        var m = java.util.regex.Pattern.compile("\"loss\":([0-9.]+)").matcher(metricsLine);
        assertThat(m.find()).isTrue();
        return Double.parseDouble(m.group(1));
    }

    private static String withoutSpeed(String line) {
        return line.replaceAll("\"tokens_per_s\":[0-9.]+|,\"model_tflops\":[0-9.e+-]+|,\"mfu\":[0-9.e+-]+", "");
    }

    /** Every tensor's bytes (parameters and optimiser moments), by name. */
    static java.util.Map<String, String> tensors(Path file) throws IOException {
        java.util.Map<String, String> out = new java.util.TreeMap<>();
        try (SafeTensorsFile f = SafeTensors.open(file)) {
            for (String name : f.tensors().keySet()) {
                out.put(name, java.util.HexFormat.of().formatHex(sha256(f.readBytes(name))));
            }
            out.put("__step", f.metadata().get("step"));
        }
        return out;
    }

    private static byte[] sha256(byte[] b) {
        try {
            return java.security.MessageDigest.getInstance("SHA-256").digest(b);
        } catch (java.security.NoSuchAlgorithmException e) {
            throw new AssertionError(e);
        }
    }
}
