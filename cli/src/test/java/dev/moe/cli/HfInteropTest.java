package dev.moe.cli;

import static com.google.common.truth.Truth.assertThat;
import static com.google.common.truth.Truth.assertWithMessage;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.node.ObjectNode;
import dev.moe.cli.interop.HfExport;
import dev.moe.cli.interop.HfType;
import dev.moe.cli.interop.Probe;
import dev.moe.runtime.Parameter;
import dev.moe.runtime.TrainableModel;
import dev.moe.runtime.io.SafeTensors;
import dev.moe.runtime.io.SafeTensorsFile;
import dev.moe.runtime.io.Tensor;
import java.io.IOException;
import java.io.PrintWriter;
import java.io.StringWriter;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Iterator;
import java.util.List;
import java.util.Map;
import java.util.stream.Stream;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.ValueSource;

/**
 * Import, numbers and export against {@code fixtures/hf}: tiny models made with transformers 5.17,
 * with their logits, loss and gradients (see fixtures/hf/README.md).
 */
class HfInteropTest {
    private static final Path FIXTURES = Path.of("..", "fixtures", "hf");

    private static Recipes.Loaded importAndOpen(String type, Path out) throws Exception {
        Path dir = type.contains("/") ? Path.of(type) : FIXTURES.resolve(type);
        Cli.Run run = Cli.run("import", "hf", dir.toString(), "--out", out.toString(), "--threads", "1");
        assertWithMessage("%s", run).that(run.exit()).isEqualTo(0);
        return Checkpoints.open(out, 1, new PrintWriter(new StringWriter()));
    }

    private static int[][] inputIds(SafeTensorsFile ref) throws IOException {
        long[] shape = ref.tensors().get("input_ids").shape();
        byte[] raw = ref.readBytes("input_ids");
        java.nio.LongBuffer b = java.nio.ByteBuffer.wrap(raw).order(java.nio.ByteOrder.LITTLE_ENDIAN).asLongBuffer();
        int[][] ids = new int[(int) shape[0]][(int) shape[1]];
        for (int i = 0; i < ids.length; i++) {
            for (int j = 0; j < ids[i].length; j++) {
                ids[i][j] = Math.toIntExact(b.get(i * ids[i].length + j));
            }
        }
        return ids;
    }

    /** max |a - b| / max |b|: the error relative to the tensor's scale. */
    private static double relError(float[] actual, float[] expected) {
        assertThat(actual.length).isEqualTo(expected.length);
        double diff = 0;
        double scale = 0;
        for (int i = 0; i < expected.length; i++) {
            diff = Math.max(diff, Math.abs((double) actual[i] - expected[i]));
            scale = Math.max(scale, Math.abs(expected[i]));
        }
        return diff / Math.max(scale, 1e-30);
    }

    @ParameterizedTest
    @ValueSource(strings = {"mixtral", "qwen2_moe", "olmoe", "qwen3_moe", "deepseek_v3"})
    void logitsLossAndGradientsMatchTransformers(String type, @TempDir Path tmp) throws Exception {
        Recipes.Loaded loaded = importAndOpen(type, tmp.resolve("imported"));
        TrainableModel model = loaded.instance();
        try (SafeTensorsFile ref = SafeTensors.open(FIXTURES.resolve(type).resolve("reference.safetensors"))) {
            int[][] ids = inputIds(ref);
            StringBuilder measured = new StringBuilder();
            double logitsError = relError(Probe.logits(model, ids), ref.readF32("logits"));
            measured.append(String.format("%s logits %.3g%n", type, logitsError));
            assertWithMessage("%s logits", type).that(logitsError).isLessThan(1e-5);

            Probe.Loss loss = Probe.gradients(model, ids);
            double refLoss = ref.readF32("loss")[0];
            assertWithMessage("%s loss", type).that(Math.abs(loss.total() - refLoss) / refLoss).isLessThan(1e-6);
            measured.append(String.format("%s loss %.3g%n", type, Math.abs(loss.total() - refLoss) / refLoss));
            assertThat(loss.total()).isEqualTo(loss.crossEntropy()); // no balancing term, as transformers without router logits

            // Our gradients under transformers' names and layout, one for each reference gradient.
            List<Tensor> grads = HfExport.tensors(HfType.forModelType(type), Probe.gradientsAsParameters(model.parameters()),
                    HfType.Layout.MODULE);
            long refGrads = ref.tensors().keySet().stream().filter(n -> n.startsWith("grad.")).count();
            assertThat(grads).hasSize((int) refGrads);
            // transformers' nn.Embedding(padding_idx = pad_token_id) gives the pad row no gradient
            // (OLMoE sets one); our embedding has no padding index, so that row is left out.
            JsonNode pad = new ObjectMapper().readTree(FIXTURES.resolve(type).resolve("config.json").toFile()).path("pad_token_id");
            for (Tensor g : grads) {
                float[] expected = ref.readF32("grad." + g.name());
                float[] actual = g.data().toArray(java.lang.foreign.ValueLayout.JAVA_FLOAT_UNALIGNED);
                if (g.name().equals("model.embed_tokens.weight") && pad.isInt()) {
                    int dim = (int) g.shape()[1];
                    for (int i = pad.asInt() * dim; i < (pad.asInt() + 1) * dim; i++) {
                        assertThat(expected[i]).isEqualTo(0f);
                        actual[i] = 0f;
                    }
                }
                assertWithMessage("%s gradient of %s", type, g.name()).that(relError(actual, expected)).isLessThan(1e-4);
                measured.append(String.format("%s gradient %s %.3g%n", type, g.name(), relError(actual, expected)));
            }
            // The errors measured, for reading: target/hf-interop/<type>.txt
            Files.createDirectories(Path.of("target", "hf-interop"));
            Files.writeString(Path.of("target", "hf-interop", type + ".txt"), measured);
        }
    }

