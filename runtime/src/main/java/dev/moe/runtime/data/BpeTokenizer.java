package dev.moe.runtime.data;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Comparator;
import java.util.HashMap;
import java.util.Iterator;
import java.util.List;
import java.util.Map;
import java.util.function.UnaryOperator;
import java.util.regex.Matcher;
import java.util.regex.Pattern;

/**
 * A BPE tokenizer read from a Hugging Face {@code tokenizer.json}, in its two common forms.
 *
 * <p>Byte-level (GPT-2, Qwen, OLMo, Llama 3, DeepSeek): added tokens are split off first, the rest
 * is cut by the pre-tokenizer's regexes, each piece's UTF-8 bytes are mapped to printable
 * characters, and merges are applied lowest rank first. Decoding maps the characters back to bytes.
 *
 * <p>SentencePiece-style (Mistral, Mixtral, Llama 2, as transformers' converter writes them): the
 * normalizer prepends {@code ▁} and replaces spaces by it (or a {@code Metaspace} pre-tokenizer
 * does), pieces are characters, and a character outside the vocabulary falls back to its UTF-8
 * bytes as {@code <0xXX>} tokens. Decoding turns {@code ▁} back into spaces, byte tokens into bytes,
 * and strips the one leading space the normalizer added.
 *
 * <p>Supported: model {@code BPE} without dropout, {@code continuing_subword_prefix} or
 * {@code end_of_word_suffix}; normalizers {@code NFC}, {@code NFKC}, {@code Prepend},
 * {@code Replace} (in a {@code Sequence} too); pre-tokenizers {@code ByteLevel}, {@code Split}
 * ({@code Isolated}) and {@code Metaspace}, alone or in a {@code Sequence}. Anything else is refused
 * with a message naming the field. {@link #encode(String)} adds no special tokens (transformers'
 * {@code add_special_tokens=False}); {@link #encode(String, boolean)} applies the post-processor's
 * single-sequence template ({@code TemplateProcessing}, {@code BertProcessing}, {@code RobertaProcessing};
 * {@code ByteLevel} adds none). Added tokens are matched leftmost-longest as {@code tokenizers} does,
 * with {@code lstrip}/{@code rstrip} (the whitespace before/after the token is part of it) and
 * {@code single_word} (no word character, a letter, digit or {@code _}, touches the token). Immutable
 * and thread-safe.
 */
public final class BpeTokenizer {
    /** GPT-2's pre-tokenizer split, as the ByteLevel pre-tokenizer of {@code tokenizers} uses it. */
    private static final Pattern GPT2_SPLIT = Pattern.compile(
            "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+", Pattern.UNICODE_CHARACTER_CLASS);

    private static final char[] BYTE_TO_CHAR = new char[256];
    private static final Map<Character, Integer> CHAR_TO_BYTE = new HashMap<>();

    static {
        // GPT-2's bytes_to_unicode: printable bytes stand for themselves, the others for 256, 257, ...
        int next = 256;
        for (int b = 0; b < 256; b++) {
            boolean printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
            BYTE_TO_CHAR[b] = (char) (printable ? b : next++);
            CHAR_TO_BYTE.put(BYTE_TO_CHAR[b], b);
        }
    }

    /** An entry of {@code added_tokens}. */
    public record AddedToken(int id, String content, boolean special, boolean lstrip, boolean rstrip, boolean singleWord) {
        public AddedToken(int id, String content, boolean special) {
            this(id, content, special, false, false, false);
        }
    }

    /** The ids the post-processor puts before and after one sequence, or why it cannot ({@code unsupported} non-null). */
    private record Template(int[] before, int[] after, String unsupported) {
        static final Template NONE = new Template(new int[0], new int[0], null);
    }

