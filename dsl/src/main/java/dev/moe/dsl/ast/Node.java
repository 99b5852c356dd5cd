package dev.moe.dsl.ast;

import dev.moe.dsl.Span;

/**
 * A node of the immutable syntax tree. Every node knows where it came from. Records compare every
 * component, spans included; compare trees across layouts with {@link AstEquivalence}.
 */
public sealed interface Node
        permits MoeFile, Statement, Expr, Name, Argument, Parameter, Selector {
    Span span();
}
