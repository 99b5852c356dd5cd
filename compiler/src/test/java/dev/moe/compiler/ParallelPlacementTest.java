package dev.moe.compiler;

import static com.google.common.truth.Truth.assertThat;

import dev.moe.compiler.ir.ExpertParallel;
import dev.moe.compiler.ir.ExpertParallel.LayerPlacement;
import dev.moe.compiler.ir.ExpertParallel.Source;
import dev.moe.compiler.ir.Training;
import dev.moe.dsl.SourceFile;
import dev.moe.dsl.diag.Code;
import dev.moe.dsl.diag.Diagnostic;
import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * A train block's {@code parallel} block: every MoE layer's placement resolved into explicit lists in
 * the IR, and each way it can be wrong reported at the declaration (the goldens under
 * {@code diagnostics/MOE0609..0613} hold the rendered text of one case each).
 */
class ParallelPlacementTest {
    /** {@link ExpertPlacementDeclTest}'s model and train block, with a parallel block whose settings are the {@code %s}. */
    static final String RECIPE = ExpertPlacementDeclTest.RECIPE.formatted("parallel {\n%s\n  }");

    @TempDir
    Path dir;

    /** Compiles the recipe with {@code body} in its parallel block, as a file in {@link #dir}. */
    private CompileResult compile(String body) throws IOException {
        Path file = dir.resolve("placed.moe");
        Files.writeString(file, RECIPE.formatted(body));
        return MoeCompiler.compile(file);
    }

    private ExpertParallel parallel(String body) throws IOException {
        Training t = compile(body).orThrow().trainings().getFirst();
        return t.parallel().orElseThrow();
    }

    private static List<List<Integer>> lists(ExpertParallel p, int layer) {
        return p.layers().stream().filter(l -> l.layer() == layer).findFirst().orElseThrow().expertsOfRank();
    }

    @Test
    void everyFormResolvesToListsPerMoeLayer() {
        Training t = MoeCompiler.compile(Path.of("src/test/resources/constructs/parallel.moe")).orThrow().trainings().getFirst();
        ExpertParallel p = t.parallel().orElseThrow();
        assertThat(p.ranks()).isEqualTo(2);
        assertThat(p.layers().stream().map(LayerPlacement::layer).toList()).containsExactly(1, 2, 3, 4).inOrder();
        assertThat(p.layers().stream().map(LayerPlacement::source).toList())
                .containsExactly(Source.FILE, Source.LISTED, Source.CONTIGUOUS, Source.FILE).inOrder();
        assertThat(lists(p, 1)).isEqualTo(List.of(List.of(0, 3, 5, 6), List.of(1, 2, 4, 7)));
        // Hand lists and file lists are kept sorted within a rank: a rank's local expert i is its i-th smallest.
        assertThat(lists(p, 2)).isEqualTo(List.of(List.of(1, 2), List.of(0, 3)));
        assertThat(lists(p, 3)).isEqualTo(List.of(List.of(0, 1, 2, 3), List.of(4, 5, 6, 7)));
        // The file's fourth MoE layer is the model's layer 4 (MoE layers count in layer order, as a run's loads do).
        assertThat(lists(p, 4)).isEqualTo(List.of(List.of(4, 5, 6, 7), List.of(0, 1, 2, 3)));
        assertThat(p.layers().getFirst().moe()).isEqualTo("wide");
        assertThat(p.layers().get(1).experts()).isEqualTo(4);
    }

    @Test
    void layersWithoutALineAreContiguousWithTheFirstRanksTakingTheRemainder() throws IOException {
        ExpertParallel p = parallel("    ranks 3");
        assertThat(lists(p, 1)).isEqualTo(List.of(List.of(0, 1, 2), List.of(3, 4, 5), List.of(6, 7)));
        assertThat(lists(p, 2)).isEqualTo(List.of(List.of(0, 1), List.of(2), List.of(3)));
        assertThat(p.layers().stream().map(LayerPlacement::source).distinct().toList()).containsExactly(Source.CONTIGUOUS);
        // More ranks than experts leaves ranks empty rather than refusing: the placement is still a partition.
        assertThat(lists(parallel("    ranks 6"), 2)).isEqualTo(List.of(List.of(0), List.of(1), List.of(2), List.of(3), List.of(), List.of()));
    }

    @Test
    void aNamedLayerOverridesTheLineForEveryLayer() throws IOException {
        ExpertParallel p = parallel("""
                    ranks 2
                    experts per_rank([[0, 2], [1, 3]], layers: 2)
                    experts contiguous
                """);
        assertThat(lists(p, 1)).isEqualTo(List.of(List.of(0, 1, 2, 3), List.of(4, 5, 6, 7)));
        assertThat(lists(p, 2)).isEqualTo(List.of(List.of(0, 2), List.of(1, 3)));
        assertThat(parallel("    ranks 1").layers().getFirst().expertsOfRank()).isEqualTo(List.of(List.of(0, 1, 2, 3, 4, 5, 6, 7)));
    }

