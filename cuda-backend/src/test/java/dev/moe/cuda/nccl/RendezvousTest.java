package dev.moe.cuda.nccl;

import static com.google.common.truth.Truth.assertThat;
import static org.junit.jupiter.api.Assertions.assertThrows;

import java.io.IOException;
import java.net.ServerSocket;
import java.time.Duration;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.Random;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.Test;

/** The TCP rendezvous with threads as ranks, over loopback. */
class RendezvousTest {
    private final ExecutorService pool = Executors.newCachedThreadPool();

    @AfterEach
    void stop() {
        pool.shutdownNow();
    }

    private static UniqueId randomId(long seed) {
        byte[] b = new byte[UniqueId.BYTES];
        new Random(seed).nextBytes(b);
        return new UniqueId(b);
    }

    @Test
    void everyRankGetsRankZerosIdEvenWhenTheyStartFirst() throws Exception {
        UniqueId id = randomId(1);
        int port = freePort();
        List<Future<UniqueId>> peers = new ArrayList<>();
        for (int r = 1; r < 4; r++) {
            int rank = r;
            peers.add(pool.submit(() -> Rendezvous.fetch("127.0.0.1", port, rank, 4, Duration.ofSeconds(20))));
        }
        Thread.sleep(300); // the peers are retrying by now
        WorldConfig zero = new WorldConfig(0, 4, 0, "127.0.0.1", port, Duration.ofSeconds(20), Duration.ofSeconds(60));
        assertThat(Rendezvous.exchange(zero, () -> id)).isEqualTo(id);
        for (Future<UniqueId> f : peers) {
            assertThat(f.get()).isEqualTo(id);
        }
    }

    @Test
    void aWorldOfOneNeedsNoNetwork() {
        UniqueId id = randomId(2);
        assertThat(Rendezvous.exchange(WorldConfig.single(0), () -> id)).isEqualTo(id);
    }

    @Test
    void rankZeroNamesTheRanksThatDidNotCome() throws Exception {
        try (Rendezvous.Server server = Rendezvous.Server.open(0)) {
            Future<UniqueId> one = pool.submit(() -> Rendezvous.fetch("127.0.0.1", server.port(), 1, 4, Duration.ofSeconds(20)));
            RendezvousException e = assertThrows(RendezvousException.class, () -> server.distribute(randomId(3), 4, Duration.ofSeconds(1)));
            assertThat(e).hasMessageThat().isEqualTo("rank 0: ranks 2, 3 of 4 did not connect to port " + server.port()
                    + " within 1 s: start every rank with the same MOE_WORLD_SIZE and MOE_RENDEZVOUS (MOE_RENDEZVOUS_TIMEOUT_S waits longer)");
            assertThat(one.get()).isEqualTo(randomId(3)); // the one that came got the id
        }
    }

    @Test
    void aPeerWithoutRankZeroGivesUpWithAMessage() throws Exception {
        int port = freePort();
        RendezvousException e = assertThrows(RendezvousException.class,
                () -> Rendezvous.fetch("127.0.0.1", port, 2, 3, Duration.ofSeconds(1)));
        assertThat(e).hasMessageThat().startsWith("rank 2: could not get the NCCL id from rank 0 at 127.0.0.1:" + port + " within 1 s (");
        assertThat(e).hasMessageThat().endsWith("): start rank 0, and give every rank the same MOE_RENDEZVOUS");
    }

    @Test
    void mismatchedWorldSizesAreRefusedOnBothSides() throws Exception {
        try (Rendezvous.Server server = Rendezvous.Server.open(0)) {
            Future<?> peer = pool.submit(() -> Rendezvous.fetch("127.0.0.1", server.port(), 1, 3, Duration.ofSeconds(20)));
            RendezvousException e = assertThrows(RendezvousException.class, () -> server.distribute(randomId(4), 2, Duration.ofSeconds(20)));
            assertThat(e).hasMessageThat().isEqualTo("rank 0: rank 0 has MOE_WORLD_SIZE=2 but rank 1 has 3");
            ExecutionException pe = assertThrows(ExecutionException.class, peer::get);
            assertThat(pe.getCause()).hasMessageThat().isEqualTo("rank 1: rank 0 refused: rank 0 has MOE_WORLD_SIZE=2 but rank 1 has 3");
        }
    }

