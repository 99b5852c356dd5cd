package dev.moe.cuda.nccl;

import static com.google.common.truth.Truth.assertThat;
import static org.junit.jupiter.api.Assertions.assertThrows;

import dev.moe.cuda.CudaException;
import dev.moe.cuda.nccl.Nccl.DataType;
import java.io.ByteArrayInputStream;
import java.io.ByteArrayOutputStream;
import java.io.EOFException;
import java.lang.foreign.Arena;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.Optional;
import java.util.Random;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/** The parts of the NCCL bindings that need no GPU: discovery, the unique id, messages, layouts. */
class NcclBindingsTest {

    @Test
    void missingNcclSaysWhatWasTriedAndHowToFixIt() {
        CudaException e = assertThrows(CudaException.class, () -> NcclLibrary.find(Map.of(), name -> Optional.empty()));
        assertThat(e).hasMessageThat().startsWith("NCCL not found (tried libnccl.so.2, libnccl.so, /usr/local/cuda/lib64/libnccl.so.2, ");
        assertThat(e).hasMessageThat().contains("pip install nvidia-nccl-cu12");
        assertThat(e).hasMessageThat().contains("set MOE_LIBNCCL to the file, or train on one GPU");
    }

    @Test
    void anOverrideThatDoesNotLoadIsAnErrorNotAFallback() {
        CudaException e = assertThrows(CudaException.class,
                () -> NcclLibrary.find(Map.of("MOE_LIBNCCL", "/nonexistent/libnccl.so.2"), name -> Optional.of(name).filter(n -> !n.contains("/"))));
        assertThat(e).hasMessageThat().isEqualTo(
                "NCCL: MOE_LIBNCCL=/nonexistent/libnccl.so.2 could not be loaded (no such file); unset it or point it at libnccl.so.2");
        String found = NcclLibrary.<String>find(Map.of("MOE_LIBNCCL", "/x/libnccl.so.2"), Optional::of);
        assertThat(found).isEqualTo("/x/libnccl.so.2");
    }

    @Test
    void findsPipsNcclWheelInTheVirtualEnvironment(@TempDir Path venv) throws Exception {
        Path lib = venv.resolve("lib/python3.12/site-packages/nvidia/nccl/lib");
        Files.createDirectories(lib);
        Files.writeString(lib.resolve("libnccl.so.2"), "");
        List<String> tried = new ArrayList<>();
        String found = NcclLibrary.find(Map.of("VIRTUAL_ENV", venv.toString(), "MOE_CUDA_LIB_DIR", "/opt/nccl"), name -> {
            tried.add(name);
            return name.startsWith(venv.toString()) ? Optional.of(name) : Optional.empty();
        });
        assertThat(found).isEqualTo(lib.resolve("libnccl.so.2").toString());
        assertThat(tried.subList(0, 3)).containsExactly("libnccl.so.2", "libnccl.so", "/opt/nccl/libnccl.so.2").inOrder();
    }

    @Test
    void onThisMachineNcclIsEitherFoundOrReportedClearly() {
        try {
            NcclLibrary.load();
        } catch (CudaException e) {
            assertThat(e).hasMessageThat().contains("MOE_LIBNCCL");
        }
    }

    @Test
    void theUniqueIdRoundTripsThroughHexAndStreamsAndNativeMemory() throws Exception {
        byte[] b = new byte[128];
        new Random(3).nextBytes(b);
        UniqueId id = new UniqueId(b);
        assertThat(UniqueId.fromHex(id.toHex())).isEqualTo(id);
        assertThat(id.toHex()).hasLength(256);
        ByteArrayOutputStream out = new ByteArrayOutputStream();
        id.write(out);
        assertThat(out.toByteArray()).isEqualTo(b);
        assertThat(UniqueId.read(new ByteArrayInputStream(out.toByteArray()))).isEqualTo(id);
        try (Arena arena = Arena.ofConfined()) {
            assertThat(Nccl.UNIQUE_ID.byteSize()).isEqualTo(128);
            assertThat(UniqueId.fromSegment(id.toSegment(arena))).isEqualTo(id);
        }
        b[0]++;
        assertThat(id.bytes()[0]).isNotEqualTo(b[0]); // a copy, not a view
    }

