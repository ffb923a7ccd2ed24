"""Scoring new applicants with a finished run's model, from the run folder's model.json alone.

model.json (derived from the signed ledger and the final model: federation/audit_trail/derive.py) holds the model
kind and weights, the card every lender signed in its manifest (as data: feature order, bounds, transforms,
categories, roles, refused columns), the card's name and hash and the scorecard's constants. An applicant file passes
the policy as training data does: a column the card does not describe is refused; the columns the card refuses
(sensitive, non-credit, identity) are dropped, and said so; records without consent are not scored; the credit
columns are encoded by federation.encoding with the card, with its errors (NaN, wrong type, unknown category).
One difference, on purpose: a value outside the card's public bounds is an error here (training clips it to the
bound; a single applicant's score at a clipped sentinel value would be a wrong decision), unless `clip` is asked.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from federation.card import CREDIT_CATEGORIES, PROHIBITED_CATEGORIES, Column, DatasetCard, card_from_data
from federation.data.loaders import read_csv
from federation.encoding import _TRANSFORMS, bad_rows, card_units, encode, feature_names
from federation.errors import CardError, ConfigError, DataError, PolicyViolation
from federation.model import MODEL_FORMAT, Scorecard, build_model, predict_proba, set_arrays
from federation.policy import check_card, consent_mask, used_field_violation
from federation.runfolder import csv_text

MODEL_FILE = "model.json"
SCORE_COLUMNS = ["probability_default", "score"]
POINTS_COLUMNS = ["column", "feature", "bin", "low", "high", "points"]
# A continuous credit column is cut into this many equal ranges of its encoded value ([-1, 1]) in the points table;
# its points there are those of the range's middle, so an applicant's table points are within
# factor * |weight| / CONTINUOUS_BINS of its exact points for that column.
CONTINUOUS_BINS = 10
# The inverses of federation.encoding's transforms (for the points table's ranges, in the applicant file's units).
_INVERSE: dict[str, Callable[[float], float]] = {
    "identity": lambda t: t,
    "log1p": lambda t: math.copysign(math.expm1(abs(t)), t),
    "asinh": math.sinh,
}


@dataclass(frozen=True)
class ScoringModel:
    """A run's model as model.json describes it."""

    kind: str
    hidden: int
    features: tuple[str, ...]
    weights: dict[str, np.ndarray]
    card: DatasetCard
    card_sha256: str
    used: tuple[str, ...]  # the card's credit columns, in feature order
    scorecard: Scorecard
    ensemble: dict | None = None  # gbdt: model.json's "ensemble" (federation.gbdt.trees.Ensemble as plain data)


@dataclass(frozen=True)
class Scores:
    """The applicants scored (those with consent), by id, and what the policy did to the file."""

    id_column: str  # the card's record_id column when the file has it, else "row" (the file's data row, from 1)
    ids: list
    probability: np.ndarray  # of default
    score: np.ndarray  # scorecard points: higher is safer
    x: np.ndarray  # the applicants as encoded
    values: pd.DataFrame  # the applicants' credit columns as read
    dropped: list[dict]  # {"name", "category"}: the columns the card refuses that the file carried
    without_consent: int


