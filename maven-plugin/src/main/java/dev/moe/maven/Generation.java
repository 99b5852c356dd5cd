package dev.moe.maven;

import com.palantir.javapoet.JavaFile;
import dev.moe.codegen.JavaGenerator;
import dev.moe.codegen.UnsupportedFeatureException;
import dev.moe.compiler.CompileResult;
import dev.moe.compiler.MoeCompiler;
import dev.moe.compiler.ir.Model;
import dev.moe.dsl.DslParser;
import dev.moe.dsl.ParseResult;
import dev.moe.dsl.SourceFile;
import dev.moe.dsl.ast.ImportDecl;
import dev.moe.dsl.ast.TopLevel;
import dev.moe.dsl.diag.Diagnostic;
import dev.moe.dsl.diag.DiagnosticRenderer;
import java.io.IOException;
import java.io.OutputStream;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.InvalidPathException;
import java.nio.file.Path;
import java.nio.file.StandardCopyOption;
import java.security.MessageDigest;
import java.security.NoSuchAlgorithmException;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.HashMap;
import java.util.HashSet;
import java.util.HexFormat;
import java.util.LinkedHashMap;
import java.util.LinkedHashSet;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.TreeSet;
import java.util.stream.Stream;
import javax.lang.model.SourceVersion;

/**
 * One run of the generator over a source directory: finds the {@code .moe} files, works out which
 * are stale (their text or the text of a file they import changed since the last successful run, or
 * an output is missing), checks and generates those, writes only the Java files whose content
 * changed, deletes the outputs of sources that are gone, and records the new state. It knows nothing
 * of Maven, so that it can be tested directly; the mojos are a thin layer over it.
 *
 * <p>The state file is promoted only after it is complete, and a source with errors keeps its
 * previous entry, so it is checked again on the next run.
 */
final class Generation {
    static final String STATE_HEADER = "moe-maven-plugin-state 1";

    /**
     * What to generate.
     *
     * @param sourceDirectory the root of the {@code .moe} tree; a file's subdirectory is its Java package
     * @param outputDirectory where the Java sources go
     * @param stateFile where the digests of the last successful run are kept
     * @param incremental false: check and generate every file, whatever the state says
     * @param toolVersion part of every digest, so that another generator regenerates everything
     */
    record Request(Path sourceDirectory, Path outputDirectory, Path stateFile, boolean incremental, String toolVersion) {}

    /** Where the mojo sends what the run finds (Maven's log, the IDE's markers, BuildContext streams). */
    interface Listener {
        /** A source is about to be checked: forget the markers of its last check. */
        void checking(Path source);

        /** One diagnostic, reported once per run even when several files import its file. */
        void diagnostic(Path file, Diagnostic diagnostic);

        /** An error that is not a diagnostic of the language (an unsupported feature, a bad directory name). */
        void problem(Path file, String message);

        OutputStream newOutputStream(Path file) throws IOException;
    }

    record Result(int sources, int checked, int upToDate, List<Path> written, List<Path> deleted, int errors, int warnings) {}

    private record Entry(String digest, List<String> outputs) {}

    private final Request request;
    private final Listener listener;
    private final Path workingDirectory = Path.of("").toAbsolutePath();
    private final Set<String> reported = new HashSet<>();
    private int errors;
    private int warnings;

    private Generation(Request request, Listener listener) {
        this.request = request;
        this.listener = listener;
    }

    static Result run(Request request, Listener listener) throws IOException {
        return new Generation(request, listener).run();
    }

