package dev.moe.maven;

import dev.moe.dsl.diag.Diagnostic;
import dev.moe.dsl.diag.DiagnosticRenderer;
import java.io.File;
import java.io.IOException;
import java.io.OutputStream;
import java.nio.file.Files;
import java.nio.file.Path;
import org.apache.maven.execution.MavenSession;
import org.apache.maven.plugin.AbstractMojo;
import org.apache.maven.plugin.MojoExecution;
import org.apache.maven.plugin.MojoExecutionException;
import org.apache.maven.plugin.MojoFailureException;
import org.apache.maven.plugin.descriptor.PluginDescriptor;
import org.apache.maven.plugins.annotations.Component;
import org.apache.maven.plugins.annotations.Parameter;
import org.apache.maven.project.MavenProject;
import org.codehaus.plexus.build.BuildContext;

/**
 * What {@code generate} and {@code generate-test} share: they differ only in their default
 * directories and the source root they register. The work is done by {@link Generation}.
 *
 * <p>A mistake in a {@code .moe} file is printed exactly as {@code moe check} prints it (once per
 * diagnostic, with an IDE marker through {@link BuildContext}) and fails the build with a
 * {@link MojoFailureException}; a fault of the plugin itself is a {@link MojoExecutionException}.
 */
abstract class AbstractGenerateMojo extends AbstractMojo {
    @Parameter(defaultValue = "${project}", readonly = true, required = true)
    MavenProject project;

    @Parameter(defaultValue = "${mojoExecution}", readonly = true, required = true)
    MojoExecution mojoExecution;

    @Parameter(defaultValue = "${plugin}", readonly = true, required = true)
    PluginDescriptor plugin;

    @Parameter(defaultValue = "${session}", readonly = true, required = true)
    MavenSession session;

    @Component
    BuildContext buildContext;

    /**
     * Skip code generation (and do not register the output directory as a source root).
     *
     * @since 0.1.0
     */
    @Parameter(property = "moe.skip", defaultValue = "false")
    boolean skip;

    /**
     * Regenerate only what changed since the last successful run: a {@code .moe} file whose text, or
     * the text of a file it imports, changed, or whose outputs are missing. With {@code false} every
     * file is checked and generated again (unchanged outputs are still not rewritten).
     *
     * @since 0.1.0
     */
    @Parameter(property = "moe.incremental", defaultValue = "true")
    boolean incremental;

    /**
     * Fail the build when a {@code .moe} file has warnings, not only errors.
     *
     * @since 0.1.0
     */
    @Parameter(property = "moe.failOnWarnings", defaultValue = "false")
    boolean failOnWarnings;

    /** The configured source directory. */
    abstract File sourceDirectory();

    /** Where the source directory is when nobody configured it. */
    abstract Path defaultSourceDirectory();

    abstract File outputDirectory();

    abstract void addSourceRoot(String directory);

    /** Whether this goal is skipped for a reason of its own (the test goal honours {@code maven.test.skip}). */
    boolean skippedByGoal() {
        return false;
    }

    @Override
    public void execute() throws MojoExecutionException, MojoFailureException {
        if (skip || skippedByGoal()) {
            getLog().info("moe: skipped");
            return;
        }
        Path sources = sourceDirectory().toPath().toAbsolutePath().normalize();
        if (!Files.isDirectory(sources)) {
            if (sources.equals(defaultSourceDirectory().toAbsolutePath().normalize())) {
                getLog().info("moe: no .moe files to compile in " + sources);
                return;
            }
            throw new MojoFailureException("moe: the configured source directory " + sources + " does not exist");
        }
        Path output = outputDirectory().toPath().toAbsolutePath().normalize();
        Path state = Path.of(project.getBuild().getDirectory(), "moe-maven-plugin", mojoExecution.getGoal(), mojoExecution.getExecutionId(),
                "state.tsv");
        Generation.Request request = new Generation.Request(sources, output, state, incremental, toolVersion());
        // On the command line the default context logs every message itself, in a format of its own;
        // the log already has the CLI's text, so markers go only to an IDE's context.
        boolean markers = !(buildContext instanceof org.codehaus.plexus.build.DefaultBuildContext);
        Generation.Result result;
        try {
            result = Generation.run(request, new Generation.Listener() {
                @Override
                public void checking(Path source) {
                    buildContext.removeMessages(source.toFile());
                }

                @Override
                public void diagnostic(Path file, Diagnostic d) {
                    String text = DiagnosticRenderer.render(d).stripTrailing();
                    int line = d.span() == null ? 0 : d.span().line();
                    int column = d.span() == null ? 0 : d.span().column();
                    if (d.isError()) {
                        getLog().error(text);
                    } else {
                        getLog().warn(text);
                    }
                    if (markers) {
                        buildContext.addMessage(file.toFile(), line, column, d.message() + " [" + d.code().id() + "]",
                                d.isError() ? BuildContext.SEVERITY_ERROR : BuildContext.SEVERITY_WARNING, null);
                    }
                }

                @Override
                public void problem(Path file, String message) {
                    getLog().error(message);
                    if (markers) {
                        buildContext.addMessage(file.toFile(), 0, 0, message, BuildContext.SEVERITY_ERROR, null);
                    }
                }

                @Override
                public OutputStream newOutputStream(Path file) throws IOException {
                    return buildContext.newFileOutputStream(file.toFile());
                }
            });
        } catch (IOException e) {
            throw new MojoExecutionException("moe: cannot generate sources from " + sources + ": " + e.getMessage(), e);
        } catch (RuntimeException | StackOverflowError e) {
            throw new MojoExecutionException("moe: internal error in moe-maven-plugin (a bug in moe, please report it): " + e, e);
        }
        if (result.errors() > 0 || (failOnWarnings && result.warnings() > 0)) {
            throw new MojoFailureException(String.format("moe: %s in the .moe files under %s", count(result.errors(), "error")
                    + (result.warnings() > 0 ? ", " + count(result.warnings(), "warning") : ""), sources));
        }
        if (result.sources() == 0) {
            getLog().info("moe: no .moe files to compile in " + sources);
        } else if (result.checked() == 0) {
            getLog().info("moe: " + count(result.sources(), ".moe file") + " up to date");
        } else {
            getLog().info(String.format("moe: checked %s, wrote %s to %s%s", count(result.checked(), ".moe file"),
                    count(result.written().size(), "Java file"), output, result.upToDate() > 0 ? " (" + result.upToDate() + " up to date)" : ""));
        }
        if (!result.deleted().isEmpty()) {
            getLog().info("moe: deleted " + count(result.deleted().size(), "stale Java file"));
            result.deleted().forEach(f -> buildContext.refresh(f.toFile())); // so that an IDE drops them too
        }
        addSourceRoot(output.toString());
    }

    /** The plugin's version, and for snapshots the build of the generator, so that a new generator regenerates. */
    private String toolVersion() {
        String version = plugin == null ? "unknown" : plugin.getVersion();
        try {
            var location = dev.moe.codegen.JavaGenerator.class.getProtectionDomain().getCodeSource().getLocation();
            Path jar = Path.of(location.toURI());
            if (Files.isRegularFile(jar)) {
                version += "+" + Files.size(jar) + "." + Files.getLastModifiedTime(jar).toMillis();
            }
        } catch (Exception e) {
            // no code source to stamp: the version alone decides
        }
        return version;
    }

    private static String count(int n, String noun) {
        return n + " " + noun + (n == 1 ? "" : "s");
    }
}
