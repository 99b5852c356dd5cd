/**
 * Checkpoint I/O in the <a href="https://github.com/huggingface/safetensors">safetensors</a>
 * format.
 *
 * <p>{@link dev.moe.runtime.io.SafeTensors#open(java.nio.file.Path)} maps a file and validates its
 * header completely before any tensor can be read: every structural problem (header length, JSON
 * syntax, duplicate keys, dtypes, shapes, offsets that do not tile the buffer, trailing or missing
 * bytes) is reported as a {@link dev.moe.runtime.io.SafeTensorsException} naming the file and the
 * problem. {@link dev.moe.runtime.io.SafeTensors#write(java.nio.file.Path, java.util.List,
 * java.util.Map)} saves crash-safely: temporary sibling file, {@code fsync}, atomic rename, then
 * {@code fsync} of the directory.
 */
package dev.moe.runtime.io;
