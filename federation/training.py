"""Local training and evaluation of one lender's model: DP-SGD with Opacus, or plain SGD.

DP-SGD: Opacus' PrivacyEngine with Poisson sampling (rate q = 1/ceil(n/B)), per-example clipping
at `clip_norm` and Gaussian noise `noise_multiplier * clip_norm`. Accounting is not done here: the
caller records a PrivacyEvent for the steps taken and recomputes epsilon from all events.
FedProx's proximal pull towards the global model is applied after each optimizer step: it does not
depend on the data, so it is post-processing of the DP release (Opacus' per-example gradients
would not see a proximal term added to the loss).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from federation.privacy.accountant import steps_per_epoch
from federation.privacy.noise import SecureDPOptimizer, torchcsprng_available

# Opacus reminds that its default RNG is not cryptographically secure (the run states which RNG it
# used), and torch notes that Opacus' backward hooks fire on module outputs: expected, not actionable.
warnings.filterwarnings("ignore", message="Secure RNG turned off")
warnings.filterwarnings("ignore", message="Full backward hook is firing")


@dataclass(frozen=True)
class DPSettings:
    noise_multiplier: float
    clip_norm: float
    secure_rng: bool = False  # see federation.privacy.noise


@dataclass(frozen=True)
class TrainResult:
    loss: float  # mean training loss over the round's batches
    steps: int  # optimizer steps taken (each one a DP release when DP is on)


def train_local(model: nn.Module, x: np.ndarray, y: np.ndarray, *, epochs: int, batch_size: int,
                learning_rate: float, seed: int, dp: DPSettings | None = None,
                proximal_mu: float = 0.0) -> TrainResult:
    torch.manual_seed(seed)  # Poisson sampling and noise draw from torch's RNG: same seed, same run
    data = TensorDataset(torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y, dtype=torch.float32))
    loader = DataLoader(data, batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(seed))
    assert len(loader) == steps_per_epoch(len(data), batch_size)
    global_params = [p.detach().clone() for p in model.parameters()]
    train_model = model
    if dp is None:
        criterion = nn.BCEWithLogitsLoss()
        optimizer = torch.optim.SGD(model.parameters(), lr=learning_rate, momentum=0.9)
    else:
        from opacus import PrivacyEngine

        # Sum of per-example losses, and the step divided by the *expected* batch size: the standard
        # DP-SGD average (a Poisson batch's real size is itself private), and empty batches are valid.
        criterion = nn.BCEWithLogitsLoss(reduction="sum")
        expected_batch = len(data) / len(loader)
        optimizer = torch.optim.SGD(model.parameters(), lr=learning_rate / expected_batch, momentum=0.9)
        if dp.secure_rng and not torchcsprng_available():
            train_model, optimizer, loader = _secure_private(model, optimizer, loader, dp, expected_batch)
        else:
            engine = PrivacyEngine(accountant="rdp", secure_mode=dp.secure_rng)
            train_model, optimizer, loader = engine.make_private(
                module=model, optimizer=optimizer, data_loader=loader, noise_multiplier=dp.noise_multiplier,
                max_grad_norm=dp.clip_norm, poisson_sampling=True, loss_reduction="sum",
            )
    train_model.train()
    losses, steps = [], 0
    for _ in range(epochs):
        for xb, yb in loader:
            optimizer.zero_grad(set_to_none=True)
            loss = criterion(train_model(xb), yb)
            loss.backward()
            if len(xb):
                losses.append(float(loss.detach()) / (len(xb) if dp is not None else 1))
            optimizer.step()
            steps += 1
            if proximal_mu > 0:
                with torch.no_grad():
                    for p, g in zip(model.parameters(), global_params):
                        p.sub_(learning_rate * proximal_mu * (p - g))
    if dp is not None:
        train_model._close()  # detach Opacus hooks so the plain model can be reused
    return TrainResult(loss=float(np.mean(losses)) if losses else math.nan, steps=steps)


def _secure_private(model, optimizer, loader, dp: DPSettings, expected_batch: float):
    """What PrivacyEngine.make_private(secure_mode=True) builds, with our CSPRNG noise instead of
    torchcsprng's. Poisson sampling uses a torch generator seeded from os.urandom: unpredictable,
    though not a CSPRNG; the noise, which carries the guarantee, is."""
    import os

    from opacus import GradSampleModule
    from opacus.data_loader import DPDataLoader

    generator = torch.Generator().manual_seed(int.from_bytes(os.urandom(8), "little") >> 1)
    private_loader = DPDataLoader.from_data_loader(loader, generator=generator)
    private_optimizer = SecureDPOptimizer(
        optimizer, noise_multiplier=dp.noise_multiplier, max_grad_norm=dp.clip_norm,
        expected_batch_size=int(round(expected_batch)), loss_reduction="sum", secure_mode=True,
    )
    return GradSampleModule(model, loss_reduction="sum"), private_optimizer, private_loader
