package dev.moe.cli;

import java.io.PrintWriter;
import java.io.StringWriter;
import picocli.CommandLine;

/** Runs moe in-process and captures what it prints. */
final class Cli {
    record Run(int exit, String out, String err) {
        @Override
        public String toString() {
            return "exit " + exit + "\n--- stdout ---\n" + out + "--- stderr ---\n" + err;
        }
    }

    private Cli() {}

    static Run run(String... args) {
        return run(MoeCli.newCommandLine(false), args);
    }

    /** A single command (one with a test compiler or formatter) with moe's error handling installed. */
    static Run runCommand(Object command, String... args) {
        return run(MoeCli.configure(new CommandLine(command), false), args);
    }

    static Run run(CommandLine cli, String... args) {
        StringWriter out = new StringWriter();
        StringWriter err = new StringWriter();
        cli.setOut(new PrintWriter(out, true));
        cli.setErr(new PrintWriter(err, true));
        cli.setColorScheme(CommandLine.Help.defaultColorScheme(CommandLine.Help.Ansi.OFF));
        int exit = cli.execute(args);
        return new Run(exit, out.toString(), err.toString());
    }
}
