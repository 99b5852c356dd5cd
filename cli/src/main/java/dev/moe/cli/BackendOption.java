package dev.moe.cli;

import dev.moe.cuda.CudaBackend;
import dev.moe.cuda.CudaException;
import dev.moe.runtime.Backend;
import dev.moe.runtime.cpu.CpuBackend;
import picocli.CommandLine.Option;

/** {@code --backend cpu|cuda}, shared by the commands that run a model. */
final class BackendOption {
    @Option(names = "--backend", paramLabel = "NAME", description = "Where the model runs: cpu (default), cuda (an NVIDIA GPU: models the "
            + "GPU code generator covers run wholly there, weights and optimiser included; others on the hybrid path) or cuda-hybrid "
            + "(matrix products on the GPU through cuBLASLt, the other ops on the CPU).")
    String backend = "cpu";

    @Option(names = "--tf32", description = "With --backend cuda: fp32 matrix products on the tensor cores in TF32 (inputs rounded to 10 "
            + "mantissa bits, fp32 accumulation); several times faster, not bit-comparable with the CPU.")
    boolean tf32;

    /** Opens the backend, or explains why it cannot be opened (no GPU, no driver) as a user error. */
    Backend create(int threads) throws Recipes.UserError {
        Backend cpu = new CpuBackend(threads, CpuBackend.VECTOR_API);
        return switch (backend) {
            case "cpu" -> {
                if (tf32) {
                    throw new Recipes.UserError("--tf32 needs --backend cuda");
                }
                yield cpu;
            }
            case "cuda", "cuda-hybrid" -> {
                try {
                    CudaBackend cuda = new CudaBackend(0, cpu);
                    cuda.context().blas.setTf32(tf32);
                    yield backend.equals("cuda") ? cuda : cuda.hybridOnly();
                } catch (CudaException e) {
                    throw new Recipes.UserError("--backend " + backend + ": " + e.getMessage());
                }
            }
            default -> throw new Recipes.UserError("unknown backend `" + backend + "`: use cpu, cuda or cuda-hybrid");
        };
    }
}
