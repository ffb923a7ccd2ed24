"""The run configuration: one dataclass, the single place where every option is defined.

The same keys (with hyphens) are the Flower app's `[tool.flwr.app.config]` in pyproject.toml, the
`fedcredit run` options and the ConfigRecord the server sends to lenders, so `flwr run .` and the CLI
run the same apps with the same meaning.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from federation.errors import ConfigError
from federation.gbdt.boosting import GbdtParams

_GBDT = (
    GbdtParams()
)  # the gbdt defaults: the setting federation/gbdt's tuning chose (benchmarks/results/gbdt_tuning.md)

DATASETS = ("synthetic", "taiwan_default", "give_me_some_credit", "german_credit", "spanish_credit", "csv")
PARTITIONS = ("natural", "iid", "dirichlet", "quantity")
MODELS = ("logreg", "mlp", "gbdt")
STRATEGIES = ("fedavg", "fedprox", "fedadam", "fedyogi", "fedadagrad", "fedmedian", "fedtrimmedavg")
# The lender's local step (federation/training.py LocalOptimizer; the same names there).
OPTIMIZERS = ("sgd", "adam", "adamw")
# gbdt's split candidates (federation/gbdt/split_candidates.py): every public threshold, or those a noisy count
# release of round 1 finds with records on both sides.
SPLIT_CANDIDATES = ("all", "noisy_quantiles")
LR_SCHEDULES = ("constant", "cosine")
ACCOUNTANTS = ("rdp", "prv")
DP_LEVELS = ("record", "lender")
ENGINES = ("inprocess", "simulation")
DATA_DIR_ENV = "FEDCREDIT_DATA_DIR"
# Fields that choose how `fedcredit run` launches the apps, not what they do: absent from the Flower app config
# (`[tool.flwr.app.config]` in pyproject.toml holds every other key, with its default), never sent with `flwr run`.
LAUNCHER_ONLY = ("engine",)


def default_data_dir() -> str:
    """The data directory: $FEDCREDIT_DATA_DIR, else ../shared/datasets beside the working folder."""
    return os.environ.get(DATA_DIR_ENV) or str(Path("..", "shared", "datasets"))


def _option(default: Any, help: str, choices: tuple[str, ...] = ()) -> Any:
    """A RunConfig field with its user-facing help (and allowed values): what `fedcredit run --help` shows."""
    return field(default=default, metadata={"help": help, "choices": choices})


@dataclass(frozen=True)
class RunConfig:
    """Everything that determines a run. Same config and seed give the same numbers.

    Each field carries its help text and, for a choice, the allowed values (`help_for`, `choices_for`): the CLI
    builds its options from them, and `validated` is the one place values are checked.
    """

    dataset: str = _option("synthetic", "The data: one of the built-in datasets, or csv (your own).", DATASETS)
    data_dir: str = _option(
        "", "Folder holding the real datasets (default $FEDCREDIT_DATA_DIR, else ../shared/datasets)."
    )
    csv_path: str = _option("", "Your own data: a CSV file (with --dataset csv).")
    card_path: str = _option("", "Your own data: its dataset card, TOML or JSON (with --dataset csv).")
    records: int = _option(20000, "Borrowers in the synthetic market.")
    lenders: int = _option(5, "Number of lenders.")
    lenders_per_round: int = _option(
        0, "Lenders drawn per round (0: all), for federations of many lenders (train and evaluate)."
    )
    partition: str = _option("natural", "How records are split into lenders.", PARTITIONS)
    alpha: float = _option(0.5, "Dirichlet concentration for dirichlet (label) and quantity skew.")
    holdout_fraction: float = _option(0.2, "Pooled held-out test fraction, kept aside for benchmarks only.")
    test_fraction: float = _option(0.2, "Each lender's own test split.")
    rounds: int = _option(5, "Federated rounds.")
    local_epochs: int = _option(1, "Local epochs per round.")
    batch_size: int = _option(64, "Expected batch size (Poisson sampling rate = 1/ceil(n/B)).")
    learning_rate: float = _option(0.5, "Local SGD learning rate.")
    model: str = _option("logreg", "Model.", MODELS)
    hidden: int = _option(32, "Hidden units of the mlp model.")
    # gbdt: DP federated gradient boosting (federation/gbdt/). Each round grows gbdt-trees-per-round trees of a
    # public random structure; --rounds is the number of boosting rounds, --noise-multiplier / --epsilon its noise.
    gbdt_trees_per_round: int = _option(
        _GBDT.trees_per_round,
        "gbdt: trees grown per round against the same residuals (one release of all their leaf sums).",
    )
    gbdt_depth: int = _option(_GBDT.depth, "gbdt: depth of every tree (2**depth leaves).")
    gbdt_bins: int = _option(
        _GBDT.n_bins, "gbdt: equal-width bins over the public encoded range [-1, 1] (the split candidates)."
    )
    gbdt_learning_rate: float = _option(_GBDT.learning_rate, "gbdt: shrinkage applied to every leaf value.")
    gbdt_lambda: float = _option(
        _GBDT.reg_lambda, "gbdt: L2 regularisation of the Newton leaf value -G / (H + lambda)."
    )
    gbdt_leaf_clip: float = _option(
        _GBDT.leaf_clip, "gbdt: leaf values clipped to [-leaf-clip, leaf-clip] before shrinkage."
    )
    gbdt_split_candidates: str = _option(
        "all",
        "gbdt: 'all' draws every split among every public bin threshold; 'noisy_quantiles' spends round 1 on one "
        "noisy release of each lender's record counts per feature and bin, and draws the trees of rounds 2.. among "
        "the thresholds with at least gbdt-min-fraction of the records on each side.",
        SPLIT_CANDIDATES,
    )
    gbdt_count_share: float = _option(
        0.1, "gbdt with noisy_quantiles: the share of each lender's budget its round-1 count release spends."
    )
    gbdt_min_fraction: float = _option(
        0.05, "gbdt with noisy_quantiles: a threshold is a candidate when each side holds this share of the records."
    )
    # ---- the lender's local optimizer (post-processing of the DP gradient: no effect on the accounting) ----
    optimizer: str = _option("sgd", "Local optimizer (sgd: momentum 0.9; adamw: decoupled weight decay).", OPTIMIZERS)
    weight_decay: float = _option(0.0, "Local weight decay (adamw: decoupled; sgd, adam: L2 on the gradient).")
    lr_schedule: str = _option(
        "constant", "Local learning-rate schedule (cosine: decays to 0 over each local training).", LR_SCHEDULES
    )
    # ----
    strategy: str = _option("fedavg", "Aggregation.", STRATEGIES)
    proximal_mu: float = _option(0.01, "FedProx proximal weight.")
    server_learning_rate: float = _option(0.1, "FedAdam, FedYogi, FedAdagrad server learning rate (eta).")
    trim_fraction: float = _option(0.2, "FedTrimmedAvg: fraction cut at each end, per coordinate.")
    max_update_norm: float = _option(
        1000.0, "Reject an update farther than this (L2) from the global model; 0: no bound."
    )
    fail_rate: float = _option(
        0.0, "Fault injection (tests, benchmarks): each lender fails a round with this probability."
    )
    dp: bool = _option(True, "Train with differential privacy (off: --no-dp).")
    epsilon: float = _option(3.0, "Each lender's epsilon budget (the calibration target).")
    delta: float = _option(0.0, "DP delta; 0 means 1/N^1.1 per lender, N = its n records rounded up to a power of two.")
    clip_norm: float = _option(1.0, "Per-example gradient clipping norm.")
    accountant: str = _option("rdp", "Privacy accountant.", ACCOUNTANTS)
    noise_multiplier: float = _option(
        0.0,
        "Fixed noise multiplier sigma; 0 calibrates sigma to the budget. "
        "With a fixed sigma a lender trains until its next round would exceed its budget.",
    )
    dp_level: str = _option(
        "record",
        "DP granularity (record: DP-SGD inside each lender; lender: clipped updates, "
        "noise added to the aggregate, Poisson-sampled lenders).",
        DP_LEVELS,
    )
    lender_sample_rate: float = _option(1.0, "With --dp-level lender: probability each lender takes part in a round.")
    reproducible_noise_not_private: bool = _option(
        False,
        "Seeded DP noise and batch sampling, for tests and benchmarks that must repeat exactly: NOT private (anyone "
        "with the seed can subtract the noise; each lender's own policy must allow it too). Default: each lender "
        "draws its noise from a CSPRNG of its own.",
    )
    secure_aggregation: bool = _option(
        False,
        "Lenders send only pairwise-masked updates; the coordinator learns their sum (FedAvg, FedProx; "
        "record-level DP).",
    )
    secure_sum_colluders: int = _option(
        -1,
        "Simulated lenders' policy, gbdt under --secure-aggregation: each lender adds only its share of the noise, "
        "assuming at most this many other lenders collude with the coordinator (-1: absent, each adds it all).",
    )
    seed: int = _option(0, "Seed: same inputs and seed give the same numbers.")
    output_dir: str = _option("", "Run folder (default: a new folder under runs/).")
    keys_dir: str = _option(
        "",
        "Folder for the private signing keys (default RUN-keys beside the run folder, never in it; "
        "existing keys there are reused).",
    )
    engine: str = _option(
        "inprocess",
        "inprocess (the same ServerApp and ClientApp on an in-process Grid, through Flower's wire format: no engine "
        "start) or simulation (Flower's Ray simulation runtime, for large simulations).",
        ENGINES,
    )
    epsilon_overrides: tuple[tuple[int, float], ...] = _option(
        (), "Per-lender budgets overriding epsilon, e.g. '0:1,3:8'."
    )
    card_sha256: str = _option(
        "",
        "SHA-256 of the dataset card the coordinator expects every lender to use (empty: it takes the lenders' own, "
        "which must all agree). A lender whose card differs declines; it never takes a card from the coordinator.",
    )

    # ---- conversion -------------------------------------------------------------------------
    @classmethod
    def keys(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    @classmethod
    def field_of(cls, name: str) -> dataclasses.Field[Any]:
        """The field `name` (underscored or hyphenated); unknown names are a ConfigError."""
        for f in fields(cls):
            if f.name == name.replace("-", "_"):
                return f
        raise ConfigError(f"unknown configuration key '{name}'")

    @classmethod
    def help_for(cls, name: str) -> str:
        return str(cls.field_of(name).metadata["help"])

    @classmethod
    def group_for(cls, name: str) -> str:
        """The group of options field `name` belongs to (a panel of `fedcredit run --help`)."""
        field_name = cls.field_of(name).name
        return next(group for group, names in OPTION_GROUPS.items() if field_name in names)

    @classmethod
    def choices_for(cls, name: str) -> tuple[str, ...]:
        """The allowed values of a choice field (empty for any other field)."""
        return tuple(cls.field_of(name).metadata["choices"])

    def to_record(self) -> dict[str, Any]:
        """Flat, hyphenated, Flower-friendly values (str, int, float, bool)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "epsilon_overrides":
                value = ",".join(f"{lender}:{eps!r}" for lender, eps in value)
            out[f.name.replace("_", "-")] = value
        return out

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> RunConfig:
        """Build from hyphenated keys (Flower run config or ConfigRecord); unknown keys are errors."""
        known = {f.name: f for f in fields(cls)}
        kwargs: dict[str, Any] = {}
        for key, value in record.items():
            name = key.replace("-", "_")
            if name not in known:
                raise ConfigError(f"unknown configuration key '{key}'")
            if name == "epsilon_overrides":
                kwargs[name] = parse_epsilon_overrides(str(value))
                continue
            default = known[name].default
            kwargs[name] = _coerce(key, value, type(default))
        return cls(**kwargs).validated()

    def replace(self, **changes: Any) -> RunConfig:
        return dataclasses.replace(self, **changes).validated()

    # ---- derived values ---------------------------------------------------------------------
    def budget_for(self, lender: int) -> float:
        """The epsilon budget of one lender (per-lender override, else the run's epsilon)."""
        return dict(self.epsilon_overrides).get(lender, self.epsilon)

    def resolved_data_dir(self) -> str:
        return self.data_dir or default_data_dir()

    # ---- validation -------------------------------------------------------------------------
    def validated(self) -> RunConfig:
        from federation.privacy.limits import MAX_DELTA, check_epsilon

        def need(condition: bool, message: str) -> None:
            if not condition:
                raise ConfigError(message)

        for f in fields(self):  # the choice fields: one of the values in their metadata
            allowed = f.metadata["choices"]
            value = getattr(self, f.name)
            name = f.name.replace("_", "-")
            need(not allowed or value in allowed, f"unknown {name} '{value}' (choose from {', '.join(allowed)})")
        need(self.lenders >= 1, f"lenders must be at least 1, got {self.lenders}")
        need(
            0 <= self.lenders_per_round <= self.lenders,
            f"lenders-per-round must be between 0 (all) and lenders ({self.lenders}), got {self.lenders_per_round}",
        )
        need(self.rounds >= 1, f"rounds must be at least 1, got {self.rounds}")
        need(self.local_epochs >= 1, f"local-epochs must be at least 1, got {self.local_epochs}")
        need(self.batch_size >= 1, f"batch-size must be at least 1, got {self.batch_size}")
        need(self.records >= 1, f"records must be at least 1, got {self.records}")
        need(_finite_positive(self.learning_rate), f"learning-rate must be a positive number, got {self.learning_rate}")
        need(_finite_positive(self.alpha), f"alpha must be a positive number, got {self.alpha}")
        need(0.0 < self.holdout_fraction < 1.0, f"holdout-fraction must be in (0, 1), got {self.holdout_fraction}")
        need(0.0 < self.test_fraction < 1.0, f"test-fraction must be in (0, 1), got {self.test_fraction}")
        need(self.hidden >= 1, f"hidden must be at least 1, got {self.hidden}")
        need(
            self.weight_decay >= 0 and math.isfinite(self.weight_decay),
            f"weight-decay must be >= 0, got {self.weight_decay}",
        )
        need(
            self.proximal_mu >= 0 and math.isfinite(self.proximal_mu),
            f"proximal-mu must be >= 0, got {self.proximal_mu}",
        )
        need(0.0 <= self.trim_fraction < 0.5, f"trim-fraction must be in [0, 0.5), got {self.trim_fraction}")
        need(
            self.max_update_norm >= 0 and math.isfinite(self.max_update_norm),
            f"max-update-norm must be >= 0, got {self.max_update_norm}",
        )
        need(0.0 <= self.fail_rate < 1.0, f"fail-rate must be in [0, 1), got {self.fail_rate}")
        need(
            _finite_positive(self.server_learning_rate),
            f"server-learning-rate must be positive, got {self.server_learning_rate}",
        )
        need(self.secure_sum_colluders >= -1, f"secure-sum-colluders must be >= -1, got {self.secure_sum_colluders}")
        if self.model == "gbdt":
            self._check_gbdt(need)
        if self.secure_aggregation:
            need(
                self.strategy in ("fedavg", "fedprox"),
                f"secure aggregation gives the coordinator only the sum of the "
                f"updates; strategy '{self.strategy}' needs each update (use fedavg or fedprox)",
            )
            need(
                not (self.dp and self.dp_level == "lender"),
                "secure aggregation with dp-level 'lender' is not supported "
                "(the coordinator clips each update there); use dp-level 'record'",
            )
            from federation.secagg import MIN_ROSTER

            need(
                self.lenders >= MIN_ROSTER and (self.lenders_per_round == 0 or self.lenders_per_round >= MIN_ROSTER),
                f"secure aggregation needs at least {MIN_ROSTER} lenders a round (with two, each would learn the "
                "other's update from the sum)",
            )
            need(
                self.model == "gbdt" or _finite_positive(self.max_update_norm),
                "secure aggregation needs max-update-norm > 0: it bounds the "
                "fixed-point encoding (each lender clips its update to it)",
            )
        if self.dp:
            check_epsilon(self.epsilon, "epsilon")  # positive, finite, and at most MAX_EPSILON
            need(0.0 <= self.delta < 1.0 and math.isfinite(self.delta), f"delta must be in [0, 1), got {self.delta}")
            # An explicit delta is checked against 1/n per lender in runner.validate (it needs the record
            # counts); one above MAX_DELTA is meaningless for any n, so it is refused here already.
            need(
                self.delta <= MAX_DELTA,
                f"delta {self.delta:g} is above {MAX_DELTA:g}: no guarantee with a larger "
                f"delta is meaningful (use a delta of at most {MAX_DELTA:g}, or 0 for the per-lender default)",
            )
            need(_finite_positive(self.clip_norm), f"clip-norm must be a positive number, got {self.clip_norm}")
            need(
                self.noise_multiplier >= 0 and math.isfinite(self.noise_multiplier),
                f"noise-multiplier must be 0 (calibrate to the budget) or positive, got {self.noise_multiplier}",
            )
            need(
                0.0 < self.lender_sample_rate <= 1.0,
                f"lender-sample-rate must be in (0, 1], got {self.lender_sample_rate}",
            )
            if self.dp_level == "lender":
                need(
                    self.strategy in ("fedavg", "fedprox"),
                    f"dp-level 'lender' adds noise to the FedAvg update; strategy '{self.strategy}' is not supported with it",
                )
                need(
                    self.lenders_per_round == 0,
                    "dp-level 'lender' samples lenders itself (Poisson, --lender-sample-rate); "
                    "leave lenders-per-round at 0",
                )
                need(
                    not self.epsilon_overrides,
                    "dp-level 'lender' has one budget for the federation; per-lender budgets apply to dp-level 'record'",
                )
            budgets: dict[int, float] = {}
            for lender, eps in self.epsilon_overrides:
                need(
                    lender not in budgets,
                    f"lender {lender} is given two budgets ({budgets.get(lender, 0):g} and {eps:g})",
                )
                budgets[lender] = eps
                check_epsilon(eps, f"epsilon budget of lender {lender}")
                need(
                    0 <= lender < self.lenders,
                    f"epsilon budget given for lender {lender}, but lenders are 0..{self.lenders - 1}",
                )
        if self.dataset == "csv":
            need(bool(self.csv_path), "dataset 'csv' needs --csv PATH")
            need(bool(self.card_path), "dataset 'csv' needs --card PATH (a dataset card describing every column)")
        if self.partition == "natural":
            need(
                self.dataset in ("synthetic", "csv"),
                f"partition 'natural' needs a lender column; dataset '{self.dataset}' has none (use iid, dirichlet or quantity)",
            )
        return self

    def _check_gbdt(self, need: Any) -> None:
        """The gbdt options, and the run options gbdt does not combine with (one clear line each)."""
        from federation.gbdt.binning import MAX_BINS

        need(
            self.gbdt_trees_per_round >= 1, f"gbdt-trees-per-round must be at least 1, got {self.gbdt_trees_per_round}"
        )
        need(1 <= self.gbdt_depth <= 10, f"gbdt-depth must be between 1 and 10, got {self.gbdt_depth}")
        need(2 <= self.gbdt_bins <= MAX_BINS, f"gbdt-bins must be between 2 and {MAX_BINS}, got {self.gbdt_bins}")
        for name in ("gbdt_learning_rate", "gbdt_lambda", "gbdt_leaf_clip"):
            value = getattr(self, name)
            need(_finite_positive(value), f"{name.replace('_', '-')} must be a positive number, got {value}")
        need(0 < self.gbdt_count_share < 1, f"gbdt-count-share must be between 0 and 1, got {self.gbdt_count_share}")
        need(
            0 <= self.gbdt_min_fraction < 0.5,
            f"gbdt-min-fraction must be at least 0 and below 0.5, got {self.gbdt_min_fraction}",
        )
        need(
            self.gbdt_split_candidates != "noisy_quantiles" or self.rounds >= 2,
            "gbdt-split-candidates noisy_quantiles spends round 1 on the count release: it needs --rounds 2 or more",
        )
        need(
            self.strategy == "fedavg",
            f"model gbdt sums the lenders' noisy leaf sums; strategy '{self.strategy}' combines model updates "
            "(use fedavg, the default)",
        )
        need(
            not (self.dp and self.dp_level == "lender"),
            "model gbdt protects records (each lender noises its own leaf sums); use dp-level 'record'",
        )