    @Test
    void twoProcessesWithTheSameRankAreRefused() throws Exception {
        try (Rendezvous.Server server = Rendezvous.Server.open(0)) {
            UniqueId id = randomId(5);
            Future<UniqueId> first = pool.submit(() -> Rendezvous.fetch("127.0.0.1", server.port(), 1, 3, Duration.ofSeconds(20)));
            Thread.sleep(200);
            Future<UniqueId> second = pool.submit(() -> {
                first.get();
                return Rendezvous.fetch("127.0.0.1", server.port(), 1, 3, Duration.ofSeconds(20));
            });
            RendezvousException e = assertThrows(RendezvousException.class, () -> server.distribute(id, 3, Duration.ofSeconds(20)));
            assertThat(e).hasMessageThat().isEqualTo("rank 0: rank 1 connected twice: two processes have MOE_RANK=1");
            assertThat(first.get()).isEqualTo(id);
            assertThat(assertThrows(ExecutionException.class, second::get).getCause()).hasMessageThat().contains("connected twice");
        }
    }

    @Test
    void settingsComeFromTheEnvironment() {
        Map<String, String> env = new HashMap<>(Map.of("MOE_RANK", "2", "MOE_WORLD_SIZE", "4", "MOE_RENDEZVOUS", "10.0.0.7:29500"));
        WorldConfig w = WorldConfig.fromEnvironment(env).orElseThrow();
        assertThat(w).isEqualTo(new WorldConfig(2, 4, 2, "10.0.0.7", 29500, Duration.ofSeconds(300), Duration.ofSeconds(600)));
        env.putAll(Map.of("MOE_LOCAL_RANK", "0", "MOE_RENDEZVOUS_TIMEOUT_S", "30", "MOE_NCCL_TIMEOUT_S", "90", "MOE_RENDEZVOUS", "[::1]:7"));
        assertThat(WorldConfig.fromEnvironment(env).orElseThrow())
                .isEqualTo(new WorldConfig(2, 4, 0, "::1", 7, Duration.ofSeconds(30), Duration.ofSeconds(90)));
        // torchrun's variables work too
        assertThat(WorldConfig.fromEnvironment(Map.of("RANK", "1", "WORLD_SIZE", "2", "LOCAL_RANK", "1", "MASTER_ADDR", "h", "MASTER_PORT", "9"))
                .orElseThrow().port()).isEqualTo(9);
        assertThat(WorldConfig.fromEnvironment(Map.of())).isEmpty();
    }

    @Test
    void badSettingsAreExplained() {
        assertThat(error(Map.of("MOE_RANK", "0"))).isEqualTo(
                "MOE_RANK is set but MOE_WORLD_SIZE is not: set both (and MOE_RENDEZVOUS) on every rank, or neither for one GPU");
        assertThat(error(Map.of("MOE_RANK", "4", "MOE_WORLD_SIZE", "4", "MOE_RENDEZVOUS", "h:1"))).isEqualTo(
                "MOE_RANK=4 is out of range: it must be 0..3 (ranks count from 0 to the world size - 1)");
        assertThat(error(Map.of("MOE_RANK", "x", "MOE_WORLD_SIZE", "2"))).isEqualTo("MOE_RANK=x is not a whole number");
        assertThat(error(Map.of("MOE_RANK", "0", "MOE_WORLD_SIZE", "0"))).isEqualTo("MOE_WORLD_SIZE=0 is out of range: it must be at least 1");
        assertThat(error(Map.of("MOE_RANK", "0", "MOE_WORLD_SIZE", "2"))).isEqualTo(
                "a world of 2 ranks needs MOE_RENDEZVOUS=host:port, where rank 0 listens and the others connect");
        assertThat(error(Map.of("MOE_RANK", "0", "MOE_WORLD_SIZE", "2", "MOE_RENDEZVOUS", "host"))).isEqualTo(
                "MOE_RENDEZVOUS=host is not host:port (for example 10.0.0.1:29500)");
        assertThat(error(Map.of("MOE_RANK", "0", "MOE_WORLD_SIZE", "2", "MOE_RENDEZVOUS", "h:70000"))).isEqualTo(
                "MOE_RENDEZVOUS=h:70000: the port must be a number in 1..65535");
    }

    @Test
    void aBusyPortIsExplained() throws IOException {
        try (ServerSocket taken = new ServerSocket(0)) {
            RendezvousException e = assertThrows(RendezvousException.class, () -> Rendezvous.Server.open(taken.getLocalPort()));
            assertThat(e).hasMessageThat().contains("cannot listen on port " + taken.getLocalPort());
        }
    }

    private static String error(Map<String, String> env) {
        return assertThrows(RendezvousException.class, () -> WorldConfig.fromEnvironment(env)).getMessage();
    }

    static int freePort() throws IOException {
        try (ServerSocket s = new ServerSocket(0)) {
            return s.getLocalPort();
        }
    }
}
