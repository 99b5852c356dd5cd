package dev.moe.cli;

import static com.google.common.truth.Truth.assertThat;

import dev.moe.dsl.SourceFile;
import dev.moe.runtime.TrainableModel;
import dev.moe.runtime.train.Session;
import dev.moe.runtime.train.Trainer;
import java.io.PrintStream;
import java.io.PrintWriter;
import java.io.StringWriter;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import java.util.Map;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/** The library facade over a generated model, checked against the CLI's training loop. */
class SessionTest {
    @TempDir
    Path dir;

    static TrainableModel tiny() throws Recipes.UserError {
        return Recipes.load(new SourceFile("tiny.moe", TrainCommandTest.RECIPE), null, 1, new PrintWriter(new StringWriter())).instance();
    }

    static Session.Settings settings() {
        return Session.Settings.defaults().batch(4).microBatches(2).seq(8).lr(0.01).weightDecay(0.01).schedule("cosine", 2, 0.001, 6).seed(3)
                .data(Map.of("arithmetic", 1.0));
    }

    @Test
    void stepsAreTheTrainersStepsBitForBit() throws Exception {
        Session s = Session.of(tiny(), settings());
        List<Double> losses = s.train(6);

        Session.Settings o = settings();
        Trainer.Options options = new Trainer.Options(6, o.batch(), o.microBatches(), o.seq(), o.lr(), o.beta1(), o.beta2(), o.eps(),
                o.weightDecay(), o.schedule(), o.warmup(), o.minLr(), o.gradClip(), o.seed(), dir.resolve("run"), 0, false, 0, Map.of());
        var data = dev.moe.runtime.data.DataStream.synthetic(o.data(), o.batch(), o.seq(), o.seed());
        Trainer.Result r = new Trainer(tiny(), data, options, new PrintStream(java.io.OutputStream.nullOutputStream())).run();
        assertThat(losses).isEqualTo(r.losses());
        assertThat(s.step()).isEqualTo(6);
        assertThat(losses.getLast()).isLessThan(losses.getFirst());
    }

    /** {@code documents pad}: the session trains on the padded, masked batches of {@code moe train}'s loop, bit for bit. */
    @Test
    void paddedDocumentsAreTheTrainersPaddedStepsBitForBit() throws Exception {
        Session.Settings o = settings().padDocuments(true);
        Session s = Session.of(tiny(), o);
        List<Double> losses = s.train(4);

        Trainer.Options options = new Trainer.Options(4, o.batch(), o.microBatches(), o.seq(), o.lr(), o.beta1(), o.beta2(), o.eps(),
                o.weightDecay(), o.schedule(), o.warmup(), o.minLr(), o.gradClip(), o.seed(), dir.resolve("padded"), 0, false, 0, Map.of());
        var data = dev.moe.runtime.data.DataStream.builder().mixture(o.data()).batch(o.batch()).context(o.seq()).seed(o.seed()).padDocuments(true).build();
        // an arithmetic problem is shorter than 8 tokens: the batches are padded
        assertThat(data.batch(0).keep(o.seq())).isNotNull();
        Trainer.Result r = new Trainer(tiny(), data, options, new PrintStream(java.io.OutputStream.nullOutputStream())).run();
        assertThat(losses).isEqualTo(r.losses());
        // ... and not the running text of the default
        assertThat(losses).isNotEqualTo(Session.of(tiny(), settings()).train(4));
        assertThat(s.settings().padDocuments()).isTrue();
        assertThat(s.settings().lr(0.02).padDocuments()).isTrue();
    }

    @Test
    void savedAndLoadedTrainingContinuesAsIfUninterrupted() throws Exception {
        Session whole = Session.of(tiny(), settings());
        List<Double> all = whole.train(5);

        Session first = Session.of(tiny(), settings());
        first.train(3);
        Path ckpt = dir.resolve("tiny.safetensors");
        first.save(ckpt);
        Session second = Session.of(tiny(), settings());
        second.train(1); // weights and optimiser state that load must replace
        second.load(ckpt);
        assertThat(second.step()).isEqualTo(3);
        assertThat(second.train(2)).isEqualTo(all.subList(3, 5));
        assertThat(second.generate("12+3=", 8)).isEqualTo(whole.generate("12+3=", 8));
    }

    @Test
    void evaluatesGeneratesAndReportsExpertLoads() throws Exception {
        Session s = Session.of(tiny(), settings());
        assertThat(s.expertLoads()).isEmpty();
        double before = s.evaluate(2);
        assertThat(before).isWithin(0.5).of(Math.log(256));
        s.train(4);
        int[][] loads = s.expertLoads();
        assertThat(s.moeLayers()).asList().containsExactly(1);
        assertThat(loads).hasLength(1);
        // top-2 of 4 routed experts: each token of the 2 x 4 x 8 of the step takes 2 slots
        assertThat(java.util.Arrays.stream(loads[0]).sum()).isEqualTo(2 * 2 * 4 * 8);
        assertThat(s.evaluate(2)).isLessThan(before);
        String text = s.generate("ab", 5);
        assertThat(text.getBytes(java.nio.charset.StandardCharsets.UTF_8).length).isAtMost(5 * 4);
        assertThat(s.generate("ab", 5)).isEqualTo(text);

        var e = org.junit.jupiter.api.Assertions.assertThrows(IllegalArgumentException.class, () -> s.evaluate(0));
        assertThat(e).hasMessageThat().isEqualTo("batches must be at least 1");
        org.junit.jupiter.api.Assertions.assertThrows(IllegalArgumentException.class, () -> s.generate("ab", -1));
        org.junit.jupiter.api.Assertions.assertThrows(IllegalArgumentException.class, () -> s.generate("", 3));
        org.junit.jupiter.api.Assertions.assertThrows(IllegalArgumentException.class, () -> s.train(-1));
    }

    @Test
    void aCheckpointOfAnotherModelIsRefused() throws Exception {
        Session s = Session.of(tiny(), settings());
        Path ckpt = dir.resolve("other.safetensors");
        dev.moe.runtime.train.Checkpoint.save(ckpt, List.of(), null, Map.of("model", "Other", "step", "1"));
        var e = org.junit.jupiter.api.Assertions.assertThrows(java.io.IOException.class, () -> s.load(ckpt));
        assertThat(e).hasMessageThat().contains("holds model `Other`, not `Tiny`");
        assertThat(Files.exists(ckpt)).isTrue();
    }
}
