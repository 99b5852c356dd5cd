package dev.moe.runtime.train;

import dev.moe.runtime.Init;
import dev.moe.runtime.TrainableModel;
import java.util.Arrays;

/**
 * Text generation: greedy ({@code temperature 0}), temperature, top-k and top-p sampling, seeded.
 * Each new token reruns the model on the last {@code context} tokens (no key/value cache yet).
 */
public final class Sampler {
    public record Options(int maxTokens, double temperature, int topK, double topP, long seed) {}

    private Sampler() {}

    public interface TokenSink {
        void accept(int token);
    }

    public static int[] generate(TrainableModel model, int[] prompt, Options o, TokenSink sink) {
        int[] tokens = Arrays.copyOf(prompt, prompt.length + o.maxTokens());
        int n = prompt.length;
        Init.SplitMix rng = new Init.SplitMix(o.seed());
        for (int i = 0; i < o.maxTokens(); i++) {
            int start = Math.max(0, n - model.context());
            int[] window = Arrays.copyOfRange(tokens, start, n);
            float[] logits = model.lastLogits(window, 1, window.length);
            int next = pick(logits, o, rng);
            tokens[n++] = next;
            sink.accept(next);
        }
        return Arrays.copyOf(tokens, n);
    }

    static int pick(float[] logits, Options o, Init.SplitMix rng) {
        int v = logits.length;
        if (o.temperature() <= 0) {
            int best = 0;
            for (int i = 1; i < v; i++) {
                if (logits[i] > logits[best]) {
                    best = i;
                }
            }
            return best;
        }
        Integer[] order = new Integer[v];
        for (int i = 0; i < v; i++) {
            order[i] = i;
        }
        Arrays.sort(order, (a, b) -> Float.compare(logits[b], logits[a]) != 0 ? Float.compare(logits[b], logits[a]) : Integer.compare(a, b));
        int keep = o.topK() > 0 ? Math.min(o.topK(), v) : v;
        double max = logits[order[0]];
        double[] p = new double[keep];
        double sum = 0;
        for (int i = 0; i < keep; i++) {
            p[i] = Math.exp((logits[order[i]] - max) / o.temperature());
            sum += p[i];
        }
        if (o.topP() > 0 && o.topP() < 1) {
            double mass = 0;
            int cut = keep;
            for (int i = 0; i < keep; i++) {
                mass += p[i] / sum;
                if (mass >= o.topP()) {
                    cut = i + 1;
                    break;
                }
            }
            keep = cut;
            sum = 0;
            for (int i = 0; i < keep; i++) {
                sum += p[i];
            }
        }
        double r = rng.nextDouble() * sum;
        for (int i = 0; i < keep; i++) {
            r -= p[i];
            if (r <= 0) {
                return order[i];
            }
        }
        return order[keep - 1];
    }
}
