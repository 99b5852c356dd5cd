package dev.moe.cuda.dist;

import static com.google.common.truth.Truth.assertThat;
import static com.google.common.truth.Truth.assertWithMessage;

import dev.moe.cuda.kernels.MoeKernelSource;
import dev.moe.cuda.kernels.MoeKernelSource.Precision;
import dev.moe.cuda.kernels.MoeKernelSource.Score;
import dev.moe.cuda.kernels.MoeKernelSource.Spec;
import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.Random;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.Assumptions;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * The layer's sort by slot, on the CPU: the rank kernels' result (each routed row's rank among its expert's rows in row order,
 * the counts per expert id) is unchanged by renumbering; only the offsets ({@code expert_offsets_ordered}, whose
 * {@code ordered_offsets} nvcc compiles here for the host) put the experts' ranges in slot order. Then each rank's rows are one
 * slice of h, in rank order, of the size the stage's dispatch sends, its experts' rows one after another in its local order, and
 * each expert's rows in row order, as the stage's receive layout expects.
 */
class RenumberedSortTest {

    /** The rank kernels' result: rank[i] of row i among the kept rows of its expert (-1 dropped; rows of experts >= e unranked). */
    private static int[] ranks(int[] idx, boolean[] keep, int e, int[] counts) {
        int[] rank = new int[idx.length];
        for (int i = 0; i < idx.length; i++) {
            int ex = idx[i];
            if (ex < 0 || ex >= e) {
                continue;
            }
            rank[i] = keep == null || keep[i] ? counts[ex]++ : -1;
        }
        return rank;
    }

    /** expert_offsets (order null) or ordered_offsets, as the kernels compute them. */
    static int[] offsets(int[] counts, int[] order) {
        int e = counts.length;
        int[] out = new int[e + 1];
        int s = 0;
        for (int j = 0; j < e; j++) {
            int ex = order == null ? j : order[j];
            out[ex] = s;
            s += counts[ex];
        }
        out[e] = s;
        return out;
    }

    /** permute_gather's pos: offsets[idx] + rank, -1 for no row. */
    private static int[] positions(int[] idx, int[] rank, int[] offsets, int e) {
        int[] pos = new int[idx.length];
        for (int i = 0; i < idx.length; i++) {
            pos[i] = idx[i] < e && rank[i] >= 0 ? offsets[idx[i]] + rank[i] : -1;
        }
        return pos;
    }

    /** Checks the layout of h (which row sits at each position) against what the stage over {@code p} expects. */
    private static void checkLayout(ExpertPlacement p, int[] idx, boolean[] keep) {
        int e = p.experts();
        ExpertOrder o = ExpertOrder.of(p);
        int[] counts = new int[e];
        int[] rank = ranks(idx, keep, e, counts);
        int[] pos = positions(idx, rank, offsets(counts, o.identity() ? null : o.order()), e);
        int rows = Arrays.stream(counts).sum();
        int[] rowAt = new int[rows];
        Arrays.fill(rowAt, -1);
        for (int i = 0; i < idx.length; i++) {
            if (pos[i] >= 0) {
                assertWithMessage("position %s taken twice", pos[i]).that(rowAt[pos[i]]).isEqualTo(-1);
                rowAt[pos[i]] = i;
            }
        }
        assertThat(Arrays.stream(rowAt).min().orElse(0)).isAtLeast(0);
        // the stage's dispatch (on the renumbered placement) sends rank r the slice of its size, in rank order
        int[] slotCounts = o.toSlots(counts);
        int[] send = new SortedDispatch(o.renumbered()).sendCounts(slotCounts);
        int at = 0;
        for (int r = 0; r < p.ranks(); r++) {
            for (int l = 0; l < p.localExperts(r); l++) {
                int ex = p.globalExpert(r, l);
                int last = -1;
                for (int j = 0; j < counts[ex]; j++, at++) {
                    int row = rowAt[at];
                    assertWithMessage("position %s (rank %s, local expert %s)", at, r, l).that(idx[row]).isEqualTo(ex);
                    assertWithMessage("expert %s's rows in row order", ex).that(row).isGreaterThan(last);
                    last = row;
                }
            }
            int before = Arrays.stream(send, 0, r).sum();
            assertThat(at - before).isEqualTo(send[r]);
        }
        assertThat(at).isEqualTo(rows);
    }

    @Test
    void eachRanksRowsAreOneSliceAndEachExpertKeepsItsRowOrder() {
        Random rnd = new Random(7);
        List<ExpertPlacement> placements = List.of(ExpertPlacement.explicit(8, new int[][] {{0, 2, 4, 6}, {1, 3, 5, 7}}),
                ExpertPlacement.explicit(8, new int[][] {{4, 1, 3, 2}, {7}, {6, 0, 5}, {}}), ExpertPlacement.explicit(8, new int[][] {{4, 5, 6, 7},
                    {0, 1, 2, 3}}), ExpertPlacement.contiguous(8, 3), ExpertPlacement.explicit(8, new int[][] {{3}, {}, {0, 1, 2, 4, 5, 6, 7}}));
        for (ExpertPlacement p : placements) {
            for (int t : new int[] {1, 5, 64, 333}) {
                // k = 3 slots per token; ids 8 and 9 are zero/copy experts (no rows), as MoE++'s routed slots
                int[] idx = new int[t * 3];
                boolean[] keep = new boolean[idx.length];
                for (int i = 0; i < idx.length; i++) {
                    idx[i] = rnd.nextInt(10);
                    keep[i] = rnd.nextInt(4) != 0;
                }
                checkLayout(p, idx, null);
                // capacity drops keep by expert id: the kept rows' layout is just as sliced
                checkLayout(p, idx, keep);
            }
        }
    }

