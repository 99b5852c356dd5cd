package dev.moe.runtime.upcycle;

import static com.google.common.truth.Truth.assertThat;
import static org.junit.jupiter.api.Assertions.assertThrows;

import dev.moe.runtime.Parameter;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import org.junit.jupiter.api.Test;

/** Choosing the experts to keep, and moving their weights and router rows into the smaller model. */
class PruneTest {
    @Test
    void keepsTheMostUsedInTheirOrderWithTiesToTheLowerIndex() {
        assertThat(Upcycle.mostUsed(new long[] {5, 40, 7, 40, 1}, 3)).asList().containsExactly(1, 2, 3).inOrder();
        assertThat(Upcycle.mostUsed(new long[] {3, 3, 3}, 2)).asList().containsExactly(0, 1).inOrder();
        assertThrows(IllegalArgumentException.class, () -> Upcycle.mostUsed(new long[] {1, 2}, 3));
    }

    @Test
    void movesKeptExpertsRouterRowsAndEverythingElse() {
        // source: 4 experts of [2, 3] in layer 0, a router [4, 3], a bias buffer [4], an embedding
        Map<String, int[]> shapes = new LinkedHashMap<>();
        Map<String, float[]> values = new LinkedHashMap<>();
        for (int e = 0; e < 4; e++) {
            shapes.put("layers.0.moe.experts." + e + ".up", new int[] {2, 3});
            values.put("layers.0.moe.experts." + e + ".up", filled(6, 10 * e));
        }
        shapes.put("layers.0.moe.router.weight", new int[] {4, 3});
        values.put("layers.0.moe.router.weight", filled(12, 100));
        shapes.put("layers.0.moe.expert_bias", new int[] {4});
        values.put("layers.0.moe.expert_bias", filled(4, 200));
        shapes.put("embed.weight", new int[] {5, 3});
        values.put("embed.weight", filled(15, 300));
        Weights source = new Weights("test", shapes, values);

        List<Parameter> target = List.of(Parameter.of("layers.0.moe.experts.0.up", 2, 3), Parameter.of("layers.0.moe.experts.1.up", 2, 3),
                Parameter.of("layers.0.moe.router.weight", 2, 3), Parameter.buffer("layers.0.moe.expert_bias", 2), Parameter.of("embed.weight", 5, 3));
        Upcycle.prune(source, target, Map.of(0, new int[] {1, 3}));
        assertThat(target.get(0).values()).isEqualTo(filled(6, 10));
        assertThat(target.get(1).values()).isEqualTo(filled(6, 30));
        assertThat(target.get(2).values()).isEqualTo(new float[] {103, 104, 105, 109, 110, 111});
        assertThat(target.get(3).values()).isEqualTo(new float[] {201, 203});
        assertThat(target.get(4).values()).isEqualTo(filled(15, 300));

        List<Parameter> wider = List.of(Parameter.of("embed.weight", 5, 4));
        var e = assertThrows(IllegalArgumentException.class, () -> Upcycle.prune(source, wider, Map.of(0, new int[] {1, 3})));
        assertThat(e.getMessage()).contains("in its routed expert counts only");
    }

    private static float[] filled(int n, float start) {
        float[] v = new float[n];
        for (int i = 0; i < n; i++) {
            v[i] = start + i;
        }
        return v;
    }
}
