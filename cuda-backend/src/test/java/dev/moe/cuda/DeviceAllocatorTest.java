package dev.moe.cuda;

import static com.google.common.truth.Truth.assertThat;
import static org.junit.jupiter.api.Assertions.assertThrows;

import java.util.HashMap;
import java.util.Map;
import org.junit.jupiter.api.Test;

class DeviceAllocatorTest {

    /** A pretend device with a fixed capacity. */
    static final class FakeDevice implements DeviceAllocator.RawMemory {
        final long capacity;
        long used, next = 0x10000, mallocs, frees;
        final Map<Long, Long> live = new HashMap<>();

        FakeDevice(long capacity) {
            this.capacity = capacity;
        }

        @Override
        public long tryMalloc(long bytes) {
            if (used + bytes > capacity) {
                return -1;
            }
            mallocs++;
            used += bytes;
            long p = next;
            next += bytes;
            live.put(p, bytes);
            return p;
        }

        @Override
        public void free(long pointer) {
            frees++;
            used -= live.remove(pointer);
        }

        @Override
        public long[] memoryInfo() {
            return new long[] {capacity - used, capacity};
        }
    }

    @Test
    void sizesRoundToSmallAndLargeClasses() {
        assertThat(DeviceAllocator.roundUp(1)).isEqualTo(512);
        assertThat(DeviceAllocator.roundUp(513)).isEqualTo(1024);
        assertThat(DeviceAllocator.roundUp(1 << 20)).isEqualTo(1 << 20);
        assertThat(DeviceAllocator.roundUp((1 << 20) + 1)).isEqualTo(2 << 20);
        assertThat(DeviceAllocator.roundUp((5L << 20) + 7)).isEqualTo(6L << 20);
    }

    @Test
    void aFreedBlockIsReusedWithoutCallingTheDriver() {
        FakeDevice dev = new FakeDevice(1L << 30);
        DeviceAllocator alloc = new DeviceAllocator(dev);
        long first;
        try (DeviceAllocator.Block b = alloc.allocate(3000)) {
            first = b.pointer;
            assertThat(alloc.inUse()).isEqualTo(3072);
        }
        assertThat(alloc.cached()).isEqualTo(3072);
        try (DeviceAllocator.Block b = alloc.allocate(2900)) {
            assertThat(b.pointer).isEqualTo(first);
        }
        assertThat(dev.mallocs).isEqualTo(1);
        assertThat(alloc.driverAllocations()).isEqualTo(1);
    }

    /** A pass's blocks, kept in one list and released together; an empty buffer still gets an address. */
    @Test
    void blocksAllocatedIntoAListAreReleasedWithIt() {
        FakeDevice dev = new FakeDevice(1L << 30);
        DeviceAllocator alloc = new DeviceAllocator(dev);
        java.util.List<DeviceAllocator.Block> pass = new java.util.ArrayList<>();
        long a = alloc.allocateInto(pass, 3000), empty = alloc.allocateInto(pass, 0);
        assertThat(pass).hasSize(2);
        assertThat(pass.get(0).pointer).isEqualTo(a);
        assertThat(empty).isNotEqualTo(0L);
        assertThat(empty).isNotEqualTo(a);
        for (DeviceAllocator.Block b : pass) {
            b.close();
        }
        assertThat(alloc.inUse()).isEqualTo(0);
    }

    @Test
    void aMuchLargerCachedBlockIsNotWastedOnASmallRequest() {
        FakeDevice dev = new FakeDevice(1L << 30);
        DeviceAllocator alloc = new DeviceAllocator(dev);
        alloc.allocate(64L << 20).close();
        try (DeviceAllocator.Block b = alloc.allocate(4L << 20)) {
            assertThat(dev.mallocs).isEqualTo(2);
            assertThat(b.bytes).isEqualTo(4L << 20);
        }
    }

    @Test
    void highWaterTracksThePeakInUse() {
        DeviceAllocator alloc = new DeviceAllocator(new FakeDevice(1L << 30));
        DeviceAllocator.Block a = alloc.allocate(4L << 20);
        DeviceAllocator.Block b = alloc.allocate(8L << 20);
        a.close();
        b.close();
        b.close(); // closing twice is harmless
        assertThat(alloc.inUse()).isEqualTo(0);
        assertThat(alloc.highWater()).isEqualTo(12L << 20);
        alloc.resetHighWater();
        assertThat(alloc.highWater()).isEqualTo(0);
    }

    @Test
    void outOfMemoryReleasesTheCacheAndRetriesOnce() {
        FakeDevice dev = new FakeDevice(10L << 20);
        DeviceAllocator alloc = new DeviceAllocator(dev);
        alloc.allocate(6L << 20).close(); // cached, still held from the driver
        try (DeviceAllocator.Block b = alloc.allocate(8L << 20)) {
            assertThat(dev.frees).isEqualTo(1);
            assertThat(alloc.cached()).isEqualTo(0);
        }
    }

    @Test
    void outOfMemorySaysWhatWasAskedAndWhatIsFree() {
        DeviceAllocator alloc = new DeviceAllocator(new FakeDevice(10L << 20));
        DeviceAllocator.Block held = alloc.allocate(4L << 20);
        CudaException e = assertThrows(CudaException.class, () -> alloc.allocate(8L << 20));
        assertThat(e).hasMessageThat().contains("out of GPU memory: asked for 8.0 MiB; the device has 6.0 MiB free of 10.0 MiB");
        assertThat(e).hasMessageThat().contains("4.0 MiB in use");
        held.close();
    }
}
