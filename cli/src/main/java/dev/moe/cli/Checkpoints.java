package dev.moe.cli;

import dev.moe.dsl.SourceFile;
import dev.moe.runtime.train.Checkpoint;
import java.io.IOException;
import java.io.PrintWriter;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Map;

/** Opens a checkpoint with the model it was trained from (the recipe travels in its metadata). */
final class Checkpoints {
    private Checkpoints() {}

    static Recipes.Loaded open(Path checkpoint, int threads, PrintWriter err) throws Recipes.UserError, IOException {
        return open(checkpoint, Recipes.BackendFactory.cpu(threads), err);
    }

    static Recipes.Loaded open(Path checkpoint, Recipes.BackendFactory backend, PrintWriter err) throws Recipes.UserError, IOException {
        if (Files.isDirectory(checkpoint)) {
            checkpoint = checkpoint.resolve("last.safetensors");
        }
        if (!Files.isRegularFile(checkpoint)) {
            throw new Recipes.UserError("no checkpoint at " + checkpoint);
        }
        Map<String, String> meta;
        try {
            meta = Checkpoint.metadata(checkpoint);
        } catch (IOException e) {
            throw new Recipes.UserError(e.getMessage());
        }
        String source = meta.get("recipe.source");
        String name = meta.getOrDefault("recipe.file", checkpoint.toString());
        if (source == null) {
            throw new Recipes.UserError(checkpoint + " carries no recipe in its metadata");
        }
        // the weights need the models only: a placement file the recipe named at training time need not be there any more
        Recipes.Loaded loaded = Recipes.loadForWeights(new SourceFile(name, source), meta.get("model"), backend, err);
        try {
            Checkpoint.load(checkpoint, loaded.instance().parameters(), null);
            // the step the weights were trained to: annealed router temperatures depend on it
            loaded.instance().setStep(Long.parseLong(meta.getOrDefault("step", "0")));
        } catch (NumberFormatException e) {
            throw new Recipes.UserError(checkpoint + " has a malformed step in its metadata: " + meta.get("step"));
        } catch (IOException e) {
            throw new Recipes.UserError(e.getMessage());
        }
        return loaded;
    }
}
