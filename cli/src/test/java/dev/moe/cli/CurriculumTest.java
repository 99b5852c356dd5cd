package dev.moe.cli;

import static com.google.common.truth.Truth.assertThat;
import static com.google.common.truth.Truth.assertWithMessage;

import dev.moe.compiler.Patterns;
import dev.moe.runtime.io.SafeTensors;
import dev.moe.runtime.io.SafeTensorsFile;
import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.HexFormat;
import java.util.List;
import java.util.Map;
import java.util.TreeMap;
import java.util.function.Predicate;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/** {@code moe train} on a recipe with stages: per-stage data, trainable patterns, learning rates, checkpoints, resume. */
class CurriculumTest {
    static final String MODEL = """
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
            """;

    static final String RECIPE = MODEL + """
            train Tiny {
              optimizer adamw(lr: 0.01, weight_decay: 0.01)
              schedule cosine(warmup: 2, min_lr: 0.001)
              batch 4
              seed 3
              data mix(arithmetic: 0.5, copy: 0.5)
              stage warmup { steps 3  data copy }
              stage experts {
                steps 3
                lr 0.005
                trainable ["layers.1.moe.experts.{0..1}.*", "**.router.*"]
              }
              stage all { steps 3  schedule constant }
            }
            """;

    static final String EXPERTS_STAGE = "layers.1.moe.experts.{0..1}.*";

    @TempDir
    Path dir;

    Path recipe;

    @BeforeEach
    void writeRecipe() throws IOException {
        recipe = dir.resolve("staged.moe");
        Files.writeString(recipe, RECIPE);
    }

    private Cli.Run train(Path out, String... more) {
        List<String> args = new ArrayList<>(List.of("train", recipe.toString(), "--out", out.toString(), "--threads", "2"));
        args.addAll(List.of(more));
        return Cli.run(args.toArray(String[]::new));
    }

    @Test
    void runsTheStagesInOrderWithACheckpointAtEachEnd() throws IOException {
        Path out = dir.resolve("run");
        Cli.Run r = train(out);
        assertWithMessage("%s", r).that(r.exit()).isEqualTo(0);
        assertThat(r.out()).contains("3 stages (warmup, experts, all)");
        for (String stage : List.of("warmup", "experts", "all")) {
            assertWithMessage(stage).that(Files.exists(out.resolve("stage-" + stage + ".safetensors"))).isTrue();
        }
        List<String> metrics = Files.readAllLines(out.resolve("metrics.jsonl"));
        assertThat(metrics).hasSize(9);
        assertThat(metrics.get(0)).contains("\"step\":1,\"stage\":\"warmup\",\"stage_step\":1,");
        assertThat(metrics.get(3)).contains("\"step\":4,\"stage\":\"experts\",\"stage_step\":1,");
        // the second stage's own lr (0.005) under the block's cosine schedule with warmup 2: half of it at its first step
        assertThat(metrics.get(3)).contains("\"lr\":0.00250000");
        assertThat(metrics.get(8)).contains("\"stage\":\"all\",\"stage_step\":3,");
        assertThat(metrics.get(8)).contains("\"lr\":0.0100000"); // constant schedule
        try (SafeTensorsFile f = SafeTensors.open(out.resolve("stage-experts.safetensors"))) {
            assertThat(f.metadata()).containsEntry("stage", "experts");
            assertThat(f.metadata()).containsEntry("step", "6");
        }
    }

    @Test
    void frozenParametersStayBitwiseTheSameAndHaveNoOptimiserState() throws IOException {
        Path out = dir.resolve("run");
        assertThat(train(out).exit()).isEqualTo(0);
        Map<String, String> before = tensors(out.resolve("stage-warmup.safetensors"));
        Map<String, String> after = tensors(out.resolve("stage-experts.safetensors"));
        Predicate<String> trains = Patterns.anyOf(List.of(EXPERTS_STAGE, "**.router.*"));
        int frozen = 0;
        int trained = 0;
        for (String name : after.keySet()) {
            if (name.startsWith("optimizer.") || name.startsWith("__")) {
                continue;
            }
            if (trains.test(name)) {
                trained++;
                assertWithMessage("%s trains in stage `experts`", name).that(after.get(name)).isNotEqualTo(before.get(name));
                assertThat(after).containsKey("optimizer.m." + name);
                assertThat(after).containsKey("optimizer.v." + name);
            } else {
                frozen++;
                assertWithMessage("%s is frozen in stage `experts`", name).that(after.get(name)).isEqualTo(before.get(name));
                assertWithMessage("optimiser state of frozen %s", name).that(after).doesNotContainKey("optimizer.m." + name);
            }
        }
        assertThat(trained).isEqualTo(7); // 2 experts x 3 projections + the router
        assertThat(frozen).isGreaterThan(20);
    }

