package dev.moe.cuda.nccl;

import dev.moe.cuda.CudaContext;
import dev.moe.cuda.CudaException;
import dev.moe.cuda.DeviceAllocator;
import dev.moe.cuda.Driver;
import dev.moe.cuda.nccl.Nccl.DataType;
import dev.moe.cuda.nccl.Nccl.RedOp;
import java.lang.foreign.MemorySegment;
import java.util.Arrays;
import java.util.List;
import java.util.Optional;

/**
 * Checks NCCL on this machine's GPUs: with no rank in the environment it starts one process per GPU
 * ({@code --gpus N}, default all of them; a world of one runs in this process), and each rank joins
 * the communicator through the rendezvous, checks what NCCL says it is, runs
 * {@link ExchangeChecks} (an exact all-reduce, the dispatch plan's counts and rows all-to-all there
 * and back, the expert-parallel MoE layer against one rank) over NCCL, and rank 0 prints the
 * all-reduce and all-to-all bandwidth. Exit 0 when every check passes, 1 when one fails, 2 when the
 * run cannot start (no GPU, no NCCL, a rank that does not come).
 *
 * <pre>
 * java --enable-native-access=ALL-UNNAMED --add-modules jdk.incubator.vector -cp '.device/lib/*' dev.moe.cuda.nccl.NcclCheck [--gpus N] [--no-bench]
 * </pre>
 */
public final class NcclCheck {
    private static final long SEED = 20261201;

    private NcclCheck() {}

    public static void main(String[] args) {
        System.exit(run(args));
    }

    static int run(String[] args) {
        try {
            Options o = Options.parse(args);
            Optional<WorldConfig> env = WorldConfig.fromEnvironment(System.getenv());
            if (env.isPresent()) {
                return rank(env.get(), o.bench());
            }
            int devices = Driver.get().deviceCount();
            int n = o.gpus() > 0 ? o.gpus() : devices;
            if (n < 1 || n > devices) {
                throw new RendezvousException("--gpus " + n + " asked for, but this machine has " + devices + " GPU(s)");
            }
            System.out.println("NCCL " + Nccl.versionString(Nccl.get().version()) + ", " + n + " rank(s) on " + devices + " GPU(s)");
            if (n == 1) {
                return rank(WorldConfig.single(0), o.bench());
            }
            return Launcher.run(Launcher.javaCommand(NcclCheck.class.getName(), List.of(args)), n, System.out);
        } catch (CudaException | RendezvousException | IllegalArgumentException e) {
            System.err.println("moe: " + e.getMessage());
            return 2;
        }
    }

    record Options(int gpus, boolean bench) {
        static Options parse(String[] args) {
            int gpus = 0;
            boolean bench = true;
            for (int i = 0; i < args.length; i++) {
                switch (args[i]) {
                    case "--gpus" -> {
                        if (i + 1 >= args.length) {
                            throw new IllegalArgumentException("--gpus needs a number");
                        }
                        try {
                            gpus = Integer.parseInt(args[++i]);
                        } catch (NumberFormatException e) {
                            throw new IllegalArgumentException("--gpus " + args[i] + ": not a whole number");
                        }
                        if (gpus < 1) {
                            throw new IllegalArgumentException("--gpus must be at least 1");
                        }
                    }
                    case "--no-bench" -> bench = false;
                    default -> throw new IllegalArgumentException("unknown option " + args[i] + " (usage: NcclCheck [--gpus N] [--no-bench])");
                }
            }
            return new Options(gpus, bench);
        }
    }

