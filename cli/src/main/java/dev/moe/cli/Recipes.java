package dev.moe.cli;

import com.palantir.javapoet.JavaFile;
import dev.moe.codegen.InMemoryCompiler;
import dev.moe.codegen.JavaGenerator;
import dev.moe.codegen.UnsupportedFeatureException;
import dev.moe.compiler.CompileResult;
import dev.moe.compiler.MoeCompiler;
import dev.moe.compiler.ir.CompiledFile;
import dev.moe.compiler.ir.Model;
import dev.moe.compiler.ir.Training;
import dev.moe.cuda.CudaBackend;
import dev.moe.cuda.CudaContext;
import dev.moe.cuda.codegen.CudaModelGenerator;
import dev.moe.dsl.SourceFile;
import dev.moe.dsl.diag.DiagnosticRenderer;
import dev.moe.runtime.Backend;
import dev.moe.runtime.TrainableModel;
import dev.moe.runtime.cpu.CpuBackend;
import java.io.PrintWriter;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.Optional;

/** From a recipe to a running model: check, generate, compile in memory, instantiate. */
final class Recipes {
    private Recipes() {}

    /** A mistake the user can fix (bad file, unknown model, unsupported feature): exit 1, no stack trace. */
    static final class UserError extends Exception {
        UserError(String message) {
            super(message);
        }
    }

    record Loaded(Model model, Optional<Training> training, TrainableModel instance) {}

    /** Opens the backend a model runs on (the CPU, or a GPU that may be missing). */
    @FunctionalInterface
    interface BackendFactory {
        Backend create() throws UserError;

        static BackendFactory cpu(int threads) {
            return () -> new CpuBackend(threads, CpuBackend.VECTOR_API);
        }
    }

    static Loaded load(SourceFile source, String modelName, int threads, PrintWriter err) throws UserError {
        return load(source, modelName, BackendFactory.cpu(threads), err);
    }

    static Loaded load(SourceFile source, String modelName, BackendFactory backend, PrintWriter err) throws UserError {
        return select(compile(source, err), source, modelName, backend);
    }

    /** Checks the file, printing its diagnostics; its checked models and train blocks, or an error. */
    static CompiledFile compile(SourceFile source, PrintWriter err) throws UserError {
        return printed(MoeCompiler.compile(source), source, err);
    }

    /** A checkpoint's recipe for its weights ({@link MoeCompiler#compileForWeights}: placements not read), the model named or the only one. */
    static Loaded loadForWeights(SourceFile source, String modelName, BackendFactory backend, PrintWriter err) throws UserError {
        return select(printed(MoeCompiler.compileForWeights(source), source, err), source, modelName, backend);
    }

    private static CompiledFile printed(CompileResult result, SourceFile source, PrintWriter err) throws UserError {
        result.diagnostics().forEach(d -> err.print(DiagnosticRenderer.render(d)));
        err.flush();
        if (result.output().isEmpty()) {
            throw new UserError(source.name() + " has errors");
        }
        return result.output().get();
    }

    static Loaded select(CompiledFile compiled, SourceFile source, String modelName, int threads) throws UserError {
        return select(compiled, source, modelName, BackendFactory.cpu(threads));
    }

    /** The model named {@code modelName}, or the file's only model, with its training and an instance. */
    static Loaded select(CompiledFile compiled, SourceFile source, String modelName, BackendFactory backend) throws UserError {
        Chosen chosen = choose(compiled, source, modelName);
        return new Loaded(chosen.model(), chosen.training(), instantiate(chosen.model(), source.name(), backend,
                chosen.training().map(Training::padDocuments).orElse(false)));
    }

    /** A checked model of a file and its training recipe, if it has one. */
    record Chosen(Model model, Optional<Training> training) {}

    /** Checks the file (diagnostics go to {@code err}) and picks its model: the one named, or the only one. */
    static Chosen choose(SourceFile source, String modelName, PrintWriter err) throws UserError {
        return choose(compile(source, err), source, modelName);
    }

