/**
 * Code generation: the checked IR of {@code dev.moe.compiler.ir} to Java sources with JavaPoet.
 * {@link dev.moe.codegen.JavaGenerator} is the entry point; {@link dev.moe.codegen.ModelGenerator}
 * writes one class per model whose forward and backward passes are straight-line calls of the
 * runtime's primitive ops, with routers and combine steps specialised to the declaration.
 */
package dev.moe.codegen;
