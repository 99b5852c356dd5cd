package dev.moe.cuda.nccl;

import dev.moe.cuda.CudaException;
import java.lang.foreign.Arena;
import java.lang.foreign.FunctionDescriptor;
import java.lang.foreign.Linker;
import java.lang.foreign.MemoryLayout;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.StructLayout;
import java.lang.foreign.SymbolLookup;
import java.lang.foreign.ValueLayout;
import java.lang.invoke.MethodHandle;

/**
 * The part of NCCL that expert and data parallelism use, through FFM. Every call is checked: a
 * failure throws a {@link CudaException} naming the function, NCCL's result and its text, and the
 * communicator's last error where NCCL keeps one. Communicators and streams are plain segments
 * here; {@link Communicator} is the closeable handle.
 */
public final class Nccl {
    static final ValueLayout.OfInt INT = ValueLayout.JAVA_INT;
    static final ValueLayout.OfLong SIZE_T = ValueLayout.JAVA_LONG;
    static final MemoryLayout PTR = ValueLayout.ADDRESS;
    /** {@code ncclUniqueId}: {@code struct { char internal[128]; }}, passed by value to ncclCommInitRank. */
    static final StructLayout UNIQUE_ID = MemoryLayout.structLayout(MemoryLayout.sequenceLayout(UniqueId.BYTES, ValueLayout.JAVA_BYTE)
            .withName("internal"));

    /** {@code ncclDataType_t}. */
    public enum DataType {
        INT8(0, 1), UINT8(1, 1), INT32(2, 4), UINT32(3, 4), INT64(4, 8), UINT64(5, 8), FLOAT16(6, 2), FLOAT32(7, 4), FLOAT64(8, 8),
        BFLOAT16(9, 2);

        public final int code;
        public final int bytes;

        DataType(int code, int bytes) {
            this.code = code;
            this.bytes = bytes;
        }
    }

    /** {@code ncclRedOp_t}'s built-in operations. */
    public enum RedOp {
        SUM(0), PROD(1), MAX(2), MIN(3), AVG(4);

        public final int code;

        RedOp(int code) {
            this.code = code;
        }
    }

    /**
     * {@code ncclConfig_t} as NCCL 2.17 laid it out. NCCL reads a config's own {@code size} and
     * {@code version} and gives newer fields their defaults, so this prefix stays valid in later
     * versions. Only {@code blocking} is set; the rest are NCCL_CONFIG_UNDEF_INT / NULL.
     */
    static final StructLayout CONFIG = MemoryLayout.structLayout(
            ValueLayout.JAVA_LONG.withName("size"),
            ValueLayout.JAVA_INT.withName("magic"),
            ValueLayout.JAVA_INT.withName("version"),
            ValueLayout.JAVA_INT.withName("blocking"),
            ValueLayout.JAVA_INT.withName("cgaClusterSize"),
            ValueLayout.JAVA_INT.withName("minCTAs"),
            ValueLayout.JAVA_INT.withName("maxCTAs"),
            ValueLayout.ADDRESS.withName("netName"));
    static final int CONFIG_MAGIC = 0xcafebeef;
    static final int CONFIG_VERSION = 21700; // NCCL_VERSION(2, 17, 0)
    static final int CONFIG_UNDEF_INT = Integer.MIN_VALUE;

    static final int NCCL_SUCCESS = 0;
    static final int NCCL_IN_PROGRESS = 7;
    private static final String[] RESULT_NAMES = {"ncclSuccess", "ncclUnhandledCudaError", "ncclSystemError", "ncclInternalError",
        "ncclInvalidArgument", "ncclInvalidUsage", "ncclRemoteError", "ncclInProgress"};

    private static final Linker LINKER = Linker.nativeLinker();
    private static Nccl instance;

    private final MethodHandle ncclGetVersion, ncclGetUniqueId, ncclCommInitRank, ncclCommDestroy, ncclCommAbort, ncclCommGetAsyncError,
            ncclCommCount, ncclCommUserRank, ncclCommCuDevice, ncclAllReduce, ncclSend, ncclRecv, ncclGroupStart, ncclGroupEnd,
            ncclGetErrorString, ncclGetLastError, ncclCommInitRankConfig;

