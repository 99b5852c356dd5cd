package dev.moe.runtime.data;

import static com.google.common.truth.Truth.assertThat;
import static com.google.common.truth.Truth.assertWithMessage;
import static org.junit.jupiter.api.Assertions.assertThrows;

import java.io.IOException;
import java.io.UncheckedIOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.HashSet;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

class DataStreamTest {
    @TempDir
    Path dir;

    private static Map<String, Double> mix(Object... nameShare) {
        Map<String, Double> m = new LinkedHashMap<>();
        for (int i = 0; i < nameShare.length; i += 2) {
            m.put((String) nameShare[i], ((Number) nameShare[i + 1]).doubleValue());
        }
        return m;
    }

    private static DataStream stream(long seed) {
        return DataStream.synthetic(mix("arithmetic", 0.25, "copy", 0.25, "markov", 0.25, "synthetic", 0.25), 8, 32, seed);
    }

    @Test
    void shapeInputsAndTargets() {
        DataStream s = stream(1);
        Batch b = s.next();
        assertThat(b.size()).isEqualTo(8);
        assertThat(b.context()).isEqualTo(32);
        assertThat(b.tokens()).hasLength(8 * 33);
        assertThat(b.index()).isEqualTo(0);
        assertThat(b.heldOut()).isFalse();
        int[] in = b.inputs();
        int[] tg = b.targets();
        assertThat(in).hasLength(8 * 32);
        assertThat(tg).hasLength(8 * 32);
        for (int r = 0; r < 8; r++) {
            int[] seq = b.sequence(r);
            for (int p = 0; p < 32; p++) {
                assertThat(in[r * 32 + p]).isEqualTo(seq[p]);
                assertThat(tg[r * 32 + p]).isEqualTo(seq[p + 1]);
                assertThat(b.input(r, p)).isEqualTo(seq[p]);
                assertThat(b.target(r, p)).isEqualTo(seq[p + 1]);
            }
        }
        assertThat(s.domains()).containsExactly("arithmetic", "copy", "markov", "synthetic").inOrder();
        assertThat(s.sources()).containsExactly("arithmetic", "copy", "markov", "reverse", "sort", "brackets", "lookup").inOrder();
        assertThat(s.position()).isEqualTo(1);
    }

    @Test
    void sameSeedSameBatchesDifferentSeedDifferent() {
        DataStream a = stream(7);
        DataStream b = stream(7);
        DataStream c = stream(8);
        for (int i = 0; i < 20; i++) {
            Batch x = a.next();
            assertThat(b.next()).isEqualTo(x);
            assertThat(c.next()).isNotEqualTo(x);
        }
    }

    @Test
    void batchIsAPureFunctionOfItsIndex() {
        DataStream s = stream(3);
        List<Batch> inOrder = new ArrayList<>();
        for (int i = 0; i < 10; i++) {
            inOrder.add(s.next());
        }
        DataStream t = stream(3);
        for (int i = 9; i >= 0; i--) {
            assertThat(t.batch(i)).isEqualTo(inOrder.get(i));
        }
        assertThat(t.position()).isEqualTo(0);
        assertThat(t.batch(1_000_000_000_000L).index()).isEqualTo(1_000_000_000_000L);
    }

    @Test
    void batchesAreIndependentOfThreads() throws Exception {
        DataStream s = stream(5);
        List<Batch> sequential = new ArrayList<>();
        for (int i = 0; i < 32; i++) {
            sequential.add(s.batch(i));
        }
        ExecutorService pool = Executors.newFixedThreadPool(4);
        try {
            List<Future<Batch>> futures = new ArrayList<>();
            for (int i = 31; i >= 0; i--) {
                long idx = i;
                futures.add(pool.submit(() -> s.batch(idx)));
            }
            for (int i = 0; i < 32; i++) {
                assertThat(futures.get(i).get()).isEqualTo(sequential.get(31 - i));
            }
        } finally {
            pool.shutdown();
        }
    }