def load_model(run_dir: str | Path) -> ScoringModel:
    """The model of a finished run folder; a ConfigError (one line) when model.json is absent or malformed."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ConfigError(f"no such run folder: {run_dir}")
    path = run_dir / MODEL_FILE
    if not path.is_file():
        raise ConfigError(f"{path} not found (a finished run folder holds it)")
    try:
        info = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ConfigError(f"{path} is not JSON") from None
    if not isinstance(info, dict) or info.get("format") != MODEL_FORMAT:
        raise ConfigError(f"{path} is not a {MODEL_FORMAT} file (a run from an older fedcredit cannot score)")
    try:
        return _read_model(info, path)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ConfigError(f"{path} is malformed ({exc.__class__.__name__}: {exc})") from None


def _read_model(info: dict, path: Path) -> ScoringModel:
    card = card_from_data(info["encoding"]["card"], f"{path} (its card)")
    check_card(card)  # the policy's lexicon, as for a training card
    used = tuple(str(f["name"]) for f in info["fields_used"])
    if used != tuple(c.name for c in card.columns if c.category in CREDIT_CATEGORIES):
        raise ConfigError(f"{path}: its fields_used are not its card's credit columns")
    for field in info["fields_used"]:
        violation = used_field_violation(field)
        if violation:
            raise PolicyViolation(f"{path}: {violation}")
    features = tuple(str(f) for f in info["features"])
    if list(features) != feature_names(card, list(used)):
        raise ConfigError(f"{path}: its features are not those its card encodes")
    weights = {}
    for name, spec in info["weights"].items():
        if any(v is None for v in spec["values"]):
            raise ConfigError(f"{path}: weight '{name}' holds a value that is not finite; this model cannot score")
        weights[str(name)] = np.asarray(spec["values"], dtype=np.float64).reshape(spec["shape"])
    kind = str(info["model"])
    if kind not in PREDICTORS:
        raise ConfigError(f"{path}: model kind '{kind}' has no scorer (scorers: {', '.join(PREDICTORS)})")
    constants = info["scorecard"]
    return ScoringModel(
        kind=kind,
        hidden=int(info["hidden"]),
        features=features,
        weights=weights,
        card=card,
        card_sha256=str(info["card_sha256"]),
        used=used,
        scorecard=Scorecard(float(constants["base_score"]), float(constants["base_odds"]), float(constants["pdo"])),
        ensemble=info.get("ensemble") if kind == "gbdt" else None,
    )


def _torch_probability(model: ScoringModel, x: np.ndarray) -> np.ndarray:
    """The built-in torch models: the very module and forward pass the lenders evaluated with."""
    net = build_model(model.kind, len(model.features), model.hidden)
    try:
        set_arrays(net, {name: w.astype(np.float32) for name, w in model.weights.items()})
    except RuntimeError as exc:
        raise ConfigError(
            f"model.json's weights do not fit a {model.kind} model of {len(model.features)} features "
            f"({str(exc).splitlines()[0]})"
        ) from None
    return predict_proba(net, x)


def _gbdt_probability(model: ScoringModel, x: np.ndarray) -> np.ndarray:
    """The gbdt ensemble of model.json (rebuilt from the ledger by whoever wrote or verified the folder), on the
    records binned by the same public bins the lenders used (federation.gbdt.binning)."""
    from federation.gbdt.binning import bin_features
    from federation.gbdt.trees import Ensemble

    if not isinstance(model.ensemble, dict):
        raise ConfigError("model.json holds no gbdt ensemble (its ledger gave no model); this run cannot score")
    try:
        ensemble = Ensemble.from_dict(model.ensemble)
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"model.json's gbdt ensemble is malformed ({exc})") from None
    if ensemble.n_features != len(model.features):
        raise ConfigError(
            f"model.json's gbdt ensemble splits {ensemble.n_features} features; its card encodes {len(model.features)}"
        )
    return np.asarray(ensemble.predict_proba(bin_features(x, ensemble.n_bins)), dtype=np.float64)


# The one place a model kind is scored: its probability of default for encoded records.
PREDICTORS: dict[str, Callable[[ScoringModel, np.ndarray], np.ndarray]] = {
    "logreg": _torch_probability,
    "mlp": _torch_probability,
    "gbdt": _gbdt_probability,
}


def read_applicants(path: str | Path) -> pd.DataFrame:
    """The applicant file, read with the loaders' checks (missing, empty, malformed: one line naming the file)."""
    return read_csv(Path(path))


def score_frame(model: ScoringModel, frame: pd.DataFrame, clip: bool = False) -> Scores:
    """Score every consenting applicant of `frame` (see the module docstring for the policy)."""
    card = model.card
    undescribed = [c for c in frame.columns if c not in card.column_names]
    if undescribed:  # the words of federation.policy.check_schema: a column nobody classified is not used
        raise CardError(
            f"card '{card.name}' does not describe column '{undescribed[0]}' (every column needs a category)"
        )
    consent = card.role("consent")
    required = [*model.used, *([consent.name] if consent is not None else [])]
    absent = [c for c in required if c not in frame.columns]
    if absent:
        raise DataError(f"column '{absent[0]}' listed in card '{card.name}' is missing from the data")
    dropped = [
        {"name": c.name, "category": c.category}
        for c in card.columns
        if c.category in PROHIBITED_CATEGORIES and c.name in frame.columns
    ]
    keep = consent_mask(frame, card)
    if not keep.any():
        assert consent is not None  # without a consent column every record may be used
        raise DataError(
            f"no applicant has consent (column '{consent.name}' never holds "
            f"{', '.join(map(repr, consent.consented))}); nothing to score"
        )
    applicants = frame.loc[keep]
    values = applicants[list(model.used)]
    for name in values.columns:  # defense in depth, as in federation.policy.apply_policy
        if card.column(name).category not in CREDIT_CATEGORIES:
            raise PolicyViolation(f"column '{name}' ({card.column(name).category}) reached scoring")
    x = encode(values, card)
    if not clip:
        _refuse_out_of_bounds(values, card)
    probability = PREDICTORS[model.kind](model, x)
    record_id = card.role("record_id")
    if record_id is not None and record_id.name in applicants.columns:
        id_column, ids = record_id.name, applicants[record_id.name].tolist()
    else:
        id_column, ids = "row", [int(i) + 1 for i in applicants.index]  # the data row from 1, as in error messages
    return Scores(
        id_column,
        ids,
        probability,
        model.scorecard.score(probability),
        x,
        values,
        dropped,
        int((~keep).sum()),
    )


