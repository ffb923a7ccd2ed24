"""What a lender releases each round: its gradient and hessian sums per leaf, bounded, and Gaussian noise.

For the logistic loss at logit f with label y in {0, 1}, p = sigmoid(f): g = p - y in [-1, 1] and h = p (1 - p) in
[0, 1/4], bounded by the loss itself, so no clipping is needed and none is done. Adding or removing one record
changes, in every tree, the (G, H) of the one leaf it falls in by its (g, h), and nothing else (the structure and
the current model are public: they do not depend on the record). Hence the L2 sensitivity of the [T, L, 2] sums is
sqrt(T) * max over records of sqrt(g^2 + h^2), and that maximum is 1 exactly:
for y = 0, g^2 + h^2 = p^2 (1 + (1 - p)^2); with q = 1 - p this is 1 - 2q + 2q^2 - 2q^3 + q^4 =
1 + q (-2 + 2q - 2q^2 + q^3) <= 1 + q (-(1 - q)^2 - 1) <= 1 on [0, 1] (equality at p = 1); y = 1 is the mirror
image. So sqrt(T) is the tight sensitivity when G and H share one noise scale: the naive bound
sqrt(T (1 + 1/16)), from bounding g and h separately, would add 3% more noise for nothing.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from federation.gbdt.trees import sigmoid


def gradients(y: np.ndarray, logit: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(g, h) of the logistic loss per record: g = p - y in [-1, 1], h = p (1 - p) in [0, 1/4]."""
    y = np.asarray(y, dtype=np.float64)
    if y.size and not np.isin(y, (0.0, 1.0)).all():
        raise ValueError("labels must be 0 or 1")
    p = sigmoid(logit)
    return p - y, p * (1.0 - p)


def leaf_sums(leaf_index: np.ndarray, g: np.ndarray, h: np.ndarray, n_leaves: int) -> np.ndarray:
    """[T, L, 2]: (G, H) summed over the records in each leaf of each tree (0 for an empty leaf)."""
    leaf_index = np.asarray(leaf_index, dtype=np.int64)
    n, trees = leaf_index.shape
    if len(g) != n or len(h) != n:
        raise ValueError(f"{n} records have {len(g)} gradients and {len(h)} hessians")
    if n and (leaf_index.min() < 0 or leaf_index.max() >= n_leaves):
        raise ValueError(f"leaf index outside 0..{n_leaves - 1}")
    flat = (leaf_index + n_leaves * np.arange(trees)).ravel()  # row-major: record i, tree t
    size = trees * n_leaves
    G = np.bincount(flat, weights=np.repeat(np.asarray(g, dtype=np.float64), trees), minlength=size)
    H = np.bincount(flat, weights=np.repeat(np.asarray(h, dtype=np.float64), trees), minlength=size)
    return np.stack([G, H], axis=-1).reshape(trees, n_leaves, 2)


def l2_sensitivity(n_trees: int) -> float:
    """L2 sensitivity of one round's [n_trees, L, 2] sums to adding or removing one record: sqrt(n_trees)
    (proof in the module docstring; tests/test_gbdt_core.py checks it by brute force)."""
    if n_trees < 1:
        raise ValueError(f"need at least one tree, got {n_trees}")
    return math.sqrt(n_trees)


def noised(
    sums: np.ndarray, noise_multiplier: float, sensitivity: float, normal: Callable[[int], object]
) -> np.ndarray:
    """sums + N(0, (noise_multiplier * sensitivity)^2) per entry, the normals from `normal(count)`.

    `normal` is the caller's own source of standard normals, returning anything np.asarray reads (the lender's
    CSPRNG, federation/privacy/noise.py ChaChaStream.secure_normal, returns a torch tensor): noise anyone else can
    regenerate protects nobody, so this module draws none itself."""
    if not (math.isfinite(noise_multiplier) and noise_multiplier >= 0 and sensitivity > 0):
        raise ValueError(f"noise multiplier {noise_multiplier} and sensitivity {sensitivity} must be >= 0 and > 0")
    sums = np.asarray(sums, dtype=np.float64)
    draws = np.asarray(normal(sums.size), dtype=np.float64).reshape(sums.shape)
    return sums + noise_multiplier * sensitivity * draws


