package dev.moe.compiler;

import dev.moe.dsl.DslParser;
import dev.moe.dsl.ParseResult;
import dev.moe.dsl.SourceFile;
import dev.moe.dsl.Span;
import dev.moe.dsl.ast.ConstDecl;
import dev.moe.dsl.ast.FfnDef;
import dev.moe.dsl.ast.ImportDecl;
import dev.moe.dsl.ast.ModelDecl;
import dev.moe.dsl.ast.MoeDef;
import dev.moe.dsl.ast.MoeFile;
import dev.moe.dsl.ast.Node;
import dev.moe.dsl.ast.TopLevel;
import dev.moe.dsl.ast.TrainDecl;
import dev.moe.dsl.diag.Code;
import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Optional;

/**
 * A root file and everything it imports, with the top-level names they declare. Imports are
 * resolved relative to the importing file; each file is loaded once; cycles are reported.
 * All top-level names (constants, ffn and moe definitions, models) share one namespace.
 */
final class Program {
    record Declared<T extends Node>(T node, SourceFile source) {
        Span span() {
            return node.span();
        }
    }

    final SourceFile rootSource;
    final MoeFile root;
    final Map<String, Declared<ConstDecl>> constants = new LinkedHashMap<>();
    final Map<String, Declared<FfnDef>> ffns = new LinkedHashMap<>();
    final Map<String, Declared<MoeDef>> moes = new LinkedHashMap<>();
    final Map<String, Declared<ModelDecl>> models = new LinkedHashMap<>();
    final List<Declared<TrainDecl>> trainings = new ArrayList<>();

    private final Reporter reporter;
    private final Map<Path, MoeFile> loaded = new HashMap<>();
    private final Map<String, Declared<? extends Node>> names = new HashMap<>();

    private Program(SourceFile rootSource, MoeFile root, Reporter reporter) {
        this.rootSource = rootSource;
        this.root = root;
        this.reporter = reporter;
    }

    static Program load(SourceFile source, MoeFile file, Reporter reporter) {
        Program p = new Program(source, file, reporter);
        List<Path> stack = new ArrayList<>();
        canonical(source).ifPresent(path -> {
            stack.add(path);
            p.loaded.put(path, file);
        });
        p.declare(source, file, stack, true);
        return p;
    }

    private void declare(SourceFile source, MoeFile file, List<Path> stack, boolean isRoot) {
        for (TopLevel d : file.declarations()) {
            switch (d) {
                case ImportDecl i -> importFile(source, i, stack);
                case ConstDecl c -> name(c.name().text(), new Declared<>(c, source), c.name().span(), constants);
                case FfnDef f -> name(f.name().text(), new Declared<>(f, source), f.name().span(), ffns);
                case MoeDef m -> name(m.name().text(), new Declared<>(m, source), m.name().span(), moes);
                case ModelDecl m -> name(m.name().text(), new Declared<>(m, source), m.name().span(), models);
                case TrainDecl t -> {
                    if (isRoot) {
                        trainings.add(new Declared<>(t, source));
                    }
                }
            }
        }
    }

    private <T extends Node> void name(String name, Declared<T> declared, Span nameSpan, Map<String, Declared<T>> table) {
        Declared<? extends Node> earlier = names.get(name);
        if (earlier != null) {
            var d = reporter.error(Code.DUPLICATE_NAME, declared.source(), nameSpan, "`%s` is already declared", name);
            reporter.note(d, "first declared at " + earlier.source().name() + ":" + earlier.span().line() + ":" + earlier.span().column());
            return;
        }
        names.put(name, declared);
        table.put(name, declared);
    }

    /** The declaration a top-level name refers to, if any. */
    Optional<Declared<? extends Node>> lookup(String name) {
        return Optional.ofNullable(names.get(name));
    }

    private void importFile(SourceFile from, ImportDecl i, List<Path> stack) {
        String relative = i.path().value();
        Path base = Optional.ofNullable(Path.of(from.name()).toAbsolutePath().getParent()).orElse(Path.of("."));
        Path target;
        try {
            target = base.resolve(relative).normalize();
        } catch (java.nio.file.InvalidPathException e) {
            reporter.error(Code.IMPORT_NOT_FOUND, from, i.path().span(), "invalid import path \"%s\"", relative);
            return;
        }
        if (!Files.isRegularFile(target)) {
            var d = reporter.error(Code.IMPORT_NOT_FOUND, from, i.path().span(), "cannot import \"%s\": no such file", relative);
            Path shown = Path.of(from.name()).getParent() == null ? Path.of(relative) : Path.of(from.name()).getParent().resolve(relative).normalize();
            reporter.note(d, "looked for " + shown);
            return;
        }
        Path canonical = canonical(target).orElse(target);
        if (stack.contains(canonical)) {
            List<String> cycle = new ArrayList<>();
            for (Path p : stack.subList(stack.indexOf(canonical), stack.size())) {
                cycle.add(p.getFileName().toString());
            }
            cycle.add(canonical.getFileName().toString());
            var d = reporter.error(Code.CYCLIC_IMPORT, from, i.path().span(), "cyclic import of \"%s\"", relative);
            reporter.note(d, "cycle: " + String.join(" -> ", cycle));
            return;
        }
        if (loaded.containsKey(canonical)) {
            return; // already imported through another file
        }
        String shownName = Path.of(from.name()).getParent() == null ? relative : Path.of(from.name()).getParent().resolve(relative).normalize().toString();
        SourceFile imported;
        switch (SourceFile.read(target)) {
            case SourceFile.ReadResult.Failed f -> {
                var d = reporter.error(Code.IMPORT_NOT_FOUND, from, i.path().span(), "cannot import \"%s\": %s", relative, f.diagnostic().message());
                return;
            }
            case SourceFile.ReadResult.Ok ok -> imported = new SourceFile(shownName, ok.source().text());
        }
        ParseResult parsed = DslParser.parse(imported);
        reporter.addAll(parsed.diagnostics());
        if (parsed.file().isEmpty()) {
            return;
        }
        loaded.put(canonical, parsed.file().get());
        stack.add(canonical);
        declare(imported, parsed.file().get(), stack, false);
        stack.removeLast();
    }

    private static Optional<Path> canonical(SourceFile source) {
        try {
            Path p = Path.of(source.name());
            return Files.exists(p) ? Optional.of(p.toRealPath()) : Optional.empty();
        } catch (IOException | java.nio.file.InvalidPathException | SecurityException e) {
            return Optional.empty();
        }
    }

    private static Optional<Path> canonical(Path p) {
        try {
            return Optional.of(p.toRealPath());
        } catch (IOException | SecurityException e) {
            return Optional.empty();
        }
    }
}
