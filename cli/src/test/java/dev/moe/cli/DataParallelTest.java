package dev.moe.cli;

import static com.google.common.truth.Truth.assertThat;
import static com.google.common.truth.Truth.assertWithMessage;

import dev.moe.dsl.SourceFile;
import dev.moe.runtime.Parameter;
import dev.moe.runtime.TrainableModel;
import dev.moe.runtime.data.DataStream;
import dev.moe.runtime.train.Collective;
import dev.moe.runtime.train.Trainer;
import java.io.IOException;
import java.io.PrintStream;
import java.io.PrintWriter;
import java.io.StringWriter;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.concurrent.BrokenBarrierException;
import java.util.concurrent.CyclicBarrier;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.TimeoutException;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * Data-parallel training without GPUs: the launcher's world of one through {@code --gpus 1} is the
 * plain run bit for bit, and N ranks (threads of this JVM, summing through a barrier) give the
 * single-process run's losses and weights, which checks the sharding and the loss scaling that NCCL's
 * sums rely on.
 */
class DataParallelTest {
    /** An MoE whose loss is a plain mean over tokens (no batch-level balancing term, no jitter). */
    static final String RECIPE = """
            model Tiny {
              vocab 256
              context 16
              dim 16
              heads 2
              moe experts {
                shared 1 x swiglu(hidden: 16)
                routed 4 x swiglu(hidden: 16)
                router { top_k 2  normalize true }
              }
              layers 2 {
                first 1: attention, swiglu(hidden: 32)
                rest: attention, experts
              }
            }
            """;

    /**
     * An aux-free expert bias (updated from the step's loads, which must be the whole batch's on every
     * rank) and a per-sequence balance loss (exact under any split of the sequences).
     */
    static final String BIASED = RECIPE.replace("router { top_k 2  normalize true }",
            "router { top_k 2  normalize true  bias aux_free(rate: 0.01) }\n    balance aux(coef: 0.01, scope: sequence)");

    @TempDir
    Path dir;

    @Test
    void gpusOneOnTheCpuIsThePlainRunBitForBit() throws IOException {
        Path recipe = dir.resolve("tiny.moe");
        // A declared placement changes nothing yet: the worker says so.
        Files.writeString(recipe, TrainCommandTest.RECIPE.replace("  steps 12\n", "  steps 12\n  experts_per_rank 2\n"));
        Cli.Run plain = Cli.run("train", recipe.toString(), "--out", dir.resolve("plain").toString(), "--steps", "3", "--threads", "1");
        assertWithMessage("%s", plain).that(plain.exit()).isEqualTo(0);
        Cli.Run launched = Cli.run("train", recipe.toString(), "--out", dir.resolve("launched").toString(), "--steps", "3", "--threads", "1",
                "--gpus", "1");
        assertWithMessage("%s", launched).that(launched.exit()).isEqualTo(0);
        assertThat(launched.out()).contains("[rank 0] training Tiny");
        assertThat(launched.out()).contains("[rank 0] note: Tiny declares where its experts run, but this run is data-parallel (every rank runs every expert); --expert-parallel uses the placement");
        assertThat(plain.out()).doesNotContain("experts_per_rank");
        assertThat(TrainCommandTest.tensors(dir.resolve("launched/last.safetensors")))
                .isEqualTo(TrainCommandTest.tensors(dir.resolve("plain/last.safetensors")));
        assertThat(metrics(dir.resolve("launched"))).isEqualTo(metrics(dir.resolve("plain")));
    }

    @Test
    void aWorkerThatFailsEndsTheLaunchWithItsRankAndReason() throws IOException {
        Path recipe = dir.resolve("tiny.moe");
        Files.writeString(recipe, TrainCommandTest.RECIPE);
        Cli.Run r = Cli.run("train", recipe.toString(), "--out", dir.resolve("bad").toString(), "--seq", "999", "--gpus", "1");
        assertWithMessage("%s", r).that(r.exit()).isEqualTo(1);
        assertThat(r.out()).contains("[rank 0] moe: error: --seq must be between 1 and the model's context (16)");
        assertThat(r.out()).contains("moe: rank 0 exited with status 1 (its last line: moe: error: --seq must be between 1 and the model's context (16))");
    }

    @Test
    void severalRanksNeedNcclAndBadCountsAreUsageErrors() throws IOException {
        Path recipe = dir.resolve("tiny.moe");
        Files.writeString(recipe, TrainCommandTest.RECIPE);
        Cli.Run two = Cli.run("train", recipe.toString(), "--out", dir.resolve("r").toString(), "--gpus", "2");
        assertThat(two.exit()).isEqualTo(2);
        assertThat(two.err()).contains("moe: error: --gpus 2 needs --backend cuda");
        Cli.Run zero = Cli.run("train", recipe.toString(), "--out", dir.resolve("r").toString(), "--gpus", "0");
        assertThat(zero.exit()).isEqualTo(2);
        assertThat(zero.err()).contains("--gpus must be at least 1");
    }

