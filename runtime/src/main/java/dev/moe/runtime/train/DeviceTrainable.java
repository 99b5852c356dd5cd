package dev.moe.runtime.train;

import dev.moe.runtime.Parameter;
import java.util.List;

/**
 * A model whose weights, gradients and optimiser state live on an accelerator. The {@link Trainer}
 * then leaves gradients there and asks the model to clip and step; the host parameters are brought
 * up to date only when a checkpoint is written ({@link #pullToHost}).
 */
public interface DeviceTrainable {
    /**
     * From now on (true) backward leaves the gradients on the device instead of copying them into
     * the host parameters' gradient arrays.
     */
    void gradientsStayOnDevice(boolean stay);

    /**
     * Clips the trainable parameters' gradients to a global L2 norm of at most {@code maxNorm}
     * (0: no clipping) and applies one AdamW step of {@code adam} (its settings, step count and
     * moments) at learning rate {@code lr}, as {@link Trainer} and {@link AdamW#step} do on the host.
     * Returns the norm before clipping.
     */
    double clipAndStep(AdamW adam, List<Parameter> parameters, double lr, double maxNorm);

    /**
     * Sums the gradients over the ranks of a data-parallel {@code world} where they are, on the device
     * (with {@link Collective#allReduceDeviceFloats}); a world of one leaves them as they are.
     */
    void allReduceGradients(Collective world);

    /**
     * Asks the next backward pass (the step's last micro-batch's) to start summing each layer's gradients over {@code world}
     * as soon as that layer's backward has finished, overlapping the transfers with the rest of the backward;
     * {@link #allReduceGradients} then sums what remains and waits. Models that cannot leave it to {@link #allReduceGradients}.
     */
    default void overlapGradientSum(Collective world) {}

    /**
     * Copies the device's weights into the host parameters and, when {@code adam} is the optimiser
     * that has been stepping on the device, its moments into {@code adam}.
     */
    void pullToHost(AdamW adam);

    /**
     * Whether {@link #pullToHost} is a collective that every rank must call (an expert-parallel model whose ranks each hold some
     * experts only: the others are gathered to rank 0).
     */
    default boolean collectivePull() {
        return false;
    }
}
