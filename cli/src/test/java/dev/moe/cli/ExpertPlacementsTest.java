package dev.moe.cli;

import static com.google.common.truth.Truth.assertThat;
import static org.junit.jupiter.api.Assertions.assertThrows;

import dev.moe.compiler.MoeCompiler;
import dev.moe.compiler.ir.CompiledFile;
import dev.moe.cuda.dist.ExpertPlacement;
import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import java.util.Map;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/** {@link ExpertPlacements#forWorld}: the recipe's placement as the trainer's {@link ExpertPlacement}s, and {@code moe info}/{@code check}. */
class ExpertPlacementsTest {
    static final String RECIPE = """
            moe wide {
              routed 8 x swiglu(hidden: 64)
              router { top_k 2 }
            }
            moe narrow {
              routed 4 x swiglu(hidden: 64)
              router { top_k 1 }
            }
            model Placed {
              vocab 256
              context 64
              dim 64
              heads 4
              layers 4 {
                first 1: attention, swiglu(hidden: 128)
                1: attention, wide
                2: attention, narrow
                3: attention, wide
              }
            }
            train Placed {
              steps 10
            %s
            }
            """;

    @TempDir
    Path dir;

    private Path write(String trainLines) throws IOException {
        Path file = dir.resolve("placed.moe");
        Files.writeString(file, RECIPE.formatted(trainLines));
        return file;
    }

    private Map<Integer, ExpertPlacement> resolve(String trainLines, int world) throws Exception {
        CompiledFile f = MoeCompiler.compile(write(trainLines)).orThrow();
        return ExpertPlacements.forWorld(f.models().getFirst(), f.trainings().getFirst(), world);
    }

    private static List<List<Integer>> lists(ExpertPlacement p) {
        List<List<Integer>> out = new java.util.ArrayList<>();
        for (int r = 0; r < p.ranks(); r++) {
            out.add(java.util.Arrays.stream(p.expertsOf(r)).boxed().toList());
        }
        return out;
    }

    @Test
    void theDeclaredPlacementIsEachMoeLayersInLayerOrder() throws Exception {
        Files.writeString(dir.resolve("plan.json"), """
                {"ranks": 2, "layers": [
                  {"moe_layer": 0, "experts_of_rank": [[0, 3, 5, 6], [1, 2, 4, 7]]},
                  {"moe_layer": 1, "experts_of_rank": [[0, 1], [2, 3]]},
                  {"moe_layer": 2, "experts_of_rank": [[7, 6, 1, 0], [2, 3, 4, 5]]}]}
                """);
        Map<Integer, ExpertPlacement> p = resolve("""
                  parallel {
                    ranks 2
                    experts file("plan.json")
                    experts per_rank([[3], [0, 1, 2]], layers: [2])
                  }
                """, 2);
        assertThat(p.keySet()).containsExactly(1, 2, 3).inOrder();
        assertThat(lists(p.get(1))).isEqualTo(List.of(List.of(0, 3, 5, 6), List.of(1, 2, 4, 7)));
        assertThat(lists(p.get(2))).isEqualTo(List.of(List.of(3), List.of(0, 1, 2)));
        assertThat(lists(p.get(3))).isEqualTo(List.of(List.of(0, 1, 6, 7), List.of(2, 3, 4, 5)));
        // The explicit placement indexes the ranks' experts as the dispatch does: local i is the i-th smallest.
        assertThat(p.get(2).rankOf(0)).isEqualTo(1);
        assertThat(p.get(2).localIndex(2)).isEqualTo(2);
    }

    @Test
    void theCompilersContiguousBlocksAreTheBackendsContiguousBlocks() throws Exception {
        for (int ranks : new int[] {1, 2, 3, 5, 8, 11}) {
            Map<Integer, ExpertPlacement> declared = resolve("  parallel {\n    ranks " + ranks + "\n  }", ranks);
            for (var e : declared.entrySet()) {
                ExpertPlacement expected = ExpertPlacement.contiguous(e.getValue().experts(), ranks);
                assertThat(lists(e.getValue())).isEqualTo(lists(expected));
            }
        }
    }

