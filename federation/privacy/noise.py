"""The randomness that protects borrowers: Poisson batches and Gaussian noise, from a CSPRNG by default.

Noise that anyone can regenerate is no noise: an earlier version seeded DP-SGD's noise and batch masks from the
run seed, which the coordinator chooses and writes into config.json, and from one release at noise multiplier 5
the noise-free sum of clipped gradients came back to 1e-6. So every draw that protects a borrower comes from
`SecureRandomness`, on the side that adds the noise: a ChaCha20 keystream (cryptography) keyed with 256 fresh
bits from os.urandom, which nobody else ever sees. Gaussian noise keeps Opacus' secure-mode summation against
floating-point attacks (Mironov 2012; Opacus sums 2n = 4 Gaussian draws and divides by 2), with the normals drawn
by a Box-Muller transform in float64 from the keystream. (torchcsprng, which Opacus' own secure mode uses, has no
build for the torch installed here.)

`SeededRandomness` regenerates the same draws from a seed. It exists for tests and benchmarks that must be
reproducible, only behind the option `reproducible-noise-not-private`, which the lender's own policy must also
allow; every report of such a run says in its first sentence that it is not private.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np
import torch
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from opacus.optimizers import DPOptimizer

# Private Opacus API, checked against opacus 1.6.0: SecureDPOptimizer.add_noise replaces DPOptimizer.add_noise and
# must keep its bookkeeping (the flags that stop a gradient being noised twice), which only these helpers set.
from opacus.optimizers.optimizer import _check_processed_flag, _generate_noise, _mark_as_processed

SECURE_SOURCE = (
    "ChaCha20 keystream keyed from os.urandom on the side that adds the noise (Opacus secure-mode summation)"
)
SEEDED_SOURCE = "seeded from the run seed: NOT PRIVATE (reproducible noise, for tests and benchmarks only)"


def noise_source(reproducible: bool) -> str:
    """What the report states about the noise."""
    return SEEDED_SOURCE if reproducible else SECURE_SOURCE


# A gap longer than this many trials is cut there, as that many failures, and drawn afresh (the process is
# memoryless): P(G > cap) ~ 2^-10, so every gap value drawn lies where the uniforms' 2^-52 grid is fine.
GAP_CAP_SURVIVAL = 2.0**-10
# Absolute margin under q: the 2^-52 grid moves a hazard P(G = j) / P(G >= j) by ~2^-52 / P(G >= j) <= 2^-42
# for j up to the cap.
RATE_MARGIN = 2.0**-40


class ChaChaStream:
    """Uniform and standard normal samples from a ChaCha20 keystream (256-bit key, fresh from os.urandom)."""

    # Opacus-secure-mode normals drawn ahead per keystream call: the draws are independent of the data and of each
    # other, so drawing them in chunks changes no distribution, and saves the per-call cost of small draws (which
    # was a third of a closed-form DP-SGD step for the logistic regression).
    SECURE_NORMAL_CHUNK = 1 << 15

    def __init__(self) -> None:
        # cryptography's 16-byte ChaCha20 nonce is the 32-bit block counter (little endian) and then the 96-bit nonce.
        # The counter starts at 0: a random one (os.urandom(16), as here before) left a stream of 2^32 - counter
        # 64-byte blocks, and the cryptography library refuses to go past the end ("Exceeded the maximum number of
        # bytes that can be encrypted with ChaCha20 for this nonce"). A stream that needs b blocks failed with
        # probability b / 2^32: a lender's round draws about 1 MiB of normals ahead (16,384 blocks), so about one
        # lender-round in 260,000 by that count, and a 1,000-lender benchmark run failed so on 2026-12-02. From 0, a
        # stream holds 256 GiB, for one fresh 256-bit key.
        cipher = Cipher(algorithms.ChaCha20(os.urandom(32), bytes(4) + os.urandom(12)), mode=None)
        self._stream = cipher.encryptor()
        self._secure_normals = torch.empty(0, dtype=torch.float64)
        self._secure_used = 0

    def poisson_batches(self, n: int, q: float, steps: int) -> list[np.ndarray]:
        """`steps` Poisson batches over records 0..n-1: record i is in batch s with probability at most q whatever
        the trials before it (just below q, see below); each batch the sorted indices of its records (what
        np.flatnonzero of a Bernoulli mask gives).

        Why not `steps` masks: a mask takes a keystream word per record and step (6 million words for an epoch of
        20,000 records at batch 64), most of a closed-form DP-SGD step's sampling time. The (step, record) trials
        laid end to end are one Bernoulli process, whose gaps between successes are independent geometric, so
        drawing the gaps (one uniform per record drawn, about n an epoch) gives the same distribution (Devroye,
        Non-Uniform Random Variate Generation, 1986, X.2: the inversion G = 1 + floor(log U / log(1 - q))).

        Floating point: U lies on a grid of 2^-52, so the far tail of G is coarse: uncapped, the longest gap
        (U smallest) was a certain success, and after a run of failures of probability 3e-5 at q = 1/313 the next
        trial was drawn with probability above q (found by a red team, tests/test_redteam_sampler.py). So a gap
        is cut at GAP_CAP_SURVIVAL (cut gaps are failures, the next gap drawn from there), and the rate is
        q' = q (1 - 1e-9) - RATE_MARGIN: at or below q for every trial given every trial before it, which the
        red-team test checks exactly over every keystream word (a lower rate only strengthens the guarantee;
        below q = 2^-40 nothing is drawn). Opacus' own Poisson sampler compares a 24-bit float32 uniform with q."""
        total = n * steps
        if q >= 1.0:
            return [np.arange(n) for _ in range(steps)]
        rate = q * (1.0 - 1e-9) - RATE_MARGIN
        if not rate > 0.0 or total == 0:  # also a NaN q
            return [np.zeros(0, dtype=np.int64) for _ in range(steps)]
        if total >= 2**53:
            raise ValueError(f"{n} records x {steps} steps: positions past 2^53 are not exact in float64")
        log_keep = math.log1p(-rate)  # log(1 - q')
        cap = float(math.ceil(math.log(GAP_CAP_SURVIVAL) / log_keep))
        positions: list[np.ndarray] = []
        last = -1  # the position of the last success drawn, or of the last failure a cut gap ended on
        while last < total:
            expected = (total - last) * rate
            count = int(expected + 6.0 * math.sqrt(expected) + 16)  # almost always enough in one draw
            gaps = np.floor(np.log(self.uniform(count)) / log_keep) + 1.0  # >= 1 each, as float64: no overflow
            ends = last + np.cumsum(np.minimum(gaps, cap))
            positions.append(ends[(gaps <= cap) & (ends < total)].astype(np.int64))
            last = int(min(ends[-1], total))  # past the end: done; else draw on from there (memoryless)
        flat = np.concatenate(positions)
        cuts = np.searchsorted(flat, np.arange(1, steps) * n)
        return [batch - s * n for s, batch in enumerate(np.split(flat, cuts))]

    def uniform(self, count: int) -> np.ndarray:
        """`count` doubles (k + 1/2) / 2^52 for k uniform in 0..2^52-1: in (0, 1), never 0 or 1 (52 random bits
        each). Not 53: (2^53 - 1) + 1/2 is not a double and rounded to 2^53, so the top keystream word gave exactly 1
        (a gap of 1 in poisson_batches whatever q; found by a red team), and the upper half of the values were
        rounded to every other double; with 52 bits every step is exact."""
        raw = self._stream.update(bytes(8 * count))  # keystream = ChaCha20 of zeros
        # int64 -> float64 is vectorised, uint64 is not (2/3 of the cost)
        u = (np.frombuffer(raw, dtype=np.uint64) >> np.uint64(12)).view(np.int64).astype(np.float64)
        u += 0.5
        u *= 2.0**-52
        return u

    def normal(self, shape: torch.Size | tuple[int, ...]) -> torch.Tensor:
        count = max(1, math.prod(shape))
        pairs = (count + 1) // 2
        u = torch.from_numpy(self.uniform(2 * pairs))  # the keystream words of uniform(pairs) twice, in one call
        u1, u2 = u[:pairs], u[pairs:]
        # Box-Muller in float64, with torch's vectorised log/cos/sin (numpy's cos and sin took 9x as long)
        radius = torch.sqrt(-2.0 * torch.log(u1))
        angle = (2 * math.pi) * u2
        return torch.cat([radius * torch.cos(angle), radius * torch.sin(angle)])[:count].reshape(shape)

    def secure_normal(self, count: int) -> torch.Tensor:
        """`count` N(0, 1) doubles, each the sum of 4 normals divided by 2 (Opacus' secure mode against
        floating-point attacks), from chunks drawn ahead; no value is ever handed out twice."""
        if len(self._secure_normals) - self._secure_used < count:
            fresh = self.normal((4, max(count, self.SECURE_NORMAL_CHUNK))).sum(dim=0) / 2
            self._secure_normals = torch.cat([self._secure_normals[self._secure_used :], fresh])
            self._secure_used = 0
        start, self._secure_used = self._secure_used, self._secure_used + count
        return self._secure_normals[start : self._secure_used]


