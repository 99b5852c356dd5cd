package dev.moe.cli;

import dev.moe.cuda.CudaBackend;
import dev.moe.cuda.CudaException;
import dev.moe.cuda.GemmAttention;
import dev.moe.cuda.kernels.MoeKernelSource.Precision;
import dev.moe.runtime.Backend;
import dev.moe.runtime.cpu.CpuBackend;
import java.util.List;
import picocli.CommandLine.Option;

/** {@code --backend cpu|cuda}, shared by the commands that run a model. */
final class BackendOption {
    @Option(names = "--backend", paramLabel = "NAME", description = "Where the model runs: cpu (default), cuda (an NVIDIA GPU: models the "
            + "GPU code generator covers run wholly there, weights and optimiser included; others on the hybrid path) or cuda-hybrid "
            + "(matrix products on the GPU through cuBLASLt, the other ops on the CPU).")
    String backend = "cpu";

    @Option(names = "--precision", paramLabel = "P", description = "With --backend cuda: fp32 (default: exact fp32, comparable with the "
            + "CPU), tf32 (fp32 matrix products and attention on the tensor cores in TF32) or bf16 (tf32, and attention and the MoE "
            + "layers' routers and experts in bf16 with fp32 master weights and gradients).")
    String precision = "fp32";

    /** In a data-parallel worker: the context of this rank's GPU, which every model of the run shares (with its communicator). */
    dev.moe.cuda.CudaContext shared;

    /** cuda or cuda-hybrid: a GPU, which a data-parallel rank joins to NCCL. */
    boolean onGpu() {
        return backend.equals("cuda") || backend.equals("cuda-hybrid");
    }

    /** Opens the backend, or explains why it cannot be opened (no GPU, no driver) as a user error. */
    Backend create(int threads) throws Recipes.UserError {
        if (!List.of("fp32", "tf32", "bf16").contains(precision)) {
            throw new Recipes.UserError("unknown precision `" + precision + "`: use fp32, tf32 or bf16");
        }
        Backend cpu = new CpuBackend(threads, CpuBackend.VECTOR_API);
        return switch (backend) {
            case "cpu" -> {
                if (!precision.equals("fp32")) {
                    throw new Recipes.UserError("--precision " + precision + " needs --backend cuda (the CPU computes in fp32)");
                }
                yield cpu;
            }
            case "cuda", "cuda-hybrid" -> {
                try {
                    CudaBackend cuda = shared != null ? new CudaBackend(shared, cpu, false) : new CudaBackend(0, cpu);
                    cuda.context().blas.setTf32(!precision.equals("fp32"));
                    cuda.context().expertPrecision = precision.equals("bf16") ? Precision.BF16 : Precision.FP32;
                    // attention on the tensor cores too, in the same precision (fp32 keeps the exact tiled kernels)
                    cuda.context().attentionGemm = switch (precision) {
                        case "tf32" -> GemmAttention.Storage.F32;
                        case "bf16" -> GemmAttention.Storage.BF16;
                        default -> null;
                    };
                    yield backend.equals("cuda") ? cuda : cuda.hybridOnly();
                } catch (CudaException e) {
                    throw new Recipes.UserError("--backend " + backend + ": " + e.getMessage());
                }
            }
            default -> throw new Recipes.UserError("unknown backend `" + backend + "`: use cpu, cuda or cuda-hybrid");
        };
    }
}