    private final Map<String, Integer> vocab;
    private final String[] tokens;
    private final Map<String, Integer> mergeRanks;
    private final List<AddedToken> added;
    /** Text rewrites applied to each stretch between added tokens, in order. */
    private final List<UnaryOperator<String>> normalizers;
    /** Pre-tokenizer steps: each turns the pieces so far into finer pieces ({@code first} marks the text's first stretch). */
    private final List<Step> steps;
    /** Byte-level: pieces are UTF-8 bytes mapped to characters; otherwise characters, with byte fallback. */
    private final boolean byteLevel;
    private final boolean byteFallback;
    private final String unk;
    private final boolean fuseUnk;
    /** SentencePiece-style decoding: this string stands for a space, and one leading space is stripped. */
    private final String spaceMark;
    private final boolean stripLeadingSpace;
    private final Template template;

    /** A pre-tokenizer step. */
    private interface Step {
        List<String> apply(String piece, boolean first);
    }

    private BpeTokenizer(Map<String, Integer> vocab, Map<String, Integer> mergeRanks, List<AddedToken> added, List<UnaryOperator<String>> normalizers,
            List<Step> steps, boolean byteLevel, boolean byteFallback, String unk, boolean fuseUnk, String spaceMark, boolean stripLeadingSpace,
            Template template) {
        this.template = template;
        this.vocab = Map.copyOf(vocab);
        this.mergeRanks = Map.copyOf(mergeRanks);
        // Longest first, so that an added token that contains another wins.
        List<AddedToken> sorted = new ArrayList<>(added);
        sorted.sort(Comparator.comparingInt((AddedToken a) -> a.content().length()).reversed());
        this.added = List.copyOf(sorted);
        this.normalizers = List.copyOf(normalizers);
        this.steps = List.copyOf(steps);
        this.byteLevel = byteLevel;
        this.byteFallback = byteFallback;
        this.unk = unk;
        this.fuseUnk = fuseUnk;
        this.spaceMark = spaceMark;
        this.stripLeadingSpace = stripLeadingSpace;
        int size = 0;
        for (int id : vocab.values()) {
            size = Math.max(size, id + 1);
        }
        for (AddedToken a : added) {
            size = Math.max(size, a.id() + 1);
        }
        tokens = new String[size];
        vocab.forEach((t, id) -> tokens[id] = t);
        for (AddedToken a : added) {
            tokens[a.id()] = a.content();
        }
    }

    /** Reads {@code tokenizer.json}; a malformed or unsupported file is an {@link IOException} naming it. */
    public static BpeTokenizer load(Path file) throws IOException {
        JsonNode root;
        try {
            root = new ObjectMapper().readTree(Files.readString(file, StandardCharsets.UTF_8));
        } catch (IOException e) {
            throw new IOException(file + ": not a readable tokenizer.json (" + e.getMessage() + ")", e);
        }
        try {
            return parse(root);
        } catch (IllegalArgumentException e) {
            throw new IOException(file + ": " + e.getMessage(), e);
        }
    }

