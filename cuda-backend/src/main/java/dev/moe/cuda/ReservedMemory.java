package dev.moe.cuda;

import java.util.ArrayList;
import java.util.List;

/**
 * A fixed range of device addresses whose pages may be backed by memory or left unbacked (the driver's virtual memory
 * management: cuMemAddressReserve, cuMemCreate, cuMemMap). Pointers into the range stay valid when {@link #backOnly} drops the
 * pages of some parts: a device-resident model's arena keeps every parameter's address while an expert-parallel rank gives back
 * the memory of the experts other ranks hold. Touching an unbacked page is an illegal address, so callers only use what they
 * asked to keep.
 */
public final class ReservedMemory implements AutoCloseable {
    private final Driver driver;
    private final int device;
    /** The mapping unit (2 MiB on current GPUs). */
    public final long granularity;
    /** First address, and the bytes reserved (whole pages). */
    public final long pointer;
    public final long bytes;
    /** The backed page runs {start, end} (byte offsets) and the physical allocation behind each. */
    private final List<long[]> mapped = new ArrayList<>();
    private final List<Long> handles = new ArrayList<>();
    private boolean closed;

    /** Reserves {@code bytes} (rounded up to whole pages) on {@code ctx}'s device, every page backed. */
    public ReservedMemory(CudaContext ctx, long bytes) {
        this.driver = ctx.driver;
        this.device = ctx.device;
        this.granularity = driver.allocationGranularity(device);
        this.bytes = Math.max(granularity, (bytes + granularity - 1) / granularity * granularity);
        this.pointer = driver.reserveAddresses(this.bytes, granularity);
        try {
            mapRun(0, this.bytes);
        } catch (RuntimeException e) {
            driver.freeAddresses(pointer, this.bytes);
            throw e;
        }
    }

    /** Whether {@code ctx}'s device can back reserved addresses page by page. */
    public static boolean supported(CudaContext ctx) {
        return ctx.driver.virtualMemorySupported(ctx.device);
    }

    /**
     * Backs exactly the pages that hold some byte of {@code keep} (byte ranges {start, end} within the reservation); every other
     * page is given back. What the kept pages held is lost: the caller fills them again.
     */
    public void backOnly(List<long[]> keep) {
        unmapAll();
        for (long[] run : pages(keep, granularity, bytes)) {
            mapRun(run[0], run[1]);
        }
    }

    /** Bytes backed by memory now. */
    public long backedBytes() {
        long sum = 0;
        for (long[] r : mapped) {
            sum += r[1] - r[0];
        }
        return sum;
    }

    private void mapRun(long start, long end) {
        long handle = driver.tryCreatePhysical(device, end - start);
        if (handle == -1) {
            long[] info = driver.memoryInfo();
            throw new CudaException(String.format(java.util.Locale.ROOT, "out of device memory backing %.1f MiB of a reserved range (%.1f MiB free of %.1f MiB)",
                    (end - start) / 1048576.0, info[0] / 1048576.0, info[1] / 1048576.0));
        }
        try {
            driver.map(pointer + start, end - start, handle, device);
        } catch (RuntimeException e) {
            driver.releasePhysical(handle);
            throw e;
        }
        mapped.add(new long[] {start, end});
        handles.add(handle);
    }

    private void unmapAll() {
        for (int i = 0; i < mapped.size(); i++) {
            long[] r = mapped.get(i);
            driver.unmap(pointer + r[0], r[1] - r[0]);
            driver.releasePhysical(handles.get(i));
        }
        mapped.clear();
        handles.clear();
    }

    /**
     * The page runs that cover {@code ranges} (byte ranges {start, end}, in any order, empty ones ignored) in a reservation of
     * {@code bytes}: each range widened to whole pages of {@code granularity}, overlapping and touching runs merged, in order.
     */
    public static List<long[]> pages(List<long[]> ranges, long granularity, long bytes) {
        List<long[]> widened = new ArrayList<>();
        for (long[] r : ranges) {
            if (r[1] <= r[0]) {
                continue;
            }
            if (r[0] < 0 || r[1] > bytes) {
                throw new IllegalArgumentException("range [" + r[0] + ", " + r[1] + ") outside a reservation of " + bytes + " bytes");
            }
            widened.add(new long[] {r[0] / granularity * granularity, Math.min(bytes, (r[1] + granularity - 1) / granularity * granularity)});
        }
        return Runs.union(widened);
    }

    @Override
    public void close() {
        if (!closed) {
            closed = true;
            unmapAll();
            driver.freeAddresses(pointer, bytes);
        }
    }
}
