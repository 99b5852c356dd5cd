package dev.moe.runtime.data;

import static com.google.common.truth.Truth.assertThat;

import java.nio.charset.StandardCharsets;
import org.junit.jupiter.api.Test;

class ByteTokenizerTest {
    private final ByteTokenizer tok = ByteTokenizer.INSTANCE;

    @Test
    void vocabularyIsOneTokenPerByte() {
        assertThat(tok.vocabSize()).isEqualTo(256);
        assertThat(ByteTokenizer.VOCAB_SIZE).isEqualTo(256);
    }

    @Test
    void asciiRoundTripsOneTokenPerCharacter() {
        String text = "37+58=95\ncopy: xkqz -> xkqz\n";
        int[] tokens = tok.encode(text);
        assertThat(tokens).hasLength(text.length());
        assertThat(tokens[0]).isEqualTo('3');
        assertThat(tokens[8]).isEqualTo('\n');
        assertThat(tok.decode(tokens)).isEqualTo(text);
    }

    @Test
    void nonAsciiRoundTripsAsUtf8Bytes() {
        String text = "naïve café — 日本語 🙂 Ωmega";
        int[] tokens = tok.encode(text);
        byte[] utf8 = text.getBytes(StandardCharsets.UTF_8);
        assertThat(tokens).hasLength(utf8.length);
        for (int i = 0; i < utf8.length; i++) {
            assertThat(tokens[i]).isEqualTo(utf8[i] & 0xFF);
            assertThat(tokens[i]).isAtLeast(0);
            assertThat(tokens[i]).isLessThan(256);
        }
        assertThat(tok.decode(tokens)).isEqualTo(text);
        assertThat(tok.encode("é")).isEqualTo(new int[] {0xC3, 0xA9});
    }

    @Test
    void emptyText() {
        assertThat(tok.encode("")).isEmpty();
        assertThat(tok.decode(new int[0])).isEmpty();
    }

    @Test
    void invalidUtf8DecodesLenientlyWithReplacementCharacters() {
        assertThat(tok.decode(new int[] {'a', 0xC3})).isEqualTo("a\uFFFD"); // truncated sequence
        assertThat(tok.decode(new int[] {0xFF, 'b'})).isEqualTo("\uFFFDb"); // never valid
        assertThat(tok.decode(new int[] {0x80, 0x80})).isEqualTo("\uFFFD\uFFFD"); // stray continuations
        assertThat(tok.decode(new int[] {0xC0, 0xAF})).doesNotContain("/"); // overlong '/'
        // a sampled id beyond the byte range (a model with vocab > 256) never throws either
        assertThat(tok.decode(new int[] {'x', 300, -1, 'y'})).isEqualTo("x\uFFFD\uFFFDy");
    }

    @Test
    void decodeOfARange() {
        int[] tokens = tok.encode("hello world");
        assertThat(tok.decode(tokens, 6, 5)).isEqualTo("world");
    }

    @Test
    void everyByteValueSurvivesEncodeOfItsDecodeWhenValid() {
        for (int b = 0; b < 128; b++) {
            assertThat(tok.encode(tok.decode(new int[] {b}))).isEqualTo(new int[] {b});
        }
    }
}
