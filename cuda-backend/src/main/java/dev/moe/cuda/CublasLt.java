package dev.moe.cuda;

import static dev.moe.cuda.Native.INT;
import static dev.moe.cuda.Native.LONG;
import static dev.moe.cuda.Native.PTR;
import static dev.moe.cuda.Native.SIZE_T;

import java.lang.foreign.Arena;
import java.lang.foreign.FunctionDescriptor;
import java.lang.foreign.MemoryLayout;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.SymbolLookup;
import java.lang.foreign.ValueLayout;
import java.lang.invoke.MethodHandle;
import java.util.LinkedHashMap;
import java.util.Map;

/**
 * cuBLASLt GEMMs in cuBLAS's column-major convention: {@code D[m,n] = op(A)·op(B) + beta·D}, with
 * fp32 accumulation whatever the storage type. A row-major {@code Y = X·Wᵀ} (X [rows, in], W [out,
 * in]) is the column-major {@code Yᶜ = Wᶜᵀ·Xᶜ}: {@code matmul(T, N, out, rows, in, W, in, X, in, Y, out)}.
 * The descriptors and the heuristic's algorithm are cached per shape (least recently used first out),
 * so a training loop asks the heuristic once per distinct shape.
 */
public final class CublasLt {
    /** cudaDataType values: storage types of matrices. */
    public enum Type {
        F32(0, 4), BF16(14, 2);

        final int code;
        public final int bytes;

        Type(int code, int bytes) {
            this.code = code;
            this.bytes = bytes;
        }
    }

    private static final String LIB = "libcublasLt";
    private static final int CUBLAS_COMPUTE_32F = 68;
    /** fp32 storage, products on the tensor cores in TF32 (10-bit mantissa inputs), fp32 accumulation. */
    private static final int CUBLAS_COMPUTE_32F_FAST_TF32 = 77;
    private static final int CUDA_R_32F = 0;
    private static final int DESC_TRANSA = 3, DESC_TRANSB = 4;
    private static final int PREF_MAX_WORKSPACE_BYTES = 1;
    private static final int LAYOUT_BATCH_COUNT = 5, LAYOUT_STRIDED_BATCH_OFFSET = 6;
    private static final long HEURISTIC_RESULT_BYTES = 96; // algo (64) + workspaceSize + state + wavesCount + reserved[4]
    private static final int MAX_PLANS = 4096;

    private final MethodHandle create, matmul, descCreate, descSetAttribute, descDestroy, layoutCreate, layoutSetAttribute, layoutDestroy, prefCreate,
            prefSetAttribute, prefDestroy, heuristic, statusName;
    private final Arena arena = Arena.ofShared();
    /** The graph products are recorded into (set by {@link CudaContext#beginGraph}), or null when they run at once. */
    LaunchGraph recording;
    private final MemorySegment handle;
    private final MemorySegment one, zero;
    private final long workspace;
    private final long workspaceBytes;
    private final Map<PlanKey, Plan> plans = new LinkedHashMap<>(256, 0.75f, true) {
        @Override
        protected boolean removeEldestEntry(Map.Entry<PlanKey, Plan> eldest) {
            if (size() > MAX_PLANS) {
                eldest.getValue().destroy();
                return true;
            }
            return false;
        }
    };

    private record PlanKey(boolean transA, boolean transB, int m, int n, int k, int lda, int ldb, int ldd, Type ta, Type tb, Type td,
            boolean tf32, int batch, long strideA, long strideB, long strideD) {}

    private volatile boolean tf32;

    /**
     * Algorithms by shape bucket (each dimension rounded up to a power of two). The MoE layers'
     * GEMMs change their row counts every step with the routing, and asking the heuristic for each
     * new shape costs more than the GEMM; an algorithm of the bucket is tried first, and a shape it
     * does not support gets its own (see {@link #matmul}).
     */
    private final Map<PlanKey, MemorySegment> algos = new java.util.HashMap<>();

    private static int bucket(int x) {
        return x <= 16 ? x : Integer.highestOneBit(x - 1) << 1;
    }

