package dev.moe.cuda.dist;

import static com.google.common.truth.Truth.assertThat;
import static org.junit.jupiter.api.Assertions.assertThrows;

import java.util.List;
import org.junit.jupiter.api.Test;

class ExpertShardsTest {

    private static float[] global(int experts, int perExpert) {
        float[] g = new float[experts * perExpert];
        for (int i = 0; i < g.length; i++) {
            g[i] = i;
        }
        return g;
    }

    @Test
    void aCheckpointSavedOnThreeRanksLoadsOnTwo() throws Exception {
        int experts = 7, per = 5;
        float[] original = global(experts, per);
        ExpertPlacement three = ExpertPlacement.balanced(new long[] {9, 1, 8, 2, 7, 3, 5}, 3);
        LocalGroup group = new LocalGroup(3, 10_000);
        List<Object> gathered = DispatchPlanTest.runRanks(3, r -> ExpertShards.gatherToRankZero(group.rank(r),
                ExpertShards.local(original, per, three, r), per, three));
        float[] saved = (float[]) gathered.get(0);
        assertThat(saved).usingExactEquality().containsExactly(original).inOrder();
        assertThat((float[]) gathered.get(1)).isEmpty();

        ExpertPlacement two = ExpertPlacement.contiguous(experts, 2);
        float[][] loaded = {ExpertShards.local(saved, per, two, 0), ExpertShards.local(saved, per, two, 1)};
        assertThat(loaded[1][0]).isEqualTo(4f * per); // rank 1's first expert is expert 4
        assertThat(ExpertShards.assemble(loaded, per, two)).usingExactEquality().containsExactly(original).inOrder();
    }

    @Test
    void wrongSizesAreNamed() {
        ExpertPlacement p = ExpertPlacement.contiguous(4, 2);
        assertThat(assertThrows(IllegalArgumentException.class, () -> ExpertShards.local(new float[7], 2, p, 0))).hasMessageThat()
                .isEqualTo("global expert tensor has 7 values, expected 8");
        assertThat(assertThrows(IllegalArgumentException.class, () -> ExpertShards.assemble(new float[][] {new float[4], new float[3]}, 2, p)))
                .hasMessageThat().isEqualTo("rank 1's shard has 3 values, expected 4");
    }
}