    /** The model named {@code modelName}, or the file's only model, with its training. */
    static Chosen choose(CompiledFile compiled, SourceFile source, String modelName) throws UserError {
        List<Model> models = compiled.models();
        if (models.isEmpty()) {
            throw new UserError(source.name() + " declares no model to run");
        }
        Model model;
        if (modelName != null) {
            model = models.stream().filter(m -> m.name().equals(modelName)).findFirst()
                    .orElseThrow(() -> new UserError("no model `" + modelName + "` in " + source.name() + "; it declares "
                            + String.join(", ", models.stream().map(Model::name).toList())));
        } else if (models.size() > 1) {
            throw new UserError(source.name() + " declares several models (" + String.join(", ", models.stream().map(Model::name).toList())
                    + "): choose one with --model");
        } else {
            model = models.getFirst();
        }
        Optional<Training> training = compiled.trainings().stream().filter(t -> t.model().equals(model.name())).findFirst();
        return new Chosen(model, training);
    }

    static TrainableModel instantiate(Model model, String sourceName, int threads) throws UserError {
        return instantiate(model, sourceName, BackendFactory.cpu(threads));
    }

    static TrainableModel instantiate(Model model, String sourceName, BackendFactory backendFactory) throws UserError {
        return instantiate(model, sourceName, backendFactory, false);
    }

    /**
     * Why {@code model} cannot run device-resident on the GPU (trained on padded documents when
     * {@code masks}), or empty when it can.
     */
    static Optional<String> deviceRefusal(Model model, boolean masks) {
        Optional<String> why = CudaModelGenerator.unsupported(model);
        return why.isPresent() || !masks ? why : Optional.of("padding masks (`documents pad`)");
    }

    /** An instance of the model's generated class; {@code masks}: it will be trained on padded documents. */
    static TrainableModel instantiate(Model model, String sourceName, BackendFactory backendFactory, boolean masks) throws UserError {
        JavaFile file;
        try {
            file = JavaGenerator.generate(model, JavaGenerator.DEFAULT_PACKAGE, sourceName);
        } catch (UnsupportedFeatureException e) {
            throw new UserError(e.getMessage());
        }
        Backend backend = backendFactory.create();
        Map<String, byte[]> classes = new HashMap<>(ClassCache.compile(file));
        JavaFile device = null;
        if (backend instanceof CudaBackend cuda && cuda.deviceModels()) {
            Optional<String> why = deviceRefusal(model, masks);
            if (why.isEmpty()) {
                device = CudaModelGenerator.generate(model, JavaGenerator.DEFAULT_PACKAGE, sourceName);
                classes.putAll(ClassCache.compile(device));
            } else {
                System.err.println("note: " + model.name() + " uses " + why.get() + ", which the GPU code generator does not cover yet: it runs on "
                        + "the hybrid path (matrix products on the GPU, the rest on the CPU)");
            }
        }
        ClassLoader loader = InMemoryCompiler.load(classes, Recipes.class.getClassLoader());
        try {
            Class<?> type = loader.loadClass(JavaGenerator.DEFAULT_PACKAGE + "." + file.typeSpec().name());
            if (device != null) {
                CudaBackend cuda = (CudaBackend) backend;
                TrainableModel host = (TrainableModel) type.getConstructor(Backend.class).newInstance(cuda.cpu());
                Class<?> twin = loader.loadClass(JavaGenerator.DEFAULT_PACKAGE + "." + device.typeSpec().name());
                return (TrainableModel) twin.getConstructor(CudaContext.class, TrainableModel.class).newInstance(cuda.context(), host);
            }
            return (TrainableModel) type.getConstructor(Backend.class).newInstance(backend);
        } catch (ReflectiveOperationException e) {
            throw new IllegalStateException("cannot instantiate the generated " + file.typeSpec().name(), e);
        }
    }
}
