package dev.moe.compiler;

import static com.google.common.truth.Truth.assertWithMessage;

import com.code_intelligence.jazzer.junit.FuzzTest;
import dev.moe.dsl.SourceFile;
import dev.moe.dsl.diag.Diagnostic;

/**
 * The whole front end (decode, parse, check) on arbitrary bytes. Nothing may escape but the
 * compiler's own failure, and that must carry at least one located diagnostic. In CI this replays
 * the seeds under {@code FrontEndFuzzTestInputs}; {@code JAZZER_FUZZ=1} fuzzes for real.
 */
class FrontEndFuzzTest {
    @FuzzTest(maxDuration = "90s")
    void frontEndNeverCrashes(byte[] input) {
        CompileResult result = switch (SourceFile.decode("fuzz.moe", input)) {
            case SourceFile.ReadResult.Failed f -> new CompileResult("fuzz.moe", java.util.Optional.empty(), java.util.List.of(f.diagnostic()));
            case SourceFile.ReadResult.Ok ok -> MoeCompiler.compile(ok.source());
        };
        try {
            result.orThrow();
        } catch (CompileFailure failure) {
            assertWithMessage("a failure carries diagnostics").that(failure.diagnostics()).isNotEmpty();
            for (Diagnostic d : failure.diagnostics()) {
                assertWithMessage("located: %s", d.headline()).that(d.span()).isNotNull();
                d.toString(); // rendering must not throw either
            }
        }
    }
}