def parse_epsilon_overrides(text: str) -> tuple[tuple[int, float], ...]:
    """Parse 'LENDER:EPS,LENDER:EPS' (e.g. '0:1.0,3:8')."""
    if not text.strip():
        return ()
    out: dict[int, float] = {}
    for item in text.split(","):
        try:
            lender_text, eps_text = item.split(":")
            lender, eps = int(lender_text), float(eps_text)
        except ValueError:
            raise ConfigError(f"per-lender budget '{item}' is not LENDER:EPSILON") from None
        if lender in out:  # the later one would silently win: refuse instead of guessing which was meant
            raise ConfigError(f"lender {lender} is given two budgets ({out[lender]:g} and {eps:g})")
        out[lender] = eps
    return tuple(sorted(out.items()))


# Every field in one group: the panels of `fedcredit run --help`, in this order (tests/test_options.py checks that
# each field is in exactly one).
OPTION_GROUPS: dict[str, tuple[str, ...]] = {
    "Data": (
        "dataset",
        "data_dir",
        "csv_path",
        "card_path",
        "card_sha256",
        "records",
        "holdout_fraction",
        "test_fraction",
    ),
    "Federation": (
        "lenders",
        "lenders_per_round",
        "partition",
        "alpha",
        "rounds",
        "strategy",
        "proximal_mu",
        "server_learning_rate",
        "trim_fraction",
        "seed",
        "engine",
    ),
    "Model": (
        "model",
        "hidden",
        "local_epochs",
        "batch_size",
        "learning_rate",
        "optimizer",
        "weight_decay",
        "lr_schedule",
    ),
    "Gradient boosting (--model gbdt)": (
        "gbdt_trees_per_round",
        "gbdt_depth",
        "gbdt_bins",
        "gbdt_learning_rate",
        "gbdt_lambda",
        "gbdt_leaf_clip",
        "gbdt_split_candidates",
        "gbdt_count_share",
        "gbdt_min_fraction",
    ),
    "Privacy": (
        "dp",
        "epsilon",
        "epsilon_overrides",
        "delta",
        "clip_norm",
        "accountant",
        "noise_multiplier",
        "dp_level",
        "lender_sample_rate",
        "reproducible_noise_not_private",
    ),
    "Secure aggregation": ("secure_aggregation", "secure_sum_colluders"),
    "Faults": ("max_update_norm", "fail_rate"),
    "Output": ("output_dir", "keys_dir"),
}


def _finite_positive(value: float) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def _coerce(key: str, value: Any, kind: type) -> Any:
    try:
        # A ConfigRecord may carry lists and bytes; a setting is one number, flag or word, and bool([False]) is True.
        if isinstance(value, (list, tuple, dict, bytes)):
            raise TypeError
        if kind is bool:
            if isinstance(value, str):
                if value.lower() in ("true", "1", "yes"):
                    return True
                if value.lower() in ("false", "0", "no"):
                    return False
                raise ValueError
            return bool(value)
        if kind is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        if kind is float:
            return float(value)
        return str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"configuration key '{key}' expects {kind.__name__}, got {value!r}") from None
