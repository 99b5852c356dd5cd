package dev.moe.cuda;

import java.lang.foreign.MemorySegment;
import java.util.ArrayList;
import java.util.Iterator;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/**
 * A run of small launches (kernels, cuBLASLt products, copies) replayed as one CUDA graph while their arguments repeat.
 *
 * <p>Why: a MoE layer's routing is a chain of short kernels (router product, top-k, ranking, offsets) that each take a few
 * microseconds on the GPU, while queueing each one cost the host 10 to 40 µs on the H200 machine (MoeLayerBench's host
 * column), so the GPU waited on the host. A graph launch queues the whole chain at once.
 *
 * <p>How: while recording, {@link CudaContext#launch} and {@link CublasLt}'s products (and whatever the caller adds with
 * {@link #step}) do not run but append a step and its arguments. {@link #run} then launches the cached graph whose steps had
 * exactly these arguments (every pointer, size and scalar), or captures the steps into a new graph. The last
 * {@value #CACHED} graphs are kept: the caching allocator hands a layer its buffers in a few arrangements that repeat.
 * Stale arguments cannot be replayed, because every argument is part of the key. If capturing fails, or if after
 * {@value #UNREWARDING} captures they outnumber the cache's hits twice over (arguments that change every time), the steps run
 * one by one from then on.
 */
public final class LaunchGraph implements AutoCloseable {
    /** Graphs kept per run of launches. */
    static final int CACHED = 4;
    /** Captures after which a graph that is mostly missed gives up. */
    static final int UNREWARDING = 16;

    /** What captures and launches graphs: the CUDA driver on a stream, or a stand-in in tests. */
    interface Capture {
        void begin();

        /** Ends the capture and returns an executable graph. */
        Object end();

        /** Abandons a capture that failed part way (the stream is usable again after). */
        void abort();

        void launch(Object exec);

        void destroy(Object exec);
    }

    private final Capture capture;
    private final List<Object> key = new ArrayList<>();
    private final List<Runnable> steps = new ArrayList<>();
    private final LinkedHashMap<List<Object>, Object> graphs = new LinkedHashMap<>(8, 0.75f, true);
    private boolean recording;
    private boolean broken;
    private long hits;
    private long captures;

    LaunchGraph(Capture capture) {
        this.capture = capture;
    }

    /** A graph of work on {@code ctx}'s stream. */
    public static LaunchGraph on(CudaContext ctx) {
        MemorySegment stream = ctx.stream;
        Driver driver = ctx.driver;
        return new LaunchGraph(new Capture() {
            @Override
            public void begin() {
                driver.beginCapture(stream);
            }

            @Override
            public Object end() {
                MemorySegment graph = driver.endCapture(stream);
                try {
                    return driver.instantiate(graph);
                } finally {
                    driver.destroyGraph(graph);
                }
            }

            @Override
            public void abort() {
                try {
                    MemorySegment graph = driver.endCapture(stream);
                    if (graph.address() != 0) {
                        driver.destroyGraph(graph);
                    }
                } catch (CudaException ignored) {
                    // the capture was invalidated: ending it is all that was needed
                }
            }

            @Override
            public void launch(Object exec) {
                driver.launchGraph((MemorySegment) exec, stream);
            }

            @Override
            public void destroy(Object exec) {
                driver.destroyGraphExec((MemorySegment) exec);
            }
        });
    }

    /**
     * Whether MoE layers replay their routing as graphs: only with {@code -Dmoe.cuda.graphs=true} or {@code MOE_CUDA_GRAPHS=1}.
     * Off by default because it did not pay on the H200 machine (2026-12-02, MoeLayerBench at 8192 tokens): launching the
     * graph cost the host 64-84 µs, against 56-80 µs for the routing's seven launches one by one, and the layer's forward was
     * 1-3% slower or the same (bench/results/gpu-2026-12-02-session3/).
     */
    public static boolean enabled() {
        return "true".equals(System.getProperty("moe.cuda.graphs")) || "1".equals(System.getenv("MOE_CUDA_GRAPHS"));
    }

    /** Starts recording; until {@link #run}, launches through the context and its products are steps of this graph. */
    public void begin() {
        if (recording) {
            throw new IllegalStateException("already recording");
        }
        key.clear();
        steps.clear();
        recording = true;
    }

    /** Whether steps are being recorded (and launches must be added with {@link #step} instead of run). */
    public boolean recording() {
        return recording;
    }

    /** Adds a step: {@code work} issues the launch; {@code args} are everything it depends on (compared by value). */
    public void step(Runnable work, Object... args) {
        if (!recording) {
            throw new IllegalStateException("not recording");
        }
        key.add(List.of(args));
        steps.add(work);
    }

    /** Stops recording and issues the recorded steps: as the cached graph for these arguments, a new graph, or one by one. */
    public void run() {
        if (!recording) {
            throw new IllegalStateException("not recording");
        }
        recording = false;
        if (steps.isEmpty()) {
            return;
        }
        if (broken) {
            steps.forEach(Runnable::run);
            return;
        }
        List<Object> k = List.copyOf(key);
        Object exec = graphs.get(k);
        if (exec != null) {
            hits++;
            capture.launch(exec);
            return;
        }
        if (captures >= UNREWARDING && captures > 2 * hits) {
            // the arguments keep changing (a seed per step, say): capturing costs more than launching one by one
            broken = true;
            close();
            steps.forEach(Runnable::run);
            return;
        }
        capture.begin();
        try {
            steps.forEach(Runnable::run);
        } catch (RuntimeException e) {
            capture.abort();
            broken = true;
            close();
            steps.forEach(Runnable::run);
            return;
        }
        exec = capture.end();
        captures++;
        graphs.put(k, exec);
        if (graphs.size() > CACHED) {
            Iterator<Map.Entry<List<Object>, Object>> eldest = graphs.entrySet().iterator();
            capture.destroy(eldest.next().getValue());
            eldest.remove();
        }
        capture.launch(exec);
    }

    /** Stops recording without issuing anything. */
    public void abandon() {
        recording = false;
        key.clear();
        steps.clear();
    }

    /** Runs served by a cached graph. */
    public long hits() {
        return hits;
    }

    /** Graphs captured (runs whose arguments had no cached graph). */
    public long captures() {
        return captures;
    }

    /** Whether capturing failed once, so the steps now run one by one. */
    public boolean broken() {
        return broken;
    }

    @Override
    public void close() {
        for (Object exec : graphs.values()) {
            capture.destroy(exec);
        }
        graphs.clear();
    }
}
