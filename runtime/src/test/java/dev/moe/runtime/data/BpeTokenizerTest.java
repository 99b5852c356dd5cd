package dev.moe.runtime.data;

import static com.google.common.truth.Truth.assertThat;
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

    @Test
    void encodesAndDecodesExactlyAsTokenizers() throws IOException {
        BpeTokenizer tok = BpeTokenizer.load(DIR.resolve("tokenizer.json"));
        JsonNode expected = new ObjectMapper().readTree(DIR.resolve("expected.json").toFile());
        assertThat(expected.size()).isAtLeast(8);
        for (JsonNode sample : expected) {
            String text = sample.get("text").asText();
            int[] ids = new int[sample.get("ids").size()];
            for (int i = 0; i < ids.length; i++) {
                ids[i] = sample.get("ids").get(i).asInt();
            }
            assertThat(tok.encode(text)).isEqualTo(ids);
            assertThat(tok.decode(ids)).isEqualTo(sample.get("decoded").asText());
        }
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
        assertThat(e).hasMessageThat().contains("only byte-level `BPE`");
        Files.writeString(bad, "{\"model\": {\"type\": \"BPE\", \"vocab\": {}, \"merges\": []}, \"pre_tokenizer\": {\"type\": \"Metaspace\"}}");
        e = assertThrows(IOException.class, () -> BpeTokenizer.load(bad));
        assertThat(e).hasMessageThat().contains("pre_tokenizer must be ByteLevel");
        Files.writeString(bad, "{not json");
        e = assertThrows(IOException.class, () -> BpeTokenizer.load(bad));
        assertThat(e).hasMessageThat().contains("tokenizer.json");
    }
}