    @ParameterizedTest
    @ValueSource(strings = {"mixtral", "qwen2_moe", "olmoe", "qwen3_moe", "deepseek_v3"})
    void exportOfImportGivesBackTheCheckpoint(String type, @TempDir Path tmp) throws Exception {
        Cli.Run run = Cli.run("import", "hf", FIXTURES.resolve(type).toString(), "--out", tmp.resolve("ours").toString(), "--threads", "1");
        assertWithMessage("%s", run).that(run.exit()).isEqualTo(0);
        run = Cli.run("export", "hf", tmp.resolve("ours").toString(), "--out", tmp.resolve("back").toString(), "--threads", "1");
        assertWithMessage("%s", run).that(run.exit()).isEqualTo(0);
        try (SafeTensorsFile original = SafeTensors.open(FIXTURES.resolve(type).resolve("model.safetensors"));
                SafeTensorsFile back = SafeTensors.open(tmp.resolve("back").resolve("model.safetensors"))) {
            assertThat(back.tensors().keySet()).containsExactlyElementsIn(original.tensors().keySet());
            for (String name : original.tensors().keySet()) {
                assertWithMessage(name).that(back.tensors().get(name).shape()).isEqualTo(original.tensors().get(name).shape());
                assertWithMessage(name).that(back.readBytes(name)).isEqualTo(original.readBytes(name));
            }
        }
        ObjectMapper json = new ObjectMapper();
        JsonNode original = json.readTree(FIXTURES.resolve(type).resolve("config.json").toFile());
        JsonNode back = json.readTree(tmp.resolve("back").resolve("config.json").toFile());
        for (Iterator<Map.Entry<String, JsonNode>> it = original.properties().iterator(); it.hasNext();) {
            Map.Entry<String, JsonNode> e = it.next();
            if (e.getKey().equals("head_dim") && e.getValue().isNull()) { // null means hidden_size / heads
                assertThat(back.get("head_dim").asInt()).isEqualTo(original.get("hidden_size").asInt() / original.get("num_attention_heads").asInt());
                continue;
            }
            assertWithMessage("%s: %s", type, e.getKey()).that(back.get(e.getKey())).isEqualTo(e.getValue());
        }
    }

    @Test
    void mixtralsRouterJitterBecomesTheRoutersJitterAndGoesBack(@TempDir Path tmp) throws Exception {
        Path dir = copy("mixtral", tmp.resolve("jitter"));
        ObjectNode config = (ObjectNode) new ObjectMapper().readTree(dir.resolve("config.json").toFile());
        config.put("router_jitter_noise", 0.125);
        Files.writeString(dir.resolve("config.json"), config.toString());
        Cli.Run run = Cli.run("import", "hf", dir.toString(), "--out", tmp.resolve("ours").toString(), "--threads", "1");
        assertWithMessage("%s", run).that(run.exit()).isEqualTo(0);
        assertThat(Files.readString(tmp.resolve("ours").resolve("mixtral.moe"))).contains("jitter 0.125");
        run = Cli.run("export", "hf", tmp.resolve("ours").toString(), "--out", tmp.resolve("back").toString(), "--threads", "1");
        assertWithMessage("%s", run).that(run.exit()).isEqualTo(0);
        assertThat(new ObjectMapper().readTree(tmp.resolve("back").resolve("config.json").toFile()).get("router_jitter_noise").asDouble())
                .isEqualTo(0.125);

        config.put("router_jitter_noise", 1.5);
        Files.writeString(dir.resolve("config.json"), config.toString());
        run = importFails(dir, tmp.resolve("out"));
        assertThat(run.err()).contains("`router_jitter_noise` must be in [0, 1), not 1.5");
    }

