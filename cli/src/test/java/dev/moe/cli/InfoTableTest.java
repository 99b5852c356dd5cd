package dev.moe.cli;

import static com.google.common.truth.Truth.assertThat;

import org.junit.jupiter.api.Test;

/** {@code moe info}'s layout, on models built by hand (see {@link TestModels} for the arithmetic). */
class InfoTableTest {
    @Test
    void layersThenTotals() {
        assertThat(InfoTable.render(TestModels.mixtralTiny())).isEqualTo("""
                model MixtralTiny (4 layers)
                  config  vocab 256, context 256, dim 128, heads 4, kv_heads 2, head_dim 32, norm rms(eps: 0.00001), position rope(theta: 1000000)

                  layer  block                         params  active  FLOPs/token
                      0  attention, mixtral              837K    247K    625 KFLOP
                      1  attention, mixtral              837K    247K    625 KFLOP
                      2  attention, mixtral              837K    247K    625 KFLOP
                      3  attention, mixtral              837K    247K    625 KFLOP
                         embeddings, final norm, head   65.7K   65.7K   65.5 KFLOP

                  total params      3.41M (3,413,120)
                  active params     1.05M (1,053,824)
                  activation ratio  30.9%
                  FLOPs/token       2.57 MFLOP (forward pass, full context)
                """);
    }

    @Test
    void routingDependentCountsShowMinExpectedMax() {
        assertThat(InfoTable.render(TestModels.topP())).isEqualTo("""
                model DynTiny (1 layer)
                  config  vocab 256, context 256, dim 128, heads 4, kv_heads 2, head_dim 32, norm rms(eps: 0.00001), position rope(theta: 1000000)

                  layer  block                         params                     active                         FLOPs/token
                      0  attention, dyn                  837K  149K–444K (expected 247K)  297–887 KFLOP (expected 494 KFLOP)
                         embeddings, final norm, head   65.7K                      65.7K                          65.5 KFLOP

                  total params      903K (902,528)
                  active params     min 214K, expected 313K, max 509K
                  activation ratio  23.8%–56.4% (expected 34.6%)
                  FLOPs/token       min 363 KFLOP, expected 560 KFLOP, max 953 KFLOP (forward pass, full context)
                """);
    }

    @Test
    void paramsListsEveryTensor() {
        String text = InfoTable.render(TestModels.mixtralTiny(), true);
        String withoutParams = InfoTable.render(TestModels.mixtralTiny());
        assertThat(text).startsWith(withoutParams + "\n");
        assertThat(text.substring(withoutParams.length() + 1)).isEqualTo("""
                  parameters: 7 tensors, 115,848 elements (115,840 trainable)
                  name                       shape        numel  trainable
                  embed                      [256, 128]  32,768  yes
                  layers.0.attn.q            [128, 128]  16,384  yes
                  layers.0.moe.router        [8, 128]     1,024  yes
                  layers.0.moe.experts.0.up  [256, 128]  32,768  yes
                  layers.0.moe.bias          [8]              8  no (buffer)
                  norm                       [128]          128  yes
                  head                       [256, 128]  32,768  yes
                """);
    }

    @Test
    void nonDefaultSettingsJoinTheConfigLine() {
        var c = TestModels.CONFIG;
        var tied = new dev.moe.compiler.ir.ModelConfig(c.vocab(), c.context(), c.dim(), c.heads(), c.kvHeads(), c.headDim(),
                new dev.moe.compiler.ir.ModelConfig.Norm(dev.moe.compiler.ir.ModelConfig.NormKind.LAYER, 1e-6),
                new dev.moe.compiler.ir.ModelConfig.Position(dev.moe.compiler.ir.ModelConfig.PositionKind.ROPE, 10_000, 0.5),
                true, true, false, 128, true);
        assertThat(InfoTable.config(tied)).isEqualTo("vocab 256, context 256, dim 128, heads 4, kv_heads 2, head_dim 32,"
                + " norm layer(eps: 0.000001), position rope(theta: 10000, fraction: 0.5), sliding_window 128, qk_norm true,"
                + " tie_embeddings true");
    }
}
