package dev.moe.cuda.nccl;

import java.time.Duration;
import java.util.Map;
import java.util.Optional;

/**
 * This process's place in a multi-GPU run, from environment variables (set by {@link Launcher} on
 * one machine, or by the user or a scheduler on several):
 *
 * <pre>
 * MOE_RANK                  this process's rank, 0..world-1                  (or RANK, as torchrun sets)
 * MOE_WORLD_SIZE            the number of processes (one per GPU)           (or WORLD_SIZE)
 * MOE_LOCAL_RANK            the GPU ordinal on this machine; default: rank  (or LOCAL_RANK)
 * MOE_RENDEZVOUS            host:port where rank 0 serves the NCCL id       (or MASTER_ADDR and MASTER_PORT)
 * MOE_RENDEZVOUS_TIMEOUT_S  how long to wait for every rank to arrive; default 300
 * MOE_NCCL_TIMEOUT_S        how long one collective may take before the rank aborts; default 600
 * MOE_LOCAL_WORLD_SIZE      ranks on this machine (set by the launcher): `moe train` gives each its share of the cores
 * </pre>
 */
public record WorldConfig(int rank, int worldSize, int localRank, String host, int port, Duration rendezvousTimeout, Duration ncclTimeout) {

    /** A world of one, in this process: no rendezvous needed. */
    public static WorldConfig single(int device) {
        return new WorldConfig(0, 1, device, "127.0.0.1", 0, Duration.ofSeconds(300), Duration.ofSeconds(600));
    }

    /** Empty when no rank is set (a single-process run); otherwise the checked settings. */
    public static Optional<WorldConfig> fromEnvironment(Map<String, String> env) {
        String rankVar = pick(env, "MOE_RANK", "RANK");
        String sizeVar = pick(env, "MOE_WORLD_SIZE", "WORLD_SIZE");
        if (rankVar == null && sizeVar == null) {
            return Optional.empty();
        }
        if (rankVar == null || sizeVar == null) {
            throw new RendezvousException((rankVar == null ? sizeVar + " is set but MOE_RANK is not" : rankVar + " is set but MOE_WORLD_SIZE is not")
                    + ": set both (and MOE_RENDEZVOUS) on every rank, or neither for one GPU");
        }
        int size = integer(env, sizeVar, 1, Integer.MAX_VALUE);
        int rank = integer(env, rankVar, 0, size - 1);
        String localVar = pick(env, "MOE_LOCAL_RANK", "LOCAL_RANK");
        int local = localVar == null ? rank : integer(env, localVar, 0, Integer.MAX_VALUE);
        Duration rendezvous = Duration.ofSeconds(env.containsKey("MOE_RENDEZVOUS_TIMEOUT_S") ? integer(env, "MOE_RENDEZVOUS_TIMEOUT_S", 1, 86_400) : 300);
        Duration nccl = Duration.ofSeconds(env.containsKey("MOE_NCCL_TIMEOUT_S") ? integer(env, "MOE_NCCL_TIMEOUT_S", 1, 86_400) : 600);
        String address = env.get("MOE_RENDEZVOUS");
        String host;
        int port;
        if (address != null && !address.isBlank()) {
            int colon = address.lastIndexOf(':');
            if (colon <= 0 || colon == address.length() - 1) {
                throw new RendezvousException("MOE_RENDEZVOUS=" + address + " is not host:port (for example 10.0.0.1:29500)");
            }
            host = address.substring(0, colon);
            if (host.startsWith("[") && host.endsWith("]")) {
                host = host.substring(1, host.length() - 1); // [::1]:29500
            }
            port = port("MOE_RENDEZVOUS=" + address, address.substring(colon + 1));
        } else if (env.containsKey("MASTER_ADDR") && env.containsKey("MASTER_PORT")) {
            host = env.get("MASTER_ADDR");
            port = port("MASTER_PORT", env.get("MASTER_PORT"));
        } else if (size == 1) {
            host = "127.0.0.1";
            port = 0;
        } else {
            throw new RendezvousException("a world of " + size + " ranks needs MOE_RENDEZVOUS=host:port, where rank 0 listens and the others connect");
        }
        return Optional.of(new WorldConfig(rank, size, local, host, port, rendezvous, nccl));
    }

    private static String pick(Map<String, String> env, String ours, String torchrun) {
        if (env.get(ours) != null && !env.get(ours).isBlank()) {
            return ours;
        }
        return env.get(torchrun) != null && !env.get(torchrun).isBlank() ? torchrun : null;
    }

    private static int integer(Map<String, String> env, String var, int min, int max) {
        String v = env.get(var).strip();
        int n;
        try {
            n = Integer.parseInt(v);
        } catch (NumberFormatException e) {
            throw new RendezvousException(var + "=" + v + " is not a whole number");
        }
        if (n < min || n > max) {
            throw new RendezvousException(var + "=" + v + " is out of range: "
                    + (max == Integer.MAX_VALUE ? "it must be at least " + min : "it must be " + min + ".." + max)
                    + (var.endsWith("RANK") ? " (ranks count from 0 to the world size - 1)" : ""));
        }
        return n;
    }

    private static int port(String what, String v) {
        try {
            int p = Integer.parseInt(v.strip());
            if (p >= 1 && p <= 65535) {
                return p;
            }
        } catch (NumberFormatException ignored) {
            // reported below
        }
        throw new RendezvousException(what + ": the port must be a number in 1..65535");
    }
}