    @Test
    void twoAndThreeRanksTrainLikeOneProcess() throws Exception {
        ranksTrainLikeOneProcess(RECIPE, "plain");
    }

    @Test
    void theExpertBiasIsUpdatedFromTheWholeBatchOnEveryRank() throws Exception {
        ranksTrainLikeOneProcess(BIASED, "biased");
        assertThat(BIASED).contains("aux_free");
    }

    private void ranksTrainLikeOneProcess(String recipe, String name) throws Exception {
        Trainer.Options single = options(dir.resolve(name + "-single"));
        TrainableModel reference = tiny(recipe);
        Trainer.Result want = new Trainer(reference, data(), single, quiet()).run();
        for (int ranks : new int[] {2, 3}) {
            Path out = dir.resolve(name + "-ranks-" + ranks);
            ThreadWorld world = new ThreadWorld(ranks);
            List<TrainableModel> models = new ArrayList<>();
            for (int r = 0; r < ranks; r++) {
                models.add(tiny(recipe));
            }
            ExecutorService pool = Executors.newFixedThreadPool(ranks);
            List<Future<Trainer.Result>> results = new ArrayList<>();
            for (int r = 0; r < ranks; r++) {
                TrainableModel m = models.get(r);
                Collective c = world.rank(r);
                results.add(pool.submit(() -> new Trainer(m, data(), options(out), quiet()).world(c).run()));
            }
            List<Trainer.Result> got = new ArrayList<>();
            for (Future<Trainer.Result> f : results) {
                got.add(f.get(120, TimeUnit.SECONDS));
            }
            pool.shutdown();
            for (Trainer.Result r : got) {
                assertThat(r.losses()).hasSize(want.losses().size());
                for (int i = 0; i < r.losses().size(); i++) {
                    assertWithMessage("%s ranks, step %s", ranks, i + 1).that(r.losses().get(i))
                            .isWithin(1e-5 * Math.abs(want.losses().get(i))).of(want.losses().get(i));
                }
            }
            // Every replica holds the same weights, and they are the single process's up to summation order.
            List<Parameter> ref = reference.parameters();
            for (int r = 0; r < ranks; r++) {
                List<Parameter> mine = models.get(r).parameters();
                for (int p = 0; p < ref.size(); p++) {
                    assertWithMessage("%s on rank %s", mine.get(p).name(), r).that(mine.get(p).values())
                            .isEqualTo(models.getFirst().parameters().get(p).values());
                    float[] a = mine.get(p).values(), b = ref.get(p).values();
                    for (int i = 0; i < a.length; i++) {
                        assertWithMessage("%s[%s] with %s ranks", mine.get(p).name(), i, ranks).that((double) a[i]).isWithin(2e-4).of(b[i]);
                    }
                }
            }
            // Rank 0 alone wrote, and the checkpoint has the single run's layout.
            assertThat(Files.readAllLines(out.resolve("metrics.jsonl"))).hasSize(want.losses().size());
            assertThat(TrainCommandTest.tensors(out.resolve("last.safetensors")).keySet())
                    .isEqualTo(TrainCommandTest.tensors(dir.resolve(name + "-single/last.safetensors")).keySet());
        }
    }

    /** Runs {@code ranks} trainers as threads of one world; {@code setup} adjusts rank r's trainer before it runs. */
    private static List<Trainer.Result> inWorld(int ranks, Trainer.Options options, java.util.function.BiConsumer<Integer, Trainer> setup)
            throws Exception {
        ThreadWorld world = new ThreadWorld(ranks);
        ExecutorService pool = Executors.newFixedThreadPool(ranks);
        try {
            List<Future<Trainer.Result>> results = new ArrayList<>();
            for (int r = 0; r < ranks; r++) {
                Trainer t = new Trainer(tiny(RECIPE), data(), options, quiet()).world(world.rank(r));
                setup.accept(r, t);
                results.add(pool.submit(t::run));
            }
            List<Trainer.Result> out = new ArrayList<>();
            for (Future<Trainer.Result> f : results) {
                out.add(f.get(120, TimeUnit.SECONDS));
            }
            return out;
        } finally {
            pool.shutdownNow();
        }
    }

    @Test
    void aStopAskedOfOneRankStopsEveryRankAtTheSameStep() throws Exception {
        Path out = dir.resolve("stopped");
        List<Trainer.Result> got = inWorld(2, options(out), (rank, t) -> {
            if (rank == 1) {
                t.requestStop(); // as Ctrl-C reaching only rank 1 would
            }
        });
        for (Trainer.Result r : got) {
            assertThat(r.interrupted()).isTrue();
            assertThat(r.steps()).isEqualTo(1);
        }
        assertThat(Files.readAllLines(out.resolve("metrics.jsonl"))).hasSize(1);
        assertThat(TrainCommandTest.tensors(out.resolve("last.safetensors"))).containsEntry("__step", "1");
    }

