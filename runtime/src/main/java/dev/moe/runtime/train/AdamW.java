package dev.moe.runtime.train;

import dev.moe.runtime.Parameter;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/**
 * AdamW (Loshchilov and Hutter) with decoupled weight decay, applied to matrices only (norm weights,
 * biases and vectors are not decayed, as in GPT-2 and most MoE recipes). Moments are kept only for
 * trainable parameters: frozen ones cost no optimiser memory.
 */
public final class AdamW {
    private final double beta1;
    private final double beta2;
    private final double eps;
    private final double weightDecay;
    private final Map<String, float[]> m = new LinkedHashMap<>();
    private final Map<String, float[]> v = new LinkedHashMap<>();
    private long step;

    public AdamW(List<Parameter> parameters, double beta1, double beta2, double eps, double weightDecay) {
        this.beta1 = beta1;
        this.beta2 = beta2;
        this.eps = eps;
        this.weightDecay = weightDecay;
        for (Parameter p : parameters) {
            if (p.trainable()) {
                m.put(p.name(), new float[p.size()]);
                v.put(p.name(), new float[p.size()]);
            }
        }
    }

    /** One update of every trainable parameter from its gradient, at learning rate {@code lr}. */
    public void step(List<Parameter> parameters, double lr) {
        step++;
        double c1 = 1 - Math.pow(beta1, step);
        double c2 = 1 - Math.pow(beta2, step);
        for (Parameter p : parameters) {
            if (!p.trainable()) {
                continue;
            }
            float[] mp = m.get(p.name());
            float[] vp = v.get(p.name());
            float[] w = p.value();
            float[] g = p.grad();
            int o = p.offset();
            boolean decay = p.shape().length >= 2 && weightDecay > 0;
            for (int i = 0; i < p.size(); i++) {
                float gi = g[o + i];
                mp[i] = (float) (beta1 * mp[i] + (1 - beta1) * gi);
                vp[i] = (float) (beta2 * vp[i] + (1 - beta2) * gi * gi);
                double update = (mp[i] / c1) / (Math.sqrt(vp[i] / c2) + eps);
                double wi = w[o + i];
                if (decay) {
                    wi -= lr * weightDecay * wi;
                }
                w[o + i] = (float) (wi - lr * update);
            }
        }
    }

    public long steps() {
        return step;
    }

    /**
     * Counts one step taken elsewhere (a device-resident model's AdamW on the GPU, with this
     * object's settings and moments) and returns its number, counting from 1.
     */
    public long advance() {
        return ++step;
    }

    public double beta1() {
        return beta1;
    }

    public double beta2() {
        return beta2;
    }

    public double eps() {
        return eps;
    }

    public double weightDecay() {
        return weightDecay;
    }

    public Map<String, float[]> firstMoments() {
        return m;
    }

    public Map<String, float[]> secondMoments() {
        return v;
    }

    /** Restores state saved from {@link #firstMoments()}, {@link #secondMoments()} and {@link #steps()}. */
    public void restore(long steps, Map<String, float[]> first, Map<String, float[]> second) {
        for (String name : m.keySet()) {
            float[] a = first.get(name);
            float[] b = second.get(name);
            if (a == null || b == null || a.length != m.get(name).length || b.length != v.get(name).length) {
                throw new IllegalArgumentException("checkpoint has no optimiser state for `" + name + "` of the right size");
            }
            System.arraycopy(a, 0, m.get(name), 0, a.length);
            System.arraycopy(b, 0, v.get(name), 0, b.length);
        }
        this.step = steps;
    }
}
