package dev.moe.codegen;

import static com.google.common.truth.Truth.assertThat;
import static com.google.common.truth.Truth.assertWithMessage;

import dev.moe.runtime.Parameter;
import dev.moe.runtime.TrainableModel;
import dev.moe.runtime.data.DataStream;
import dev.moe.runtime.train.Trainer;
import java.io.IOException;
import java.io.OutputStream;
import java.io.PrintStream;
import java.nio.file.Path;
import java.util.Map;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * Dense-to-sparse routing (EvoMoE; the activation-gate paper): the router temperature follows its
 * schedule by the optimiser step, and a resumed run sees the same temperatures as an uninterrupted one.
 */
class AnnealedTemperatureTest {
    @TempDir
    Path dir;

    private static String model(String temperature) {
        return """
                model Tiny {
                  vocab 11  context 6  dim 8  heads 2  kv_heads 1
                  moe m {
                    routed 4 x swiglu(hidden: 5)
                    router { top_k 2  normalize true  temperature %s  activation tanh }
                    balance aux(coef: 0.1)
                    balance z_loss(coef: 0.01)
                  }
                  layers 2 { all: attention, m }
                }
                """.formatted(temperature);
    }

    private static double loss(TrainableModel m, long step) {
        m.setStep(step);
        m.beginStep();
        return m.forward(new int[] {1, 2, 3, 4, 5, 6, 7, 8, 9, 10}, new int[] {2, 3, 4, 5, 6, 7, 8, 9, 10, 0}, 2, 5);
    }

    private static TrainableModel initialized(String temperature) {
        TrainableModel m = Generated.instantiate(Generated.model(model(temperature)));
        m.initialize(3);
        return m;
    }

    @Test
    void theTemperatureMovesLinearlyFromStartToEndThenStays() {
        TrainableModel annealed = initialized("anneal(start: 2, end: 0.5, steps: 10)");
        // At step s the annealed router is the fixed-temperature router of 2 - 1.5 · min(s, 10) / 10, bitwise.
        assertThat(loss(annealed, 0)).isEqualTo(loss(initialized("2"), 0));
        assertThat(loss(annealed, 4)).isEqualTo(loss(initialized("1.4"), 0));
        assertThat(loss(annealed, 10)).isEqualTo(loss(initialized("0.5"), 0));
        assertThat(loss(annealed, 1000)).isEqualTo(loss(initialized("0.5"), 0));
        assertThat(loss(annealed, 4)).isNotEqualTo(loss(annealed, 0));
    }

    @Test
    void backwardMatchesFiniteDifferencesInTheMiddleOfTheSchedule() {
        GeneratedModelTest.checkGradients(model("anneal(start: 3, end: 0.5, steps: 8)"), 4);
    }

    @Test
    void endStepMovesTheScheduleOnWithoutTheTrainer() {
        TrainableModel annealed = initialized("anneal(start: 2, end: 0.5, steps: 10)");
        annealed.setStep(3);
        annealed.endStep();
        annealed.beginStep();
        double afterEnd = annealed.forward(new int[] {1, 2, 3, 4, 5, 6, 7, 8, 9, 10}, new int[] {2, 3, 4, 5, 6, 7, 8, 9, 10, 0}, 2, 5);
        assertThat(afterEnd).isEqualTo(loss(initialized("1.4"), 0));
    }

    @Test
    void resumingInTheMiddleOfTheScheduleIsBitwiseTheSame() throws IOException {
        String text = model("anneal(start: 3, end: 0.25, steps: 5)").replace("vocab 11", "vocab 256");
        Path straight = dir.resolve("straight");
        Path resumed = dir.resolve("resumed");
        train(text, straight, false, 0);
        train(text, resumed, false, 3);
        train(text, resumed, true, 0);
        TrainableModel a = Generated.instantiate(Generated.model(text));
        TrainableModel b = Generated.instantiate(Generated.model(text));
        dev.moe.runtime.train.Checkpoint.load(straight.resolve("last.safetensors"), a.parameters(), null);
        dev.moe.runtime.train.Checkpoint.load(resumed.resolve("last.safetensors"), b.parameters(), null);
        for (int i = 0; i < a.parameters().size(); i++) {
            Parameter p = a.parameters().get(i);
            assertWithMessage(p.name()).that(b.parameters().get(i).values()).isEqualTo(p.values());
        }
    }

    private static void train(String text, Path out, boolean resume, long stopAt) throws IOException {
        TrainableModel m = Generated.instantiate(Generated.model(text));
        DataStream data = DataStream.synthetic(Map.of("synthetic", 1.0), 2, 6, 1);
        Trainer.Options o = new Trainer.Options(6, 2, 2, 6, 1e-2, 0.9, 0.95, 1e-8, 0, "constant", 0, 0, 1.0, 1, out, 0, resume, stopAt, Map.of());
        new Trainer(m, data, o, new PrintStream(OutputStream.nullOutputStream())).run();
    }
}
