package dev.moe.maven;

import java.io.File;
import java.nio.file.Path;
import org.apache.maven.plugins.annotations.LifecyclePhase;
import org.apache.maven.plugins.annotations.Mojo;
import org.apache.maven.plugins.annotations.Parameter;

/**
 * Generates a Java class for every model declared in the {@code .moe} files under
 * {@code src/main/moe}, and adds the output directory to the compile source roots. The package of
 * each class follows the file's subdirectory: {@code src/main/moe/com/example/tiny.moe} declares its
 * models in {@code com.example}.
 *
 * @since 0.1.0
 */
@Mojo(name = "generate", defaultPhase = LifecyclePhase.GENERATE_SOURCES, threadSafe = true)
public final class GenerateMojo extends AbstractGenerateMojo {
    /**
     * The root of the {@code .moe} files. When the default directory does not exist the goal does
     * nothing; a configured directory that does not exist fails the build.
     *
     * @since 0.1.0
     */
    @Parameter(property = "moe.sourceDirectory", defaultValue = "${project.basedir}/src/main/moe")
    File sourceDirectory;

    /**
     * Where the generated Java sources are written; added to the project's compile source roots.
     *
     * @since 0.1.0
     */
    @Parameter(property = "moe.outputDirectory", defaultValue = "${project.build.directory}/generated-sources/moe")
    File outputDirectory;

    @Override
    File sourceDirectory() {
        return sourceDirectory;
    }

    @Override
    Path defaultSourceDirectory() {
        return project.getBasedir().toPath().resolve("src/main/moe");
    }

    @Override
    File outputDirectory() {
        return outputDirectory;
    }

    @Override
    void addSourceRoot(String directory) {
        project.addCompileSourceRoot(directory);
    }
}
