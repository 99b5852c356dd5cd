package dev.moe.codegen;

import static com.google.common.truth.Truth.assertThat;
import static com.google.common.truth.Truth.assertWithMessage;

import dev.moe.runtime.Init;
import dev.moe.runtime.Parameter;
import dev.moe.runtime.TrainableModel;
import dev.moe.runtime.data.Batch;
import dev.moe.runtime.data.DataStream;
import dev.moe.runtime.train.Trainer;
import java.io.IOException;
import java.io.OutputStream;
import java.io.PrintStream;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.Map;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * Training on padded documents ({@code documents pad}): a padded batch computes what the unpadded
 * shorter sequences compute (loss, gradients, expert loads), and the trainer masks the padding.
 */
class PaddedDocumentsTest {
    private static final int SEQ = 24;

    /** Token-additive losses only (cross-entropy and z-loss, dropless): a batch is the token-weighted sum of its rows. */
    private static final String ADDITIVE = """
            model Tiny {
              vocab 256  context 24  dim 8  heads 2  kv_heads 1
              moe m {
                shared 1 x swiglu(hidden: 6)
                routed 4 x swiglu(hidden: 5)
                router { top_k 2  normalize true }
                balance z_loss(coef: 0.01)
              }
              layers 2 { first 1: attention, swiglu(hidden: 12)  rest: attention, m }
            }
            """;

    /** The same with attention experts (JetMoE) in the mixer slot. */
    private static final String ADDITIVE_ATTENTION = """
            model Tiny {
              vocab 256  context 24  dim 8  heads 2  kv_heads 1
              moe moa {
                routed 3 x attention(heads: 2, head_dim: 2, shared_kv: true)
                router { order topk_then_softmax  top_k 2 }
                balance z_loss(coef: 0.01)
              }
              moe m {
                routed 4 x swiglu(hidden: 5)
                router { top_k 2 }
              }
              layers 2 { all: moa, m }
            }
            """;

    /** Losses and routing that couple the tokens of a batch: micro-batch aux loss, capacity drops, expert choice. */
    private static final String COUPLED = """
            model Tiny {
              vocab 256  context 24  dim 8  heads 2  kv_heads 1
              moe m {
                routed 4 x swiglu(hidden: 5)
                router { top_k 2  normalize true  capacity factor(1.0, drop: position) }
                balance aux(coef: 0.1)
                balance z_loss(coef: 0.01)
              }
              moe e {
                routed 4 x swiglu(hidden: 5)
                router { mode expert_choice  capacity factor(1.0) }
                balance z_loss(coef: 0.01)
              }
              layers 2 { first 1: attention, m  rest: attention, e }
            }
            """;

    @TempDir
    Path dir;

    private static TrainableModel model(String text) {
        TrainableModel m = Generated.instantiate(Generated.model(text));
        m.initialize(3);
        for (Parameter p : m.parameters()) {
            if (!p.isBuffer() && p.shape().length > 1) {
                Init.normal(p, 7, 0.3); // larger weights: routing depends visibly on every token
            }
        }
        return m;
    }

    private static DataStream padded(int batch) {
        return DataStream.builder().mixture(Map.of("arithmetic", 0.5, "sort", 0.5)).batch(batch).context(SEQ).seed(5).padDocuments(true).build();
    }

    private static int[] slice(int[] a, int from, int n) {
        return Arrays.copyOfRange(a, from, from + n);
    }

    private static List<float[]> grads(TrainableModel m) {
        List<float[]> out = new ArrayList<>();
        for (Parameter p : m.parameters()) {
            out.add(Arrays.copyOfRange(p.grad(), p.offset(), p.offset() + p.size()));
        }
        return out;
    }

    private static void assertClose(TrainableModel m, List<float[]> actual, List<float[]> expected) {
        for (int i = 0; i < actual.size(); i++) {
            float[] a = actual.get(i);
            float[] e = expected.get(i);
            double scale = 1e-6;
            for (float v : e) {
                scale = Math.max(scale, Math.abs(v));
            }
            for (int j = 0; j < a.length; j++) {
                assertWithMessage("%s[%s]", m.parameters().get(i).name(), j).that((double) a[j]).isWithin(1e-5 * scale).of(e[j]);
            }
        }
    }

    private static int[][] sum(int[][] a, int[][] b) {
        if (a == null) {
            return b;
        }
        for (int i = 0; i < a.length; i++) {
            for (int j = 0; j < a[i].length; j++) {
                a[i][j] += b[i][j];
            }
        }
        return a;
    }

