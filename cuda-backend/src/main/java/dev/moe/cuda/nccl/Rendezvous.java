package dev.moe.cuda.nccl;

import java.io.DataInputStream;
import java.io.DataOutputStream;
import java.io.EOFException;
import java.io.IOException;
import java.net.InetSocketAddress;
import java.net.ServerSocket;
import java.net.Socket;
import java.net.SocketTimeoutException;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.TreeSet;
import java.util.function.Supplier;

/**
 * Shares rank 0's NCCL unique id with the other ranks over TCP, as torch.distributed's store does:
 * rank 0 listens, each other rank connects (retrying until rank 0 is up), says who it is, and gets
 * the id. Rank 0 returns once every rank has it, so a rank that never comes is reported here, by
 * rank number, instead of as a hang in {@code ncclCommInitRank}. Mismatched world sizes and duplicate
 * ranks are refused with a message to both sides.
 *
 * <p>The wire format: the peer sends {@code "MOE1"}, its rank and the world size (big-endian ints);
 * rank 0 answers 0 and the 128 id bytes, or 1 and a UTF-8 message.
 */
public final class Rendezvous {
    static final int MAGIC = 0x4d4f4531; // "MOE1"
    private static final Duration HELLO_TIMEOUT = Duration.ofSeconds(10);
    private static final Duration RETRY = Duration.ofMillis(200);

    private Rendezvous() {}

    /**
     * This rank's copy of the id: rank 0 makes it with {@code makeId} and serves it; the others fetch
     * it. A world of one needs no network.
     */
    public static UniqueId exchange(WorldConfig world, Supplier<UniqueId> makeId) {
        if (world.worldSize() == 1) {
            return makeId.get();
        }
        if (world.rank() == 0) {
            try (Server server = Server.open(world.port())) {
                UniqueId id = makeId.get();
                server.distribute(id, world.worldSize(), world.rendezvousTimeout());
                return id;
            }
        }
        return fetch(world.host(), world.port(), world.rank(), world.worldSize(), world.rendezvousTimeout());
    }

    /** Rank 0's listening socket; opened before the id is made so that early peers are queued, not refused. */
    public static final class Server implements AutoCloseable {
        private final ServerSocket socket;

        private Server(ServerSocket socket) {
            this.socket = socket;
        }

        /** Listens on {@code port} on every interface (0: any free port, for tests). */
        public static Server open(int port) {
            try {
                ServerSocket s = new ServerSocket();
                s.setReuseAddress(true);
                s.bind(new InetSocketAddress(port), 64);
                return new Server(s);
            } catch (IOException e) {
                throw new RendezvousException("rank 0: cannot listen on port " + port + " for the rendezvous (" + e.getMessage()
                        + "): is another run using it? Choose another port in MOE_RENDEZVOUS", e);
            }
        }

        public int port() {
            return socket.getLocalPort();
        }

        /** Hands {@code id} to ranks 1..world-1, each once; throws naming the ranks that did not come in time. */
        public void distribute(UniqueId id, int world, Duration timeout) {
            long deadline = System.nanoTime() + timeout.toNanos();
            TreeSet<Integer> missing = new TreeSet<>();
            for (int r = 1; r < world; r++) {
                missing.add(r);
            }
            while (!missing.isEmpty()) {
                long left = deadline - System.nanoTime();
                if (left <= 0) {
                    throw new RendezvousException("rank 0: " + ranks(missing) + " of " + world + " did not connect to port " + port()
                            + " within " + timeout.toSeconds() + " s: start every rank with the same MOE_WORLD_SIZE and MOE_RENDEZVOUS"
                            + " (MOE_RENDEZVOUS_TIMEOUT_S waits longer)");
                }
                try {
                    socket.setSoTimeout((int) Math.max(1, Math.min(Integer.MAX_VALUE, left / 1_000_000)));
                    try (Socket peer = socket.accept()) {
                        serve(peer, id, world, missing);
                    }
                } catch (SocketTimeoutException e) {
                    // the deadline check above reports it
                } catch (IOException e) {
                    // A peer that drops mid-hello will retry; rank 0 keeps serving the others.
                }
            }
        }

        private void serve(Socket peer, UniqueId id, int world, TreeSet<Integer> missing) throws IOException {
            peer.setSoTimeout((int) HELLO_TIMEOUT.toMillis());
            DataInputStream in = new DataInputStream(peer.getInputStream());
            DataOutputStream out = new DataOutputStream(peer.getOutputStream());
            if (in.readInt() != MAGIC) {
                return; // not one of ours (a port scanner, another program)
            }
            int rank = in.readInt();
            int theirWorld = in.readInt();
            String problem = null;
            if (theirWorld != world) {
                problem = "rank 0 has MOE_WORLD_SIZE=" + world + " but rank " + rank + " has " + theirWorld;
            } else if (rank < 1 || rank >= world) {
                problem = "rank " + rank + " is not a rank of a world of " + world + " other than 0";
            } else if (!missing.contains(rank)) {
                problem = "rank " + rank + " connected twice: two processes have MOE_RANK=" + rank;
            }
            if (problem != null) {
                out.writeByte(1);
                out.writeUTF(problem);
                out.flush();
                throw new RendezvousException("rank 0: " + problem);
            }
            out.writeByte(0);
            id.write(out);
            out.flush();
            missing.remove(rank);
        }

        @Override
        public void close() {
            try {
                socket.close();
            } catch (IOException ignored) {
                // nothing to do: the id has been handed out or the run is failing anyway
            }
        }
    }

    /** Rank {@code rank}'s side: connects to rank 0 (retrying until the deadline) and returns the id. */
    public static UniqueId fetch(String host, int port, int rank, int world, Duration timeout) {
        long deadline = System.nanoTime() + timeout.toNanos();
        String last = "no attempt";
        while (System.nanoTime() < deadline) {
            try (Socket s = new Socket()) {
                int left = (int) Math.max(1, (deadline - System.nanoTime()) / 1_000_000);
                s.connect(new InetSocketAddress(host, port), Math.min(left, 5_000));
                s.setSoTimeout(left);
                DataOutputStream out = new DataOutputStream(s.getOutputStream());
                out.writeInt(MAGIC);
                out.writeInt(rank);
                out.writeInt(world);
                out.flush();
                DataInputStream in = new DataInputStream(s.getInputStream());
                int status = in.readByte();
                if (status != 0) {
                    throw new RendezvousException("rank " + rank + ": rank 0 refused: " + in.readUTF());
                }
                return UniqueId.read(in);
            } catch (SocketTimeoutException e) {
                last = "rank 0 accepted but did not answer";
            } catch (EOFException e) {
                last = "rank 0 closed the connection";
            } catch (IOException e) {
                last = e.getMessage() == null ? e.getClass().getSimpleName() : e.getMessage();
            }
            try {
                Thread.sleep(RETRY);
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
                throw new RendezvousException("rank " + rank + ": interrupted while waiting for rank 0", e);
            }
        }
        throw new RendezvousException("rank " + rank + ": could not get the NCCL id from rank 0 at " + host + ":" + port + " within "
                + timeout.toSeconds() + " s (" + last + "): start rank 0, and give every rank the same MOE_RENDEZVOUS");
    }

    private static String ranks(TreeSet<Integer> missing) {
        List<String> names = new ArrayList<>();
        missing.forEach(r -> names.add(String.valueOf(r)));
        return (missing.size() == 1 ? "rank " : "ranks ") + String.join(", ", names);
    }
}