    @Test
    void withoutADeclarationEveryMoeLayerIsContiguousOverTheWorld() throws Exception {
        Map<Integer, ExpertPlacement> p = resolve("", 4);
        assertThat(p.keySet()).containsExactly(1, 2, 3).inOrder();
        assertThat(lists(p.get(2))).isEqualTo(List.of(List.of(0), List.of(1), List.of(2), List.of(3)));
        assertThat(lists(p.get(1))).isEqualTo(lists(ExpertPlacement.contiguous(8, 4)));
        // No train block at all: the same.
        assertThat(lists(ExpertPlacements.forWorld(MoeCompiler.compile(write("")).orThrow().models().getFirst(), null, 4).get(3)))
                .isEqualTo(lists(ExpertPlacement.contiguous(8, 4)));
    }

    @Test
    void declaredRanksOtherThanTheWorldAreAUserError() throws Exception {
        Recipes.UserError e = assertThrows(Recipes.UserError.class, () -> resolve("  parallel {\n    ranks 4\n  }", 2));
        assertThat(e).hasMessageThat().isEqualTo("train `Placed` places its experts on 4 ranks (`parallel { ranks 4 }`), but this run has 2: run it on"
                + " 4 GPUs, or change `ranks`");
        assertThrows(IllegalArgumentException.class, () -> resolve("", 0));
    }

    @Test
    void expertsPerRankMustMakeAGroupOfTheWholeWorld() throws Exception {
        // 2 per rank: the 4 experts of layer 2 need 2 ranks, the 8 of layers 1 and 3 need 4.
        Recipes.UserError e = assertThrows(Recipes.UserError.class, () -> resolve("  experts_per_rank 2", 4));
        assertThat(e).hasMessageThat().contains("puts the 4 routed experts of moe `narrow` (layer 2) on 2 ranks, but this run has 4");
        // When every layer has 8 experts, 2 per rank is a world of 4, in contiguous blocks.
        Path even = dir.resolve("even.moe");
        Files.writeString(even, RECIPE.replace("routed 4 x", "routed 8 x").formatted("  experts_per_rank 2"));
        CompiledFile f = MoeCompiler.compile(even).orThrow();
        Map<Integer, ExpertPlacement> p = ExpertPlacements.forWorld(f.models().getFirst(), f.trainings().getFirst(), 4);
        assertThat(p).hasSize(3);
        assertThat(lists(p.get(2))).isEqualTo(List.of(List.of(0, 1), List.of(2, 3), List.of(4, 5), List.of(6, 7)));
    }

    @Test
    void rangesReadAsShortAsTheyCan() {
        assertThat(ExpertPlacements.ranges(List.of(0, 1, 2, 3))).isEqualTo("0-3");
        assertThat(ExpertPlacements.ranges(List.of(0, 3, 5, 6))).isEqualTo("0, 3, 5-6");
        assertThat(ExpertPlacements.ranges(List.of(7))).isEqualTo("7");
        assertThat(ExpertPlacements.ranges(List.of())).isEqualTo("none");
    }

    @Test
    void infoShowsEachMoeLayersExpertsPerRankAndCheckTheRanks() throws Exception {
        Path file = write("""
                  parallel {
                    ranks 2
                    experts per_rank([[0, 2, 4, 6], [1, 3, 5, 7]], layers: [3])
                  }
                """);
        Cli.Run info = Cli.run("info", file.toString());
        assertThat(info.exit()).isEqualTo(0);
        assertThat(info.out()).contains("""
                  expert placement on 2 ranks (train Placed)
                    layer 1 (moe wide, 8 experts, contiguous): rank 0: 0-3  rank 1: 4-7
                    layer 2 (moe narrow, 4 experts, contiguous): rank 0: 0-1  rank 1: 2-3
                    layer 3 (moe wide, 8 experts, per_rank): rank 0: 0, 2, 4, 6  rank 1: 1, 3, 5, 7
                """);
        Cli.Run check = Cli.run("check", file.toString());
        assertThat(check.exit()).isEqualTo(0);
        assertThat(check.out()).contains("1 training recipe; train Placed: experts on 2 ranks)");
        assertThat(Cli.run("info", write("").toString()).out()).doesNotContain("expert placement");
    }
}
