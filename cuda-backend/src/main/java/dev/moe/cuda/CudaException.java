package dev.moe.cuda;

/** A failed CUDA, NVRTC or cuBLASLt call, or a missing library; the message names the function and the error. */
public final class CudaException extends RuntimeException {
    public CudaException(String message) {
        super(message);
    }

    public CudaException(String message, Throwable cause) {
        super(message, cause);
    }
}
