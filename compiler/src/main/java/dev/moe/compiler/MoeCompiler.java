package dev.moe.compiler;

import dev.moe.compiler.Program.Declared;
import dev.moe.compiler.ir.CompiledFile;
import dev.moe.compiler.ir.Model;
import dev.moe.compiler.ir.Training;
import dev.moe.dsl.DslParser;
import dev.moe.dsl.ParseResult;
import dev.moe.dsl.SourceFile;
import dev.moe.dsl.ast.ModelDecl;
import dev.moe.dsl.ast.TrainDecl;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.Optional;

/**
 * The compiler front end: a {@code .moe} file (and what it imports) to checked models and training
 * recipes, or diagnostics. Never throws for a user's mistake; every problem found is reported.
 */
public final class MoeCompiler {
    private MoeCompiler() {}

    public static CompileResult compile(Path file) {
        return switch (SourceFile.read(file)) {
            case SourceFile.ReadResult.Failed f -> new CompileResult(file.toString(), Optional.empty(), List.of(f.diagnostic()));
            case SourceFile.ReadResult.Ok ok -> compile(ok.source());
        };
    }

    /** Imports resolve relative to the directory of {@code source.name()}. */
    public static CompileResult compile(SourceFile source) {
        return compile(source, true);
    }

    /**
     * The recipe a checkpoint carries, compiled to rebuild its models for inference or evaluation: the train blocks' `parallel`
     * placements are not checked (their {@link dev.moe.compiler.ir.Training#parallel} is empty), so a placement file that has
     * since moved, or was recomputed for other ranks, does not stop {@code moe generate} from loading the weights.
     */
    public static CompileResult compileForWeights(SourceFile source) {
        return compile(source, false);
    }

    private static CompileResult compile(SourceFile source, boolean placements) {
        try {
            return dev.moe.dsl.BigStack.call("moe-check", () -> check(source, placements));
        } catch (dev.moe.dsl.BigStack.Overflow e) {
            return new CompileResult(source.name(), Optional.empty(), List.of(dev.moe.dsl.diag.Diagnostic.error(dev.moe.dsl.diag.Code.NESTING_TOO_DEEP,
                    source, dev.moe.dsl.Span.START, "file is nested too deeply to check (stack overflow)")));
        }
    }

    private static CompileResult check(SourceFile source, boolean placements) {
        ParseResult parsed = DslParser.parse(source);
        if (parsed.file().isEmpty()) {
            return new CompileResult(source.name(), Optional.empty(), parsed.diagnostics());
        }
        Reporter reporter = new Reporter();
        reporter.addAll(parsed.diagnostics());
        Program program = Program.load(source, parsed.file().get(), reporter);
        Evaluator evaluator = new Evaluator(reporter, program.constants);
        evaluator.checkAllConstants();
        Read read = new Read(reporter);
        read.constants(program.constants.keySet());
        ModelChecker models = new ModelChecker(program, evaluator, read);
        models.checkFreeDefinitions();

        // Models are checked once each, on demand (a train block may name an imported model).
        Map<String, Optional<Model>> checked = new HashMap<>();
        java.util.function.Function<String, Optional<Model>> modelOf = name -> {
            if (!checked.containsKey(name)) {
                Declared<ModelDecl> decl = program.models.get(name);
                checked.put(name, decl == null ? Optional.empty() : models.check(decl));
            }
            return checked.get(name);
        };
        List<Model> ownModels = new ArrayList<>();
        for (Declared<ModelDecl> m : program.models.values()) {
            if (m.source() == source) {
                modelOf.apply(m.node().name().text()).ifPresent(ownModels::add);
            }
        }
        TrainChecker trains = new TrainChecker(program, evaluator, read, modelOf, placements);
        List<Training> trainings = new ArrayList<>();
        for (Declared<TrainDecl> t : program.trainings) {
            trains.check(t).ifPresent(trainings::add);
        }
        List<dev.moe.dsl.diag.Diagnostic> diagnostics = reporter.sorted();
        if (reporter.errorCount() > 0) {
            return new CompileResult(source.name(), Optional.empty(), diagnostics);
        }
        return new CompileResult(source.name(), Optional.of(new CompiledFile(source.name(), ownModels, trainings)), diagnostics);
    }
}
