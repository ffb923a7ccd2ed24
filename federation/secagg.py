"""Secure aggregation by pairwise masking, against a coordinator that may cheat: the protocol core (Bonawitz et
al., CCS 2017, "Practical Secure Aggregation for Privacy-Preserving Machine Learning", with the signatures and
the consistency round of its actively secure variant, section 6 / appendix), built on `cryptography` and
PyCryptodome.

Masking. Each lender i encodes its vector into Z_{2^64}, adds a self mask PRG(b_i) and, for every other lender
j, +PRG(s_ij) if i < j or -PRG(s_ij) if i > j, where s_ij = HKDF(X25519(sk_i, pk_j)) is the same for both. The
pairwise masks cancel in the sum. PRG is the ChaCha20 keystream (256-bit seed). b_i and sk_i are Shamir-shared
(threshold t) among the round's lenders, so when a lender drops out the survivors' shares of its sk remove its
pairwise masks, and the survivors' b shares remove their self masks. A lender reveals, for one lender, the share
of b or of sk, never both (both would unmask it), and answers once a round. The shares travel through the
coordinator sealed with AES-GCM under a key each pair agrees on by a second X25519 exchange (the channel key).

What the lender masks. [n_i * clip(u_i, B), n_i]: its update clipped to L2 norm B (max-update-norm) times its
own training-record count, and the count as the last coordinate. The coordinator unmasks both sums and divides,
global + sum(n_i u_i) / sum(n_i): the FedAvg weights are the lenders' own, and the coordinator cannot choose
them (a coordinator-sent weight of 1 for a victim and 1e-12 for everyone else would make the "sum" the victim's
update). The weight sum goes into the ledger, where the verifier checks it against the survivors' signed counts.

Who may take part: nothing the coordinator says is taken on trust. Every lender pins the federation's key
registry (federation/registry.py) and checks
- the round's roster {"type": "secagg_roster", run, round, participants (lender ids in position order),
  threshold}, signed by the registry's coordinator key: this run and round, the lender once and at the position
  it is told, distinct registered lenders, at least MIN_ROSTER of them, k//2 + 1 <= t <= k; every later request
  must carry the same roster;
- every participant's two X25519 keys, signed by that participant's registered identity key
  ({"type": "secagg_keys", run, round, lender, position, mask_key, channel_key}): the coordinator cannot insert
  lenders of its own making (Sybils), so it cannot hold t shares of anyone's secrets by itself;
- the unmasking request {"type": "secagg_unmask", run, round, survivors, dropped} (lender ids), signed by the
  coordinator: the lenders that shared split into the two, the lender itself a survivor, at least t survivors;
- the consistency round: each survivor signs the one survivor set it is shown ({"type": "secagg_survivors",
  run, round, survivors, dropped}) and signs no other that round; the coordinator forwards the signatures, and a
  lender reveals only after checking at least t valid ones from survivors on that same set.

Collusion tolerated. With c lenders colluding with a semi-honest coordinator: c < t. With a malicious
coordinator: to open an honest lender v it needs t shares of b_v and t shares of sk_v; honest lenders give one
kind per lender and round, for the one set they signed, so the two requests need (t - c) + (t - c) <= k - c
lenders, i.e. it fails while c < 2t - k (Bonawitz's t > (k + c) / 2; t = k//2 + 1 tolerates no colluder for odd k
and one for even k; t = k tolerates k - 1 and no dropout). Dropouts: up to k - t lenders and the sum is exact.

MIN_ROSTER = 3: with two lenders, each learns the other's update by subtracting its own from the new model, and a
threshold of 2 of 2 leaves no dropout; from three on, one lender (or one colluding with a semi-honest coordinator,
t >= 2) learns only the sum of the others. MAX_WEIGHT = 2**24 training records a lender: far above any lender
here (thousands) and a large bureau's portfolio, and small enough that values up to B * MAX_WEIGHT keep a fine
fixed-point step in 2^64 (at B = 1000 and 100 lenders: 2^-21, see Quantizer).

What remains. A lender that masks a malformed vector (the coordinator cannot screen what it cannot see; record-
level DP still bounds what any one lender's update reveals, and a non-integral weight sum is refused). With only t
= 2 survivors, each survivor learns the other's update from the new model. A coordinator that repeats a round
from step 1 gets fresh masks over the same update (a retrained round is the same update) and could difference two
aggregates with different survivor sets; a lender's once-a-round rules hold for one round's secrets.

The round's messages: server/secure_rounds.py (coordinator) and clients/secagg.py (lender).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field

import numpy as np
from Crypto.Protocol.SecretSharing import Shamir
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from federation.audit_trail.canonical import canonical
from federation.audit_trail.keys import public_from_hex, sign, verify_signature
from federation.errors import FedCreditError
from federation.registry import Registry

MODULUS = 2**64  # numpy uint64 arithmetic wraps at exactly this modulus: masking needs no explicit reduction
MIN_ROSTER = 3  # fewest lenders in a secure round (why: module docstring)
MAX_WEIGHT = 2**24  # most training records one lender may weigh its update with (why: module docstring)

ROSTER = "secagg_roster"
KEYS = "secagg_keys"
UNMASK = "secagg_unmask"
SURVIVORS = "secagg_survivors"


class SecAggError(FedCreditError):
    """The aggregate cannot be (or must not be) computed: too few shares, bad parameters, a request refused."""


def default_threshold(lenders: int) -> int:
    """The roster's threshold the coordinator signs: a majority of the round's lenders, k // 2 + 1 (the least
    check_threshold allows)."""
    return lenders // 2 + 1


def check_threshold(lenders: int, threshold: int) -> None:
    if not default_threshold(lenders) <= threshold <= lenders:
        raise SecAggError(
            f"threshold must be more than half the lenders and at most all of them "
            f"({default_threshold(lenders)}..{lenders}), got {threshold}"
        )


def prg(seed: bytes, length: int) -> np.ndarray:
    """`length` uint64 words of the ChaCha20 keystream under the 256-bit `seed`."""
    stream = Cipher(algorithms.ChaCha20(seed, bytes(16)), mode=None).encryptor()
    return np.frombuffer(stream.update(bytes(8 * length)), dtype=np.uint64).copy()


def pair_seed(private: X25519PrivateKey, public: bytes, i: int, j: int) -> bytes:
    shared = private.exchange(X25519PublicKey.from_public_bytes(public))
    info = f"fedcredit secagg pair {min(i, j)},{max(i, j)}".encode()
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(shared)


@dataclass(frozen=True)
class Quantizer:
    """Fixed point for values in [-bound, bound], as two's complement in Z_{2^64}.

    The scale is the largest power of two with lenders * bound * scale <= 2^62: multiplying by a power of two is
    exact in float64, so encoding only rounds to the grid (0.5 / scale), and a sum of `lenders` encoded values
    stays below 2^63 in magnitude, so read as a signed int64 it never wraps. Decoding converts that int64 sum to
    float64, which rounds by at most 2^-53 of it: `max_sum_error` adds both.
    """

    bound: float
    lenders: int

    def __post_init__(self) -> None:
        if not (math.isfinite(self.bound) and self.bound > 0 and self.lenders >= 1):
            raise SecAggError(
                f"the fixed-point range needs a positive bound and lenders, got {self.bound}, {self.lenders}"
            )

    @property
    def scale(self) -> float:
        _, exponent = math.frexp(2.0**62 / (self.lenders * self.bound))  # x = m * 2^e, 0.5 <= m < 1
        return math.ldexp(1.0, exponent - 1)

    def encode(self, values: np.ndarray) -> np.ndarray:
        clipped = np.clip(np.asarray(values, dtype=np.float64), -self.bound, self.bound)
        return np.rint(clipped * self.scale).astype(np.int64).view(np.uint64)

    def decode_sum(self, total: np.ndarray) -> np.ndarray:
        """The sum of up to `lenders` encoded vectors (added mod 2^64) as float64 values."""
        return np.ascontiguousarray(total, dtype=np.uint64).view(np.int64).astype(np.float64) / self.scale

    def max_sum_error(self, count: int) -> float:
        """Largest error of one decoded coordinate of a sum of `count` values in range."""
        return count * (0.5 / self.scale + self.bound * 2.0**-53)


def weighted_quantizer(bound: float, lenders: int) -> Quantizer:
    """The one encoding both sides use for [n_i * clip(u_i, bound), n_i]: every coordinate is within
    bound * MAX_WEIGHT, and the count within MAX_WEIGHT (hence the range is never below MAX_WEIGHT)."""
    return Quantizer(max(bound, 1.0) * MAX_WEIGHT, lenders)


# The plain-sum mode (gbdt leaf sums, federation/gbdt_release.py): each coordinate of a lender's noisy [T, L, 2]
# sums is |G| <= n_i, 0 <= H <= n_i / 4, n_i <= MAX_WEIGHT, plus its Gaussian noise of standard deviation sigma.
# SUM_BOUND leaves SUM_BOUND - MAX_WEIGHT for the noise, and a lender refuses to release when that is under
# SUM_TAIL sigma (`sum_noise_problem`): P(|N(0, 1)| > 40) < 1e-300, so clipping at SUM_BOUND (which the lender
# does, on the noisy values: post-processing of its release, no privacy cost) practically never changes a value.
# Public constants, so the coordinator and every lender use the same encoding without asking anyone's noise.
SUM_BOUND = 2.0**30
SUM_TAIL = 40.0


def sum_quantizer(lenders: int) -> Quantizer:
    """The one encoding both sides use for plain sums: values in [-SUM_BOUND, SUM_BOUND] (step about
    lenders * 2^-33: 1e-9 for 10 lenders)."""
    return Quantizer(SUM_BOUND, lenders)


def sum_noise_problem(noise_std: float) -> str | None:
    """Why noise of this standard deviation does not fit the plain-sum encoding, or None when it does."""
    room = SUM_BOUND - MAX_WEIGHT
    if not (math.isfinite(noise_std) and 0 <= noise_std * SUM_TAIL <= room):
        return (
            f"noise of standard deviation {noise_std:g} does not fit the secure sum's fixed-point range "
            f"(+-{SUM_BOUND:g}, of which {room:g} for noise at {SUM_TAIL:g} standard deviations)"
        )
    return None


def flatten(arrays: dict[str, np.ndarray]) -> np.ndarray:
    """An update as one float64 vector, parameters in name order (the coordinator unflattens the same way)."""
    return np.concatenate([np.asarray(arrays[name], dtype=np.float64).ravel() for name in sorted(arrays)])


def unflatten(vector: np.ndarray, like: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    out, start = {}, 0
    for name in sorted(like):
        size = like[name].size
        out[name] = vector[start : start + size].reshape(like[name].shape)
        start += size
    return out


# ---- Shamir shares and one lender's secrets ------------------------------------------------------------------


def _split32(secret: bytes, threshold: int, lenders: int) -> list[tuple[int, bytes, bytes]]:
    """Shamir shares (x = 1..lenders) of a 32-byte secret, as two 16-byte halves (PyCryptodome's size)."""
    low = Shamir.split(threshold, lenders, secret[:16], ssss=False)
    high = Shamir.split(threshold, lenders, secret[16:], ssss=False)
    return [(x, a, b) for (x, a), (_, b) in zip(low, high, strict=False)]


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
    return Shamir.combine([(x, a) for x, a, _ in shares], ssss=False) + Shamir.combine(
        [(x, b) for x, _, b in shares], ssss=False
    )


@dataclass
class SecAggLender:
    """One lender's secrets for one round: mask key, channel key, self-mask seed; its position `index`
    among the `lenders` of the roster (Shamir's x is position + 1)."""

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
        return {
            "index": self.index,
            "lenders": self.lenders,
            "threshold": self.threshold,
            "mask-key": _raw(self._key),
            "self-seed": self._self_seed,
            "channel-key": _raw(self._channel_key),
        }

    @classmethod
    def from_state(cls, state) -> SecAggLender:
        return cls(
            int(state["index"]),
            int(state["lenders"]),
            int(state["threshold"]),
            X25519PrivateKey.from_private_bytes(bytes(state["mask-key"])),
            bytes(state["self-seed"]),
            X25519PrivateKey.from_private_bytes(bytes(state["channel-key"])),
        )

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

    def open_shares(
        self, sender: int, sealed: bytes, sender_channel_key: bytes, context: bytes
    ) -> dict[str, tuple[int, bytes, bytes]]:
        """The shares `sender` sealed for this lender; fails loudly if they were altered or misrouted."""
        aead, data = _channel(self._channel_key, sender_channel_key, sender, self.index, context)
        try:
            plain = aead.decrypt(sealed[:12], sealed[12:], data)
        except Exception:
            raise SecAggError(f"the shares from lender position {sender} do not open: altered or misrouted") from None
        return split_shares(plain)

    def masked(self, encoded: np.ndarray, public_keys: dict[int, bytes]) -> np.ndarray:
        """`encoded` (uint64) plus the self mask and the pairwise masks against `public_keys`, mod 2^64."""
        total = np.asarray(encoded, dtype=np.uint64) + prg(self._self_seed, len(encoded))
        for j, public in public_keys.items():
            if j == self.index:
                continue
            mask = prg(pair_seed(self._key, public, self.index, j), len(encoded))
            total = total + mask if self.index < j else total - mask
        return total


def unmask_sum(
    masked: dict[int, np.ndarray],
    public_keys: dict[int, bytes],
    threshold: int,
    self_seed_shares: dict[int, list[tuple[int, bytes, bytes]]],
    private_key_shares: dict[int, list[tuple[int, bytes, bytes]]],
) -> np.ndarray:
    """The sum of the survivors' encoded vectors (mod 2^64).

    `masked`: survivors' masked vectors, by position; `public_keys`: the mask keys of every lender that
    shared. `self_seed_shares[i]`: shares of survivor i's self seed held by survivors; `private_key_shares[d]`:
    shares of dropped lender d's private key held by survivors.
    """
    survivors, dropped = set(masked), set(public_keys) - set(masked)
    if set(self_seed_shares) & set(private_key_shares):
        raise SecAggError("refusing to reconstruct both masks of one lender: that would reveal its update")
    if len(survivors) < threshold:
        raise SecAggError(f"only {len(survivors)} lenders answered; at least {threshold} are needed to unmask the sum")
    length = len(next(iter(masked.values())))
    total = np.zeros(length, dtype=np.uint64)
    for vector in masked.values():
        total = total + np.asarray(vector, dtype=np.uint64)
    for i in sorted(survivors):
        shares = self_seed_shares.get(i, [])
        if len(shares) < threshold:
            raise SecAggError(f"{len(shares)} shares of lender {i}'s self mask; {threshold} are needed")
        total = total - prg(_combine32(shares[:threshold]), length)
    for d in sorted(dropped):
        shares = private_key_shares.get(d, [])
        if len(shares) < threshold:
            raise SecAggError(
                f"lender {d} dropped out and only {len(shares)} shares of its key arrived; "
                f"{threshold} are needed to remove its masks"
            )
        key = X25519PrivateKey.from_private_bytes(_combine32(shares[:threshold]))
        for i in sorted(survivors):
            mask = prg(pair_seed(key, public_keys[i], d, i), length)
            # survivor i added +mask if i < d, -mask if i > d: take it back out
            total = total - mask if i < d else total + mask
    return total


# ---- signed messages: what the coordinator and the lenders sign, and how each is checked -----------------------


def signed(key: Ed25519PrivateKey, body: dict) -> dict[str, str]:
    """A message body as the canonical JSON text that is signed, with its signature (hex)."""
    text = canonical(body).decode()
    return {"body": text, "signature": sign(key, text.encode())}


def read_signed(text: object, signature: object, public_hex: str, kind: str, what: str, signer: str) -> dict:
    """The body of a signed message of type `kind`, once its signature verifies under `public_hex`. `what` names
    the message and `signer` its signer in the one-line refusal."""
    if not isinstance(signature, str) or not signature:
        raise SecAggError(f"{what} is not signed by {signer}")
    if not isinstance(text, str) or not verify_signature(public_from_hex(public_hex), signature, text.encode()):
        raise SecAggError(f"{what} is not signed by {signer}'s registered key (the signature does not verify)")
    body = json.loads(text)
    # Only the one canonical spelling is accepted, so that the signed bytes are the bytes the ledger records.
    if not isinstance(body, dict) or canonical(body).decode() != text or body.get("type") != kind:
        raise SecAggError(f"{what} is not a canonical '{kind}' message")
    return body


def _lender_ids(value: object, what: str) -> list[int]:
    if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise SecAggError(f"{what} must be a list of lender ids")
    return value


def _fields(body: dict, expected: set[str], what: str) -> None:
    if set(body) != expected:
        raise SecAggError(f"{what} holds {sorted(body)}; expected {sorted(expected)}")


def _this_round(body: dict, run_id: str, rnd: int, what: str) -> None:
    if body["run"] != run_id or body["round"] != rnd:
        raise SecAggError(f"{what} is for run {body['run']!r} round {body['round']}, not run {run_id!r} round {rnd}")


@dataclass(frozen=True)
class Roster:
    """The round's participants (lender ids, in position order) and the Shamir threshold."""

    participants: tuple[int, ...]
    threshold: int

    @property
    def size(self) -> int:
        return len(self.participants)


def roster_body(run_id: str, rnd: int, participants: list[int], threshold: int) -> dict:
    return {"type": ROSTER, "run": run_id, "round": rnd, "participants": list(participants), "threshold": threshold}


def check_roster(text: object, signature: object, registry: Registry, run_id: str, rnd: int) -> Roster:
    """The roster the coordinator signed for this run and round, or SecAggError saying what is wrong with it:
    its signature under the registry's coordinator key, distinct registered lenders, at least MIN_ROSTER,
    a threshold more than half of them and at most all."""
    body = read_signed(text, signature, registry.coordinator, ROSTER, "the roster", "the coordinator")
    _fields(body, {"type", "run", "round", "participants", "threshold"}, "the roster")
    _this_round(body, run_id, rnd, "the roster")
    participants = _lender_ids(body["participants"], "the roster's participants")
    for lender in participants:
        if participants.count(lender) > 1:
            raise SecAggError(f"the roster names lender {lender} more than once")
        if registry.lender_key(lender) is None:
            raise SecAggError(f"the roster names lender {lender}, which is not in the key registry")
    if len(participants) < MIN_ROSTER:
        raise SecAggError(
            f"the roster names {len(participants)} lenders; secure aggregation needs at least "
            f"{MIN_ROSTER} (with fewer, a lender's update can be told from the sum)"
        )
    threshold = body["threshold"]
    if not isinstance(threshold, int) or isinstance(threshold, bool):
        raise SecAggError("the roster's threshold must be an integer")
    check_threshold(len(participants), threshold)
    return Roster(tuple(participants), threshold)


def keys_body(run_id: str, rnd: int, lender: int, position: int, mask_key: bytes, channel_key: bytes) -> dict:
    return {
        "type": KEYS,
        "run": run_id,
        "round": rnd,
        "lender": lender,
        "position": position,
        "mask_key": mask_key.hex(),
        "channel_key": channel_key.hex(),
    }


def check_keys(
    registry: Registry,
    run_id: str,
    rnd: int,
    lender: int,
    position: int,
    mask_key: bytes,
    channel_key: bytes,
    signature: bytes,
) -> None:
    """A participant's advertised X25519 keys must be signed by its identity key in the registry."""
    public = registry.lender_key(lender)
    text = canonical(keys_body(run_id, rnd, lender, position, mask_key, channel_key))
    if not signature or public is None or not verify_signature(public_from_hex(public), signature.hex(), text):
        raise SecAggError(
            f"the secure-aggregation keys of lender {lender} (position {position}) are not signed by its registered key"
        )


def unmask_body(run_id: str, rnd: int, survivors: list[int], dropped: list[int]) -> dict:
    return {"type": UNMASK, "run": run_id, "round": rnd, "survivors": list(survivors), "dropped": list(dropped)}


def survivors_body(run_id: str, rnd: int, survivors: list[int], dropped: list[int]) -> dict:
    return {"type": SURVIVORS, "run": run_id, "round": rnd, "survivors": list(survivors), "dropped": list(dropped)}


def check_unmask(
    text: object, signature: object, registry: Registry, run_id: str, rnd: int, roster: Roster
) -> tuple[list[int], list[int]]:
    """(survivors, dropped) of the unmasking request the coordinator signed for this run and round: roster
    members, no lender in both (that would ask for both its masks), at least the threshold of survivors."""
    body = read_signed(text, signature, registry.coordinator, UNMASK, "the unmasking request", "the coordinator")
    _fields(body, {"type", "run", "round", "survivors", "dropped"}, "the unmasking request")
    _this_round(body, run_id, rnd, "the unmasking request")
    survivors = _lender_ids(body["survivors"], "the survivors")
    dropped = _lender_ids(body["dropped"], "the dropped lenders")
    if set(survivors) & set(dropped):
        raise SecAggError(
            f"the coordinator asked for both masks of lender {sorted(set(survivors) & set(dropped))[0]} "
            f"(a survivor and dropped): that would reveal its update"
        )
    named = survivors + dropped
    if len(set(named)) != len(named) or not set(named) <= set(roster.participants):
        raise SecAggError("the unmasking request names a lender twice or a lender outside the roster")
    if len(survivors) < roster.threshold:
        raise SecAggError(f"{len(survivors)} survivors; at least {roster.threshold} are needed to unmask")
    return survivors, dropped


def confirmation_verifies(
    registry: Registry, run_id: str, rnd: int, survivors: list[int], dropped: list[int], lender: int, signature: bytes
) -> bool:
    """Whether `signature` is `lender`'s registered signature on this very survivor set."""
    public = registry.lender_key(lender)
    text = canonical(survivors_body(run_id, rnd, survivors, dropped))
    return (
        bool(signature)
        and public is not None
        and verify_signature(public_from_hex(public), bytes(signature).hex(), text)
    )


def count_confirmations(
    registry: Registry, run_id: str, rnd: int, survivors: list[int], dropped: list[int], signatures: list[bytes]
) -> int:
    """How many survivors signed this survivor set (`signatures[i]` from `survivors[i]`, b"" if none)."""
    if len(signatures) != len(survivors):
        raise SecAggError(f"expected one confirmation slot per survivor ({len(survivors)}), got {len(signatures)}")
    return sum(
        confirmation_verifies(registry, run_id, rnd, survivors, dropped, lender, signature)
        for lender, signature in zip(survivors, signatures, strict=False)
    )
