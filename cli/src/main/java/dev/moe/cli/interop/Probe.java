package dev.moe.cli.interop;

import dev.moe.runtime.Parameter;
import dev.moe.runtime.TrainableModel;
import java.util.ArrayList;
import java.util.List;

/** Logits and gradients of a model on given tokens, for comparison with another implementation. */
public final class Probe {
    private Probe() {}

    /** Token ids: sequences separated by {@code ;} or new lines, ids by spaces or commas; all of one length. */
    public static int[][] parseTokens(String text) throws InteropException {
        List<int[]> seqs = new ArrayList<>();
        for (String seq : text.split("[;\n]")) {
            if (seq.isBlank()) {
                continue;
            }
            String[] parts = seq.trim().split("[\\s,]+");
            int[] ids = new int[parts.length];
            for (int i = 0; i < parts.length; i++) {
                try {
                    ids[i] = Integer.parseInt(parts[i]);
                } catch (NumberFormatException e) {
                    throw new InteropException("--tokens: `" + parts[i] + "` is not a token id");
                }
                if (ids[i] < 0) {
                    throw new InteropException("--tokens: negative token id " + ids[i]);
                }
            }
            if (!seqs.isEmpty() && ids.length != seqs.getFirst().length) {
                throw new InteropException("--tokens: the sequences differ in length (" + seqs.getFirst().length + " and " + ids.length + ")");
            }
            seqs.add(ids);
        }
        if (seqs.isEmpty()) {
            throw new InteropException("--tokens: no token ids");
        }
        return seqs.toArray(int[][]::new);
    }

    private static void check(TrainableModel model, int[][] tokens, int minLength) throws InteropException {
        int seq = tokens[0].length;
        if (seq < minLength || seq > model.context() + minLength - 1) {
            throw new InteropException("--tokens: " + seq + " tokens per sequence; the model takes " + minLength + " to "
                    + (model.context() + minLength - 1) + " here");
        }
        for (int[] s : tokens) {
            for (int t : s) {
                if (t >= model.vocab()) {
                    throw new InteropException("--tokens: id " + t + " is outside the vocabulary (" + model.vocab() + ")");
                }
            }
        }
    }

    /**
     * Logits at every position, [batch, seq, vocab], in evaluation mode. The model API gives the last
     * position's logits; causal attention makes position p's logits those of the prefix of p + 1 tokens.
     */
    public static float[] logits(TrainableModel model, int[][] tokens) throws InteropException {
        check(model, tokens, 1);
        int batch = tokens.length;
        int seq = tokens[0].length;
        int vocab = model.vocab();
        float[] out = new float[batch * seq * vocab];
        for (int p = 1; p <= seq; p++) {
            int[] inputs = new int[batch * p];
            for (int b = 0; b < batch; b++) {
                System.arraycopy(tokens[b], 0, inputs, b * p, p);
            }
            float[] last = model.lastLogits(inputs, batch, p);
            for (int b = 0; b < batch; b++) {
                System.arraycopy(last, b * vocab, out, (b * seq + p - 1) * vocab, vocab);
            }
        }
        return out;
    }

    /** The loss of one forward and backward, and the language-modelling part of it. */
    public record Loss(double total, double crossEntropy) {}

    /**
     * Mean next-token cross-entropy (each position predicts the next token; the last has no target,
     * as transformers' causal-LM loss with labels = input ids), plus the recipe's balancing losses, in
     * training mode; every parameter's gradient is left in {@link Parameter#grad()}.
     */
    public static Loss gradients(TrainableModel model, int[][] tokens) throws InteropException {
        check(model, tokens, 2);
        int batch = tokens.length;
        int seq = tokens[0].length - 1;
        int[] inputs = new int[batch * seq];
        int[] targets = new int[batch * seq];
        for (int b = 0; b < batch; b++) {
            System.arraycopy(tokens[b], 0, inputs, b * seq, seq);
            System.arraycopy(tokens[b], 1, targets, b * seq, seq);
        }
        for (Parameter p : model.parameters()) {
            p.zeroGrad();
        }
        model.setTraining(true);
        model.beginStep();
        double loss = model.forward(inputs, targets, batch, seq);
        model.backward(1f);
        return new Loss(loss, model.lastCrossEntropy());
    }

    /** Each parameter's gradient as a parameter (same name and shape) whose values are the gradient. */
    public static List<Parameter> gradientsAsParameters(List<Parameter> params) {
        List<Parameter> out = new ArrayList<>();
        for (Parameter p : params) {
            if (!p.isBuffer()) {
                out.add(new Parameter(p.name(), p.shape(), p.grad(), null, p.offset(), p.size(), false));
            }
        }
        return out;
    }
}