    @Test
    void malformedIdsAreRejectedClearly() {
        assertThat(assertThrows(IllegalArgumentException.class, () -> new UniqueId(new byte[64]))).hasMessageThat()
                .isEqualTo("an NCCL unique id has 128 bytes, not 64");
        assertThat(assertThrows(IllegalArgumentException.class, () -> UniqueId.fromHex("abc"))).hasMessageThat()
                .isEqualTo("an NCCL unique id is 256 hex digits, got 3");
        assertThat(assertThrows(IllegalArgumentException.class, () -> UniqueId.fromHex("zz".repeat(128)))).hasMessageThat()
                .startsWith("an NCCL unique id is hex digits only");
        assertThrows(EOFException.class, () -> UniqueId.read(new ByteArrayInputStream(new byte[100])));
    }

    @Test
    void versionCodesOfBothEras() {
        assertThat(Nccl.versionString(22703)).isEqualTo("2.27.3");
        assertThat(Nccl.versionString(21805)).isEqualTo("2.18.5");
        assertThat(Nccl.versionString(2804)).isEqualTo("2.8.4");
    }

    @Test
    void failuresNameTheFunctionTheResultAndNcclsText() {
        assertThat(Nccl.failure("ncclAllReduce", 4, "invalid argument (run with NCCL_DEBUG=WARN for details)", "NULL comm"))
                .isEqualTo("ncclAllReduce failed: ncclInvalidArgument (invalid argument (run with NCCL_DEBUG=WARN for details)): NULL comm");
        assertThat(Nccl.failure("ncclSend(to rank 3)", 6, "", "")).isEqualTo("ncclSend(to rank 3) failed: ncclRemoteError");
        assertThat(Nccl.resultName(42)).isEqualTo("ncclResult 42");
    }

    @Test
    void allToAllOffsetsArePeerAfterPeerInBytes() {
        assertThat(Communicator.byteOffsets(new int[] {3, 0, 2}, DataType.FLOAT32)).asList().containsExactly(0L, 12L, 12L, 20L).inOrder();
        assertThat(Communicator.byteOffsets(new int[] {1, 1}, DataType.BFLOAT16)).asList().containsExactly(0L, 2L, 4L).inOrder();
        assertThat(assertThrows(IllegalArgumentException.class, () -> Communicator.byteOffsets(new int[] {1, -1}, DataType.INT32)))
                .hasMessageThat().isEqualTo("negative count -1 for rank 1");
    }

    /** ncclConfig_t as nccl.h (2.17) lays it out on 64-bit Linux, filled as NCCL_CONFIG_INITIALIZER with blocking = 0. */
    @Test
    void theNonblockingConfigHasNcclsLayoutAndInitializer() {
        assertThat(Nccl.CONFIG.byteSize()).isEqualTo(40);
        try (Arena arena = Arena.ofConfined()) {
            java.lang.foreign.MemorySegment c = Nccl.nonblockingConfig(arena);
            assertThat(c.get(java.lang.foreign.ValueLayout.JAVA_LONG, 0)).isEqualTo(40L); // size: NCCL copies this much
            assertThat(c.get(java.lang.foreign.ValueLayout.JAVA_INT, 8)).isEqualTo(0xcafebeef); // magic
            assertThat(c.get(java.lang.foreign.ValueLayout.JAVA_INT, 12)).isEqualTo(21700); // NCCL_VERSION(2, 17, 0)
            assertThat(c.get(java.lang.foreign.ValueLayout.JAVA_INT, 16)).isEqualTo(0); // blocking
            for (long at : new long[] {20, 24, 28}) { // cgaClusterSize, minCTAs, maxCTAs: NCCL_CONFIG_UNDEF_INT
                assertThat(c.get(java.lang.foreign.ValueLayout.JAVA_INT, at)).isEqualTo(Integer.MIN_VALUE);
            }
            assertThat(c.get(java.lang.foreign.ValueLayout.JAVA_LONG, 32)).isEqualTo(0L); // netName: NULL
        }
    }
}
