package dev.moe.cli;

import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;

/** .moe texts for tests, in the style of recipes/. */
final class Samples {
    private Samples() {}

    /** recipes/mixtral.moe, in canonical layout. */
    static final String VALID = """
            // Mixtral-style: every layer an MoE of 8 SwiGLU experts, top-2.
            const DIM = 128

            moe mixtral {
              routed 8 x swiglu(hidden: 2 * DIM)
              router {
                score softmax
                order softmax_then_topk
                top_k 2
                normalize true
                jitter 0.0
              }
              balance aux(coef: 0.02, scope: micro_batch)
            }

            model MixtralTiny {
              vocab 256
              context 256
              dim DIM
              heads 4
              kv_heads 2
              norm rms(eps: 1e-5)
              position rope(theta: 1_000_000)
              causal true
              tie_embeddings false
              layers 4 {
                all: attention, mixtral  // the same block everywhere
              }
            }

            train MixtralTiny {
              optimizer adamw(lr: 3e-4, beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: 0.1)
              schedule cosine(warmup: 50, min_lr: 3e-5)
              batch 8
              steps 500
              seed 42
              grad_clip 1.0
              data synthetic
            }
            """;

    /** The same declarations laid out badly, with comments in several places. */
    static final String MESSY = """
            // Mixtral-style: every layer an MoE of 8 SwiGLU experts, top-2.
            const   DIM=128
            moe mixtral {
                routed 8 x swiglu( hidden : 2*DIM )
              router { score softmax
                order softmax_then_topk
                top_k 2   // two experts per token
                normalize true
                jitter 0.0 }
              balance aux(coef: 0.02, scope: micro_batch)
            }
            model MixtralTiny {
              vocab 256  context 256
              dim DIM
              heads 4
              kv_heads 2
              /* grouped-query attention */
              norm rms(eps: 1e-5)
              position rope(theta: 1_000_000)
              causal true
              tie_embeddings false
              layers 4 { all: attention, mixtral }
            }
            """;

    /** `vocab = 256`: settings are `key value`. */
    static final String SYNTAX_ERROR = """
            model Broken {
              vocab = 256
            }
            """;

    static Path write(Path dir, String name, String text) throws IOException {
        Path p = dir.resolve(name);
        Files.writeString(p, text, StandardCharsets.UTF_8);
        return p;
    }
}
