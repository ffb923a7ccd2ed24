"""A lender's privacy policy: the limits it, not the coordinator, sets; written in its own folder.

The coordinator's run configuration is a *request*. A lender trains only when the request lies inside its
policy, and declines before any release otherwise, with a signed refusal naming the limit:

    lender = 0
    [privacy]
    max_epsilon = 3.0             # the most this lender spends, over every run made with this folder
    delta = 0.0                   # 0: 1/N^1.1, N = its training records rounded up to a power of two
    min_noise_multiplier = 0.3    # never less noise than this, whatever the budget allows
    max_clip_norm = 1.0
    require_dp = true             # false: the lender also takes part in runs without DP
    allow_lender_level = false    # lender-level DP: the coordinator adds the noise (no protection against it)
    allow_reproducible_noise = false   # seeded noise, for tests and benchmarks only: NOT private
    # secure_sum_colluders = 1    # gbdt under secure aggregation: rely on the others' noise, assuming at most
                                  # this many other lenders collude with the coordinator (absent: add it all)
    [trust]
    registry = "/path/to/registry.json"   # the pinned keys of the coordinator and the other lenders
    [data]
    dataset = "csv"
    csv-path = "/lender/loans.csv"
    card-path = "/lender/loans.toml"

The `[data]` keys are the run configuration's data keys: they say which records this lender holds (for a
simulated lender, which share of a dataset). The lender loads its records from here, never from the request.
In deployment the policy file is in the folder the lender's node config names; in simulation fedcredit writes
one per simulated lender from the command-line options, as if each lender had written its own.
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from functools import lru_cache
from pathlib import Path
from types import MappingProxyType
from typing import Any

from federation.config import RunConfig
from federation.errors import ConfigError

FILE_NAME = "policy.toml"
# A floor far below any calibrated sigma of a sensible budget (epsilon 8 over a few rounds calibrates to about
# 0.5 here) that still refuses a coordinator asking for near-zero noise.
DEFAULT_MIN_NOISE = 0.3
DEFAULT_MAX_CLIP = 10.0
# The run configuration keys that say which records a lender holds.
DATA_KEYS = (
    "dataset",
    "data-dir",
    "csv-path",
    "card-path",
    "records",
    "lenders",
    "partition",
    "alpha",
    "holdout-fraction",
    "test-fraction",
    "seed",
)
PRIVACY_KEYS = (
    "max_epsilon",
    "delta",
    "min_noise_multiplier",
    "max_clip_norm",
    "require_dp",
    "allow_lender_level",
    "allow_reproducible_noise",
    "secure_sum_colluders",
)


class PolicyError(ConfigError):
    """A lender's policy file is missing or malformed."""


@dataclass(frozen=True)
class LenderPolicy:
    lender: int
    max_epsilon: float
    delta: float = 0.0
    min_noise_multiplier: float = DEFAULT_MIN_NOISE
    max_clip_norm: float = DEFAULT_MAX_CLIP
    require_dp: bool = True
    allow_lender_level: bool = False
    allow_reproducible_noise: bool = False
    # None: this lender trusts only itself and adds the full noise even under secure aggregation; c: it adds the
    # share z / sqrt(t - c) (federation.gbdt.leaf_sums.secure_noise_share), assuming at most c others collude.
    secure_sum_colluders: int | None = None
    registry: str = ""
    audit_canaries: str = (
        ""  # the audited lender only: the canaries its auditor gave it (federation.privacy.one_run_audit)
    )
    # Read-only: load_policy hands the same parsed policy to every message of an unchanged file, so what one Session
    # did to it must not be seen by the next (tests/test_redteam_cache.py).
    data: Mapping[str, Any] = field(default_factory=dict)
    # A folder the lender made for itself because its operator gave it none (a plain `flwr run .`): default limits,
    # and data keys taken from the coordinator's request. Signed in the manifest and flagged in every report.
    demo: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "data", MappingProxyType(dict(self.data)))

        def need(ok: bool, message: str) -> None:
            if not ok:
                raise PolicyError(f"lender {self.lender}'s policy: {message}")

        need(isinstance(self.lender, int) and self.lender >= 0, "lender must be a non-negative integer")
        need(_positive(self.max_epsilon), f"max_epsilon must be a positive number, got {self.max_epsilon}")
        need(isinstance(self.delta, (int, float)) and 0 <= self.delta < 1, f"delta must be in [0, 1), got {self.delta}")
        need(
            _positive(self.min_noise_multiplier),
            f"min_noise_multiplier must be positive, got {self.min_noise_multiplier}",
        )
        need(_positive(self.max_clip_norm), f"max_clip_norm must be positive, got {self.max_clip_norm}")
        need(
            self.secure_sum_colluders is None
            or (
                isinstance(self.secure_sum_colluders, int)
                and not isinstance(self.secure_sum_colluders, bool)
                and self.secure_sum_colluders >= 0
            ),
            f"secure_sum_colluders must be a whole number >= 0 (or absent), got {self.secure_sum_colluders!r}",
        )
        unknown = set(self.data) - set(DATA_KEYS)
        need(not unknown, f"unknown [data] keys {sorted(unknown)} (allowed: {', '.join(DATA_KEYS)})")
        need("dataset" in self.data, "[data] needs 'dataset'")

    # ---- what the lender holds ---------------------------------------------------------------
    def data_config(self) -> RunConfig:
        """The lender's data keys as a configuration the loaders understand (no other option is taken from it)."""
        return RunConfig.from_record({**self.data, "dp": False})

    def public_terms(self) -> dict[str, Any]:
        """What the lender signs into its manifest: its limits and flags (no paths, nothing secret)."""
        terms: dict[str, Any] = {key: getattr(self, key) for key in PRIVACY_KEYS}
        terms["registry_pinned"] = bool(self.registry)
        terms["audit_canaries"] = bool(self.audit_canaries)
        terms["demo"] = self.demo
        return terms

    # ---- file form ------------------------------------------------------------------------
    def to_toml(self) -> str:
        lines = [f"lender = {self.lender}", f"demo = {_toml(self.demo)}", "", "[privacy]"]
        # An absent term (None) is left out: TOML has no null.
        lines += [f"{key} = {_toml(getattr(self, key))}" for key in PRIVACY_KEYS if getattr(self, key) is not None]
        lines += [
            "",
            "[trust]",
            f"registry = {_toml(self.registry)}",
            f"audit_canaries = {_toml(self.audit_canaries)}",
            "",
            "[data]",
        ]
        lines += [f"{key} = {_toml(self.data[key])}" for key in DATA_KEYS if key in self.data]
        return "\n".join(lines) + "\n"

    def write(self, folder: str | Path) -> Path:
        from federation.runfolder import write_atomically

        path = Path(folder) / FILE_NAME
        write_atomically(path, self.to_toml())
        return path


