package dev.moe.dsl;

/**
 * A region of a source file. Lines and columns are 1-based and counted in characters (a tab counts
 * as one column); the end column is exclusive, so a one-character token at column 5 is {@code 5..6}.
 */
public record Span(int line, int column, int endLine, int endColumn) {
    public static final Span START = new Span(1, 1, 1, 1);

    public Span {
        if (line < 1 || column < 1) {
            throw new IllegalArgumentException("span must start at line >= 1 and column >= 1: " + line + ":" + column);
        }
        if (endLine < line || (endLine == line && endColumn < column)) {
            throw new IllegalArgumentException("span ends before it starts: " + line + ":" + column + "-" + endLine + ":" + endColumn);
        }
    }

    public static Span point(int line, int column) {
        return new Span(line, column, line, column + 1);
    }

    /** The smallest span that covers both. */
    public Span to(Span other) {
        boolean startsFirst = line < other.line || (line == other.line && column <= other.column);
        boolean endsLast = endLine > other.endLine || (endLine == other.endLine && endColumn >= other.endColumn);
        Span first = startsFirst ? this : other;
        Span last = endsLast ? this : other;
        return new Span(first.line, first.column, last.endLine, last.endColumn);
    }

    @Override
    public String toString() {
        return line + ":" + column;
    }
}
