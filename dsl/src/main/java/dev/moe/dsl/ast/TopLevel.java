package dev.moe.dsl.ast;

/** A declaration at the top of a file. */
public sealed interface TopLevel extends Statement
        permits ImportDecl, ConstDecl, FfnDef, MoeDef, ModelDecl, TrainDecl {
}
