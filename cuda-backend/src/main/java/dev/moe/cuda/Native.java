package dev.moe.cuda;

import java.lang.foreign.FunctionDescriptor;
import java.lang.foreign.Linker;
import java.lang.foreign.MemoryLayout;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.SymbolLookup;
import java.lang.foreign.ValueLayout;
import java.lang.invoke.MethodHandle;

/** The one linker and the layouts every binding uses. */
final class Native {
    static final Linker LINKER = Linker.nativeLinker();
    static final ValueLayout.OfInt INT = ValueLayout.JAVA_INT;
    static final ValueLayout.OfLong LONG = ValueLayout.JAVA_LONG;
    static final ValueLayout.OfFloat FLOAT = ValueLayout.JAVA_FLOAT;
    static final MemoryLayout PTR = ValueLayout.ADDRESS;
    /** size_t on the 64-bit platforms CUDA supports. */
    static final ValueLayout.OfLong SIZE_T = ValueLayout.JAVA_LONG;

    private Native() {}

    /** A downcall handle for {@code name}, or a clear error naming the library that lacks it. */
    static MethodHandle function(SymbolLookup lib, String library, String name, FunctionDescriptor descriptor) {
        MemorySegment symbol = lib.find(name)
                .orElseThrow(() -> new CudaException(library + " has no function " + name + " (is the library too old?)"));
        return LINKER.downcallHandle(symbol, descriptor);
    }

    /** Calls a handle whose C function returns an int status. */
    static int call(MethodHandle handle, Object... args) {
        try {
            return (int) handle.invokeWithArguments(args);
        } catch (RuntimeException | Error e) {
            throw e;
        } catch (Throwable t) {
            throw new CudaException("native call failed: " + t, t);
        }
    }

    /** Reads a NUL-terminated C string (an empty string for NULL). */
    static String cString(MemorySegment address) {
        if (address.equals(MemorySegment.NULL)) {
            return "";
        }
        return address.reinterpret(4096).getString(0);
    }
}