    @Test
    void restoreFromStateYieldsExactlyTheSameBatches() {
        DataStream a = stream(11);
        for (int i = 0; i < 5; i++) {
            a.next();
        }
        long[] state = a.state();
        assertThat(state).hasLength(4);
        List<Batch> expected = new ArrayList<>();
        for (int i = 0; i < 5; i++) {
            expected.add(a.next());
        }
        DataStream b = stream(11);
        b.next(); // wherever it was, restore overrides
        b.restore(state.clone());
        assertThat(b.position()).isEqualTo(5);
        for (int i = 0; i < 5; i++) {
            assertThat(b.next()).isEqualTo(expected.get(i));
        }
        assertThat(b.state()).isEqualTo(a.state());
    }

    @Test
    void restoreRejectsStatesOfOtherStreams() {
        long[] state = stream(11).state();
        assertThrows(IllegalArgumentException.class, () -> stream(12).restore(state));
        DataStream otherMix = DataStream.synthetic(mix("arithmetic", 0.5, "copy", 0.5), 8, 32, 11);
        assertThrows(IllegalArgumentException.class, () -> otherMix.restore(state));
        DataStream otherShape = DataStream.synthetic(mix("arithmetic", 0.25, "copy", 0.25, "markov", 0.25, "synthetic", 0.25), 8, 64, 11);
        assertThrows(IllegalArgumentException.class, () -> otherShape.restore(state));
        assertThrows(IllegalArgumentException.class, () -> stream(11).restore(new long[] {9, 11, state[2], 0}));
        assertThrows(IllegalArgumentException.class, () -> stream(11).restore(new long[3]));
    }

    @Test
    void domainSharesAreRespected() {
        Map<String, Double> m = mix("arithmetic", 0.5, "copy", 0.3, "reverse", 0.15, "sort", 0.05);
        DataStream s = DataStream.synthetic(m, 16, 8, 2);
        double[] expected = {0.5, 0.3, 0.15, 0.05};
        int[] total = new int[4];
        int batches = 400;
        for (int i = 0; i < batches; i++) {
            int[] count = new int[4];
            for (int d : s.next().domains()) {
                count[d]++;
            }
            for (int k = 0; k < 4; k++) {
                // systematic sampling: every batch within one row of its share
                assertThat((double) count[k]).isWithin(1.0).of(expected[k] * 16);
                total[k] += count[k];
            }
        }
        for (int k = 0; k < 4; k++) {
            assertThat(total[k] / (batches * 16.0)).isWithin(0.01).of(expected[k]);
        }
    }

    @Test
    void zeroShareDomainsNeverAppearAndRowsAreShuffled() {
        DataStream s = DataStream.synthetic(mix("copy", 0.0, "sort", 0.5, "reverse", 0.5), 4, 8, 9);
        Set<String> firstRow = new HashSet<>();
        for (int i = 0; i < 50; i++) {
            Batch b = s.next();
            for (int d : b.domains()) {
                assertThat(d).isNotEqualTo(0);
            }
            firstRow.add(s.domains().get(b.domain(0)));
        }
        assertThat(firstRow).containsExactly("sort", "reverse");
    }

    @Test
    void rowsHoldCorrectDocumentsOfTheirSource() {
        DataStream s = DataStream.synthetic(mix("synthetic", 0.5, "arithmetic", 0.5), 16, 200, 4);
        Set<String> seen = new HashSet<>();
        for (int i = 0; i < 20; i++) {
            Batch b = s.next();
            for (int r = 0; r < b.size(); r++) {
                String source = s.sources().get(b.source(r));
                seen.add(source);
                if (s.domains().get(b.domain(r)).equals("arithmetic")) {
                    assertThat(source).isEqualTo("arithmetic");
                }
                String text = ByteTokenizer.INSTANCE.decode(b.sequence(r));
                String[] lines = text.split("\n", -1);
                assertThat(lines.length).isAtLeast(3);
                // the first and last lines may be cut by the window; the others are whole documents
                for (int l = 1; l < lines.length - 1; l++) {
                    assertWithMessage("%s: %s", source, lines[l]).that(Documents.valid(source, lines[l])).isTrue();
                }
            }
        }
        assertThat(seen).containsExactlyElementsIn(SyntheticCorpus.PARTS);
    }