    /** Builds a tokenizer from a parsed {@code tokenizer.json}. */
    public static BpeTokenizer parse(JsonNode root) {
        if (root == null || !root.isObject()) {
            throw new IllegalArgumentException("not a JSON object");
        }
        JsonNode model = root.path("model");
        if (!"BPE".equals(model.path("type").asText(""))) {
            throw new IllegalArgumentException("model.type is `" + model.path("type").asText("") + "`; only `BPE` is supported");
        }
        for (String field : List.of("continuing_subword_prefix", "end_of_word_suffix")) {
            if (model.hasNonNull(field) && !model.get(field).asText().isEmpty()) {
                throw new IllegalArgumentException("model." + field + " is not supported");
            }
        }
        if (model.hasNonNull("dropout") && model.get("dropout").asDouble() != 0) {
            throw new IllegalArgumentException("model.dropout is not supported");
        }
        List<UnaryOperator<String>> normalizers = new ArrayList<>();
        String[] spaceMark = {null};
        if (root.hasNonNull("normalizer")) {
            JsonNode n = root.get("normalizer");
            List<JsonNode> list = new ArrayList<>();
            if ("Sequence".equals(n.path("type").asText())) {
                n.path("normalizers").forEach(list::add);
            } else {
                list.add(n);
            }
            for (JsonNode step : list) {
                normalizers.add(normalizer(step, spaceMark));
            }
        }
        JsonNode pre = root.path("pre_tokenizer");
        List<JsonNode> preSteps = new ArrayList<>();
        if ("Sequence".equals(pre.path("type").asText())) {
            pre.path("pretokenizers").forEach(preSteps::add);
        } else if (!pre.isMissingNode() && !pre.isNull()) {
            preSteps.add(pre);
        }
        List<Step> steps = new ArrayList<>();
        boolean byteLevel = false;
        for (JsonNode step : preSteps) {
            switch (step.path("type").asText()) {
                case "ByteLevel" -> {
                    byteLevel = true;
                    boolean prefix = step.path("add_prefix_space").asBoolean(false);
                    boolean regex = step.path("use_regex").asBoolean(true);
                    steps.add((piece, first) -> {
                        String p = prefix && !piece.startsWith(" ") ? " " + piece : piece;
                        return regex ? isolate(GPT2_SPLIT, p) : List.of(p);
                    });
                }
                case "Split" -> {
                    Pattern pattern = split(step);
                    steps.add((piece, first) -> isolate(pattern, piece));
                }
                case "Metaspace" -> {
                    String mark = step.path("replacement").asText("\u2581");
                    String scheme = step.path("prepend_scheme").asText(step.path("add_prefix_space").asBoolean(true) ? "always" : "never");
                    boolean splitWords = step.path("split").asBoolean(true);
                    spaceMark[0] = mark;
                    steps.add((piece, first) -> {
                        String p = piece.replace(" ", mark);
                        if (!p.startsWith(mark) && (scheme.equals("always") || (scheme.equals("first") && first))) {
                            p = mark + p;
                        }
                        return splitWords ? isolate(Pattern.compile(Pattern.quote(mark) + "(?:(?!" + Pattern.quote(mark) + ").)*|(?:(?!"
                                + Pattern.quote(mark) + ").)+", Pattern.DOTALL), p) : List.of(p);
                    });
                }
                default -> throw new IllegalArgumentException("pre_tokenizer `" + step.path("type").asText("none")
                        + "` is not supported (ByteLevel, Split, Metaspace)");
            }
        }
        boolean byteFallback = model.path("byte_fallback").asBoolean(false);
        if (!byteLevel && spaceMark[0] == null) {
            throw new IllegalArgumentException("neither byte-level (a ByteLevel pre-tokenizer) nor SentencePiece-style (a `▁` normalizer "
                    + "or Metaspace pre-tokenizer): not supported");
        }
        boolean strip = false;
        for (JsonNode d : root.path("decoder").path("type").asText().equals("Sequence") ? root.path("decoder").path("decoders")
                : List.of(root.path("decoder"))) {
            strip |= "Strip".equals(d.path("type").asText()) && d.path("start").asInt(0) > 0
                    || "Metaspace".equals(d.path("type").asText()) && !"never".equals(d.path("prepend_scheme").asText("always"));
        }
        Map<String, Integer> vocab = new HashMap<>();
        final int maxId = 10_000_000; // ids index an array: a hostile file must not ask for billions
        JsonNode v = model.path("vocab");
        if (!v.isObject()) {
            throw new IllegalArgumentException("model.vocab is missing");
        }
        for (Iterator<Map.Entry<String, JsonNode>> it = v.properties().iterator(); it.hasNext();) {
            Map.Entry<String, JsonNode> e = it.next();
            if (!e.getValue().canConvertToInt() || e.getValue().asInt() < 0 || e.getValue().asInt() > maxId) {
                throw new IllegalArgumentException("model.vocab: `" + e.getKey() + "` has no valid id");
            }
            vocab.put(e.getKey(), e.getValue().asInt());
        }
        Map<String, Integer> ranks = new HashMap<>();
        JsonNode merges = model.path("merges");
        int rank = 0;
        for (JsonNode m : merges) {
            String a;
            String b;
            if (m.isArray() && m.size() == 2) { // tokenizers >= 0.20: ["a", "b"]
                a = m.get(0).asText();
                b = m.get(1).asText();
            } else if (m.isTextual() && m.asText().indexOf(' ') > 0) { // older: "a b"
                int space = m.asText().indexOf(' ');
                a = m.asText().substring(0, space);
                b = m.asText().substring(space + 1);
            } else {
                throw new IllegalArgumentException("model.merges[" + rank + "] is not a pair");
            }
            ranks.putIfAbsent(a + " " + b, rank++);
        }
        List<AddedToken> added = new ArrayList<>();
        for (JsonNode a : root.path("added_tokens")) {
            if (!a.path("id").canConvertToInt() || a.path("id").asInt() < 0 || a.path("id").asInt() > maxId || a.path("content").asText("").isEmpty()) {
                throw new IllegalArgumentException("added_tokens: an entry without id or content");
            }
            added.add(new AddedToken(a.get("id").asInt(), a.get("content").asText(), a.path("special").asBoolean(false),
                    a.path("lstrip").asBoolean(false), a.path("rstrip").asBoolean(false), a.path("single_word").asBoolean(false)));
        }
        String unk = model.hasNonNull("unk_token") ? model.get("unk_token").asText() : null;
        return new BpeTokenizer(vocab, ranks, added, normalizers, steps, byteLevel, byteFallback, unk, model.path("fuse_unk").asBoolean(false),
                byteLevel ? null : spaceMark[0], !byteLevel && strip,
                root.hasNonNull("post_processor") ? template(root.get("post_processor")) : Template.NONE);
    }