def noise_share(noise_multiplier: float, lenders: int) -> float:
    """The noise multiplier each of `lenders` lenders adds under secure aggregation: z / sqrt(k).

    The coordinator sees only the sum, whose noise is then z * sensitivity, as if one party had added it. That
    holds only if NO lender in the sum colludes with the coordinator and every share is in the sum: the
    coordinator learns a colluding lender's noise and can subtract it, leaving z * sqrt((k - c) / k) against c
    colluders (`noise_after_collusion`); a lender dropping out after the masks are set removes its share.
    Without secure aggregation each lender must add the full z itself."""
    if lenders < 1:
        raise ValueError(f"need at least one lender, got {lenders}")
    return float(noise_multiplier) / math.sqrt(lenders)


def secure_noise_share(noise_multiplier: float, threshold: int, colluders: int | None, roster_size: int) -> float:
    """The noise multiplier one lender adds to its leaf sums under secure aggregation: THE formula.

    `colluders` None (the lender trusts only itself, the default): the full z. Opted in with c, with t the signed
    roster's threshold and k its size: z / sqrt(t - c). Why that is enough under its assumption: a lender reveals
    its mask shares only once at least t survivors signed one survivor set (clients/secagg.py, `reveal`), so any
    sum the coordinator can unmask holds at least t survivors' vectors; with at most c of the others colluding, at
    least t - c of them are honest (this lender included), each adding independent N(0, (z S)^2 / (t - c)) (if
    every honest survivor's share is at least this one, which the verifier checks from the signed updates), so the
    noise left after the colluders subtract theirs has variance at least (z S)^2: the sum is the z-mechanism.
    The masking itself hides one lender's vector from a coordinator with c colluders only while c < 2t - k
    (federation/secagg.py, "Collusion tolerated"); beyond that the coordinator may unmask this lender alone, so
    the share is z again. Against more colluders than c, only its own share protects it: what it also records."""
    if colluders is None:
        return float(noise_multiplier)
    honest = threshold - colluders
    if isinstance(colluders, bool) or colluders < 0 or honest < 1:
        raise ValueError(
            f"with threshold {threshold} and {colluders} colluders no honest survivor is guaranteed "
            f"(need threshold - colluders >= 1)"
        )
    if colluders >= 2 * threshold - roster_size:  # the masks may not hide this lender's vector: no split
        return float(noise_multiplier)
    return float(noise_multiplier) / math.sqrt(honest)


def guaranteed_noise(own_share: float, other_shares: list[float], colluders: int) -> float:
    """The noise multiplier left on the unmasked sum, for a lender that added `own_share`, when the other survivors
    of the round added `other_shares` (their signed shares) and `colluders` of them, the worst ones for it (the
    largest shares), reveal theirs to the coordinator: sqrt(own^2 + the smallest len(others) - c squared shares).
    What the verifier holds an opted-in lender's assumption to: it covers the lender's noise multiplier z only if
    the honest survivors' noise adds up to it (equal shares z / sqrt(t - c) from at least t - c of them do; a
    survivor with a smaller noise multiplier of its own, from another budget or delta, adds less)."""
    if colluders < 0:
        raise ValueError(f"colluders must be >= 0, got {colluders}")
    honest = sorted(float(x) ** 2 for x in other_shares)[: max(len(other_shares) - colluders, 0)]
    return math.sqrt(float(own_share) ** 2 + sum(honest))


def noise_after_collusion(noise_multiplier: float, lenders: int, colluding: int) -> float:
    """The noise multiplier protecting an honest lender's sum when each of `lenders` adds noise_share(z, k) and
    `colluding` of the others reveal their shares to the coordinator: z * sqrt((k - c) / k). What an honest
    accounting of secure-split noise must use if it does not assume zero colluders."""
    if not 0 <= colluding < lenders:
        raise ValueError(f"colluders must be 0..{lenders - 1} of {lenders} lenders, got {colluding}")
    return float(noise_multiplier) * math.sqrt((lenders - colluding) / lenders)
