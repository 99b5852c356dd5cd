package dev.moe.dsl.ast;

import dev.moe.dsl.Span;
import java.lang.reflect.InvocationTargetException;
import java.lang.reflect.RecordComponent;
import java.util.List;
import java.util.Optional;

/**
 * Structural equality of syntax trees that ignores layout: spans and blank lines. Comments are
 * compared, since {@code moe fmt} must keep them. Used by round-trip tests and {@code moe fmt --check}.
 */
public final class AstEquivalence {
    private AstEquivalence() {}

    public static boolean equivalent(Object a, Object b) {
        return dev.moe.dsl.BigStack.call("moe-ast-compare", () -> same(a, b));
    }

    private static boolean same(Object a, Object b) {
        if (a == b) {
            return true;
        }
        if (a == null || b == null || a.getClass() != b.getClass()) {
            return false;
        }
        if (a instanceof Span) {
            return true;
        }
        if (a instanceof Trivia ta && b instanceof Trivia tb) {
            return ta.leadingComments().equals(tb.leadingComments()) && ta.trailingComment().equals(tb.trailingComment());
        }
        if (a instanceof Optional<?> oa && b instanceof Optional<?> ob) {
            return oa.isPresent() == ob.isPresent() && (oa.isEmpty() || same(oa.get(), ob.get()));
        }
        if (a instanceof List<?> la && b instanceof List<?> lb) {
            if (la.size() != lb.size()) {
                return false;
            }
            for (int i = 0; i < la.size(); i++) {
                if (!same(la.get(i), lb.get(i))) {
                    return false;
                }
            }
            return true;
        }
        if (a.getClass().isRecord()) {
            for (RecordComponent c : a.getClass().getRecordComponents()) {
                try {
                    if (!same(c.getAccessor().invoke(a), c.getAccessor().invoke(b))) {
                        return false;
                    }
                } catch (IllegalAccessException | InvocationTargetException e) {
                    throw new IllegalStateException("cannot read " + c, e);
                }
            }
            return true;
        }
        return a.equals(b);
    }
}
