package dev.moe.runtime.io;

import static com.google.common.truth.Truth.assertThat;
import static com.google.common.truth.Truth.assertWithMessage;
import static org.junit.jupiter.api.Assertions.assertThrows;

import java.io.BufferedReader;
import java.io.IOException;
import java.io.InputStreamReader;
import java.nio.channels.FileChannel;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.security.MessageDigest;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.Map;
import java.util.Random;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicInteger;
import java.util.stream.Stream;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/** Saves are atomic and durable: temp file, fsync, atomic rename, fsync of the directory. */
class SafeTensorsCrashSafetyTest {
    @TempDir
    Path dir;

    /**
     * A child JVM saves 4 MiB checkpoints A and B alternately to one path and is killed with
     * SIGKILL ({@link Process#destroyForcibly()}) at 20 seeded moments, 2-200 ms after it is ready
     * (odd rounds: after its first completed save, so that most kills hit a replace of an existing
     * file). After every kill the path either does not exist yet (only before any save completed)
     * or loads completely as exactly A or B, and at most one temporary is left behind.
     */
    @Test
    void killedSaverLeavesTheOldOrTheNewCheckpointNeverAPartialOne() throws Exception {
        long seed = 0xC4A5_11FEL;
        System.out.println("killedSaverLeavesTheOldOrTheNewCheckpointNeverAPartialOne seed=" + seed);
        Random rnd = new Random(seed);
        Path target = dir.resolve("model.safetensors");
        byte[] digestA = SafeTensorsCrashChild.digest(SafeTensorsCrashChild.checkpoint('A'));
        byte[] digestB = SafeTensorsCrashChild.digest(SafeTensorsCrashChild.checkpoint('B'));
        String java = Path.of(System.getProperty("java.home"), "bin", "java").toString();
        boolean everSaved = false;
        int absent = 0;
        int sawA = 0;
        int sawB = 0;
        int totalSaves = 0;
        for (int round = 0; round < 20; round++) {
            Process child = new ProcessBuilder(java, "-Xmx256m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1",
                    "-cp", System.getProperty("java.class.path"), SafeTensorsCrashChild.class.getName(), target.toString())
                    .redirectError(dir.resolve("child-" + round + ".err").toFile())
                    .start();
            ChildOutput out = new ChildOutput(child);
            int delayMs = 2 + rnd.nextInt(199);
            try {
                assertWithMessage("child %s became ready; stderr: %s", round, stderr(round))
                        .that(out.ready.await(240, TimeUnit.SECONDS)).isTrue();
                if (round % 2 == 1) {
                    assertWithMessage("child %s completed a save; stderr: %s", round, stderr(round))
                            .that(out.firstSave.await(240, TimeUnit.SECONDS)).isTrue();
                }
                Thread.sleep(delayMs);
            } finally {
                child.destroyForcibly();
                child.waitFor();
            }
            out.reader.join(10_000);
            totalSaves += out.saves.get();
            everSaved |= out.saves.get() > 0;

            List<Path> temporaries = temporaries(target);
            assertWithMessage("temporaries after round %s", round).that(temporaries.size()).isAtMost(1);
            if (!Files.exists(target)) {
                assertWithMessage("round %s: a completed save was reported, so the file must exist", round)
                        .that(everSaved).isFalse();
                absent++;
                continue;
            }
            try (SafeTensorsFile f = SafeTensors.open(target)) {
                MessageDigest md = SafeTensorsCrashChild.sha256();
                for (String name : f.tensors().keySet()) {
                    md.update(f.byteBuffer(name));
                }
                byte[] digest = md.digest();
                String which = f.metadata().get("checkpoint");
                if (Arrays.equals(digest, digestA)) {
                    assertThat(which).isEqualTo("A");
                    sawA++;
                } else {
                    assertWithMessage("round %s (killed %s ms in): the file is neither A nor B", round, delayMs)
                            .that(digest).isEqualTo(digestB);
                    assertThat(which).isEqualTo("B");
                    sawB++;
                }
            }
        }
        System.out.printf("20 kills: %d before any save, %d found A, %d found B; %d saves completed in all%n",
                absent, sawA, sawB, totalSaves);
        assertThat(sawA + sawB).isAtLeast(10);

        // The next save removes what the last kill may have left.
        SafeTensors.write(target, SafeTensorsCrashChild.checkpoint('A'), SafeTensorsCrashChild.metadata('A'));
        assertThat(temporaries(target)).isEmpty();
    }

    private String stderr(int round) throws IOException {
        Path p = dir.resolve("child-" + round + ".err");
        return Files.exists(p) ? Files.readString(p) : "";
    }

    /** Reads the child's stdout on a thread: "ready", then "saved i" per save. */
    private static final class ChildOutput {
        final CountDownLatch ready = new CountDownLatch(1);
        final CountDownLatch firstSave = new CountDownLatch(1);
        final AtomicInteger saves = new AtomicInteger();
        final Thread reader;

        ChildOutput(Process child) {
            reader = Thread.ofPlatform().daemon().start(() -> {
                try (BufferedReader r = new BufferedReader(
                        new InputStreamReader(child.getInputStream(), StandardCharsets.UTF_8))) {
                    String line;
                    while ((line = r.readLine()) != null) {
                        if (line.equals("ready")) {
                            ready.countDown();
                        } else if (line.startsWith("saved ")) {
                            saves.incrementAndGet();
                            firstSave.countDown();
                        }
                    }
                } catch (IOException ignored) {
                    // the child was killed
                }
            });
        }
    }

    // ---------------------------------------------------------------------------------------
    // The order of the durability steps, failures, stale temporaries
    // ---------------------------------------------------------------------------------------

