package dev.moe.cuda;

import java.util.ArrayDeque;
import java.util.Map;
import java.util.TreeMap;

/**
 * A caching device allocator: a freed block goes back to a free list by size and is handed out
 * again, so a training step allocates nothing from the driver once the first step has run. All
 * work is on one stream, so a block freed by the host may be reused by the next kernel in stream
 * order. When the driver is out of memory, the cache is released and the allocation retried once;
 * a second failure reports what was asked, what is free, and what this allocator holds.
 */
public final class DeviceAllocator implements AutoCloseable {

    /** What the allocator needs from the driver (a fake in tests). */
    public interface RawMemory {
        /** A device pointer, or -1 when out of memory. */
        long tryMalloc(long bytes);

        void free(long pointer);

        /** {free, total} bytes. */
        long[] memoryInfo();
    }

    /** A block of device memory; closing it returns it to the allocator's cache. */
    public final class Block implements AutoCloseable {
        public final long pointer;
        /** What was asked for; the block may be larger. */
        public final long bytes;
        final long capacity;
        private boolean closed;

        Block(long pointer, long bytes, long capacity) {
            this.pointer = pointer;
            this.bytes = bytes;
            this.capacity = capacity;
        }

        @Override
        public void close() {
            if (!closed) {
                closed = true;
                release(this);
            }
        }
    }

    static final long SMALL = 1L << 20;
    static final long SMALL_ROUND = 512;
    static final long LARGE_ROUND = 2L << 20;

    private final RawMemory raw;
    private final TreeMap<Long, ArrayDeque<Long>> free = new TreeMap<>();
    private long inUse, cached, highWater, driverAllocations;

    public DeviceAllocator(RawMemory raw) {
        this.raw = raw;
    }

    /**
     * A block of at least {@code bytes} (4 at the least, so that an empty buffer still has an address) added to {@code owner}, a
     * pass's list of blocks that are released together; returns its device address.
     */
    public long allocateInto(java.util.List<Block> owner, long bytes) {
        Block b = allocate(Math.max(bytes, 4));
        owner.add(b);
        return b.pointer;
    }

    /** The size class of a request: 512-byte steps up to 1 MiB, 2 MiB steps above. */
    static long roundUp(long bytes) {
        long unit = bytes <= SMALL ? SMALL_ROUND : LARGE_ROUND;
        return Math.max(unit, (bytes + unit - 1) / unit * unit);
    }

    public synchronized Block allocate(long bytes) {
        if (bytes < 0) {
            throw new IllegalArgumentException("negative allocation: " + bytes);
        }
        long size = roundUp(bytes);
        // Reuse a cached block of this size, or one at most 1/8 larger (less waste than splitting).
        Map.Entry<Long, ArrayDeque<Long>> hit = free.ceilingEntry(size);
        if (hit != null && hit.getKey() <= size + size / 8) {
            long capacity = hit.getKey();
            long pointer = hit.getValue().pop();
            if (hit.getValue().isEmpty()) {
                free.remove(capacity);
            }
            cached -= capacity;
            return track(new Block(pointer, bytes, capacity));
        }
        long pointer = raw.tryMalloc(size);
        if (pointer == -1) {
            releaseCache();
            pointer = raw.tryMalloc(size);
        }
        if (pointer == -1) {
            long[] info = raw.memoryInfo();
            throw new CudaException(String.format(
                    "out of GPU memory: asked for %s; the device has %s free of %s; this model holds %s in use (peak %s). "
                            + "Use a smaller batch (--batch) or context, or a smaller model.",
                    human(bytes), human(info[0]), human(info[1]), human(inUse), human(highWater)));
        }
        driverAllocations++;
        return track(new Block(pointer, bytes, size));
    }

    private Block track(Block block) {
        inUse += block.capacity;
        highWater = Math.max(highWater, inUse);
        return block;
    }

    private synchronized void release(Block block) {
        inUse -= block.capacity;
        cached += block.capacity;
        free.computeIfAbsent(block.capacity, c -> new ArrayDeque<>()).push(block.pointer);
    }

    /** Gives every cached (free) block back to the driver. */
    public synchronized void releaseCache() {
        for (Map.Entry<Long, ArrayDeque<Long>> e : free.entrySet()) {
            for (long p : e.getValue()) {
                raw.free(p);
            }
        }
        free.clear();
        cached = 0;
    }

    /** Bytes handed out and not yet closed. */
    public synchronized long inUse() {
        return inUse;
    }

    /** Bytes held in the free lists. */
    public synchronized long cached() {
        return cached;
    }

    /** The largest {@link #inUse()} seen: the figure to compare with torch's max_memory_allocated. */
    public synchronized long highWater() {
        return highWater;
    }

    public synchronized void resetHighWater() {
        highWater = inUse;
    }

    /** How many times the driver's allocator was called. */
    public synchronized long driverAllocations() {
        return driverAllocations;
    }

    @Override
    public void close() {
        releaseCache();
    }

    static String human(long bytes) {
        if (bytes >= 1L << 30) {
            return String.format("%.2f GiB", bytes / (double) (1L << 30));
        }
        if (bytes >= 1L << 20) {
            return String.format("%.1f MiB", bytes / (double) (1L << 20));
        }
        return bytes + " B";
    }
}
