package dev.moe.cli;

import java.util.ArrayList;
import java.util.List;

/** Columns padded to their widest cell, two spaces apart, no trailing blanks. */
final class TextTable {
    enum Align { LEFT, RIGHT }

    private final List<String> header;
    private final List<Align> align;
    private final List<List<String>> rows = new ArrayList<>();

    TextTable(List<String> header, List<Align> align) {
        if (header.size() != align.size()) {
            throw new IllegalArgumentException("header and alignment differ in length");
        }
        this.header = List.copyOf(header);
        this.align = List.copyOf(align);
    }

    TextTable row(String... cells) {
        if (cells.length != header.size()) {
            throw new IllegalArgumentException("expected " + header.size() + " cells, got " + cells.length);
        }
        rows.add(List.of(cells));
        return this;
    }

    void render(StringBuilder out, String indent) {
        int[] width = new int[header.size()];
        for (int c = 0; c < width.length; c++) {
            width[c] = header.get(c).length();
            for (List<String> row : rows) {
                width[c] = Math.max(width[c], row.get(c).length());
            }
        }
        line(out, indent, header, width);
        for (List<String> row : rows) {
            line(out, indent, row, width);
        }
    }

    private void line(StringBuilder out, String indent, List<String> cells, int[] width) {
        StringBuilder b = new StringBuilder(indent);
        for (int c = 0; c < cells.size(); c++) {
            if (c > 0) {
                b.append("  ");
            }
            String cell = cells.get(c);
            String pad = " ".repeat(width[c] - cell.length());
            b.append(align.get(c) == Align.RIGHT ? pad + cell : cell + pad);
        }
        out.append(b.toString().stripTrailing()).append('\n');
    }
}
