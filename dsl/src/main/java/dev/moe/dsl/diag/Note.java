package dev.moe.dsl.diag;

/** A line under a diagnostic: {@code = note: ...} (context) or {@code = help: ...} (what to do). */
public record Note(Kind kind, String text) {
    public enum Kind {
        NOTE("note"),
        HELP("help");

        private final String label;

        Kind(String label) {
            this.label = label;
        }

        public String label() {
            return label;
        }
    }

    public static Note note(String text) {
        return new Note(Kind.NOTE, text);
    }

    public static Note help(String text) {
        return new Note(Kind.HELP, text);
    }
}
