"""Local training and evaluation of one lender's model: DP-SGD (closed-form or Opacus), or plain SGD.

DP-SGD: Poisson sampling (rate q = 1/ceil(n/B)), per-example clipping at `clip_norm` and Gaussian noise
`noise_multiplier * clip_norm`. The clipped sum of per-example gradients comes from federation/fast_dp_sgd.py's
closed form for exactly the built-in models (several times faster), else from Opacus' GradSampleModule and
DPOptimizer; DPSettings.per_sample can ask for either. Accounting is not done here: the
caller records a PrivacyEvent for the steps taken and recomputes epsilon from all events.
FedProx's proximal pull towards the global model is applied after each optimizer step: it does not
depend on the data, so it is post-processing of the DP release (Opacus' per-example gradients
would not see a proximal term added to the loss). The optimizer that takes the step (LocalOptimizer: SGD with
momentum, Adam or AdamW, a constant or cosine learning rate) is post-processing too: under DP it receives the
same clipped, noised sum whichever it is, so the privacy accounting does not depend on it.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from federation import fast_dp_sgd
from federation.config import LR_SCHEDULES, OPTIMIZERS
from federation.privacy.accountant import steps_per_epoch
from federation.privacy.noise import SecureRandomness, SeededRandomness

# Opacus reminds that its default RNG is not cryptographically secure (the run states which RNG it
# used), and torch notes that Opacus' backward hooks fire on module outputs: expected, not actionable.
warnings.filterwarnings("ignore", message="Secure RNG turned off")
warnings.filterwarnings("ignore", message="Full backward hook is firing")


@dataclass(frozen=True)
class DPSettings:
    noise_multiplier: float
    clip_norm: float
    # Where the batch masks and the noise come from (federation/privacy/noise.py): a CSPRNG of the lender's own
    # unless a test or benchmark explicitly asked for seeded, not private, noise.
    randomness: SecureRandomness | SeededRandomness
    # Who computes the clipped per-example gradient sum: "auto" (the closed form of federation/fast_dp_sgd.py for
    # exactly the built-in models, Opacus for any other), "closed-form" or "opacus" (for tests and benchmarks).
    per_sample: str = "auto"


PER_SAMPLE = ("auto", "closed-form", "opacus")
ADAM_EPS = 1e-8  # torch's default


@dataclass(frozen=True)
class LocalOptimizer:
    """How the lender's local step is taken from the (DP or plain) gradient: never what the gradient is."""

    name: str = "sgd"  # sgd: momentum 0.9 (the project's original step); adam; adamw (decoupled weight decay)
    weight_decay: float = 0.0  # sgd and adam: L2 added to the gradient; adamw: decoupled
    schedule: str = "constant"  # constant, or cosine decay to 0 over the steps of one train_local call

    def __post_init__(self) -> None:
        if self.name not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, not {self.name!r}")
        if self.schedule not in LR_SCHEDULES:
            raise ValueError(f"learning-rate schedule must be one of {LR_SCHEDULES}, not {self.schedule!r}")

    @classmethod
    def of(cls, cfg) -> LocalOptimizer:
        """The run configuration's choice (federation.config.RunConfig)."""
        return cls(cfg.optimizer, cfg.weight_decay, cfg.lr_schedule)

    def build(self, params, learning_rate: float, sum_over: float = 1.0) -> torch.optim.Optimizer:
        """The torch optimizer for `params`. `sum_over`: the gradient it will receive is a sum over this many
        records (DP-SGD: the expected batch), not a mean. SGD folds 1/sum_over into its learning rate (as before);
        Adam's step m / (sqrt(v) + eps) is invariant to the gradient's scale except through eps, so eps is scaled
        by sum_over instead, which makes the step exactly that of the mean gradient."""
        if self.name == "sgd":
            return torch.optim.SGD(
                params, lr=learning_rate / sum_over, momentum=0.9, weight_decay=self.weight_decay * sum_over
            )
        kind = torch.optim.AdamW if self.name == "adamw" else torch.optim.Adam
        # Adam's L2 weight decay is added to the summed gradient: scale it like the gradient (AdamW's is decoupled).
        decay = self.weight_decay * (sum_over if self.name == "adam" else 1.0)
        return kind(params, lr=learning_rate, eps=ADAM_EPS * sum_over, weight_decay=decay)

    def scheduler(self, optimizer: torch.optim.Optimizer, total_steps: int):
        if self.schedule == "cosine":
            return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, total_steps))
        return None


