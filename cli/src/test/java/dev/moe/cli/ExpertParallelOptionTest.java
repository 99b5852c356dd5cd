package dev.moe.cli;

import static com.google.common.truth.Truth.assertThat;

import dev.moe.compiler.ir.Model;
import dev.moe.compiler.ir.Training;
import dev.moe.cuda.dist.ExpertPlacement;
import java.nio.file.Path;
import java.util.SortedMap;
import java.util.TreeMap;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * {@code moe train --expert-parallel} without a GPU: what it refuses, in one line and before any GPU work, and the placement it
 * chooses. Training with it is {@code ExpertParallelTrainCheck}'s job on a GPU.
 */
class ExpertParallelOptionTest {
    @TempDir
    Path dir;

    private static void oneLineError(Cli.Run r, int exit, String message) {
        assertThat(r.exit()).isEqualTo(exit);
        assertThat(r.err()).contains("moe: error: " + message);
        assertThat(r.err()).doesNotContain("Exception");
        assertThat(r.err()).doesNotContain("\tat ");
        assertThat(r.out()).doesNotContain("training ");
    }

    @Test
    void itNeedsTheCudaBackend() {
        for (String backend : new String[] {"cpu", "cuda-hybrid"}) {
            Cli.Run r = Cli.run("train", "../recipes/mixtral.moe", "--out", dir.toString(), "--backend", backend, "--expert-parallel", "--steps", "1");
            oneLineError(r, 2, "--expert-parallel needs --backend cuda: the experts' stage runs on device-resident models");
            assertThat(r.err().strip().lines().count()).isEqualTo(1);
        }
        Cli.Run r = Cli.run("train", "../recipes/mixtral.moe", "--out", dir.toString(), "--expert-parallel", "--gpus", "2");
        oneLineError(r, 2, "--expert-parallel needs --backend cuda");
    }

    @Test
    void aModelWhoseMoeLayersTheStageCannotTakeIsNamedBeforeAnyGpuWork() {
        // refused after the file is checked and before the backend opens: no GPU is needed to hear why
        Cli.Run mola = Cli.run("train", "../recipes/mola.moe", "--out", dir.toString(), "--backend", "cuda", "--expert-parallel");
        oneLineError(mola, 1, "--expert-parallel: layer 0's MoE has LoRA experts (MoLA)");
        Cli.Run mole = Cli.run("train", "../recipes/mole.moe", "--out", dir.toString(), "--backend", "cuda", "--expert-parallel");
        oneLineError(mole, 1, "--expert-parallel: layer 0's MoE has latent experts (MoLE)");
        Cli.Run moepp = Cli.run("train", "../recipes/moe-plus-plus.moe", "--out", dir.toString(), "--backend", "cuda", "--expert-parallel");
        oneLineError(moepp, 1, "--expert-parallel: layer 0's MoE has MoE++ constant experts, which the expert-parallel stage does not run");
        // with --gpus the launcher refuses it once, before it looks for GPUs or starts a rank
        Cli.Run launched = Cli.run("train", "../recipes/mola.moe", "--out", dir.toString(), "--backend", "cuda", "--expert-parallel", "--gpus", "2");
        oneLineError(launched, 1, "--expert-parallel: layer 0's MoE has LoRA experts (MoLA)");
        assertThat(launched.err().strip().lines().count()).isEqualTo(1);
    }

    /** mixtral.moe with a `parallel` block in its train block. */
    private Path mixtralPlaced(String name, String parallel) throws java.io.IOException {
        String recipe = java.nio.file.Files.readString(Path.of("../recipes/mixtral.moe"));
        String placed = recipe.replace("  data synthetic\n}", "  data synthetic\n  " + parallel + "\n}");
        assertThat(placed).isNotEqualTo(recipe);
        Path f = dir.resolve(name);
        java.nio.file.Files.writeString(f, placed);
        return f;
    }

    @Test
    void theRecipesPlacementIsCheckedAgainstTheRunBeforeAnyGpuWork() throws Exception {
        // declared for two ranks, run on one
        Path two = mixtralPlaced("two.moe", "parallel { ranks 2  experts contiguous }");
        Cli.Run r = Cli.run("train", two.toString(), "--out", dir.resolve("t").toString(), "--backend", "cuda", "--expert-parallel");
        oneLineError(r, 1, "train `MixtralTiny` places its experts on 2 ranks (`parallel { ranks 2 }`), but this run has 1");
    }