    @Test
    void everyTokenIsAByte() throws IOException {
        Files.writeString(dir.resolve("t.txt"), "ünïcödé 日本語 🙂 ".repeat(200));
        DataStream s = DataStream.builder().baseDir(dir).mixture(mix("file:t.txt", 0.5, "synthetic", 0.5)).batch(8).context(64).seed(1).build();
        for (int i = 0; i < 20; i++) {
            for (Batch b : List.of(s.next(), s.evalBatch(i))) {
                int min = Integer.MAX_VALUE;
                int max = Integer.MIN_VALUE;
                for (int t : b.tokens()) {
                    min = Math.min(min, t);
                    max = Math.max(max, t);
                }
                assertThat(min).isAtLeast(0);
                assertThat(max).isLessThan(ByteTokenizer.VOCAB_SIZE);
            }
        }
    }

    @Test
    void evalBatchesAreHeldOutAndStable() {
        DataStream s = stream(21);
        List<Batch> eval = s.evalBatches(5);
        assertThat(eval).hasSize(5);
        assertThat(stream(21).evalBatches(5)).isEqualTo(eval);
        assertThat(s.position()).isEqualTo(0);
        Set<String> train = new HashSet<>();
        for (int i = 0; i < 50; i++) {
            Batch b = s.next();
            for (int r = 0; r < b.size(); r++) {
                train.add(ByteTokenizer.INSTANCE.decode(b.sequence(r)));
            }
        }
        for (Batch e : eval) {
            assertThat(e.heldOut()).isTrue();
            assertThat(e.tokens()).isNotEqualTo(s.batch(e.index()).tokens());
            for (int r = 0; r < e.size(); r++) {
                assertThat(train).doesNotContain(ByteTokenizer.INSTANCE.decode(e.sequence(r)));
            }
        }
    }

    @Test
    void fileDataSourceReadsADirectoryRecursivelyInPathOrder() throws IOException {
        Files.createDirectories(dir.resolve("b/sub"));
        Files.createDirectories(dir.resolve(".git"));
        Files.writeString(dir.resolve("b/sub/z.txt"), "third");
        Files.writeString(dir.resolve("b/a.txt"), "second");
        Files.writeString(dir.resolve("a.txt"), "first");
        Files.writeString(dir.resolve(".hidden"), "never");
        Files.writeString(dir.resolve(".git/config"), "never");
        TextCorpus corpus = TextCorpus.load("docs", List.of(dir));
        assertThat(new String(corpus.bytes(), StandardCharsets.UTF_8)).isEqualTo("first\nsecond\nthird");
        assertThat(corpus.size()).isEqualTo(18);
        assertThat(TextCorpus.files(List.of(dir))).containsExactly(dir.resolve("a.txt"), dir.resolve("b/a.txt"), dir.resolve("b/sub/z.txt")).inOrder();

        // short text: windows wrap around and cover it
        DataStream s = DataStream.files(List.of(dir), 4, 8, 0);
        assertThat(s.domains()).containsExactly("file");
        String text = "first\nsecond\nthird";
        for (int i = 0; i < 10; i++) {
            Batch b = s.next();
            for (int r = 0; r < 4; r++) {
                assertThat(b.domain(r)).isEqualTo(0);
                String w = ByteTokenizer.INSTANCE.decode(b.sequence(r));
                assertThat(text + text).contains(w);
            }
        }
    }

    @Test
    void fileDomainsByNameAndMissingFiles() throws IOException {
        Files.writeString(dir.resolve("prose.txt"), "lorem ipsum dolor sit amet ".repeat(100));
        DataStream s = DataStream.builder()
                .baseDir(dir)
                .file("prose", Path.of("prose.txt"))
                .mixture(mix("prose", 0.5, "copy", 0.5))
                .batch(4).context(16).seed(3)
                .build();
        assertThat(s.sources()).containsExactly("prose", "copy").inOrder();
        Batch b = s.next();
        for (int r = 0; r < 4; r++) {
            String w = ByteTokenizer.INSTANCE.decode(b.sequence(r));
            if (b.domain(r) == 0) {
                assertThat("lorem ipsum dolor sit amet ".repeat(3)).contains(w);
            } else {
                assertThat(w).containsMatch("copy|->|\n");
            }
        }
        assertThrows(UncheckedIOException.class,
                () -> DataStream.builder().baseDir(dir).mixture(mix("file:absent.txt", 1.0)).build());
        Files.createDirectories(dir.resolve("empty"));
        assertThrows(UncheckedIOException.class, () -> DataStream.files(List.of(dir.resolve("empty")), 1, 1, 0));
    }