    private static PlanKey bucket(PlanKey k) {
        return new PlanKey(k.transA(), k.transB(), bucket(k.m()), bucket(k.n()), bucket(k.k()), k.lda(), k.ldb(), k.ldd(), k.ta(), k.tb(), k.td(),
                k.tf32(), k.batch(), k.strideA(), k.strideB(), k.strideD());
    }

    /**
     * Whether fp32 products run on the tensor cores in TF32 (about 8x the fp32 rate on an H100/H200,
     * inputs rounded to 10 mantissa bits) instead of exact fp32; off by default, for parity runs.
     */
    public void setTf32(boolean on) {
        tf32 = on;
    }

    public boolean tf32() {
        return tf32;
    }

    private final class Plan {
        final MemorySegment desc, a, b, d;
        MemorySegment algo;
        /** Whether the algorithm was chosen for another shape of the same bucket (see {@link #algos}). */
        boolean borrowed;

        Plan(MemorySegment desc, MemorySegment a, MemorySegment b, MemorySegment d, MemorySegment algo, boolean borrowed) {
            this.desc = desc;
            this.a = a;
            this.b = b;
            this.d = d;
            this.algo = algo;
            this.borrowed = borrowed;
        }

        void destroy() {
            Native.call(descDestroy, desc);
            Native.call(layoutDestroy, a);
            Native.call(layoutDestroy, b);
            Native.call(layoutDestroy, d);
        }
    }

    /** A handle bound to a workspace of {@code workspaceBytes} at device address {@code workspace}. */
    public CublasLt(long workspace, long workspaceBytes) {
        SymbolLookup lib = CudaLibraries.load(CudaLibraries.CUBLASLT);
        create = fn(lib, "cublasLtCreate", INT, PTR);
        matmul = fn(lib, "cublasLtMatmul", INT, PTR, PTR, PTR, LONG, PTR, LONG, PTR, PTR, LONG, PTR, LONG, PTR, PTR, LONG, SIZE_T, PTR);
        descCreate = fn(lib, "cublasLtMatmulDescCreate", INT, PTR, INT, INT);
        descSetAttribute = fn(lib, "cublasLtMatmulDescSetAttribute", INT, PTR, INT, PTR, SIZE_T);
        descDestroy = fn(lib, "cublasLtMatmulDescDestroy", INT, PTR);
        layoutCreate = fn(lib, "cublasLtMatrixLayoutCreate", INT, PTR, INT, LONG, LONG, LONG);
        layoutDestroy = fn(lib, "cublasLtMatrixLayoutDestroy", INT, PTR);
        layoutSetAttribute = fn(lib, "cublasLtMatrixLayoutSetAttribute", INT, PTR, INT, PTR, SIZE_T);
        prefCreate = fn(lib, "cublasLtMatmulPreferenceCreate", INT, PTR);
        prefSetAttribute = fn(lib, "cublasLtMatmulPreferenceSetAttribute", INT, PTR, INT, PTR, SIZE_T);
        prefDestroy = fn(lib, "cublasLtMatmulPreferenceDestroy", INT, PTR);
        heuristic = fn(lib, "cublasLtMatmulAlgoGetHeuristic", INT, PTR, PTR, PTR, PTR, PTR, PTR, PTR, INT, PTR, PTR);
        statusName = fn(lib, "cublasLtGetStatusName", PTR, INT);
        MemorySegment h = arena.allocate(PTR);
        check(Native.call(create, h), "cublasLtCreate");
        handle = h.get(ValueLayout.ADDRESS, 0);
        one = arena.allocateFrom(ValueLayout.JAVA_FLOAT, 1f);
        zero = arena.allocateFrom(ValueLayout.JAVA_FLOAT, 0f);
        this.workspace = workspace;
        this.workspaceBytes = workspaceBytes;
    }

    private static MethodHandle fn(SymbolLookup lib, String name, MemoryLayout ret, MemoryLayout... args) {
        return Native.function(lib, LIB, name, FunctionDescriptor.of(ret, args));
    }