    private Result run() throws IOException {
        Path root = request.sourceDirectory().toAbsolutePath().normalize();
        Path out = request.outputDirectory().toAbsolutePath().normalize();
        List<Path> sources;
        try (Stream<Path> walk = Files.walk(root)) {
            sources = walk.filter(p -> p.getFileName().toString().endsWith(".moe") && Files.isRegularFile(p)).sorted().toList();
        }
        Map<String, Entry> previous = readState();
        Map<String, Entry> next = new LinkedHashMap<>();
        Map<String, String> producedBy = new HashMap<>(); // output -> source, to catch two models of one name
        List<Path> written = new ArrayList<>();
        int checked = 0;
        int upToDate = 0;
        for (Path source : sources) {
            String key = slashes(root.relativize(source));
            Entry before = previous.get(key);
            String pkg = packageOf(root.relativize(source));
            if (pkg == null) {
                listener.checking(source);
                problem(source, "the directory of this file is not a Java package name (" + slashes(root.relativize(source.getParent()))
                        + "): rename it, or move the file");
                continue;
            }
            String digest = digest(source, pkg);
            if (request.incremental() && before != null && before.digest().equals(digest)
                    && before.outputs().stream().allMatch(o -> Files.isRegularFile(out.resolve(o)))
                    && before.outputs().stream().noneMatch(producedBy::containsKey)) {
                before.outputs().forEach(o -> producedBy.put(o, key));
                next.put(key, before);
                upToDate++;
                continue;
            }
            checked++;
            listener.checking(source);
            List<JavaFile> files = generate(source, pkg);
            if (files == null) {
                if (before != null) {
                    next.put(key, new Entry("stale", before.outputs())); // keep its old outputs until it is fixed
                }
                continue;
            }
            Map<String, String> texts = new LinkedHashMap<>();
            boolean clash = false;
            for (JavaFile f : files) {
                String output = (pkg.isEmpty() ? "" : pkg.replace('.', '/') + "/") + f.typeSpec().name() + ".java";
                String other = producedBy.get(output);
                if (other != null) {
                    problem(source, "model `" + f.typeSpec().name() + "` is also generated from " + other + " (" + output
                            + "): rename one of them");
                    clash = true;
                }
                texts.put(output, f.toString());
            }
            if (clash) {
                continue;
            }
            for (var e : texts.entrySet()) {
                producedBy.put(e.getKey(), key);
                if (write(out.resolve(e.getKey()), e.getValue())) {
                    written.add(out.resolve(e.getKey()));
                }
            }
            next.put(key, new Entry(digest, List.copyOf(texts.keySet())));
        }
        List<Path> deleted = new ArrayList<>();
        Set<String> kept = new HashSet<>();
        next.values().forEach(e -> kept.addAll(e.outputs()));
        for (Entry e : previous.values()) {
            for (String o : e.outputs()) {
                if (!kept.contains(o) && Files.deleteIfExists(out.resolve(o))) {
                    deleted.add(out.resolve(o));
                }
            }
        }
        writeState(next);
        return new Result(sources.size(), checked, upToDate, written, deleted, errors, warnings);
    }

    /** Checks one file and generates its models; null when it has errors. */
    private List<JavaFile> generate(Path source, String pkg) {
        Path shown = shown(source);
        CompileResult result = MoeCompiler.compile(shown);
        boolean failed = false;
        for (Diagnostic d : result.diagnostics()) {
            failed |= d.isError();
            if (reported.add(DiagnosticRenderer.render(d))) {
                if (d.isError()) {
                    errors++;
                } else {
                    warnings++;
                }
                listener.diagnostic(workingDirectory.resolve(d.file()).normalize(), d);
            }
        }
        if (failed || result.output().isEmpty()) {
            return null;
        }
        // The recipe's comments on a model document its class.
        Map<String, List<String>> comments = SourceFile.read(shown) instanceof SourceFile.ReadResult.Ok ok
                ? JavaGenerator.modelComments(ok.source()) : Map.of();
        List<JavaFile> files = new ArrayList<>();
        for (Model m : result.output().get().models()) {
            try {
                files.add(JavaGenerator.generate(m, pkg, shown.toString(), comments.getOrDefault(m.name(), List.of())));
            } catch (UnsupportedFeatureException e) {
                problem(source, e.getMessage());
                return null;
            }
        }
        return files;
    }

    private void problem(Path source, String message) {
        errors++;
        listener.problem(source, shown(source) + ": error: " + message);
    }

    /** A path as the CLI run from the same directory would print it (and as imports resolve it). */
    private Path shown(Path file) {
        return file.startsWith(workingDirectory) ? workingDirectory.relativize(file) : file;
    }

    /** The Java package of a file from its directory under the source root; null when a name is not an identifier. */
    static String packageOf(Path relative) {
        List<String> parts = new ArrayList<>();
        Path dir = relative.getParent();
        if (dir != null) {
            for (Path p : dir) {
                String name = p.toString();
                if (!SourceVersion.isIdentifier(name) || SourceVersion.isKeyword(name)) {
                    return null;
                }
                parts.add(name);
            }
        }
        return String.join(".", parts);
    }

    /**
     * The digest of what a file's output depends on: the generator, the package, and the text of the
     * file and of every file it imports, directly or not. A missing import counts as such, so that
     * creating it later makes the file stale.
     */
    private String digest(Path source, String pkg) throws IOException {
        MessageDigest sha = sha256();
        sha.update((request.toolVersion() + "\n" + pkg + "\n").getBytes(StandardCharsets.UTF_8));
        for (Path p : closure(source)) {
            sha.update((p + "\n").getBytes(StandardCharsets.UTF_8));
            byte[] bytes = Files.isRegularFile(p) ? Files.readAllBytes(p) : "<missing>".getBytes(StandardCharsets.UTF_8);
            sha.update(sha256().digest(bytes));
        }
        return HexFormat.of().formatHex(sha.digest());
    }