    @Test
    void anInterleavedPlacementIsTakenAsDeclared() throws Exception {
        // not contiguous in rank order: the device layer renumbers the experts into slots (ExpertOrder), so it is no longer refused
        Path interleaved = mixtralPlaced("interleaved.moe", "parallel { ranks 2  experts per_rank([[0, 2, 4, 6], [1, 3, 5, 7]]) }");
        Model m = dev.moe.compiler.MoeCompiler.compile(interleaved).orThrow().models().getFirst();
        Training t = dev.moe.compiler.MoeCompiler.compile(interleaved).orThrow().trainings().getFirst();
        SortedMap<Integer, ExpertPlacement> p = TrainCommand.placements(m, t, TrainCommand.ffnExpertsByLayer(m), 2);
        assertThat(p.keySet()).containsExactly(0, 1, 2, 3);
        for (ExpertPlacement layer : p.values()) {
            assertThat(layer.expertsOf(0)).asList().containsExactly(0, 2, 4, 6).inOrder();
            assertThat(layer.expertsOf(1)).asList().containsExactly(1, 3, 5, 7).inOrder();
            assertThat(dev.moe.cuda.dist.ExpertOrder.of(layer).order()).asList().containsExactly(0, 2, 4, 6, 1, 3, 5, 7).inOrder();
        }
    }

    @Test
    void aContiguousDeclaredPlacementIsTaken() throws Exception {
        Model m = dev.moe.compiler.MoeCompiler.compile(mixtralPlaced("uneven.moe",
                "parallel { ranks 2  experts per_rank([[0, 1, 2], [3, 4, 5, 6, 7]]) }")).orThrow().models().getFirst();
        Training t = dev.moe.compiler.MoeCompiler.compile(dir.resolve("uneven.moe")).orThrow().trainings().getFirst();
        SortedMap<Integer, ExpertPlacement> p = TrainCommand.placements(m, t, TrainCommand.ffnExpertsByLayer(m), 2);
        assertThat(p.keySet()).containsExactly(0, 1, 2, 3);
        assertThat(p.get(1).localExperts(0)).isEqualTo(3);
        assertThat(p.get(1).localExperts(1)).isEqualTo(5);
        // without a declaration: contiguous halves
        SortedMap<Integer, ExpertPlacement> plain = TrainCommand.placements(m, null, TrainCommand.ffnExpertsByLayer(m), 2);
        assertThat(plain.get(1).localExperts(0)).isEqualTo(4);
    }

    @Test
    void aModelThatIsNotDeviceResidentOrHasNoMoeLayerIsRefused() throws Exception {
        Path dense = dir.resolve("dense.moe");
        java.nio.file.Files.writeString(dense, """
                ffn mlp = swiglu(hidden: 64)
                model DenseTiny {
                  vocab 97
                  context 32
                  dim 32
                  heads 2
                  norm rms(eps: 1e-6)
                  position rope(theta: 10000)
                  causal true
                  layers 2 {
                    all: attention, mlp
                  }
                }
                """);
        Cli.Run r = Cli.run("train", dense.toString(), "--out", dir.resolve("d").toString(), "--backend", "cuda", "--expert-parallel");
        oneLineError(r, 1, "--expert-parallel: DenseTiny has no MoE layer of routed FFN experts");
        // head_dim above 256: the GPU code generator does not cover it
        Path wide = dir.resolve("wide.moe");
        java.nio.file.Files.writeString(wide, """
                moe m {
                  routed 4 x swiglu(hidden: 32)
                  router {
                    score softmax
                    top_k 2
                  }
                }
                model WideHeads {
                  vocab 97
                  context 32
                  dim 512
                  heads 1
                  norm rms(eps: 1e-6)
                  position rope(theta: 10000)
                  causal true
                  layers 1 {
                    all: attention, m
                  }
                }
                """);
        Cli.Run w = Cli.run("train", wide.toString(), "--out", dir.resolve("w").toString(), "--backend", "cuda", "--expert-parallel");
        oneLineError(w, 1, "--expert-parallel: WideHeads does not run device-resident on the GPU (head_dim above 256)");
    }

    @Test
    void eachLayersExpertsSplitContiguouslyOverTheRanks() {
        SortedMap<Integer, Integer> experts = new TreeMap<>();
        experts.put(0, 8);
        experts.put(1, 8);
        experts.put(3, 3);
        SortedMap<Integer, ExpertPlacement> p = TrainCommand.placements(experts, 4);
        assertThat(p.keySet()).containsExactly(0, 1, 3).inOrder();
        assertThat(p.get(0).expertsOf(3)).asList().containsExactly(6, 7).inOrder();
        // more ranks than experts: the last rank holds none
        assertThat(p.get(3).localExperts(3)).isEqualTo(0);
        assertThat(TrainCommand.describePlacements(p)).isEqualTo("layers 0,1 (rank 0: [0, 1] rank 1: [2, 3] rank 2: [4, 5] rank 3: [6, 7]); "
                + "layer 3 (rank 0: [0] rank 1: [1] rank 2: [2] rank 3: [])");
    }
}