    @Test
    void shardedAndLegacyLayoutsImportTheSameWeights(@TempDir Path tmp) throws Exception {
        Map<String, float[]> reference = weights(importAndOpen("mixtral", tmp.resolve("a")));
        // transformers 5's fused module layout, written from the imported weights.
        Recipes.Loaded loaded = Checkpoints.open(tmp.resolve("a"), 1, new PrintWriter(new StringWriter()));
        Path fused = Files.createDirectories(tmp.resolve("mixtral-fused"));
        Files.copy(FIXTURES.resolve("mixtral").resolve("config.json"), fused.resolve("config.json"));
        List<Tensor> fusedTensors = HfExport.tensors(HfType.forModelType("mixtral"), loaded.instance().parameters(), HfType.Layout.MODULE);
        assertThat(fusedTensors.stream().map(Tensor::name).toList()).contains("model.layers.1.mlp.experts.gate_up_proj");
        SafeTensors.write(fused.resolve("model.safetensors"), fusedTensors);
        for (String variant : List.of("mixtral-sharded", "mixtral-legacy", "mixtral-fused")) {
            Path dir = variant.equals("mixtral-fused") ? fused : FIXTURES.resolve(variant);
            Cli.Run run = Cli.run("import", "hf", dir.toString(), "--out", tmp.resolve(variant + "-out").toString(), "--threads", "1");
            assertWithMessage("%s", run).that(run.exit()).isEqualTo(0);
            Map<String, float[]> other = weights(Checkpoints.open(tmp.resolve(variant + "-out"), 1, new PrintWriter(new StringWriter())));
            assertThat(other.keySet()).containsExactlyElementsIn(reference.keySet());
            reference.forEach((name, v) -> assertWithMessage("%s %s", variant, name).that(other.get(name)).isEqualTo(v));
        }
    }

    private static Map<String, float[]> weights(Recipes.Loaded l) {
        Map<String, float[]> m = new java.util.LinkedHashMap<>();
        for (Parameter p : l.instance().parameters()) {
            m.put(p.name(), p.values());
        }
        return m;
    }

    @Test
    void logitsAndGradsCommandsWriteWhatTheModelComputes(@TempDir Path tmp) throws Exception {
        Recipes.Loaded loaded = importAndOpen("mixtral", tmp.resolve("m"));
        String recipe = tmp.resolve("m").resolve("mixtral.moe").toString();
        String weights = tmp.resolve("m").resolve("last.safetensors").toString();
        Cli.Run run = Cli.run("logits", recipe, "--weights", weights, "--tokens", "5 9 1 100; 7 7 2 3", "--out", tmp.resolve("l.safetensors").toString());
        assertWithMessage("%s", run).that(run.exit()).isEqualTo(0);
        run = Cli.run("grads", recipe, "--weights", weights, "--tokens", "5 9 1 100; 7 7 2 3", "--out", tmp.resolve("g.safetensors").toString());
        assertWithMessage("%s", run).that(run.exit()).isEqualTo(0);
        int[][] ids = {{5, 9, 1, 100}, {7, 7, 2, 3}};
        try (SafeTensorsFile l = SafeTensors.open(tmp.resolve("l.safetensors"));
                SafeTensorsFile g = SafeTensors.open(tmp.resolve("g.safetensors"))) {
            assertThat(l.tensors().get("logits").shape()).isEqualTo(new long[] {2, 4, 128});
            assertThat(l.readF32("logits")).isEqualTo(Probe.logits(loaded.instance(), ids));
            Probe.Loss loss = Probe.gradients(loaded.instance(), ids);
            assertThat(g.readF32("loss")[0]).isEqualTo((float) loss.total());
            for (Parameter p : loaded.instance().parameters()) {
                float[] grad = Arrays.copyOfRange(p.grad(), p.offset(), p.offset() + p.size());
                assertWithMessage(p.name()).that(g.readF32("grad." + p.name())).isEqualTo(grad);
            }
        }
        run = Cli.run("logits", recipe, "--weights", weights, "--tokens", "1 2; 3", "--out", tmp.resolve("x.safetensors").toString());
        assertThat(run.exit()).isEqualTo(1);
        assertThat(run.err()).contains("differ in length");
        run = Cli.run("logits", recipe, "--weights", weights, "--tokens", "1 999", "--out", tmp.resolve("x.safetensors").toString());
        assertThat(run.exit()).isEqualTo(1);
        assertThat(run.err()).contains("outside the vocabulary");
    }

