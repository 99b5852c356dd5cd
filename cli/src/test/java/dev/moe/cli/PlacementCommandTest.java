package dev.moe.cli;

import static com.google.common.truth.Truth.assertThat;
import static com.google.common.truth.Truth.assertWithMessage;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import java.nio.file.Files;
import java.nio.file.Path;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

class PlacementCommandTest {
    /**
     * Two logged steps of two MoE layers. Layer 0: experts 0 and 1 carry most tokens, so contiguous blocks of two on two
     * ranks put both on rank 0 (loads 100 + 90 against 5 + 5: 1.9x the mean); balancing pairs each heavy expert with a light
     * one (100 + 5 against 90 + 5: 1.05x). Layer 1 is already even.
     */
    private static final String METRICS = """
            {"step":1,"loss":5.0,"expert_loads":[[60,50,2,3],[10,10,10,10]]}
            {"step":2,"loss":4.9,"expert_loads":[[40,40,3,2],[10,10,10,10]]}
            """;

    @Test
    void balancingPairsHeavyExpertsWithLightOnes(@TempDir Path dir) throws Exception {
        Files.writeString(dir.resolve("metrics.jsonl"), METRICS);
        Path json = dir.resolve("plan/placement.json");
        Cli.Run r = Cli.run("placement", dir.toString(), "--ranks", "2", "--json", json.toString());
        assertWithMessage("%s", r).that(r.exit()).isEqualTo(0);
        // layer 0: contiguous 190 vs 10 tokens (1.900x); balanced {0, 3} = 105 vs {1, 2} = 95 (1.050x)
        assertThat(r.out()).containsMatch("0\\s+4\\s+1\\.900x\\s+1\\.050x\\s+200");
        assertThat(r.out()).containsMatch("1\\s+4\\s+1\\.000x\\s+1\\.000x\\s+80");
        assertThat(r.out()).contains("layer 0: rank 0: [0, 3] rank 1: [1, 2]");
        JsonNode plan = new ObjectMapper().readTree(json.toFile());
        assertThat(plan.get("ranks").asInt()).isEqualTo(2);
        assertThat(plan.get("layers").get(0).get("experts_of_rank").toString()).isEqualTo("[[0,3],[1,2]]");
        assertThat(plan.get("layers").get(0).get("imbalance_contiguous").asDouble()).isWithin(1e-9).of(1.9);
    }

    @Test
    void stepsSelectWhichLinesAreSummed(@TempDir Path dir) throws Exception {
        Files.writeString(dir.resolve("metrics.jsonl"), METRICS);
        Cli.Run r = Cli.run("placement", dir.resolve("metrics.jsonl").toString(), "--ranks", "2", "--steps", "2:2");
        assertWithMessage("%s", r).that(r.exit()).isEqualTo(0);
        // step 2 alone: 80 vs 5 contiguous (85 tokens): 80 * 2 / 85
        assertThat(r.out()).containsMatch("0\\s+4\\s+1\\.882x");
    }

    @Test
    void badInputSaysWhatIsWrong(@TempDir Path dir) throws Exception {
        Cli.Run missing = Cli.run("placement", dir.resolve("nope").toString(), "--ranks", "2");
        assertThat(missing.exit()).isEqualTo(1);
        assertThat(missing.err()).contains("does not exist");
        Files.writeString(dir.resolve("metrics.jsonl"), "{\"step\":1,\"loss\":5.0}\n");
        Cli.Run none = Cli.run("placement", dir.toString(), "--ranks", "2");
        assertThat(none.exit()).isEqualTo(1);
        assertThat(none.err()).contains("has no expert loads");
        Files.writeString(dir.resolve("metrics.jsonl"), METRICS);
        Cli.Run badSteps = Cli.run("placement", dir.toString(), "--ranks", "2", "--steps", "5:1");
        assertThat(badSteps.exit()).isEqualTo(1);
        assertThat(badSteps.err()).contains("--steps takes FROM:TO");
        Cli.Run badRanks = Cli.run("placement", dir.toString(), "--ranks", "0");
        assertThat(badRanks.exit()).isEqualTo(1);
        assertThat(badRanks.err()).contains("--ranks must be at least 1");
        Files.writeString(dir.resolve("metrics.jsonl"), "{\"step\":1,\"expert_loads\":[[1,2]]}\nnot json\n");
        Cli.Run garbled = Cli.run("placement", dir.toString(), "--ranks", "2");
        assertThat(garbled.exit()).isEqualTo(1);
        assertThat(garbled.err()).contains(":2: not a JSON line");
    }
}
