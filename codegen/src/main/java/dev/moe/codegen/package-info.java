/**
 * Code generation (not built yet; see the code-generation issue): turns the checked IR of
 * {@code dev.moe.compiler.ir} into Java sources with JavaPoet, with forward and backward passes
 * written out per model and kernels specialised to the declaration. The module exists now so that
 * the build layout is final; it holds no code until that work lands.
 */
package dev.moe.codegen;
