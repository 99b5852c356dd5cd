package dev.moe.cli;

import dev.moe.compiler.CompileResult;
import dev.moe.compiler.ir.Block;
import dev.moe.compiler.ir.CompiledFile;
import dev.moe.compiler.ir.Count;
import dev.moe.compiler.ir.Expert;
import dev.moe.compiler.ir.ExpertGroup;
import dev.moe.compiler.ir.Ffn;
import dev.moe.compiler.ir.Layer;
import dev.moe.compiler.ir.Model;
import dev.moe.compiler.ir.ModelConfig;
import dev.moe.compiler.ir.Moe;
import dev.moe.compiler.ir.Param;
import dev.moe.compiler.ir.Training;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.Optional;
import java.util.function.Function;

/**
 * IR values built by hand, so that the CLI's printing is tested independently of the checker.
 * The numbers are worked out for a Mixtral-like model: dim 128, 4 heads (head_dim 32), 2 KV heads,
 * 4 layers of attention + an MoE of 8 SwiGLU experts (hidden 256), top-2, vocab 256, untied head.
 */
final class TestModels {
    private TestModels() {}

    static final ModelConfig CONFIG = new ModelConfig(256, 256, 128, 4, 2, 32,
            new ModelConfig.Norm(ModelConfig.NormKind.RMS, 1e-5),
            new ModelConfig.Position(ModelConfig.PositionKind.ROPE, 1_000_000, 1.0),
            true, false, false, 0, false);

    static final Moe MIXTRAL = new Moe("mixtral",
            List.of(new ExpertGroup(ExpertGroup.Role.ROUTED, 8, new Expert.FeedForward(new Ffn(Ffn.Activation.SWIGLU, 256)), false)),
            List.of(), List.of());

    // attention: q 128x128, k 64x128, v 64x128, o 128x128; two norms of 128
    static final long ATTENTION = 16_384 + 8_192 + 8_192 + 16_384 + 2 * 128;
    // router 8x128; each expert gate, up, down: 3 x 128 x 256
    static final long EXPERT = 3L * 128 * 256;
    static final long LAYER_PARAMS = ATTENTION + 8 * 128 + 8 * EXPERT;
    static final long LAYER_ACTIVE = ATTENTION + 8 * 128 + 2 * EXPERT;
    // 2 FLOPs per multiply-add of the active weights, plus scores and weighted sum over the context
    static final long LAYER_FLOPS = 2 * LAYER_ACTIVE + 2 * 2 * 256 * 128;
    // embeddings 256x128, final norm 128, head 256x128
    static final long OUTSIDE = 32_768 + 128 + 32_768;

    /** A model whose every token costs the same. */
    static Model mixtralTiny() {
        List<Layer> layers = new ArrayList<>();
        for (int i = 0; i < 4; i++) {
            layers.add(new Layer(i, new Block.PreNorm(new Block.Part.Attention(), new Block.Part.MoePart(MIXTRAL)),
                    LAYER_PARAMS, Count.exactly(LAYER_ACTIVE), Count.exactly(LAYER_FLOPS)));
        }
        List<Param> params = List.of(
                Param.of("embed", 256, 128),
                Param.of("layers.0.attn.q", 128, 128),
                Param.of("layers.0.moe.router", 8, 128),
                Param.of("layers.0.moe.experts.0.up", 256, 128),
                Param.buffer("layers.0.moe.bias", 8),
                Param.of("norm", 128),
                Param.of("head", 256, 128));
        return new Model("MixtralTiny", CONFIG, layers, params,
                4 * LAYER_PARAMS + OUTSIDE,
                Count.exactly(4 * LAYER_ACTIVE + OUTSIDE),
                Count.exactly(4 * LAYER_FLOPS + 2 * 32_768));
    }

    /** Top-p routing: a token runs 1 to 4 of 8 experts, 2 expected. One layer, to keep it short. */
    static Model topP() {
        Moe moe = new Moe("dyn", MIXTRAL.groups(), List.of(), List.of());
        long base = ATTENTION + 8 * 128;
        Count active = new Count(base + EXPERT, base + 2.0 * EXPERT, base + 4 * EXPERT);
        Count flops = active.times(2);
        Layer layer = new Layer(0, new Block.PreNorm(new Block.Part.Attention(), new Block.Part.MoePart(moe)), base + 8 * EXPERT, active, flops);
        return new Model("DynTiny", CONFIG, List.of(layer), List.of(), base + 8 * EXPERT + OUTSIDE,
                active.plus(Count.exactly(OUTSIDE)), flops.plus(Count.exactly(2 * 32_768)));
    }

    /** A training recipe for {@link #mixtralTiny()}, as recipes/mixtral.moe declares it. */
    static Training training() {
        return new Training("MixtralTiny", new Training.Optimizer("adamw", 3e-4, 0.9, 0.95, 1e-8, 0.1),
                new Training.Schedule("cosine", 50, 3e-5), 8, 8, 500, 42, 1.0,
                new Training.Data(Map.of("synthetic", 1.0)), Map.of(), List.of(), false);
    }

    /** A compiler that returns these models and recipes for any path. */
    static Function<Path, CompileResult> compilerReturning(List<Model> models, List<Training> trainings) {
        return path -> new CompileResult(path.toString(), Optional.of(new CompiledFile(path.toString(), models, trainings)), List.of());
    }
}