    private static int rank(WorldConfig world, boolean bench) {
        try (CudaContext ctx = new CudaContext(world.localRank())) {
            Nccl nccl = Nccl.get();
            UniqueId id = Rendezvous.exchange(world, nccl::uniqueId);
            try (Communicator comm = nccl.initRank(world.worldSize(), id, world.rank())) {
                Launcher.joined(world.rank());
                int failures = 0;
                int[] said = comm.describe();
                boolean commOk = said[0] == world.worldSize() && said[1] == world.rank() && said[2] == ctx.device;
                failures += commOk ? 0 : 1;
                System.out.printf("rank %d of %d on GPU %d (%s, %s), NCCL %s%n", world.rank(), world.worldSize(), world.localRank(),
                        ctx.deviceName, ctx.arch, Nccl.versionString(nccl.version()));
                line(new ExchangeChecks.Outcome("communicator", commOk,
                        "NCCL says " + said[0] + " ranks, rank " + said[1] + ", CUDA device " + said[2]));
                NcclExchange ex = new NcclExchange(ctx, comm, world.ncclTimeout());
                for (ExchangeChecks.Outcome o : ExchangeChecks.all(ex, SEED)) {
                    line(o);
                    failures += o.pass() ? 0 : 1;
                }
                if (bench) {
                    bandwidth(ctx, comm, world);
                }
                System.out.printf("rank %d: %s%n", world.rank(), failures == 0 ? "every check passed" : failures + " check(s) FAILED");
                return failures == 0 ? 0 : 1;
            }
        }
    }

    private static void line(ExchangeChecks.Outcome o) {
        System.out.printf("  %-28s %-4s %s%n", o.name(), o.pass() ? "ok" : "FAIL", o.detail());
    }

    /**
     * Bus bandwidth as nccl-tests defines it, so that the figures compare with NCCL's own: all-reduce
     * moves 2(n-1)/n of the buffer per rank, all-to-all (n-1)/n. A world of one has no bus: its
     * algorithm bandwidth is a device copy.
     */
    private static void bandwidth(CudaContext ctx, Communicator comm, WorldConfig world) {
        int n = world.worldSize();
        if (world.rank() == 0) {
            System.out.printf("  %-12s %12s %10s %12s %12s%n", "collective", "bytes/rank", "time (us)", "algbw GB/s", "busbw GB/s");
        }
        for (long bytes : new long[] {1L << 20, 16L << 20, 256L << 20}) {
            long elems = bytes / 4 / n * n;
            try (DeviceAllocator.Block a = ctx.allocator.allocate(elems * 4); DeviceAllocator.Block b = ctx.allocator.allocate(elems * 4)) {
                ctx.driver.memsetZero(a.pointer, elems * 4, ctx.stream);
                int[] split = new int[n];
                Arrays.fill(split, (int) (elems / n));
                double arUs = time(ctx, comm, world, () -> comm.allReduce(a.pointer, b.pointer, elems, DataType.FLOAT32, RedOp.SUM, ctx.stream));
                double aaUs = time(ctx, comm, world, () -> comm.allToAllV(a.pointer, split, b.pointer, split, DataType.FLOAT32, ctx.stream));
                if (world.rank() == 0) {
                    double alg = elems * 4 / arUs / 1e3;
                    System.out.printf("  %-12s %12d %10.1f %12.1f %12.1f%n", "all-reduce", elems * 4, arUs, alg, alg * 2 * (n - 1) / n);
                    alg = elems * 4 / aaUs / 1e3;
                    System.out.printf("  %-12s %12d %10.1f %12.1f %12.1f%n", "all-to-all", elems * 4, aaUs, alg, alg * (n - 1) / n);
                }
            }
        }
    }

    /** Microseconds per call: 5 warm-up calls, then 20 timed between CUDA events. */
    private static double time(CudaContext ctx, Communicator comm, WorldConfig world, Runnable op) {
        for (int i = 0; i < 5; i++) {
            op.run();
        }
        MemorySegment start = ctx.driver.createEvent(), end = ctx.driver.createEvent();
        ctx.driver.record(start, ctx.stream);
        int iters = 20;
        for (int i = 0; i < iters; i++) {
            op.run();
        }
        ctx.driver.record(end, ctx.stream);
        comm.await(ctx.stream, world.ncclTimeout(), "the bandwidth run");
        return ctx.driver.elapsedMillis(start, end) * 1e3 / iters;
    }
}