    private void check(int status, String function) {
        if (status != 0) {
            String name;
            try {
                name = Native.cString((MemorySegment) statusName.invokeExact(status));
            } catch (Throwable t) {
                name = "status " + status;
            }
            throw new CudaException(function + " failed: " + name);
        }
    }

    /**
     * {@code D = op(A)·op(B) + (accumulate ? D : 0)}, column-major, on {@code stream}. A is stored
     * {@code transA ? k×m : m×k} with leading dimension lda, B {@code transB ? n×k : k×n}.
     */
    public void matmul(MemorySegment stream, boolean transA, boolean transB, int m, int n, int k, long a, Type ta, int lda, long b,
            Type tb, int ldb, long d, Type td, int ldd, boolean accumulate) {
        matmulBatched(stream, transA, transB, m, n, k, a, ta, lda, 0, b, tb, ldb, 0, d, td, ldd, 0, 1, accumulate);
    }

    /**
     * {@link #matmul} over {@code batch} independent products whose matrices lie {@code strideA},
     * {@code strideB} and {@code strideD} elements apart (cuBLASLt's strided batch): one launch for
     * many small products, such as attention's per-head ones. A stride of 0 shares that matrix.
     */
    public void matmulBatched(MemorySegment stream, boolean transA, boolean transB, int m, int n, int k, long a, Type ta, int lda,
            long strideA, long b, Type tb, int ldb, long strideB, long d, Type td, int ldd, long strideD, int batch, boolean accumulate) {
        if (m == 0 || n == 0 || batch == 0) {
            return;
        }
        LaunchGraph g = recording;
        if (g != null) {
            g.step(() -> matmulNow(stream, transA, transB, m, n, k, a, ta, lda, strideA, b, tb, ldb, strideB, d, td, ldd, strideD, batch,
                    accumulate), "cublasLtMatmul", stream.address(), transA, transB, m, n, k, a, ta, lda, strideA, b, tb, ldb, strideB, d, td,
                    ldd, strideD, batch, accumulate, tf32);
            return;
        }
        matmulNow(stream, transA, transB, m, n, k, a, ta, lda, strideA, b, tb, ldb, strideB, d, td, ldd, strideD, batch, accumulate);
    }

    private void matmulNow(MemorySegment stream, boolean transA, boolean transB, int m, int n, int k, long a, Type ta, int lda,
            long strideA, long b, Type tb, int ldb, long strideB, long d, Type td, int ldd, long strideD, int batch, boolean accumulate) {
        PlanKey key = new PlanKey(transA, transB, m, n, k, lda, ldb, ldd, ta, tb, td, tf32 && ta == Type.F32 && tb == Type.F32, batch,
                batch == 1 ? 0 : strideA, batch == 1 ? 0 : strideB, batch == 1 ? 0 : strideD);
        Plan plan = plans.computeIfAbsent(key, this::plan);
        int rc;
        MemorySegment beta = accumulate ? one : zero; // a local: invokeExact needs the static type exactly
        try {
            rc = (int) matmul.invokeExact(handle, plan.desc, one, a, plan.a, b, plan.b, beta, d, plan.d, d, plan.d,
                    plan.algo, workspace, workspaceBytes, stream);
            if (rc != 0 && plan.borrowed) {
                // the bucket's algorithm does not take this shape: ask for one of its own and try again
                plan.algo = heuristic(key, plan);
                plan.borrowed = false;
                rc = (int) matmul.invokeExact(handle, plan.desc, one, a, plan.a, b, plan.b, beta, d, plan.d, d, plan.d,
                        plan.algo, workspace, workspaceBytes, stream);
            }
        } catch (Throwable t) {
            throw new CudaException("cublasLtMatmul failed: " + t, t);
        }
        check(rc, "cublasLtMatmul(" + m + "x" + n + "x" + k + ")");
    }

