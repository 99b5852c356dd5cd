package dev.moe.cuda.model;

import static com.google.common.truth.Truth.assertThat;

import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.SortedMap;
import org.junit.jupiter.api.Test;

/**
 * The arena's runs by layer, which the data-parallel backward sums layer by layer: each layer's own parameters (with the
 * alignment gaps inside its runs), everything else under -1, every float of the arena in exactly one run.
 */
class DeviceWeightsRunsTest {

    private static String show(List<long[]> runs) {
        List<String> out = new ArrayList<>();
        for (long[] r : runs) {
            out.add(r[0] + ".." + r[1]);
        }
        return String.join(" ", out);
    }

    @Test
    void layersOwnTheirRunsAndTheRestIsTheComplement() {
        // experts placed first (layer 1's, then layer 0's), then the embedding, the layers' other weights, a shared GRU, the head
        List<String> names = List.of("layers.1.moe.w13", "layers.1.moe.w2", "layers.0.moe.w13", "embed.weight", "layers.0.attn.q",
                "layers.0.attn.k", "layers.1.attn.q", "router_gru.w_ih", "layers.10.norm", "head.weight");
        long[] sizes = {8, 6, 8, 10, 3, 4, 4, 5, 2, 7};
        long[] starts = new long[sizes.length];
        long at = 0;
        for (int i = 0; i < sizes.length; i++) {
            starts[i] = (at + 3) / 4 * 4; // 16-byte alignment: gaps after odd sizes
            at = starts[i] + sizes[i];
        }
        long floats = at + 1;
        SortedMap<Integer, List<long[]>> runs = DeviceWeights.runsByLayer(names, starts, sizes, floats);
        assertThat(runs.keySet()).containsExactly(-1, 0, 1, 10).inOrder();
        // layer 1: its two expert tensors as one run (the gap between them included), then its attention
        assertThat(show(runs.get(1))).isEqualTo("0..14 44..48");
        // layer 0: its experts, then q and k together
        assertThat(show(runs.get(0))).isEqualTo("16..24 36..44");
        assertThat(show(runs.get(10))).isEqualTo("56..58");
        // the rest: the gaps between owners, the embedding, the GRU, the head and the arena's tail
        assertThat(show(runs.get(-1))).isEqualTo("14..16 24..36 48..56 58..68");
        // every float exactly once
        int[] covered = new int[(int) floats];
        for (List<long[]> rs : runs.values()) {
            for (long[] r : rs) {
                for (long f = r[0]; f < r[1]; f++) {
                    covered[(int) f]++;
                }
            }
        }
        assertThat(Arrays.stream(covered).allMatch(c -> c == 1)).isTrue();
    }

    @Test
    void namesThatAreNotALayersAreTheRest() {
        assertThat(DeviceWeights.layerOf("layers.12.moe.router.weight")).isEqualTo(12);
        assertThat(DeviceWeights.layerOf("layers.x.norm")).isEqualTo(-1);
        assertThat(DeviceWeights.layerOf("layers")).isEqualTo(-1);
        assertThat(DeviceWeights.layerOf("embed.weight")).isEqualTo(-1);
        SortedMap<Integer, List<long[]>> none = DeviceWeights.runsByLayer(List.of("embed.weight"), new long[] {0}, new long[] {5}, 8);
        assertThat(show(none.get(-1))).isEqualTo("0..8");
    }
}
