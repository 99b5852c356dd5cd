package dev.moe.cli;

import static com.google.common.truth.Truth.assertThat;
import static com.google.common.truth.Truth.assertWithMessage;
import static org.junit.jupiter.api.Assertions.assertThrows;

import dev.moe.compiler.MoeCompiler;
import dev.moe.compiler.ir.CompiledFile;
import dev.moe.compiler.ir.ExpertParallel;
import dev.moe.compiler.ir.Model;
import dev.moe.compiler.ir.Param;
import dev.moe.cuda.dist.ExpertPlacement;
import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import java.util.Map;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
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

    @Test
    void aRanksTrainingMemoryIsSixteenBytesForEachReplicatedParameterAndEachOfItsExperts() {
        assertThat(ExpertPlacements.trainingBytes(1_000, 600, 150)).isEqualTo(16L * 550);
        // holding every placed expert is the whole model (data parallelism); a model without placed experts, the same
        assertThat(ExpertPlacements.trainingBytes(1_000, 600, 600)).isEqualTo(16_000);
        assertThat(ExpertPlacements.trainingBytes(1_000, 0, 0)).isEqualTo(16_000);
        assertThat(ExpertPlacements.trainingBytes(1_000, 600, 0)).isEqualTo(16L * 400);
        assertThrows(IllegalArgumentException.class, () -> ExpertPlacements.trainingBytes(1_000, 600, 601));
        assertThrows(IllegalArgumentException.class, () -> ExpertPlacements.trainingBytes(1_000, 1_001, 0));
        assertThrows(IllegalArgumentException.class, () -> ExpertPlacements.trainingBytes(1_000, 600, -1));
    }

    /** The parameters of each rank's experts counted from the checkpoint's tensors ({@code layers.L.moe.experts.E.*}). */
    private static long[] expertTensorsOfRanks(Model m, ExpertParallel p) {
        Pattern name = Pattern.compile("layers\\.(\\d+)\\.moe\\.experts\\.(\\d+)\\..+");
        long[] out = new long[p.ranks()];
        for (Param t : m.params()) {
            Matcher x = name.matcher(t.name());
            if (!x.matches()) {
                continue;
            }
            int layer = Integer.parseInt(x.group(1));
            int expert = Integer.parseInt(x.group(2));
            ExpertParallel.LayerPlacement l = p.layers().stream().filter(y -> y.layer() == layer).findFirst().orElseThrow();
            for (int r = 0; r < p.ranks(); r++) {
                if (l.expertsOfRank().get(r).contains(expert)) {
                    out[r] += t.numel();
                }
            }
        }
        return out;
    }

    @Test
    void contiguousOnTwoRanksHalvesTheExperts() throws Exception {
        CompiledFile f = MoeCompiler.compile(write("  parallel {\n    ranks 2\n  }")).orThrow();
        Model m = f.models().getFirst();
        ExpertParallel p = f.trainings().getFirst().parallel().orElseThrow();
        // swiglu(hidden: 64) at dim 64: 3·64·64 weights an expert; each rank holds 4 of each wide layer's 8, 2 of narrow's 4
        long expert = 3L * 64 * 64;
        long[] ranks = ExpertPlacements.expertParamsOfRanks(m, p);
        assertThat(ranks).asList().containsExactly(10 * expert, 10 * expert).inOrder();
        assertThat(ranks).isEqualTo(expertTensorsOfRanks(m, p));
        assertThat(ExpertPlacements.trainingBytes(m.totalParams(), 20 * expert, ranks[0])).isEqualTo(16 * (m.totalParams() - 10 * expert));
    }

    @Test
    void infoShowsEachRanksParameterMemoryBesideTheWholeModels() throws Exception {
        Path file = write("""
                  parallel {
                    ranks 2
                    experts per_rank([[0], [1, 2, 3, 4, 5, 6, 7]], layers: [3])
                    experts per_rank([[0, 1, 2, 3, 4, 5], [6, 7]], layers: [1])
                  }
                """);
        CompiledFile f = MoeCompiler.compile(file).orThrow();
        Model m = f.models().getFirst();
        ExpertParallel p = f.trainings().getFirst().parallel().orElseThrow();
        long expert = 3L * 64 * 64;
        // rank 0: 6 + 2 + 1 experts, rank 1: 2 + 2 + 7
        long[] ranks = ExpertPlacements.expertParamsOfRanks(m, p);
        assertThat(ranks).asList().containsExactly(9 * expert, 11 * expert).inOrder();
        assertThat(ranks).isEqualTo(expertTensorsOfRanks(m, p));
        long total = m.totalParams();
        assertThat(total).isEqualTo(370_496);
        Cli.Run info = Cli.run("info", file.toString());
        assertThat(info.exit()).isEqualTo(0);
        // rank 0 lacks 11 of the 20 experts: 16·(370,496 − 11·12,288) = 3,765,248 bytes = 3.59 MiB; rank 1 lacks 9: 16·(370,496 −
        // 9·12,288) = 4,158,464 bytes = 3.97 MiB; the whole model 16·370,496 = 5.65 MiB
        assertThat(info.out()).contains("""
                    layer 3 (moe wide, 8 experts, per_rank): rank 0: 0  rank 1: 1-7
                    parameter memory for training with --expert-parallel (values, gradients, AdamW moments: 16 bytes a parameter):
                      rank 0: about 3.6 MiB (235K params)
                      rank 1: about 4.0 MiB (260K params)
                      every rank with data parallelism: about 5.7 MiB (370K params)
                """);
    }

    @Test
    void infoSaysWhyItShowsNoMemoryForAModelExpertParallelismRefuses() throws Exception {
        Path file = dir.resolve("latent.moe");
        Files.writeString(file, RECIPE.replace("routed 8 x swiglu(hidden: 64)", "routed 8 x latent(rank: 16, ffn: swiglu(hidden: 64))")
                .formatted("  parallel {\n    ranks 2\n  }"));
        Cli.Run info = Cli.run("info", file.toString());
        assertWithMessage("%s", info).that(info.exit()).isEqualTo(0);
        assertThat(info.out()).contains("parameter memory per rank: not shown, --expert-parallel refuses this model: layer 1's MoE has latent experts");
        assertThat(info.out()).doesNotContain("data parallelism");
    }
}
