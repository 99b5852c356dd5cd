package dev.moe.runtime.data;

import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Collections;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Objects;

/**
 * Training batches from a mixture of domains: built-in synthetic ones, text files, or any
 * {@link Domain}.
 *
 * <p><b>Purity.</b> {@link #batch(long) Batch i} is a pure function of the seed, the mixture (names,
 * shares, and the domains' content), the batch size, the context and {@code i}. Each row draws from
 * its own seed {@code hash(seed, stream, i, row)}, so nothing depends on earlier batches, on threads
 * or on the JVM. The stream's only state is the {@link #position()} of the next training batch.
 *
 * <p><b>Mixture.</b> Within a batch, rows are assigned to domains by systematic sampling at a random
 * offset, then shuffled: domain {@code d} with share {@code p} gets {@code floor(p*size)} or
 * {@code ceil(p*size)} rows of every batch, and exactly {@code p*size} on average.
 *
 * <p><b>Evaluation.</b> {@link #evalBatch(long)} draws from a disjoint seed stream (and from the
 * held-out tail of text corpora), so evaluation data never repeats training draws.
 *
 * <p><b>Documents.</b> By default each row is a window of its domain's text, documents running
 * on across row boundaries. With {@link Builder#padDocuments padded documents} each row is one whole
 * {@link Domain#document document} from its start, cut at {@code context + 1} tokens, and the rest
 * of the row is padding that {@link Batch#keep} masks out of training.
 *
 * <p><b>Resuming.</b> {@link #state()} is a {@code long[4]}: format version, seed, a fingerprint of
 * the configuration, and the position. {@link #restore} checks the first three and sets the position,
 * after which the stream yields exactly what the saved one would have.
 *
 * <p>{@link #batch}, {@link #evalBatch} and {@link #evalBatches} are thread-safe; {@link #next},
 * {@link #seek} and {@link #restore} move the position and are not.
 */
public final class DataStream {
    /** Version of {@link #state()}'s layout and of the sampling scheme. */
    public static final long STATE_VERSION = 1;
    private static final long TRAIN = 0x747261696EL; // "train"
    private static final long EVAL = 0x6576616CL; // "eval"

    private final long seed;
    private final int batch;
    private final int context;
    private final List<String> names;
    private final double[] shares;
    private final double[] cumulative;
    private final Domain[] domains;
    private final List<String> sources;
    private final int[][] sourceIndex;
    private final long fingerprint;
    private final boolean padded;
    private long position;

    private DataStream(long seed, int batch, int context, Map<String, Double> mixture, Map<String, Domain> resolved, boolean padded) {
        if (batch <= 0 || context <= 0) {
            throw new IllegalArgumentException("batch and context must be positive: " + batch + ", " + context);
        }
        if ((long) batch * (context + 1) > Integer.MAX_VALUE - 8) {
            throw new IllegalArgumentException("batch * (context + 1) is too large");
        }
        if (mixture.isEmpty()) {
            throw new IllegalArgumentException("the mixture is empty");
        }
        this.seed = seed;
        this.padded = padded;
        this.batch = batch;
        this.context = context;
        int n = mixture.size();
        this.names = List.copyOf(mixture.keySet());
        this.shares = new double[n];
        this.domains = new Domain[n];
        double sum = 0;
        int i = 0;
        for (Map.Entry<String, Double> e : mixture.entrySet()) {
            double s = Objects.requireNonNull(e.getValue(), "share of " + e.getKey());
            if (!(s >= 0) || Double.isInfinite(s)) {
                throw new IllegalArgumentException("share of `" + e.getKey() + "` is " + s + "; shares are finite and non-negative");
            }
            shares[i] = s;
            domains[i] = resolved.get(e.getKey());
            sum += s;
            i++;
        }
        if (Math.abs(sum - 1) > 1e-6) {
            throw new IllegalArgumentException("mixture shares sum to " + sum + ", not 1");
        }
        this.cumulative = new double[n];
        double c = 0;
        for (int k = 0; k < n; k++) {
            c += shares[k] / sum;
            cumulative[k] = c;
        }
        List<String> srcs = new ArrayList<>();
        this.sourceIndex = new int[n][];
        for (int k = 0; k < n; k++) {
            List<String> own = domains[k].sources();
            sourceIndex[k] = new int[own.size()];
            for (int j = 0; j < own.size(); j++) {
                int at = srcs.indexOf(own.get(j));
                if (at < 0) {
                    at = srcs.size();
                    srcs.add(own.get(j));
                }
                sourceIndex[k][j] = at;
            }
        }
        this.sources = List.copyOf(srcs);
        long h = SplitMix64.hash(STATE_VERSION, batch, context, n);
        for (int k = 0; k < n; k++) {
            h = SplitMix64.hash(h, SplitMix64.hash(names.get(k)), Double.doubleToLongBits(shares[k]), domains[k].fingerprint());
        }
        this.fingerprint = padded ? SplitMix64.hash(h, SplitMix64.hash("padded documents")) : h;
    }