class SecureRandomness:
    """Poisson batches and Gaussian noise from one ChaCha20 stream: unpredictable to everyone but nobody."""

    reproducible = False

    def __init__(self) -> None:
        self.stream = ChaChaStream()

    def poisson_batches(self, n: int, q: float, steps: int) -> list[np.ndarray]:
        """An epoch's `steps` Poisson batches of record indices (ChaChaStream.poisson_batches)."""
        return self.stream.poisson_batches(n, q, steps)

    def normal(self, shape) -> torch.Tensor:
        return self.stream.normal(shape)

    def dp_optimizer(self, *args, **kwargs) -> DPOptimizer:
        return SecureDPOptimizer(*args, **kwargs, gaussian=self.stream)

    def noised(self, std: float, sums: list[torch.Tensor]) -> list[torch.Tensor]:
        """`sums` plus Gaussian noise of `std`, drawn as SecureDPOptimizer.add_noise draws it."""
        return secure_noised(self.stream, std, sums)


@dataclass
class SeededRandomness:
    """The same draws again from `seed`: NOT PRIVATE (anyone who knows the seed can subtract the noise)."""

    seed: int
    reproducible = True

    def __post_init__(self) -> None:
        self.generator = torch.Generator().manual_seed(self.seed)

    def poisson_mask(self, n: int, q: float) -> torch.Tensor:
        return torch.rand(n, generator=self.generator) < q

    def poisson_batches(self, n: int, q: float, steps: int) -> list[np.ndarray]:
        """One mask a step, as Opacus' DPDataLoader draws them from this generator (a seeded run's numbers stay)."""
        return [np.flatnonzero(self.poisson_mask(n, q).numpy()) for _ in range(steps)]

    def normal(self, shape) -> torch.Tensor:
        return torch.randn(shape, generator=self.generator, dtype=torch.float64)

    def dp_optimizer(self, *args, **kwargs) -> DPOptimizer:
        return DPOptimizer(*args, **kwargs, generator=self.generator)

    def noised(self, std: float, sums: list[torch.Tensor]) -> list[torch.Tensor]:
        """`sums` plus Gaussian noise of `std`, drawn exactly as Opacus' DPOptimizer.add_noise draws it with this
        generator (secure_mode off): one torch.normal per tensor, in order, none at all when std is 0."""
        return [s + _generate_noise(std=std, reference=s, generator=self.generator, secure_mode=False) for s in sums]