    // ---- bad input: a clear message naming the file and the tensor, exit 1, nothing written ----

    private static Path copy(String type, Path to) throws IOException {
        Files.createDirectories(to);
        try (Stream<Path> files = Files.list(FIXTURES.resolve(type))) {
            for (Path f : files.toList()) {
                Files.copy(f, to.resolve(f.getFileName()));
            }
        }
        return to;
    }

    private static Cli.Run importFails(Path dir, Path out) {
        Cli.Run run = Cli.run("import", "hf", dir.toString(), "--out", out.toString(), "--threads", "1");
        assertWithMessage("%s", run).that(run.exit()).isEqualTo(1);
        assertThat(run.err()).doesNotContain("internal error");
        assertThat(Files.exists(out)).isFalse();
        return run;
    }

    @Test
    void refusesUnsupportedTypesListingTheSupportedOnes(@TempDir Path tmp) throws IOException {
        Path v2 = copy("deepseek_v3", tmp.resolve("v2"));
        ObjectNode v2config = (ObjectNode) new ObjectMapper().readTree(v2.resolve("config.json").toFile());
        v2config.put("model_type", "deepseek_v2");
        Files.writeString(v2.resolve("config.json"), v2config.toString());
        Cli.Run run = importFails(v2, tmp.resolve("out"));
        assertThat(run.err()).contains("DeepSeek-V2's softmax router");
        assertThat(run.err()).contains("supported: mixtral, qwen2_moe, olmoe, qwen3_moe, deepseek_v3");
        Path dir = copy("mixtral", tmp.resolve("llama"));
        ObjectNode config = (ObjectNode) new ObjectMapper().readTree(dir.resolve("config.json").toFile());
        config.put("model_type", "llama");
        Files.writeString(dir.resolve("config.json"), config.toString());
        run = importFails(dir, tmp.resolve("out"));
        assertThat(run.err()).contains("model_type `llama` is not supported; supported: mixtral, qwen2_moe, olmoe, qwen3_moe, deepseek_v3");
    }

    @Test
    void refusesDeepSeekConfigsAndTensorsThatDoNotFit(@TempDir Path tmp) throws IOException {
        // kv_lora_rank 12: the recipe's kv_a and k_rope need 12 + 8 rows of kv_a_proj_with_mqa, the file has 24
        Path dir = copy("deepseek_v3", tmp.resolve("rank"));
        ObjectNode config = (ObjectNode) new ObjectMapper().readTree(dir.resolve("config.json").toFile());
        config.put("kv_lora_rank", 12);
        Files.writeString(dir.resolve("config.json"), config.toString());
        Cli.Run run = importFails(dir, tmp.resolve("out"));
        assertThat(run.err()).contains("tensor `model.layers.0.self_attn.kv_a_proj_with_mqa.weight` has shape [24, 64], the recipe's "
                + "`layers.0.attn.kv_a` needs [20, 64]");

        config.put("kv_lora_rank", 16);
        config.remove("qk_rope_head_dim");
        Files.writeString(dir.resolve("config.json"), config.toString());
        run = importFails(dir, tmp.resolve("out"));
        assertThat(run.err()).contains("`qk_rope_head_dim` must be a positive integer (it is missing)");

        config.put("qk_rope_head_dim", 8);
        ((ObjectNode) config.get("rope_parameters")).put("rope_type", "yarn");
        Files.writeString(dir.resolve("config.json"), config.toString());
        run = importFails(dir, tmp.resolve("out"));
        assertThat(run.err()).contains("rope_type `yarn` is not supported");
    }