    /** A stream over built-in synthetic domains, e.g. {@code {arithmetic: 0.5, copy: 0.5}} or {@code {synthetic: 1}}. */
    public static DataStream synthetic(Map<String, Double> mixture, int batch, int context, long seed) {
        return builder().mixture(mixture).batch(batch).context(context).seed(seed).build();
    }

    /** A stream over one domain. */
    public static DataStream of(Domain domain, int batch, int context, long seed) {
        return builder().domain(domain.name(), domain).mixture(Map.of(domain.name(), 1.0)).batch(batch).context(context).seed(seed).build();
    }

    /** A stream over text files and directories ({@link TextCorpus#load(String, List)}), as one domain named {@code file}. */
    public static DataStream files(List<Path> paths, int batch, int context, long seed) {
        return of(TextCorpus.load("file", paths), batch, context, seed);
    }

    public static Builder builder() {
        return new Builder();
    }

    /** Configures a {@link DataStream}; defaults: mixture {@code {synthetic: 1}}, batch 8, context 64, seed 0. */
    public static final class Builder {
        private Map<String, Double> mixture = Map.of(SyntheticCorpus.SYNTHETIC, 1.0);
        private final Map<String, Domain> domains = new LinkedHashMap<>();
        private Path baseDir = Path.of("");
        private int batch = 8;
        private int context = 64;
        private long seed;
        private boolean padded;

        private Builder() {}

        /** Each row one document from its start, padded (true), or windows of running text (false, the default). */
        public Builder padDocuments(boolean padded) {
            this.padded = padded;
            return this;
        }

        /**
         * Domain shares, in order (use a {@link LinkedHashMap}: the order numbers the domains), summing
         * to 1. A name is resolved as: a domain given to {@link #domain} or {@link #file}; else
         * {@code file:PATH}, a text corpus at {@code PATH} (against {@link #baseDir}); else a built-in
         * synthetic domain.
         */
        public Builder mixture(Map<String, Double> mixture) {
            this.mixture = new LinkedHashMap<>(mixture);
            return this;
        }

        /** Names a domain for the mixture (e.g. one declared with {@code domain name = file("...")}). */
        public Builder domain(String name, Domain domain) {
            domains.put(Objects.requireNonNull(name), Objects.requireNonNull(domain));
            return this;
        }

        /** Names a text domain read from files and directories (read when this is called). */
        public Builder file(String name, Path... paths) {
            List<Path> resolved = new ArrayList<>();
            for (Path p : paths) {
                resolved.add(baseDir.resolve(p));
            }
            return domain(name, TextCorpus.load(name, resolved));
        }

        /** Where relative paths of {@code file:} names and {@link #file} resolve (default: the working directory). */
        public Builder baseDir(Path dir) {
            this.baseDir = Objects.requireNonNull(dir);
            return this;
        }

        public Builder batch(int batch) {
            this.batch = batch;
            return this;
        }

        public Builder context(int context) {
            this.context = context;
            return this;
        }

        public Builder seed(long seed) {
            this.seed = seed;
            return this;
        }

        /**
         * @throws IllegalArgumentException for an unknown domain or bad shares or shape
         * @throws java.io.UncheckedIOException when a {@code file:} domain cannot be read
         */
        public DataStream build() {
            Map<String, Domain> resolved = new LinkedHashMap<>();
            for (String name : mixture.keySet()) {
                Objects.requireNonNull(name, "domain name");
                Domain d = domains.get(name);
                if (d == null && name.startsWith("file:")) {
                    d = TextCorpus.load(name, List.of(baseDir.resolve(name.substring("file:".length()))));
                }
                if (d == null && SyntheticCorpus.isDomain(name)) {
                    d = SyntheticCorpus.domain(name);
                }
                if (d == null) {
                    throw new IllegalArgumentException("unknown data domain `" + name + "`: not declared, not `file:PATH`, not one of "
                            + SyntheticCorpus.DOMAINS);
                }
                resolved.put(name, d);
            }
            return new DataStream(seed, batch, context, mixture, resolved, padded);
        }
    }

    /** The mixture's domain names, in order; {@link Batch#domains()} indexes this. */
    public List<String> domains() {
        return names;
    }

    /** The finer sources, in order of first appearance; {@link Batch#sources()} indexes this. */
    public List<String> sources() {
        return sources;
    }

    /** The mixture as given (normalised only in sampling). */
    public Map<String, Double> mixture() {
        Map<String, Double> m = new LinkedHashMap<>();
        for (int k = 0; k < names.size(); k++) {
            m.put(names.get(k), shares[k]);
        }
        return Collections.unmodifiableMap(m);
    }

