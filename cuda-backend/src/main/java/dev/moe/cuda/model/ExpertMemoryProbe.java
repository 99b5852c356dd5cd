package dev.moe.cuda.model;

import dev.moe.compiler.MoeCompiler;
import dev.moe.compiler.ir.Model;
import dev.moe.cuda.CudaContext;
import dev.moe.cuda.dist.DeviceExchange;
import dev.moe.cuda.dist.ExpertPlacement;
import dev.moe.cuda.dist.SharedDeviceGroup;
import dev.moe.cuda.kernels.MoeKernelSource.Precision;
import dev.moe.runtime.cpu.CpuBackend;
import java.nio.file.Path;
import java.util.Locale;
import java.util.SortedMap;
import java.util.TreeMap;

/**
 * What one expert-parallel rank holds on the GPU for training a recipe's model, measured: for each world size, the model is built
 * on this GPU as its first and last rank would build it (contiguous placements), each rank's experts only
 * ({@link DeviceModel#useExpertParallel(DeviceExchange, java.util.Map, boolean)}), and the backed bytes of its weights, gradients,
 * AdamW moments (as the first step allocates them) and, in bf16, the experts' bf16 copies are read
 * ({@link DeviceModel#trainingParameterBytes}). Nothing is exchanged, so one GPU measures any world size. Prints a table.
 *
 * <pre>
 * java --enable-native-access=ALL-UNNAMED --add-modules jdk.incubator.vector -cp '.device/lib/*' dev.moe.cuda.model.ExpertMemoryProbe \
 *     bench/gpu/deepseek-v3-like.moe 1,2,4,8
 * </pre>
 */
public final class ExpertMemoryProbe {
    private ExpertMemoryProbe() {}

    public static void main(String[] args) throws Exception {
        if (args.length < 1) {
            System.err.println("usage: ExpertMemoryProbe RECIPE.moe [RANKS,...]");
            System.exit(2);
        }
        Model model = MoeCompiler.compile(Path.of(args[0])).orThrow().models().getFirst();
        int[] worlds = java.util.Arrays.stream((args.length > 1 ? args[1] : "1,2,4,8").split(",")).mapToInt(Integer::parseInt).toArray();
        DeviceModels.Classes classes = DeviceModels.compile(model, model.name());
        CpuBackend backend = new CpuBackend(2, CpuBackend.VECTOR_API);
        try (CudaContext ctx = new CudaContext(0)) {
            System.out.printf(Locale.ROOT, "%s on %s: parameter memory of one expert-parallel rank for training (weights, gradients, AdamW moments;"
                    + " bf16: and the experts' bf16 copies), each rank's experts only%n", model.name(), ctx.deviceName);
            System.out.printf(Locale.ROOT, "%-5s %-6s %-5s %12s %12s %7s%n", "ranks", "rank", "exp.", "MiB", "model MiB", "share");
            for (Precision precision : new Precision[] {Precision.FP32, Precision.BF16}) {
                ctx.expertPrecision = precision;
                for (int ranks : worlds) {
                    SharedDeviceGroup group = new SharedDeviceGroup(ranks, 60_000);
                    for (int rank : ranks == 1 ? new int[] {0} : new int[] {0, ranks - 1}) {
                        try (DeviceModel m = classes.create(ctx, backend)) {
                            long full = m.trainingParameterBytes();
                            SortedMap<Integer, ExpertPlacement> placements = new TreeMap<>();
                            m.expertsByLayer().forEach((l, e) -> placements.put(l, ExpertPlacement.contiguous(e, ranks)));
                            m.useExpertParallel(group.rank(rank, ctx), placements, true);
                            long mine = m.trainingParameterBytes();
                            int experts = placements.values().iterator().next().localExperts(rank);
                            System.out.printf(Locale.ROOT, "%-5d %-6d %-5d %12.1f %12.1f %7.3f  %s%n", ranks, rank, experts, mine / 1048576.0, full / 1048576.0,
                                    (double) mine / full, precision.name().toLowerCase(Locale.ROOT));
                        }
                    }
                }
            }
        }
    }
}
