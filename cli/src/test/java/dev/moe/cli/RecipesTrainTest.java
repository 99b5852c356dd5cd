package dev.moe.cli;

import static com.google.common.truth.Truth.assertThat;
import static com.google.common.truth.Truth.assertWithMessage;

import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import org.junit.jupiter.api.io.TempDir;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.MethodSource;

/** Every recipe is checked, generated, compiled and trains 20 steps with a finite, falling loss. */
class RecipesTrainTest {
    @TempDir
    Path dir;

    static List<String> starterRecipes() {
        return List.of("mixtral.moe", "deepseek-moe.moe", "moe-plus-plus.moe",
                "switch.moe", "deepseek-v3.moe", "longcat-flash.moe", "dynamic-top-p.moe", "mole.moe", "mola.moe", "pangu-moge.moe", "pr-moe.moe",
                "global-batch-lbl.moe", "expert-choice.moe",
                // the paper zoo: routers and experts beyond the starters
                "evomoe-dts.moe", "unimoe-audio-gates.moe", "rmoe.moe", "read-me.moe", "jetmoe.moe", "bam.moe");
    }

    @ParameterizedTest(name = "{0}")
    @MethodSource("starterRecipes")
    void trains(String recipe) throws IOException {
        Path out = dir.resolve(recipe);
        Cli.Run r = Cli.run("train", Path.of("../recipes").resolve(recipe).toString(), "--steps", "20", "--seq", "8", "--out", out.toString());
        assertWithMessage("%s", r).that(r.exit()).isEqualTo(0);
        List<String> metrics = Files.readAllLines(out.resolve("metrics.jsonl"));
        assertThat(metrics).hasSize(20);
        double first = loss(metrics.getFirst());
        double last = loss(metrics.getLast());
        assertThat(Double.isFinite(last)).isTrue();
        assertWithMessage("%s: loss %s -> %s", recipe, first, last).that(last).isLessThan(first);
    }

    private static double loss(String line) {
        var m = java.util.regex.Pattern.compile("\"loss\":([0-9.]+)").matcher(line);
        assertThat(m.find()).isTrue();
        return Double.parseDouble(m.group(1));
    }
}
