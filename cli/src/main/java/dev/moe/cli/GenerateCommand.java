package dev.moe.cli;

import dev.moe.runtime.data.BpeTokenizer;
import dev.moe.runtime.data.ByteTokenizer;
import dev.moe.runtime.train.Sampler;
import java.io.IOException;
import java.io.PrintWriter;
import java.nio.file.Path;
import java.util.concurrent.Callable;
import picocli.CommandLine.Command;
import picocli.CommandLine.Mixin;
import picocli.CommandLine.Model.CommandSpec;
import picocli.CommandLine.Option;
import picocli.CommandLine.Parameters;
import picocli.CommandLine.Spec;

/** {@code moe generate CHECKPOINT --prompt TEXT}: sample a continuation, printed as it is produced. */
@Command(
        name = "generate",
        description = {"Generate text from a trained checkpoint.", "Greedy with --temperature 0; otherwise temperature, top-k and top-p sampling, seeded."},
        exitCodeListHeading = "%nExit status:%n",
        exitCodeList = {"0:generated", "1:the checkpoint cannot be read or its recipe has errors", "2:usage error"})
final class GenerateCommand implements Callable<Integer> {
    @Spec
    CommandSpec spec;

    @Mixin
    HelpOption help;

    @Mixin
    BackendOption backendOption;

    @Parameters(paramLabel = "CHECKPOINT", description = "A .safetensors checkpoint written by `moe train` or `moe import hf` (or its directory). A tokenizer.json beside it (BPE, byte-level or SentencePiece-style) is used instead of bytes.")
    Path checkpoint;

    @Option(names = "--prompt", paramLabel = "TEXT", required = true, description = "Text to continue.")
    String prompt;

    @Option(names = "--max-tokens", paramLabel = "N", description = "Tokens to generate (default: ${DEFAULT-VALUE}).")
    int maxTokens = 64;

    @Option(names = "--temperature", paramLabel = "T", description = "Softmax temperature; 0 is greedy (default: ${DEFAULT-VALUE}).")
    double temperature = 0.8;

    @Option(names = "--top-k", paramLabel = "K", description = "Sample among the K most likely tokens; 0 = all (default: ${DEFAULT-VALUE}).")
    int topK;

    @Option(names = "--top-p", paramLabel = "P", description = "Sample among the most likely tokens whose probability sums to P (default: ${DEFAULT-VALUE}).")
    double topP = 0.95;

    @Option(names = "--seed", paramLabel = "S", description = "Sampling seed (default: ${DEFAULT-VALUE}).")
    long seed;

    @Option(names = "--threads", paramLabel = "N", description = "CPU threads (default: all cores).")
    int threads = Runtime.getRuntime().availableProcessors();

    @Override
    public Integer call() throws IOException {
        PrintWriter out = spec.commandLine().getOut();
        PrintWriter err = spec.commandLine().getErr();
        if (maxTokens < 0 || temperature < 0 || topP < 0 || topP > 1 || topK < 0) {
            err.println("moe: error: --max-tokens, --temperature and --top-k must be >= 0 and --top-p in [0, 1]");
            err.flush();
            return 2;
        }
        try {
            Recipes.Loaded loaded = Checkpoints.open(checkpoint, () -> backendOption.create(threads), err);
            Path dir = java.nio.file.Files.isDirectory(checkpoint) ? checkpoint : checkpoint.toAbsolutePath().getParent();
            Path tokenizerFile = dir.resolve("tokenizer.json");
            BpeTokenizer bpe = null;
            if (java.nio.file.Files.isRegularFile(tokenizerFile)) {
                try {
                    bpe = BpeTokenizer.load(tokenizerFile);
                } catch (IOException e) {
                    throw new Recipes.UserError(e.getMessage());
                }
                if (bpe.vocabSize() > loaded.instance().vocab()) {
                    throw new Recipes.UserError(tokenizerFile + " has " + bpe.vocabSize() + " tokens, more than the model's vocabulary ("
                            + loaded.instance().vocab() + ")");
                }
            }
            BpeTokenizer tokenizer = bpe;
            int[] tokens;
            try {
                if (tokenizer != null && tokenizer.postProcessorProblem().isPresent()) {
                    err.println("moe: note: " + tokenizerFile + ": " + tokenizer.postProcessorProblem().get() + "; the prompt gets no special tokens");
                }
                // as transformers' tokenizer(prompt): the post-processor's special tokens too (Llama's BOS)
                tokens = tokenizer != null ? tokenizer.encode(prompt, tokenizer.postProcessorProblem().isEmpty())
                        : ByteTokenizer.INSTANCE.encode(prompt);
            } catch (IllegalArgumentException e) { // a character the tokenizer cannot represent
                throw new Recipes.UserError(tokenizerFile + ": the prompt cannot be tokenized: " + e.getMessage());
            }
            for (int t : tokens) {
                if (t >= loaded.instance().vocab()) {
                    throw new Recipes.UserError("the prompt has token " + t + ", outside the model's vocabulary (" + loaded.instance().vocab() + ")"
                            + (tokenizer == null ? "; without a tokenizer.json beside the checkpoint, each UTF-8 byte is a token" : ""));
                }
            }
            if (tokens.length == 0) {
                err.println("moe: error: the prompt is empty");
                err.flush();
                return 2;
            }
            out.print(prompt);
            out.flush();
            java.io.ByteArrayOutputStream pending = new java.io.ByteArrayOutputStream();
            Sampler.generate(loaded.instance(), tokens, new Sampler.Options(maxTokens, temperature, topK, topP, seed), t -> {
                if (tokenizer != null) {
                    pending.writeBytes(tokenizer.bytes(t));
                } else {
                    pending.write(t);
                }
                String text = new String(pending.toByteArray(), java.nio.charset.StandardCharsets.UTF_8);
                if (!text.endsWith("\uFFFD")) { // wait for the rest of a multi-byte character
                    out.print(text);
                    out.flush();
                    pending.reset();
                }
            });
            out.print(new String(pending.toByteArray(), java.nio.charset.StandardCharsets.UTF_8));
            out.println();
            out.flush();
            return 0;
        } catch (Recipes.UserError e) {
            err.println("moe: error: " + e.getMessage());
            err.flush();
            return 1;
        }
    }
}