    @Test
    void textEvalWindowsComeFromTheHeldOutTail() {
        StringBuilder sb = new StringBuilder();
        for (int i = 0; i < 4000; i++) {
            sb.append((char) ('a' + i % 26));
        }
        byte[] bytes = sb.toString().getBytes(StandardCharsets.US_ASCII);
        int cut = bytes.length - bytes.length / TextCorpus.HELD_OUT_DIVISOR; // 3800
        // mark the tail so that windows tell where they came from
        for (int i = cut; i < bytes.length; i++) {
            bytes[i] = (byte) Character.toUpperCase(bytes[i]);
        }
        DataStream s = DataStream.of(TextCorpus.of("abc", bytes), 8, 63, 1);
        for (int i = 0; i < 20; i++) {
            assertThat(Arrays.stream(s.next().tokens()).min().getAsInt()).isAtLeast((int) 'a');
            assertThat(Arrays.stream(s.evalBatch(i).tokens()).max().getAsInt()).isAtMost((int) 'Z');
        }
    }

    @Test
    void badMixturesAreRejected() {
        assertThrows(IllegalArgumentException.class, () -> DataStream.synthetic(mix("arithmetic", 0.5, "copy", 0.4), 8, 8, 0));
        assertThrows(IllegalArgumentException.class, () -> DataStream.synthetic(mix("arithmetic", 1.5, "copy", -0.5), 8, 8, 0));
        assertThrows(IllegalArgumentException.class, () -> DataStream.synthetic(mix("prose", 1.0), 8, 8, 0));
        assertThrows(IllegalArgumentException.class, () -> DataStream.synthetic(mix(), 8, 8, 0));
        assertThrows(IllegalArgumentException.class, () -> DataStream.synthetic(mix("copy", 1.0), 0, 8, 0));
        assertThrows(IllegalArgumentException.class, () -> DataStream.synthetic(mix("copy", 1.0), 8, 0, 0));
        assertThrows(IllegalArgumentException.class, () -> stream(0).seek(-1));
        // shares that sum to 1 up to rounding are fine
        DataStream ok = DataStream.synthetic(mix("arithmetic", 0.1, "copy", 0.2, "sort", 0.7), 8, 8, 0);
        assertThat(ok.mixture()).containsExactly("arithmetic", 0.1, "copy", 0.2, "sort", 0.7).inOrder();
    }

    @Test
    void goldenBatchPinsTheSamplingScheme() {
        // Checkpoints store a position, not data: changing what batch i holds breaks resumption,
        // so these values change only together with DataStream.STATE_VERSION.
        DataStream s = DataStream.synthetic(mix("arithmetic", 0.5, "synthetic", 0.5), 4, 16, 2024);
        Batch b = s.batch(3);
        assertThat(ByteTokenizer.INSTANCE.decode(b.sequence(0))).isEqualTo("3=79\n7+3=10\n4*3=1");
        assertThat(Arrays.hashCode(b.tokens())).isEqualTo(69725012);
        assertThat(b.domains()).isEqualTo(new int[] {1, 1, 0, 0});
        assertThat(b.sources()).isEqualTo(new int[] {0, 5, 0, 0});
        assertThat(Arrays.hashCode(s.evalBatch(3).tokens())).isEqualTo(-635345056);
    }

    @Test
    void defaultsAreTheWholeSyntheticCorpus() {
        DataStream s = DataStream.builder().build();
        assertThat(s.domains()).containsExactly("synthetic");
        assertThat(s.batchSize()).isEqualTo(8);
        assertThat(s.context()).isEqualTo(64);
        assertThat(s.seed()).isEqualTo(0);
        assertThat(s.next().tokens()).hasLength(8 * 65);
    }