    @Test
    void aRunSavedByTwoRanksResumesInOneProcess() throws Exception {
        Trainer.Result whole = new Trainer(tiny(RECIPE), data(), options(dir.resolve("whole")), quiet()).run();
        Path out = dir.resolve("moved");
        Trainer.Options first = options(out);
        first = new Trainer.Options(first.steps(), first.batch(), first.microBatches(), first.seq(), first.lr(), first.beta1(), first.beta2(),
                first.eps(), first.weightDecay(), first.schedule(), first.warmup(), first.minLr(), first.gradClip(), first.seed(), out, 0, false, 2,
                Map.of());
        inWorld(2, first, (rank, t) -> {});
        Trainer.Options rest = new Trainer.Options(first.steps(), first.batch(), first.microBatches(), first.seq(), first.lr(), first.beta1(),
                first.beta2(), first.eps(), first.weightDecay(), first.schedule(), first.warmup(), first.minLr(), first.gradClip(), first.seed(), out, 0,
                true, 0, Map.of());
        Trainer.Result resumed = new Trainer(tiny(RECIPE), data(), rest, quiet()).run();
        assertThat(resumed.steps()).isEqualTo(whole.steps());
        List<String> metrics = Files.readAllLines(out.resolve("metrics.jsonl"));
        assertThat(metrics).hasSize((int) whole.steps());
        for (int i = 0; i < resumed.losses().size(); i++) {
            double want = whole.losses().get(2 + i);
            assertThat(resumed.losses().get(i)).isWithin(1e-5 * want).of(want);
        }
    }

    /**
     * A model whose pull to the host is a collective (an expert-parallel GPU model whose ranks hold their own experts only): every
     * rank must take part in each save, not only rank 0, or rank 0 would wait forever for the others.
     */
    @Test
    void aCollectivePullIsMadeByEveryRankAtEverySave() throws Exception {
        Path out = dir.resolve("collective");
        ThreadWorld world = new ThreadWorld(2);
        java.util.concurrent.atomic.AtomicIntegerArray pulls = new java.util.concurrent.atomic.AtomicIntegerArray(2);
        ExecutorService pool = Executors.newFixedThreadPool(2);
        try {
            List<Future<Trainer.Result>> results = new ArrayList<>();
            for (int r = 0; r < 2; r++) {
                Collective c = world.rank(r);
                int rank = r;
                CollectivePullModel m = new CollectivePullModel(tiny(RECIPE), c, () -> pulls.incrementAndGet(rank));
                results.add(pool.submit(() -> new Trainer(m, data(), optionsEverySecondStep(out), quiet()).world(c).run()));
            }
            for (Future<Trainer.Result> f : results) {
                assertThat(f.get(120, TimeUnit.SECONDS).steps()).isEqualTo(4);
            }
        } finally {
            pool.shutdownNow();
        }
        // saves at steps 2 and 4: two pulls on each rank
        assertThat(pulls.get(0)).isEqualTo(2);
        assertThat(pulls.get(1)).isEqualTo(2);
        assertThat(TrainCommandTest.tensors(out.resolve("last.safetensors"))).containsEntry("__step", "4");
        assertThat(Files.exists(out.resolve("step-000002.safetensors"))).isTrue();
    }

    /** {@link #options} with a checkpoint kept every second step. */
    private static Trainer.Options optionsEverySecondStep(Path out) {
        Trainer.Options o = options(out);
        return new Trainer.Options(o.steps(), o.batch(), o.microBatches(), o.seq(), o.lr(), o.beta1(), o.beta2(), o.eps(), o.weightDecay(), o.schedule(),
                o.warmup(), o.minLr(), o.gradClip(), o.seed(), out, 2, false, 0, Map.of());
    }

