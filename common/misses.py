"""Is a window's count of SLO misses evidence of a breach, or the noise of a few requests?

A replica that serves 5 requests/s finishes 300 in a 60 s window; at a 99% target it may miss 3 of
them. Four misses read as 133% of the budget, yet a replica whose true miss rate is exactly the budget
misses four or more in 35% of such windows. Reacting to every such window as to a breach (the clock
straight to its ceiling, remembered for minutes) spends the energy the SLO leaves on noise; the
fewer requests a window holds, the more often.

``significant_excess`` is a one-sided Poisson test: the misses are evidence of a breach only when a
count that high would come less often than ``significance`` at the budget's own rate. Misses under
that bar still count, with their full weight, wherever the governor predicts latency (its TTFT
history); they only no longer jump the clock.

Pure: numbers in, a boolean out.
"""

from __future__ import annotations

import math


def poisson_tail(count: float, mean: float) -> float:
    """P(X >= ``count``) for X ~ Poisson(``mean``), summed in log space (exact for the small counts of
    one window; no underflow at large means). A fractional ``count`` (a histogram interpolated) is
    rounded up."""
    k = math.ceil(count - 1e-9)
    if k <= 0:
        return 1.0
    if mean <= 0:
        return 0.0
    log_mean = math.log(mean)
    below = math.fsum(math.exp(i * log_mean - mean - math.lgamma(i + 1)) for i in range(k))
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
