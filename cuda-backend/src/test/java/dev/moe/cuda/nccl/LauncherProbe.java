package dev.moe.cuda.nccl;

/** A rank for {@link LauncherTest}: joins the rendezvous with a made-up id and prints what it got. */
public final class LauncherProbe {
    public static void main(String[] args) {
        WorldConfig world = WorldConfig.fromEnvironment(System.getenv()).orElseThrow();
        if (args.length > 0 && args[0].equals("fail-rank-1") && world.rank() == 1) {
            System.out.println("rank 1 fails on purpose");
            System.exit(3);
        }
        byte[] b = new byte[UniqueId.BYTES];
        b[0] = 42;
        UniqueId id = Rendezvous.exchange(world, () -> new UniqueId(b));
        System.out.println("rank " + world.rank() + " of " + world.worldSize() + " on GPU " + world.localRank() + " got id "
                + id.toHex().substring(0, 8));
    }
}