    @org.junit.jupiter.params.ParameterizedTest
    @org.junit.jupiter.params.provider.ValueSource(booleans = {false, true})
    void aPaddedBatchIsTheTokenWeightedSumOfItsUnpaddedDocuments(boolean attentionExperts) {
        TrainableModel m = model(attentionExperts ? ADDITIVE_ATTENTION : ADDITIVE);
        Batch b = padded(6).batch(2);
        assertThat(b.padded()).isTrue();
        int[] inputs = b.inputs();
        int[] targets = b.targets();

        m.parameters().forEach(Parameter::zeroGrad);
        m.setMask(b.keep(SEQ));
        m.beginStep();
        double loss = m.forward(inputs, targets, b.size(), SEQ);
        m.backward(1f);
        int[][] loads = m.expertLoads();
        List<float[]> grads = grads(m);

        // each document alone, unpadded, its gradient weighted by its share of the kept tokens
        m.setMask(null);
        m.parameters().forEach(Parameter::zeroGrad);
        long kept = b.keptTokens(SEQ);
        double expected = 0;
        int[][] rowLoads = null;
        for (int r = 0; r < b.size(); r++) {
            int n = b.length(r) - 1;
            m.beginStep();
            double rowLoss = m.forward(slice(inputs, r * SEQ, n), slice(targets, r * SEQ, n), 1, n);
            m.backward((float) n / kept);
            expected += rowLoss * n / kept;
            rowLoads = sum(rowLoads, m.expertLoads());
        }
        assertThat(loss).isWithin(1e-5 * Math.abs(expected)).of(expected);
        assertClose(m, grads, grads(m));
        assertThat(loads).isEqualTo(rowLoads);
        // the loads count the kept tokens only: k = 2 experts each
        assertThat(Arrays.stream(loads[0]).sum()).isEqualTo(2 * kept);
    }

    @Test
    void equalLengthDocumentsPaddedEqualTheShorterBatchUnderCoupledLossesAndRouting() {
        TrainableModel m = model(COUPLED);
        int batch = 3;
        int n = 13;
        var rng = new Init.SplitMix(4);
        int[] tokens = new int[batch * (SEQ + 1)];
        int[] shortInputs = new int[batch * n];
        int[] shortTargets = new int[batch * n];
        for (int r = 0; r < batch; r++) {
            for (int t = 0; t <= n; t++) {
                tokens[r * (SEQ + 1) + t] = (int) Long.remainderUnsigned(rng.nextLong(), 256);
            }
            for (int t = 0; t < n; t++) {
                shortInputs[r * n + t] = tokens[r * (SEQ + 1) + t];
                shortTargets[r * n + t] = tokens[r * (SEQ + 1) + t + 1];
            }
        }
        int[] lengths = new int[batch];
        Arrays.fill(lengths, n + 1);
        Batch b = new Batch(0, false, batch, SEQ, tokens, new int[batch], new int[batch], lengths);

        m.parameters().forEach(Parameter::zeroGrad);
        m.setMask(b.keep(SEQ));
        m.beginStep();
        double loss = m.forward(b.inputs(), b.targets(), batch, SEQ);
        m.backward(1f);
        int[][] loads = m.expertLoads();
        List<float[]> grads = grads(m);

        m.setMask(null);
        m.parameters().forEach(Parameter::zeroGrad);
        m.beginStep();
        double expected = m.forward(shortInputs, shortTargets, batch, n);
        m.backward(1f);
        assertThat(loss).isWithin(1e-5 * Math.abs(expected)).of(expected);
        assertClose(m, grads, grads(m));
        assertThat(loads).isEqualTo(m.expertLoads());
    }

    @Test
    void theTrainerMasksThePaddingOfEachMicroBatch() throws IOException {
        TrainableModel m = Generated.instantiate(Generated.model(ADDITIVE));
        DataStream data = padded(4);
        var o = new Trainer.Options(2, 4, 2, SEQ, 1e-2, 0.9, 0.95, 1e-8, 0, "constant", 0, 0, 1.0, 1, dir, 0, false, 0, Map.of());
        Trainer.Result result = new Trainer(m, data, o, new PrintStream(OutputStream.nullOutputStream())).run();

        // the first step's loss is the mean of its two micro-batches' masked losses at the initial weights
        TrainableModel init = Generated.instantiate(Generated.model(ADDITIVE));
        init.initialize(1);
        double first = 0;
        for (int j = 0; j < 2; j++) {
            Batch b = data.batch(j);
            init.setMask(b.keep(SEQ));
            init.setStep(0);
            init.beginStep();
            first += init.forward(b.inputs(), b.targets(), b.size(), SEQ) / 2;
        }
        assertThat(result.losses().getFirst()).isEqualTo(first);

        // metrics: each step's expert loads are k = 2 per kept token of its micro-batches
        List<String> lines = Files.readAllLines(dir.resolve("metrics.jsonl"));
        for (int step = 0; step < 2; step++) {
            long kept = data.batch(2L * step).keptTokens(SEQ) + data.batch(2L * step + 1).keptTokens(SEQ);
            assertThat(kept).isLessThan(2L * 4 * SEQ);
            String loads = lines.get(step).replaceAll(".*\"expert_loads\":\\[\\[([0-9,]*)\\]\\].*", "$1");
            assertWithMessage(lines.get(step)).that(Arrays.stream(loads.split(",")).mapToLong(Long::parseLong).sum()).isEqualTo(2 * kept);
        }
        // after training the model holds no mask: a forward of another shape runs
        assertThat(m.lastLogits(new int[] {1, 2, 3}, 1, 3)).hasLength(256);
    }
}
