package dev.moe.runtime.train;

/**
 * Learning rate per step: linear warmup from 0 over {@code warmup} steps, then constant, cosine or
 * linear decay to {@code minLr} at the last step.
 */
public record Schedule(String kind, double lr, long warmup, double minLr, long total) {
    public double at(long step) {
        if (warmup > 0 && step < warmup) {
            return lr * (step + 1) / warmup;
        }
        long span = Math.max(1, total - warmup);
        double t = Math.min(1.0, (double) (step - warmup) / span);
        return switch (kind) {
            case "cosine" -> minLr + (lr - minLr) * 0.5 * (1 + Math.cos(Math.PI * t));
            case "linear" -> lr + (minLr - lr) * t;
            default -> lr;
        };
    }
}
