package dev.moe.cuda.nccl;

import java.io.BufferedReader;
import java.io.IOException;
import java.io.InputStreamReader;
import java.io.PrintStream;
import java.lang.management.ManagementFactory;
import java.net.ServerSocket;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;

/**
 * One process per GPU on this machine: starts {@code ranks} copies of a Java main class with this
 * JVM's class path and options, each with MOE_RANK, MOE_LOCAL_RANK, MOE_WORLD_SIZE and a loopback
 * MOE_RENDEZVOUS; prefixes their output with the rank; and when one fails (or, with a join timeout,
 * one does not join in time), stops the others and exits with its status, so that a dead rank never
 * leaves the rest hanging in a collective.
 *
 * <pre>
 * java ... dev.moe.cuda.nccl.Launcher --gpus N MAIN_CLASS [ARGS...]
 * </pre>
 */
public final class Launcher {
    private static final Duration GRACE = Duration.ofSeconds(10);
    /** How long the ranks get to save a checkpoint when the launcher itself is stopped. */
    private static final Duration SHUTDOWN_GRACE = Duration.ofSeconds(60);
    /** Where each rank leaves {@code rank-R} once it has joined (set by {@link #run} for its children). */
    public static final String JOINED_DIR = "MOE_JOINED_DIR";

    private Launcher() {}

    public static void main(String[] args) {
        if (args.length < 3 || !args[0].equals("--gpus")) {
            System.err.println("usage: Launcher --gpus N MAIN_CLASS [ARGS...]");
            System.exit(2);
        }
        int n;
        try {
            n = Integer.parseInt(args[1]);
        } catch (NumberFormatException e) {
            n = 0;
        }
        if (n < 1) {
            System.err.println("moe: --gpus must be a whole number of at least 1, not " + args[1]);
            System.exit(2);
        }
        List<String> rest = List.of(args).subList(3, args.length);
        System.exit(run(javaCommand(args[2], rest), n, System.out));
    }

    /** The command that runs {@code mainClass} in a fresh JVM like this one (same java, class path and options). */
    public static List<String> javaCommand(String mainClass, List<String> args) {
        List<String> cmd = new ArrayList<>();
        cmd.add(ProcessHandle.current().info().command().orElse(Path.of(System.getProperty("java.home"), "bin", "java").toString()));
        for (String option : ManagementFactory.getRuntimeMXBean().getInputArguments()) {
            if (!option.startsWith("-agentlib:jdwp")) { // a debugger port can be bound only once
                cmd.add(option);
            }
        }
        cmd.add("-cp");
        cmd.add(System.getProperty("java.class.path"));
        cmd.add(mainClass);
        cmd.addAll(args);
        return cmd;
    }

    /** Runs the ranks to completion with no join deadline; 0 when all succeed, else the first failing rank's status. */
    public static int run(List<String> command, int ranks, PrintStream out) {
        return run(command, ranks, out, null);
    }

    /**
     * Runs the ranks to completion; 0 when all succeed, else the first failing rank's status (1 when a
     * rank did not join in time). With a {@code joinTimeout}, each rank must call {@link #joined} (which
     * touches a file in MOE_JOINED_DIR) within it, or every rank is stopped: a rank stuck before its
     * collectives (a wrong GPU, a hung driver) would otherwise keep the others waiting.
     */
    public static int run(List<String> command, int ranks, PrintStream out, Duration joinTimeout) {
        return run(command, ranks, out::println, joinTimeout);
    }

