package dev.moe.codegen;

import java.util.Locale;

/** Java identifiers for checkpoint names: {@code layers.3.moe.router.weight} → {@code l3MoeRouterWeight}. */
final class Names {
    private Names() {}

    static String field(String irName) {
        StringBuilder b = new StringBuilder();
        String[] parts = irName.split("\\.");
        for (int i = 0; i < parts.length; i++) {
            String p = parts[i];
            if (p.equals("layers") && i + 1 < parts.length && parts[i + 1].matches("\\d+")) {
                b.append(b.isEmpty() ? "l" : "L").append(parts[++i]);
                continue;
            }
            for (String w : p.split("_")) {
                if (w.isEmpty()) {
                    continue;
                }
                b.append(b.isEmpty() ? w.toLowerCase(Locale.ROOT) : Character.toUpperCase(w.charAt(0)) + w.substring(1));
            }
        }
        return b.toString();
    }

    static String type(String modelName) {
        String n = modelName.replaceAll("[^A-Za-z0-9_]", "_");
        return Character.isDigit(n.charAt(0)) ? "M" + n : Character.toUpperCase(n.charAt(0)) + n.substring(1);
    }

    static String constant(String name) {
        return name.replaceAll("([a-z0-9])([A-Z])", "$1_$2").replaceAll("[^A-Za-z0-9]", "_").toUpperCase(Locale.ROOT);
    }
}