def _refuse_out_of_bounds(values: pd.DataFrame, card: DatasetCard) -> None:
    """A continuous credit value outside the card's public bounds: a DataError naming it (encoding would clip it)."""
    for name in values.columns:
        col = card.column(name)
        if col.type != "numeric" or col.bins or col.bounds is None:
            continue
        raw = card_units(pd.to_numeric(values[name], errors="coerce").to_numpy(dtype=float), col)
        lo, hi = col.bounds
        outside = np.isfinite(raw) & ((raw < lo) | (raw > hi))
        if outside.any():
            i = int(np.flatnonzero(outside)[0])
            bad = values[name].iloc[i]
            bad = bad.item() if isinstance(bad, np.generic) else bad
            raise DataError(
                f"column '{name}' has value {bad!r} outside the card's public bounds "
                f"[{lo:g}, {hi:g}] ({bad_rows(outside, values.index)}); the model would score it as if at the bound: "
                "correct it, or pass --clip to clip it as training does"
            )


def scores_csv(scores: Scores) -> str:
    rows = [
        {scores.id_column: i, "probability_default": float(p), "score": float(s)}
        for i, p, s in zip(scores.ids, scores.probability, scores.score, strict=True)
    ]
    return csv_text([scores.id_column, *SCORE_COLUMNS], rows)


def points_table(model: ScoringModel) -> list[dict]:
    """The logistic scorecard as points per feature bin: score = the base row's points + one row's points per credit
    column (the row of the applicant's category, bin or range; "(missing)" where the value is missing).

    Exact (up to the rounding to 0.01) for categorical and binned columns; for a continuous column the points of
    the range's middle (see CONTINUOUS_BINS)."""
    if model.kind != "logreg":
        raise ConfigError(
            f"a points table is the logistic scorecard's; this run's model is '{model.kind}', whose points per "
            "feature do not add up to its score"
        )
    w = model.weights["linear.weight"].ravel()
    factor = model.scorecard.factor
    # score = offset + factor * ln(good:bad odds) = offset - factor * (bias + sum_j w_j x_j)
    base = model.scorecard.offset - factor * float(model.weights["linear.bias"].ravel()[0])
    rows = [_row("(base)", "", "every applicant", "", "", base)]
    by_feature = dict(zip(model.features, (-factor * float(v) for v in w), strict=True))
    for name in model.used:
        rows += _column_points(model.card.column(name), by_feature)
    return rows


def _column_points(col: Column, points: dict[str, float]) -> list[dict]:
    names = col.feature_names()
    rows = []
    if col.type == "categorical":
        rows = [_row(col.name, f, c, "", "", points[f]) for f, c in zip(names, col.categories, strict=False)]
        if col.missing == "unknown":
            rows.append(_row(col.name, "", "(missing)", "", "", 0.0))  # the all-zero code
        return rows
    if col.bins:
        edges = [-math.inf, *col.bins, math.inf]
        for k, feature in enumerate(names[: len(col.bins) + 1]):
            lo, hi = sorted((_input_value(col, edges[k]), _input_value(col, edges[k + 1])))
            rows.append(_row(col.name, feature, feature[len(col.name) :], lo, hi, points[feature]))
    else:
        lo_bound, hi_bound = col.bounds  # type: ignore[misc]
        inner = [_unscaled(col, -1 + 2 * k / CONTINUOUS_BINS) for k in range(1, CONTINUOUS_BINS)]
        edges = [lo_bound, *inner, hi_bound]  # the outer edges are the bounds themselves, not a float's round trip
        for k in range(CONTINUOUS_BINS):
            lo, hi = sorted((_input_value(col, edges[k]), _input_value(col, edges[k + 1])))
            middle = -1 + (2 * k + 1) / CONTINUOUS_BINS  # the range's middle, encoded
            rows.append(
                _row(col.name, col.name, f"range {k + 1} of {CONTINUOUS_BINS}", lo, hi, points[col.name] * middle)
            )
    if col.missing == "indicator":  # a missing value encodes as 0 (no points) plus its indicator
        rows.append(_row(col.name, f"{col.name}__missing", "(missing)", "", "", points[f"{col.name}__missing"]))
    return rows


def _unscaled(col: Column, encoded: float) -> float:
    """The card-space value (after its affine) that federation.encoding scales to `encoded` in [-1, 1]."""
    lo, hi = col.bounds  # type: ignore[misc]
    f = _TRANSFORMS[col.transform]
    t_lo, t_hi = float(f(np.array(lo))), float(f(np.array(hi)))
    return _INVERSE[col.transform](t_lo + (encoded + 1) / 2 * (t_hi - t_lo))


def _input_value(col: Column, value: float) -> float:
    """A card-space value in the applicant file's units (undoing the card's affine)."""
    if col.affine is None:
        return value
    offset, scale = col.affine
    return (value - offset) / scale if math.isfinite(value) else math.copysign(value, scale * value)


def _row(column: str, feature: str, bin_: str, low: float | str, high: float | str, points: float) -> dict:
    def edge(v: float | str) -> float | str:
        return v if isinstance(v, str) or math.isfinite(v) else str(v)  # exact edges: an applicant's row is unambiguous

    return {
        "column": column,
        "feature": feature,
        "bin": bin_,
        "low": edge(low),
        "high": edge(high),
        "points": round(points, 2),
    }


def points_csv(model: ScoringModel) -> str:
    return csv_text(POINTS_COLUMNS, points_table(model))
