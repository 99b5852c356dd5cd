package dev.moe.cli;

import dev.moe.compiler.ir.Count;
import java.math.BigDecimal;
import java.math.MathContext;
import java.math.RoundingMode;
import java.util.Locale;

/** Numbers for people: {@code 6.62M} parameters, {@code 4.6 MFLOP}, {@code 6,621,440}. */
final class Units {
    private static final String[] COUNT_UNITS = {"", "K", "M", "B", "T"};
    private static final String[] SI_PREFIXES = {"", "K", "M", "G", "T", "P", "E"};
    private static final String[] BINARY_UNITS = {"KiB", "MiB", "GiB", "TiB", "PiB"};
    private static final MathContext THREE_DIGITS = new MathContext(3, RoundingMode.HALF_EVEN);

    private Units() {}

    /** A count with 3 significant digits and K/M/B/T: {@code 512}, {@code 6.62M}, {@code 1.5B}. */
    static String count(double n) {
        return scaled(n, COUNT_UNITS, "");
    }

    /** FLOPs with 3 significant digits and an SI prefix: {@code 512 FLOP}, {@code 4.6 MFLOP}. */
    static String flops(double n) {
        return scaled(n, SI_PREFIXES, " ") + "FLOP";
    }

    /** A single value when fixed, else {@code min–max (expected e)}. */
    static String count(Count c) {
        return c.fixed() ? count(c.min()) : countSpan(c) + " (expected " + count(c.expected()) + ")";
    }

    /** A single value when fixed, else {@code min–max MFLOP (expected e MFLOP)}. */
    static String flops(Count c) {
        return c.fixed() ? flops(c.min()) : flopsSpan(c) + " (expected " + flops(c.expected()) + ")";
    }

    /** {@code 1.2M–3.4M}. */
    static String countSpan(Count c) {
        return count(c.min()) + "–" + count(c.max());
    }

    /** {@code 3.1–5.2 MFLOP}, or {@code 950 KFLOP–1.2 MFLOP} when the units differ. */
    static String flopsSpan(Count c) {
        String lo = flops(c.min());
        String hi = flops(c.max());
        String loUnit = lo.substring(lo.indexOf(' '));
        String hiUnit = hi.substring(hi.indexOf(' '));
        return loUnit.equals(hiUnit) ? lo.substring(0, lo.indexOf(' ')) + "–" + hi : lo + "–" + hi;
    }

    /** Memory with one decimal in binary units: {@code 512 bytes}, {@code 3.2 MiB}, {@code 1.5 GiB}. */
    static String bytes(long n) {
        if (n < 1024) {
            return n + " bytes";
        }
        double v = n / 1024.0;
        int unit = 0;
        // 1023.96 MiB reads 1.0 GiB, not 1024.0 MiB
        while (unit < BINARY_UNITS.length - 1 && v >= 1023.95) {
            v /= 1024;
            unit++;
        }
        return String.format(Locale.ROOT, "%.1f %s", v, BINARY_UNITS[unit]);
    }

    /** Every digit, grouped: {@code 6,621,440}. */
    static String exact(long n) {
        return String.format(Locale.ROOT, "%,d", n);
    }

    /** A setting's value as one would write it: {@code 1000000}, {@code 0.00001}, {@code 1e-8}, {@code 0.5}. */
    static String decimal(double v) {
        if (Double.isNaN(v) || Double.isInfinite(v)) {
            return Double.toString(v);
        }
        if (v == Math.rint(v) && Math.abs(v) < 1e15) {
            return Long.toString((long) v);
        }
        return BigDecimal.valueOf(v).stripTrailingZeros().toString().replace("E+", "e").replace('E', 'e');
    }

    /** {@code 34.9%}. */
    static String percent(double fraction) {
        return String.format(Locale.ROOT, "%.1f%%", 100 * fraction);
    }

    private static String scaled(double n, String[] units, String separator) {
        if (Double.isNaN(n) || Double.isInfinite(n)) {
            return Double.toString(n) + separator;
        }
        if (n == 0) {
            return "0" + separator;
        }
        String sign = n < 0 ? "-" : "";
        BigDecimal v = new BigDecimal(Math.abs(n)).round(THREE_DIGITS);
        int unit = 0;
        BigDecimal thousand = BigDecimal.valueOf(1000);
        while (unit < units.length - 1 && v.compareTo(thousand) >= 0) {
            v = v.movePointLeft(3).round(THREE_DIGITS);
            unit++;
        }
        return sign + v.stripTrailingZeros().toPlainString() + separator + units[unit];
    }
}
