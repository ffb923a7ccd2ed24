"""Cryptographically secure Gaussian noise for DP-SGD (the `secure-rng` option).

Opacus' secure mode does two things: it draws noise robustly against floating-point attacks
(Mironov 2012; Opacus sums 2n = 4 Gaussian draws and divides by 2), and it takes the draws from
torchcsprng's /dev/urandom generator. torchcsprng has no build for the torch installed here, so where
it is missing we keep Opacus' robust summation but draw the normals from a ChaCha20 keystream
(cryptography), keyed from os.urandom, with a Box-Muller transform in float64. Where torchcsprng is
installed, Opacus' own secure mode is used unchanged.
"""

from __future__ import annotations

import math
import os

import numpy as np
import torch
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from opacus.optimizers import DPOptimizer
from opacus.optimizers.optimizer import _check_processed_flag, _mark_as_processed


def torchcsprng_available() -> bool:
    try:
        import torchcsprng  # noqa: F401
    except ImportError:
        return False
    return True


def noise_source(secure: bool) -> str:
    """What the report states about the noise."""
    if not secure:
        return "torch default generator (not cryptographically secure)"
    if torchcsprng_available():
        return "Opacus secure mode with torchcsprng (/dev/urandom)"
    return "Opacus secure-mode summation with a ChaCha20 CSPRNG (cryptography, key from os.urandom)"


class ChaChaGaussian:
    """Standard normal samples from a ChaCha20 keystream (256-bit key, fresh from os.urandom)."""

    def __init__(self) -> None:
        cipher = Cipher(algorithms.ChaCha20(os.urandom(32), os.urandom(16)), mode=None)
        self._stream = cipher.encryptor()

    def _uniform(self, count: int) -> np.ndarray:
        raw = self._stream.update(bytes(8 * count))  # keystream = ChaCha20 of zeros
        bits = np.frombuffer(raw, dtype=np.uint64) >> np.uint64(11)  # 53 random bits per double
        return (bits.astype(np.float64) + 0.5) / float(1 << 53)  # in (0, 1), never 0

    def normal(self, shape: torch.Size) -> torch.Tensor:
        count = max(1, math.prod(shape))
        pairs = (count + 1) // 2
        u1, u2 = self._uniform(pairs), self._uniform(pairs)
        radius = np.sqrt(-2.0 * np.log(u1))
        z = np.concatenate([radius * np.cos(2 * np.pi * u2), radius * np.sin(2 * np.pi * u2)])[:count]
        return torch.from_numpy(z).reshape(shape)


class SecureDPOptimizer(DPOptimizer):
    """DPOptimizer whose noise comes from ChaChaGaussian, summed as in Opacus' secure mode."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._gaussian = ChaChaGaussian()

    def add_noise(self) -> None:
        std = self.noise_multiplier * self.max_grad_norm
        for p in self.params:
            _check_processed_flag(p.summed_grad)
            reference = p.summed_grad
            total = sum(self._gaussian.normal(reference.shape) for _ in range(4)) / 2  # N(0, 1), as Opacus
            p.grad = (reference + (std * total).to(reference.dtype)).view_as(p)
            _mark_as_processed(p.summed_grad)
