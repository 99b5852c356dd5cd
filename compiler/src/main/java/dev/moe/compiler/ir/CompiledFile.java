package dev.moe.compiler.ir;

import java.util.List;

/** Everything a checked file declares: its models and its training recipes. */
public record CompiledFile(String file, List<Model> models, List<Training> trainings) {
    public CompiledFile {
        models = List.copyOf(models);
        trainings = List.copyOf(trainings);
    }
}
