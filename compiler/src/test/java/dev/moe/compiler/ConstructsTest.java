package dev.moe.compiler;

import static com.google.common.truth.Truth.assertThat;
import static com.google.common.truth.Truth.assertWithMessage;

import dev.moe.compiler.ir.Block;
import dev.moe.compiler.ir.Expert;
import dev.moe.compiler.ir.Loss;
import dev.moe.compiler.ir.Model;
import dev.moe.compiler.ir.ModelConfig;
import dev.moe.compiler.ir.Moe;
import dev.moe.compiler.ir.Router;
import dev.moe.compiler.ir.Training;
import dev.moe.dsl.DslParser;
import dev.moe.dsl.MoeFormatter;
import dev.moe.dsl.SourceFile;
import dev.moe.dsl.ast.AstEquivalence;
import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import java.util.stream.Stream;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.MethodSource;

/** Every construct of the language is accepted, means what it says in the IR, and survives {@code moe fmt}. */
class ConstructsTest {
    static final Path DIR = Path.of("src/test/resources/constructs");

    static Stream<Path> files() throws IOException {
        List<Path> all;
        try (Stream<Path> s = Files.list(DIR)) {
            all = s.filter(p -> p.toString().endsWith(".moe")).sorted().toList();
        }
        try (Stream<Path> s = Files.list(Path.of("../recipes"))) {
            return Stream.concat(all.stream(), s.filter(p -> p.toString().endsWith(".moe")).sorted().toList().stream());
        }
    }

    @ParameterizedTest(name = "{0}")
    @MethodSource("files")
    void checksCleanAndRoundTrips(Path file) throws IOException {
        CompileResult r = MoeCompiler.compile(file);
        assertWithMessage("%s", r.diagnostics()).that(r.diagnostics()).isEmpty();
        String text = Files.readString(file);
        var parsed = DslParser.parse(new SourceFile(file.toString(), text)).file().orElseThrow();
        String formatted = MoeFormatter.format(parsed);
        var again = DslParser.parse(new SourceFile(file.toString(), formatted)).file().orElseThrow();
        assertThat(AstEquivalence.equivalent(parsed, again)).isTrue();
        assertThat(MoeFormatter.format(again)).isEqualTo(formatted);
    }

    private static Model zoo() {
        return MoeCompiler.compile(DIR.resolve("every-construct.moe")).orThrow().models().getFirst();
    }

    private static Moe ffnMoe(Model m, int layer) {
        return switch (m.layers().get(layer).block()) {
            case Block.PreNorm p -> ((Block.Part.MoePart) p.ffn()).moe();
            case Block.Parallel p -> ((Block.Part.MoePart) p.ffn()).moe();
            case Block.Shortcut s -> s.moe();
            case Block.Residual r -> r.moe();
        };
    }

    @Test
    void modelSettings() {
        ModelConfig c = zoo().config();
        assertThat(c).isEqualTo(new ModelConfig(128, 64, 64, 4, 2, 16, new ModelConfig.Norm(ModelConfig.NormKind.LAYER, 1e-5),
                new ModelConfig.Position(ModelConfig.PositionKind.ROPE, 500000, 0.5), true, true, true, 32, true));
        assertThat(c.position().rotaryDims(c.headDim())).isEqualTo(8);
    }

    @Test
    void layerPlanSelectors() {
        Model m = zoo();
        assertThat(m.layers()).hasSize(24);
        assertThat(m.layers().get(0).block().describe()).isEqualTo("attention, dense");
        assertThat(m.layers().get(1).block().describe()).isEqualTo("attention, dense");
        assertThat(m.layers().get(4).block().describe()).isEqualTo("attention, v3");
        assertThat(m.layers().get(5).block()).isInstanceOf(Block.Parallel.class);
        assertThat(m.layers().get(14).block()).isInstanceOf(Block.Shortcut.class);
        assertThat(m.layers().get(15).block()).isInstanceOf(Block.Residual.class);
        assertThat(m.layers().get(19).block().describe()).isEqualTo("attention, swiglu(hidden: 96)");
        assertThat(m.layers().get(23).block().describe()).isEqualTo("attention, small");
    }

