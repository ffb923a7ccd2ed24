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
NaN included). Norms, clip factors and products are float32 (as exact as Opacus' own float32 norms and einsum)
whenever every float32 norm in the batch is finite; a batch with a NaN, an inf or an overflowing norm takes a
careful float64 path instead.

Non-finite examples: an example whose per-example gradient is not finite contributes exactly zero, as
federation/training.zero_non_finite_examples makes it on the Opacus path (the red team's NaN oracle): its norm is
not finite in float64, or some entry delta_ij x_ik overflows float32 (max |delta_i| * max |x_i| is then inf in
float32), which is when Opacus' float32 per-example gradient has an inf entry. Its rows are masked out of the
products, so 0 * NaN never reaches the sum. One difference remains, beyond rounding: for a finite per-example
gradient whose norm exceeds ~1.8e19, Opacus' float32 norm overflows to inf and its clip factor is 0 (the example
drops out), while here the float64 norm is finite and the example is clipped to C. Both are per-example
functions of norm at most C, so the sensitivity and the accounting are the same.

Cost (benchmarks/perf/dp_cost.py, 2 cores shared with other jobs, 20,000 records, batch 64, CSPRNG noise): the
closed form ran at 0.73-0.98x plain training's throughput for the logistic regression and 0.66-0.76x for the
MLP in three runs, Opacus at 0.20-0.26x in the same runs. Per step it is a few dozen small tensor operations, so
the time goes to per-operation overhead; the Poisson batches (drawn as gaps, noise.py poisson_batches) and the
secure-mode noise (4 normals per coordinate) are the other DP-only costs, made cheaper in
federation/privacy/noise.py.

The noise is added by the caller from the same randomness object and in the same way as on the Opacus path
(federation/privacy/noise.py `noised`), so a seeded run keeps its numbers up to float rounding.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from federation.model import MLP, LogisticRegression


def linear_layers(model: nn.Module) -> list[nn.Linear] | None:
    """The model's linear layers in forward order (a ReLU between consecutive ones) if it is exactly a built-in
    model (not a subclass, whose forward may differ), every parameter trained and every layer with a bias, else
    None: the models whose clipped sum this module computes."""
    if not all(p.requires_grad for p in model.parameters()):
        return None
    if isinstance(model, LogisticRegression) and type(model) is LogisticRegression:
        layers = [model.linear]
    elif isinstance(model, MLP) and type(model) is MLP and type(model.act) is nn.ReLU:
        layers = [model.hidden, model.out]
    else:
        return None
    linears = [layer for layer in layers if type(layer) is nn.Linear and layer.bias is not None]
    return linears if len(linears) == len(layers) else None


def supports(model: nn.Module) -> bool:
    return linear_layers(model) is not None


Layers = list[tuple[torch.Tensor, torch.Tensor]]


def _inputs_and_deltas(linears: list[nn.Linear], x: torch.Tensor, y: torch.Tensor) -> Layers:
    """(input, delta) per linear layer, in forward order: the layer's input rows and dL_i/d(its output)."""
    inputs, pres = [], []
    h = x
    for k, layer in enumerate(linears):
        if k:
            h = torch.relu(h)
        inputs.append(h)
        h = F.linear(h, layer.weight, layer.bias)  # what layer(h) computes, without nn.Module's call overhead
        pres.append(h)
    delta = torch.sigmoid(h) - y.unsqueeze(-1)  # (B, 1): d BCEWithLogits(sum) / d logit
    deltas = [delta]
    for k in range(len(linears) - 1, 0, -1):  # through layer k's weight, then ReLU' of layer k-1's output
        delta = torch.where(pres[k - 1] > 0, delta @ linears[k].weight, 0.0)
        deltas.insert(0, delta)
    return list(zip(inputs, deltas, strict=True))


def non_finite_examples(layers: Layers, norm_sq: torch.Tensor) -> torch.Tensor:
    """The examples whose per-example gradient is not finite (they contribute zero; see the module docstring)."""
    bad = ~torch.isfinite(norm_sq)
    if len(norm_sq):
        for inputs, delta in layers:
            # an entry delta_ij x_ik of the float32 per-example gradient overflows iff the product of the maxima does
            bad |= ~torch.isfinite(delta.abs().amax(1) * inputs.abs().amax(1))
    return bad


def _clipped_sum_float64(layers: Layers, clip_norm: float) -> list[torch.Tensor]:
    """The careful path, for a batch with a non-finite or enormous per-example gradient: norms, factors and
    products in float64, the non-finite examples' rows masked out of the products (0 * NaN is NaN)."""
    norm_sq = sum(delta.double().square().sum(1) * (inputs.double().square().sum(1) + 1.0) for inputs, delta in layers)
    assert isinstance(norm_sq, torch.Tensor)
    bad = non_finite_examples(layers, norm_sq)
    clip = torch.where(bad, 0.0, (clip_norm / (norm_sq.sqrt() + 1e-6)).clamp(max=1.0)).unsqueeze(1)
    keep = ~bad.unsqueeze(1)
    sums: list[torch.Tensor] = []
    for inputs, delta in layers:
        scaled = torch.where(keep, clip * delta.double(), 0.0)
        sums.append((scaled.T @ torch.where(keep, inputs.double(), 0.0)).float())  # weight: (out, in)
        sums.append(scaled.sum(0).float())  # bias: (out,)
    return sums


_FLOAT32_MAX = float(torch.finfo(torch.float32).max)


def clipped_sum_of_layers(linears: list[nn.Linear], x: torch.Tensor, y: torch.Tensor, clip_norm: float):
    """`clipped_sum` for the layers `linear_layers` returned (what train_local calls once per step, under
    torch.no_grad)."""
    layers = _inputs_and_deltas(linears, x, y)
    # ||g_i||^2 = sum over layers of ||delta_i||^2 ||x_i||^2 + ||delta_i||^2, in as few tensor operations as can be
    # The norms in float64: in float32 a tiny delta (a logit near -52 gives 2.6e-23) squares to 0, and with a huge
    # input row the example escaped clipping (a red team measured 443 C at C = 1e-6); Opacus takes the norm of the
    # gradient's entries, which does not underflow. Products of a batch's rows and a few columns: cheap.
    norm_sq: torch.Tensor | None = None
    for inputs, delta in layers:
        delta64, inputs64 = delta.double(), inputs.double()
        delta_sq = torch.linalg.vecdot(delta64, delta64)
        base = delta_sq if norm_sq is None else norm_sq + delta_sq
        norm_sq = torch.addcmul(base, delta_sq, torch.linalg.vecdot(inputs64, inputs64))
    assert norm_sq is not None
    # A NaN, an inf, or a norm too large for float32 somewhere (an entry of a per-example gradient may overflow
    # float32): the careful path.
    # One reduction for both: max propagates NaN, and NaN < x is False.
    if len(norm_sq) and not float(norm_sq.max()) < _FLOAT32_MAX:
        return _clipped_sum_float64(layers, clip_norm)
    # Every norm fits float32: no entry of any per-example gradient overflows, and float32 products are as exact
    # as Opacus' own.
    clip = (clip_norm / (norm_sq.sqrt() + 1e-6)).clamp(max=1.0).float().unsqueeze(1)
    sums: list[torch.Tensor] = []
    for inputs, delta in layers:
        scaled = clip * delta
        sums.append(scaled.T @ inputs)  # weight: (out, in)
        sums.append(scaled.sum(0))  # bias: (out,)
    return sums


def clipped_sum(model: nn.Module, x: torch.Tensor, y: torch.Tensor, clip_norm: float) -> list[torch.Tensor]:
    """Sum over the batch of the per-example gradients of BCEWithLogits (reduction "sum"), each clipped to
    `clip_norm` as Opacus clips it, non-finite ones zeroed; one float32 tensor per parameter, in
    model.parameters() order."""
    linears = linear_layers(model)
    if linears is None:
        raise ValueError(f"no closed-form per-example clipping for {type(model).__name__}")
    with torch.no_grad():
        return clipped_sum_of_layers(linears, x, y, clip_norm)
