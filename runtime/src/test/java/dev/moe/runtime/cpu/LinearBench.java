package dev.moe.runtime.cpu;

import java.util.Arrays;
import java.util.SplittableRandom;

/**
 * A tiny benchmark (not a test): GFLOP/s of {@link CpuLinear} for {@code T=2048, in=256, out=512}
 * (forward, and the backward's dx + dw), and of the grouped matmul for a fine-grained MoE layer
 * ({@code 2048 tokens × top-6 over 64 experts, in=256, out=128}), for the scalar and vector paths on
 * 1 and 2 threads. Wall-clock times, median and best of several runs after as many warm-up runs (the
 * best is the one least disturbed by other load on the machine, which is printed). Run with
 *
 * <pre>
 * java --add-modules jdk.incubator.vector -cp runtime/target/classes:runtime/target/test-classes \
 *     dev.moe.runtime.cpu.LinearBench
 * </pre>
 */
public final class LinearBench {
    private LinearBench() {}

    public static void main(String[] args) {
        int t = 2048;
        int in = 256;
        int out = 512;
        SplittableRandom rnd = new SplittableRandom(1);
        float[] x = random(rnd, t * in);
        float[] w = random(rnd, out * in);
        float[] y = new float[t * out];
        float[] dy = random(rnd, t * out);
        float[] dx = new float[t * in];
        float[] dw = new float[out * in];

        int experts = 64;
        int k = 6;
        int gOut = 128;
        int gRows = t * k;
        int[] offsets = new int[experts + 1];
        int[] counts = new int[experts];
        for (int r = 0; r < gRows; r++) {
            counts[rnd.nextInt(experts)]++;
        }
        for (int e = 0; e < experts; e++) {
            offsets[e + 1] = offsets[e] + counts[e];
        }
        float[] gx = random(rnd, gRows * in);
        float[] gw = random(rnd, experts * gOut * in);
        float[] gy = new float[gRows * gOut];
        float[] gdy = random(rnd, gRows * gOut);
        float[] gdx = new float[gRows * in];
        float[] gdw = new float[experts * gOut * in];

        double flops = 2.0 * t * in * out;
        double gFlops = 2.0 * gRows * in * gOut;
        System.out.printf("species %s, %d available processors, load average %.1f%n", jdk.incubator.vector.FloatVector.SPECIES_PREFERRED,
                Runtime.getRuntime().availableProcessors(), java.lang.management.ManagementFactory.getOperatingSystemMXBean().getSystemLoadAverage());
        System.out.println("GFLOP/s, median (best)");
        for (boolean vector : new boolean[] {false, true}) {
            for (int threads : new int[] {1, 2}) {
                CpuLinear lin = new CpuLinear(threads, vector);
                String name = (vector ? "vector" : "scalar") + ", " + threads + " thread" + (threads > 1 ? "s" : " ");
                double[] fwd = time(() -> lin.matmul(x, 0, w, 0, y, 0, t, in, out), vector ? 50 : 5);
                double[] bwd = time(() -> lin.matmulBackward(x, 0, w, 0, dy, 0, dx, 0, dw, 0, t, in, out), vector ? 25 : 3);
                double[] gf = time(() -> lin.groupedMatmul(gx, gw, 0, gy, offsets, experts, in, gOut), vector ? 25 : 3);
                double[] gb = time(() -> lin.groupedMatmulBackward(gx, gw, 0, gdy, gdx, gdw, 0, offsets, experts, in, gOut), vector ? 15 : 3);
                System.out.printf("%s  matmul %s  backward %s  grouped %s  grouped backward %s%n", name, rate(flops, fwd), rate(2 * flops, bwd),
                        rate(gFlops, gf), rate(2 * gFlops, gb));
            }
        }
    }

    private static String rate(double flops, double[] seconds) {
        return String.format("%6.1f (%6.1f)", flops / seconds[0] / 1e9, flops / seconds[1] / 1e9);
    }

    /** The median and the best of {@code reps} timed runs after as many warm-up runs, in seconds. */
    private static double[] time(Runnable r, int reps) {
        for (int i = 0; i < reps; i++) {
            r.run();
        }
        double[] s = new double[reps];
        for (int i = 0; i < reps; i++) {
            long t0 = System.nanoTime();
            r.run();
            s[i] = (System.nanoTime() - t0) / 1e9;
        }
        Arrays.sort(s);
        return new double[] {s[reps / 2], s[0]};
    }

    private static float[] random(SplittableRandom rnd, int n) {
        float[] a = new float[n];
        for (int i = 0; i < n; i++) {
            a[i] = (float) (rnd.nextDouble() * 2 - 1);
        }
        return a;
    }
}
