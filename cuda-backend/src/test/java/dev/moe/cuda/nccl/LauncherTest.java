package dev.moe.cuda.nccl;

import static com.google.common.truth.Truth.assertThat;

import java.io.ByteArrayOutputStream;
import java.io.PrintStream;
import java.nio.charset.StandardCharsets;
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
        assertThat(out).contains("moe: rank 1 exited with status 3; stopping the other ranks");
        assertThat(out).doesNotContain("[rank 0] rank 0 of 2");
        assertThat((System.nanoTime() - t0) / 1e9).isLessThan(60.0);
    }
}
