"""Dataset loaders: one function per dataset, each returning (raw frame, card).

Real datasets are read from a data directory (never copied into the repository). Every loader
accepts the public original a user downloads, and the copies in ../shared/datasets.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from federation.card import DatasetCard, builtin_card, load_card
from federation.config import RunConfig
from federation.errors import DataError

TAIWAN_UCI_LABEL = "default payment next month"
TAIWAN_FATE_HOST = ["LIMIT_BAL", "SEX", "EDUCATION", "MARRIAGE", "AGE", "PAY_0", "PAY_2", "PAY_3", "PAY_4", "PAY_5"]
TAIWAN_FATE_GUEST = ["PAY_6"] + [f"BILL_AMT{k}" for k in range(1, 7)] + [f"PAY_AMT{k}" for k in range(1, 7)]
# FATE's anonymized x0..x9 of Give Me Some Credit, as inferred in the card's description. x1 and x7 were once
# swapped here: x1's code spacing is 1 / 4.1693 (times 90+ days late) and x7's 1 / 4.1928 (30-59 days), and each
# column's code for 0 is minus that column's Kaggle mean over its standard deviation (tests/test_cards_policy_encoding.py).
GMSC_FATE_NAMES = {
    "x0": "NumberOfOpenCreditLinesAndLoans",
    "x1": "NumberOfTimes90DaysLate",
    "x2": "NumberRealEstateLoansOrLines",
    "x3": "NumberOfTime60-89DaysPastDueNotWorse",
    "x4": "NumberOfDependents",
    "x5": "RevolvingUtilizationOfUnsecuredLines",
    "x6": "age",
    "x7": "NumberOfTime30-59DaysPastDueNotWorse",
    "x8": "DebtRatio",
    "x9": "MonthlyIncome",
    "y": "SeriousDlqin2yrs",
}


def read_csv(path: Path, **kwargs) -> pd.DataFrame:
    """pandas.read_csv with one-line errors naming the file."""
    if not path.is_file():
        raise DataError(f"data file not found: {path}")
    try:
        frame = pd.read_csv(path, **kwargs)
    except pd.errors.EmptyDataError:
        raise DataError(f"data file {path} is empty") from None
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as exc:
        raise DataError(f"data file {path} is not a well-formed CSV: {str(exc).splitlines()[0]}") from None
    if frame.empty:
        raise DataError(f"data file {path} has no records")
    return frame


def _dataset_dir(cfg: RunConfig, name: str) -> Path:
    root = Path(cfg.resolved_data_dir())
    if not root.is_dir():
        raise DataError(f"data directory not found: {root} (set --data-dir or $FEDCREDIT_DATA_DIR)")
    folder = root / name
    if not folder.is_dir():
        raise DataError(f"dataset folder not found: {folder}")
    return folder


def load_taiwan(cfg: RunConfig) -> tuple[pd.DataFrame, DatasetCard]:
    """FATE's standardized vertical split (guest + host joined on id) or the UCI original."""
    folder = _dataset_dir(cfg, "taiwan_default")
    guest, host = folder / "default_credit_hetero_guest.csv", folder / "default_credit_hetero_host.csv"
    if guest.is_file() or host.is_file():
        g, h = read_csv(guest), read_csv(host)
        _require(g, ["id", "y"] + [f"x{k}" for k in range(13)], guest)
        _require(h, ["id"] + [f"x{k}" for k in range(10)], host)
        g = g.rename(
            columns={"id": "ID", "y": TAIWAN_UCI_LABEL, **{f"x{k}": n for k, n in enumerate(TAIWAN_FATE_GUEST)}}
        )
        h = h.rename(columns={"id": "ID", **{f"x{k}": n for k, n in enumerate(TAIWAN_FATE_HOST)}})
        frame = h.merge(g, on="ID", how="inner", validate="one_to_one")
        if len(frame) != len(g):
            raise DataError(
                f"{guest.name} and {host.name} do not share the same ids ({len(frame)} of {len(g)} matched)"
            )
        return frame.sort_values("ID", kind="stable").reset_index(drop=True), builtin_card("taiwan_default_fate")
    for candidate in sorted(folder.iterdir()):
        if candidate.suffix.lower() in (".xls", ".xlsx"):
            try:
                frame = pd.read_excel(candidate, header=1)
            except Exception as exc:  # xlrd/openpyxl raise many types
                raise DataError(f"cannot read {candidate}: {exc}") from None
        elif candidate.suffix.lower() == ".csv":
            frame = read_csv(candidate)
        else:
            continue
        if "Y" in frame.columns and TAIWAN_UCI_LABEL not in frame.columns and "LIMIT_BAL" in frame.columns:
            frame = frame.rename(columns={"Y": TAIWAN_UCI_LABEL})
        return frame, builtin_card("taiwan_default")
    raise DataError(
        f"no Taiwan default data in {folder} (expected FATE's default_credit_hetero_*.csv or the UCI original)"
    )


def load_give_me_some_credit(cfg: RunConfig) -> tuple[pd.DataFrame, DatasetCard]:
    folder = _dataset_dir(cfg, "give_me_some_credit")
    fate = folder / "give_credit_homo_test.csv"
    if fate.is_file():
        frame = read_csv(fate)
        _require(frame, ["id", "y"] + [f"x{k}" for k in range(10)], fate)
        return frame.rename(columns=GMSC_FATE_NAMES), builtin_card("give_me_some_credit_fate")
    kaggle = folder / "cs-training.csv"
    frame = read_csv(kaggle)
    first = frame.columns[0]
    if first.startswith("Unnamed") or first == "":
        frame = frame.rename(columns={first: "id"})
    return frame, builtin_card("give_me_some_credit")


def load_german(cfg: RunConfig) -> tuple[pd.DataFrame, DatasetCard]:
    path = _dataset_dir(cfg, "german_credit") / "germancredit.csv"
    return read_csv(path), builtin_card("german_credit")


def load_spanish(cfg: RunConfig) -> tuple[pd.DataFrame, DatasetCard]:
    path = _dataset_dir(cfg, "spanish_credit") / "credit_data.csv"
    return read_csv(path), builtin_card("spanish_credit")


def load_user_csv(cfg: RunConfig) -> tuple[pd.DataFrame, DatasetCard]:
    """Bring your own data: a CSV and the card the user wrote for it."""
    return read_csv(Path(cfg.csv_path)), load_card(cfg.card_path)


def _require(frame: pd.DataFrame, columns: list[str], path: Path) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DataError(f"{path.name} lacks column '{missing[0]}' (has {', '.join(map(str, frame.columns[:6]))}, ...)")


LOADERS = {
    "taiwan_default": load_taiwan,
    "give_me_some_credit": load_give_me_some_credit,
    "german_credit": load_german,
    "spanish_credit": load_spanish,
    "csv": load_user_csv,
}