    /** The single-sequence part of a post-processor; one that cannot be reproduced is kept as the reason, for encode with special tokens. */
    private static Template template(JsonNode p) {
        String type = p.path("type").asText("");
        switch (type) {
            case "ByteLevel":
                return Template.NONE;
            case "Sequence": {
                List<Integer> before = new ArrayList<>();
                List<Integer> after = new ArrayList<>();
                for (JsonNode step : p.path("processors")) {
                    Template t = template(step);
                    if (t.unsupported() != null) {
                        return t;
                    }
                    // a later processor wraps what the earlier ones made
                    List<Integer> b = new ArrayList<>(Arrays.stream(t.before()).boxed().toList());
                    b.addAll(before);
                    before = b;
                    after.addAll(Arrays.stream(t.after()).boxed().toList());
                }
                return new Template(before.stream().mapToInt(Integer::intValue).toArray(), after.stream().mapToInt(Integer::intValue).toArray(), null);
            }
            case "BertProcessing":
            case "RobertaProcessing": {
                JsonNode cls = p.path("cls");
                JsonNode sep = p.path("sep");
                if (!cls.path(1).canConvertToInt() || !sep.path(1).canConvertToInt()) {
                    throw new IllegalArgumentException("post_processor " + type + " without [token, id] for cls and sep");
                }
                return new Template(new int[] {cls.get(1).asInt()}, new int[] {sep.get(1).asInt()}, null);
            }
            case "TemplateProcessing": {
                List<Integer> before = new ArrayList<>();
                List<Integer> after = new ArrayList<>();
                boolean seenSequence = false;
                for (JsonNode piece : p.path("single")) {
                    if (piece.has("Sequence")) {
                        if (seenSequence || !"A".equals(piece.get("Sequence").path("id").asText())) {
                            throw new IllegalArgumentException("post_processor TemplateProcessing: the single template must hold $A once");
                        }
                        seenSequence = true;
                    } else if (piece.has("SpecialToken")) {
                        String id = piece.get("SpecialToken").path("id").asText();
                        JsonNode ids = p.path("special_tokens").path(id).path("ids");
                        if (!ids.isArray() || ids.isEmpty()) {
                            throw new IllegalArgumentException("post_processor TemplateProcessing: special token `" + id + "` has no ids");
                        }
                        for (JsonNode i : ids) {
                            (seenSequence ? after : before).add(i.asInt());
                        }
                    } else {
                        throw new IllegalArgumentException("post_processor TemplateProcessing: a piece that is neither SpecialToken nor Sequence");
                    }
                }
                if (!seenSequence) {
                    throw new IllegalArgumentException("post_processor TemplateProcessing: the single template has no $A");
                }
                return new Template(before.stream().mapToInt(Integer::intValue).toArray(), after.stream().mapToInt(Integer::intValue).toArray(), null);
            }
            default:
                return new Template(new int[0], new int[0], "post_processor `" + type + "` is not supported");
        }
    }

