package dev.moe.cuda;

import static com.google.common.truth.Truth.assertThat;
import static org.junit.jupiter.api.Assertions.assertThrows;

import java.util.ArrayList;
import java.util.List;
import org.junit.jupiter.api.Test;

/** The graph cache's bookkeeping, with a stand-in for the driver: what is captured, replayed, evicted and run one by one. */
class LaunchGraphTest {

    /** Logs what the driver would be asked: captures, the launches issued inside them, graph launches, destroys. */
    static final class FakeCapture implements LaunchGraph.Capture {
        final List<String> log = new ArrayList<>();
        int next;
        boolean capturing;

        @Override
        public void begin() {
            capturing = true;
            log.add("begin");
        }

        @Override
        public Object end() {
            capturing = false;
            log.add("end g" + next);
            return "g" + next++;
        }

        @Override
        public void abort() {
            capturing = false;
            log.add("abort");
        }

        @Override
        public void launch(Object exec) {
            log.add("launch " + exec);
        }

        @Override
        public void destroy(Object exec) {
            log.add("destroy " + exec);
        }
    }

    private static void record(LaunchGraph g, FakeCapture c, long pointer, float scalar) {
        g.begin();
        g.step(() -> c.log.add((c.capturing ? "captured " : "ran ") + "k1 " + pointer), "k1", pointer);
        g.step(() -> c.log.add((c.capturing ? "captured " : "ran ") + "k2 " + scalar), "k2", scalar);
        g.run();
    }

    @Test
    void theSameArgumentsReplayTheGraphWithoutIssuingTheStepsAgain() {
        FakeCapture c = new FakeCapture();
        LaunchGraph g = new LaunchGraph(c);
        record(g, c, 100, 1f);
        record(g, c, 100, 1f);
        assertThat(c.log).containsExactly("begin", "captured k1 100", "captured k2 1.0", "end g0", "launch g0", "launch g0").inOrder();
        assertThat(g.hits()).isEqualTo(1);
        assertThat(g.captures()).isEqualTo(1);
    }

    @Test
    void anyChangedArgumentCapturesAnotherGraph() {
        FakeCapture c = new FakeCapture();
        LaunchGraph g = new LaunchGraph(c);
        record(g, c, 100, 1f);
        record(g, c, 100, 2f); // a scalar changed
        record(g, c, 200, 1f); // a pointer changed
        record(g, c, 100, 2f); // the second arrangement again: replayed
        assertThat(c.log).containsExactly("begin", "captured k1 100", "captured k2 1.0", "end g0", "launch g0",
                "begin", "captured k1 100", "captured k2 2.0", "end g1", "launch g1",
                "begin", "captured k1 200", "captured k2 1.0", "end g2", "launch g2",
                "launch g1").inOrder();
    }

    @Test
    void theLeastRecentlyUsedGraphIsDestroyedBeyondTheCache() {
        FakeCapture c = new FakeCapture();
        LaunchGraph g = new LaunchGraph(c);
        for (int i = 0; i < LaunchGraph.CACHED; i++) {
            record(g, c, i, 0f);
        }
        record(g, c, 0, 0f); // g0 used again: g1 is now the eldest
        c.log.clear();
        record(g, c, 99, 0f);
        assertThat(c.log).containsExactly("begin", "captured k1 99", "captured k2 0.0", "end g" + LaunchGraph.CACHED, "destroy g1",
                "launch g" + LaunchGraph.CACHED).inOrder();
        c.log.clear();
        g.close();
        assertThat(c.log).hasSize(LaunchGraph.CACHED);
    }

    @Test
    void aFailedCaptureRunsTheStepsOneByOneFromThenOn() {
        FakeCapture c = new FakeCapture();
        LaunchGraph g = new LaunchGraph(c);
        boolean[] fail = {true};
        g.begin();
        g.step(() -> {
            if (c.capturing && fail[0]) {
                throw new CudaException("not capturable");
            }
            c.log.add(c.capturing ? "captured" : "ran");
        }, "k");
        g.run();
        assertThat(c.log).containsExactly("begin", "abort", "ran").inOrder();
        assertThat(g.broken()).isTrue();
        c.log.clear();
        record(g, c, 1, 1f);
        assertThat(c.log).containsExactly("ran k1 1", "ran k2 1.0").inOrder();
    }

    @Test
    void argumentsThatChangeEveryTimeStopTheCapturing() {
        FakeCapture c = new FakeCapture();
        LaunchGraph g = new LaunchGraph(c);
        for (int i = 0; i < LaunchGraph.UNREWARDING; i++) {
            record(g, c, i, 0f);
        }
        assertThat(g.broken()).isFalse();
        c.log.clear();
        record(g, c, 1000, 0f);
        assertThat(g.broken()).isTrue();
        assertThat(c.log).containsExactly("destroy g12", "destroy g13", "destroy g14", "destroy g15", "ran k1 1000", "ran k2 0.0").inOrder();
    }

    @Test
    void anAbandonedRecordingIssuesNothing() {
        FakeCapture c = new FakeCapture();
        LaunchGraph g = new LaunchGraph(c);
        g.begin();
        g.step(() -> c.log.add("ran"), "k");
        g.abandon();
        assertThat(g.recording()).isFalse();
        assertThat(c.log).isEmpty();
        assertThrows(IllegalStateException.class, g::run);
        assertThrows(IllegalStateException.class, () -> g.step(() -> {}, "k"));
    }
}
