"""The limits of a meaningful guarantee: which deltas and epsilons fedcredit refuses, and why.

An (epsilon, delta) guarantee allows a failure with probability delta, so with delta >= 1/n a mechanism
may publish one of n records in the clear and still "satisfy" it; and beyond a point, epsilon neither
says anything (e^50 bounds no odds) nor can be evaluated. These rules are data plus checks, so the
configuration, the run's validation and the planner refuse the same settings with the same one line.
"""

from __future__ import annotations

import math

from federation.errors import ConfigError

# No guarantee with a delta above this is meaningful, however many records a lender has: a 1-in-100
# chance of the guarantee failing outright. Under the default rule 1/N^1.1 it takes 65 records to get below.
MAX_DELTA = 1e-2

# The largest epsilon budget (or planning target) accepted. RDP evaluates any epsilon in milliseconds
# (calibrating to 1e9 takes 0.8 s); the limit is Opacus' PRV, which every report states (and which
# calibrates with --accountant prv): its grid spans the privacy loss out to its tail, at a mesh that
# shrinks with sqrt(steps), so time and memory grow with epsilon. Measured (2 shared cores, one process,
# memory above the 0.4 GiB of the imports) over q 1e-3..0.5, 100..10^4 steps, delta 1e-3..1e-7,
# sigma calibrated with RDP to the target, then epsilon under PRV, and dp_accounting's PLD (the verifier's):
#   target   PRV epsilon, worst case      PLD, worst    calibrating with PRV (q 1e-3, 10^4 steps, delta 1e-7)
#   20       2.9 s, +0.4 GiB              11 s          11 s, +1.2 GiB
#   50       7.2 s, +0.7 GiB              10 s          40 s, +2.9 GiB
#   100      13.6 s, +1.4 GiB             21 s          62 s, +4.2 GiB
#   200      20.9 s, +2.7 GiB             23 s          -
#   1e9      asks for 148 TiB (q 0.01, 1,000 steps; the reviewer's run died allocating 8 TiB)
# A run recomputes PRV for every lender every round, so 100 can already cost minutes and gigabytes; 50
# keeps every measured case under a minute and 3 GiB, half the cost of 100. It is also far past any
# meaningful budget: at epsilon 50 the guarantee only bounds an attacker's odds by a factor of e^50.
MAX_EPSILON = 50.0


def min_records_for(delta_cap: float = MAX_DELTA) -> int:
    """The fewest records n for which the default delta (`default_delta(n)`) is at most `delta_cap`.

    Found from `default_delta` itself (non-increasing in n): doubling to bracket, then bisection, so
    this follows the rule the lenders use even if that rule changes.
    """
    from federation.privacy.accountant import default_delta  # see check_delta

    if not (math.isfinite(delta_cap) and delta_cap > 0):
        raise ValueError(f"delta cap must be positive and finite, got {delta_cap}")
    high = 1
    while default_delta(high) > delta_cap:
        high *= 2
    low = high // 2  # default_delta(low) > delta_cap (or low == 0)
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (low, middle) if default_delta(middle) <= delta_cap else (middle, high)
    return high


def check_delta(records: int, delta: float, who: str, *, unit: str = "training records") -> None:
    """Refuse a delta that gives `who` (e.g. "lender 3") with `records` units no meaningful guarantee.

    `delta` is the delta the run will use: an explicit one, or the default rule's (`default_delta(records)`;
    0 also means the default rule). The unit is a training record for record-level DP, a lender
    ("lenders") for lender-level DP. Raises ConfigError when delta is not below 1/n or exceeds MAX_DELTA.
    """
    # Imported here: the accountant loads Opacus and torch, and the run configuration imports this module.
    from federation.privacy.accountant import default_delta

    if records < 1:
        raise ConfigError(f"{who} has no {unit}: it cannot be given a privacy guarantee")
    by_default = delta == 0 or delta == default_delta(records)
    delta = delta or default_delta(records)
    if delta > 1 / records:  # never true of the default rule, which is below 1/n^1.1
        advice = f"below 1/{records}" if 1 / records <= MAX_DELTA else f"of at most {MAX_DELTA:g}"
        raise ConfigError(f"delta {delta:g} is above 1/n for {who} (n = {records} {unit}): use a delta {advice}")
    if delta > MAX_DELTA:
        if by_default:
            raise ConfigError(
                f"{who} has {records} {unit}: at its delta {delta:.3g} (the default rule 1/N^1.1, N = n rounded up "
                f"to a power of two) the guarantee is not meaningful; {who} needs at least {min_records_for()} {unit} "
                f"(delta at most {MAX_DELTA:g}), or set a delta of at most {MAX_DELTA:g}"
            )
        raise ConfigError(
            f"{who} has {records} {unit}: at delta {delta:.3g} the guarantee is not meaningful; "
            f"use a delta of at most {MAX_DELTA:g}"
        )


def check_epsilon(value: float, what: str) -> None:
    """Refuse an epsilon (`what`: "epsilon", "epsilon budget of lender 0", ...) that is not positive and
    finite or is above MAX_EPSILON."""
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise ConfigError(f"{what} must be a positive finite number, got {value}")
    if value > MAX_EPSILON:
        raise ConfigError(
            f"{what} {value:g} is above {MAX_EPSILON:g}, the largest fedcredit accepts: such a guarantee "
            f"bounds nothing, and its PRV accounting would take minutes and gigabytes (use at most "
            f"{MAX_EPSILON:g}, or no DP)"
        )
