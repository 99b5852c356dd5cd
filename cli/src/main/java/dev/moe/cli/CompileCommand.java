package dev.moe.cli;

import com.palantir.javapoet.JavaFile;
import dev.moe.codegen.JavaGenerator;
import dev.moe.codegen.UnsupportedFeatureException;
import dev.moe.compiler.CompileResult;
import dev.moe.compiler.MoeCompiler;
import dev.moe.dsl.diag.DiagnosticRenderer;
import java.io.IOException;
import java.io.PrintWriter;
import java.nio.file.Path;
import java.util.List;
import java.util.concurrent.Callable;
import picocli.CommandLine.Command;
import picocli.CommandLine.Mixin;
import picocli.CommandLine.Model.CommandSpec;
import picocli.CommandLine.Option;
import picocli.CommandLine.Parameters;
import picocli.CommandLine.Spec;

/** {@code moe compile FILE -o DIR}: the Java sources of the file's models, to read or build on. */
@Command(
        name = "compile",
        description = {"Generate the Java sources of the models in a .moe file.",
            "One class per model, with its forward and backward passes written out; `moe train` runs the same classes."},
        exitCodeListHeading = "%nExit status:%n",
        exitCodeList = {"0:sources written", "1:the file has errors, or uses a feature code generation does not support yet", "2:usage error"})
final class CompileCommand implements Callable<Integer> {
    @Spec
    CommandSpec spec;

    @Mixin
    HelpOption help;

    @Parameters(paramLabel = "FILE", description = "The .moe file.")
    Path file;

    @Option(names = {"-o", "--out"}, paramLabel = "DIR", required = true, description = "Directory for the sources (package folders are created).")
    Path out;

    @Option(names = "--package", paramLabel = "NAME", description = "Java package of the generated classes (default: ${DEFAULT-VALUE}).")
    String packageName = JavaGenerator.DEFAULT_PACKAGE;

    @Override
    public Integer call() throws IOException {
        PrintWriter err = spec.commandLine().getErr();
        PrintWriter stdout = spec.commandLine().getOut();
        CompileResult result = MoeCompiler.compile(file);
        result.diagnostics().forEach(d -> err.print(DiagnosticRenderer.render(d)));
        if (result.output().isEmpty()) {
            err.flush();
            return 1;
        }
        List<JavaFile> files;
        try {
            files = JavaGenerator.generate(result.output().get(), packageName);
        } catch (UnsupportedFeatureException e) {
            err.println("moe: error: " + e.getMessage());
            err.flush();
            return 1;
        }
        JavaGenerator.write(files, out);
        for (JavaFile f : files) {
            stdout.println(out.resolve(f.packageName().replace('.', '/')).resolve(f.typeSpec().name() + ".java"));
        }
        stdout.flush();
        return 0;
    }
}
