package dev.moe.cli;

import dev.moe.compiler.CompileResult;
import dev.moe.compiler.MoeCompiler;
import dev.moe.compiler.ir.CompiledFile;
import dev.moe.compiler.ir.Count;
import dev.moe.compiler.ir.Model;
import dev.moe.compiler.ir.Training;
import dev.moe.dsl.diag.Diagnostic;
import dev.moe.dsl.diag.DiagnosticRenderer;
import dev.moe.dsl.diag.Severity;
import java.io.PrintWriter;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Objects;
import java.util.concurrent.Callable;
import java.util.function.Function;
import picocli.CommandLine.Command;
import picocli.CommandLine.Mixin;
import picocli.CommandLine.Model.CommandSpec;
import picocli.CommandLine.Parameters;
import picocli.CommandLine.Spec;

/** {@code moe check FILE...}: diagnostics to stderr, one summary line per clean file to stdout. */
@Command(
        name = "check",
        description = {
            "Check .moe files.",
            "Prints every problem to standard error and, for each file without errors, one line to"
                    + " standard output with its models' total and active parameters and FLOPs per token.",
        },
        exitCodeListHeading = "%nExit status:%n",
        exitCodeList = {
            "0:every file is free of errors (warnings allowed)",
            "1:at least one file has errors",
            "2:usage error",
        })
final class CheckCommand implements Callable<Integer> {
    @Spec
    CommandSpec spec;

    @Mixin
    HelpOption help;

    @Parameters(paramLabel = "FILE", arity = "1..*", description = "The .moe files to check.")
    List<Path> files = new ArrayList<>();

    private final Function<Path, CompileResult> compiler;

    CheckCommand() {
        this(MoeCompiler::compile);
    }

    /** With another compiler, for tests. */
    CheckCommand(Function<Path, CompileResult> compiler) {
        this.compiler = Objects.requireNonNull(compiler);
    }

    @Override
    public Integer call() {
        PrintWriter out = spec.commandLine().getOut();
        PrintWriter err = spec.commandLine().getErr();
        long errors = 0;
        long warnings = 0;
        boolean failed = false;
        for (Path file : files) {
            CompileResult result = compiler.apply(file);
            for (Diagnostic d : result.diagnostics()) {
                err.print(DiagnosticRenderer.render(d));
            }
            err.flush();
            long fileErrors = result.errorCount();
            errors += fileErrors;
            warnings += result.diagnostics().stream().filter(d -> d.severity() == Severity.WARNING).count();
            if (result.output().isPresent() && fileErrors == 0) {
                out.println(summary(result));
            } else {
                failed = true;
            }
            out.flush();
        }
        if (files.size() > 1) {
            out.println(files.size() + " files checked, " + plural(errors, "error") + ", " + plural(warnings, "warning"));
        }
        return failed ? 1 : 0;
    }

    /**
     * {@code recipes/mixtral.moe: ok (1 model: MixtralTiny 6.62M params, 2.31M active, 4.6 MFLOP/token; 1 training recipe)}.
     */
    static String summary(CompileResult result) {
        CompiledFile file = result.output().orElseThrow();
        List<String> parts = new ArrayList<>();
        List<Model> models = file.models();
        if (models.isEmpty()) {
            parts.add("no models");
        } else {
            List<String> each = new ArrayList<>();
            for (Model m : models) {
                each.add(m.name() + " " + Units.count(m.totalParams()) + " params, " + active(m.activeParams()) + ", "
                        + flops(m.flopsPerToken()));
            }
            parts.add(plural(models.size(), "model") + ": " + String.join("; ", each));
        }
        if (!file.trainings().isEmpty()) {
            parts.add(plural(file.trainings().size(), "training recipe"));
            for (Training t : file.trainings()) {
                t.parallel().ifPresent(p -> parts.add("train " + t.model() + ": experts on " + plural(p.ranks(), "rank")));
            }
        }
        long warnings = result.diagnostics().stream().filter(d -> d.severity() == Severity.WARNING).count();
        if (warnings > 0) {
            parts.add(plural(warnings, "warning"));
        }
        return result.file() + ": ok (" + String.join("; ", parts) + ")";
    }

    private static String active(Count c) {
        return c.fixed() ? Units.count(c.min()) + " active" : Units.countSpan(c) + " active (expected " + Units.count(c.expected()) + ")";
    }

    private static String flops(Count c) {
        return c.fixed() ? Units.flops(c.min()) + "/token" : Units.flopsSpan(c) + "/token (expected " + Units.flops(c.expected()) + ")";
    }

    static String plural(long n, String noun) {
        return n + " " + noun + (n == 1 ? "" : "s");
    }
}