    @Test
    void refusesMissingOrMisshapenTensorsAndBrokenFiles(@TempDir Path tmp) throws IOException {
        // A tensor of the wrong shape: the config says more experts than the file holds.
        Path dir = copy("mixtral", tmp.resolve("shape"));
        ObjectNode config = (ObjectNode) new ObjectMapper().readTree(dir.resolve("config.json").toFile());
        config.put("num_local_experts", 5);
        Files.writeString(dir.resolve("config.json"), config.toString());
        Cli.Run run = importFails(dir, tmp.resolve("out"));
        assertThat(run.err()).contains("tensor `model.layers.0.block_sparse_moe.gate.weight` has shape [4, 64], the recipe's "
                + "`layers.0.moe.router.weight` needs [5, 64]");

        // A config the language rejects: more experts per token than experts.
        config.put("num_experts_per_tok", 9);
        Files.writeString(dir.resolve("config.json"), config.toString());
        run = importFails(dir, tmp.resolve("out"));
        assertThat(run.err()).contains("exceeds the routed experts");
        assertThat(run.err()).contains("declares a model that the checker rejects");
        config.put("num_experts_per_tok", 2);

        // An absurd config is refused by its tensors' shapes before any memory is taken for it.
        config.put("num_local_experts", 4);
        config.put("hidden_size", 1 << 20);
        config.put("num_hidden_layers", 1000);
        Files.writeString(dir.resolve("config.json"), config.toString());
        run = importFails(dir, tmp.resolve("out"));
        assertThat(run.err()).contains("tensor `model.embed_tokens.weight` has shape [128, 64], the recipe's `embed.weight` needs [128, 1048576]");

        // A missing tensor.
        dir = copy("mixtral", tmp.resolve("missing"));
        List<Tensor> kept = new ArrayList<>();
        try (SafeTensorsFile f = SafeTensors.open(FIXTURES.resolve("mixtral").resolve("model.safetensors"))) {
            for (String n : f.tensors().keySet()) {
                if (!n.equals("model.layers.1.self_attn.k_proj.weight")) {
                    kept.add(Tensor.f32(n, f.tensors().get(n).shape(), f.readF32(n)));
                }
            }
        }
        SafeTensors.write(dir.resolve("model.safetensors"), kept);
        run = importFails(dir, tmp.resolve("out"));
        assertThat(run.err()).contains("no tensor for `layers.1.attn.k`: looked for `model.layers.1.self_attn.k_proj.weight`");

        // A corrupt file.
        dir = copy("mixtral", tmp.resolve("corrupt"));
        byte[] bytes = Files.readAllBytes(dir.resolve("model.safetensors"));
        Files.write(dir.resolve("model.safetensors"), Arrays.copyOf(bytes, bytes.length / 2));
        run = importFails(dir, tmp.resolve("out"));
        assertThat(run.err()).contains("model.safetensors");

        // A sharded index pointing to a missing shard.
        dir = copy("mixtral-sharded", tmp.resolve("shards"));
        Files.delete(dir.resolve("model-00003-of-00004.safetensors"));
        run = importFails(dir, tmp.resolve("out"));
        assertThat(run.err()).contains("model-00003-of-00004.safetensors, which does not exist");

        // An index pointing outside the directory.
        dir = copy("mixtral-sharded", tmp.resolve("escape"));
        String index = Files.readString(dir.resolve("model.safetensors.index.json"));
        Files.writeString(dir.resolve("model.safetensors.index.json"), index.replaceFirst("model-00001-of-00004", "../x/model-00001-of-00004"));
        run = importFails(dir, tmp.resolve("out"));
        assertThat(run.err()).contains("not a file of");
    }

    @Test
    void exportRefusesAModelTheTypeCannotHold(@TempDir Path tmp) throws IOException {
        Path recipe = tmp.resolve("m.moe");
        Files.writeString(recipe, """
                model M {
                  vocab 256
                  context 16
                  dim 32
                  heads 2
                  moe m {
                    routed 4 x swiglu(hidden: 16)
                    router { score sigmoid top_k 2 }
                  }
                  layers 1 { all: attention, m }
                }
                train M { steps 1 batch 1 }
                """);
        Cli.Run run = Cli.run("train", recipe.toString(), "--out", tmp.resolve("run").toString(), "--seq", "8", "--threads", "1");
        assertWithMessage("%s", run).that(run.exit()).isEqualTo(0);
        run = Cli.run("export", "hf", tmp.resolve("run").toString(), "--out", tmp.resolve("x").toString());
        assertThat(run.exit()).isEqualTo(1);
        assertThat(run.err()).contains("choose the model type with --type (mixtral, qwen2_moe, olmoe, qwen3_moe, deepseek_v3)");
        run = Cli.run("export", "hf", tmp.resolve("run").toString(), "--out", tmp.resolve("x").toString(), "--type", "mixtral");
        assertThat(run.exit()).isEqualTo(1);
        assertThat(run.err()).contains("cannot be exported as `mixtral`: layer 0 is");
        assertThat(Files.exists(tmp.resolve("x"))).isFalse();
    }

