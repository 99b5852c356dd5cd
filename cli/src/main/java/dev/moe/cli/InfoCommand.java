package dev.moe.cli;

import dev.moe.compiler.CompileResult;
import dev.moe.compiler.MoeCompiler;
import dev.moe.compiler.ir.CompiledFile;
import dev.moe.compiler.ir.Model;
import dev.moe.compiler.ir.Training;
import dev.moe.dsl.diag.Diagnostic;
import dev.moe.dsl.diag.DiagnosticRenderer;
import java.io.PrintWriter;
import java.nio.file.Path;
import java.util.Locale;
import java.util.Objects;
import java.util.concurrent.Callable;
import java.util.function.Function;
import picocli.CommandLine.Command;
import picocli.CommandLine.Mixin;
import picocli.CommandLine.Model.CommandSpec;
import picocli.CommandLine.Option;
import picocli.CommandLine.Parameters;
import picocli.CommandLine.Spec;

/** {@code moe info FILE [--params]}: per-layer costs and totals of every model in a file. */
@Command(
        name = "info",
        description = {
            "Show what the models of a .moe file cost.",
            "For each model: a table of its layers (block, parameters, active parameters, FLOPs per token),"
                    + " the totals (parameters, active parameters, activation ratio, FLOPs per token) and its configuration.",
            "For a model whose train block has a `parallel` block: each MoE layer's experts per rank, and each rank's parameter memory"
                    + " for training with --expert-parallel beside the whole model's.",
        },
        exitCodeListHeading = "%nExit status:%n",
        exitCodeList = {
            "0:success",
            "1:the file has errors (they are printed)",
            "2:usage error",
        })
final class InfoCommand implements Callable<Integer> {
    @Spec
    CommandSpec spec;

    @Mixin
    HelpOption help;

    @Parameters(paramLabel = "FILE", description = "The .moe file.")
    Path file;

    @Option(names = "--params", description = "Also list every tensor: name, shape, element count, whether it trains.")
    boolean params;

    private final Function<Path, CompileResult> compiler;

    InfoCommand() {
        this(MoeCompiler::compile);
    }

    /** With another compiler, for tests. */
    InfoCommand(Function<Path, CompileResult> compiler) {
        this.compiler = Objects.requireNonNull(compiler);
    }

    @Override
    public Integer call() {
        PrintWriter out = spec.commandLine().getOut();
        PrintWriter err = spec.commandLine().getErr();
        CompileResult result = compiler.apply(file);
        for (Diagnostic d : result.diagnostics()) {
            err.print(DiagnosticRenderer.render(d));
        }
        err.flush();
        if (result.output().isEmpty() || result.errorCount() > 0) {
            return 1;
        }
        CompiledFile compiled = result.output().get();
        if (compiled.models().isEmpty()) {
            out.println(result.file() + ": declares no models");
            return 0;
        }
        boolean first = true;
        for (Model m : compiled.models()) {
            if (!first) {
                out.println();
            }
            first = false;
            out.print(InfoTable.render(m, params));
            for (Training t : compiled.trainings()) {
                if (t.model().equals(m.name()) && t.parallel().isPresent()) {
                    out.printf(Locale.ROOT, "%n  expert placement on %d ranks (train %s)%n", t.parallel().get().ranks(), t.model());
                    ExpertPlacements.describe(t.parallel().get()).forEach(line -> out.println("    " + line));
                    ExpertPlacements.describeMemory(m, t.parallel().get()).forEach(line -> out.println("    " + line));
                }
            }
        }
        out.flush();
        return 0;
    }
}
