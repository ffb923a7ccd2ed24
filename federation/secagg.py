"""Secure aggregation by pairwise masking: the protocol core (Bonawitz et al., CCS 2017, "Practical
Secure Aggregation for Privacy-Preserving Machine Learning"), built on `cryptography` and PyCryptodome.

Each lender i quantizes its (clipped, noised) update into Z_{2^32}, adds a self mask PRG(b_i) and, for
every other lender j, +PRG(s_ij) if i < j or -PRG(s_ij) if i > j, where s_ij = HKDF(X25519(sk_i, pk_j))
is the same for both of them. The pairwise masks cancel in the sum. PRG is the ChaCha20 keystream
(256-bit seed), not a 32-bit-seeded generator. b_i and sk_i are Shamir-shared (threshold t) among the
lenders, so when a lender drops out the surviving lenders' shares of its sk remove its pairwise masks,
and the survivors' b shares remove their self masks. The coordinator asks for b shares of survivors
and sk shares of dropped lenders only, never both for one lender (which would unmask it).

Threat model: an honest-but-curious coordinator learns only the sum of the survivors' updates, as long
as fewer than t lenders collude with it; t must be more than half the lenders. Status: this module is
the tested core (sum, uniformity, dropouts, threshold); the message exchange that routes keys and
encrypted shares through Flower rounds is not wired into the run yet.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
from Crypto.Protocol.SecretSharing import Shamir
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from federation.errors import FedCreditError

MODULUS = 2**32


class SecAggError(FedCreditError):
    """The aggregate cannot be (or must not be) computed: too few shares, bad parameters."""


def check_threshold(lenders: int, threshold: int) -> None:
    if not lenders // 2 < threshold <= lenders:
        raise SecAggError(f"threshold must be more than half the lenders and at most all of them "
                          f"({lenders // 2 + 1}..{lenders}), got {threshold}")


def prg(seed: bytes, length: int) -> np.ndarray:
    """`length` uint32 words of the ChaCha20 keystream under the 256-bit `seed`."""
    stream = Cipher(algorithms.ChaCha20(seed, bytes(16)), mode=None).encryptor()
    return np.frombuffer(stream.update(bytes(4 * length)), dtype=np.uint32).astype(np.uint64)


def pair_seed(private: X25519PrivateKey, public: bytes, i: int, j: int) -> bytes:
    shared = private.exchange(X25519PublicKey.from_public_bytes(public))
    info = f"fedcredit secagg pair {min(i, j)},{max(i, j)}".encode()
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(shared)


@dataclass(frozen=True)
class Quantizer:
    """Fixed point in [-bound, bound], scaled so that the sum of `lenders` values never wraps mod 2^32."""

    bound: float
    lenders: int

    @property
    def scale(self) -> float:
        return (MODULUS // self.lenders - 1) / (2 * self.bound)

    def encode(self, values: np.ndarray) -> np.ndarray:
        clipped = np.clip(np.asarray(values, dtype=np.float64), -self.bound, self.bound)
        return np.rint((clipped + self.bound) * self.scale).astype(np.uint64)

    def decode_sum(self, total: np.ndarray, count: int) -> np.ndarray:
        return total.astype(np.float64) / self.scale - count * self.bound

    def max_sum_error(self, count: int) -> float:
        return count * 0.5 / self.scale


def _split32(secret: bytes, threshold: int, lenders: int) -> list[tuple[int, bytes, bytes]]:
    """Shamir shares (x = 1..lenders) of a 32-byte secret, as two 16-byte halves (PyCryptodome's size)."""
    low = Shamir.split(threshold, lenders, secret[:16], ssss=False)
    high = Shamir.split(threshold, lenders, secret[16:], ssss=False)
    return [(x, a, b) for (x, a), (_, b) in zip(low, high)]


def _combine32(shares: list[tuple[int, bytes, bytes]]) -> bytes:
    return (Shamir.combine([(x, a) for x, a, _ in shares], ssss=False)
            + Shamir.combine([(x, b) for x, _, b in shares], ssss=False))


@dataclass
class SecAggLender:
    index: int
    lenders: int
    threshold: int
    _key: X25519PrivateKey = field(default_factory=X25519PrivateKey.generate, repr=False)
    _self_seed: bytes = field(default_factory=lambda: os.urandom(32), repr=False)

    def __post_init__(self) -> None:
        check_threshold(self.lenders, self.threshold)

    @property
    def public_key(self) -> bytes:
        return self._key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)

    def shares(self) -> dict[int, dict[str, tuple[int, bytes, bytes]]]:
        """For each lender j (x = j + 1): its share of this lender's self seed and private key."""
        raw_key = self._key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                          serialization.NoEncryption())
        seeds = _split32(self._self_seed, self.threshold, self.lenders)
        keys = _split32(raw_key, self.threshold, self.lenders)
        return {j: {"self_seed": seeds[j], "private_key": keys[j]} for j in range(self.lenders)}

    def masked(self, encoded: np.ndarray, public_keys: dict[int, bytes]) -> np.ndarray:
        total = (encoded.astype(np.uint64) + prg(self._self_seed, len(encoded))) % MODULUS
        for j, public in public_keys.items():
            if j == self.index:
                continue
            mask = prg(pair_seed(self._key, public, self.index, j), len(encoded))
            total = (total + mask) % MODULUS if self.index < j else (total + MODULUS - mask) % MODULUS
        return total


def unmask_sum(masked: dict[int, np.ndarray], public_keys: dict[int, bytes], threshold: int,
               self_seed_shares: dict[int, list[tuple[int, bytes, bytes]]],
               private_key_shares: dict[int, list[tuple[int, bytes, bytes]]]) -> np.ndarray:
    """The sum of the survivors' encoded updates (mod 2^32).

    `masked`: survivors' masked vectors. `self_seed_shares[i]`: shares of survivor i's self seed held by
    survivors; `private_key_shares[d]`: shares of dropped lender d's private key held by survivors.
    """
    survivors, dropped = set(masked), set(public_keys) - set(masked)
    if set(self_seed_shares) & set(private_key_shares):
        raise SecAggError("refusing to reconstruct both masks of one lender: that would reveal its update")
    if len(survivors) < threshold:
        raise SecAggError(f"only {len(survivors)} lenders answered; at least {threshold} are needed to unmask the sum")
    length = len(next(iter(masked.values())))
    total = np.zeros(length, dtype=np.uint64)
    for vector in masked.values():
        total = (total + vector) % MODULUS
    for i in sorted(survivors):
        shares = self_seed_shares.get(i, [])
        if len(shares) < threshold:
            raise SecAggError(f"{len(shares)} shares of lender {i}'s self mask; {threshold} are needed")
        total = (total + MODULUS - prg(_combine32(shares[:threshold]), length)) % MODULUS
    for d in sorted(dropped):
        shares = private_key_shares.get(d, [])
        if len(shares) < threshold:
            raise SecAggError(f"lender {d} dropped out and only {len(shares)} shares of its key arrived; "
                              f"{threshold} are needed to remove its masks")
        key = X25519PrivateKey.from_private_bytes(_combine32(shares[:threshold]))
        for i in sorted(survivors):
            mask = prg(pair_seed(key, public_keys[i], d, i), length)
            # survivor i added +mask if i < d, -mask if i > d: take it back out
            total = (total + MODULUS - mask) % MODULUS if i < d else (total + mask) % MODULUS
    return total
