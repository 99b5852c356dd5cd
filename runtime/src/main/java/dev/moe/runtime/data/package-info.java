/**
 * Training data: the byte-level tokenizer, the embedded synthetic corpus and text-file corpora, and
 * the batch stream that mixes them.
 *
 * <p><b>Tokens.</b> Every corpus is tokenised by {@link dev.moe.runtime.data.ByteTokenizer}: one
 * token per UTF-8 byte, so token ids lie in {@code 0..255}. Recipes use {@code vocab 256}; a model
 * declared with a larger vocabulary trains on the same data and its ids {@code 256..vocab-1} are
 * simply never used: they never occur as inputs or targets (the softmax learns to give them little
 * probability). A vocabulary below 256 cannot represent the data.
 *
 * <p><b>Determinism.</b> All randomness comes from {@link dev.moe.runtime.data.SplitMix64}, an
 * explicit generator specified bit for bit, never from {@code java.util.Random} or anything
 * JVM-dependent. Batch {@code i} of a {@link dev.moe.runtime.data.DataStream} is a pure function of
 * the seed, the mixture (with the content of any text files), the batch shape and {@code i}: it does
 * not depend on what was drawn before, on the thread count, or on the JVM, so training resumes
 * bitwise from {@link dev.moe.runtime.data.DataStream#state()}.
 */
package dev.moe.runtime.data;
