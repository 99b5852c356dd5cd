package dev.moe.compiler;

import static com.google.common.truth.Truth.assertThat;

import dev.moe.compiler.ir.Count;
import dev.moe.compiler.ir.Model;
import dev.moe.compiler.ir.Param;
import dev.moe.dsl.SourceFile;
import java.nio.file.Path;
import org.junit.jupiter.api.Test;

/** Parameter, active-parameter and FLOP counts, checked against counts done by hand. */
class ParameterCountTest {
    static Model compileOne(String text) {
        var r = MoeCompiler.compile(new SourceFile("t.moe", text));
        assertThat(r.diagnostics().stream().filter(d -> d.isError()).toList()).isEmpty();
        return r.orThrow().models().getFirst();
    }

    @Test
    void deepSeekMoeRecipeMatchesHandCount() {
        Model m = MoeCompiler.compile(Path.of("../recipes/deepseek-moe.moe")).orThrow().models().getFirst();
        long d = 128;
        long vocab = 256;
        long headDim = 128 / 4;
        long attention = d * (4 * headDim) + 2 * d * (2 * headDim) + (4 * headDim) * d; // q, k, v, o
        long norms = 2 * d;
        long dense = 3 * d * 512; // swiglu: gate, up, down
        long expert = 3 * d * 64; // one fine-grained expert
        long router = 16 * d;
        long moeLayer = attention + norms + router + 2 * expert + 16 * expert;
        long total = vocab * d /* embed */ + (attention + norms + dense) + 5 * moeLayer + d /* final norm */ + vocab * d /* head */;
        assertThat(m.totalParams()).isEqualTo(total);
        assertThat(total).isEqualTo(2_780_800L);

        long moeActive = attention + norms + router + 2 * expert + 4 * expert; // shared 2 + top-4
        long active = vocab * d + (attention + norms + dense) + 5 * moeActive + d + vocab * d;
        assertThat(m.activeParams()).isEqualTo(Count.exactly(active));
        assertThat(active).isEqualTo(1_306_240L);

        // FLOPs: 2 per weight used except the embedding lookup, plus 4 * heads * head_dim * context for attention.
        long flops = 2 * (active - vocab * d) + 6 * 4 * 4 * headDim * 256;
        assertThat(m.flopsPerToken()).isEqualTo(Count.exactly(flops));
        assertThat(m.params().stream().filter(p -> p.kind() != Param.Kind.BUFFER).mapToLong(Param::numel).sum()).isEqualTo(total);
    }

    @Test
    void latentAttentionCountsItsProjectionsAndScoresOverItsOwnWidths() {
        String text = """
                model M {
                  vocab 128
                  context 32
                  dim 64
                  heads 4
                  attention mla(q_rank: 32, kv_rank: 16, nope_dim: 8, rope_dim: 4, v_dim: 16)
                  layers 1 { all: attention, swiglu(hidden: 64) }
                }
                """;
        Model m = compileOne(text);
        assertThat(m.config().headDim()).isEqualTo(12);
        // q_a, q_a_norm, q_b (4 heads of 8 + 4), kv_a, kv_a_norm, k_rope, kv_b (4 heads of 8 + 16), o (4 heads of 16)
        long attention = 32 * 64 + 32 + 48 * 32 + 16 * 64 + 16 + 4 * 64 + 96 * 16 + 64 * 64;
        assertThat(m.params().stream().filter(p -> p.name().startsWith("layers.0.attn.")).mapToLong(Param::numel).sum()).isEqualTo(attention);
        assertThat(m.params().stream().map(Param::name).toList()).containsAtLeast("layers.0.attn.q_b", "layers.0.attn.k_rope", "layers.0.attn.kv_b");
        long layer = attention + 2 * 64 + 3 * 64 * 64;
        long total = 128 * 64 + layer + 64 + 128 * 64;
        assertThat(m.totalParams()).isEqualTo(total);
        // scores over 12 dims and values of 16, per head, over the context of 32
        long flops = 2 * (total - 128 * 64) + 2 * 4 * (12 + 16) * 32;
        assertThat(m.flopsPerToken()).isEqualTo(Count.exactly(flops));

        Model direct = compileOne(text.replace("q_rank: 32, ", ""));
        assertThat(direct.params().stream().map(Param::name).toList()).contains("layers.0.attn.q");
        assertThat(direct.params().stream().map(Param::name).toList()).doesNotContain("layers.0.attn.q_a");
    }

    @Test
    void aRecurrentRoutersGruCountsItsWeightsOnceAndItsFlopsPerLayer() {
        String text = """
                model M {
                  vocab 10  context 8  dim 4  heads 1  tie_embeddings true
                  moe plain {
                    routed 2 x relu(hidden: 8)
                    router { top_k 1 }
                  }
                  moe rec {
                    routed 2 x relu(hidden: 8)
                    router { top_k 1  recurrent gru(width: 3) }
                  }
                  layers 3 { first 1: attention, plain  rest: attention, rec }
                }
                """;
        Model rec = compileOne(text);
        Model plain = compileOne(text.replace("  recurrent gru(width: 3)", ""));
        long cell = 2 * 9 * 3 + 2 * 9; // w_ih and w_hh [9, 3], b_ih and b_hh [9]
        long perLayer = 3 * 4 + 2 * 3; // gru_in [3, 4], gru_out [2, 3]
        assertThat(rec.totalParams() - plain.totalParams()).isEqualTo(cell + 2 * perLayer);
        assertThat(rec.activeParams().min() - plain.activeParams().min()).isEqualTo(cell + 2 * perLayer);
        assertThat(rec.flopsPerToken().min() - plain.flopsPerToken().min()).isEqualTo(2 * (2 * cell + 2 * perLayer));
    }

