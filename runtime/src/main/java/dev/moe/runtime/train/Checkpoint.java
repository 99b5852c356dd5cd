package dev.moe.runtime.train;

import dev.moe.runtime.Parameter;
import dev.moe.runtime.io.SafeTensors;
import dev.moe.runtime.io.SafeTensorsFile;
import dev.moe.runtime.io.Tensor;
import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/**
 * A training checkpoint in one safetensors file: every parameter under its own name, the optimiser
 * moments under {@code optimizer.m.NAME} and {@code optimizer.v.NAME}, and in the metadata the step,
 * the seed, the model's name and the recipe's source (so that {@code moe generate} needs nothing
 * else). Written atomically (temporary file, fsync, rename, fsync of the directory).
 */
public final class Checkpoint {
    public static final String FORMAT = "moe-checkpoint-1";

    private Checkpoint() {}

    public static void save(Path file, List<Parameter> parameters, AdamW optimizer, Map<String, String> metadata) throws IOException {
        List<Tensor> tensors = new ArrayList<>();
        for (Parameter p : parameters) {
            tensors.add(Tensor.f32(p.name(), longs(p.shape()), p.values()));
        }
        if (optimizer != null) {
            for (Parameter p : parameters) {
                float[] m = optimizer.firstMoments().get(p.name());
                if (m != null) {
                    tensors.add(Tensor.f32("optimizer.m." + p.name(), longs(p.shape()), m));
                    tensors.add(Tensor.f32("optimizer.v." + p.name(), longs(p.shape()), optimizer.secondMoments().get(p.name())));
                }
            }
        }
        Map<String, String> meta = new LinkedHashMap<>(metadata);
        meta.put("format", FORMAT);
        if (optimizer != null) {
            meta.put("optimizer.steps", Long.toString(optimizer.steps()));
        }
        Files.createDirectories(file.toAbsolutePath().getParent());
        SafeTensors.write(file, tensors, meta);
    }

    /** The metadata of a checkpoint, after checking it is one of ours. */
    public static Map<String, String> metadata(Path file) throws IOException {
        try (SafeTensorsFile f = SafeTensors.open(file)) {
            Map<String, String> meta = f.metadata();
            if (!FORMAT.equals(meta.get("format"))) {
                throw new IOException(file + " is not a moe checkpoint (no `format: " + FORMAT + "` in its metadata)");
            }
            return Map.copyOf(meta);
        }
    }

    /** Loads every parameter (and the optimiser state when {@code optimizer} is not null). */
    public static void load(Path file, List<Parameter> parameters, AdamW optimizer) throws IOException {
        try (SafeTensorsFile f = SafeTensors.open(file)) {
            for (Parameter p : parameters) {
                if (!f.tensors().containsKey(p.name())) {
                    throw new IOException(file + " has no tensor `" + p.name() + "`: it was saved from a different model");
                }
                long[] shape = f.tensors().get(p.name()).shape();
                if (!Arrays.equals(shape, longs(p.shape()))) {
                    throw new IOException(file + ": `" + p.name() + "` has shape " + Arrays.toString(shape) + ", the model expects "
                            + Arrays.toString(p.shape()));
                }
                p.load(f.readF32(p.name()));
            }
            if (optimizer != null) {
                Map<String, float[]> m = new LinkedHashMap<>();
                Map<String, float[]> v = new LinkedHashMap<>();
                for (Parameter p : parameters) {
                    if (optimizer.firstMoments().containsKey(p.name())) {
                        if (!f.tensors().containsKey("optimizer.m." + p.name())) {
                            throw new IOException(file + " has no optimiser state for `" + p.name() + "`");
                        }
                        m.put(p.name(), f.readF32("optimizer.m." + p.name()));
                        v.put(p.name(), f.readF32("optimizer.v." + p.name()));
                    }
                }
                optimizer.restore(Long.parseLong(f.metadata().getOrDefault("optimizer.steps", "0")), m, v);
            }
        }
    }

    private static long[] longs(int[] shape) {
        long[] l = new long[shape.length];
        for (int i = 0; i < shape.length; i++) {
            l[i] = shape[i];
        }
        return l;
    }
}
