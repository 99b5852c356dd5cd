package dev.moe.runtime.io;

import com.code_intelligence.jazzer.junit.FuzzTest;
import java.io.IOException;
import java.lang.foreign.ValueLayout;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/**
 * The reader on arbitrary bytes. It must either refuse the file with a {@link SafeTensorsException}
 * that names it, or open it so that every tensor can be read in full; then the writer must
 * re-serialize what was read into a file that the reader accepts with the same contents. Any other
 * throwable is a finding. Under {@code mvn test} this replays the seeds in
 * {@code SafeTensorsFuzzTestInputs}; {@code JAZZER_FUZZ=1} fuzzes for up to 30 s.
 */
class SafeTensorsFuzzTest {
    @FuzzTest(maxDuration = "30s")
    void readerRefusesCleanlyOrReadsEverything(byte[] input) throws IOException {
        Path file = Files.createTempFile("fuzz", ".safetensors");
        Path again = Files.createTempFile("fuzz-again", ".safetensors");
        try {
            Files.write(file, input);
            List<Tensor> copies = new ArrayList<>();
            Map<String, String> metadata;
            try (SafeTensorsFile f = SafeTensors.open(file)) {
                metadata = f.metadata();
                for (TensorInfo info : f.tensors().values()) {
                    byte[] bytes = f.readBytes(info.name());
                    check(bytes.length == info.byteSize(), "byte count of " + info);
                    check(f.segment(info.name()).byteSize() == info.byteSize(), "segment size of " + info);
                    switch (info.dtype()) {
                        case F32 -> {
                            check(f.readF32(info.name()).length == info.numel(), "F32 count of " + info);
                            check(f.f32Buffer(info.name()).remaining() == info.numel(), "F32 view of " + info);
                        }
                        case F64 -> {
                            check(f.readF64(info.name()).length == info.numel(), "F64 count of " + info);
                            check(f.f64Buffer(info.name()).remaining() == info.numel(), "F64 view of " + info);
                        }
                        default -> {}
                    }
                    copies.add(Tensor.of(info.name(), info.dtype(), info.shape(), bytes));
                }
                metadata = new LinkedHashMap<>(metadata);
            } catch (SafeTensorsException e) {
                check(e.getMessage().startsWith(file + ": ") && !e.problem().isBlank(), "message: " + e.getMessage());
                return;
            }
            // Accepted: what was read must survive a write and a second read unchanged.
            Files.write(again, SafeTensors.serialize(copies, metadata));
            try (SafeTensorsFile g = SafeTensors.open(again)) {
                check(g.metadata().equals(metadata), "metadata after rewrite");
                check(g.tensors().size() == copies.size(), "tensor count after rewrite");
                for (Tensor t : copies) {
                    TensorInfo info = g.info(t.name());
                    check(info.dtype() == t.dtype() && Arrays.equals(info.shape(), t.shape()), "entry of " + t);
                    check(Arrays.equals(g.readBytes(t.name()), t.data().toArray(ValueLayout.JAVA_BYTE)),
                            "bytes of " + t);
                }
            }
        } finally {
            Files.deleteIfExists(file);
            Files.deleteIfExists(again);
        }
    }

    private static void check(boolean ok, String what) {
        if (!ok) {
            throw new AssertionError("broken invariant: " + what);
        }
    }
}