    /** As {@link #run(List, int, PrintStream, Duration)}, handing each output line (ranks' and the launcher's) to {@code out}, one at a time. */
    public static int run(List<String> command, int ranks, java.util.function.Consumer<String> out, Duration joinTimeout) {
        int port;
        try (ServerSocket probe = new ServerSocket(0)) {
            port = probe.getLocalPort();
        } catch (IOException e) {
            out.accept("moe: no free local port for the rendezvous: " + e.getMessage());
            return 1;
        }
        Path joinedDir;
        try {
            joinedDir = Files.createTempDirectory("moe-ranks-");
        } catch (IOException e) {
            out.accept("moe: cannot create a directory for the ranks' join marks: " + e.getMessage());
            return 1;
        }
        List<Process> procs = java.util.Collections.synchronizedList(new ArrayList<>());
        List<Thread> pumps = java.util.Collections.synchronizedList(new ArrayList<>());
        String[] lastLines = new String[ranks];
        long started = System.nanoTime();
        // Ctrl-C or a kill of the launcher alone: pass it on (SIGTERM), so that the ranks agree to stop, save
        // and exit, and wait for them rather than leave them running without their output.
        Thread hook = new Thread(() -> {
            List<Process> live;
            synchronized (procs) {
                live = procs.stream().filter(Process::isAlive).toList();
            }
            live.forEach(Process::destroy);
            stop(live, SHUTDOWN_GRACE);
            join(pumps); // their last lines ("stopped at step N; saved ...")
        }, "moe-launcher-shutdown");
        Runtime.getRuntime().addShutdownHook(hook);
        try {
            for (int r = 0; r < ranks; r++) {
                ProcessBuilder pb = new ProcessBuilder(command).redirectErrorStream(true);
                Map<String, String> env = pb.environment();
                env.put("MOE_RANK", String.valueOf(r));
                env.put("MOE_LOCAL_RANK", String.valueOf(r));
                env.put("MOE_WORLD_SIZE", String.valueOf(ranks));
                env.put("MOE_LOCAL_WORLD_SIZE", String.valueOf(ranks)); // the ranks sharing this machine's cores
                env.put("MOE_RENDEZVOUS", "127.0.0.1:" + port);
                env.put(JOINED_DIR, joinedDir.toString());
                Process p = pb.start();
                procs.add(p);
                pumps.add(Thread.ofPlatform().daemon().start(pump(p, r, lastLines, out)));
            }
            while (true) {
                boolean allDone = true;
                for (int r = 0; r < ranks; r++) {
                    Process p = procs.get(r);
                    if (p.isAlive()) {
                        allDone = false;
                    } else if (p.exitValue() != 0) {
                        int status = p.exitValue();
                        join(pumps.subList(r, r + 1)); // its last words, for the message
                        String last;
                        synchronized (lastLines) {
                            last = lastLines[r];
                        }
                        synchronized (out) {
                            out.accept("moe: rank " + r + " exited with status " + status + (last == null ? "" : " (its last line: " + last + ")")
                                    + "; stopping the other ranks");
                        }
                        stop(procs);
                        join(pumps);
                        return status;
                    }
                }
                if (allDone) {
                    join(pumps);
                    return 0;
                }
                if (joinTimeout != null && System.nanoTime() - started > joinTimeout.toNanos()) {
                    List<Integer> late = new ArrayList<>();
                    for (int r = 0; r < ranks; r++) {
                        if (procs.get(r).isAlive() && !Files.exists(joinedDir.resolve("rank-" + r))) {
                            late.add(r);
                        }
                    }
                    if (!late.isEmpty()) {
                        synchronized (out) {
                            out.accept("moe: " + (late.size() == 1 ? "rank " : "ranks ") + String.join(", ", late.stream().map(String::valueOf).toList())
                                    + " did not join within " + joinTimeout.toSeconds() + " s (MOE_JOIN_TIMEOUT_S waits longer); stopping every rank");
                        }
                        stop(procs);
                        join(pumps);
                        return 1;
                    }
                    joinTimeout = null; // everyone joined: from here on only exits matter
                }
                Thread.sleep(50);
            }
        } catch (IOException e) {
            out.accept("moe: cannot start rank " + procs.size() + ": " + e.getMessage());
            stop(procs);
            return 1;
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
            stop(procs);
            return 130;
        } finally {
            try {
                Runtime.getRuntime().removeShutdownHook(hook);
            } catch (IllegalStateException shuttingDown) {
                // the hook is running or has run: it stops the ranks
            }
            deleteMarks(joinedDir);
        }
    }

    /**
     * Tells the launcher that this rank has joined its communicator (a no-op for a rank that a launcher
     * did not start: several hosts, a scheduler).
     */
    public static void joined(int rank) {
        String dir = System.getenv(JOINED_DIR);
        if (dir == null || dir.isBlank()) {
            return;
        }
        try {
            Files.writeString(Path.of(dir, "rank-" + rank), "");
        } catch (IOException e) {
            System.err.println("moe: warning: rank " + rank + " cannot tell the launcher it joined: " + e.getMessage());
        }
    }

    private static void deleteMarks(Path dir) {
        try (var files = Files.list(dir)) {
            for (Path f : files.toList()) {
                Files.deleteIfExists(f);
            }
            Files.deleteIfExists(dir);
        } catch (IOException ignored) {
            // a temporary directory; nothing depends on it any more
        }
    }

    private static Runnable pump(Process p, int rank, String[] lastLines, java.util.function.Consumer<String> out) {
        String prefix = "[rank " + rank + "] ";
        return () -> {
            try (BufferedReader in = new BufferedReader(new InputStreamReader(p.getInputStream(), StandardCharsets.UTF_8))) {
                for (String line; (line = in.readLine()) != null; ) {
                    if (!line.isBlank()) {
                        synchronized (lastLines) {
                            lastLines[rank] = line.strip();
                        }
                    }
                    synchronized (out) {
                        out.accept(prefix + line);
                    }
                }
            } catch (IOException ignored) {
                // the process is gone
            }
        };
    }

    /** Asks every live rank to stop, then kills those still there after the grace period. */
    private static void stop(List<Process> procs) {
        for (Process p : procs) {
            p.descendants().forEach(ProcessHandle::destroy); // a wrapper script's children hold its output open
            p.destroy();
        }
        stop(procs, GRACE);
    }

    /** Waits up to {@code grace} for the ranks to exit, then kills those still there. */
    private static void stop(List<Process> procs, Duration grace) {
        long deadline = System.nanoTime() + grace.toNanos();
        for (Process p : procs) {
            try {
                long left = deadline - System.nanoTime();
                if (left <= 0 || !p.waitFor(Duration.ofNanos(left))) {
                    p.descendants().forEach(ProcessHandle::destroyForcibly);
                    p.destroyForcibly();
                }
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
                p.destroyForcibly();
            }
        }
    }

    private static void join(List<Thread> pumps) {
        for (Thread t : pumps.toArray(Thread[]::new)) { // a snapshot: the list is shared with the shutdown hook
            try {
                t.join(Duration.ofSeconds(5));
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
                return;
            }
        }
    }
}
