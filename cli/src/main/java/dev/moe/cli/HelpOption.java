package dev.moe.cli;

import picocli.CommandLine.Option;

/** {@code -h, --help} for subcommands ({@code --version} belongs to the top command only). */
final class HelpOption {
    @Option(names = {"-h", "--help"}, usageHelp = true, description = "Show this help message and exit.")
    boolean help;
}
