package dev.moe.dsl.ast;

public sealed interface TrainMember extends Statement permits StageBlock, ParallelBlock, DomainDef, Setting {
}