    @Test
    void generateUsesATokenizerJsonBesideTheCheckpoint(@TempDir Path tmp) throws Exception {
        Path recipe = tmp.resolve("m.moe");
        Files.writeString(recipe, """
                model M {
                  vocab 400
                  context 16
                  dim 16
                  heads 2
                  moe m {
                    routed 2 x swiglu(hidden: 8)
                    router { top_k 1 }
                  }
                  layers 1 { all: attention, m }
                }
                train M { steps 1 batch 1 }
                """);
        Cli.Run run = Cli.run("train", recipe.toString(), "--out", tmp.resolve("run").toString(), "--seq", "8", "--threads", "1");
        assertWithMessage("%s", run).that(run.exit()).isEqualTo(0);
        Files.copy(FIXTURES.resolve("tokenizer").resolve("tokenizer.json"), tmp.resolve("run").resolve("tokenizer.json"));
        dev.moe.runtime.data.BpeTokenizer tok = dev.moe.runtime.data.BpeTokenizer.load(tmp.resolve("run").resolve("tokenizer.json"));
        run = Cli.run("generate", tmp.resolve("run").toString(), "--prompt", "The quick brown fox", "--max-tokens", "6", "--temperature", "0",
                "--threads", "1");
        assertWithMessage("%s", run).that(run.exit()).isEqualTo(0);
        assertThat(run.out()).startsWith("The quick brown fox");
        // Greedy decoding from the same weights, token by token, decoded by the BPE tokenizer.
        Recipes.Loaded loaded = Checkpoints.open(tmp.resolve("run"), 1, new PrintWriter(new StringWriter()));
        List<Integer> ids = new ArrayList<>();
        for (int id : tok.encode("The quick brown fox")) {
            ids.add(id);
        }
        int prompt = ids.size();
        for (int step = 0; step < 6; step++) {
            float[] logits = loaded.instance().lastLogits(ids.stream().mapToInt(Integer::intValue).toArray(), 1, ids.size());
            int best = 0;
            for (int v = 1; v < logits.length; v++) {
                best = logits[v] > logits[best] ? v : best;
            }
            ids.add(best);
        }
        String expected = tok.decode(ids.stream().mapToInt(Integer::intValue).toArray());
        assertThat(run.out().strip()).isEqualTo(expected.strip());

        // A tokenizer larger than the model's vocabulary is refused.
        Cli.Run small = Cli.run("import", "hf", FIXTURES.resolve("mixtral").toString(), "--out", tmp.resolve("mx").toString(), "--threads", "1");
        assertThat(small.exit()).isEqualTo(0);
        Files.copy(FIXTURES.resolve("tokenizer").resolve("tokenizer.json"), tmp.resolve("mx").resolve("tokenizer.json"));
        run = Cli.run("generate", tmp.resolve("mx").toString(), "--prompt", "hi", "--threads", "1");
        assertThat(run.exit()).isEqualTo(1);
        assertThat(run.err()).contains("has 400 tokens, more than the model's vocabulary (128)");
        Files.delete(tmp.resolve("mx").resolve("tokenizer.json"));
        run = Cli.run("generate", tmp.resolve("mx").toString(), "--prompt", "café", "--threads", "1");
        assertThat(run.exit()).isEqualTo(1);
        assertThat(run.err()).contains("the prompt has token 195, outside the model's vocabulary (128)");
    }

