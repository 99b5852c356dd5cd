package dev.moe.compiler.ir;

import java.util.List;

/**
 * One instantiated MoE (a definition with its parameters bound).
 *
 * @param name the definition's name, with arguments when it has parameters: {@code moepp(residual: false)}
 */
public record Moe(String name, List<ExpertGroup> groups, List<Router> routers, List<Loss> losses) {
    public Moe {
        groups = List.copyOf(groups);
        routers = List.copyOf(routers);
        losses = List.copyOf(losses);
    }

    public int routedExperts() {
        return groups.stream().filter(g -> g.role() == ExpertGroup.Role.ROUTED).mapToInt(ExpertGroup::count).sum();
    }

    public int sharedExperts() {
        return groups.stream().filter(g -> g.role() == ExpertGroup.Role.SHARED).mapToInt(ExpertGroup::count).sum();
    }

    /** True when the experts are attention experts (the MoE stands in a layer's mixer slot). */
    public boolean isAttention() {
        return groups.stream().anyMatch(g -> g.expert() instanceof Expert.Attention);
    }
}
