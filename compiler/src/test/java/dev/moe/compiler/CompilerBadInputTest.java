package dev.moe.compiler;

import static com.google.common.truth.Truth.assertThat;

import dev.moe.dsl.diag.Code;
import dev.moe.dsl.diag.Diagnostic;
import dev.moe.dsl.diag.DiagnosticRenderer;
import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/** Inputs that never reach the parser: each is one diagnostic, rendered without a snippet. */
class CompilerBadInputTest {
    @TempDir
    Path dir;

    @Test
    void missingFile() {
        CompileResult r = MoeCompiler.compile(dir.resolve("absent.moe"));
        assertThat(r.ok()).isFalse();
        Diagnostic d = r.diagnostics().getFirst();
        assertThat(d.code()).isEqualTo(Code.CANNOT_READ);
        assertThat(DiagnosticRenderer.render(d)).isEqualTo(dir.resolve("absent.moe") + ": error: no such file `" + dir.resolve("absent.moe") + "` [MOE0010]\n");
    }

    @Test
    void directory() {
        CompileResult r = MoeCompiler.compile(dir);
        assertThat(r.diagnostics().getFirst().code()).isEqualTo(Code.CANNOT_READ);
        assertThat(r.diagnostics().getFirst().message()).contains("is a directory");
    }

    @Test
    void invalidUtf8PointsAtTheByte() throws IOException {
        Path f = dir.resolve("bad.moe");
        Files.write(f, new byte[] {'c', 'o', 'n', 's', 't', ' ', 'A', ' ', '=', ' ', (byte) 0xC3, '\n'});
        CompileResult r = MoeCompiler.compile(f);
        Diagnostic d = r.diagnostics().getFirst();
        assertThat(d.code()).isEqualTo(Code.INVALID_UTF8);
        assertThat(d.span().line()).isEqualTo(1);
        assertThat(d.span().column()).isEqualTo(11);
        assertThat(d.message()).contains("byte 0xc3 at offset 10");
    }

    @Test
    void failureCarriesDiagnostics() throws IOException {
        Path f = dir.resolve("x.moe");
        Files.writeString(f, "model M { vocab 0 }\n");
        CompileResult r = MoeCompiler.compile(f);
        CompileFailure failure = org.junit.jupiter.api.Assertions.assertThrows(CompileFailure.class, r::orThrow);
        assertThat(failure.diagnostics()).isNotEmpty();
        assertThat(failure.getMessage()).contains("[MOE");
    }
}