    /** Latent attention with a direct query projection and unequal widths; a sigmoid router with groups, bias and scaling. */
    @Test
    void aTrainedDeepSeekModelExportsAndImportsBackUnchanged(@TempDir Path tmp) throws Exception {
        Path recipe = tmp.resolve("d.moe");
        Files.writeString(recipe, """
                model D {
                  vocab 256
                  context 16
                  dim 16
                  heads 2
                  attention mla(kv_rank: 6, nope_dim: 4, rope_dim: 4, v_dim: 6)
                  ffn dense = swiglu(hidden: 24)
                  moe m {
                    shared 1 x swiglu(hidden: 16)
                    routed 4 x swiglu(hidden: 8)
                    router { score sigmoid  top_k 2  normalize true  scale 1.5  bias aux_free(rate: 0.001)  groups limited(groups: 2, top: 1) }
                  }
                  layers 3 { first 1: attention, dense  rest: attention, m }
                }
                train D { steps 2 batch 2 }
                """);
        Cli.Run run = Cli.run("train", recipe.toString(), "--out", tmp.resolve("run").toString(), "--seq", "8", "--threads", "1");
        assertWithMessage("%s", run).that(run.exit()).isEqualTo(0);
        run = Cli.run("export", "hf", tmp.resolve("run").toString(), "--type", "deepseek_v3", "--out", tmp.resolve("hf").toString());
        assertWithMessage("%s", run).that(run.exit()).isEqualTo(0);
        JsonNode config = new ObjectMapper().readTree(tmp.resolve("hf").resolve("config.json").toFile());
        assertThat(config.get("q_lora_rank").isNull()).isTrue();
        assertThat(config.get("first_k_dense_replace").asInt()).isEqualTo(1);
        assertThat(config.get("n_shared_experts").asInt()).isEqualTo(2);
        assertThat(config.get("routed_scaling_factor").asDouble()).isEqualTo(1.5);
        try (SafeTensorsFile f = SafeTensors.open(tmp.resolve("hf").resolve("model.safetensors"))) {
            assertThat(f.tensors().get("model.layers.0.self_attn.q_proj.weight").shape()).isEqualTo(new long[] {16, 16});
            assertThat(f.tensors().get("model.layers.0.self_attn.kv_a_proj_with_mqa.weight").shape()).isEqualTo(new long[] {10, 16});
            assertThat(f.tensors()).containsKey("model.layers.1.mlp.gate.e_score_correction_bias");
        }
        run = Cli.run("import", "hf", tmp.resolve("hf").toString(), "--out", tmp.resolve("back").toString(), "--threads", "1");
        assertWithMessage("%s", run).that(run.exit()).isEqualTo(0);
        Recipes.Loaded trained = Checkpoints.open(tmp.resolve("run"), 1, new PrintWriter(new StringWriter()));
        Recipes.Loaded back = Checkpoints.open(tmp.resolve("back"), 1, new PrintWriter(new StringWriter()));
        assertThat(weights(back).keySet()).containsExactlyElementsIn(weights(trained).keySet());
        weights(trained).forEach((name, v) -> assertWithMessage(name).that(weights(back).get(name)).isEqualTo(v));
        int[][] ids = {{3, 1, 4, 1, 5, 9, 2, 6}};
        assertThat(Probe.logits(back.instance(), ids)).isEqualTo(Probe.logits(trained.instance(), ids));

        // Standard attention is no DeepSeek-V3.
        run = Cli.run("export", "hf", tmp.resolve("run").toString(), "--type", "qwen2_moe", "--out", tmp.resolve("x").toString());
        assertThat(run.exit()).isEqualTo(1);
        assertThat(run.err()).contains("it has latent attention, which `qwen2_moe` does not");
    }

    @Test
    void aTrainedModelExportsAsAFamilyAndImportsBackUnchanged(@TempDir Path tmp) throws Exception {
        Path recipe = tmp.resolve("q.moe");
        Files.writeString(recipe, """
                model Q {
                  vocab 256
                  context 16
                  dim 16
                  heads 4
                  kv_heads 2
                  head_dim 6
                  qkv_bias true
                  ffn dense = swiglu(hidden: 24)
                  moe m {
                    shared 1 x swiglu(hidden: 16, gate: sigmoid)
                    routed 4 x swiglu(hidden: 8)
                    router { top_k 2 }
                    balance aux(coef: 0.01)
                  }
                  layers 3 { first 1: attention, dense  rest: attention, m }
                }
                train Q { steps 2 batch 2 }
                """);
        Cli.Run run = Cli.run("train", recipe.toString(), "--out", tmp.resolve("run").toString(), "--seq", "8", "--threads", "1");
        assertWithMessage("%s", run).that(run.exit()).isEqualTo(0);
        run = Cli.run("export", "hf", tmp.resolve("run").toString(), "--type", "qwen2_moe", "--out", tmp.resolve("hf").toString());
        assertWithMessage("%s", run).that(run.exit()).isEqualTo(0);
        JsonNode config = new ObjectMapper().readTree(tmp.resolve("hf").resolve("config.json").toFile());
        assertThat(config.get("mlp_only_layers").toString()).isEqualTo("[0]");
        assertThat(config.get("head_dim").asInt()).isEqualTo(6);
        run = Cli.run("import", "hf", tmp.resolve("hf").toString(), "--out", tmp.resolve("back").toString(), "--threads", "1");
        assertWithMessage("%s", run).that(run.exit()).isEqualTo(0);
        Recipes.Loaded trained = Checkpoints.open(tmp.resolve("run"), 1, new PrintWriter(new StringWriter()));
        Recipes.Loaded back = Checkpoints.open(tmp.resolve("back"), 1, new PrintWriter(new StringWriter()));
        assertThat(weights(back).keySet()).containsExactlyElementsIn(weights(trained).keySet());
        weights(trained).forEach((name, v) -> assertWithMessage(name).that(weights(back).get(name)).isEqualTo(v));
        int[][] ids = {{3, 1, 4, 1, 5, 9, 2, 6}};
        assertThat(Probe.logits(back.instance(), ids)).isEqualTo(Probe.logits(trained.instance(), ids));

        // The same model is no OLMoE (a shared expert, q/k/v biases): export says which setting differs.
        run = Cli.run("export", "hf", tmp.resolve("run").toString(), "--type", "olmoe", "--out", tmp.resolve("x").toString());
        assertThat(run.exit()).isEqualTo(1);
        assertThat(run.err()).contains("cannot be exported as `olmoe`: its settings differ from what the family can say: qkNorm false (the config gives true), qkvBias true (the config gives false)");
        assertThat(Files.exists(tmp.resolve("x"))).isFalse();
    }

