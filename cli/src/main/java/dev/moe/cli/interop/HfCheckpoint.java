package dev.moe.cli.interop;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.node.ObjectNode;
import dev.moe.runtime.io.DType;
import dev.moe.runtime.io.SafeTensors;
import dev.moe.runtime.io.SafeTensorsFile;
import dev.moe.runtime.io.TensorInfo;
import java.io.Closeable;
import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Iterator;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/**
 * A Hugging Face checkpoint directory: {@code config.json} and the weights, in one
 * {@code model.safetensors} or in shards listed by {@code model.safetensors.index.json}. Tensors are
 * read as fp32 (F32, BF16 and F16 accepted).
 */
public final class HfCheckpoint implements Closeable {
    private final Path dir;
    private final ObjectNode config;
    private final Map<String, SafeTensorsFile> fileOf = new LinkedHashMap<>();
    private final List<SafeTensorsFile> files = new ArrayList<>();

    private HfCheckpoint(Path dir, ObjectNode config) {
        this.dir = dir;
        this.config = config;
    }

    public static HfCheckpoint open(Path dir) throws InteropException {
        if (!Files.isDirectory(dir)) {
            throw new InteropException(dir + " is not a directory (a Hugging Face checkpoint: config.json and *.safetensors)");
        }
        ObjectNode config = readJson(dir.resolve("config.json"));
        HfCheckpoint c = new HfCheckpoint(dir, config);
        try {
            Path single = dir.resolve("model.safetensors");
            Path index = dir.resolve("model.safetensors.index.json");
            if (Files.isRegularFile(index)) {
                JsonNode map = readJson(index).path("weight_map");
                if (!map.isObject() || map.isEmpty()) {
                    throw new InteropException(index + " has no `weight_map`");
                }
                Map<String, SafeTensorsFile> shards = new LinkedHashMap<>();
                for (Iterator<Map.Entry<String, JsonNode>> it = map.properties().iterator(); it.hasNext();) {
                    Map.Entry<String, JsonNode> e = it.next();
                    String shard = e.getValue().asText("");
                    Path p = dir.resolve(shard).normalize();
                    if (shard.isEmpty() || !p.getParent().equals(dir.normalize()) ) {
                        throw new InteropException(index + ": tensor `" + e.getKey() + "` points to `" + shard + "`, not a file of " + dir);
                    }
                    if (!Files.isRegularFile(p)) {
                        throw new InteropException(index + ": tensor `" + e.getKey() + "` is in " + p + ", which does not exist");
                    }
                    SafeTensorsFile f = shards.get(shard);
                    if (f == null) {
                        f = c.openFile(p);
                        shards.put(shard, f);
                    }
                    if (!f.tensors().containsKey(e.getKey())) {
                        throw new InteropException(p + " has no tensor `" + e.getKey() + "`, which " + index.getFileName() + " places there");
                    }
                    c.fileOf.put(e.getKey(), f);
                }
            } else if (Files.isRegularFile(single)) {
                SafeTensorsFile f = c.openFile(single);
                for (String name : f.tensors().keySet()) {
                    c.fileOf.put(name, f);
                }
            } else {
                throw new InteropException(dir + " has neither model.safetensors nor model.safetensors.index.json");
            }
        } catch (InteropException e) {
            c.close();
            throw e;
        }
        return c;
    }

    private SafeTensorsFile openFile(Path p) throws InteropException {
        try {
            SafeTensorsFile f = SafeTensors.open(p);
            files.add(f);
            return f;
        } catch (IOException e) {
            throw new InteropException(e.getMessage(), e);
        }
    }

    static ObjectNode readJson(Path file) throws InteropException {
        if (!Files.isRegularFile(file)) {
            throw new InteropException(file + " does not exist");
        }
        try {
            JsonNode n = new ObjectMapper().readTree(file.toFile());
            if (n == null || !n.isObject()) {
                throw new InteropException(file + " is not a JSON object");
            }
            return (ObjectNode) n;
        } catch (IOException e) {
            throw new InteropException(file + " is not valid JSON: " + e.getMessage().lines().findFirst().orElse(""), e);
        }
    }

    public Path dir() {
        return dir;
    }

    public ObjectNode config() {
        return config;
    }

    public boolean has(String name) {
        return fileOf.containsKey(name);
    }

    public java.util.Set<String> names() {
        return fileOf.keySet();
    }

    public long[] shape(String name) {
        return fileOf.get(name).tensors().get(name).shape();
    }

    /** Elements of the largest tensor (read whole when fused experts are sliced). */
    public long largestTensor() {
        long max = 0;
        for (Map.Entry<String, SafeTensorsFile> e : fileOf.entrySet()) {
            max = Math.max(max, e.getValue().tensors().get(e.getKey()).numel());
        }
        return max;
    }

    /** Where a tensor is, for messages. */
    public Path fileOf(String name) {
        return fileOf.get(name).path();
    }

    /** A tensor's elements as fp32, in C order. */
    public float[] read(String name) throws InteropException {
        SafeTensorsFile f = fileOf.get(name);
        if (f == null) {
            throw new InteropException(dir + " has no tensor `" + name + "`");
        }
        TensorInfo info = f.tensors().get(name);
        try {
            return switch (info.dtype()) {
                case F32 -> f.readF32(name);
                case BF16, F16 -> halves(f.readBytes(name), info.dtype());
                default -> throw new InteropException(f.path() + ": tensor `" + name + "` is " + info.dtype() + ", not a float type");
            };
        } catch (IOException e) {
            throw new InteropException(e.getMessage(), e);
        }
    }

    private static float[] halves(byte[] bytes, DType type) {
        ByteBuffer b = ByteBuffer.wrap(bytes).order(ByteOrder.LITTLE_ENDIAN);
        float[] out = new float[bytes.length / 2];
        for (int i = 0; i < out.length; i++) {
            short s = b.getShort(2 * i);
            out[i] = type == DType.BF16 ? Float.intBitsToFloat((s & 0xFFFF) << 16) : Float.float16ToFloat(s);
        }
        return out;
    }

    @Override
    public void close() {
        for (SafeTensorsFile f : files) {
            f.close();
        }
    }
}