    @Test
    void routersAndExperts() {
        Model m = zoo();
        Router fine = ffnMoe(m, 2).routers().getFirst();
        assertThat(fine.order()).isEqualTo(Router.Order.TOPK_THEN_SOFTMAX);
        assertThat(fine.capacity()).isEqualTo(new Router.Capacity.Factor(1.25, Router.DropPolicy.POSITION));
        assertThat(ffnMoe(m, 2).groups().getFirst().sigmoidGate()).isTrue();
        Router v3 = ffnMoe(m, 3).routers().getFirst();
        assertThat(v3.score()).isEqualTo(Router.Score.SIGMOID);
        assertThat(v3.bias()).hasValue(new Router.ExpertBias(0.001));
        assertThat(v3.groupLimit()).hasValue(new Router.GroupLimit(4, 2));
        Router moge = ffnMoe(m, 5).routers().getFirst();
        assertThat(moge.quotaGroups()).hasValue(2);
        assertThat(moge.temperature().orElseThrow().activation()).hasValue("tanh");
        assertThat(ffnMoe(m, 6).routers().getFirst().gatingResidual()).isFalse();
        assertThat(ffnMoe(m, 7).routers().getFirst().gatingResidual()).isTrue();
        assertThat(ffnMoe(m, 7).losses()).contains(new Loss.Aux(0.01, Loss.Scope.MICRO_BATCH, 0.5));
        assertThat(ffnMoe(m, 8).routers().getFirst().selection()).isEqualTo(new Router.Selection.TopP(0.6, 4));
        assertThat(ffnMoe(m, 10).routers().getFirst().recurrentWidth()).hasValue(16);
        assertThat(ffnMoe(m, 11).groups().getFirst().expert()).isInstanceOf(Expert.Latent.class);
        assertThat(ffnMoe(m, 12).routedExperts()).isEqualTo(2);
        assertThat(ffnMoe(m, 13).routedExperts()).isEqualTo(8);
        assertThat(ffnMoe(m, 14).routers().getFirst().selection()).isEqualTo(new Router.Selection.ExpertChoice(2.0));
        assertThat(ffnMoe(m, 16).routers().stream().map(r -> r.name().orElseThrow()).toList()).containsExactly("arithmetic", "copy");
        assertThat(ffnMoe(m, 17).routers().getFirst().pregate()).isTrue();
        Block.PreNorm heads = (Block.PreNorm) m.layers().get(8).block();
        assertThat(((Block.Part.MoePart) heads.mixer()).moe().isAttention()).isTrue();
    }

    @Test
    void trainingAndStages() {
        Training t = MoeCompiler.compile(DIR.resolve("every-construct.moe")).orThrow().trainings().getFirst();
        assertThat(t.globalBatch()).isEqualTo(16);
        assertThat(t.steps()).isEqualTo(120);
        assertThat(t.data().mixture()).containsExactly("arithmetic", 0.5, "copy", 0.25, "prose", 0.25);
        assertThat(t.domains()).containsExactly("prose", "data/prose.txt");
        assertThat(t.stages().get(0).init()).isEqualTo(new Training.Init.Scratch());
        assertThat(t.stages().get(1).init()).isEqualTo(new Training.Init.Previous());
        List<Training> up = MoeCompiler.compile(DIR.resolve("upcycling.moe")).orThrow().trainings();
        assertThat(up.get(1).stages().getFirst().init()).isEqualTo(new Training.Init.Split(new Training.Source.File("runs/dense/last.safetensors"), "DenseBase", 4));
        assertThat(up.get(2).stages().getFirst().init()).isEqualTo(new Training.Init.Extend(new Training.Source.File("runs/copied/last.safetensors"), "Copied", 2));
    }

    @Test
    void trainablePatterns() {
        var p = Patterns.compile("layers.{2..4}.moe.*.weight");
        assertThat(p.matcher("layers.3.moe.router.weight").matches()).isTrue();
        assertThat(p.matcher("layers.5.moe.router.weight").matches()).isFalse();
        assertThat(p.matcher("layers.3.moe.router.x.weight").matches()).isFalse();
        assertThat(Patterns.compile("**.up").matcher("layers.1.moe.experts.7.up").matches()).isTrue();
    }
}