    /** Delegates to the real steps and records, at each step, what is on disk. */
    private final class RecordingSteps implements SafeTensors.SaveSteps {
        final List<String> log = new ArrayList<>();
        final Path target;
        String failAt = "";

        RecordingSteps(Path target) {
            this.target = target;
        }

        @Override
        public void forceFile(FileChannel channel) throws IOException {
            log.add("forceFile(size=" + channel.size() + ", target " + state() + ")");
            fail("forceFile");
            SafeTensors.SaveSteps.DEFAULT.forceFile(channel);
        }

        @Override
        public void move(Path from, Path to) throws IOException {
            assertThat(from.getParent()).isEqualTo(to.getParent());
            assertThat(SafeTensors.isTemporaryOf(from.getFileName().toString(), to.getFileName().toString())).isTrue();
            log.add("move(target " + state() + ")");
            fail("move");
            SafeTensors.SaveSteps.DEFAULT.move(from, to);
        }

        @Override
        public void forceDirectory(Path d) throws IOException {
            assertThat(d).isEqualTo(target.toAbsolutePath().getParent());
            log.add("forceDirectory(target " + state() + ")");
            SafeTensors.SaveSteps.DEFAULT.forceDirectory(d);
        }

        private String state() throws IOException {
            if (!Files.exists(target)) {
                return "absent";
            }
            try (SafeTensorsFile f = SafeTensors.open(target)) {
                return f.metadata().get("v");
            }
        }

        private void fail(String step) throws IOException {
            if (failAt.equals(step)) {
                throw new IOException("injected failure at " + step);
            }
        }
    }

    private static List<Tensor> tensors(float value) {
        return List.of(Tensor.f32("w", new long[] {4}, new float[] {value, value, value, value}));
    }

    @Test
    void stepsRunInOrderForceFileThenAtomicRenameThenForceDirectory() throws IOException {
        Path target = dir.resolve("ordered.safetensors");
        RecordingSteps steps = new RecordingSteps(target);
        SafeTensors.write(target, tensors(1), Map.of("v", "1"), steps);
        SafeTensors.write(target, tensors(2), Map.of("v", "2"), steps);
        long size = SafeTensors.serialize(tensors(1), Map.of("v", "1")).length;
        assertThat(steps.log).containsExactly(
                "forceFile(size=" + size + ", target absent)",
                "move(target absent)",
                "forceDirectory(target 1)",
                "forceFile(size=" + size + ", target 1)",
                "move(target 1)",
                "forceDirectory(target 2)").inOrder();
        assertThat(temporaries(target)).isEmpty();
    }

    @Test
    void failedSaveLeavesTheOldFileAndNoTemporary() throws IOException {
        Path target = dir.resolve("failing.safetensors");
        SafeTensors.write(target, tensors(1), Map.of("v", "1"));
        byte[] before = Files.readAllBytes(target);
        for (String step : List.of("forceFile", "move")) {
            RecordingSteps steps = new RecordingSteps(target);
            steps.failAt = step;
            IOException e = assertThrows(IOException.class,
                    () -> SafeTensors.write(target, tensors(2), Map.of("v", "2"), steps));
            assertThat(e).hasMessageThat().isEqualTo("injected failure at " + step);
            assertThat(Files.readAllBytes(target)).isEqualTo(before);
            assertThat(temporaries(target)).isEmpty();
        }
    }

    @Test
    void staleTemporariesOfTheSameTargetAreRemovedOnTheNextSave() throws IOException {
        Path target = dir.resolve("model.safetensors");
        Path stale1 = dir.resolve(".model.safetensors.tmp-0123456789abcdef");
        Path stale2 = dir.resolve(SafeTensors.temporaryName("model.safetensors"));
        Path otherTarget = dir.resolve(".other.safetensors.tmp-0123456789abcdef");
        Path notOurs = dir.resolve(".model.safetensors.tmp-keep");
        Path prefixOnly = dir.resolve(".model.safetensors.tmp-0123456789abcdef0");
        for (Path p : List.of(stale1, stale2, otherTarget, notOurs, prefixOnly)) {
            Files.writeString(p, "partial");
        }
        SafeTensors.write(target, tensors(1), Map.of());
        assertThat(Files.exists(stale1)).isFalse();
        assertThat(Files.exists(stale2)).isFalse();
        assertThat(Files.exists(otherTarget)).isTrue();
        assertThat(Files.exists(notOurs)).isTrue();
        assertThat(Files.exists(prefixOnly)).isTrue();
        try (SafeTensorsFile f = SafeTensors.open(target)) {
            assertThat(f.readF32("w")).isEqualTo(new float[] {1, 1, 1, 1});
        }
    }

    @Test
    void temporaryNamesMatchTheirPattern() {
        String name = SafeTensors.temporaryName("a.safetensors");
        assertThat(name).matches("\\.a\\.safetensors\\.tmp-[0-9a-f]{16}");
        assertThat(SafeTensors.isTemporaryOf(name, "a.safetensors")).isTrue();
        assertThat(SafeTensors.isTemporaryOf(name, "b.safetensors")).isFalse();
        assertThat(SafeTensors.isTemporaryOf(".a.safetensors.tmp-0123456789ABCDEF", "a.safetensors")).isFalse();
    }

    private static List<Path> temporaries(Path target) throws IOException {
        String base = target.getFileName().toString();
        try (Stream<Path> files = Files.list(target.toAbsolutePath().getParent())) {
            return files.filter(p -> SafeTensors.isTemporaryOf(p.getFileName().toString(), base)).toList();
        }
    }
}
