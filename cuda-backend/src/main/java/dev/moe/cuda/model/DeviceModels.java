package dev.moe.cuda.model;

import com.palantir.javapoet.JavaFile;
import dev.moe.codegen.InMemoryCompiler;
import dev.moe.codegen.JavaGenerator;
import dev.moe.compiler.ir.Model;
import dev.moe.cuda.CudaContext;
import dev.moe.cuda.codegen.CudaModelGenerator;
import dev.moe.runtime.Backend;
import dev.moe.runtime.TrainableModel;
import java.util.List;

/** Builds device-resident models: the CPU-generated host class and its GPU twin, compiled together in memory. */
public final class DeviceModels {
    private DeviceModels() {}

    /** The compiled host class and device class of a model, ready to instantiate. */
    public record Classes(Class<?> host, Class<?> device) {
        /** A host instance on {@code backend} (CPU) and its device twin on {@code ctx}. */
        public DeviceModel create(CudaContext ctx, Backend backend) {
            try {
                TrainableModel h = (TrainableModel) host.getConstructor(Backend.class).newInstance(backend);
                return (DeviceModel) device.getConstructor(CudaContext.class, TrainableModel.class).newInstance(ctx, h);
            } catch (ReflectiveOperationException e) {
                throw new IllegalStateException("cannot instantiate the generated " + device.getSimpleName(), e);
            }
        }

        /** A plain CPU instance of the host class. */
        public TrainableModel createHost(Backend backend) {
            try {
                return (TrainableModel) host.getConstructor(Backend.class).newInstance(backend);
            } catch (ReflectiveOperationException e) {
                throw new IllegalStateException("cannot instantiate the generated " + host.getSimpleName(), e);
            }
        }
    }

    /** The two generated sources of {@code model}; IllegalArgumentException when it cannot run device-resident. */
    public static List<JavaFile> sources(Model model, String sourceName) {
        return List.of(JavaGenerator.generate(model, JavaGenerator.DEFAULT_PACKAGE, sourceName),
                CudaModelGenerator.generate(model, JavaGenerator.DEFAULT_PACKAGE, sourceName));
    }

    public static Classes compile(Model model, String sourceName) {
        List<JavaFile> files = sources(model, sourceName);
        ClassLoader loader = InMemoryCompiler.compile(files, DeviceModels.class.getClassLoader());
        try {
            return new Classes(loader.loadClass(files.get(0).packageName() + "." + files.get(0).typeSpec().name()),
                    loader.loadClass(files.get(1).packageName() + "." + files.get(1).typeSpec().name()));
        } catch (ClassNotFoundException e) {
            throw new IllegalStateException(e);
        }
    }
}
