"""Lender-level DP (DP-FedAvg; McMahan, Ramage, Talwar, Zhang, ICLR 2018, "Learning Differentially
Private Recurrent Language Models"): the unit of privacy is a whole lender.

Each round every lender is sampled independently with probability q (Poisson sampling, so
amplification by subsampling applies), each sampled lender's update is clipped to L2 norm C, and the
coordinator adds N(0, sigma^2 C^2) to the *sum* and divides by the fixed expected count q*N. The
divisor must not depend on who was sampled: dividing by the real count would release that count
without noise. One round is one Poisson-subsampled Gaussian step at lender granularity.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch

State = Mapping[str, torch.Tensor]


def update_norm(new: Mapping, old: Mapping) -> float:
    """L2 norm of new - old over all arrays together (torch tensors or numpy arrays)."""
    return float(
        np.sqrt(
            sum(((np.asarray(new[k], dtype=np.float64) - np.asarray(old[k], dtype=np.float64)) ** 2).sum() for k in old)
        )
    )


def clip_update(new: State, old: State, clip_norm: float) -> dict[str, torch.Tensor]:
    """old + (new - old) scaled to L2 norm at most `clip_norm` (over all arrays together)."""
    norm = update_norm(new, old)
    if not np.isfinite(norm):  # a non-finite update counts as none: its influence stays bounded by clip_norm
        return {k: old[k].clone() for k in old}
    scale = min(1.0, clip_norm / norm) if norm > 0 else 1.0
    return {k: (old[k].double() + scale * (new[k].double() - old[k].double())).to(old[k].dtype) for k in old}


def noised_mean_update(
    global_state: State,
    updates: Sequence[State],
    clip_norm: float,
    noise_multiplier: float,
    expected_count: float,
    normal: Callable[[torch.Size], torch.Tensor],
) -> dict[str, torch.Tensor]:
    """The new global model: global + (sum of clipped deltas + Gaussian noise) / expected_count.

    `updates` are the lenders' models (already clipped by them; clipped again here so a lender that
    skips clipping gains no extra influence). `normal(shape)` draws standard normals.
    """
    out = {}
    clipped = [clip_update(u, global_state, clip_norm) for u in updates]
    for key, value in global_state.items():
        total = torch.zeros_like(value, dtype=torch.float64)
        for c in clipped:
            total += c[key].double() - value.double()
        total += noise_multiplier * clip_norm * normal(value.shape).double()
        out[key] = (value.double() + total / expected_count).to(value.dtype)
    return out
