package dev.moe.cli;

import dev.moe.dsl.diag.Code;
import java.io.PrintWriter;
import java.util.Optional;
import java.util.concurrent.Callable;
import picocli.CommandLine.ArgGroup;
import picocli.CommandLine.Command;
import picocli.CommandLine.Mixin;
import picocli.CommandLine.Model.CommandSpec;
import picocli.CommandLine.Option;
import picocli.CommandLine.Parameters;
import picocli.CommandLine.Spec;

/** {@code moe explain CODE} and {@code moe explain --list}. */
@Command(
        name = "explain",
        description = {
            "Explain a diagnostic code such as MOE0301.",
            "Every diagnostic ends with its code in brackets, like [MOE0301].",
        },
        exitCodeListHeading = "%nExit status:%n",
        exitCodeList = {
            "0:success",
            "2:usage error, or no such code",
        })
final class ExplainCommand implements Callable<Integer> {
    @Spec
    CommandSpec spec;

    @Mixin
    HelpOption help;

    @ArgGroup(exclusive = true, multiplicity = "1")
    What what;

    static final class What {
        @Parameters(paramLabel = "CODE", description = "A code: MOE0301 (also moe0301, 0301 or 301).")
        String code;

        @Option(names = "--list", description = "List every code with its title.")
        boolean list;
    }

    @Override
    public Integer call() {
        PrintWriter out = spec.commandLine().getOut();
        if (what.list) {
            for (Code c : Code.values()) {
                out.println(c.id() + "  " + c.title());
            }
            out.flush();
            return 0;
        }
        Optional<Code> code = Code.parse(what.code);
        if (code.isEmpty()) {
            PrintWriter err = spec.commandLine().getErr();
            err.println("moe explain: unknown code `" + what.code + "`");
            err.println("Codes look like MOE0301 (moe0301, 0301 and 301 work too); `moe explain --list` lists them all.");
            err.flush();
            return MoeCli.EXIT_USAGE;
        }
        Code c = code.get();
        out.println(c.id() + ": " + c.title());
        out.println();
        out.print(c.explanation().endsWith("\n") ? c.explanation() : c.explanation() + "\n");
        out.flush();
        return 0;
    }
}
