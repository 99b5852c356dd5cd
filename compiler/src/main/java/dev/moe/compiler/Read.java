package dev.moe.compiler;

import dev.moe.dsl.SourceFile;
import dev.moe.dsl.Span;
import dev.moe.dsl.ast.Setting;
import dev.moe.dsl.diag.Code;
import java.util.ArrayList;
import java.util.Collection;
import java.util.HashMap;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Optional;
import java.util.OptionalDouble;
import java.util.OptionalInt;
import java.util.Set;
import java.util.function.Function;

/**
 * Typed reading of values with a diagnostic for each mistake. Every method returns empty after
 * reporting, and stays silent for {@link Value.Invalid} (already reported).
 */
final class Read {
    private final Reporter reporter;
    private java.util.Collection<String> constants = List.of();

    Read(Reporter reporter) {
        this.reporter = reporter;
    }

    /** The constants in scope, to suggest one when a name stands where a number belongs. */
    void constants(java.util.Collection<String> names) {
        this.constants = names;
    }

    Reporter reporter() {
        return reporter;
    }

    OptionalInt integer(Value v, String what, long min, long max) {
        if (v instanceof Value.Invalid) {
            return OptionalInt.empty();
        }
        if (!(v instanceof Value.Num n) || !n.integral()) {
            wrongType(v, what, "an integer");
            return OptionalInt.empty();
        }
        if (n.value() < min || n.value() > max) {
            reporter.error(Code.OUT_OF_RANGE, v, "`%s` must be %s, found %s", what, range(min, max), v.show());
            return OptionalInt.empty();
        }
        return OptionalInt.of((int) n.value());
    }

    OptionalInt positive(Value v, String what) {
        return integer(v, what, 1, Integer.MAX_VALUE);
    }

    Optional<Long> longInteger(Value v, String what, long min) {
        if (v instanceof Value.Invalid) {
            return Optional.empty();
        }
        if (!(v instanceof Value.Num n) || !n.integral()) {
            wrongType(v, what, "an integer");
            return Optional.empty();
        }
        if (n.value() < min) {
            reporter.error(Code.OUT_OF_RANGE, v, "`%s` must be at least %d, found %s", what, min, v.show());
            return Optional.empty();
        }
        return Optional.of((long) n.value());
    }

    /** A number in a range; {@code lowOpen}/{@code highOpen} exclude the bounds. */
    OptionalDouble number(Value v, String what, double low, boolean lowOpen, double high, boolean highOpen) {
        if (v instanceof Value.Invalid) {
            return OptionalDouble.empty();
        }
        if (!(v instanceof Value.Num n)) {
            wrongType(v, what, "a number");
            return OptionalDouble.empty();
        }
        double x = n.value();
        boolean ok = (lowOpen ? x > low : x >= low) && (highOpen ? x < high : x <= high);
        if (!ok) {
            reporter.error(Code.OUT_OF_RANGE, v, "`%s` must be in %s%s, %s%s, found %s", what, lowOpen ? "(" : "[", fmt(low), fmt(high),
                    highOpen ? ")" : "]", v.show());
            return OptionalDouble.empty();
        }
        return OptionalDouble.of(x);
    }

    OptionalDouble nonNegative(Value v, String what) {
        return number(v, what, 0, false, Double.POSITIVE_INFINITY, true);
    }

    OptionalDouble positiveNumber(Value v, String what) {
        return number(v, what, 0, true, Double.POSITIVE_INFINITY, true);
    }

    Optional<Boolean> bool(Value v, String what) {
        return word(v, what, Map.of("true", Boolean.TRUE, "false", Boolean.FALSE));
    }

    Optional<String> string(Value v, String what) {
        if (v instanceof Value.Invalid) {
            return Optional.empty();
        }
        if (v instanceof Value.Str s) {
            return Optional.of(s.value());
        }
        wrongType(v, what, "a string");
        return Optional.empty();
    }

