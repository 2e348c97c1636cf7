"""Is a window's count of SLO misses evidence of a breach, or the noise of a few requests?

A replica that serves 5 requests/s finishes 300 in a 60 s window; at a 99% target it may miss 3 of
them. Four misses read as 133% of the budget, yet a replica whose true miss rate is exactly the budget
misses four or more in 35% of such windows. Reacting to every such window as to a breach (the clock
straight to its ceiling, remembered for minutes) spends the energy the SLO leaves on noise; the
fewer requests a window holds, the more often.

``significant_excess`` is a one-sided Poisson test: the misses are evidence of a breach only when a
count that high would come less often than ``significance`` at the budget's own rate;
``significant_ratio`` applies it to a budget-used ratio, turned back into the misses it stands for.
The clock governor (its TTFT breach) and eo-scaler (its SLO-breach rule) both judge by it. Misses
under that bar still count, with their full weight, wherever the governor predicts latency (its TTFT
history); they only no longer jump the clock, or start a replica.

Pure: numbers in, a boolean out.
"""

from __future__ import annotations

import math

_NEGLIGIBLE = 1e-13
"""A term this small relative to the running sum ends it: the terms only fall from there on."""


def poisson_tail(count: float, mean: float) -> float:
    """P(X >= ``count``) for X ~ Poisson(``mean``). A fractional ``count`` (a histogram interpolated)
    is rounded up.

    Summed outward from P(X = count) (computed in log space: no underflow at large means) over the
    side of the distribution away from the mode, where each term is smaller than the one before, and
    stopped once the terms are negligible: about ``8 * sqrt(mean)`` terms however large the count, so
    a window of 50,000 observed tokens costs what one of 50 requests does, not a sum from zero."""
    k = math.ceil(count - 1e-9)
    if k <= 0:
        return 1.0
    if mean <= 0:
        return 0.0
    at_k = math.exp(k * math.log(mean) - mean - math.lgamma(k + 1))
    if k > mean:
        # Upper tail: P(X = i + 1) = P(X = i) * mean / (i + 1), falling from i = k on.
        tail, term, i = 0.0, at_k, k
        while term > tail * _NEGLIGIBLE:
            tail += term
            i += 1
            term *= mean / i
        return min(1.0, tail)
    # At or below the mean the tail is at least about a half: one minus the terms under k, summed
    # downward from k - 1 (P(X = i - 1) = P(X = i) * i / mean, falling as i goes down).
    below, term, i = 0.0, at_k * k / mean, k - 1
    while i >= 0 and term > below * _NEGLIGIBLE:
        below += term
        term *= i / mean
        i -= 1
    return min(1.0, max(0.0, 1.0 - below))


def significant_excess(misses: float, requests: float, budget_share: float, significance: float) -> bool:
    """Whether ``misses`` of ``requests`` exceed the miss budget (``budget_share`` of them) by more than
    chance: the share is over the budget and, at the budget's rate, a count this high is rarer than
    ``significance``. ``significance`` 0 turns the test off: any share over the budget is a breach."""
    if not requests > 0 or misses <= budget_share * requests:
        return False
    if significance <= 0:
        return True
    return poisson_tail(misses, budget_share * requests) < significance


def significant_ratio(
    ratio: float,
    observations: float,
    budget_share: float,
    significance: float,
    judged_over: float | None = None,
) -> bool:
    """``significant_excess`` for a budget-used ratio (misses over ``budget_share`` of the
    observations): its misses are ``ratio * budget_share * judged_over`` (``observations`` unless
    given: a ratio judged over a floor of observations, as the scaler's is, gives its misses back
    through that floor), tested against the ``observations`` actually made. An infinite ratio (a
    reading past the last bucket) is always evidence; NaN (no reading) never is."""
    if math.isnan(ratio):
        return False
    if math.isinf(ratio):
        return ratio > 0
    over = observations if judged_over is None else judged_over
    return significant_excess(ratio * budget_share * over, observations, budget_share, significance)