def uses_closed_form(model: nn.Module, dp: DPSettings) -> bool:
    if dp.per_sample not in PER_SAMPLE:
        raise ValueError(f"per_sample must be one of {PER_SAMPLE}, not {dp.per_sample!r}")
    if dp.per_sample == "opacus":
        return False
    if fast_dp_sgd.supports(model):
        return True
    if dp.per_sample == "closed-form":
        raise ValueError(f"no closed-form per-example clipping for {type(model).__name__}")
    return False


@dataclass(frozen=True)
class TrainResult:
    steps: int  # optimizer steps taken (each one a DP release when DP is on)
    # The training loss is not returned: it is a statistic of the private batches that no DP claim covers.


def _batches(x: torch.Tensor, y: torch.Tensor, batch_size: int, dp: DPSettings | None, generator: torch.Generator):
    """One epoch of batches. Plain: a shuffled pass. DP: ceil(n/B) Poisson batches, each record in
    each batch independently with q = 1/ceil(n/B) (what Opacus' DPDataLoader draws, but drawn for the whole epoch
    at once as index arrays instead of item-by-item through a Dataset, which dominated the cost)."""
    n = len(x)
    steps = steps_per_epoch(n, batch_size)
    if dp is not None:
        # an epoch's batches drawn at once, as sorted record indices (the rows of x[mask], in the same order)
        for batch in dp.randomness.poisson_batches(n, 1.0 / steps, steps):
            idx = torch.from_numpy(batch)
            yield x[idx], y[idx]
    else:
        order = torch.randperm(n, generator=generator)
        for i in range(steps):
            idx = order[i * batch_size : (i + 1) * batch_size]
            yield x[idx], y[idx]


THREADS_ENV = "FEDCREDIT_TORCH_THREADS"


def set_torch_threads() -> int:
    """One torch thread unless $FEDCREDIT_TORCH_THREADS says otherwise: these models are small, and on this class of
    machine (2 cores) torch's default of one thread per core is 5-25x slower than one thread (measured in
    benchmarks/perf). Called by every process that trains: the lender's ClientApp, the CLI, the benchmarks, tests."""
    threads = max(1, int(os.environ.get(THREADS_ENV, "1") or 1))
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return threads


def zero_non_finite_examples(parameters) -> None:
    """Replace every per-example gradient whose norm is not finite by zero, before Opacus clips.

    Why: Opacus' clip factor for a NaN or infinite per-example gradient is NaN, and one NaN poisons the whole
    clipped sum, so noise cannot hide it. A coordinator that crafts a model overflowing exactly for the records
    with x_j > t turned each release into an exact yes/no answer about the lender's records (the red team's NaN
    oracle). "Zero if not finite, else clip to C" is still a per-example function of norm at most C, so the
    sensitivity and the accounting are unchanged. Norms in float64: a finite float32 gradient cannot overflow it.
    """
    grads = [p.grad_sample for p in parameters if getattr(p, "grad_sample", None) is not None]
    if not grads or not len(grads[0]):
        return
    norms = torch.stack([g.reshape(len(g), -1).double().pow(2).sum(1) for g in grads]).sum(0)
    bad = ~torch.isfinite(norms)
    if bool(bad.any()):
        for g in grads:
            g[bad] = 0


