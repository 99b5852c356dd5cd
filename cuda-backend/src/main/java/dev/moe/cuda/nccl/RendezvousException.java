package dev.moe.cuda.nccl;

/** A rank that could not join the world: bad settings, an unreachable or silent peer, a mismatch. */
public final class RendezvousException extends RuntimeException {
    public RendezvousException(String message) {
        super(message);
    }

    public RendezvousException(String message, Throwable cause) {
        super(message, cause);
    }
}
