package dev.moe.dsl.ast;

public sealed interface ModelMember extends Statement permits FfnDef, MoeDef, LayerPlan, Setting {
}