def train_local(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    *,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    seed: int,
    dp: DPSettings | None = None,
    proximal_mu: float = 0.0,
    optim: LocalOptimizer = LocalOptimizer(),
) -> TrainResult:
    # `seed` orders the plain (non-private) passes only; DP draws come from dp.randomness.
    if dp is not None and uses_closed_form(model, dp):
        return _train_closed_form(
            model,
            x,
            y,
            epochs=epochs,
            batch_size=batch_size,
            learning_rate=learning_rate,
            dp=dp,
            proximal_mu=proximal_mu,
            optim=optim,
        )
    xt, yt = torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y, dtype=torch.float32)
    generator = torch.Generator().manual_seed(seed)
    global_params = [p.detach().clone() for p in model.parameters()]
    train_model = model
    close_hooks: Callable[[], None] | None = None
    if dp is None:
        criterion = nn.BCEWithLogitsLoss()
        optimizer = base = optim.build(model.parameters(), learning_rate)
    else:
        from opacus import GradSampleModule

        # Sum of per-example losses, and the step divided by the *expected* batch size: the standard
        # DP-SGD average (a Poisson batch's real size is itself private), and empty batches are valid.
        criterion = nn.BCEWithLogitsLoss(reduction="sum")
        expected_batch = len(xt) / steps_per_epoch(len(xt), batch_size)
        base = optim.build(model.parameters(), learning_rate, sum_over=expected_batch)
        # Opacus' per-example gradients (GradSampleModule) and DP optimizer (clip, noise), as
        # PrivacyEngine.make_private builds them; only the data loader is ours (see _batches).
        train_model = GradSampleModule(model, loss_reduction="sum")
        # Private Opacus API, checked against opacus 1.6.0: GradSampleModule._close() detaches its hooks and the
        # attributes it put on the parameters. 1.6's public cleanup() does the same, but pyproject allows
        # opacus 1.5, which may lack it.
        close_hooks = train_model._close
        optimizer = dp.randomness.dp_optimizer(
            base,
            noise_multiplier=dp.noise_multiplier,
            max_grad_norm=dp.clip_norm,
            expected_batch_size=round(expected_batch),
            loss_reduction="sum",
        )
    schedule = optim.scheduler(base, epochs * steps_per_epoch(len(xt), batch_size))
    train_model.train()
    steps = 0
    for _ in range(epochs):
        for xb, yb in _batches(xt, yt, batch_size, dp, generator):
            optimizer.zero_grad(set_to_none=True)
            loss = criterion(train_model(xb), yb)
            loss.backward()
            if dp is not None:
                zero_non_finite_examples(model.parameters())
            optimizer.step()
            steps += 1
            if schedule is not None:
                schedule.step()
            if proximal_mu > 0:
                _proximal_pull(model, global_params, learning_rate * proximal_mu)
    if close_hooks is not None:
        close_hooks()  # detach Opacus hooks so the plain model can be reused
    return TrainResult(steps=steps)


@torch.no_grad()
def _proximal_pull(model: nn.Module, global_params: list[torch.Tensor], rate: float) -> None:
    for p, g in zip(model.parameters(), global_params, strict=False):
        p.sub_(rate * (p - g))


def _train_closed_form(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    *,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    dp: DPSettings,
    proximal_mu: float,
    optim: LocalOptimizer,
) -> TrainResult:
    """DP-SGD as the Opacus path does it (same batches, loss, clipping, noise draws, optimizer and proximal pull),
    with the clipped sum from federation/fast_dp_sgd.py instead of Opacus' per-example gradients."""
    xt, yt = torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y, dtype=torch.float32)
    params = list(model.parameters())
    global_params = [p.detach().clone() for p in params]
    linears = fast_dp_sgd.linear_layers(model)
    assert linears is not None
    expected_batch = len(xt) / steps_per_epoch(len(xt), batch_size)
    optimizer = optim.build(params, learning_rate, sum_over=expected_batch)
    schedule = optim.scheduler(optimizer, epochs * steps_per_epoch(len(xt), batch_size))
    std = dp.noise_multiplier * dp.clip_norm  # as DPOptimizer.add_noise computes it
    model.train()
    steps = 0
    with torch.no_grad():  # no autograd at all: the gradients are the closed form's
        for xb, yb in (batch for _ in range(epochs) for batch in _batches(xt, yt, batch_size, dp, torch.Generator())):
            sums = fast_dp_sgd.clipped_sum_of_layers(linears, xb, yb, dp.clip_norm)
            # each sum has its parameter's shape (torch refuses any other) and replaces the last step's gradient
            for p, grad in zip(params, dp.randomness.noised(std, sums), strict=True):
                p.grad = grad
            optimizer.step()
            steps += 1
            if schedule is not None:
                schedule.step()
            if proximal_mu > 0:
                _proximal_pull(model, global_params, learning_rate * proximal_mu)
    return TrainResult(steps=steps)
