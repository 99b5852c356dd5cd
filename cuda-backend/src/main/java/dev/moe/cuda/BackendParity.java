package dev.moe.cuda;

import dev.moe.runtime.Backend;
import dev.moe.runtime.cpu.CpuBackend;
import java.util.ArrayList;
import java.util.List;
import java.util.Random;

/**
 * The primitives that {@link CudaBackend} runs on the GPU, against the CPU backend, on 24 shapes
 * (odd sizes, one row, offsets into packed weights, experts with no rows, k = 1): relative error at
 * most 1e-4 (fp32 on both sides). Prints a table; exits 1 on any failure.
 */
public final class BackendParity {

    /** rows × in → out; for grouped cases, the rows of each expert. */
    public record Shape(int rows, int in, int out, int[] expertRows) {
        @Override
        public String toString() {
            return expertRows == null ? String.format("matmul %dx%d->%d", rows, in, out)
                    : String.format("grouped %s x%d->%d", java.util.Arrays.toString(expertRows), in, out);
        }
    }

    public static List<Shape> shapes() {
        List<Shape> s = new ArrayList<>();
        int[][] dense = {{1, 1, 1}, {1, 64, 64}, {3, 17, 5}, {7, 128, 33}, {64, 64, 64}, {100, 96, 200}, {257, 31, 129}, {512, 128, 384},
            {33, 256, 1}, {2, 1000, 3}, {1024, 64, 256}, {5, 5, 1000}};
        for (int[] d : dense) {
            s.add(new Shape(d[0], d[1], d[2], null));
        }
        int[][][] grouped = {{{4, 0, 3, 9}, {16, 24}}, {{0, 0, 0, 5}, {8, 8}}, {{1}, {3, 7}}, {{30, 30}, {64, 128}}, {{0, 12, 0, 0, 7, 1}, {20, 12}},
            {{50, 0, 50, 0, 50, 0, 50, 0}, {32, 96}}, {{17, 3, 64, 1}, {33, 65}}, {{128, 128}, {128, 256}}, {{1, 1, 1, 1, 1, 1, 1, 1}, {8, 4}},
            {{0, 0, 9}, {128, 32}}, {{200}, {16, 16}}, {{5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16}, {24, 48}}};
        for (int[][] g : grouped) {
            int rows = java.util.Arrays.stream(g[0]).sum();
            s.add(new Shape(rows, g[1][0], g[1][1], g[0]));
        }
        return s;
    }

    /** The largest relative error over the outputs and gradients of one shape. */
    public static double check(Backend gpu, Backend cpu, Shape s, long seed) {
        Random rnd = new Random(seed);
        int rows = s.rows(), in = s.in(), out = s.out();
        double worst = 0;
        if (s.expertRows() == null) {
            int xOff = 3, wOff = 5, yOff = 2; // offsets into larger arrays, as the generated code passes them
            float[] x = Compare.gaussian(rnd, xOff + rows * in), w = Compare.gaussian(rnd, wOff + out * in), dy = Compare.gaussian(rnd, yOff + rows * out);
            float[] y1 = new float[yOff + rows * out], y2 = new float[yOff + rows * out];
            gpu.matmul(x, xOff, w, wOff, y1, yOff, rows, in, out);
            cpu.matmul(x, xOff, w, wOff, y2, yOff, rows, in, out);
            worst = Math.max(worst, Compare.rel(y1, y2));
            float[] dx1 = Compare.gaussian(new Random(seed + 1), xOff + rows * in), dx2 = dx1.clone();
            float[] dw1 = Compare.gaussian(new Random(seed + 2), wOff + out * in), dw2 = dw1.clone();
            gpu.matmulBackward(x, xOff, w, wOff, dy, yOff, dx1, xOff, dw1, wOff, rows, in, out);
            cpu.matmulBackward(x, xOff, w, wOff, dy, yOff, dx2, xOff, dw2, wOff, rows, in, out);
            worst = Math.max(worst, Math.max(Compare.rel(dx1, dx2), Compare.rel(dw1, dw2)));
        } else {
            int experts = s.expertRows().length;
            int[] offsets = new int[experts + 1];
            for (int e = 0; e < experts; e++) {
                offsets[e + 1] = offsets[e] + s.expertRows()[e];
            }
            int wOff = 7;
            float[] x = Compare.gaussian(rnd, rows * in), w = Compare.gaussian(rnd, wOff + experts * out * in), dy = Compare.gaussian(rnd, rows * out);
            float[] y1 = new float[rows * out], y2 = new float[rows * out];
            gpu.groupedMatmul(x, w, wOff, y1, offsets, experts, in, out);
            cpu.groupedMatmul(x, w, wOff, y2, offsets, experts, in, out);
            worst = Math.max(worst, Compare.rel(y1, y2));
            float[] dx1 = Compare.gaussian(new Random(seed + 1), rows * in), dx2 = dx1.clone();
            float[] dw1 = Compare.gaussian(new Random(seed + 2), wOff + experts * out * in), dw2 = dw1.clone();
            gpu.groupedMatmulBackward(x, w, wOff, dy, dx1, dw1, wOff, offsets, experts, in, out);
            cpu.groupedMatmulBackward(x, w, wOff, dy, dx2, dw2, wOff, offsets, experts, in, out);
            worst = Math.max(worst, Math.max(Compare.rel(dx1, dx2), Compare.rel(dw1, dw2)));
            // dx may be null (the first layer's input needs no gradient)
            float[] dw3 = dw1.clone(), dw4 = dw1.clone();
            gpu.groupedMatmulBackward(x, w, wOff, dy, null, dw3, wOff, offsets, experts, in, out);
            cpu.groupedMatmulBackward(x, w, wOff, dy, null, dw4, wOff, offsets, experts, in, out);
            worst = Math.max(worst, Compare.rel(dw3, dw4));
        }
        return worst;
    }

    public static void main(String[] args) {
        Backend cpu = new CpuBackend(Runtime.getRuntime().availableProcessors(), CpuBackend.VECTOR_API);
        try (CudaBackend gpu = new CudaBackend(0, cpu)) {
            System.out.printf("CudaBackend against CpuBackend on %s (fp32; tolerance 1e-4)%n", gpu.context().deviceName);
            int failures = 0;
            long seed = 11;
            for (Shape s : shapes()) {
                double err = check(gpu, cpu, s, seed++);
                boolean ok = err <= 1e-4;
                failures += ok ? 0 : 1;
                System.out.printf("%-60s %9.2e  %s%n", s, err, ok ? "ok" : "FAIL");
            }
            System.out.printf("%d of %d shapes passed%n", shapes().size() - failures, shapes().size());
            System.exit(failures == 0 ? 0 : 1);
        } catch (CudaException e) {
            System.err.println("moe: " + e.getMessage());
            System.exit(2);
        }
    }
}
