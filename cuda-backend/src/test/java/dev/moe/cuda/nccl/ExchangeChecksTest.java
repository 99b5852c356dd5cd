package dev.moe.cuda.nccl;

import static com.google.common.truth.Truth.assertThat;

import dev.moe.cuda.dist.Exchange;
import dev.moe.cuda.dist.LocalGroup;
import java.io.ByteArrayOutputStream;
import java.io.PrintStream;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.ValueSource;

/** NcclCheck's checks run over the in-process exchange: they pass on a correct transport and catch a broken one. */
class ExchangeChecksTest {

    @ParameterizedTest(name = "{0} ranks")
    @ValueSource(ints = {1, 2, 3})
    void theChecksPassOverACorrectExchange(int ranks) throws Exception {
        LocalGroup group = new LocalGroup(ranks, 30_000);
        for (List<ExchangeChecks.Outcome> outcomes : runAll(ranks, r -> group.rank(r))) {
            for (ExchangeChecks.Outcome o : outcomes) {
                assertThat(o.pass()).isTrue();
            }
            if (ranks == 3) {
                assertThat(outcomes.get(1).detail()).contains("every row where the plan says");
            }
        }
    }

    @Test
    void aTransportThatMisplacesOneRowFailsTheDispatchAndLayerChecks() throws Exception {
        LocalGroup group = new LocalGroup(2, 30_000);
        List<List<ExchangeChecks.Outcome>> all = runAll(2, r -> new Corrupting(group.rank(r)));
        ExchangeChecks.Outcome dispatch = all.get(0).get(1), layer = all.get(0).get(2);
        assertThat(dispatch.pass()).isFalse();
        assertThat(dispatch.detail()).contains("wrong rows received");
        assertThat(layer.pass()).isFalse();
        assertThat(layer.detail()).contains("output differs");
    }

    @Test
    void badOptionsExitWithTwoAndSayWhy() {
        PrintStream err = System.err;
        ByteArrayOutputStream buf = new ByteArrayOutputStream();
        System.setErr(new PrintStream(buf, true, StandardCharsets.UTF_8));
        try {
            assertThat(NcclCheck.run(new String[] {"--gpus", "0"})).isEqualTo(2);
            assertThat(NcclCheck.run(new String[] {"--fast"})).isEqualTo(2);
        } finally {
            System.setErr(err);
        }
        assertThat(buf.toString(StandardCharsets.UTF_8)).isEqualTo("moe: --gpus must be at least 1\n"
                + "moe: unknown option --fast (usage: NcclCheck [--gpus N] [--no-bench])\n");
        assertThat(NcclCheck.Options.parse(new String[] {"--gpus", "4", "--no-bench"})).isEqualTo(new NcclCheck.Options(4, false));
    }

    /** Swaps the first two received values of rank 0's first non-empty rows all-to-all. */
    private static final class Corrupting implements Exchange {
        private final Exchange inner;
        private boolean done;

        Corrupting(Exchange inner) {
            this.inner = inner;
        }

        @Override
        public int rank() {
            return inner.rank();
        }

        @Override
        public int size() {
            return inner.size();
        }

        @Override
        public int[] allToAll(int[] send, int block) {
            return inner.allToAll(send, block);
        }

        @Override
        public float[] allToAllV(float[] send, int[] sendCounts, int[] recvCounts, int width) {
            float[] out = inner.allToAllV(send, sendCounts, recvCounts, width);
            if (rank() == 0 && out.length >= 2 * width && !done) {
                done = width != 4; // every exchange of the dispatch check (rows of 4), then the layer's first
                out[1] += 1;
            }
            return out;
        }

        @Override
        public float[] allReduceSum(float[] values) {
            return inner.allReduceSum(values);
        }
    }

    interface Member {
        Exchange of(int rank);
    }

    private static List<List<ExchangeChecks.Outcome>> runAll(int ranks, Member member) throws Exception {
        ExecutorService pool = Executors.newFixedThreadPool(ranks);
        try {
            List<Future<List<ExchangeChecks.Outcome>>> fs = new ArrayList<>();
            for (int r = 0; r < ranks; r++) {
                int rank = r;
                fs.add(pool.submit(() -> ExchangeChecks.all(member.of(rank), 7)));
            }
            List<List<ExchangeChecks.Outcome>> out = new ArrayList<>();
            for (Future<List<ExchangeChecks.Outcome>> f : fs) {
                out.add(f.get());
            }
            return out;
        } finally {
            pool.shutdownNow();
        }
    }
}