    /** One of a fixed set of words, e.g. {@code softmax}. */
    <T> Optional<T> word(Value v, String what, Map<String, T> choices) {
        if (v instanceof Value.Invalid) {
            return Optional.empty();
        }
        if (v instanceof Value.Word w && choices.containsKey(w.name())) {
            return Optional.of(choices.get(w.name()));
        }
        String found = v instanceof Value.Word w ? "`" + w.name() + "`" : v.kind();
        var d = reporter.error(Code.WRONG_TYPE, v, "`%s` must be one of %s, found %s", what, Reporter.oneOf(choices.keySet()), found);
        if (v instanceof Value.Word w) {
            Reporter.closest(w.name(), choices.keySet()).ifPresent(c -> reporter.help(d, "did you mean `" + c + "`?"));
        }
        return Optional.empty();
    }

    void wrongType(Value v, String what, String expected) {
        if (v instanceof Value.Invalid) {
            return;
        }
        if (v instanceof Value.Word w && (expected.startsWith("an integer") || expected.startsWith("a number"))) {
            // A name where a number belongs is almost always a misspelt constant.
            var d = reporter.error(Code.UNKNOWN_NAME, v, "unknown constant `%s` (`%s` must be %s)", w.name(), what, expected);
            Reporter.closest(w.name(), constants).ifPresent(c -> reporter.help(d, "did you mean `" + c + "`?"));
            return;
        }
        reporter.error(Code.WRONG_TYPE, v, "`%s` must be %s, found %s", what, expected, v.kind());
    }

    /** A list of values read one by one; empty on the first failure. */
    <T> Optional<List<T>> list(Value v, String what, Function<Value, Optional<T>> item) {
        if (v instanceof Value.Invalid) {
            return Optional.empty();
        }
        if (!(v instanceof Value.ListV l)) {
            wrongType(v, what, "a list `[...]`");
            return Optional.empty();
        }
        List<T> out = new ArrayList<>();
        boolean ok = true;
        for (Value i : l.items()) {
            Optional<T> t = item.apply(i);
            if (t.isPresent()) {
                out.add(t.get());
            } else {
                ok = false;
            }
        }
        return ok ? Optional.of(out) : Optional.empty();
    }

    // ---- calls ----

    /**
     * The arguments of a call, checked against the parameters it takes. {@code positional} names the
     * parameter(s) that may be given without a name, in order.
     */
    Optional<Args> args(Value.Call call, List<String> required, List<String> optional, List<String> positional) {
        Map<String, Value> values = new LinkedHashMap<>();
        Map<String, Span> spans = new HashMap<>();
        List<String> all = new ArrayList<>(required);
        all.addAll(optional);
        boolean ok = true;
        int nextPositional = 0;
        for (Value.Arg a : call.args()) {
            String name;
            Span span;
            if (a.name().isPresent()) {
                name = a.name().get();
                span = a.nameSpan().orElse(a.span());
                if (!all.contains(name)) {
                    var d = reporter.error(Code.BAD_ARGUMENTS, call.source(), span, "`%s` takes no argument `%s`", call.callee(), name);
                    String s = Reporter.suggestion(name, all);
                    if (s != null) {
                        reporter.help(d, s);
                    }
                    ok = false;
                    continue;
                }
            } else {
                span = a.span();
                if (nextPositional >= positional.size()) {
                    var d = reporter.error(Code.BAD_ARGUMENTS, call.source(), span, "`%s` takes no positional argument here", call.callee());
                    reporter.help(d, "name the argument: " + Reporter.oneOf(all.stream().map(x -> x + ":").toList()));
                    ok = false;
                    continue;
                }
                name = positional.get(nextPositional++);
            }
            if (values.containsKey(name)) {
                reporter.error(Code.BAD_ARGUMENTS, call.source(), span, "argument `%s` of `%s` given twice", name, call.callee());
                ok = false;
                continue;
            }
            values.put(name, a.value());
            spans.put(name, span);
        }
        boolean misspelt = !ok;
        for (String r : required) {
            if (!values.containsKey(r) && !misspelt) {
                reporter.error(Code.BAD_ARGUMENTS, call.source(), call.calleeSpan(), "`%s` needs the argument `%s`", call.callee(), r);
                ok = false;
            }
        }
        return ok ? Optional.of(new Args(call, values)) : Optional.empty();
    }