    /** Loads libnccl once; throws with what was tried and how to fix it when it is missing. */
    public static synchronized Nccl get() {
        if (instance == null) {
            instance = new Nccl(NcclLibrary.load());
        }
        return instance;
    }

    private Nccl(SymbolLookup lib) {
        ncclGetErrorString = fn(lib, "ncclGetErrorString", PTR, INT);
        // Since NCCL 2.13; older libraries only have the result's text.
        ncclGetLastError = lib.find("ncclGetLastError").isPresent() ? fn(lib, "ncclGetLastError", PTR, PTR) : null;
        ncclGetVersion = fn(lib, "ncclGetVersion", INT, PTR);
        ncclGetUniqueId = fn(lib, "ncclGetUniqueId", INT, PTR);
        ncclCommInitRank = fn(lib, "ncclCommInitRank", INT, PTR, INT, UNIQUE_ID, INT);
        // Since NCCL 2.14: the nonblocking init that a joining timeout needs.
        ncclCommInitRankConfig = lib.find("ncclCommInitRankConfig").isPresent()
                ? fn(lib, "ncclCommInitRankConfig", INT, PTR, INT, UNIQUE_ID, INT, PTR) : null;
        ncclCommDestroy = fn(lib, "ncclCommDestroy", INT, PTR);
        ncclCommAbort = fn(lib, "ncclCommAbort", INT, PTR);
        ncclCommGetAsyncError = fn(lib, "ncclCommGetAsyncError", INT, PTR, PTR);
        ncclCommCount = fn(lib, "ncclCommCount", INT, PTR, PTR);
        ncclCommUserRank = fn(lib, "ncclCommUserRank", INT, PTR, PTR);
        ncclCommCuDevice = fn(lib, "ncclCommCuDevice", INT, PTR, PTR);
        ncclAllReduce = fn(lib, "ncclAllReduce", INT, ValueLayout.JAVA_LONG, ValueLayout.JAVA_LONG, SIZE_T, INT, INT, PTR, PTR);
        ncclSend = fn(lib, "ncclSend", INT, ValueLayout.JAVA_LONG, SIZE_T, INT, INT, PTR, PTR);
        ncclRecv = fn(lib, "ncclRecv", INT, ValueLayout.JAVA_LONG, SIZE_T, INT, INT, PTR, PTR);
        ncclGroupStart = fn(lib, "ncclGroupStart", INT);
        ncclGroupEnd = fn(lib, "ncclGroupEnd", INT);
    }

    private static MethodHandle fn(SymbolLookup lib, String name, MemoryLayout ret, MemoryLayout... args) {
        MemorySegment symbol = lib.find(name)
                .orElseThrow(() -> new CudaException("libnccl has no function " + name + " (NCCL 2.7 or newer is needed)"));
        return LINKER.downcallHandle(symbol, FunctionDescriptor.of(ret, args));
    }

    private static int call(MethodHandle handle, Object... args) {
        try {
            return (int) handle.invokeWithArguments(args);
        } catch (RuntimeException | Error e) {
            throw e;
        } catch (Throwable t) {
            throw new CudaException("native call failed: " + t, t);
        }
    }

    /** NCCL's name for a result code, e.g. {@code ncclInvalidArgument}. */
    static String resultName(int result) {
        return result >= 0 && result < RESULT_NAMES.length ? RESULT_NAMES[result] : "ncclResult " + result;
    }

    /** The message of a failed call: the function, the result's name and NCCL's text, and the communicator's last error. */
    static String failure(String function, int result, String text, String lastError) {
        StringBuilder sb = new StringBuilder(function).append(" failed: ").append(resultName(result));
        if (text != null && !text.isBlank()) {
            sb.append(" (").append(text.strip()).append(')');
        }
        if (lastError != null && !lastError.isBlank()) {
            sb.append(": ").append(lastError.strip());
        }
        return sb.toString();
    }

    /** Throws for anything but ncclSuccess. */
    void check(int result, String function, MemorySegment comm) {
        if (result == NCCL_SUCCESS) {
            return;
        }
        throw new CudaException(failure(function, result, errorString(result), lastError(comm)));
    }

    String errorString(int result) {
        try {
            return cString((MemorySegment) ncclGetErrorString.invokeWithArguments(result));
        } catch (Throwable t) {
            return "";
        }
    }

