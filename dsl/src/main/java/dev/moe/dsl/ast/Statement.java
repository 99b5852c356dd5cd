package dev.moe.dsl.ast;

/** A node that stands on its own line(s) in canonical layout, with its comments. */
public sealed interface Statement extends Node
        permits TopLevel, ModelMember, MoeMember, TrainMember, LayerEntry {
    Trivia trivia();
}
