package dev.moe.codegen;

import static com.google.common.truth.Truth.assertThat;
import static com.google.common.truth.Truth.assertWithMessage;

import com.palantir.javapoet.JavaFile;
import dev.moe.compiler.MoeCompiler;
import dev.moe.compiler.ir.CompiledFile;
import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.security.MessageDigest;
import java.security.NoSuchAlgorithmException;
import java.util.ArrayList;
import java.util.HexFormat;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.TreeSet;
import java.util.stream.Stream;
import javax.tools.Diagnostic;
import javax.tools.DiagnosticCollector;
import javax.tools.JavaCompiler;
import javax.tools.JavaFileObject;
import javax.tools.StandardJavaFileManager;
import javax.tools.ToolProvider;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.MethodSource;

/**
 * The generated Java sources of the shipped recipes, pinned as golden files, plus the properties
 * every generated source must have: generating twice gives the same bytes, and the sources compile
 * warning-free.
 *
 * <p>Goldens follow Dagger's {@code GoldenFileRule} layout: {@code
 * src/test/resources/goldens/GeneratedSourcesGoldenTest/<recipe file>/<fully.qualified.Name>.java}.
 * After an intended generator change, regenerate them with
 *
 * <pre>./mvnw -o -pl codegen test -Dtest=GeneratedSourcesGoldenTest -Dbless=true</pre>
 *
 * and review the diff of the goldens like any other code change. Blessing also deletes goldens that
 * no generated class matches any more.
 */
class GeneratedSourcesGoldenTest {
    /** Relative to the module directory, surefire's working directory. */
    private static final Path RECIPES = Path.of("../recipes");

    private static final Path GOLDENS = Path.of("src/test/resources/goldens", GeneratedSourcesGoldenTest.class.getSimpleName());

    /** The recipes the generator supports today. */
    static List<String> supportedRecipes() {
        return List.of("mixtral.moe", "deepseek-moe.moe", "moe-plus-plus.moe");
    }

    private static boolean blessing() {
        return Boolean.parseBoolean(System.getProperty("bless", "false"));
    }

    /** A fresh compile and generation each call: nothing is cached between calls. */
    private static List<JavaFile> generate(String recipe) {
        CompiledFile compiled = MoeCompiler.compile(RECIPES.resolve(recipe)).orThrow();
        return JavaGenerator.generate(compiled, JavaGenerator.DEFAULT_PACKAGE);
    }

    private static String qualifiedName(JavaFile f) {
        return f.packageName().isEmpty() ? f.typeSpec().name() : f.packageName() + "." + f.typeSpec().name();
    }

    /** Sources by fully qualified class name, in generation order. */
    private static Map<String, String> sources(String recipe) {
        Map<String, String> out = new LinkedHashMap<>();
        for (JavaFile f : generate(recipe)) {
            String previous = out.put(qualifiedName(f), f.toString());
            assertWithMessage("%s generates two classes named %s", recipe, qualifiedName(f)).that(previous).isNull();
        }
        return out;
    }

    // ---- 1. goldens ----

    @ParameterizedTest
    @MethodSource("supportedRecipes")
    void sourcesMatchGoldens(String recipe) throws IOException {
        Map<String, String> generated = sources(recipe);
        assertWithMessage("%s generates no classes", recipe).that(generated).isNotEmpty();
        Path dir = GOLDENS.resolve(recipe);
        List<String> problems = new ArrayList<>();
        for (Map.Entry<String, String> e : generated.entrySet()) {
            Path golden = dir.resolve(e.getKey() + ".java");
            if (blessing()) {
                Files.createDirectories(dir);
                if (!Files.exists(golden) || !Files.readString(golden, StandardCharsets.UTF_8).equals(e.getValue())) {
                    Files.writeString(golden, e.getValue(), StandardCharsets.UTF_8);
                }
                continue;
            }
            if (!Files.exists(golden)) {
                problems.add("missing golden for " + e.getKey() + ": create " + golden.toAbsolutePath().normalize()
                        + " (run with -Dbless=true to write it)");
                continue;
            }
            String expected = Files.readString(golden, StandardCharsets.UTF_8);
            if (!expected.equals(e.getValue())) {
                // Truth prints a line diff of the two texts.
                assertWithMessage("%s differs from its golden %s; if the change is intended, rerun with -Dbless=true and review the diff", e.getKey(),
                        golden.toAbsolutePath().normalize()).that(e.getValue()).isEqualTo(expected);
            }
        }
        for (Path stale : goldensIn(dir)) {
            String name = stale.getFileName().toString().replaceFirst("\\.java$", "");
            if (generated.containsKey(name)) {
                continue;
            }
            if (blessing()) {
                Files.delete(stale);
            } else {
                problems.add("stale golden: " + recipe + " no longer generates " + name + "; delete " + stale.toAbsolutePath().normalize()
                        + " (or run with -Dbless=true)");
            }
        }
        assertWithMessage("goldens of %s", recipe).that(problems).isEmpty();
    }

    private static List<Path> goldensIn(Path dir) throws IOException {
        if (!Files.isDirectory(dir)) {
            return List.of();
        }
        try (Stream<Path> files = Files.list(dir)) {
            return files.filter(p -> p.getFileName().toString().endsWith(".java")).sorted().toList();
        }
    }