    private Plan plan(PlanKey key) {
        try (Arena tmp = Arena.ofConfined()) {
            MemorySegment out = tmp.allocate(PTR);
            check(Native.call(descCreate, out, key.tf32() ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F, CUDA_R_32F),
                    "cublasLtMatmulDescCreate");
            MemorySegment desc = out.get(ValueLayout.ADDRESS, 0);
            check(Native.call(descSetAttribute, desc, DESC_TRANSA, tmp.allocateFrom(INT, key.transA() ? 1 : 0), 4L),
                    "cublasLtMatmulDescSetAttribute(TRANSA)");
            check(Native.call(descSetAttribute, desc, DESC_TRANSB, tmp.allocateFrom(INT, key.transB() ? 1 : 0), 4L),
                    "cublasLtMatmulDescSetAttribute(TRANSB)");
            MemorySegment a = layout(tmp, key.ta(), key.transA() ? key.k() : key.m(), key.transA() ? key.m() : key.k(), key.lda(),
                    key.batch(), key.strideA());
            MemorySegment b = layout(tmp, key.tb(), key.transB() ? key.n() : key.k(), key.transB() ? key.k() : key.n(), key.ldb(),
                    key.batch(), key.strideB());
            MemorySegment d = layout(tmp, key.td(), key.m(), key.n(), key.ldd(), key.batch(), key.strideD());
            PlanKey bucket = bucket(key);
            MemorySegment algo = algos.get(bucket);
            if (algo != null && !bucket.equals(key)) {
                return new Plan(desc, a, b, d, algo, true);
            }
            Plan plan = new Plan(desc, a, b, d, null, false);
            plan.algo = heuristic(key, plan);
            algos.putIfAbsent(bucket, plan.algo);
            return plan;
        }
    }

    /** The heuristic's first algorithm for the plan's exact shape. */
    private MemorySegment heuristic(PlanKey key, Plan plan) {
        try (Arena tmp = Arena.ofConfined()) {
            MemorySegment out = tmp.allocate(PTR);
            check(Native.call(prefCreate, out), "cublasLtMatmulPreferenceCreate");
            MemorySegment pref = out.get(ValueLayout.ADDRESS, 0);
            try {
                check(Native.call(prefSetAttribute, pref, PREF_MAX_WORKSPACE_BYTES, tmp.allocateFrom(LONG, workspaceBytes), 8L),
                        "cublasLtMatmulPreferenceSetAttribute");
                MemorySegment result = tmp.allocate(HEURISTIC_RESULT_BYTES, 8);
                MemorySegment count = tmp.allocate(INT);
                check(Native.call(heuristic, handle, plan.desc, plan.a, plan.b, plan.d, plan.d, pref, 1, result, count),
                        "cublasLtMatmulAlgoGetHeuristic");
                if (count.get(INT, 0) == 0) {
                    throw new CudaException("cuBLASLt has no algorithm for " + key);
                }
                MemorySegment algo = arena.allocate(64, 8);
                algo.copyFrom(result.asSlice(0, 64));
                return algo;
            } finally {
                Native.call(prefDestroy, pref);
            }
        }
    }

    private MemorySegment layout(Arena tmp, Type type, long rows, long cols, long ld, int batch, long stride) {
        MemorySegment out = tmp.allocate(PTR);
        check(Native.call(layoutCreate, out, type.code, rows, cols, ld), "cublasLtMatrixLayoutCreate");
        MemorySegment layout = out.get(ValueLayout.ADDRESS, 0);
        if (batch > 1) {
            check(Native.call(layoutSetAttribute, layout, LAYOUT_BATCH_COUNT, tmp.allocateFrom(INT, batch), 4L),
                    "cublasLtMatrixLayoutSetAttribute(BATCH_COUNT)");
            check(Native.call(layoutSetAttribute, layout, LAYOUT_STRIDED_BATCH_OFFSET, tmp.allocateFrom(LONG, stride), 8L),
                    "cublasLtMatrixLayoutSetAttribute(STRIDED_BATCH_OFFSET)");
        }
        return layout;
    }
}
