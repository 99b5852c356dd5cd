package dev.moe.compiler.ir;

import static com.google.common.truth.Truth.assertThat;

import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import org.junit.jupiter.api.Test;

/**
 * A recipe's mixture and domains keep their declared order: the data stream draws domains in that
 * order, so an order that changed from JVM to JVM (as {@code Map.copyOf}'s does) would give a resumed
 * run, or another rank of a data-parallel run, other batches for the same seed.
 */
class TrainingOrderTest {

    @Test
    void mixtureAndDomainsIterateInTheRecipesOrder() {
        Map<String, Double> mixture = new LinkedHashMap<>();
        Map<String, String> domains = new LinkedHashMap<>();
        List<String> names = List.of("zeta", "alpha", "mu", "beta", "omega", "gamma", "kappa", "delta", "pi", "epsilon", "rho", "eta");
        for (String n : names) {
            mixture.put(n, 1.0 / names.size());
            domains.put(n, n + ".txt");
        }
        Training.Data data = new Training.Data(mixture);
        assertThat(List.copyOf(data.mixture().keySet())).isEqualTo(names);
        assertThat(Training.ordered(domains).keySet()).containsExactlyElementsIn(names).inOrder();
        mixture.put("late", 0.0);
        assertThat(data.mixture()).doesNotContainKey("late"); // a copy, not a view
    }
}