    @Test
    void everyGoldenDirectoryIsARecipeUnderTest() throws IOException {
        // A golden directory whose recipe was renamed or dropped from the list above would never be checked.
        if (!Files.isDirectory(GOLDENS)) {
            return; // nothing blessed yet: sourcesMatchGoldens names the files to create
        }
        TreeSet<String> orphans = new TreeSet<>();
        try (Stream<Path> entries = Files.list(GOLDENS)) {
            entries.filter(Files::isDirectory).forEach(p -> orphans.add(p.getFileName().toString()));
        }
        orphans.removeAll(supportedRecipes());
        assertWithMessage("golden directories under %s with no recipe under test", GOLDENS.toAbsolutePath().normalize()).that(orphans).isEmpty();
    }

    @Test
    void goldenNamesArePackageAndModelClass() {
        assertThat(sources("mixtral.moe").keySet()).containsExactly(JavaGenerator.DEFAULT_PACKAGE + ".MixtralTiny");
        assertThat(sources("deepseek-moe.moe").keySet()).containsExactly(JavaGenerator.DEFAULT_PACKAGE + ".DeepSeekMoETiny");
        assertThat(sources("moe-plus-plus.moe").keySet()).containsExactly(JavaGenerator.DEFAULT_PACKAGE + ".MoEPlusPlusTiny");
    }

    // ---- 2. determinism ----

    @ParameterizedTest
    @MethodSource("supportedRecipes")
    void generatingTwiceIsByteIdentical(String recipe) {
        Map<String, String> first = sources(recipe);
        Map<String, String> second = sources(recipe);
        assertThat(second.keySet()).containsExactlyElementsIn(first.keySet()).inOrder();
        for (String name : first.keySet()) {
            assertWithMessage("SHA-256 of %s", name).that(sha256(second.get(name))).isEqualTo(sha256(first.get(name)));
        }
    }

    private static String sha256(String text) {
        try {
            return HexFormat.of().formatHex(MessageDigest.getInstance("SHA-256").digest(text.getBytes(StandardCharsets.UTF_8)));
        } catch (NoSuchAlgorithmException e) {
            throw new AssertionError(e);
        }
    }

    // ---- 3. the sources compile cleanly ----

    /** InMemoryCompiler's flags: every lint, warnings as errors, no annotation processing, Java 25. */
    private static final List<String> STRICT = List.of("-Xlint:all", "-Werror", "-proc:none", "--release", "25");

    @ParameterizedTest
    @MethodSource("supportedRecipes")
    void compilesInMemoryWithWarningsAsErrors(String recipe) throws ClassNotFoundException {
        List<JavaFile> files = generate(recipe);
        ClassLoader loader = InMemoryCompiler.compile(files, getClass().getClassLoader());
        for (JavaFile f : files) {
            assertThat(loader.loadClass(qualifiedName(f)).getName()).isEqualTo(qualifiedName(f));
        }
    }

    @ParameterizedTest
    @MethodSource("supportedRecipes")
    void compilesWithSystemJavacWithoutAnyDiagnostic(String recipe, @TempDir Path tmp) throws IOException {
        List<JavaFile> files = generate(recipe);
        Path src = tmp.resolve("src");
        Path classes = Files.createDirectories(tmp.resolve("classes"));
        JavaGenerator.write(files, src);
        List<Path> written = new ArrayList<>();
        for (JavaFile f : files) {
            Path p = src.resolve(qualifiedName(f).replace('.', '/') + ".java");
            assertWithMessage("JavaGenerator.write puts %s at %s", qualifiedName(f), p).that(Files.exists(p)).isTrue();
            written.add(p);
        }
        JavaCompiler javac = ToolProvider.getSystemJavaCompiler();
        assertWithMessage("tests must run on a JDK").that(javac).isNotNull();
        DiagnosticCollector<JavaFileObject> diagnostics = new DiagnosticCollector<>();
        List<String> options = new ArrayList<>(STRICT);
        options.addAll(List.of("-encoding", "UTF-8", "-classpath", System.getProperty("java.class.path"), "-d", classes.toString()));
        boolean ok;
        try (StandardJavaFileManager fm = javac.getStandardFileManager(diagnostics, Locale.ROOT, StandardCharsets.UTF_8)) {
            ok = javac.getTask(null, fm, diagnostics, options, null, fm.getJavaFileObjectsFromPaths(written)).call();
        }
        List<String> reported = diagnostics.getDiagnostics().stream().map(GeneratedSourcesGoldenTest::describe).toList();
        assertWithMessage("javac %s on %s", String.join(" ", STRICT), recipe).that(reported).isEmpty();
        assertThat(ok).isTrue();
        for (JavaFile f : files) {
            assertThat(Files.exists(classes.resolve(qualifiedName(f).replace('.', '/') + ".class"))).isTrue();
        }
    }

    private static String describe(Diagnostic<? extends JavaFileObject> d) {
        String where = d.getSource() == null ? "" : Path.of(d.getSource().toUri()).getFileName() + ":" + d.getLineNumber() + ": ";
        return where + d.getKind() + " [" + d.getCode() + "] " + d.getMessage(Locale.ROOT);
    }
}
