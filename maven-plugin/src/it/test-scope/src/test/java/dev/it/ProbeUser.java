package dev.it;

/** Test code that uses the model generated from src/test/moe. */
final class ProbeUser {
    static final int DIM = Probe.DIM;
}
