package dev.moe.runtime.data;

import static com.google.common.truth.Truth.assertThat;
import static com.google.common.truth.Truth.assertWithMessage;
import static org.junit.jupiter.api.Assertions.assertThrows;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/** Against {@code fixtures/hf/tokenizer}: ids and decodings that Hugging Face {@code tokenizers} gave. */
class BpeTokenizerTest {
    private static final Path DIR = Path.of("..", "fixtures", "hf", "tokenizer");
    /** SentencePiece-style BPE with byte fallback, as transformers converts Mistral's and Llama 2's. */
    private static final Path SP = Path.of("..", "fixtures", "hf", "tokenizer-sp");

    @org.junit.jupiter.params.ParameterizedTest
    @org.junit.jupiter.params.provider.ValueSource(strings = {"tokenizer", "tokenizer-sp"})
    void encodesAndDecodesExactlyAsTokenizers(String fixture) throws IOException {
        Path dir = DIR.resolveSibling(fixture);
        BpeTokenizer tok = BpeTokenizer.load(dir.resolve("tokenizer.json"));
        JsonNode expected = new ObjectMapper().readTree(dir.resolve("expected.json").toFile());
        assertThat(expected.size()).isAtLeast(8);
        for (JsonNode sample : expected) {
            String text = sample.get("text").asText();
            int[] ids = new int[sample.get("ids").size()];
            for (int i = 0; i < ids.length; i++) {
                ids[i] = sample.get("ids").get(i).asInt();
            }
            assertWithMessage("%s: %s", fixture, text).that(tok.encode(text)).isEqualTo(ids);
            assertWithMessage("%s: %s", fixture, text).that(tok.decode(ids)).isEqualTo(sample.get("decoded").asText());
        }
    }

    /**
     * Added tokens that take the whitespace on their left or right, one that matches only as a whole
     * word, and a template that puts a BOS first: ids as tokenizers 0.23.2 gives them
     * (fixtures/hf/make_tokenizer_flags.py).
     */
    @Test
    void addedTokenFlagsAndThePostProcessorAsTokenizers() throws IOException {
        Path dir = Path.of("..", "fixtures", "hf", "tokenizer-flags");
        BpeTokenizer tok = BpeTokenizer.load(dir.resolve("tokenizer.json"));
        for (JsonNode sample : new ObjectMapper().readTree(dir.resolve("expected.json").toFile())) {
            String text = sample.get("text").asText();
            assertWithMessage("%s", text).that(tok.encode(text)).isEqualTo(ints(sample.get("ids")));
            assertWithMessage("%s", text).that(tok.encode(text, false)).isEqualTo(ints(sample.get("ids")));
            assertWithMessage("%s with special tokens", text).that(tok.encode(text, true)).isEqualTo(ints(sample.get("ids_with_special")));
            assertWithMessage("%s", text).that(tok.decode(tok.encode(text))).isEqualTo(sample.get("decoded").asText());
        }
        // Without a post-processor nothing is added.
        BpeTokenizer plain = BpeTokenizer.load(DIR.resolve("tokenizer.json"));
        assertThat(plain.encode("The quick", true)).isEqualTo(plain.encode("The quick"));
    }

