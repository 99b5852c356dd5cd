package dev.moe.cli;

import dev.moe.cli.interop.InteropException;
import dev.moe.cli.interop.Probe;
import dev.moe.dsl.SourceFile;
import dev.moe.dsl.diag.DiagnosticRenderer;
import dev.moe.runtime.Parameter;
import dev.moe.runtime.TrainableModel;
import dev.moe.runtime.io.SafeTensors;
import dev.moe.runtime.io.Tensor;
import dev.moe.runtime.train.Checkpoint;
import java.io.IOException;
import java.io.PrintWriter;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.concurrent.Callable;
import picocli.CommandLine.Command;
import picocli.CommandLine.Mixin;
import picocli.CommandLine.Model.CommandSpec;
import picocli.CommandLine.Option;
import picocli.CommandLine.Parameters;
import picocli.CommandLine.Spec;

/** {@code moe logits} and {@code moe grads}: a model's numbers on given tokens, to compare with another implementation. */
final class ProbeCommands {
    private ProbeCommands() {}

    /** Options both commands share, and loading the model with its weights. */
    abstract static class Base implements Callable<Integer> {
        @Spec
        CommandSpec spec;

        @Mixin
        HelpOption help;

        @Parameters(paramLabel = "RECIPE", description = "The .moe file declaring the model.")
        Path recipe;

        @Option(names = "--weights", paramLabel = "W", required = true, description = "A checkpoint with the model's weights (.safetensors, our names).")
        Path weights;

        @Option(names = "--tokens", paramLabel = "IDS", required = true,
                description = "Token ids, space-separated; several sequences of one length separated by `;`.")
        String tokens;

        @Option(names = "--out", paramLabel = "FILE", required = true, description = "The .safetensors file to write.")
        Path out;

        @Option(names = "--model", paramLabel = "NAME", description = "Which model, when the file declares several.")
        String model;

        @Option(names = "--threads", paramLabel = "N", description = "CPU threads (default: all cores).")
        int threads = Runtime.getRuntime().availableProcessors();

        abstract List<Tensor> compute(TrainableModel m, int[][] ids, PrintWriter stdout) throws InteropException;

        @Override
        public Integer call() throws IOException {
            PrintWriter stdout = spec.commandLine().getOut();
            PrintWriter err = spec.commandLine().getErr();
            SourceFile source = switch (SourceFile.read(recipe)) {
                case SourceFile.ReadResult.Failed f -> {
                    err.print(DiagnosticRenderer.render(f.diagnostic()));
                    err.flush();
                    yield null;
                }
                case SourceFile.ReadResult.Ok ok -> ok.source();
            };
            if (source == null) {
                return 1;
            }
            try {
                int[][] ids = Probe.parseTokens(tokens);
                Recipes.Loaded loaded = Recipes.load(source, model, threads, err);
                Path w = Files.isDirectory(weights) ? weights.resolve("last.safetensors") : weights;
                if (!Files.isRegularFile(w)) {
                    throw new InteropException("no checkpoint at " + w);
                }
                Checkpoint.load(w, loaded.instance().parameters(), null);
                List<Tensor> tensors = compute(loaded.instance(), ids, stdout);
                Path parent = out.toAbsolutePath().getParent();
                Files.createDirectories(parent);
                SafeTensors.write(out, tensors, Map.of("recipe.file", recipe.toString(), "tokens", tokens));
                stdout.printf("wrote %d tensor(s) to %s%n", tensors.size(), out);
                stdout.flush();
                return 0;
            } catch (InteropException | Recipes.UserError | IllegalArgumentException e) {
                err.println("moe: error: " + e.getMessage());
                err.flush();
                return 1;
            } catch (IOException e) {
                err.println("moe: error: " + e.getMessage());
                err.flush();
                return 1;
            }
        }
    }

    @Command(
            name = "logits",
            description = {"Write a model's fp32 logits on given tokens, [sequences, tokens, vocab], as `logits` in a safetensors file.",
                "Evaluation mode (no router noise); for comparing with another implementation, e.g. transformers after `moe import hf`. "
                        + "It runs one forward pass per position (the models return the last position's logits): meant for short token lists."},
            exitCodeListHeading = "%nExit status:%n",
            exitCodeList = {"0:written", "1:the recipe, the weights or the tokens are bad", "2:usage error"})
    static final class Logits extends Base {
        @Override
        List<Tensor> compute(TrainableModel m, int[][] ids, PrintWriter stdout) throws InteropException {
            float[] logits = Probe.logits(m, ids);
            return List.of(Tensor.f32("logits", new long[] {ids.length, ids[0].length, m.vocab()}, logits));
        }
    }

    @Command(
            name = "grads",
            description = {"Write the loss and every parameter's gradient on given tokens to a safetensors file: `loss`, `cross_entropy` and "
                    + "`grad.NAME` under the checkpoint's names.",
                "The loss is the mean next-token cross-entropy (the last token of each sequence is only a target), plus the recipe's "
                        + "balancing losses, in training mode."},
            exitCodeListHeading = "%nExit status:%n",
            exitCodeList = {"0:written", "1:the recipe, the weights or the tokens are bad", "2:usage error"})
    static final class Grads extends Base {
        @Override
        List<Tensor> compute(TrainableModel m, int[][] ids, PrintWriter stdout) throws InteropException {
            Probe.Loss loss = Probe.gradients(m, ids);
            List<Tensor> out = new ArrayList<>();
            out.add(Tensor.f32("loss", new long[0], new float[] {(float) loss.total()}));
            out.add(Tensor.f32("cross_entropy", new long[0], new float[] {(float) loss.crossEntropy()}));
            for (Parameter p : Probe.gradientsAsParameters(m.parameters())) {
                long[] shape = new long[p.shape().length];
                for (int i = 0; i < shape.length; i++) {
                    shape[i] = p.shape()[i];
                }
                out.add(Tensor.f32("grad." + p.name(), shape, p.values()));
            }
            stdout.printf("loss %.6f (cross-entropy %.6f)%n", loss.total(), loss.crossEntropy());
            return out;
        }
    }
}