    @Test
    void resumingInsideAStageOrAtItsEndIsBitwiseTheSameAsAnUninterruptedRun() throws IOException {
        Path straight = dir.resolve("straight");
        assertThat(train(straight).exit()).isEqualTo(0);
        for (String stopAt : List.of("5", "3")) { // inside stage 2; at the end of stage 1
            Path resumed = dir.resolve("resumed-" + stopAt);
            Cli.Run first = train(resumed, "--stop-at", stopAt);
            assertWithMessage("%s", first).that(first.exit()).isEqualTo(0);
            assertThat(Files.readAllLines(resumed.resolve("metrics.jsonl"))).hasSize(Integer.parseInt(stopAt));
            Cli.Run second = train(resumed, "--resume");
            assertWithMessage("%s", second).that(second.exit()).isEqualTo(0);
            assertWithMessage("stopped at %s", stopAt).that(tensors(resumed.resolve("last.safetensors")))
                    .isEqualTo(tensors(straight.resolve("last.safetensors")));
            assertThat(Files.readAllLines(resumed.resolve("metrics.jsonl")).stream().map(CurriculumTest::withoutSpeed).toList())
                    .isEqualTo(Files.readAllLines(straight.resolve("metrics.jsonl")).stream().map(CurriculumTest::withoutSpeed).toList());
        }
    }

    @Test
    void aMissingCheckpointIsACleanErrorBeforeAnyTrainingAndOverwritesNothing() throws IOException {
        Path out = dir.resolve("run");
        assertThat(train(out, "--stage-steps", "1").exit()).isEqualTo(0);
        byte[] last = Files.readAllBytes(out.resolve("last.safetensors"));
        Files.writeString(recipe, RECIPE.replace("stage all { steps 3  schedule constant }",
                "stage all { steps 3  init checkpoint(\"nowhere/last.safetensors\") }"));
        Cli.Run r = train(out);
        assertThat(r.exit()).isEqualTo(1);
        assertThat(r.err()).contains("nowhere/last.safetensors: no such checkpoint");
        assertThat(r.err()).doesNotContain("Exception");
        assertThat(r.out()).doesNotContain("training Tiny");
        assertThat(Files.readAllBytes(out.resolve("last.safetensors"))).isEqualTo(last);
    }

    @Test
    void aCheckpointThatDoesNotMatchTheDeclaredDenseModelIsRefusedBeforeTraining() throws IOException {
        Path out = dir.resolve("tiny");
        assertThat(train(out, "--stage-steps", "1").exit()).isEqualTo(0);
        Path upcycling = dir.resolve("upcycle.moe");
        Files.writeString(upcycling, """
                model Dense {
                  vocab 256
                  context 16
                  dim 16
                  heads 2
                  layers 2 { all: attention, swiglu(hidden: 32) }
                }
                moe copies {
                  routed 4 x swiglu(hidden: 32)
                  router { top_k 2 }
                }
                model Sparse {
                  vocab 256
                  context 16
                  dim 16
                  heads 2
                  layers 2 { all: attention, copies }
                }
                train Sparse {
                  stage upcycle {
                    steps 2
                    init copy(from: "dense.safetensors", model: Dense)
                  }
                }
                """);
        Path dense = dir.resolve("dense.safetensors");
        Files.copy(out.resolve("last.safetensors"), dense);
        Cli.Run r = Cli.run("train", upcycling.toString(), "--out", dir.resolve("sparse").toString());
        assertThat(r.exit()).isEqualTo(1);
        assertThat(r.err()).contains("dense.safetensors holds model `Tiny`, but the recipe reads it as `Dense`");

        // the same tensors under the name `Dense`: the declared model's FFN is missing
        var w = dev.moe.runtime.upcycle.Weights.read(dense);
        List<dev.moe.runtime.Parameter> params = new ArrayList<>();
        w.values().forEach((name, v) -> params.add(new dev.moe.runtime.Parameter(name, w.shape(name), v, null, 0, v.length, false)));
        dev.moe.runtime.train.Checkpoint.save(dense, params, null, Map.of("model", "Dense"));
        r = Cli.run("train", upcycling.toString(), "--out", dir.resolve("sparse").toString());
        assertThat(r.exit()).isEqualTo(1);
        assertThat(r.err()).containsMatch("does not match model `Dense`: (it has no tensor|`[a-z0-9_.]+` has shape)");
        assertThat(r.err()).doesNotContain("Exception");
        assertThat(Files.exists(dir.resolve("sparse"))).isFalse();
    }

