package dev.moe.cuda;

import static com.google.common.truth.Truth.assertWithMessage;

import org.junit.jupiter.api.Assumptions;
import org.junit.jupiter.api.Test;

/** The GPU parity checks as a test: skipped, with the reason shown, where there is no GPU (as in CI). */
class GpuParityTest {

    private static String whyNoGpu() {
        String why = null;
        try {
            Driver.get();
            if (Driver.get().deviceCount() == 0) {
                why = "the CUDA driver reports no GPU";
            }
        } catch (CudaException e) {
            why = e.getMessage();
        }
        return why;
    }

    @Test
    void everyCaseMatchesTheFloat64Reference() {
        String why = whyNoGpu();
        Assumptions.assumeTrue(why == null, "GPU tests skipped: " + why + " (run bench/gpu/run-gpu-tests.sh on a GPU machine)");
        try (CudaContext ctx = new CudaContext(0)) {
            long seed = 1;
            for (GpuChecks.Case c : GpuChecks.cases()) {
                GpuChecks.Outcome o = GpuChecks.check(ctx, c, seed++);
                assertWithMessage("%s", o).that(o.pass()).isTrue();
            }
            for (dev.moe.cuda.kernels.MoeKernelSource.Spec[] pair : GpuChecks.residualPairs()) {
                double worst = GpuChecks.checkResidual(ctx, pair[0], pair[1], 40, seed++);
                double tol = pair[0].precision() == dev.moe.cuda.kernels.MoeKernelSource.Precision.BF16 ? 2e-2 : 1e-4;
                assertWithMessage("gating residual %s -> %s", pair[0], pair[1]).that(worst).isAtMost(tol);
            }
            for (dev.moe.cuda.kernels.MoeKernelSource.Spec spec : GpuChecks.extraLogitSpecs()) {
                double worst = GpuChecks.checkExtraLogits(ctx, spec, 40, seed++);
                double tol = spec.precision() == dev.moe.cuda.kernels.MoeKernelSource.Precision.BF16 ? 2e-2 : 1e-4;
                assertWithMessage("extra logits %s", spec).that(worst).isAtMost(tol);
            }
            for (dev.moe.cuda.kernels.MoeKernelSource.Spec spec : GpuChecks.balanceSpecs()) {
                double worst = GpuChecks.checkBalance(ctx, spec, 64, 16, seed++);
                double tol = spec.precision() == dev.moe.cuda.kernels.MoeKernelSource.Precision.BF16 ? 2e-2 : 1e-4;
                assertWithMessage("balancing losses %s", spec).that(worst).isAtMost(tol);
            }
        }
    }

    @Test
    void theGpuPrimitivesMatchTheCpuBackend() {
        String why = whyNoGpu();
        Assumptions.assumeTrue(why == null, "GPU tests skipped: " + why + " (run bench/gpu/run-gpu-tests.sh on a GPU machine)");
        dev.moe.runtime.Backend cpu = new dev.moe.runtime.cpu.CpuBackend(2, dev.moe.runtime.cpu.CpuBackend.VECTOR_API);
        try (CudaBackend gpu = new CudaBackend(0, cpu)) {
            long seed = 11;
            for (BackendParity.Shape s : BackendParity.shapes()) {
                assertWithMessage("%s", s).that(BackendParity.check(gpu, cpu, s, seed++)).isAtMost(1e-4);
            }
        }
    }

    @Test
    void theDenseModelKernelsMatchTheCpuBackend() {
        String why = whyNoGpu();
        Assumptions.assumeTrue(why == null, "GPU tests skipped: " + why + " (run bench/gpu/run-gpu-tests.sh on a GPU machine)");
        dev.moe.runtime.Backend cpu = new dev.moe.runtime.cpu.CpuBackend(2, dev.moe.runtime.cpu.CpuBackend.VECTOR_API);
        try (CudaContext ctx = new CudaContext(0)) {
            for (DeviceOpsParity.Result r : DeviceOpsParity.run(ctx, cpu)) {
                assertWithMessage("%s", r).that(r.pass()).isTrue();
            }
        }
    }
}