    @Test
    void theRanksWithinEachExpertDoNotDependOnTheOrder() {
        // each row's position within its expert's range is its rank whatever the order: the combine's pos and the capacity's
        // rank by position are the same as without renumbering, shifted by whole ranges
        int[] idx = {3, 0, 5, 3, 1, 0, 7, 3, 6, 2};
        int[] counts = new int[8];
        int[] rank = ranks(idx, null, 8, counts);
        int[] plain = positions(idx, rank, offsets(counts, null), 8);
        int[] order = ExpertOrder.of(ExpertPlacement.explicit(8, new int[][] {{1, 3, 5, 7}, {0, 2, 4, 6}})).order();
        int[] offs = offsets(counts, order), plainOffs = offsets(counts, null);
        int[] renumbered = positions(idx, rank, offs, 8);
        for (int i = 0; i < idx.length; i++) {
            assertThat(renumbered[i] - offs[idx[i]]).isEqualTo(plain[i] - plainOffs[idx[i]]);
        }
        assertThat(offs[8]).isEqualTo(plainOffs[8]);
        // the identity order gives expert_offsets' offsets exactly
        assertThat(offsets(counts, new int[] {0, 1, 2, 3, 4, 5, 6, 7})).isEqualTo(plainOffs);
    }

    /** The kernel's own ordered_offsets, compiled for the host by nvcc, against {@link #offsets}. */
    @Test
    void theKernelsOrderedOffsetsAreTheReferences(@TempDir Path dir) throws Exception {
        Path nvcc = Path.of("/usr/local/cuda/bin/nvcc");
        if (!Files.isExecutable(nvcc)) {
            nvcc = Path.of("/usr/local/bin/nvcc");
        }
        Assumptions.assumeTrue(Files.isExecutable(nvcc), "nvcc is not installed: the kernels are compared on the GPU machine");
        Spec spec = new Spec(16, 16, 8, 2, Score.SOFTMAX, true, 1f, false, Precision.FP32);
        String source = MoeKernelSource.generate(spec);
        int start = source.indexOf("__host__ __device__ inline void ordered_offsets(");
        int end = source.indexOf("extern \"C\" __global__ void expert_offsets_ordered(");
        assertThat(start >= 0 && end > start).isTrue();
        String program = """
                #include <cstdio>
                #include <cstdlib>
                #define E %d
                %s
                int main(int argc, char** argv) {
                  int counts[E], order[E], offsets[E + 1];
                  for (int i = 0; i < E; i++) { counts[i] = atoi(argv[1 + i]); order[i] = atoi(argv[1 + E + i]); }
                  ordered_offsets(counts, order, offsets);
                  for (int i = 0; i <= E; i++) printf("%%d\\n", offsets[i]);
                  return 0;
                }
                """.formatted(spec.experts(), source.substring(start, end));
        Path cu = dir.resolve("offsets.cu");
        Files.writeString(cu, program);
        Path exe = dir.resolve("offsets");
        run(List.of(nvcc.toString(), "-std=c++17", "-o", exe.toString(), cu.toString()));
        Random rnd = new Random(3);
        List<int[]> orders = List.of(new int[] {0, 2, 4, 6, 1, 3, 5, 7}, new int[] {1, 2, 3, 4, 7, 0, 5, 6}, new int[] {4, 5, 6, 7, 0, 1, 2, 3},
                new int[] {0, 1, 2, 3, 4, 5, 6, 7});
        for (int[] order : orders) {
            for (int c = 0; c < 3; c++) {
                int[] counts = new int[8];
                for (int e = 0; e < 8; e++) {
                    counts[e] = rnd.nextInt(3) == 0 ? 0 : rnd.nextInt(500);
                }
                List<String> args = new ArrayList<>(List.of(exe.toString()));
                Arrays.stream(counts).forEach(v -> args.add(Integer.toString(v)));
                Arrays.stream(order).forEach(v -> args.add(Integer.toString(v)));
                int[] got = run(args).stream().mapToInt(Integer::parseInt).toArray();
                assertWithMessage("order %s counts %s", Arrays.toString(order), Arrays.toString(counts)).that(got).isEqualTo(offsets(counts, order));
            }
        }
    }

    private static List<String> run(List<String> command) throws IOException, InterruptedException {
        Process p = new ProcessBuilder(command).redirectErrorStream(true).start();
        String out = new String(p.getInputStream().readAllBytes(), StandardCharsets.UTF_8);
        assertWithMessage("%s", command).that(p.waitFor(180, TimeUnit.SECONDS)).isTrue();
        assertWithMessage("%s: %s", command.getFirst(), out).that(p.exitValue()).isEqualTo(0);
        return out.lines().toList();
    }
}
