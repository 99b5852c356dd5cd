package dev.moe.cli;

import static com.google.common.truth.Truth.assertThat;
import static com.google.common.truth.Truth.assertWithMessage;

import dev.moe.runtime.io.SafeTensors;
import dev.moe.runtime.io.SafeTensorsFile;
import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import java.util.Random;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * `moe train` killed with SIGKILL at random moments while it saves a checkpoint every step: the run
 * directory always holds a complete last.safetensors (or none yet), and --resume carries on from it.
 */
class TrainKillTest {
    @TempDir
    Path dir;

    @Test
    void aKilledRunLeavesACompleteCheckpointAndResumes() throws Exception {
        Path recipe = dir.resolve("tiny.moe");
        Files.writeString(recipe, TrainCommandTest.RECIPE.replace("steps 12", "steps 400"));
        Path out = dir.resolve("run");
        String java = Path.of(System.getProperty("java.home"), "bin", "java").toString();
        Random rnd = new Random(20261129);
        int complete = 0;
        for (int round = 0; round < 4; round++) {
            List<String> command = new java.util.ArrayList<>(List.of(java, "--add-modules", "jdk.incubator.vector", "-cp",
                    System.getProperty("java.class.path"), MoeCli.class.getName(), "train", recipe.toString(), "--out", out.toString(),
                    "--save-every", "1", "--threads", "1"));
            if (round > 0) {
                command.add("--resume");
            }
            Process child = new ProcessBuilder(command).redirectErrorStream(true).redirectOutput(dir.resolve("child-" + round + ".log").toFile())
                    .start();
            // Kill at a random moment once the run is saving (a fixed delay fails on a loaded machine,
            // where the child JVM may not reach its first step in time).
            Path log = dir.resolve("child-" + round + ".log");
            long deadline = System.nanoTime() + 180_000_000_000L;
            while (System.nanoTime() < deadline && child.isAlive() && !(Files.exists(log) && Files.readString(log).contains("step "))) {
                Thread.sleep(50);
            }
            Thread.sleep(rnd.nextInt(1500));
            child.destroyForcibly();
            child.waitFor();
            Path last = out.resolve("last.safetensors");
            if (!Files.exists(last)) {
                continue; // killed before the first save completed
            }
            try (SafeTensorsFile f = SafeTensors.open(last)) {
                for (String name : f.tensors().keySet()) {
                    f.readBytes(name); // every tensor is there, in bounds
                }
                assertThat(f.metadata()).containsKey("step");
                complete++;
            } catch (IOException e) {
                throw new AssertionError("round " + round + ": a killed save left an unreadable checkpoint: " + e.getMessage(), e);
            }
        }
        assertWithMessage("at least one round saved a checkpoint (logs in %s)", dir).that(complete).isAtLeast(1);
        long saved;
        try (SafeTensorsFile f = SafeTensors.open(out.resolve("last.safetensors"))) {
            saved = Long.parseLong(f.metadata().get("step"));
        }
        // One more step from wherever the killed runs got to.
        Cli.Run finish = Cli.run("train", recipe.toString(), "--out", out.toString(), "--resume", "--steps", Long.toString(saved + 1));
        assertWithMessage("%s", finish).that(finish.exit()).isEqualTo(0);
        assertThat(finish.err() + finish.out()).doesNotContain("Exception");
    }
}
