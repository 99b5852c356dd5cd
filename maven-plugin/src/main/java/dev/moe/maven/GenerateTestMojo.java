package dev.moe.maven;

import java.io.File;
import java.nio.file.Path;
import org.apache.maven.plugins.annotations.LifecyclePhase;
import org.apache.maven.plugins.annotations.Mojo;
import org.apache.maven.plugins.annotations.Parameter;

/**
 * Generates a Java class for every model declared in the {@code .moe} files under
 * {@code src/test/moe}, for the tests only, and adds the output directory to the test compile source
 * roots. The package follows the subdirectory, as for {@code generate}.
 *
 * @since 0.1.0
 */
@Mojo(name = "generate-test", defaultPhase = LifecyclePhase.GENERATE_TEST_SOURCES, threadSafe = true)
public final class GenerateTestMojo extends AbstractGenerateMojo {
    /**
     * The root of the test {@code .moe} files. When the default directory does not exist the goal
     * does nothing; a configured directory that does not exist fails the build.
     *
     * @since 0.1.0
     */
    @Parameter(property = "moe.testSourceDirectory", defaultValue = "${project.basedir}/src/test/moe")
    File testSourceDirectory;

    /**
     * Where the generated test sources are written; added to the project's test compile source roots.
     *
     * @since 0.1.0
     */
    @Parameter(property = "moe.testOutputDirectory", defaultValue = "${project.build.directory}/generated-test-sources/moe")
    File testOutputDirectory;

    /**
     * Skips this goal along with the tests ({@code -Dmaven.test.skip=true}).
     *
     * @since 0.1.0
     */
    @Parameter(property = "maven.test.skip", defaultValue = "false")
    boolean skipTests;

    @Override
    File sourceDirectory() {
        return testSourceDirectory;
    }

    @Override
    Path defaultSourceDirectory() {
        return project.getBasedir().toPath().resolve("src/test/moe");
    }

    @Override
    File outputDirectory() {
        return testOutputDirectory;
    }

    @Override
    void addSourceRoot(String directory) {
        project.addTestCompileSourceRoot(directory);
    }

    @Override
    boolean skippedByGoal() {
        return skipTests;
    }
}
