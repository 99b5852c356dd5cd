package dev.moe.cuda;

import static com.google.common.truth.Truth.assertThat;
import static com.google.common.truth.Truth.assertWithMessage;

import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.HashSet;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import java.util.stream.Stream;
import org.junit.jupiter.api.Test;

/**
 * Every kernel launch in the backend's sources passes as many arguments as the kernel has parameters (in one of its
 * variants: parameters under {@code #if} in a signature are optional). A launch one argument short makes the driver read
 * past the argument list: an illegal address on the GPU or a crash in libcuda, which CI without a GPU would never see.
 * That happened once, when a kernel gained a parameter and one caller kept the old list; {@link CudaContext} also checks
 * each launch at run time against the driver's parameter sizes.
 */
class LaunchSitesTest {
    private static final Path SOURCES = Path.of("src/main/java/dev/moe/cuda");
    private static final Pattern KERNEL = Pattern.compile("__global__\\s+void\\s+(\\w+)\\s*\\(([^)]*)\\)", Pattern.DOTALL);
    /** A launch helper: {@code launch(..., String kernel|name, <config>..., Object... args)}. */
    private static final Pattern HELPER = Pattern.compile("void launch\\(([^)]*)Object\\.\\.\\. args\\)");

    @Test
    void everyLaunchPassesTheKernelsParameterCount() throws IOException {
        Map<String, Set<Integer>> arities = new HashMap<>();
        List<Path> files;
        try (Stream<Path> walk = Files.walk(SOURCES)) {
            files = walk.filter(p -> p.toString().endsWith(".java")).toList();
        }
        for (Path f : files) {
            Matcher m = KERNEL.matcher(Files.readString(f));
            while (m.find()) {
                arities.computeIfAbsent(m.group(1), k -> new HashSet<>()).addAll(arities(m.group(2)));
            }
        }
        assertThat(arities).containsKey("router_backward_balance");
        int context = configArguments(Files.readString(SOURCES.resolve("CudaContext.java")));
        List<String> mismatches = new ArrayList<>();
        int checked = 0;
        for (Path f : files) {
            String text = Files.readString(f);
            int own = configArguments(text);
            for (Call c : calls(text)) {
                int config = c.onContext() ? context : own;
                int at = -1;
                for (int i = 0; i < c.args().size(); i++) {
                    if (c.args().get(i).matches("\"\\w+\"")) {
                        at = i;
                        break;
                    }
                }
                List<String> kernelArgs = at < 0 ? List.of() : c.args().subList(Math.min(c.args().size(), at + 1 + config), c.args().size());
                String name = at < 0 ? null : c.args().get(at).replace("\"", "");
                if (name == null || config < 0 || !arities.containsKey(name) || kernelArgs.stream().anyMatch(a -> a.contains("concat(") || a.equals("args"))) {
                    continue; // a forwarding helper, a computed argument list or a kernel defined elsewhere: not countable here
                }
                checked++;
                if (!arities.get(name).contains(kernelArgs.size())) {
                    mismatches.add(f.getFileName() + ":" + c.line() + " " + name + " launched with " + kernelArgs.size() + " arguments; it takes "
                            + arities.get(name));
                }
            }
        }
        assertWithMessage("launches whose argument count fits no variant of their kernel").that(mismatches).isEmpty();
        assertThat(checked).isAtLeast(60);
    }

    /** The parameter counts a signature allows: those outside {@code #if} blocks, plus any subset of the blocks. */
    static Set<Integer> arities(String signature) {
        int base = 0;
        List<Integer> optional = new ArrayList<>();
        int inBlock = -1;
        for (String line : signature.split("\n")) {
            String l = line.strip();
            if (l.startsWith("#if")) {
                inBlock = 0;
                continue;
            }
            if (l.startsWith("#endif")) {
                optional.add(inBlock);
                inBlock = -1;
                continue;
            }
            int n = 0;
            for (String part : l.split(",")) {
                n += part.isBlank() ? 0 : 1;
            }
            if (inBlock >= 0) {
                inBlock += n;
            } else {
                base += n;
            }
        }
        Set<Integer> out = new HashSet<>();
        for (int mask = 0; mask < 1 << optional.size(); mask++) {
            int n = base;
            for (int i = 0; i < optional.size(); i++) {
                n += (mask >> i & 1) == 1 ? optional.get(i) : 0;
            }
            out.add(n);
        }
        return out;
    }

    /** The number of launch-configuration parameters between a file's launch helper's kernel name and its varargs, or -1. */
    static int configArguments(String text) {
        Matcher m = HELPER.matcher(text);
        if (!m.find()) {
            return -1;
        }
        String[] params = m.group(1).split(",");
        for (int i = 0; i < params.length; i++) {
            if (params[i].strip().matches("String (kernel|name)")) {
                int n = 0;
                for (int j = i + 1; j < params.length; j++) {
                    n += params[j].isBlank() ? 0 : 1;
                }
                return n;
            }
        }
        return -1;
    }

    record Call(int line, boolean onContext, List<String> args) {}

    /** Every {@code launch(...)} call (not declarations) with its top-level arguments. */
    static List<Call> calls(String text) {
        List<Call> out = new ArrayList<>();
        Matcher m = Pattern.compile("(ctx\\.)?\\blaunch\\(").matcher(text);
        while (m.find()) {
            int lineStart = text.lastIndexOf('\n', m.start()) + 1;
            String before = text.substring(lineStart, m.start());
            if (before.contains("void ") || before.strip().startsWith("*") || before.strip().startsWith("//")) {
                continue;
            }
            List<String> args = new ArrayList<>();
            int depth = 0, from = m.end();
            int i = m.end();
            for (; i < text.length(); i++) {
                char ch = text.charAt(i);
                if (ch == '"') {
                    i = text.indexOf('"', i + 1);
                } else if (ch == '(' || ch == '[' || ch == '{') {
                    depth++;
                } else if (ch == ')' || ch == ']' || ch == '}') {
                    if (depth == 0) {
                        break;
                    }
                    depth--;
                } else if (ch == ',' && depth == 0) {
                    args.add(text.substring(from, i).strip());
                    from = i + 1;
                }
            }
            String last = text.substring(from, i).strip();
            if (!last.isEmpty()) {
                args.add(last);
            }
            int line = (int) text.substring(0, m.start()).chars().filter(c -> c == '\n').count() + 1;
            out.add(new Call(line, m.group(1) != null, args));
        }
        return out;
    }

    @Test
    void optionalParameterBlocksGiveEachVariantsCount() {
        String sig = "const float* a, int n,\n#if CONST\n    , const float* mix, float* dz\n#endif\n    , float* out\n#if FP32\n    , float* o32\n#endif\n";
        assertThat(arities(sig)).containsExactly(3, 5, 4, 6);
    }
}