    /** One normalizer; a {@code Replace} of spaces by a mark makes that mark the decoder's space. */
    private static UnaryOperator<String> normalizer(JsonNode n, String[] spaceMark) {
        String type = n.path("type").asText();
        switch (type) {
            case "NFC":
                return t -> java.text.Normalizer.normalize(t, java.text.Normalizer.Form.NFC);
            case "NFKC":
                return t -> java.text.Normalizer.normalize(t, java.text.Normalizer.Form.NFKC);
            case "Prepend": {
                String prefix = n.path("prepend").asText();
                return t -> t.isEmpty() ? t : prefix + t;
            }
            case "Replace": {
                String content = n.path("content").asText();
                JsonNode pattern = n.path("pattern");
                if (pattern.has("String")) {
                    String from = pattern.get("String").asText();
                    if (from.equals(" ")) {
                        spaceMark[0] = content;
                    }
                    return t -> t.replace(from, content);
                }
                if (pattern.has("Regex")) {
                    Pattern p = Pattern.compile(pattern.get("Regex").asText(), Pattern.UNICODE_CHARACTER_CLASS);
                    return t -> p.matcher(t).replaceAll(Matcher.quoteReplacement(content));
                }
                throw new IllegalArgumentException("Replace normalizer without a pattern");
            }
            default:
                throw new IllegalArgumentException("normalizer `" + type + "` is not supported (NFC, NFKC, Prepend, Replace)");
        }
    }

    /** A {@code Split} pre-tokenizer step that isolates the matches of a regex or a string. */
    private static Pattern split(JsonNode step) {
        if (!"Split".equals(step.path("type").asText())) {
            throw new IllegalArgumentException("pre_tokenizer step `" + step.path("type").asText("none") + "` is not a Split");
        }
        if (!"Isolated".equals(step.path("behavior").asText()) || step.path("invert").asBoolean(false)) {
            throw new IllegalArgumentException("Split with behavior `" + step.path("behavior").asText() + "`"
                    + (step.path("invert").asBoolean(false) ? " inverted" : "") + " is not supported (only Isolated)");
        }
        JsonNode pattern = step.path("pattern");
        try {
            if (pattern.has("Regex")) {
                // tokenizers' regexes are Oniguruma's; the ones in use (\p{L}, \p{N}, (?i:...), (?!\S)) read the same in Java.
                return Pattern.compile(pattern.get("Regex").asText(), Pattern.UNICODE_CHARACTER_CLASS);
            }
            if (pattern.has("String")) {
                return Pattern.compile(Pattern.quote(pattern.get("String").asText()));
            }
        } catch (java.util.regex.PatternSyntaxException e) {
            throw new IllegalArgumentException("Split regex cannot be read: " + e.getDescription(), e);
        }
        throw new IllegalArgumentException("Split without a pattern");
    }

    /** One more than the largest id (the size a model's vocabulary must have at least). */
    public int vocabSize() {
        return tokens.length;
    }

    /** The id of a token (regular or added), or -1. */
    public int id(String token) {
        for (AddedToken a : added) {
            if (a.content().equals(token)) {
                return a.id();
            }
        }
        return vocab.getOrDefault(token, -1);
    }

    public List<AddedToken> addedTokens() {
        return added;
    }

