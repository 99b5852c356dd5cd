package dev.moe.runtime.data;

import static com.google.common.truth.Truth.assertThat;
import static com.google.common.truth.Truth.assertWithMessage;
import static org.junit.jupiter.api.Assertions.assertThrows;

import java.util.HashSet;
import java.util.List;
import java.util.Set;
import org.junit.jupiter.api.Test;

class SyntheticCorpusTest {
    private static final int DOCS = 3000;

    @Test
    void domainNames() {
        assertThat(SyntheticCorpus.DOMAINS)
                .containsExactly("arithmetic", "copy", "reverse", "sort", "markov", "brackets", "lookup", "synthetic")
                .inOrder();
        assertThat(SyntheticCorpus.PARTS).doesNotContain("synthetic");
        for (String d : SyntheticCorpus.DOMAINS) {
            assertThat(SyntheticCorpus.isDomain(d)).isTrue();
            assertThat(SyntheticCorpus.domain(d).name()).isEqualTo(d);
        }
        assertThat(SyntheticCorpus.isDomain("prose")).isFalse();
        assertThrows(IllegalArgumentException.class, () -> SyntheticCorpus.domain("prose"));
        assertThat(SyntheticCorpus.domain("synthetic").sources()).isEqualTo(SyntheticCorpus.PARTS);
        assertThat(SyntheticCorpus.domain("copy").sources()).containsExactly("copy");
    }

    @Test
    void everyPartsDocumentsAreCorrect() {
        for (String domain : SyntheticCorpus.PARTS) {
            SplitMix64 rng = new SplitMix64(42);
            Set<String> distinct = new HashSet<>();
            for (int i = 0; i < DOCS; i++) {
                String doc = SyntheticCorpus.document(domain, rng);
                String line = doc.substring(0, doc.length() - 1);
                if (!doc.endsWith("\n") || line.indexOf('\n') >= 0 || !Documents.valid(domain, line)) {
                    assertWithMessage("a correct %s document of one line", domain).that(doc).isEqualTo("(correct)");
                }
                distinct.add(line);
            }
            assertWithMessage("%s varies", domain).that(distinct.size()).isGreaterThan(DOCS / 10);
        }
    }

    @Test
    void arithmeticCoversAllThreeOperatorsAndNegativeResults() {
        String text = SyntheticCorpus.text("arithmetic", 1, 1000);
        assertThat(text).contains("+");
        assertThat(text).contains("*");
        assertThat(text).containsMatch("\\d-\\d");
        assertThat(text).contains("=-");
        assertThat(text).containsMatch("\\d{3}[+-]\\d{3}=");
    }

    @Test
    void markovUsesAFixedSmallVocabularyAndChain() {
        Set<String> words = new HashSet<>();
        Set<String> bigrams = new HashSet<>();
        for (String line : SyntheticCorpus.text("markov", 5, DOCS).split("\n")) {
            String[] ws = line.substring(0, line.length() - 1).split(" ");
            for (int i = 0; i < ws.length; i++) {
                words.add(ws[i]);
                if (i > 0) {
                    bigrams.add(ws[i - 1] + " " + ws[i]);
                }
            }
        }
        assertThat(words.size()).isAtMost(SyntheticCorpus.MARKOV_WORDS);
        assertThat(words.size()).isAtLeast(SyntheticCorpus.MARKOV_WORDS - 5);
        // four successors per word: far fewer bigrams than the 1600 possible
        assertThat(bigrams.size()).isAtMost(4 * SyntheticCorpus.MARKOV_WORDS);
        // the chain is fixed: another seed walks the same transitions
        for (String line : SyntheticCorpus.text("markov", 99, 300).split("\n")) {
            String[] ws = line.substring(0, line.length() - 1).split(" ");
            for (int i = 1; i < ws.length; i++) {
                assertThat(bigrams).contains(ws[i - 1] + " " + ws[i]);
            }
        }
    }

    @Test
    void syntheticDocumentsComeFromEveryPart() {
        Set<String> prefixes = new HashSet<>();
        for (String line : SyntheticCorpus.text("synthetic", 3, 2000).split("\n")) {
            String part = partOf(line);
            assertWithMessage(line).that(part).isNotNull();
            assertWithMessage(line).that(Documents.valid(part, line)).isTrue();
            prefixes.add(part);
        }
        assertThat(prefixes).containsExactlyElementsIn(SyntheticCorpus.PARTS);
    }

    static String partOf(String line) {
        if (line.startsWith("copy: ")) {
            return "copy";
        } else if (line.startsWith("rev: ")) {
            return "reverse";
        } else if (line.startsWith("sort: ")) {
            return "sort";
        } else if (line.startsWith("brackets: ")) {
            return "brackets";
        } else if (line.startsWith("lookup: ")) {
            return "lookup";
        } else if (line.matches("\\d.*")) {
            return "arithmetic";
        } else if (line.endsWith(".")) {
            return "markov";
        }
        return null;
    }

    @Test
    void textIsDeterministicPerSeed() {
        for (String d : SyntheticCorpus.DOMAINS) {
            assertThat(SyntheticCorpus.text(d, 7, 50)).isEqualTo(SyntheticCorpus.text(d, 7, 50));
            assertThat(SyntheticCorpus.text(d, 7, 50)).isNotEqualTo(SyntheticCorpus.text(d, 8, 50));
        }
    }

    @Test
    void goldenOutputPinsTheGeneratorsAcrossJvms() {
        // SplitMix64 is specified bit for bit; these values must never change without a format bump.
        SplitMix64 rng = new SplitMix64(0);
        assertThat(rng.nextLong()).isEqualTo(0xE220A8397B1DCDAFL);
        assertThat(rng.nextLong()).isEqualTo(0x6E789E6AA1B965F4L);
        assertThat(SyntheticCorpus.text("arithmetic", 7, 4)).isEqualTo("3-27=-24\n691-912=-221\n295+595=890\n5+900=905\n");
        assertThat(SyntheticCorpus.text("copy", 7, 2)).isEqualTo("copy: ylxf -> ylxf\ncopy: p -> p\n");
    }

    @Test
    void domainSamplesArePureAndAscii() {
        for (String d : SyntheticCorpus.DOMAINS) {
            Domain domain = SyntheticCorpus.domain(d);
            int[] a = new int[300];
            int[] b = new int[300];
            int sa = domain.sample(11, false, a, 0, 300);
            int sb = domain.sample(11, false, b, 0, 300);
            assertThat(a).isEqualTo(b);
            assertThat(sa).isEqualTo(sb);
            assertThat(sa).isIn(List.of(0, 1, 2, 3, 4, 5, 6).subList(0, domain.sources().size()));
            for (int t : a) {
                assertThat(t).isAtLeast(1);
                assertThat(t).isAtMost(127);
            }
        }
    }
}
