package dev.moe.codegen;

import com.palantir.javapoet.JavaFile;
import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.io.OutputStream;
import java.io.StringWriter;
import java.net.URI;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import javax.tools.DiagnosticCollector;
import javax.tools.FileObject;
import javax.tools.ForwardingJavaFileManager;
import javax.tools.JavaCompiler;
import javax.tools.JavaFileManager;
import javax.tools.JavaFileObject;
import javax.tools.SimpleJavaFileObject;
import javax.tools.StandardJavaFileManager;
import javax.tools.ToolProvider;

/**
 * Compiles generated sources in memory with javax.tools and loads them. The generated classes see
 * the runtime through the current class path; warnings are errors ({@code -Xlint:all -Werror}), so
 * a generator change that produces sloppy code fails loudly.
 */
public final class InMemoryCompiler {
    private InMemoryCompiler() {}

    /** Thrown when generated code does not compile: a bug in the generator, not in the user's file. */
    public static final class CompilationFailed extends RuntimeException {
        public CompilationFailed(String message) {
            super(message);
        }
    }

    public static ClassLoader compile(List<JavaFile> files, ClassLoader parent) {
        return load(compileToBytes(files), parent);
    }

    /** A class loader over compiled classes (binary name to class file bytes). */
    public static ClassLoader load(Map<String, byte[]> classes, ClassLoader parent) {
        Map<String, byte[]> copy = Map.copyOf(classes);
        return new ClassLoader(parent) {
            @Override
            protected Class<?> findClass(String name) throws ClassNotFoundException {
                byte[] b = copy.get(name);
                if (b == null) {
                    throw new ClassNotFoundException(name);
                }
                return defineClass(name, b, 0, b.length);
            }
        };
    }

    /** Compiles the files; returns each class's bytes by binary name. */
    public static Map<String, byte[]> compileToBytes(List<JavaFile> files) {
        JavaCompiler javac = ToolProvider.getSystemJavaCompiler();
        if (javac == null) {
            throw new IllegalStateException("no Java compiler in this runtime: run moe on a JDK, not a JRE");
        }
        List<JavaFileObject> sources = new ArrayList<>();
        for (JavaFile f : files) {
            String name = f.packageName().isEmpty() ? f.typeSpec().name() : f.packageName() + "." + f.typeSpec().name();
            String text = f.toString();
            sources.add(new SimpleJavaFileObject(URI.create("string:///" + name.replace('.', '/') + ".java"), JavaFileObject.Kind.SOURCE) {
                @Override
                public CharSequence getCharContent(boolean ignoreEncodingErrors) {
                    return text;
                }
            });
        }
        Map<String, ByteArrayOutputStream> classes = new HashMap<>();
        DiagnosticCollector<JavaFileObject> diagnostics = new DiagnosticCollector<>();
        StandardJavaFileManager standard = javac.getStandardFileManager(diagnostics, null, null);
        JavaFileManager manager = new ForwardingJavaFileManager<>(standard) {
            @Override
            public JavaFileObject getJavaFileForOutput(Location location, String className, JavaFileObject.Kind kind, FileObject sibling) {
                return new SimpleJavaFileObject(URI.create("mem:///" + className.replace('.', '/') + ".class"), kind) {
                    @Override
                    public OutputStream openOutputStream() {
                        ByteArrayOutputStream out = new ByteArrayOutputStream();
                        classes.put(className, out);
                        return out;
                    }
                };
            }
        };
        List<String> options = List.of("-Xlint:all", "-Werror", "-proc:none", "--release", "25", "-classpath", System.getProperty("java.class.path"));
        StringWriter log = new StringWriter();
        boolean ok = javac.getTask(log, manager, diagnostics, options, null, sources).call();
        try {
            manager.close();
        } catch (IOException ignored) {
            // in-memory manager: nothing to release
        }
        if (!ok) {
            StringBuilder message = new StringBuilder("generated code does not compile (a bug in moe's code generator):\n");
            diagnostics.getDiagnostics().forEach(d -> message.append(d).append('\n'));
            message.append(log);
            throw new CompilationFailed(message.toString());
        }
        Map<String, byte[]> out = new HashMap<>();
        classes.forEach((name, bytes) -> out.put(name, bytes.toByteArray()));
        return out;
    }
}
