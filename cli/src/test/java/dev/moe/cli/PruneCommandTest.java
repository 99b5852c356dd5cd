package dev.moe.cli;

import static com.google.common.truth.Truth.assertThat;
import static com.google.common.truth.Truth.assertWithMessage;

import dev.moe.runtime.upcycle.Weights;
import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/** {@code moe prune}: a trained MoE cut down to its most used experts, usable by generate and eval. */
class PruneCommandTest {
    @TempDir
    Path dir;

    @Test
    void keepsTheMostRoutedExpertsAsTheDeclaredSmallerModel() throws IOException {
        Path recipe = dir.resolve("tiny.moe");
        Files.writeString(recipe, TrainCommandTest.RECIPE);
        Path run = dir.resolve("run");
        assertThat(Cli.run("train", recipe.toString(), "--out", run.toString(), "--steps", "3").exit()).isEqualTo(0);
        Path smaller = dir.resolve("pruned.moe");
        Files.writeString(smaller, TrainCommandTest.RECIPE.replace("routed 4 x", "routed 2 x").replaceAll("(?s)train Tiny.*", ""));

        Cli.Run r = Cli.run("prune", run.toString(), "--into", smaller.toString(), "--out", dir.resolve("pruned").toString(), "--batches", "2");
        assertWithMessage("%s", r).that(r.exit()).isEqualTo(0);
        Matcher row = Pattern.compile("\\n1 +2/4 +[0-9.]+% +\\[(\\d), (\\d)]").matcher(r.out());
        assertWithMessage("%s", r.out()).that(row.find()).isTrue();
        Weights before = Weights.read(run.resolve("last.safetensors"));
        Weights after = Weights.read(dir.resolve("pruned/last.safetensors"));
        for (int j = 0; j < 2; j++) {
            int kept = Integer.parseInt(row.group(j + 1));
            assertThat(after.get("layers.1.moe.experts." + j + ".down")).isEqualTo(before.get("layers.1.moe.experts." + kept + ".down"));
        }
        assertThat(after.get("layers.0.attn.q")).isEqualTo(before.get("layers.0.attn.q"));
        assertThat(after.shape("layers.1.moe.router.weight")).isEqualTo(new int[] {2, 16});

        Cli.Run g = Cli.run("generate", dir.resolve("pruned").toString(), "--prompt", "1+2=", "--max-tokens", "4", "--temperature", "0");
        assertWithMessage("%s", g).that(g.exit()).isEqualTo(0);

        Path larger = dir.resolve("larger.moe");
        Files.writeString(larger, TrainCommandTest.RECIPE.replace("routed 4 x", "routed 6 x").replaceAll("(?s)train Tiny.*", ""));
        Cli.Run bad = Cli.run("prune", run.toString(), "--into", larger.toString(), "--out", dir.resolve("bad").toString());
        assertThat(bad.exit()).isEqualTo(1);
        assertThat(bad.err()).contains("routes 6 experts in layer 1, more than the 4 of `Tiny`");
        assertThat(Files.exists(dir.resolve("bad"))).isFalse();
    }
}