    /**
     * A CPU model dressed as a device model whose {@link dev.moe.runtime.train.DeviceTrainable#pullToHost} is a collective: it
     * sums over the world (which waits for every rank, and times out if one never comes) and counts its calls.
     */
    private record CollectivePullModel(TrainableModel inner, Collective world, Runnable counted)
            implements TrainableModel, dev.moe.runtime.train.DeviceTrainable {
        @Override public String name() { return inner.name(); }
        @Override public int vocab() { return inner.vocab(); }
        @Override public int context() { return inner.context(); }
        @Override public List<Parameter> parameters() { return inner.parameters(); }
        @Override public void initialize(long seed) { inner.initialize(seed); }
        @Override public void beginStep() { inner.beginStep(); }
        @Override public void setStep(long step) { inner.setStep(step); }
        @Override public void setTraining(boolean training) { inner.setTraining(training); }
        @Override public void setDomains(List<String> domains) { inner.setDomains(domains); }
        @Override public void setMask(boolean[] keep) { inner.setMask(keep); }
        @Override public double forward(int[] inputs, int[] targets, int batch, int seq) { return inner.forward(inputs, targets, batch, seq); }
        @Override public double lastCrossEntropy() { return inner.lastCrossEntropy(); }
        @Override public void backward(float scale) { inner.backward(scale); }
        @Override public void endStep() { inner.endStep(); }
        @Override public long[] stepLoads() { return inner.stepLoads(); }
        @Override public void setStepLoads(long[] loads) { inner.setStepLoads(loads); }
        @Override public float[] lastLogits(int[] inputs, int batch, int seq) { return inner.lastLogits(inputs, batch, seq); }
        @Override public int[][] expertLoads() { return inner.expertLoads(); }
        @Override public int[][][] expertLoadsBySequence() { return inner.expertLoadsBySequence(); }
        @Override public int[] moeLayers() { return inner.moeLayers(); }
        @Override public void gradientsStayOnDevice(boolean stay) {}
        @Override public void allReduceGradients(Collective w) { w.allReduceGradients(inner.parameters()); }

        @Override
        public double clipAndStep(dev.moe.runtime.train.AdamW adam, List<Parameter> params, double lr, double maxNorm) {
            adam.step(params, lr);
            return 0;
        }

        @Override
        public void pullToHost(dev.moe.runtime.train.AdamW adam) {
            world.allReduceSum(new double[1]);
            counted.run();
        }

        @Override
        public boolean collectivePull() {
            return true;
        }
    }

    private static TrainableModel tiny(String recipe) throws Recipes.UserError {
        return Recipes.load(new SourceFile("tiny.moe", recipe), null, 1, new PrintWriter(new StringWriter())).instance();
    }

    /** Five sequences a batch: 3 ranks take 1, 2 and 2 of them; two micro-batches a step. */
    private static Trainer.Options options(Path out) {
        return new Trainer.Options(4, 5, 2, 8, 0.01, 0.9, 0.95, 1e-8, 0.01, "cosine", 1, 0.001, 1.0, 3, out, 0, false, 0, Map.of());
    }

    private static DataStream data() {
        return DataStream.synthetic(Map.of("arithmetic", 0.5, "copy", 0.5), 5, 8, 3);
    }

    private static PrintStream quiet() {
        return new PrintStream(java.io.OutputStream.nullOutputStream());
    }

    private static List<String> metrics(Path run) throws IOException {
        return Files.readAllLines(run.resolve("metrics.jsonl")).stream().map(l -> l.replaceAll("\"tokens_per_s\":[0-9.]+|,\"model_tflops\":[0-9.e+-]+|,\"mfu\":[0-9.e+-]+", "")).toList();
    }

    /**
     * Ranks as threads of this JVM, for this test only: each deposits its array, and after a barrier
     * every rank adds all of them up in rank order, so that each gets the same sum.
     */
    static final class ThreadWorld {
        private final int size;
        private final CyclicBarrier barrier;
        private final Object[] slots;

        ThreadWorld(int size) {
            this.size = size;
            this.barrier = new CyclicBarrier(size);
            this.slots = new Object[size];
        }

        private void await() {
            try {
                barrier.await(60, TimeUnit.SECONDS);
            } catch (InterruptedException | BrokenBarrierException | TimeoutException e) {
                throw new IllegalStateException("a rank did not arrive", e);
            }
        }

        Collective rank(int rank) {
            return new Collective() {
                @Override
                public int rank() {
                    return rank;
                }

                @Override
                public int size() {
                    return size;
                }

                @Override
                public void allReduceSum(float[] values, int offset, int length) {
                    slots[rank] = java.util.Arrays.copyOfRange(values, offset, offset + length);
                    await();
                    for (int i = 0; i < length; i++) {
                        float s = 0;
                        for (int r = 0; r < size; r++) {
                            s += ((float[]) slots[r])[i];
                        }
                        values[offset + i] = s;
                    }
                    await();
                }

                @Override
                public void allReduceSum(double[] values) {
                    slots[rank] = values.clone();
                    await();
                    for (int i = 0; i < values.length; i++) {
                        double s = 0;
                        for (int r = 0; r < size; r++) {
                            s += ((double[]) slots[r])[i];
                        }
                        values[i] = s;
                    }
                    await();
                }

                @Override
                public void allReduceSum(long[] values) {
                    slots[rank] = values.clone();
                    await();
                    for (int i = 0; i < values.length; i++) {
                        long s = 0;
                        for (int r = 0; r < size; r++) {
                            s += ((long[]) slots[r])[i];
                        }
                        values[i] = s;
                    }
                    await();
                }
            };
        }
    }
}