    static final String PIPELINE = """
            model Dense {
              vocab 256
              context 16
              dim 16
              heads 2
              layers 2 { all: attention, swiglu(hidden: 32) }
            }
            moe copies {
              routed 4 x swiglu(hidden: 32)
              router { top_k 2  normalize true }
            }
            model Sparse {
              vocab 256
              context 16
              dim 16
              heads 2
              layers 2 { all: attention, copies }
            }
            train Dense {
              optimizer adamw(lr: 0.01)
              batch 4
              steps 3
            }
            train Sparse {
              optimizer adamw(lr: 0.005)
              batch 4
              stage upcycle {
                steps 2
                init copy(from: Dense, noise: 0.01)
                trainable ["**.router.*"]
              }
              stage joint { steps 2 }
            }
            """;

    @Test
    void aPipelineOfTrainBlocksResumesBitwiseAcrossBlocks() throws IOException {
        Path file = dir.resolve("pipeline.moe");
        Files.writeString(file, PIPELINE);
        Path straight = dir.resolve("straight");
        Cli.Run r = Cli.run("train", file.toString(), "--out", straight.toString(), "--threads", "2");
        assertWithMessage("%s", r).that(r.exit()).isEqualTo(0);
        assertThat(r.out()).contains("training Dense");
        assertThat(r.out()).contains("training Sparse");
        Path resumed = dir.resolve("resumed");
        // stops the first block at step 2: the pipeline waits
        Cli.Run first = Cli.run("train", file.toString(), "--out", resumed.toString(), "--threads", "2", "--stop-at", "2");
        assertWithMessage("%s", first).that(first.exit()).isEqualTo(0);
        assertThat(first.out()).doesNotContain("training Sparse");
        // finishes Dense, then stops Sparse inside its first stage
        Cli.Run second = Cli.run("train", file.toString(), "--out", resumed.toString(), "--threads", "2", "--resume", "--model", "Dense");
        assertWithMessage("%s", second).that(second.exit()).isEqualTo(0);
        Cli.Run third = Cli.run("train", file.toString(), "--out", resumed.toString(), "--threads", "2", "--resume", "--stop-at", "1");
        assertWithMessage("%s", third).that(third.exit()).isEqualTo(0);
        Cli.Run last = Cli.run("train", file.toString(), "--out", resumed.toString(), "--threads", "2", "--resume");
        assertWithMessage("%s", last).that(last.exit()).isEqualTo(0);
        for (String model : List.of("Dense", "Sparse")) {
            assertWithMessage(model).that(tensors(resumed.resolve(model).resolve("last.safetensors")))
                    .isEqualTo(tensors(straight.resolve(model).resolve("last.safetensors")));
        }
        // the upcycled stage trained only the routers: the experts are still the copies, each near the dense FFN
        Map<String, String> upcycled = tensors(straight.resolve("Sparse/stage-upcycle.safetensors"));
        assertThat(upcycled.get("layers.0.attn.q")).isEqualTo(tensors(straight.resolve("Dense/last.safetensors")).get("layers.0.attn.q"));
    }

    static String withoutSpeed(String line) {
        return line.replaceAll("\"tokens_per_s\":[0-9.]+|,\"model_tflops\":[0-9.e+-]+|,\"mfu\":[0-9.e+-]+", "");
    }

    /** Every tensor's bytes (parameters and optimiser moments), by name, and the step. */
    static Map<String, String> tensors(Path file) throws IOException {
        Map<String, String> out = new TreeMap<>();
        try (SafeTensorsFile f = SafeTensors.open(file)) {
            for (String name : f.tensors().keySet()) {
                out.put(name, HexFormat.of().formatHex(sha256(f.readBytes(name))));
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