def secure_noised(gaussian: ChaChaStream, std: float, sums: list[torch.Tensor]) -> list[torch.Tensor]:
    """`sums` plus N(0, std^2) noise from the ChaCha20 stream, summed as in Opacus' secure mode (4 draws / 2).

    One draw for every tensor and all four summands, from normals drawn ahead in chunks (ChaChaStream.secure_normal):
    not 8 keystream calls per parameter (the per-call overhead was a fifth of a DP-SGD epoch for the logistic
    regression). Shared by SecureDPOptimizer (the Opacus path) and federation/fast_dp_sgd.py (the closed-form
    path), so both draw the same way."""
    sizes = [s.numel() for s in sums]
    noise = std * gaussian.secure_normal(sum(sizes))  # N(0, std^2) in float64, as Opacus' secure mode
    dtypes = {s.dtype for s in sums}
    if len(dtypes) == 1:  # rounded to the gradients' dtype once, not tensor by tensor (the same numbers)
        noise = noise.to(dtypes.pop())
    # Added with one foreach call, each part only reshaped or converted where it must be: the same numbers as tensor
    # by tensor, in a third of the tensor operations (their dispatch, not the arithmetic, was a step's noise cost).
    parts = [
        p if p.shape == s.shape and p.dtype == s.dtype else p.view(s.shape).to(s.dtype)
        for p, s in zip(noise.split(sizes), sums, strict=True)
    ]
    return list(torch._foreach_add(sums, parts))


class SecureDPOptimizer(DPOptimizer):
    """Opacus' DPOptimizer with its noise drawn from a ChaCha20 stream, summed as in Opacus' secure mode."""

    def __init__(self, *args, gaussian: ChaChaStream, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._gaussian = gaussian

    def add_noise(self) -> None:
        std = self.noise_multiplier * self.max_grad_norm
        for p in self.params:
            _check_processed_flag(p.summed_grad)
        noised = secure_noised(self._gaussian, std, [p.summed_grad for p in self.params])
        for p, grad in zip(self.params, noised, strict=True):
            p.grad = grad.view_as(p)
            _mark_as_processed(p.summed_grad)