    String lastError(MemorySegment comm) {
        if (ncclGetLastError == null) {
            return "";
        }
        try {
            return cString((MemorySegment) ncclGetLastError.invokeWithArguments(comm == null ? MemorySegment.NULL : comm));
        } catch (Throwable t) {
            return "";
        }
    }

    private static String cString(MemorySegment address) {
        return address.equals(MemorySegment.NULL) ? "" : address.reinterpret(4096).getString(0);
    }

    /** NCCL's version code (e.g. 22703 for 2.27.3). */
    public int version() {
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment v = arena.allocate(INT);
            check(call(ncclGetVersion, v), "ncclGetVersion", null);
            return v.get(INT, 0);
        }
    }

    /** "2.27.3" for 22703; codes before 2.9 were major·1000 + minor·100 + patch. */
    public static String versionString(int code) {
        if (code >= 20900) {
            return code / 10000 + "." + code / 100 % 100 + "." + code % 100;
        }
        return code / 1000 + "." + code / 100 % 10 + "." + code % 100;
    }

    /** A fresh id for a new communicator; rank 0 makes it and shares it with the others. */
    public UniqueId uniqueId() {
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment id = arena.allocate(UNIQUE_ID);
            check(call(ncclGetUniqueId, id), "ncclGetUniqueId", null);
            return UniqueId.fromSegment(id);
        }
    }

    /**
     * Joins rank {@code rank} of {@code ranks} to the communicator of {@code id}, on the GPU whose
     * context is current on this thread. Blocks until every rank has joined.
     */
    public Communicator initRank(int ranks, UniqueId id, int rank) {
        if (rank < 0 || rank >= ranks) {
            throw new IllegalArgumentException("rank " + rank + " of a world of " + ranks);
        }
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment out = arena.allocate(PTR);
            check(call(ncclCommInitRank, out, ranks, id.toSegment(arena), rank), "ncclCommInitRank(rank " + rank + " of " + ranks + ")", null);
            return new Communicator(this, out.get(ValueLayout.ADDRESS, 0), ranks, rank);
        }
    }

    /** A config that asks for a nonblocking communicator (calls return ncclInProgress; completion is polled). */
    static MemorySegment nonblockingConfig(Arena arena) {
        MemorySegment c = arena.allocate(CONFIG);
        c.set(ValueLayout.JAVA_LONG, CONFIG.byteOffset(MemoryLayout.PathElement.groupElement("size")), CONFIG.byteSize());
        c.set(INT, CONFIG.byteOffset(MemoryLayout.PathElement.groupElement("magic")), CONFIG_MAGIC);
        c.set(INT, CONFIG.byteOffset(MemoryLayout.PathElement.groupElement("version")), CONFIG_VERSION);
        c.set(INT, CONFIG.byteOffset(MemoryLayout.PathElement.groupElement("blocking")), 0);
        for (String f : new String[] {"cgaClusterSize", "minCTAs", "maxCTAs"}) {
            c.set(INT, CONFIG.byteOffset(MemoryLayout.PathElement.groupElement(f)), CONFIG_UNDEF_INT);
        }
        c.set(ValueLayout.ADDRESS, CONFIG.byteOffset(MemoryLayout.PathElement.groupElement("netName")), MemorySegment.NULL);
        return c;
    }

    /**
     * Like {@link #initRank(int, UniqueId, int)}, but gives up after {@code timeout}: the communicator
     * is made nonblocking, its state is polled with ncclCommGetAsyncError, and when a peer does not
     * come in time (or init fails) it is aborted with ncclCommAbort and this throws, naming the rank.
     * Falls back to the blocking init (no timeout) on NCCL before 2.14, with a warning.
     */
    public Communicator initRank(int ranks, UniqueId id, int rank, java.time.Duration timeout) {
        if (rank < 0 || rank >= ranks) {
            throw new IllegalArgumentException("rank " + rank + " of a world of " + ranks);
        }
        if (ncclCommInitRankConfig == null) {
            System.err.println("moe: warning: NCCL " + versionString(version()) + " has no nonblocking init (2.14+): joining without a timeout");
            return initRank(ranks, id, rank);
        }
        String what = "ncclCommInitRankConfig(rank " + rank + " of " + ranks + ")";
        MemorySegment comm;
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment out = arena.allocate(PTR);
            int rc = call(ncclCommInitRankConfig, out, ranks, id.toSegment(arena), rank, nonblockingConfig(arena));
            comm = out.get(ValueLayout.ADDRESS, 0);
            if (rc != NCCL_SUCCESS && rc != NCCL_IN_PROGRESS) {
                if (!comm.equals(MemorySegment.NULL)) {
                    abortQuietly(comm);
                }
                check(rc, what, null);
            }
        }
        long deadline = System.nanoTime() + timeout.toNanos();
        while (true) {
            int state = asyncError(comm);
            if (state == NCCL_SUCCESS) {
                return new Communicator(this, comm, ranks, rank, timeout);
            }
            if (state != NCCL_IN_PROGRESS) {
                String msg = failure(what, state, errorString(state), lastError(comm));
                abortQuietly(comm);
                throw new CudaException("rank " + rank + ": " + msg);
            }
            if (System.nanoTime() > deadline) {
                abortQuietly(comm);
                throw new CudaException("rank " + rank + ": the NCCL communicator of " + ranks + " ranks was not complete within " + timeout.toSeconds()
                        + " s: a rank did not join (crashed, or started with another MOE_WORLD_SIZE); aborted (MOE_NCCL_TIMEOUT_S sets the limit)");
            }
            try {
                Thread.sleep(10);
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
                abortQuietly(comm);
                throw new CudaException("rank " + rank + ": interrupted while joining the NCCL communicator", e);
            }
        }
    }

    private void abortQuietly(MemorySegment comm) {
        try {
            call(ncclCommAbort, comm);
        } catch (RuntimeException ignored) {
            // already failing: the first error is the one to report
        }
    }

    public void groupStart() {
        check(call(ncclGroupStart), "ncclGroupStart", null);
    }

    public void groupEnd() {
        int rc = call(ncclGroupEnd);
        if (rc != NCCL_IN_PROGRESS) { // a group of a nonblocking communicator's calls completes in the background
            check(rc, "ncclGroupEnd", null);
        }
    }

    void destroy(MemorySegment comm) {
        checkEnqueued(call(ncclCommDestroy, comm), "ncclCommDestroy", null);
    }

    void abort(MemorySegment comm) {
        checkEnqueued(call(ncclCommAbort, comm), "ncclCommAbort", null);
    }

    /** ncclSuccess, ncclInProgress, or the error that a communicator's background work ran into. */
    int asyncError(MemorySegment comm) {
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment v = arena.allocate(INT);
            check(call(ncclCommGetAsyncError, comm, v), "ncclCommGetAsyncError", comm);
            return v.get(INT, 0);
        }
    }

    int commQuery(MethodHandle which, String name, MemorySegment comm) {
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment v = arena.allocate(INT);
            check(call(which, comm, v), name, comm);
            return v.get(INT, 0);
        }
    }

    int count(MemorySegment comm) {
        return commQuery(ncclCommCount, "ncclCommCount", comm);
    }

    int userRank(MemorySegment comm) {
        return commQuery(ncclCommUserRank, "ncclCommUserRank", comm);
    }

    int cuDevice(MemorySegment comm) {
        return commQuery(ncclCommCuDevice, "ncclCommCuDevice", comm);
    }

    void allReduce(long send, long recv, long count, DataType type, RedOp op, MemorySegment comm, MemorySegment stream) {
        checkEnqueued(call(ncclAllReduce, send, recv, count, type.code, op.code, comm, stream), "ncclAllReduce", comm);
    }

    void send(long buffer, long count, DataType type, int peer, MemorySegment comm, MemorySegment stream) {
        checkEnqueued(call(ncclSend, buffer, count, type.code, peer, comm, stream), "ncclSend(to rank " + peer + ")", comm);
    }

    void recv(long buffer, long count, DataType type, int peer, MemorySegment comm, MemorySegment stream) {
        checkEnqueued(call(ncclRecv, buffer, count, type.code, peer, comm, stream), "ncclRecv(from rank " + peer + ")", comm);
    }

    /** On a nonblocking communicator a collective may return ncclInProgress: {@link Communicator#await} polls it to the end. */
    private void checkEnqueued(int result, String function, MemorySegment comm) {
        if (result != NCCL_IN_PROGRESS) {
            check(result, function, comm);
        }
    }
}
