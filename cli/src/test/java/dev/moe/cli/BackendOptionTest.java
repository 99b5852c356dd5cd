package dev.moe.cli;

import static com.google.common.truth.Truth.assertThat;

import dev.moe.cuda.CudaLibraries;
import dev.moe.cuda.CudaException;
import java.nio.file.Path;
import org.junit.jupiter.api.Assumptions;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

class BackendOptionTest {

    @Test
    void anUnknownBackendIsAUserError(@TempDir Path dir) {
        Cli.Run r = Cli.run("train", "../recipes/mixtral.moe", "--steps", "1", "--backend", "tpu", "--out", dir.toString());
        assertThat(r.exit()).isEqualTo(1);
        assertThat(r.err()).contains("unknown backend `tpu`: use cpu, cuda or cuda-hybrid");
    }

    @Test
    void withoutAGpuTheCudaBackendSaysWhyAndPointsToTheCpu(@TempDir Path dir) {
        boolean driver;
        try {
            CudaLibraries.load(CudaLibraries.DRIVER);
            driver = true;
        } catch (CudaException e) {
            driver = false;
        }
        Assumptions.assumeFalse(driver, "this machine has a CUDA driver: the no-GPU message cannot be seen here");
        Cli.Run r = Cli.run("train", "../recipes/mixtral.moe", "--steps", "1", "--backend", "cuda", "--out", dir.toString());
        assertThat(r.exit()).isEqualTo(1);
        assertThat(r.err()).contains("--backend cuda: the CUDA driver not found");
        assertThat(r.err()).contains("--backend cpu");
        assertThat(r.err()).doesNotContain("Exception");
    }

    @Test
    void benchWithTheCudaBackendWithoutAGpuIsAUserError() {
        boolean driver;
        try {
            CudaLibraries.load(CudaLibraries.DRIVER);
            driver = true;
        } catch (CudaException e) {
            driver = false;
        }
        Assumptions.assumeFalse(driver, "this machine has a CUDA driver: the no-GPU message cannot be seen here");
        Cli.Run r = Cli.run("bench", "--backend", "cuda");
        assertThat(r.exit()).isEqualTo(1);
        assertThat(r.err()).contains("--backend cuda: the CUDA driver not found");
        assertThat(Cli.run("bench", "--backend", "tpu").err()).contains("unknown backend `tpu`");
    }

    @Test
    void aReducedPrecisionNeedsTheGpu(@TempDir Path dir) {
        Cli.Run r = Cli.run("train", "../recipes/mixtral.moe", "--steps", "1", "--precision", "bf16", "--out", dir.toString());
        assertThat(r.exit()).isEqualTo(1);
        assertThat(r.err()).contains("--precision bf16 needs --backend cuda");
        Cli.Run unknown = Cli.run("train", "../recipes/mixtral.moe", "--steps", "1", "--precision", "fp8", "--out", dir.toString());
        assertThat(unknown.exit()).isEqualTo(1);
        assertThat(unknown.err()).contains("unknown precision `fp8`: use fp32, tf32 or bf16");
    }
}
