package dev.moe.cli;

import java.io.IOException;
import java.io.InputStream;
import java.io.OutputStreamWriter;
import java.io.PrintStream;
import java.io.PrintWriter;
import java.nio.charset.StandardCharsets;
import java.util.Properties;
import picocli.CommandLine;
import picocli.CommandLine.Command;
import picocli.CommandLine.Model.CommandSpec;
import picocli.CommandLine.ParameterException;
import picocli.CommandLine.Spec;

/**
 * The {@code moe} command. A thin layer over the library: every subcommand reads files, calls the
 * front end, and prints through picocli's writers so that tests can capture what it says.
 *
 * <p>Exit status: 0 success, 1 a file has errors (or would be reformatted), 2 usage error, 70
 * internal error.
 */
@Command(
        name = "moe",
        mixinStandardHelpOptions = true,
        versionProvider = MoeCli.Version.class,
        description = "Declare Mixture-of-Experts models in .moe files; check, compile, train and run them.",
        synopsisSubcommandLabel = "COMMAND",
        subcommands = {
            CheckCommand.class,
            InfoCommand.class,
            FmtCommand.class,
            ExplainCommand.class,
            CompileCommand.class,
            TrainCommand.class,
            GenerateCommand.class,
            EvalCommand.class,
            PruneCommand.class,
            PlacementCommand.class,
            BenchCommand.class,
            ImportCommand.class,
            ExportCommand.class,
            ProbeCommands.Logits.class,
            ProbeCommands.Grads.class,
            ReplCommand.class,
            CommandLine.HelpCommand.class,
        },
        exitCodeListHeading = "%nExit status:%n",
        exitCodeList = {
            " 0:success",
            " 1:a file has errors (or, with fmt --check, would be reformatted)",
            " 2:usage error: unknown command or option, missing argument",
            "70:internal error: a bug in moe, please report it",
        },
        footerHeading = "%n",
        footer = {
            "Run `moe COMMAND --help` for the options of a command.",
            "Set MOE_DEBUG=1 to see the stack trace of an internal error.",
        })
public final class MoeCli implements Runnable {
    /** Exit status for usage errors (picocli's default for bad input). */
    public static final int EXIT_USAGE = 2;
    /** Exit status for a bug in moe (sysexits' EX_SOFTWARE). */
    public static final int EXIT_INTERNAL = 70;

    @Spec
    CommandSpec spec;

    @Override
    public void run() {
        throw new ParameterException(spec.commandLine(), "Missing required command");
    }

    public static void main(String[] args) {
        PrintWriter out = utf8(System.out);
        PrintWriter err = utf8(System.err);
        boolean debug = InternalErrorHandler.debugFromEnvironment();
        int status;
        try {
            CommandLine cli = newCommandLine(debug);
            cli.setOut(out);
            cli.setErr(err);
            status = cli.execute(args);
        } catch (Throwable t) {
            // Errors (not Exceptions) thrown by a command pass picocli's handler: report them the same way.
            status = InternalErrorHandler.report(t, err, debug);
        }
        out.flush();
        err.flush();
        System.exit(status);
    }

    /** The command line with its error handling installed; {@code MOE_DEBUG=1} decides stack traces. */
    public static CommandLine newCommandLine() {
        return newCommandLine(InternalErrorHandler.debugFromEnvironment());
    }

    static CommandLine newCommandLine(boolean debug) {
        return configure(new CommandLine(new MoeCli()), debug);
    }

    /** Installs the error handling every moe command line shares (also used on single commands in tests). */
    static CommandLine configure(CommandLine cli, boolean debug) {
        cli.setExecutionExceptionHandler(new InternalErrorHandler(debug));
        cli.setCaseInsensitiveEnumValuesAllowed(true);
        return cli;
    }

    private static PrintWriter utf8(PrintStream stream) {
        return new PrintWriter(new OutputStreamWriter(stream, StandardCharsets.UTF_8), true);
    }

    /** {@code moe --version}: the project version (filtered in by Maven) and the JVM running it. */
    static final class Version implements CommandLine.IVersionProvider {
        @Override
        public String[] getVersion() {
            return new String[] {
                "moe " + version(),
                "Java ${java.version} (${java.vendor}, ${java.vm.name})",
            };
        }

        static String version() {
            try (InputStream in = MoeCli.class.getResourceAsStream("version.properties")) {
                if (in == null) {
                    return "unknown";
                }
                Properties p = new Properties();
                p.load(in);
                return p.getProperty("version", "unknown");
            } catch (IOException e) {
                return "unknown";
            }
        }
    }
}
