package dev.moe.cli;

import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.SerializationFeature;
import com.fasterxml.jackson.databind.node.ObjectNode;
import dev.moe.cli.interop.HfExport;
import dev.moe.cli.interop.HfType;
import dev.moe.cli.interop.InteropException;
import dev.moe.runtime.io.SafeTensors;
import dev.moe.runtime.io.Tensor;
import dev.moe.runtime.train.Checkpoint;
import java.io.IOException;
import java.io.PrintWriter;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardCopyOption;
import java.util.List;
import java.util.Map;
import java.util.concurrent.Callable;
import picocli.CommandLine.Command;
import picocli.CommandLine.Mixin;
import picocli.CommandLine.Model.CommandSpec;
import picocli.CommandLine.Option;
import picocli.CommandLine.Parameters;
import picocli.CommandLine.Spec;

/** {@code moe export hf CHECKPOINT --out DIR}: a checkpoint of ours as a Hugging Face model directory. */
@Command(
        name = "export",
        description = {"Export a checkpoint as a Hugging Face model directory (config.json and model.safetensors, fp32, one tensor per "
                + "expert as save_pretrained writes it) that from_pretrained loads.",
            "The model type is the one it was imported from, or --type. The model must be one the type can hold: export imports the "
                    + "config it writes again and refuses when that does not give back the same model."},
        exitCodeListHeading = "%nExit status:%n",
        exitCodeList = {"0:exported", "1:the checkpoint cannot be read or the model has no Hugging Face counterpart", "2:usage error"})
final class ExportCommand implements Callable<Integer> {
    @Spec
    CommandSpec spec;

    @Mixin
    HelpOption help;

    @Parameters(index = "0", paramLabel = "FORMAT", description = "The target format: hf (Hugging Face transformers).")
    ImportCommand.Format format;

    @Parameters(index = "1", paramLabel = "CHECKPOINT", description = "A checkpoint written by `moe train` or `moe import` (or its directory).")
    Path checkpoint;

    @Option(names = "--out", paramLabel = "DIR", required = true, description = "Directory to write config.json and model.safetensors to.")
    Path out;

    @Option(names = "--type", paramLabel = "TYPE", description = "The model_type to write (mixtral, qwen2_moe, olmoe, qwen3_moe, deepseek_v3); "
            + "default: the one the checkpoint was imported from.")
    String type;

    @Option(names = "--threads", paramLabel = "N", description = "CPU threads (default: all cores).")
    int threads = Runtime.getRuntime().availableProcessors();

    @Override
    public Integer call() throws IOException {
        PrintWriter stdout = spec.commandLine().getOut();
        PrintWriter err = spec.commandLine().getErr();
        try {
            Recipes.Loaded loaded = Checkpoints.open(checkpoint, threads, err);
            Path file = Files.isDirectory(checkpoint) ? checkpoint.resolve("last.safetensors") : checkpoint;
            Map<String, String> meta = Checkpoint.metadata(file);
            String typeName = type != null ? type : meta.get("hf.model_type");
            if (typeName == null) {
                throw new InteropException(file + " was not imported from Hugging Face: choose the model type with --type ("
                        + HfType.supportedList() + ")");
            }
            HfType t = HfType.forModelType(typeName);
            ObjectMapper json = new ObjectMapper().enable(SerializationFeature.INDENT_OUTPUT);
            ObjectNode base = null;
            if (meta.containsKey("hf.config") && typeName.equals(meta.get("hf.model_type"))) {
                base = (ObjectNode) json.readTree(meta.get("hf.config"));
            }
            ObjectNode config = HfExport.config(loaded.model(), t, base);
            List<Tensor> tensors = HfExport.tensors(t, loaded.instance().parameters(), HfType.Layout.SAVED);
            Files.createDirectories(out);
            Files.writeString(out.resolve("config.json"), json.writeValueAsString(config) + "\n");
            SafeTensors.write(out.resolve("model.safetensors"), tensors, Map.of("format", "pt"));
            Path tokenizer = file.toAbsolutePath().getParent().resolve("tokenizer.json");
            if (Files.isRegularFile(tokenizer)) {
                Files.copy(tokenizer, out.resolve("tokenizer.json"), StandardCopyOption.REPLACE_EXISTING);
            }
            stdout.printf("exported %s as %s (%d tensors) to %s%n", file, t.modelType(), tensors.size(), out);
            stdout.flush();
            return 0;
        } catch (InteropException | Recipes.UserError e) {
            err.println("moe: error: " + e.getMessage());
            err.flush();
            return 1;
        }
    }
}