    @Test
    void attentionExpertsRunTheirKeysAndValuesForEveryTokenAndTheirQueriesAsChosen() {
        Model m = compileOne("""
                model M {
                  vocab 10  context 8  dim 4  heads 1  tie_embeddings true
                  moe heads {
                    routed 3 x attention(heads: 2, head_dim: 2)
                    router { top_k 1 }
                  }
                  moe bam {
                    routed 2 x attention(heads: 1, head_dim: 4, shared_kv: true)
                    router { mode soft }
                  }
                  layers 2 { first 1: heads, relu(hidden: 8)  rest: parallel(bam, relu(hidden: 8)) }
                }
                """);
        long d = 4;
        long embed = 10 * d;
        long norms = 2 * d + d + d; // layer 0: two norms; layer 1: one; final norm
        long ffn = 2 * 8 * d;
        long w0 = 2 * 2; // heads * head_dim
        long routers = 3 * d + 2 * d;
        long jet = 3 * 4 * w0 * d; // q, k, v, o of three experts
        long bam = 2 * w0 * d /* shared k, v */ + 2 * 2 * w0 * d /* q, o of two experts */;
        assertThat(m.totalParams()).isEqualTo(embed + norms + 2 * ffn + routers + jet + bam);
        long jetActive = 3 * 2 * w0 * d /* every expert's k, v */ + 2 * w0 * d /* one expert's q, o */;
        long active = embed + norms + 2 * ffn + routers + jetActive + bam;
        assertThat(m.activeParams()).isEqualTo(Count.exactly(active));
        // scores and values: 4 · heads · head_dim · context per chosen expert (one in layer 0, both in layer 1)
        long attention = 4 * w0 * 8 + 2 * 4 * 4 * 8;
        assertThat(m.flopsPerToken()).isEqualTo(Count.exactly(2 * (active - embed) + 2 * 10 * d + attention));
    }

    @Test
    void zeroComputeExpertsMakeActiveCountsARange() {
        Model m = compileOne("""
                model M {
                  vocab 10  context 8  dim 4  heads 1
                  moe mix {
                    routed 2 x relu(hidden: 8)
                    routed 1 x zero
                    routed 1 x constant
                    router { top_k 2 }
                  }
                  layers 1 { all: attention, mix }
                  tie_embeddings true
                }
                """);
        long ffn = 2 * 4 * 8; // relu: up, down
        long constant = 4 + 2 * 4; // vector v and the 2-way mix W_c
        long fixed = 10 * 4 + 4 + 4 * 4 * 4 + 2 * 4 + 4 * 4; // embed, final norm, attention, 2 norms, router
        assertThat(m.activeParams().min()).isEqualTo(fixed + constant); // zero + constant
        assertThat(m.activeParams().max()).isEqualTo(fixed + 2 * ffn); // both FFN experts
        assertThat(m.activeParams().expected()).isWithin(1e-9).of(fixed + 2 * (2 * ffn + constant) / 4.0);
        assertThat(m.totalParams()).isEqualTo(fixed + 2 * ffn + constant);
    }

    @Test
    void zeroComputationExpertsCountNoFlops() {
        String base = """
                model M {
                  vocab 10  context 8  dim 4  heads 1  tie_embeddings true
                  moe m {
                    routed 4 x %s
                    router { top_k 1 }
                  }
                  layers 1 { all: attention, m }
                }
                """;
        Model zeros = compileOne(base.formatted("zero"));
        Model copies = compileOne(base.formatted("copy"));
        Model ffns = compileOne(base.formatted("relu(hidden: 8)"));
        // Zero and copy experts add no weights and no FLOPs: the layer costs what its router costs.
        assertThat(zeros.flopsPerToken()).isEqualTo(copies.flopsPerToken());
        assertThat(zeros.flopsPerToken().fixed()).isTrue();
        long routedFfnFlops = 2 * (2 * 4 * 8); // one relu expert: up and down
        assertThat(ffns.flopsPerToken().min() - zeros.flopsPerToken().min()).isEqualTo(routedFfnFlops);
        assertThat(zeros.totalParams()).isEqualTo(ffns.totalParams() - 4 * (2 * 4 * 8));
    }

    @Test
    void topPRangesFromOneToMaxK() {
        Model m = compileOne("""
                model M {
                  vocab 10  context 8  dim 4  heads 1  tie_embeddings true
                  moe p {
                    routed 8 x relu(hidden: 4)
                    router { top_p 0.5  max_k 3 }
                    balance entropy(coef: 0.01)
                  }
                  layers 1 { all: attention, p }
                }
                """);
        long expert = 2 * 4 * 4;
        long fixed = 10 * 4 + 4 + 4 * 4 * 4 + 2 * 4 + 8 * 4;
        assertThat(m.activeParams()).isEqualTo(new Count(fixed + expert, fixed + 3 * expert, fixed + 3 * expert));
    }

    @Test
    void expertBiasIsABufferNotAParameter() {
        Model m = compileOne("""
                model M {
                  vocab 10  context 8  dim 4  heads 1  tie_embeddings true
                  moe b {
                    routed 4 x relu(hidden: 4)
                    router { score sigmoid  top_k 1  bias aux_free(rate: 0.001) }
                  }
                  layers 1 { all: attention, b }
                }
                """);
        assertThat(m.params().stream().filter(p -> p.name().equals("layers.0.moe.router.expert_bias")).findFirst().orElseThrow().kind())
                .isEqualTo(Param.Kind.BUFFER);
        long withoutBias = m.params().stream().filter(p -> p.kind() != Param.Kind.BUFFER).mapToLong(Param::numel).sum();
        assertThat(m.totalParams()).isEqualTo(withoutBias);
    }
}
