package dev.moe.dsl.ast;

public sealed interface MoeMember extends Statement permits RouterBlock, Setting {
}