    @Test
    void bf16WeightsImportAsTheirFloatValues(@TempDir Path tmp) throws Exception {
        Path dir = Files.createDirectories(tmp.resolve("bf16"));
        Files.copy(FIXTURES.resolve("mixtral").resolve("config.json"), dir.resolve("config.json"));
        List<Tensor> halves = new ArrayList<>();
        Map<String, float[]> rounded = new java.util.HashMap<>();
        try (SafeTensorsFile f = SafeTensors.open(FIXTURES.resolve("mixtral").resolve("model.safetensors"))) {
            for (String n : f.tensors().keySet()) {
                float[] v = f.readF32(n);
                byte[] b = new byte[2 * v.length];
                float[] r = new float[v.length];
                for (int i = 0; i < v.length; i++) {
                    int bits = Float.floatToRawIntBits(v[i]);
                    int top = (bits + 0x7FFF + ((bits >>> 16) & 1)) >>> 16; // round to nearest even
                    b[2 * i] = (byte) top;
                    b[2 * i + 1] = (byte) (top >>> 8);
                    r[i] = Float.intBitsToFloat(top << 16);
                }
                halves.add(Tensor.of(n, dev.moe.runtime.io.DType.BF16, f.tensors().get(n).shape(), b));
                rounded.put(n, r);
            }
        }
        SafeTensors.write(dir.resolve("model.safetensors"), halves);
        Map<String, float[]> imported = weights(importAndOpen("mixtral", tmp.resolve("f32")));
        Cli.Run run = Cli.run("import", "hf", dir.toString(), "--out", tmp.resolve("out").toString(), "--threads", "1");
        assertWithMessage("%s", run).that(run.exit()).isEqualTo(0);
        Map<String, float[]> fromBf16 = weights(Checkpoints.open(tmp.resolve("out"), 1, new PrintWriter(new StringWriter())));
        assertThat(fromBf16.get("layers.1.attn.q")).isEqualTo(rounded.get("model.layers.1.self_attn.q_proj.weight"));
        assertThat(fromBf16.get("layers.0.moe.experts.2.down")).isEqualTo(rounded.get("model.layers.0.block_sparse_moe.experts.2.w2.weight"));
        assertThat(fromBf16.get("layers.1.attn.q")).isNotEqualTo(imported.get("layers.1.attn.q"));
    }

    @Test
    void tiedEmbeddingsIgnoreASavedLmHead(@TempDir Path tmp) throws Exception {
        Path dir = copy("mixtral", tmp.resolve("tied"));
        ObjectNode config = (ObjectNode) new ObjectMapper().readTree(dir.resolve("config.json").toFile());
        config.put("tie_word_embeddings", true);
        Files.writeString(dir.resolve("config.json"), config.toString());
        Recipes.Loaded loaded = importAndOpen(dir.toString(), tmp.resolve("out"));
        assertThat(Files.readString(tmp.resolve("out").resolve("mixtral.moe"))).contains("tie_embeddings true");
        assertThat(weights(loaded)).doesNotContainKey("head.weight");
    }
}
