"""Pearson's chi-square test, for the tests that check a sampling distribution (no scipy here)."""

from __future__ import annotations

import math
from collections.abc import Mapping


def chi_square_p_value(statistic: float, dof: int) -> float:
    """P(X >= statistic) for X ~ chi-square(dof): 1 - the regularized lower gamma P(dof/2, x/2),
    from its power series (converges for any x; terms shrink once n > x)."""
    a, x = dof / 2.0, statistic / 2.0
    if x <= 0:
        return 1.0
    if x > 600 and x > 4 * a:  # far in the tail, where the series would overflow
        return 0.0
    term = 1.0 / a
    total = term
    n = 1
    while term > total * 1e-15:
        term *= x / (a + n)
        total += term
        n += 1
    lower = math.exp(a * math.log(x) - x - math.lgamma(a)) * total
    return max(0.0, 1.0 - lower)


def goodness_of_fit(observed: Mapping[object, int], expected: Mapping[object, float]) -> float:
    """The p-value of `observed` counts under the probabilities `expected` (outcomes whose
    expected count is under 5 are pooled into one, as the test needs)."""
    total = sum(observed.values())
    unexpected = set(observed) - set(expected)
    assert not unexpected, f"outcomes the distribution cannot produce: {unexpected}"
    statistic, cells = 0.0, 0
    pooled_observed, pooled_expected = 0, 0.0
    for outcome, probability in expected.items():
        count = observed.get(outcome, 0)
        if probability * total < 5:
            pooled_observed += count
            pooled_expected += probability * total
            continue
        statistic += (count - probability * total) ** 2 / (probability * total)
        cells += 1
    if pooled_expected > 0:
        statistic += (pooled_observed - pooled_expected) ** 2 / pooled_expected
        cells += 1
    return chi_square_p_value(statistic, cells - 1)


def homogeneity(first: Mapping[object, int], second: Mapping[object, int]) -> float:
    """The p-value that two samples of counts come from one distribution (outcomes seen fewer
    than 10 times in both together are pooled)."""
    n1, n2 = sum(first.values()), sum(second.values())
    outcomes = set(first) | set(second)
    columns: list[tuple[int, int]] = []
    rare = [0, 0]
    for outcome in outcomes:
        a, b = first.get(outcome, 0), second.get(outcome, 0)
        if a + b < 10:
            rare[0] += a
            rare[1] += b
        else:
            columns.append((a, b))
    if sum(rare):
        columns.append((rare[0], rare[1]))
    statistic = 0.0
    for a, b in columns:
        row_total = a + b
        for count, n in ((a, n1), (b, n2)):
            expected = row_total * n / (n1 + n2)
            statistic += (count - expected) ** 2 / expected
    return chi_square_p_value(statistic, max(1, len(columns) - 1))
