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
as fewer than t lenders collude with it; t must be more than half the lenders. The shares travel
through the coordinator sealed with AES-GCM under a key each pair of lenders agrees on by a second
X25519 exchange (the "channel" key), so the coordinator routes them without reading them. The round's
message exchange is in server/secure_rounds.py (coordinator) and federation/secagg_lender.py (lender).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
from Crypto.Protocol.SecretSharing import Shamir
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
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


def pack_share(share: tuple[int, bytes, bytes]) -> bytes:
    x, low, high = share
    return x.to_bytes(2, "big") + low + high


def unpack_share(raw: bytes) -> tuple[int, bytes, bytes]:
    if len(raw) != 34:
        raise SecAggError(f"a secret share is 34 bytes, got {len(raw)}")
    return int.from_bytes(raw[:2], "big"), raw[2:18], raw[18:]


def split_shares(plain: bytes) -> dict[str, tuple[int, bytes, bytes]]:
    """A lender's 68-byte pair of shares (self seed, private key) as tuples."""
    return {"self_seed": unpack_share(plain[:34]), "private_key": unpack_share(plain[34:])}


def _raw(key: X25519PrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())


def _public(key: X25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _channel(private: X25519PrivateKey, public: bytes, i: int, j: int, context: bytes) -> tuple[AESGCM, bytes]:
    shared = private.exchange(X25519PublicKey.from_public_bytes(public))
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"fedcredit secagg channel").derive(shared)
    # The associated data binds a sealed share to its run, round, sender and receiver: the coordinator
    # cannot replay it elsewhere or hand it to another lender.
    return AESGCM(key), context + f"|{i}->{j}".encode()


def _combine32(shares: list[tuple[int, bytes, bytes]]) -> bytes:
    return (Shamir.combine([(x, a) for x, a, _ in shares], ssss=False)
            + Shamir.combine([(x, b) for x, _, b in shares], ssss=False))


@dataclass
class SecAggLender:
    """One lender's secrets for one round: mask key, channel key, self-mask seed; its position `index`
    among the `lenders` that advertised keys (Shamir's x is position + 1)."""

    index: int
    lenders: int
    threshold: int
    _key: X25519PrivateKey = field(default_factory=X25519PrivateKey.generate, repr=False)
    _self_seed: bytes = field(default_factory=lambda: os.urandom(32), repr=False)
    _channel_key: X25519PrivateKey = field(default_factory=X25519PrivateKey.generate, repr=False)

    def __post_init__(self) -> None:
        check_threshold(self.lenders, self.threshold)

    @property
    def public_key(self) -> bytes:
        return _public(self._key)

    @property
    def channel_public_key(self) -> bytes:
        return _public(self._channel_key)

    def to_state(self) -> dict[str, int | bytes]:
        """Plain data for the lender's own state between the round's messages (never sent)."""
        return {"index": self.index, "lenders": self.lenders, "threshold": self.threshold, "mask-key": _raw(self._key),
                "self-seed": self._self_seed, "channel-key": _raw(self._channel_key)}

    @classmethod
    def from_state(cls, state) -> SecAggLender:
        return cls(int(state["index"]), int(state["lenders"]), int(state["threshold"]),
                   X25519PrivateKey.from_private_bytes(bytes(state["mask-key"])), bytes(state["self-seed"]),
                   X25519PrivateKey.from_private_bytes(bytes(state["channel-key"])))

    def shares(self) -> dict[int, dict[str, tuple[int, bytes, bytes]]]:
        """For each lender j (x = j + 1): its share of this lender's self seed and private key."""
        seeds = _split32(self._self_seed, self.threshold, self.lenders)
        keys = _split32(_raw(self._key), self.threshold, self.lenders)
        return {j: {"self_seed": seeds[j], "private_key": keys[j]} for j in range(self.lenders)}

    def sealed_shares(self, channel_keys: dict[int, bytes], context: bytes) -> tuple[dict[int, bytes], bytes]:
        """One sharing of this lender's secrets: each other lender j's shares sealed so that only j can
        open them (nonce + AES-GCM), and this lender's own shares in the clear, for it to keep."""
        sealed, own = {}, b""
        for j, share in self.shares().items():  # one call: every share must come from the same polynomial
            plain = pack_share(share["self_seed"]) + pack_share(share["private_key"])
            if j == self.index:
                own = plain
            elif j in channel_keys:
                aead, data = _channel(self._channel_key, channel_keys[j], self.index, j, context)
                nonce = os.urandom(12)
                sealed[j] = nonce + aead.encrypt(nonce, plain, data)
        return sealed, own

    def open_shares(self, sender: int, sealed: bytes, sender_channel_key: bytes, context: bytes) -> dict[str, tuple]:
        """The shares `sender` sealed for this lender; fails loudly if they were altered or misrouted."""
        aead, data = _channel(self._channel_key, sender_channel_key, sender, self.index, context)
        try:
            plain = aead.decrypt(sealed[:12], sealed[12:], data)
        except Exception:  # noqa: BLE001  (cryptography raises InvalidTag; any failure is the same refusal)
            raise SecAggError(f"the shares from lender position {sender} do not open: altered or misrouted") from None
        return split_shares(plain)


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
