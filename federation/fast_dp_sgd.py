"""Closed-form per-example clipping for the two built-in models: DP-SGD without Opacus' per-example gradients.

Why: Opacus' GradSampleModule hooks every layer's forward and backward, materialises a (batch x parameters)
tensor of per-example gradients, and its DPOptimizer then takes per-parameter norms, clips and sums them with
einsum. For models this small that bookkeeping, not the arithmetic, is the cost: DP-SGD ran at 0.14-0.28x the
throughput of plain training on 2 shared cores (benchmarks/perf/dp_cost.py, logistic regression and MLP, 20,000
records, batch 64). The built-in models (federation/model.py) are stacks of nn.Linear, for which per-example
gradients have a closed form, so their clipped sum needs only a few matrix products per step.

The math. A linear layer out = x W^T + b with delta_i = dL_i/d out_i (the gradient of example i's loss with
respect to the layer's pre-activation output) has per-example gradients delta_i x_i^T (weight) and delta_i
(bias), so

    ||g_i||^2 = sum over layers of ||delta_i||^2 (||x_i||^2 + 1)

and with Opacus' clip factor c_i = min(1, C / (||g_i|| + 1e-6)) (opacus/optimizers/optimizer.py,
clip_and_accumulate) the clipped sums are (c * delta)^T X for the weight and sum_i c_i delta_i for the bias:
matrix products over the batch, never a per-example gradient tensor. The deltas are closed-form for
BCEWithLogits with reduction "sum": dL/dz_i = sigmoid(z_i) - y_i at the logit, and for the MLP's hidden layer
delta_h = (dL/dz * w_out) where the hidden pre-activation is > 0, else 0 (what autograd's ReLU backward does,
NaN included). Norms, clip factors and products are computed in float64 and the sums returned in float32.

Non-finite examples: an example whose per-example gradient is not finite contributes exactly zero, as
federation/training.zero_non_finite_examples makes it on the Opacus path (the red team's NaN oracle): its norm is
not finite in float64, or some entry delta_ij x_ik overflows float32 (max |delta_i| * max |x_i| is then inf in
float32), which is when Opacus' float32 per-example gradient has an inf entry. Its rows are masked out of the
products, so 0 * NaN never reaches the sum. One difference remains, beyond rounding: for a finite per-example
gradient whose norm exceeds ~1.8e19, Opacus' float32 norm overflows to inf and its clip factor is 0 (the example
drops out), while here the float64 norm is finite and the example is clipped to C. Both are per-example
functions of norm at most C, so the sensitivity and the accounting are the same.

The noise is added by the caller from the same randomness object and in the same way as on the Opacus path
(federation/privacy/noise.py `noised`), so a seeded run keeps its numbers up to float rounding.
"""

from __future__ import annotations

import torch
from torch import nn

from federation.model import MLP, LogisticRegression

FLOAT32_MAX = float(torch.finfo(torch.float32).max)


def _linears(model: nn.Module) -> list[nn.Linear] | None:
    """The model's linear layers in forward order (a ReLU between consecutive ones) if it is exactly a built-in
    model (not a subclass, whose forward may differ) with every parameter trained, else None."""
    if not all(p.requires_grad for p in model.parameters()):
        return None
    if isinstance(model, LogisticRegression) and type(model) is LogisticRegression:
        layers = [model.linear]
    elif isinstance(model, MLP) and type(model) is MLP and type(model.act) is nn.ReLU:
        layers = [model.hidden, model.out]
    else:
        return None
    linears = [layer for layer in layers if type(layer) is nn.Linear]
    return linears if len(linears) == len(layers) else None


def supports(model: nn.Module) -> bool:
    """Whether `clipped_sum` computes this model's clipped per-example gradient sum."""
    linears = _linears(model)
    return linears is not None and all(layer.bias is not None for layer in linears)


@torch.no_grad()
def _inputs_and_deltas(
    linears: list[nn.Linear], x: torch.Tensor, y: torch.Tensor
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(input, delta) per linear layer, in forward order: the layer's input rows and dL_i/d(its output)."""
    inputs, pres = [], []
    h = x
    for k, layer in enumerate(linears):
        if k:
            h = torch.relu(h)
        inputs.append(h)
        h = layer(h)
        pres.append(h)
    delta = torch.sigmoid(h) - y.unsqueeze(-1)  # (B, 1): d BCEWithLogits(sum) / d logit
    deltas = [delta]
    for k in range(len(linears) - 1, 0, -1):  # through layer k's weight, then ReLU' of layer k-1's output
        delta = torch.where(pres[k - 1] > 0, delta @ linears[k].weight, torch.zeros((), dtype=delta.dtype))
        deltas.insert(0, delta)
    return list(zip(inputs, deltas, strict=True))


def non_finite_examples(layers: list[tuple[torch.Tensor, torch.Tensor]], norm_sq: torch.Tensor) -> torch.Tensor:
    """The examples whose per-example gradient is not finite (they contribute zero; see the module docstring)."""
    bad = ~torch.isfinite(norm_sq)
    if len(norm_sq):
        for inputs, delta in layers:
            # an entry delta_ij x_ik of the float32 per-example gradient overflows iff the product of the maxima does
            bad |= ~torch.isfinite(delta.abs().amax(1) * inputs.abs().amax(1))
    return bad


def clipped_sum(model: nn.Module, x: torch.Tensor, y: torch.Tensor, clip_norm: float) -> list[torch.Tensor]:
    """Sum over the batch of the per-example gradients of BCEWithLogits (reduction "sum"), each clipped to
    `clip_norm` as Opacus clips it, non-finite ones zeroed; one tensor per parameter, in model.parameters() order."""
    linears = _linears(model)
    if linears is None or not supports(model):
        raise ValueError(f"no closed-form per-example clipping for {type(model).__name__}")
    layers = _inputs_and_deltas(linears, x, y)
    norm_sq = torch.zeros(len(x), dtype=torch.float64)
    for inputs, delta in layers:
        norm_sq += delta.double().square().sum(1) * (inputs.double().square().sum(1) + 1.0)
    bad = non_finite_examples(layers, norm_sq)
    clip = (clip_norm / (norm_sq.sqrt() + 1e-6)).clamp(max=1.0)
    clip = torch.where(bad, torch.zeros((), dtype=clip.dtype), clip)
    sums: list[torch.Tensor] = []
    any_bad = bool(bad.any())
    for inputs, delta in layers:
        scaled = clip.unsqueeze(1) * delta.double()
        x64 = inputs.double()
        if any_bad:  # mask the rows, not just the factor: 0 * NaN is NaN
            keep = ~bad.unsqueeze(1)
            scaled = torch.where(keep, scaled, torch.zeros((), dtype=scaled.dtype))
            x64 = torch.where(keep, x64, torch.zeros((), dtype=x64.dtype))
        sums.append((scaled.T @ x64).float())  # weight: (out, in)
        sums.append(scaled.sum(0).float())  # bias: (out,)
    return sums
