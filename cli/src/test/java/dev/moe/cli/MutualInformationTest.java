package dev.moe.cli;

import static com.google.common.truth.Truth.assertThat;

import org.junit.jupiter.api.Test;

/** The specialisation measure that `moe eval` prints: I(domain; expert) in bits. */
class MutualInformationTest {
    @Test
    void independentRoutingCarriesNoInformation() {
        assertThat(EvalCommand.mutualInformation(new long[][] {{10, 30}, {20, 60}})).isWithin(1e-12).of(0.0);
    }

    @Test
    void eachDomainOnItsOwnExpertIsOneBitForTwoDomains() {
        assertThat(EvalCommand.mutualInformation(new long[][] {{50, 0}, {0, 50}})).isWithin(1e-12).of(1.0);
    }

    @Test
    void partialSpecialisationLiesBetween() {
        double mi = EvalCommand.mutualInformation(new long[][] {{40, 10}, {10, 40}});
        assertThat(mi).isGreaterThan(0.0);
        assertThat(mi).isLessThan(1.0);
        // 1 - H(0.2) for a binary symmetric channel with crossover 0.2
        double h = -(0.2 * Math.log(0.2) + 0.8 * Math.log(0.8)) / Math.log(2);
        assertThat(mi).isWithin(1e-12).of(1 - h);
    }

    @Test
    void emptyOrMissingRowsAreZero() {
        assertThat(EvalCommand.mutualInformation(new long[][] {null, {0, 0}})).isEqualTo(0.0);
    }
}