    /** A call to one of {@code callees}, or a bare word naming one (read as a call without arguments). */
    Optional<Value.Call> callOf(Value v, String what, Collection<String> callees) {
        if (v instanceof Value.Invalid) {
            return Optional.empty();
        }
        if (v instanceof Value.Call c && callees.contains(c.callee())) {
            return Optional.of(c);
        }
        if (v instanceof Value.Word w && callees.contains(w.name())) {
            return Optional.of(new Value.Call(w.span(), w.source(), w.name(), w.span(), List.of()));
        }
        String found = v instanceof Value.Call c ? "`" + c.callee() + "(...)`" : v instanceof Value.Word w ? "`" + w.name() + "`" : v.kind();
        var d = reporter.error(Code.WRONG_TYPE, v, "`%s` must be one of %s, found %s", what, Reporter.oneOf(callees), found);
        String name = v instanceof Value.Call c ? c.callee() : v instanceof Value.Word w ? w.name() : null;
        if (name != null) {
            Reporter.closest(name, callees).ifPresent(c -> reporter.help(d, "did you mean `" + c + "`?"));
        }
        return Optional.empty();
    }

    record Args(Value.Call call, Map<String, Value> values) {
        Optional<Value> get(String name) {
            return Optional.ofNullable(values.get(name));
        }

        Value required(String name) {
            return values.get(name);
        }

        boolean has(String name) {
            return values.containsKey(name);
        }
    }

    // ---- settings blocks ----

    /**
     * The settings of one block, checked for unknown and repeated keys.
     *
     * @param repeatable keys that may appear more than once ({@code routed}, {@code balance}, ...)
     */
    SettingMap settings(List<Setting> settings, String block, Set<String> keys, Set<String> repeatable,
            Function<Setting, Value> eval) {
        Map<String, List<Setting>> byKey = new LinkedHashMap<>();
        Map<String, List<Value>> values = new LinkedHashMap<>();
        boolean unknown = false;
        for (Setting s : settings) {
            String key = s.key().text();
            SourceFile source = null;
            if (!keys.contains(key)) {
                Value evaluated = eval.apply(s);
                var d = reporter.error(Code.UNKNOWN_SETTING, evaluated.source(), s.key().span(), "unknown setting `%s` in %s", key, block);
                String hint = Reporter.suggestion(key, keys);
                if (hint != null) {
                    reporter.help(d, hint);
                }
                unknown = true;
                continue;
            }
            List<Setting> earlier = byKey.computeIfAbsent(key, k -> new ArrayList<>());
            Value evaluated = eval.apply(s);
            if (!earlier.isEmpty() && !repeatable.contains(key)) {
                var d = reporter.error(Code.DUPLICATE_SETTING, evaluated.source(), s.key().span(), "`%s` is given twice in %s", key, block);
                reporter.note(d, "first given at line " + earlier.getFirst().span().line());
                continue;
            }
            earlier.add(s);
            values.computeIfAbsent(key, k -> new ArrayList<>()).add(evaluated);
        }
        return new SettingMap(byKey, values, unknown);
    }

    record SettingMap(Map<String, List<Setting>> settings, Map<String, List<Value>> values, boolean hadUnknown) {
        /** Whether a key of this block was unknown (a typo): checks for missing keys then stay quiet. */
        @Override
        public boolean hadUnknown() {
            return hadUnknown;
        }

        Optional<Value> get(String key) {
            List<Value> v = values.get(key);
            return v == null || v.isEmpty() ? Optional.empty() : Optional.of(v.getFirst());
        }

        List<Value> all(String key) {
            return values.getOrDefault(key, List.of());
        }

        List<Setting> settingsOf(String key) {
            return settings.getOrDefault(key, List.of());
        }

        boolean has(String key) {
            return values.containsKey(key);
        }

        Optional<Span> keySpan(String key) {
            List<Setting> s = settings.get(key);
            return s == null || s.isEmpty() ? Optional.empty() : Optional.of(s.getFirst().key().span());
        }
    }

    private static String range(long min, long max) {
        if (max >= Integer.MAX_VALUE) {
            return min == 1 ? "a positive integer" : "at least " + min;
        }
        return "between " + min + " and " + max;
    }

    static String fmt(double v) {
        if (Double.isInfinite(v)) {
            return v > 0 ? "inf" : "-inf";
        }
        return Value.trimDouble(v);
    }
}
