package dev.moe.runtime.upcycle;

import dev.moe.runtime.io.SafeTensors;
import dev.moe.runtime.io.SafeTensorsFile;
import dev.moe.runtime.io.TensorInfo;
import java.io.IOException;
import java.nio.file.Path;
import java.util.Arrays;
import java.util.LinkedHashMap;
import java.util.Map;

/**
 * The weights of a checkpoint, by name, as an upcycling step reads them: every tensor but the
 * optimiser state, with its shape.
 */
public record Weights(String origin, Map<String, int[]> shapes, Map<String, float[]> values) {
    public Weights {
        shapes = Map.copyOf(shapes);
        values = Map.copyOf(values);
    }

    public static Weights read(Path file) throws IOException {
        Map<String, int[]> shapes = new LinkedHashMap<>();
        Map<String, float[]> values = new LinkedHashMap<>();
        try (SafeTensorsFile f = SafeTensors.open(file)) {
            for (TensorInfo t : f.tensors().values()) {
                if (t.name().startsWith("optimizer.")) {
                    continue;
                }
                long[] s = t.shape();
                int[] shape = new int[s.length];
                for (int i = 0; i < s.length; i++) {
                    shape[i] = Math.toIntExact(s[i]);
                }
                shapes.put(t.name(), shape);
                values.put(t.name(), f.readF32(t.name()));
            }
        }
        return new Weights(file.toString(), shapes, values);
    }

    public boolean has(String name) {
        return values.containsKey(name);
    }

    /** Whether {@code name} is here with exactly {@code shape}. */
    public boolean has(String name, int[] shape) {
        return values.containsKey(name) && Arrays.equals(shapes.get(name), shape);
    }

    public float[] get(String name) {
        float[] v = values.get(name);
        if (v == null) {
            throw new IllegalArgumentException(origin + " has no tensor `" + name + "`");
        }
        return v;
    }

    public int[] shape(String name) {
        return shapes.get(name);
    }
}
