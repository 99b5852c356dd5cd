package dev.moe.runtime.io;

import java.io.IOException;
import java.io.InputStream;
import java.lang.foreign.ValueLayout;
import java.nio.file.Path;
import java.security.MessageDigest;
import java.security.NoSuchAlgorithmException;
import java.util.List;
import java.util.Map;
import java.util.SplittableRandom;

/**
 * The child JVM of {@link SafeTensorsCrashSafetyTest}: saves checkpoint A, then B, then A, ... to
 * the path in {@code args[0]} until it is killed. Prints {@code ready} once the checkpoints are
 * built and {@code saved <i>} after each completed save. It exits by itself when its standard input
 * closes (the parent died) or after 60 seconds, so that it can never be orphaned for long.
 */
final class SafeTensorsCrashChild {
    /** 2^20 F32 values per checkpoint: 4 MiB, in two tensors. */
    static final int ELEMENTS = 1 << 20;

    private SafeTensorsCrashChild() {}

    static List<Tensor> checkpoint(char which) {
        SplittableRandom rnd = new SplittableRandom(which == 'A' ? 0xA : 0xB);
        float[] w1 = new float[ELEMENTS / 2];
        float[] w2 = new float[ELEMENTS / 2];
        for (int i = 0; i < w1.length; i++) {
            w1[i] = (float) rnd.nextGaussian();
            w2[i] = (float) rnd.nextGaussian();
        }
        return List.of(
                Tensor.f32("expert.0.w1", new long[] {512, 1024}, w1),
                Tensor.f32("expert.0.w2", new long[] {1024, 512}, w2));
    }

    static Map<String, String> metadata(char which) {
        return Map.of("checkpoint", String.valueOf(which));
    }

    /** SHA-256 over the tensors' data bytes, in order. */
    static byte[] digest(List<Tensor> tensors) {
        MessageDigest md = sha256();
        for (Tensor t : tensors) {
            md.update(t.data().toArray(ValueLayout.JAVA_BYTE));
        }
        return md.digest();
    }

    static MessageDigest sha256() {
        try {
            return MessageDigest.getInstance("SHA-256");
        } catch (NoSuchAlgorithmException e) {
            throw new AssertionError(e);
        }
    }

    public static void main(String[] args) throws IOException {
        Path target = Path.of(args[0]);
        Thread watchdog = new Thread(() -> {
            try (InputStream in = System.in) {
                while (in.read() >= 0) {
                    // the parent never writes; EOF means it is gone
                }
            } catch (IOException ignored) {
                // treat like EOF
            }
            Runtime.getRuntime().halt(3);
        });
        watchdog.setDaemon(true);
        watchdog.start();
        List<Tensor> a = checkpoint('A');
        List<Tensor> b = checkpoint('B');
        long deadline = System.nanoTime() + 60_000_000_000L;
        System.out.println("ready");
        System.out.flush();
        for (long i = 0; System.nanoTime() < deadline; i++) {
            char which = i % 2 == 0 ? 'A' : 'B';
            SafeTensors.write(target, which == 'A' ? a : b, metadata(which));
            System.out.println("saved " + i);
            System.out.flush();
        }
        Runtime.getRuntime().halt(4);
    }
}