def load_policy(folder: str | Path) -> LenderPolicy:
    path = Path(folder) / FILE_NAME
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        raise PolicyError(f"no privacy policy at {path} (a lender writes one with `fedcredit lender init`)") from None
    except OSError as exc:
        raise PolicyError(f"{path} is not a readable TOML policy ({exc.__class__.__name__}: {exc})") from None
    return _parsed_policy(path, text)


@lru_cache(maxsize=4096)
def _parsed_policy(path: Path, text: bytes) -> LenderPolicy:
    """The policy these bytes hold. The file is read at every message (a lender's edit takes effect at its next
    one) but parsed once per content: parsing was a tenth of the time of a federation of 1,000 simulated lenders."""
    try:
        raw = tomllib.loads(text.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise PolicyError(f"{path} is not a readable TOML policy ({exc.__class__.__name__}: {exc})") from None
    known = {"lender", "demo", "privacy", "trust", "data"}
    if not isinstance(raw, dict) or set(raw) - known or "lender" not in raw:
        raise PolicyError(f"{path}: a policy holds lender, [privacy], [trust] and [data], got {sorted(raw)}")
    privacy, trust = raw.get("privacy", {}), raw.get("trust", {})
    if set(privacy) - set(PRIVACY_KEYS) or set(trust) - {"registry", "audit_canaries"}:
        raise PolicyError(
            f"{path}: unknown keys {sorted((set(privacy) - set(PRIVACY_KEYS)) | (set(trust) - {'registry', 'audit_canaries'}))}"
        )
    if "max_epsilon" not in privacy:
        raise PolicyError(f"{path}: [privacy] needs max_epsilon")
    kinds = {f.name: f.type for f in fields(LenderPolicy)}
    try:
        values = {key: _coerce(value, kinds[key]) for key, value in privacy.items()}
        if not isinstance(raw.get("demo", False), bool):
            raise ValueError("demo must be true or false")
        return LenderPolicy(
            lender=raw["lender"],
            **values,
            demo=raw.get("demo", False),
            registry=str(trust.get("registry", "")),
            audit_canaries=str(trust.get("audit_canaries", "")),
            data=dict(raw.get("data", {})),
        )
    except (TypeError, ValueError) as exc:
        raise PolicyError(f"{path}: {exc}") from None


def for_simulated_lender(cfg: RunConfig, lender: int, registry: str = "", audit_canaries: str = "") -> LenderPolicy:
    """The policy a simulated lender would write for itself, from the command-line options: its budget, the
    run's delta rule, clip norm and noise floor, and the share of the dataset it holds."""
    from federation.gbdt_release import release_clip_norm

    record = cfg.to_record()
    data = {key: record[key] for key in DATA_KEYS}
    data["data-dir"] = cfg.resolved_data_dir() if cfg.dataset != "synthetic" else cfg.data_dir
    floor = min(DEFAULT_MIN_NOISE, cfg.noise_multiplier) if cfg.noise_multiplier else DEFAULT_MIN_NOISE
    return LenderPolicy(
        lender=lender,
        max_epsilon=cfg.budget_for(lender),
        delta=cfg.delta,
        min_noise_multiplier=floor,
        max_clip_norm=release_clip_norm(cfg),  # gbdt: the sensitivity of its leaf sums
        require_dp=cfg.dp,
        allow_lender_level=cfg.dp and cfg.dp_level == "lender",
        allow_reproducible_noise=cfg.reproducible_noise_not_private,
        secure_sum_colluders=None if cfg.secure_sum_colluders < 0 else cfg.secure_sum_colluders,
        registry=registry,
        audit_canaries=audit_canaries,
        data=data,
    )


def effective_delta(requested: float, policy_delta: float, records: int) -> float:
    """The delta a lender accounts at: its own (its policy's, or the rule 1/N^1.1 on its own training-record count),
    or the coordinator's request where that is stricter. The verifier applies the same rule to the lender's signed
    policy and signed record count."""
    from federation.privacy.accountant import default_delta

    own = policy_delta or default_delta(records)
    return min(requested, own) if requested else own


def _positive(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def _coerce(value: Any, kind: Any) -> Any:
    kind = str(kind)
    if "bool" in kind:
        if not isinstance(value, bool):
            raise ValueError(f"expected true or false, got {value!r}")
        return value
    if "int" in kind:  # secure_sum_colluders: a whole number, never a float or a bool
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"expected a whole number, got {value!r}")
        return value
    if "float" in kind:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"expected a number, got {value!r}")
        return float(value)
    return value


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else ("inf" if value > 0 else "-inf")
    text = str(value)
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
