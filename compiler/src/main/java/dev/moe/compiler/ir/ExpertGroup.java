package dev.moe.compiler.ir;

/** {@code routed 8 x swiglu(hidden: 256)} or {@code shared 2 x swiglu(hidden: 64, gate: sigmoid)}. */
public record ExpertGroup(Role role, int count, Expert expert, boolean sigmoidGate) {
    public enum Role { ROUTED, SHARED }
}