    @Test
    void withoutAParallelBlockThereIsNone() {
        String plain = RECIPE.replace("  parallel {\n%s\n  }\n", "");
        assertThat(plain).doesNotContain("parallel");
        Training t = MoeCompiler.compile(new SourceFile("plain.moe", plain)).orThrow().trainings().getFirst();
        assertThat(t.parallel()).isEmpty();
    }

    /** One diagnostic: its code and where it points. */
    private Diagnostic only(String body) throws IOException {
        List<Diagnostic> ds = compile(body).diagnostics();
        assertThat(ds).hasSize(1);
        return ds.getFirst();
    }

    private static void at(Diagnostic d, Code code, int line, int column) {
        assertThat(d.code()).isEqualTo(code);
        assertThat(d.span().line()).isEqualTo(line);
        assertThat(d.span().column()).isEqualTo(column);
    }

    @Test
    void listsForEveryLayerAreCheckedAgainstEachLayersExperts() throws IOException {
        // Four experts fit layer 2 (moe `small`) but not layer 1's eight: the report names the layer.
        Diagnostic d = only("    ranks 2\n    experts per_rank([[0, 1], [2, 3]])");
        at(d, Code.EXPERT_NOT_PLACED_ONCE, 24, 22);
        assertThat(d.message()).isEqualTo("experts 4, 5, 6, 7 of moe `experts` (layer 1) are on no rank");
    }

    @Test
    void eachInvalidFormIsOneDiagnosticAtItsPlace() throws IOException {
        at(only("    ranks 2\n    experts per_rank([[0, 1, 2, 3], [4, 5, 6, 7, 7]], layers: [1])"), Code.EXPERT_NOT_PLACED_ONCE, 24, 50);
        at(only("    ranks 2\n    experts per_rank([[0, 1, 2, 3], [4, 5, 6, 8]], layers: [1])"), Code.EXPERT_NOT_PLACED_ONCE, 24, 47);
        at(only("    ranks 2\n    experts per_rank([[0, 1, 2, 3], [-4, 5, 6, 7]], layers: [1])"), Code.OUT_OF_RANGE, 24, 38);
        at(only("    ranks 3\n    experts per_rank([[0, 1], [2, 3]], layers: [2])"), Code.PLACEMENT_RANKS, 24, 22);
        at(only("    ranks 2\n    experts contiguous(layers: [3])"), Code.PLACEMENT_LAYER, 24, 33);
        at(only("    ranks 2\n    experts contiguous(layers: [0])"), Code.PLACEMENT_LAYER, 24, 33);
        at(only("    ranks 2\n    experts contiguous(layers: [1, 1])"), Code.PLACEMENT_TWICE, 24, 36);
        at(only("    ranks 2\n    experts contiguous\n    experts contiguous"), Code.PLACEMENT_TWICE, 25, 13);
        at(only("    ranks 2\n    experts balanced"), Code.WRONG_TYPE, 24, 13);
        at(only("    ranks 2\n    experts per_rank(layers: [1])"), Code.BAD_ARGUMENTS, 24, 13);
        at(only("    ranks 2\n    experts file(\"a.json\", \"b.json\")"), Code.BAD_ARGUMENTS, 24, 28);
        at(only("    ranks 2\n    experts file(3)"), Code.WRONG_TYPE, 24, 18);
        at(only("    ranks 2.5"), Code.WRONG_TYPE, 23, 11);
        assertThat(only("    ranks 100000").message()).isEqualTo("`ranks` must be between 1 and 65536, found 100000");
        at(only("    ranks 2\n    rank 2"), Code.UNKNOWN_SETTING, 24, 5);
        at(only("    experts contiguous"), Code.MISSING_SETTING, 22, 3);
    }

    @Test
    void placementFilesAreReadRelativeToTheRecipeAndCheckedAgainstTheModel() throws IOException {
        Path plans = Files.createDirectories(dir.resolve("plans"));
        Files.writeString(plans.resolve("ok.json"), """
                {"ranks": 2, "layers": [
                  {"moe_layer": 0, "experts_of_rank": [[7, 0, 1, 2], [3, 4, 5, 6]]},
                  {"moe_layer": 1, "experts_of_rank": [[3], [0, 1, 2]]}]}
                """);
        ExpertParallel p = parallel("    ranks 2\n    experts file(\"plans/ok.json\")");
        assertThat(lists(p, 1)).isEqualTo(List.of(List.of(0, 1, 2, 7), List.of(3, 4, 5, 6)));
        assertThat(lists(p, 2)).isEqualTo(List.of(List.of(3), List.of(0, 1, 2)));
        // Only layer 2 from the file.
        ExpertParallel one = parallel("    ranks 2\n    experts file(\"plans/ok.json\", layers: [2])");
        assertThat(lists(one, 1)).isEqualTo(List.of(List.of(0, 1, 2, 3), List.of(4, 5, 6, 7)));
        assertThat(lists(one, 2)).isEqualTo(List.of(List.of(3), List.of(0, 1, 2)));
    }