    /** The ids of {@code text}, without special tokens from the post-processor (add_special_tokens=False). */
    public int[] encode(String text) {
        List<Integer> out = new ArrayList<>();
        int start = 0;
        int i = 0;
        while (i < text.length()) {
            AddedToken hit = null;
            for (AddedToken a : added) {
                if (text.startsWith(a.content(), i)) {
                    hit = a;
                    break;
                }
            }
            if (hit == null) {
                i++;
                continue;
            }
            int end = i + hit.content().length();
            if (hit.singleWord() && ((i > 0 && wordChar(text.codePointBefore(i))) || (end < text.length() && wordChar(text.codePointAt(end))))) {
                // tokenizers finds matches first and then drops this one: its text stays text
                i = end;
                continue;
            }
            int from = i;
            if (hit.lstrip()) {
                while (from > start && whitespace(text.codePointBefore(from))) {
                    from -= Character.charCount(text.codePointBefore(from));
                }
            }
            if (hit.rstrip()) {
                while (end < text.length() && whitespace(text.codePointAt(end))) {
                    end += Character.charCount(text.codePointAt(end));
                }
            }
            encodeText(text.substring(start, from), start == 0, out);
            out.add(hit.id());
            i = end;
            start = i;
        }
        encodeText(text.substring(start), start == 0, out);
        return out.stream().mapToInt(Integer::intValue).toArray();
    }

    /**
     * The ids of {@code text}; with {@code addSpecialTokens}, those the post-processor puts around a
     * single sequence too (transformers' default, e.g. Llama's BOS).
     *
     * @throws IllegalArgumentException when the post-processor is one this reader cannot reproduce
     */
    public int[] encode(String text, boolean addSpecialTokens) {
        int[] ids = encode(text);
        if (!addSpecialTokens) {
            return ids;
        }
        if (template.unsupported() != null) {
            throw new IllegalArgumentException(template.unsupported());
        }
        int[] out = new int[template.before().length + ids.length + template.after().length];
        System.arraycopy(template.before(), 0, out, 0, template.before().length);
        System.arraycopy(ids, 0, out, template.before().length, ids.length);
        System.arraycopy(template.after(), 0, out, template.before().length + ids.length, template.after().length);
        return out;
    }

    /** Why {@link #encode(String, boolean)} cannot add the post-processor's special tokens, or empty. */
    public java.util.Optional<String> postProcessorProblem() {
        return java.util.Optional.ofNullable(template.unsupported());
    }

    /** A word character for {@code single_word}, as tokenizers has it: alphanumeric or {@code _}. */
    private static boolean wordChar(int cp) {
        if (cp == '_' || Character.isAlphabetic(cp)) {
            return true;
        }
        int type = Character.getType(cp);
        return type == Character.DECIMAL_DIGIT_NUMBER || type == Character.LETTER_NUMBER || type == Character.OTHER_NUMBER;
    }

    /** Unicode White_Space, as Rust's char::is_whitespace. */
    private static boolean whitespace(int cp) {
        return Character.isWhitespace(cp) || Character.isSpaceChar(cp) || cp == 0x85;
    }

    private void encodeText(String text, boolean first, List<Integer> out) {
        if (text.isEmpty()) {
            return;
        }
        for (UnaryOperator<String> n : normalizers) {
            text = n.apply(text);
        }
        List<String> pieces = List.of(text);
        for (Step step : steps) {
            List<String> next = new ArrayList<>();
            for (String piece : pieces) {
                next.addAll(step.apply(piece, first));
            }
            pieces = next;
        }
        for (String piece : pieces) {
            if (!piece.isEmpty()) {
                encodeWord(piece, out);
            }
        }
    }

    /** The matches of {@code pattern} in {@code text} and the text between them, in order, empty pieces dropped. */
    private static List<String> isolate(Pattern pattern, String text) {
        List<String> out = new ArrayList<>();
        Matcher m = pattern.matcher(text);
        int at = 0;
        while (m.find()) {
            if (m.start() > at) {
                out.add(text.substring(at, m.start()));
            }
            if (m.end() > m.start()) {
                out.add(m.group());
            }
            at = m.end();
        }
        if (at < text.length()) {
            out.add(text.substring(at));
        }
        return out;
    }

