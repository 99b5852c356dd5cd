package dev.moe.runtime.data;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Comparator;
import java.util.HashMap;
import java.util.Iterator;
import java.util.List;
import java.util.Map;
import java.util.regex.Matcher;
import java.util.regex.Pattern;

/**
 * A byte-level BPE tokenizer read from a Hugging Face {@code tokenizer.json} (GPT-2, RoBERTa, Qwen,
 * OLMo, DeepSeek style): added tokens are split off first, the rest is cut by the ByteLevel
 * pre-tokenizer's regex, each piece's UTF-8 bytes are mapped to printable characters, and merges are
 * applied lowest rank first. Decoding maps the characters back to bytes.
 *
 * <p>Supported: model {@code BPE} without dropout, {@code continuing_subword_prefix} or
 * {@code end_of_word_suffix}; normalizer none, {@code NFC} or {@code NFKC}; pre-tokenizer
 * {@code ByteLevel}, alone or after {@code Split} steps with {@code Isolated} behaviour (Qwen2,
 * Llama 3, DeepSeek). Anything else is refused with a message naming the field. The post-processor
 * is not applied: {@link #encode} adds no special tokens (transformers' {@code add_special_tokens=False}).
 * Added tokens are matched exactly ({@code lstrip}, {@code rstrip} and {@code single_word} are not
 * applied). Immutable and thread-safe.
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
    public record AddedToken(int id, String content, boolean special) {}

    private final Map<String, Integer> vocab;
    private final String[] tokens;
    private final Map<String, Integer> mergeRanks;
    private final List<AddedToken> added;
    private final boolean addPrefixSpace;
    /** The Split steps, then ByteLevel's own regex when it uses one: each isolates its matches. */
    private final List<Pattern> splits;
    private final int byteLevelStep;
    private final java.text.Normalizer.Form normalization;

    private BpeTokenizer(Map<String, Integer> vocab, Map<String, Integer> mergeRanks, List<AddedToken> added, boolean addPrefixSpace,
            List<Pattern> splits, int byteLevelStep, java.text.Normalizer.Form normalization) {
        this.vocab = Map.copyOf(vocab);
        this.mergeRanks = Map.copyOf(mergeRanks);
        // Longest first, so that an added token that contains another wins.
        List<AddedToken> sorted = new ArrayList<>(added);
        sorted.sort(Comparator.comparingInt((AddedToken a) -> a.content().length()).reversed());
        this.added = List.copyOf(sorted);
        this.addPrefixSpace = addPrefixSpace;
        this.splits = List.copyOf(splits);
        this.byteLevelStep = byteLevelStep;
        this.normalization = normalization;
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
            throw new IllegalArgumentException("model.type is `" + model.path("type").asText("") + "`; only byte-level `BPE` is supported");
        }
        for (String field : List.of("continuing_subword_prefix", "end_of_word_suffix")) {
            if (model.hasNonNull(field) && !model.get(field).asText().isEmpty()) {
                throw new IllegalArgumentException("model." + field + " is not supported");
            }
        }
        if (model.hasNonNull("dropout") && model.get("dropout").asDouble() != 0) {
            throw new IllegalArgumentException("model.dropout is not supported");
        }
        java.text.Normalizer.Form normalization = null;
        if (root.hasNonNull("normalizer")) {
            String type = root.get("normalizer").path("type").asText();
            normalization = switch (type) {
                case "NFC" -> java.text.Normalizer.Form.NFC;
                case "NFKC" -> java.text.Normalizer.Form.NFKC;
                default -> throw new IllegalArgumentException("normalizer `" + type + "` is not supported (none, NFC or NFKC)");
            };
        }
        // The pre-tokenizer: ByteLevel, or a Sequence of Split steps ending in ByteLevel.
        JsonNode pre = root.path("pre_tokenizer");
        List<JsonNode> steps = new ArrayList<>();
        if ("Sequence".equals(pre.path("type").asText())) {
            pre.path("pretokenizers").forEach(steps::add);
        } else {
            steps.add(pre);
        }
        if (steps.isEmpty() || !"ByteLevel".equals(steps.getLast().path("type").asText())) {
            throw new IllegalArgumentException("pre_tokenizer must be ByteLevel (byte-level BPE), possibly after Split steps; found `"
                    + pre.path("type").asText("none") + "`");
        }
        JsonNode byteLevel = steps.getLast();
        List<Pattern> splits = new ArrayList<>();
        for (JsonNode step : steps.subList(0, steps.size() - 1)) {
            splits.add(split(step));
        }
        int byteLevelStep = splits.size();
        if (byteLevel.path("use_regex").asBoolean(true)) {
            splits.add(GPT2_SPLIT);
        }
        Map<String, Integer> vocab = new HashMap<>();
        JsonNode v = model.path("vocab");
        if (!v.isObject()) {
            throw new IllegalArgumentException("model.vocab is missing");
        }
        for (Iterator<Map.Entry<String, JsonNode>> it = v.properties().iterator(); it.hasNext();) {
            Map.Entry<String, JsonNode> e = it.next();
            if (!e.getValue().canConvertToInt() || e.getValue().asInt() < 0) {
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
            if (!a.path("id").canConvertToInt() || a.path("content").asText("").isEmpty()) {
                throw new IllegalArgumentException("added_tokens: an entry without id or content");
            }
            added.add(new AddedToken(a.get("id").asInt(), a.get("content").asText(), a.path("special").asBoolean(false)));
        }
        return new BpeTokenizer(vocab, ranks, added, byteLevel.path("add_prefix_space").asBoolean(false), splits, byteLevelStep, normalization);
    }

    /** A {@code Split} pre-tokenizer step that isolates the matches of a regex or a string. */
    private static Pattern split(JsonNode step) {
        if (!"Split".equals(step.path("type").asText())) {
            throw new IllegalArgumentException("pre_tokenizer step `" + step.path("type").asText("none") + "` is not supported (Split, then ByteLevel)");
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
            encodeText(text.substring(start, i), out);
            out.add(hit.id());
            i += hit.content().length();
            start = i;
        }
        encodeText(text.substring(start), out);
        return out.stream().mapToInt(Integer::intValue).toArray();
    }

    private void encodeText(String text, List<Integer> out) {
        if (text.isEmpty()) {
            return;
        }
        if (normalization != null) {
            text = java.text.Normalizer.normalize(text, normalization);
        }
        List<String> pieces = List.of(text);
        for (int step = 0; step <= splits.size(); step++) {
            if (step == byteLevelStep && addPrefixSpace) {
                pieces = pieces.stream().map(p -> p.startsWith(" ") ? p : " " + p).toList();
            }
            if (step == splits.size()) {
                break;
            }
            List<String> next = new ArrayList<>();
            for (String piece : pieces) {
                isolate(splits.get(step), piece, next);
            }
            pieces = next;
        }
        for (String piece : pieces) {
            encodeWord(piece, out);
        }
    }

    /** The matches of {@code pattern} in {@code text} and the text between them, in order, empty pieces dropped. */
    private static void isolate(Pattern pattern, String text, List<String> out) {
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
    }

    private void encodeWord(String word, List<Integer> out) {
        byte[] bytes = word.getBytes(StandardCharsets.UTF_8);
        List<String> parts = new ArrayList<>(bytes.length);
        for (byte b : bytes) {
            parts.add(String.valueOf(BYTE_TO_CHAR[b & 0xFF]));
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
                throw new IllegalStateException("the vocabulary lacks `" + p + "` (a byte-level BPE has every byte)");
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

    /** Tokens back to text, special tokens included; invalid UTF-8 becomes U+FFFD. */
    public String decode(int[] ids) {
        ByteArrayOutputStream out = new ByteArrayOutputStream();
        for (int id : ids) {
            out.writeBytes(bytes(id));
        }
        return out.toString(StandardCharsets.UTF_8);
    }
}