    @Test
    void everyBrokenPlacementFileIsADiagnosticAtThePath() throws IOException {
        String[][] cases = {
            {"", "placement file `p.json` lacks `ranks` or `layers`"},
            {"null", "placement file `p.json` lacks `ranks` or `layers`"},
            {"[1, 2]", "placement file `p.json` lacks `ranks` or `layers`"},
            {"{\"ranks\": \"2\", \"layers\": []}", "placement file `p.json` lacks `ranks` or `layers`"},
            {"{\"ranks\": 2, \"layers\": [{}, {}]}", "placement file `p.json`: MoE layer 0 (`layers[0]`) is not 2 lists of expert ids"},
            {"{\"ranks\": 2, \"layers\": [{\"experts_of_rank\": [[0, 1, 2, 3], [4, 5, 6, 7]]}, {\"moe_layer\": 0, \"experts_of_rank\": [[0, 1], [2, 3]]}]}",
                "placement file `p.json`: MoE layer 1 (`layers[1]`) is not 2 lists of expert ids"},
            {"{\"ranks\": 2, \"layers\": [{\"experts_of_rank\": [[0, 1, 2, 3], [4, 5, 6, 7.5]]}, {\"experts_of_rank\": [[0, 1], [2, 3]]}]}",
                "placement file `p.json`: MoE layer 0 (`layers[0]`) is not 2 lists of expert ids"},
            {"{\"ranks\": 2, \"layers\": [{\"experts_of_rank\": [[0, 1, 2, 3], [3, 4, 5, 6]]}, {\"experts_of_rank\": [[0, 1], [2, 3]]}]}",
                "placement file `p.json` places 7 experts (1 twice) in its MoE layer 0, but moe `experts` (layer 1) routes 8"},
            {"{\"ranks\": 2, \"layers\": [{\"experts_of_rank\": [[0, 1, 2, 3], [4, 5, 6, 8]]}, {\"experts_of_rank\": [[0, 1], [2, 3]]}]}",
                "placement file `p.json` places 8 experts in its MoE layer 0, but moe `experts` (layer 1) routes 8"},
            {"{\"ranks\": 2, \"layers\": []} {}", "placement file `p.json` is not JSON (line 1, column 28): trailing token (of type START_OBJECT) found after"
                + " value (bound as `com.fasterxml.jackson.databind.JsonNode`): not allowed as per `DeserializationFeature.FAIL_ON_TRAILING_TOKENS`"},
        };
        for (String[] c : cases) {
            Files.writeString(dir.resolve("p.json"), c[0]);
            Diagnostic d = only("    ranks 2\n    experts file(\"p.json\")");
            at(d, Code.PLACEMENT_FILE, 24, 18);
            assertThat(d.message()).isEqualTo(c[1]);
        }
        Files.write(dir.resolve("p.json"), new byte[] {'{', '"', (byte) 0xC3, '"'});
        at(only("    ranks 2\n    experts file(\"p.json\")"), Code.PLACEMENT_FILE, 24, 18);
        Files.delete(dir.resolve("p.json"));
        Files.createDirectory(dir.resolve("p.json"));
        assertThat(only("    ranks 2\n    experts file(\"p.json\")").message()).isEqualTo("cannot read placement file `p.json`: it is a directory");
        if (Files.exists(Path.of("/dev/zero"))) {
            assertThat(only("    ranks 2\n    experts file(\"/dev/zero\")").message()).isEqualTo("cannot read placement file `/dev/zero`: not a regular file");
        }
        Files.write(dir.resolve("big.json"), new byte[(16 << 20) + 1]);
        assertThat(only("    ranks 2\n    experts file(\"big.json\")").message()).isEqualTo("cannot read placement file `big.json`: larger than 16 MiB");
    }

    @Test
    void aMissingModelLeavesOnlyItsOwnError() throws IOException {
        Path file = dir.resolve("unknown.moe");
        Files.writeString(file, "train Nope {\n  steps 1\n  parallel {\n    ranks 2\n    experts file(\"absent.json\")\n  }\n}\n");
        List<Diagnostic> ds = MoeCompiler.compile(file).diagnostics();
        assertThat(ds.stream().map(Diagnostic::code).toList()).containsExactly(Code.UNKNOWN_NAME);
    }
}