    /**
     * The file, everything it imports, transitively, and the placement files its train blocks read ({@code parallel { experts
     * file("...") }}: the compiler checks them against the model, so a changed one may turn a clean file into one with errors);
     * parse failures just end the walk there.
     */
    private static Set<Path> closure(Path source) {
        Set<Path> seen = new TreeSet<>();
        List<Path> todo = new ArrayList<>(List.of(source.toAbsolutePath().normalize()));
        while (!todo.isEmpty()) {
            Path p = todo.removeLast();
            if (!seen.add(p) || !Files.isRegularFile(p)) {
                continue;
            }
            if (!(SourceFile.read(p) instanceof SourceFile.ReadResult.Ok ok)) {
                continue;
            }
            ParseResult parsed = DslParser.parse(ok.source());
            if (parsed.file().isEmpty()) {
                continue;
            }
            for (TopLevel t : parsed.file().get().declarations()) {
                if (t instanceof ImportDecl i) {
                    try {
                        todo.add(p.getParent().resolve(i.path().value()).normalize());
                    } catch (InvalidPathException e) {
                        // reported by the compiler when the file is checked
                    }
                } else if (t instanceof dev.moe.dsl.ast.TrainDecl train) {
                    for (String file : placementFiles(train)) {
                        try {
                            seen.add(p.getParent().resolve(file).normalize()); // read, not parsed: not walked further
                        } catch (InvalidPathException e) {
                            // reported by the compiler when the file is checked
                        }
                    }
                }
            }
        }
        return seen;
    }

    /** The paths of a train block's {@code parallel { experts file("path") }} lines, as written. */
    static List<String> placementFiles(dev.moe.dsl.ast.TrainDecl train) {
        List<String> out = new ArrayList<>();
        for (dev.moe.dsl.ast.TrainMember m : train.members()) {
            if (m instanceof dev.moe.dsl.ast.ParallelBlock block) {
                for (dev.moe.dsl.ast.Setting s : block.settings()) {
                    if (s.key().text().equals("experts") && s.value() instanceof dev.moe.dsl.ast.Expr.Call call
                            && call.callee().text().equals("file") && !call.arguments().isEmpty()
                            && call.arguments().getFirst().value() instanceof dev.moe.dsl.ast.Expr.StringLit path) {
                        out.add(path.value());
                    }
                }
            }
        }
        return out;
    }

    /** Writes only when the content differs, so that an unchanged output keeps its timestamp. */
    private boolean write(Path file, String text) throws IOException {
        byte[] bytes = text.getBytes(StandardCharsets.UTF_8);
        if (Files.isRegularFile(file) && Arrays.equals(Files.readAllBytes(file), bytes)) {
            return false;
        }
        Files.createDirectories(file.getParent());
        try (OutputStream o = listener.newOutputStream(file)) {
            o.write(bytes);
        }
        return true;
    }

    private Map<String, Entry> readState() {
        Map<String, Entry> state = new HashMap<>();
        Path file = request.stateFile();
        try {
            if (!Files.isRegularFile(file)) {
                return state;
            }
            List<String> lines = Files.readAllLines(file, StandardCharsets.UTF_8);
            if (lines.isEmpty() || !lines.getFirst().equals(STATE_HEADER)) {
                return state; // another format: regenerate everything
            }
            for (String line : lines.subList(1, lines.size())) {
                String[] f = line.split("\t", -1);
                if (f.length == 3) {
                    state.put(f[0], new Entry(f[1], f[2].isEmpty() ? List.of() : List.of(f[2].split("\\|"))));
                }
            }
        } catch (IOException | RuntimeException e) {
            state.clear(); // an unreadable state only costs a full regeneration
        }
        return state;
    }

    private void writeState(Map<String, Entry> state) throws IOException {
        StringBuilder b = new StringBuilder(STATE_HEADER).append('\n');
        state.forEach((source, e) -> b.append(source).append('\t').append(e.digest()).append('\t')
                .append(String.join("|", new LinkedHashSet<>(e.outputs()))).append('\n'));
        Path file = request.stateFile();
        Files.createDirectories(file.toAbsolutePath().getParent());
        Path tmp = file.resolveSibling(file.getFileName() + ".tmp");
        Files.writeString(tmp, b, StandardCharsets.UTF_8);
        Files.move(tmp, file, StandardCopyOption.REPLACE_EXISTING, StandardCopyOption.ATOMIC_MOVE);
    }

    private static String slashes(Path p) {
        return p.toString().replace('\\', '/');
    }

    private static MessageDigest sha256() {
        try {
            return MessageDigest.getInstance("SHA-256");
        } catch (NoSuchAlgorithmException e) {
            throw new IllegalStateException(e);
        }
    }
}
