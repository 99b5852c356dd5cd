package dev.moe.cli;

import com.fasterxml.jackson.databind.ObjectMapper;
import dev.moe.cli.interop.HfCheckpoint;
import dev.moe.cli.interop.HfImport;
import dev.moe.cli.interop.InteropException;
import dev.moe.compiler.CompileResult;
import dev.moe.compiler.MoeCompiler;
import dev.moe.compiler.ir.Model;
import dev.moe.compiler.ir.Param;
import dev.moe.dsl.SourceFile;
import dev.moe.dsl.diag.DiagnosticRenderer;
import dev.moe.runtime.Parameter;
import dev.moe.runtime.train.Checkpoint;
import java.io.IOException;
import java.io.PrintWriter;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardCopyOption;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.concurrent.Callable;
import picocli.CommandLine.Command;
import picocli.CommandLine.Mixin;
import picocli.CommandLine.Model.CommandSpec;
import picocli.CommandLine.Option;
import picocli.CommandLine.Parameters;
import picocli.CommandLine.Spec;

/** {@code moe import hf DIR --out DIR2}: a Hugging Face checkpoint as a recipe and a checkpoint of ours. */
@Command(
        name = "import",
        description = {"Import a Hugging Face MoE checkpoint: write a .moe recipe declaring its architecture and a checkpoint in moe's layout.",
            "Reads config.json and model.safetensors or a sharded model.safetensors.index.json; experts fused (transformers 5) or one "
                    + "tensor per expert (w1/w2/w3, gate_proj/up_proj/down_proj). Supported model types: mixtral, qwen2_moe, olmoe, qwen3_moe, deepseek_v3.",
            "Everything is checked before anything is written. OUT gets <model_type>.moe, last.safetensors (weights with the recipe, "
                    + "for `moe generate OUT`) and the tokenizer.json if there is one."},
        exitCodeListHeading = "%nExit status:%n",
        exitCodeList = {"0:imported", "1:the checkpoint is unsupported, incomplete or malformed", "2:usage error"})
final class ImportCommand implements Callable<Integer> {
    enum Format { hf }

    @Spec
    CommandSpec spec;

    @Mixin
    HelpOption help;

    @Parameters(index = "0", paramLabel = "FORMAT", description = "The source format: hf (Hugging Face transformers).")
    Format format;

    @Parameters(index = "1", paramLabel = "DIR", description = "The checkpoint directory (config.json and *.safetensors).")
    Path dir;

    @Option(names = "--out", paramLabel = "OUT", required = true, description = "Directory to write the recipe and the checkpoint to.")
    Path out;

    @Option(names = "--threads", paramLabel = "N", description = "CPU threads (default: all cores).")
    int threads = Runtime.getRuntime().availableProcessors();

    @Override
    public Integer call() throws IOException {
        PrintWriter stdout = spec.commandLine().getOut();
        PrintWriter err = spec.commandLine().getErr();
        try (HfCheckpoint ckpt = HfCheckpoint.open(dir)) {
            HfImport.Arch arch = HfImport.architecture(ckpt.config(), dir.resolve("config.json").toString());
            String fileName = arch.type().modelType() + ".moe";
            String recipe = arch.recipe(dir.toString());
            // Check every tensor against the recipe's IR before the model (and its memory) exists.
            CompileResult compiled = MoeCompiler.compile(new SourceFile(fileName, recipe));
            if (compiled.output().isEmpty() || compiled.output().get().models().isEmpty()) {
                compiled.diagnostics().forEach(d -> err.print(DiagnosticRenderer.render(d)));
                throw new InteropException(dir.resolve("config.json") + " declares a model that the checker rejects (above, in the recipe "
                        + "import would write)");
            }
            Model model = compiled.output().get().models().getFirst();
            List<HfImport.Assignment> plan = HfImport.plan(ckpt, arch.type(), model.params(), arch.latent() == null || arch.latent().interleave());
            long elements = model.params().stream().mapToLong(Param::numel).sum();
            long need = 4 * elements + 4 * ckpt.largestTensor();
            if (need > Runtime.getRuntime().maxMemory()) {
                throw new InteropException(String.format(Locale.ROOT, "%s has %,d parameters (%.1f GB in fp32), more than this JVM may use "
                        + "(%.1f GB): give it more with MOE_JAVA_OPTS=-Xmx%dg", dir, elements, need / 1e9,
                        Runtime.getRuntime().maxMemory() / 1e9, (long) Math.ceil(need * 1.25 / (1L << 30))));
            }
            Recipes.Loaded loaded = Recipes.load(new SourceFile(fileName, recipe), null, threads, err);
            HfImport.load(ckpt, plan, loaded.instance().parameters());
            if (Files.exists(out) && !Files.isDirectory(out)) {
                throw new InteropException(out + " exists and is not a directory");
            }
            Files.createDirectories(out);
            Files.writeString(out.resolve(fileName), recipe);
            Map<String, String> meta = new LinkedHashMap<>();
            meta.put("model", loaded.model().name());
            meta.put("recipe.file", fileName);
            meta.put("recipe.source", recipe);
            meta.put("hf.model_type", arch.type().modelType());
            meta.put("hf.config", new ObjectMapper().writeValueAsString(ckpt.config()));
            Checkpoint.save(out.resolve("last.safetensors"), loaded.instance().parameters(), null, meta);
            Path tokenizer = dir.resolve("tokenizer.json");
            if (Files.isRegularFile(tokenizer)) {
                Files.copy(tokenizer, out.resolve("tokenizer.json"), StandardCopyOption.REPLACE_EXISTING);
            }
            long n = loaded.instance().parameters().stream().filter(p -> !p.isBuffer()).mapToLong(Parameter::size).sum();
            stdout.printf("imported %s (%s, %d layers, %d experts, top-%d, %,d parameters) to %s and %s%n", dir, arch.type().modelType(),
                    arch.layers(), arch.experts(), arch.topK(), n, out.resolve(fileName), out.resolve("last.safetensors"));
            stdout.flush();
            return 0;
        } catch (InteropException | Recipes.UserError e) {
            err.println("moe: error: " + e.getMessage());
            err.flush();
            return 1;
        }
    }
}