    private void encodeWord(String word, List<Integer> out) {
        List<String> parts = new ArrayList<>();
        if (byteLevel) {
            for (byte b : word.getBytes(StandardCharsets.UTF_8)) {
                parts.add(String.valueOf(BYTE_TO_CHAR[b & 0xFF]));
            }
        } else {
            // Characters; one outside the vocabulary becomes its bytes' <0xXX> tokens, or the unknown token.
            for (int i = 0; i < word.length(); ) {
                String ch = word.substring(i, i + Character.charCount(word.codePointAt(i)));
                i += ch.length();
                if (vocab.containsKey(ch)) {
                    parts.add(ch);
                } else if (byteFallback) {
                    for (byte b : ch.getBytes(StandardCharsets.UTF_8)) {
                        parts.add(String.format("<0x%02X>", b & 0xFF));
                    }
                } else if (unk != null) {
                    if (!(fuseUnk && !parts.isEmpty() && parts.getLast().equals(unk))) {
                        parts.add(unk);
                    }
                } else {
                    throw new IllegalArgumentException("`" + ch + "` is not in the vocabulary, which has no unknown token");
                }
            }
        }
        // Merge the adjacent pair of lowest rank (the leftmost among equals) until none applies.
        while (parts.size() > 1) {
            int best = -1;
            int bestRank = Integer.MAX_VALUE;
            for (int j = 0; j + 1 < parts.size(); j++) {
                Integer r = mergeRanks.get(parts.get(j) + " " + parts.get(j + 1));
                if (r != null && r < bestRank) {
                    bestRank = r;
                    best = j;
                }
            }
            if (best < 0) {
                break;
            }
            parts.set(best, parts.get(best) + parts.get(best + 1));
            parts.remove(best + 1);
        }
        for (String p : parts) {
            Integer id = vocab.get(p);
            if (id == null) {
                throw new IllegalArgumentException("the vocabulary lacks `" + p + "`" + (byteLevel ? " (a byte-level BPE has every byte)" : ""));
            }
            out.add(id);
        }
    }

    /** The bytes a token stands for (for streaming output); unknown ids give U+FFFD's bytes. */
    public byte[] bytes(int id) {
        if (id < 0 || id >= tokens.length || tokens[id] == null) {
            return "\uFFFD".getBytes(StandardCharsets.UTF_8);
        }
        String t = tokens[id];
        if (!byteLevel) {
            if (t.length() == 6 && t.startsWith("<0x") && t.endsWith(">") && t.substring(3, 5).matches("[0-9A-Fa-f]{2}")) {
                return new byte[] {(byte) Integer.parseInt(t.substring(3, 5), 16)};
            }
            return (spaceMark == null ? t : t.replace(spaceMark, " ")).getBytes(StandardCharsets.UTF_8);
        }
        ByteArrayOutputStream out = new ByteArrayOutputStream();
        for (int i = 0; i < t.length(); ) {
            int cp = t.codePointAt(i);
            Integer b = cp <= 0xFFFF ? CHAR_TO_BYTE.get((char) cp) : null;
            if (b != null) {
                out.write(b);
            } else { // a character outside the byte alphabet (in an added token) stands for itself
                out.writeBytes(new String(Character.toChars(cp)).getBytes(StandardCharsets.UTF_8));
            }
            i += Character.charCount(cp);
        }
        return out.toByteArray();
    }

    /**
     * Tokens back to text, special tokens included; invalid UTF-8 becomes U+FFFD. SentencePiece-style
     * tokenizers drop the one leading space their normalizer added.
     */
    public String decode(int[] ids) {
        ByteArrayOutputStream out = new ByteArrayOutputStream();
        for (int id : ids) {
            out.writeBytes(bytes(id));
        }
        String text = out.toString(StandardCharsets.UTF_8);
        return stripLeadingSpace && text.startsWith(" ") ? text.substring(1) : text;
    }
}
