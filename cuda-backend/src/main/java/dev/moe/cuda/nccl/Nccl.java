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

    static final int NCCL_SUCCESS = 0;
    static final int NCCL_IN_PROGRESS = 7;
    private static final String[] RESULT_NAMES = {"ncclSuccess", "ncclUnhandledCudaError", "ncclSystemError", "ncclInternalError",
        "ncclInvalidArgument", "ncclInvalidUsage", "ncclRemoteError", "ncclInProgress"};

    private static final Linker LINKER = Linker.nativeLinker();
    private static Nccl instance;

    private final MethodHandle ncclGetVersion, ncclGetUniqueId, ncclCommInitRank, ncclCommDestroy, ncclCommAbort, ncclCommGetAsyncError,
            ncclCommCount, ncclCommUserRank, ncclCommCuDevice, ncclAllReduce, ncclSend, ncclRecv, ncclGroupStart, ncclGroupEnd,
            ncclGetErrorString, ncclGetLastError;

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

    private String lastError(MemorySegment comm) {
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

    public void groupStart() {
        check(call(ncclGroupStart), "ncclGroupStart", null);
    }

    public void groupEnd() {
        check(call(ncclGroupEnd), "ncclGroupEnd", null);
    }

    void destroy(MemorySegment comm) {
        check(call(ncclCommDestroy, comm), "ncclCommDestroy", null);
    }

    void abort(MemorySegment comm) {
        check(call(ncclCommAbort, comm), "ncclCommAbort", null);
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
        check(call(ncclAllReduce, send, recv, count, type.code, op.code, comm, stream), "ncclAllReduce", comm);
    }

    void send(long buffer, long count, DataType type, int peer, MemorySegment comm, MemorySegment stream) {
        check(call(ncclSend, buffer, count, type.code, peer, comm, stream), "ncclSend(to rank " + peer + ")", comm);
    }

    void recv(long buffer, long count, DataType type, int peer, MemorySegment comm, MemorySegment stream) {
        check(call(ncclRecv, buffer, count, type.code, peer, comm, stream), "ncclRecv(from rank " + peer + ")", comm);
    }
}
