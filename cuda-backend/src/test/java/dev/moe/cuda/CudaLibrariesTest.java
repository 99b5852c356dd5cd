package dev.moe.cuda;

import static com.google.common.truth.Truth.assertThat;
import static org.junit.jupiter.api.Assertions.assertThrows;

import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.Optional;
import org.junit.jupiter.api.Test;

class CudaLibrariesTest {

    @Test
    void triesTheNewestSonameFirstThenTheInstallDirectories() {
        List<String> tried = new ArrayList<>();
        String found = CudaLibraries.find(CudaLibraries.NVRTC, Map.of("MOE_CUDA_LIB_DIR", "/opt/cuda/lib"), name -> {
            tried.add(name);
            return name.equals("/opt/cuda/lib/libnvrtc.so.12") ? Optional.of(name) : Optional.empty();
        });
        assertThat(found).isEqualTo("/opt/cuda/lib/libnvrtc.so.12");
        assertThat(tried.subList(0, 3)).containsExactly("libnvrtc.so.13", "libnvrtc.so.12", "libnvrtc.so").inOrder();
        assertThat(tried.get(3)).isEqualTo("/opt/cuda/lib/libnvrtc.so.13");
    }

    @Test
    void noDriverSaysSoAndSuggestsTheCpuBackend() {
        CudaException e = assertThrows(CudaException.class,
                () -> CudaLibraries.find(CudaLibraries.DRIVER, Map.of(), name -> Optional.empty()));
        assertThat(e).hasMessageThat().startsWith("the CUDA driver not found (tried libcuda.so.1, libcuda.so, ");
        assertThat(e).hasMessageThat().contains("--backend cpu");
    }

    @Test
    void anOverrideThatDoesNotLoadIsAnErrorNotASilentFallback() {
        CudaException e = assertThrows(CudaException.class, () -> CudaLibraries.find(CudaLibraries.CUBLASLT,
                Map.of("MOE_LIBCUBLASLT", "/nonexistent/libcublasLt.so"), name -> Optional.of(name).filter(n -> !n.contains("/"))));
        assertThat(e).hasMessageThat().contains("MOE_LIBCUBLASLT=/nonexistent/libcublasLt.so could not be loaded (no such file)");
    }

    @Test
    void anOverrideThatLoadsWins() {
        String found = CudaLibraries.find(CudaLibraries.DRIVER, Map.of("MOE_LIBCUDA", "/x/libcuda.so.1"), Optional::of);
        assertThat(found).isEqualTo("/x/libcuda.so.1");
    }

    @Test
    void onThisMachineTheDriverIsEitherFoundOrReportedClearly() {
        // CI machines have no GPU: then the real loader must fail with the clear message, not a linkage error.
        try {
            CudaLibraries.load(CudaLibraries.DRIVER);
        } catch (CudaException e) {
            assertThat(e).hasMessageThat().contains("--backend cpu");
        }
    }
}