    @Test
    void postProcessorsInASequenceWrapAndUnknownOnesRefuseOnlySpecialTokens(@TempDir Path tmp) throws IOException {
        com.fasterxml.jackson.databind.node.ObjectNode root = (com.fasterxml.jackson.databind.node.ObjectNode) new ObjectMapper()
                .readTree(DIR.resolve("tokenizer.json").toFile());
        root.set("post_processor", new ObjectMapper().readTree("""
                {"type": "Sequence", "processors": [
                  {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
                  {"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": "</s>", "type_id": 0}}], "pair": [],
                   "special_tokens": {"<s>": {"id": "<s>", "ids": [0], "tokens": ["<|endoftext|>"]}, "</s>": {"id": "</s>", "ids": [1], "tokens": ["<|pad|>"]}}},
                  {"type": "RobertaProcessing", "sep": ["<|user|>", 399], "cls": ["<|pad|>", 1], "trim_offsets": true, "add_prefix_space": false}]}
                """));
        Path file = tmp.resolve("tokenizer.json");
        Files.writeString(file, root.toString());
        BpeTokenizer tok = BpeTokenizer.load(file);
        int[] ids = tok.encode("The quick");
        int[] wrapped = tok.encode("The quick", true);
        assertThat(wrapped.length).isEqualTo(ids.length + 4);
        assertThat(new int[] {wrapped[0], wrapped[1], wrapped[wrapped.length - 2], wrapped[wrapped.length - 1]}).isEqualTo(new int[] {1, 0, 1, 399});

        root.set("post_processor", new ObjectMapper().readTree("{\"type\": \"SomethingNew\"}"));
        Files.writeString(file, root.toString());
        BpeTokenizer unknown = BpeTokenizer.load(file);
        assertThat(unknown.encode("The quick")).isEqualTo(ids);
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class, () -> unknown.encode("The quick", true));
        assertThat(e).hasMessageThat().contains("post_processor `SomethingNew` is not supported");
    }

    private static int[] ints(JsonNode a) {
        int[] out = new int[a.size()];
        for (int i = 0; i < out.length; i++) {
            out[i] = a.get(i).asInt();
        }
        return out;
    }

    @Test
    void addedTokensAndVocabulary() throws IOException {
        BpeTokenizer tok = BpeTokenizer.load(DIR.resolve("tokenizer.json"));
        assertThat(tok.vocabSize()).isEqualTo(400);
        assertThat(tok.id("<|user|>")).isEqualTo(399);
        assertThat(tok.id("<|endoftext|>")).isEqualTo(0);
        assertThat(tok.encode("<|user|><|user|>")).isEqualTo(new int[] {399, 399});
        // Streaming: the bytes of the tokens concatenate to the text's UTF-8.
        String text = "Naïve café 🙂 数字";
        var out = new java.io.ByteArrayOutputStream();
        for (int id : tok.encode(text)) {
            out.writeBytes(tok.bytes(id));
        }
        assertThat(out.toString(java.nio.charset.StandardCharsets.UTF_8)).isEqualTo(text);
        assertThat(tok.decode(new int[] {12345})).isEqualTo("\uFFFD");
    }

    @Test
    void refusesWhatItCannotReproduce(@TempDir Path tmp) throws IOException {
        Path bad = tmp.resolve("tokenizer.json");
        Files.writeString(bad, "{\"model\": {\"type\": \"WordPiece\", \"vocab\": {}}}");
        IOException e = assertThrows(IOException.class, () -> BpeTokenizer.load(bad));
        assertThat(e).hasMessageThat().contains("only `BPE`");
        Files.writeString(bad, "{\"model\": {\"type\": \"BPE\", \"vocab\": {}, \"merges\": []}, \"pre_tokenizer\": {\"type\": \"Digits\"}}");
        e = assertThrows(IOException.class, () -> BpeTokenizer.load(bad));
        assertThat(e).hasMessageThat().contains("pre_tokenizer `Digits` is not supported");
        Files.writeString(bad, "{not json");
        e = assertThrows(IOException.class, () -> BpeTokenizer.load(bad));
        assertThat(e).hasMessageThat().contains("tokenizer.json");
    }

    /** The fixture's tokenizer with its pre-tokenizer or normalizer replaced. */
    private static Path variant(Path tmp, String preTokenizer, String normalizer) throws IOException {
        return variantOf(DIR, tmp, preTokenizer, normalizer);
    }

    private static Path variantOf(Path dir, Path tmp, String preTokenizer, String normalizer) throws IOException {
        ObjectMapper json = new ObjectMapper();
        com.fasterxml.jackson.databind.node.ObjectNode root = (com.fasterxml.jackson.databind.node.ObjectNode) json.readTree(dir.resolve("tokenizer.json").toFile());
        if (preTokenizer != null) {
            root.set("pre_tokenizer", json.readTree(preTokenizer));
        }
        if (normalizer != null) {
            root.set("normalizer", json.readTree(normalizer));
        }
        Path file = tmp.resolve("variant.json");
        Files.writeString(file, root.toString());
        return file;
    }

    @Test
    void splitStepsThenByteLevelAsQwenAndLlamaTokenizersHaveThem(@TempDir Path tmp) throws IOException {
        // ByteLevel's own regex, given as a Split step before a ByteLevel without regex: the same tokens.
        String gpt2 = "'s|'t|'re|'ve|'m|'ll|'d| ?\\\\p{L}+| ?\\\\p{N}+| ?[^\\\\s\\\\p{L}\\\\p{N}]+|\\\\s+(?!\\\\S)|\\\\s+";
        BpeTokenizer base = BpeTokenizer.load(DIR.resolve("tokenizer.json"));
        BpeTokenizer split = BpeTokenizer.load(variant(tmp, "{\"type\": \"Sequence\", \"pretokenizers\": ["
                + "{\"type\": \"Split\", \"pattern\": {\"Regex\": \"" + gpt2 + "\"}, \"behavior\": \"Isolated\", \"invert\": false},"
                + "{\"type\": \"ByteLevel\", \"add_prefix_space\": false, \"use_regex\": false}]}", null));
        for (JsonNode sample : new ObjectMapper().readTree(DIR.resolve("expected.json").toFile())) {
            assertThat(split.encode(sample.get("text").asText())).isEqualTo(base.encode(sample.get("text").asText()));
        }
        // Qwen2's split: one token per digit, where ByteLevel's regex keeps " 4567" together.
        String qwen2 = "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\\\r\\\\n\\\\p{L}\\\\p{N}]?\\\\p{L}+|\\\\p{N}| ?[^\\\\s\\\\p{L}\\\\p{N}]+[\\\\r\\\\n]*"
                + "|\\\\s*[\\\\r\\\\n]+|\\\\s+(?!\\\\S)|\\\\s+";
        BpeTokenizer qwen = BpeTokenizer.load(variant(tmp, "{\"type\": \"Sequence\", \"pretokenizers\": ["
                + "{\"type\": \"Split\", \"pattern\": {\"Regex\": \"" + qwen2 + "\"}, \"behavior\": \"Isolated\", \"invert\": false},"
                + "{\"type\": \"ByteLevel\", \"add_prefix_space\": false, \"use_regex\": false}]}", null));
        int[] digits = qwen.encode("4567");
        assertThat(digits).isEqualTo(new int[] {base.id("4"), base.id("5"), base.id("6"), base.id("7")});
        assertThat(qwen.decode(qwen.encode("Naïve café 🙂 数字 123"))).isEqualTo("Naïve café 🙂 数字 123");
    }

    @Test
    void nfcNormalizerComposesBeforeEncoding(@TempDir Path tmp) throws IOException {
        BpeTokenizer base = BpeTokenizer.load(DIR.resolve("tokenizer.json"));
        BpeTokenizer nfc = BpeTokenizer.load(variant(tmp, null, "{\"type\": \"NFC\"}"));
        String decomposed = "cafe\u0301";
        assertThat(base.encode(decomposed)).isNotEqualTo(base.encode("café"));
        assertThat(nfc.encode(decomposed)).isEqualTo(base.encode("café"));
        IOException e = assertThrows(IOException.class, () -> BpeTokenizer.load(variant(tmp, null, "{\"type\": \"Lowercase\"}")));
        assertThat(e).hasMessageThat().contains("normalizer `Lowercase` is not supported");
    }

    @Test
    void sentencePieceStyleStreamsBytesAndUsesTheMetaspaceForm(@TempDir Path tmp) throws IOException {
        BpeTokenizer tok = BpeTokenizer.load(SP.resolve("tokenizer.json"));
        // Streaming: each token's bytes, spaces for the mark, byte tokens as bytes (a character split over tokens).
        String text = "Naïve café 🙂 数字";
        var out = new java.io.ByteArrayOutputStream();
        for (int id : tok.encode(text)) {
            out.writeBytes(tok.bytes(id));
        }
        assertThat(out.toString(java.nio.charset.StandardCharsets.UTF_8)).isEqualTo(" " + text);
        // The newer form of the same tokenizer: no normalizer, a Metaspace pre-tokenizer that does not split.
        BpeTokenizer meta = BpeTokenizer.load(variantOf(SP, tmp, "{\"type\": \"Metaspace\", \"replacement\": \"\u2581\", "
                + "\"prepend_scheme\": \"first\", \"split\": false}", "null"));
        for (JsonNode sample : new ObjectMapper().readTree(SP.resolve("expected.json").toFile())) {
            String t = sample.get("text").asText();
            // Metaspace prepends only to the text's first stretch and only where it does not start with a
            // space already; the normalizer prepends to every stretch: they agree elsewhere.
            if (!t.contains("<") && !t.startsWith(" ")) {
                assertWithMessage(t).that(meta.encode(t)).isEqualTo(tok.encode(t));
            }
        }
    }
}
