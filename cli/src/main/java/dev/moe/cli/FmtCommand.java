package dev.moe.cli;

import dev.moe.dsl.DslParser;
import dev.moe.dsl.MoeFormatter;
import dev.moe.dsl.ParseResult;
import dev.moe.dsl.SourceFile;
import dev.moe.dsl.ast.AstEquivalence;
import dev.moe.dsl.ast.MoeFile;
import dev.moe.dsl.diag.Diagnostic;
import dev.moe.dsl.diag.DiagnosticRenderer;
import java.io.IOException;
import java.io.PrintWriter;
import java.nio.ByteBuffer;
import java.nio.channels.FileChannel;
import java.nio.charset.StandardCharsets;
import java.nio.file.AtomicMoveNotSupportedException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardCopyOption;
import java.nio.file.StandardOpenOption;
import java.util.ArrayList;
import java.util.List;
import java.util.Objects;
import java.util.concurrent.Callable;
import java.util.function.Function;
import picocli.CommandLine.ArgGroup;
import picocli.CommandLine.Command;
import picocli.CommandLine.Mixin;
import picocli.CommandLine.Model.CommandSpec;
import picocli.CommandLine.Option;
import picocli.CommandLine.Parameters;
import picocli.CommandLine.Spec;

/**
 * {@code moe fmt FILE... [--check | --stdout]}. A file is rewritten only when its layout changes, and
 * only after the formatted text has been parsed back to an equivalent syntax tree (comments
 * included); the new text goes to a temporary file in the same directory that then replaces the
 * original in one atomic rename, so an interrupted run never leaves a half-written file.
 */
@Command(
        name = "fmt",
        description = {
            "Format .moe files in the canonical layout.",
            "Two-space indents, one statement per line, comments kept. Files are rewritten in place, and only"
                    + " when their layout changes; files with syntax errors are left untouched.",
        },
        exitCodeListHeading = "%nExit status:%n",
        exitCodeList = {
            "0:success (with --check: every file is already formatted)",
            "1:a file has syntax errors or cannot be written (with --check: a file would be reformatted)",
            "2:usage error",
        })
final class FmtCommand implements Callable<Integer> {
    @Spec
    CommandSpec spec;

    @Mixin
    HelpOption help;

    @Parameters(paramLabel = "FILE", arity = "1..*", description = "The .moe files to format.")
    List<Path> files = new ArrayList<>();

    @ArgGroup(exclusive = true, multiplicity = "0..1")
    Mode mode = new Mode();

    static final class Mode {
        @Option(names = "--check", description = "Write nothing; list the files that would be reformatted, and exit 1 if there are any.")
        boolean check;

        @Option(names = "--stdout", description = "Print the formatted text to standard output; write nothing.")
        boolean stdout;
    }

    private final Function<MoeFile, String> formatter;

    FmtCommand() {
        this(MoeFormatter::format);
    }

    /** With another formatter, for tests of the safety check. */
    FmtCommand(Function<MoeFile, String> formatter) {
        this.formatter = Objects.requireNonNull(formatter);
    }

    @Override
    public Integer call() {
        PrintWriter out = spec.commandLine().getOut();
        PrintWriter err = spec.commandLine().getErr();
        boolean failed = false;
        for (Path path : files) {
            failed |= !format(path, out, err);
            out.flush();
            err.flush();
        }
        return failed ? 1 : 0;
    }

    /** False when the file has errors, cannot be formatted safely or written, or (--check) would change. */
    private boolean format(Path path, PrintWriter out, PrintWriter err) {
        SourceFile source;
        switch (SourceFile.read(path)) {
            case SourceFile.ReadResult.Failed f -> {
                err.print(DiagnosticRenderer.render(f.diagnostic()));
                return false;
            }
            case SourceFile.ReadResult.Ok ok -> source = ok.source();
        }
        ParseResult parsed = DslParser.parse(source);
        for (Diagnostic d : parsed.diagnostics()) {
            err.print(DiagnosticRenderer.render(d));
        }
        if (!parsed.ok()) {
            return false;
        }
        MoeFile tree = parsed.file().orElseThrow();
        String formatted = formatter.apply(tree);
        ParseResult reparsed = DslParser.parse(new SourceFile(source.name(), formatted));
        if (!reparsed.ok() || !AstEquivalence.equivalent(tree, reparsed.file().orElseThrow())) {
            err.println("moe fmt: refusing to format " + path + ": the formatted text would not mean the same as the original;"
                    + " the file is untouched (this is a bug in the formatter, please report it with the file)");
            return false;
        }
        if (mode.stdout) {
            out.print(formatted);
            return true;
        }
        if (formatted.equals(source.text())) {
            return true;
        }
        if (mode.check) {
            out.println("would reformat " + path);
            return false;
        }
        try {
            replace(path, formatted);
        } catch (IOException | SecurityException e) {
            err.println("moe fmt: cannot write " + path + ": " + describe(e) + "; the file is untouched");
            return false;
        }
        out.println("reformatted " + path);
        return true;
    }

    /**
     * Writes {@code text} next to the file, syncs it, copies the file's permissions and renames it over
     * the file. A symbolic link is followed: the file it points to is replaced, the link kept.
     */
    static void replace(Path path, String text) throws IOException {
        Path target = path.toRealPath();
        Path tmp = Files.createTempFile(target.getParent(), "." + target.getFileName() + ".", ".tmp");
        try {
            try (FileChannel ch = FileChannel.open(tmp, StandardOpenOption.WRITE, StandardOpenOption.TRUNCATE_EXISTING)) {
                ByteBuffer bytes = ByteBuffer.wrap(text.getBytes(StandardCharsets.UTF_8));
                while (bytes.hasRemaining()) {
                    ch.write(bytes);
                }
                ch.force(true);
            }
            try {
                Files.setPosixFilePermissions(tmp, Files.getPosixFilePermissions(target));
            } catch (UnsupportedOperationException notPosix) {
                // Keep the temporary file's default permissions.
            }
            try {
                Files.move(tmp, target, StandardCopyOption.ATOMIC_MOVE, StandardCopyOption.REPLACE_EXISTING);
            } catch (AtomicMoveNotSupportedException e) {
                Files.move(tmp, target, StandardCopyOption.REPLACE_EXISTING);
            }
        } finally {
            Files.deleteIfExists(tmp);
        }
    }

    private static String describe(Exception e) {
        String m = e.getMessage();
        return e.getClass().getSimpleName() + (m == null ? "" : " (" + m + ")");
    }
}
