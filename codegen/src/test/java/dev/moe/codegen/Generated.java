package dev.moe.codegen;

import com.palantir.javapoet.JavaFile;
import dev.moe.compiler.MoeCompiler;
import dev.moe.compiler.ir.Model;
import dev.moe.dsl.SourceFile;
import dev.moe.runtime.Backend;
import dev.moe.runtime.TrainableModel;
import dev.moe.runtime.cpu.CpuBackend;
import java.nio.file.Path;
import java.util.List;

/** Test helper: from .moe text to a running generated model. */
final class Generated {
    private Generated() {}

    static Model model(String text) {
        return MoeCompiler.compile(new SourceFile("t.moe", text)).orThrow().models().getFirst();
    }

    static Model recipe(String file) {
        return MoeCompiler.compile(Path.of("../recipes").resolve(file)).orThrow().models().getFirst();
    }

    static TrainableModel instantiate(Model model, Backend backend) {
        JavaFile file = JavaGenerator.generate(model, JavaGenerator.DEFAULT_PACKAGE, "t.moe");
        ClassLoader loader = InMemoryCompiler.compile(List.of(file), Generated.class.getClassLoader());
        try {
            Class<?> type = loader.loadClass(JavaGenerator.DEFAULT_PACKAGE + "." + file.typeSpec().name());
            return (TrainableModel) type.getConstructor(Backend.class).newInstance(backend);
        } catch (ReflectiveOperationException e) {
            throw new AssertionError(e);
        }
    }

    static TrainableModel instantiate(Model model) {
        return instantiate(model, new CpuBackend(1, false));
    }
}
