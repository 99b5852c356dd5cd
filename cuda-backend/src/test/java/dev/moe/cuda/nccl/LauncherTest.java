package dev.moe.cuda.nccl;

import static com.google.common.truth.Truth.assertThat;

import java.io.ByteArrayOutputStream;
import java.io.PrintStream;
import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.util.List;
import org.junit.jupiter.api.Test;

/** The launcher with real child JVMs (no GPU): environment, rendezvous, output, failure handling. */
class LauncherTest {

    @Test
    void ranksRendezvousAndTheirOutputIsPrefixed() {
        ByteArrayOutputStream buf = new ByteArrayOutputStream();
        int status = Launcher.run(Launcher.javaCommand(LauncherProbe.class.getName(), List.of()), 2,
                new PrintStream(buf, true, StandardCharsets.UTF_8));
        String out = buf.toString(StandardCharsets.UTF_8);
        assertThat(status).isEqualTo(0);
        assertThat(out).contains("[rank 0] rank 0 of 2 on GPU 0 got id 2a000000");
        assertThat(out).contains("[rank 1] rank 1 of 2 on GPU 1 got id 2a000000");
    }

    @Test
    void aFailingRankStopsTheOthersAndItsStatusIsTheLaunchers() {
        ByteArrayOutputStream buf = new ByteArrayOutputStream();
        long t0 = System.nanoTime();
        // Rank 0 would wait 300 s in the rendezvous for rank 1; the launcher must stop it instead.
        int status = Launcher.run(Launcher.javaCommand(LauncherProbe.class.getName(), List.of("fail-rank-1")), 2,
                new PrintStream(buf, true, StandardCharsets.UTF_8));
        String out = buf.toString(StandardCharsets.UTF_8);
        assertThat(status).isEqualTo(3);
        assertThat(out).contains("[rank 1] rank 1 fails on purpose");
        assertThat(out).contains("moe: rank 1 exited with status 3 (its last line: rank 1 fails on purpose); stopping the other ranks");
        assertThat(out).doesNotContain("[rank 0] rank 0 of 2");
        assertThat((System.nanoTime() - t0) / 1e9).isLessThan(60.0);
    }

    private static String launch(List<String> command, int ranks, Duration joinTimeout, int[] status) {
        ByteArrayOutputStream buf = new ByteArrayOutputStream();
        status[0] = Launcher.run(command, ranks, new PrintStream(buf, true, StandardCharsets.UTF_8), joinTimeout);
        return buf.toString(StandardCharsets.UTF_8);
    }

    /** A fake worker: a shell script that sees the launcher's environment. */
    private static List<String> sh(String script) {
        return List.of("/bin/sh", "-c", script);
    }

    @Test
    void fakeWorkersThatJoinAndSucceedExitZero() {
        int[] status = new int[1];
        String out = launch(sh("touch \"$MOE_JOINED_DIR/rank-$MOE_RANK\"; echo \"rank $MOE_RANK of $MOE_WORLD_SIZE on GPU $MOE_LOCAL_RANK at $MOE_RENDEZVOUS\""),
                3, Duration.ofSeconds(30), status);
        assertThat(status[0]).isEqualTo(0);
        for (int r = 0; r < 3; r++) {
            assertThat(out).containsMatch("\\[rank " + r + "] rank " + r + " of 3 on GPU " + r + " at 127\\.0\\.0\\.1:\\d+");
        }
    }

    @Test
    void aFakeWorkerExitingNonZeroStopsTheOthersWithItsRankAndReason() {
        int[] status = new int[1];
        long t0 = System.nanoTime();
        String out = launch(sh("touch \"$MOE_JOINED_DIR/rank-$MOE_RANK\"; if [ \"$MOE_RANK\" = 2 ]; then sleep 0.3; echo 'out of memory'; exit 7; fi;"
                + " exec sleep 120"), 3, Duration.ofSeconds(30), status);
        assertThat(status[0]).isEqualTo(7);
        assertThat(out).contains("[rank 2] out of memory");
        assertThat(out).contains("moe: rank 2 exited with status 7 (its last line: out of memory); stopping the other ranks");
        assertThat((System.nanoTime() - t0) / 1e9).isLessThan(30.0);
    }

    @Test
    void aFakeWorkerThatNeverJoinsTimesOutAndEveryRankStops() {
        int[] status = new int[1];
        long t0 = System.nanoTime();
        String out = launch(sh("if [ \"$MOE_RANK\" != 1 ]; then touch \"$MOE_JOINED_DIR/rank-$MOE_RANK\"; fi; exec sleep 120"), 3, Duration.ofSeconds(1),
                status);
        assertThat(status[0]).isEqualTo(1);
        assertThat(out).contains("moe: rank 1 did not join within 1 s (MOE_JOIN_TIMEOUT_S waits longer); stopping every rank");
        assertThat((System.nanoTime() - t0) / 1e9).isLessThan(30.0);
    }
}
