package dev.moe.cuda;

import static com.google.common.truth.Truth.assertThat;

import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

class KernelCacheTest {

    @Test
    void theKeyChangesWithSourceArchitectureCompilerAndOptions() {
        String base = KernelCache.key("src", "sm_90", "13.0", List.of());
        assertThat(KernelCache.key("src", "sm_90", "13.0", List.of())).isEqualTo(base);
        assertThat(KernelCache.key("src2", "sm_90", "13.0", List.of())).isNotEqualTo(base);
        assertThat(KernelCache.key("src", "sm_80", "13.0", List.of())).isNotEqualTo(base);
        assertThat(KernelCache.key("src", "sm_90", "12.8", List.of())).isNotEqualTo(base);
        assertThat(KernelCache.key("src", "sm_90", "13.0", List.of("-lineinfo"))).isNotEqualTo(base);
    }

    @Test
    void writesAreReadBackAndLeaveNoTemporaryFiles(@TempDir Path dir) throws Exception {
        KernelCache cache = new KernelCache(dir.resolve("cubin"));
        String key = KernelCache.key("src", "sm_90", "13.0", List.of());
        assertThat(cache.read(key)).isEmpty();
        cache.write(key, new byte[] {1, 2, 3});
        assertThat(cache.read(key).orElseThrow()).isEqualTo(new byte[] {1, 2, 3});
        try (var files = Files.list(dir.resolve("cubin"))) {
            assertThat(files.map(p -> p.getFileName().toString()).toList()).containsExactly(key + ".cubin");
        }
    }

    @Test
    void anUnwritableCacheIsIgnored(@TempDir Path dir) throws Exception {
        Path file = dir.resolve("not-a-directory");
        Files.writeString(file, "x");
        KernelCache cache = new KernelCache(file);
        cache.write("k", new byte[] {1});
        assertThat(cache.read("k")).isEmpty();
    }
}