    /** Whether each row is one padded document ({@link Batch#keep} then masks the padding). */
    public boolean paddedDocuments() {
        return padded;
    }

    /** Sequences per batch. */
    public int batchSize() {
        return batch;
    }

    /** Input tokens per sequence (each sequence holds one more). */
    public int context() {
        return context;
    }

    public long seed() {
        return seed;
    }

    /** Training batch {@code index}; does not move the position. */
    public Batch batch(long index) {
        return make(TRAIN, index, false);
    }

    /** Held-out batch {@code index}. */
    public Batch evalBatch(long index) {
        return make(EVAL, index, true);
    }

    /** Held-out batches {@code 0..n-1}: the same ones on every call. */
    public List<Batch> evalBatches(int n) {
        if (n < 0) {
            throw new IllegalArgumentException("negative count " + n);
        }
        List<Batch> out = new ArrayList<>(n);
        for (int i = 0; i < n; i++) {
            out.add(evalBatch(i));
        }
        return out;
    }

    /** The training batch at the position, then advances it. */
    public Batch next() {
        return batch(position++);
    }

    /** Index of the batch {@link #next()} returns. */
    public long position() {
        return position;
    }

    /** Moves to batch {@code position}. */
    public void seek(long position) {
        if (position < 0) {
            throw new IllegalArgumentException("negative position " + position);
        }
        this.position = position;
    }

    /** {@code {STATE_VERSION, seed, fingerprint, position}}; save it with a checkpoint. */
    public long[] state() {
        return new long[] {STATE_VERSION, seed, fingerprint, position};
    }

    /**
     * Continues from a saved {@link #state()}.
     *
     * @throws IllegalArgumentException when the state is malformed or was saved by a stream with a
     *     different seed, mixture, domain content or shape
     */
    public void restore(long[] state) {
        if (state == null || state.length != 4 || state[0] != STATE_VERSION) {
            throw new IllegalArgumentException("not a data stream state (version " + STATE_VERSION + "): " + Arrays.toString(state));
        }
        if (state[1] != seed) {
            throw new IllegalArgumentException("state was saved with seed " + state[1] + ", this stream has seed " + seed);
        }
        if (state[2] != fingerprint) {
            throw new IllegalArgumentException("state was saved by a stream with another mixture, data or batch shape");
        }
        seek(state[3]);
    }

    private Batch make(long stream, long index, boolean heldOut) {
        if (index < 0) {
            throw new IllegalArgumentException("negative batch index " + index);
        }
        int stride = context + 1;
        int[] tokens = new int[batch * stride];
        int[] rowDomain = assign(new SplitMix64(SplitMix64.hash(seed, stream, index, -1)));
        int[] rowSource = new int[batch];
        int[] lengths = new int[batch];
        for (int r = 0; r < batch; r++) {
            int d = rowDomain[r];
            long rowSeed = SplitMix64.hash(seed, stream, index, r);
            if (padded) {
                Domain.Drawn doc = domains[d].document(rowSeed, heldOut, tokens, r * stride, stride);
                if (doc.length() < 2) {
                    throw new IllegalStateException("domain `" + names.get(d) + "` has a document of " + doc.length() + " token(s); training needs 2 or more");
                }
                rowSource[r] = sourceIndex[d][doc.source()];
                lengths[r] = doc.length();
            } else {
                rowSource[r] = sourceIndex[d][domains[d].sample(rowSeed, heldOut, tokens, r * stride, stride)];
                lengths[r] = stride;
            }
        }
        return new Batch(index, heldOut, batch, context, tokens, rowDomain, rowSource, lengths);
    }

    /** Systematic sampling of the domains at a random offset, then a Fisher–Yates shuffle. */
    private int[] assign(SplitMix64 rng) {
        int n = cumulative.length;
        int last = n - 1;
        while (last > 0 && shares[last] == 0) {
            last--;
        }
        int[] out = new int[batch];
        double offset = rng.nextDouble();
        int k = 0;
        for (int r = 0; r < batch; r++) {
            double u = (r + offset) / batch;
            while (k < last && (u >= cumulative[k] || shares[k] == 0)) {
                k++;
            }
            out[r] = k;
        }
        for (int r = batch - 1; r > 0; r--) {
            int j = rng.nextInt(r + 1);
            int t = out[r];
            out[r] = out[j];
            out[j] = t;
        }
        return out;
    }

    @Override
    public String toString() {
        return "DataStream[" + mixture() + ", batch=" + batch + ", context=" + context + ", seed=" + seed + (padded ? ", padded documents" : "") + ", position=" + position + "]";
    }
}
