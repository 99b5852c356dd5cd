package dev.moe.cli;

import static com.google.common.truth.Truth.assertThat;
import static com.google.common.truth.Truth.assertWithMessage;

import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import org.junit.jupiter.api.io.TempDir;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.MethodSource;

/**
 * Every recipe that grows a model (upcycling, splitting, extending, merging, scaling up,
 * diversifying) runs end to end with one step per stage: each train block of the file trains, in
 * order, into its own directory, and the later blocks start from the earlier ones' checkpoints.
 */
class CurriculumRecipesTest {
    @TempDir
    Path dir;

    static List<String> recipes() {
        return List.of("sparse-upcycling.moe", "innovator.moe", "moextend.moe", "branch-train-mix.moe", "aquila-moe.moe", "evomoe.moe", "unimoe-audio.moe");
    }

    @ParameterizedTest(name = "{0}")
    @MethodSource("recipes")
    void runsEveryBlock(String recipe) throws IOException {
        Path file = Path.of("../recipes").resolve(recipe);
        Cli.Run check = Cli.run("check", file.toString());
        assertWithMessage("%s", check).that(check.exit()).isEqualTo(0);
        Matcher blocks = Pattern.compile("(\\d+) training recipes").matcher(check.out());
        assertThat(blocks.find()).isTrue();

        Path out = dir.resolve(recipe);
        Cli.Run r = Cli.run("train", file.toString(), "--stage-steps", "1", "--seq", "8", "--out", out.toString());
        assertWithMessage("%s", r).that(r.exit()).isEqualTo(0);
        List<Path> runs;
        try (var s = Files.list(out)) {
            runs = s.filter(Files::isDirectory).toList();
        }
        assertThat(runs).hasSize(Integer.parseInt(blocks.group(1)));
        for (Path run : runs) {
            assertWithMessage("%s", run).that(Files.exists(run.resolve("last.safetensors"))).isTrue();
            List<String> metrics = Files.readAllLines(run.resolve("metrics.jsonl"));
            assertThat(metrics).isNotEmpty();
            assertWithMessage("%s", metrics.getLast()).that(metrics.getLast()).containsMatch("\"loss\":[0-9]+\\.[0-9]+");
        }
    }
}