    @Test
    void paddedSyntheticRowsAreOneWholeDocumentEach() {
        DataStream s = DataStream.builder().mixture(mix("synthetic", 0.5, "arithmetic", 0.5)).batch(16).context(64).seed(4).padDocuments(true).build();
        assertThat(s.paddedDocuments()).isTrue();
        Set<String> seen = new HashSet<>();
        boolean anyPadded = false;
        for (int i = 0; i < 10; i++) {
            Batch b = s.next();
            anyPadded |= b.padded();
            boolean[] keep = b.keep(64);
            for (int r = 0; r < b.size(); r++) {
                String source = s.sources().get(b.source(r));
                seen.add(source);
                int[] row = b.sequence(r);
                int n = b.length(r);
                String text = ByteTokenizer.INSTANCE.decode(Arrays.copyOf(row, n));
                // a document shorter than the row is whole, from its start, ending with its newline
                if (n < row.length) {
                    assertWithMessage("%s: %s", source, text).that(text.endsWith("\n")).isTrue();
                    assertWithMessage("%s: %s", source, text).that(Documents.valid(source, text.substring(0, n - 1))).isTrue();
                }
                for (int t = n; t < row.length; t++) {
                    assertThat(row[t]).isEqualTo(0);
                }
                for (int t = 0; t < 64; t++) {
                    assertThat(keep == null || keep[r * 64 + t] == (t + 1 < n)).isTrue();
                }
            }
            long kept = 0;
            for (int r = 0; r < b.size(); r++) {
                kept += Math.min(64, b.length(r) - 1);
            }
            assertThat(b.keptTokens(64)).isEqualTo(kept);
        }
        assertThat(anyPadded).isTrue();
        assertThat(seen).containsExactlyElementsIn(SyntheticCorpus.PARTS);
        // pure, and a different stream from the windows of the same mixture
        assertThat(s.batch(3)).isEqualTo(s.batch(3));
        DataStream windows = DataStream.builder().mixture(mix("synthetic", 0.5, "arithmetic", 0.5)).batch(16).context(64).seed(4).build();
        assertThat(windows.batch(3).padded()).isFalse();
        assertThat(windows.batch(3).keep(64)).isNull();
        assertThrows(IllegalArgumentException.class, () -> windows.restore(s.state()));
    }

    @Test
    void paddedTextDocumentsAreParagraphs() {
        StringBuilder sb = new StringBuilder();
        List<String> paragraphs = new ArrayList<>();
        var rng = new SplitMix64(9);
        for (int i = 0; i < 200; i++) {
            StringBuilder p = new StringBuilder("p" + i + ":");
            int words = 1 + rng.nextInt(30);
            for (int w = 0; w < words; w++) {
                p.append(" w").append(rng.nextInt(100));
            }
            paragraphs.add(p.toString());
            sb.append(p).append(i % 3 == 0 ? "\n\n\n" : "\n\n");
        }
        TextCorpus text = TextCorpus.of("paras", sb.toString());
        assertThat(text.documents()).isEqualTo(200);
        DataStream s = DataStream.builder().domain("paras", text).mixture(mix("paras", 1.0)).batch(8).context(100).seed(2).padDocuments(true).build();
        int cut = text.size() - text.size() / TextCorpus.HELD_OUT_DIVISOR;
        int firstHeldOut = sb.indexOf("p", cut);
        int heldOutFrom = Integer.parseInt(sb.substring(firstHeldOut + 1, sb.indexOf(":", firstHeldOut)));
        for (int i = 0; i < 20; i++) {
            for (Batch b : List.of(s.batch(i), s.evalBatch(i))) {
                for (int r = 0; r < b.size(); r++) {
                    String row = ByteTokenizer.INSTANCE.decode(Arrays.copyOf(b.sequence(r), b.length(r)));
                    if (b.length(r) <= 100) {
                        // whole: the paragraph and its blank line(s)
                        int k = Integer.parseInt(row.substring(1, row.indexOf(':')));
                        assertThat(row.strip()).isEqualTo(paragraphs.get(k));
                        assertThat(k >= heldOutFrom).isEqualTo(b.heldOut());
                    } else {
                        assertThat(paragraphs.stream().anyMatch(p -> (p + "\n\n\n").contains(row) || (p + "\n\n").contains(row))).isTrue();
                    }
                }
            }
        }
    }
}
