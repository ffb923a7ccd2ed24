"""Split a dataset into lenders with flwr-datasets partitioners.

Returned values are row indices, so a partition is cheap to compute in every process that needs it
and identical everywhere for the same seed.

- natural: the dataset's own lender column (NaturalIdPartitioner);
- iid: uniform shards of a shuffled index (IidPartitioner);
- dirichlet: label skew, per-class Dirichlet(alpha) proportions (DirichletPartitioner, Hsu et al. 2019);
- quantity: lender sizes drawn from Dirichlet(alpha), labels IID (SizePartitioner; Li et al. 2022,
  "Federated learning on non-IID data silos").
"""

from __future__ import annotations

import datasets
import numpy as np
from datasets import Dataset
from flwr_datasets.partitioner import DirichletPartitioner, IidPartitioner, NaturalIdPartitioner, SizePartitioner
from sklearn.model_selection import train_test_split

from federation.errors import DataError

MIN_LENDER_RECORDS = 10
datasets.disable_progress_bars()  # partitioning is bookkeeping, not a task worth a progress bar


def holdout_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(pool, holdout) row indices; stratified by label where both classes can be split."""
    index = np.arange(len(labels))
    if len(labels) < 2:
        return index, index[:0]
    stratify = labels if np.bincount(labels.astype(int), minlength=2).min() >= 2 else None
    try:
        pool, held = train_test_split(index, test_size=fraction, random_state=seed, stratify=stratify)
    except ValueError:  # too few records to stratify at this fraction
        pool, held = train_test_split(index, test_size=fraction, random_state=seed)
    return np.sort(pool), np.sort(held)


def partition(
    labels: np.ndarray, lenders: int, method: str, alpha: float, seed: int, lender_ids: np.ndarray | None = None
) -> list[np.ndarray]:
    """Row indices of each lender's records (indices into `labels`)."""
    n = len(labels)
    if lenders * MIN_LENDER_RECORDS > n:
        raise DataError(
            f"{lenders} lenders need at least {lenders * MIN_LENDER_RECORDS} records ({MIN_LENDER_RECORDS} each); the data have {n}"
        )
    columns = {"row": np.arange(n), "label": labels.astype(np.int64)}
    if method == "natural":
        if lender_ids is None:
            raise DataError("natural partition needs a lender column")
        columns["lender"] = lender_ids
        found = np.unique(lender_ids)
        if len(found) != lenders:
            raise DataError(f"the data name {len(found)} lenders in their lender column, but --lenders is {lenders}")
        partitioner = NaturalIdPartitioner(partition_by="lender")
    elif method == "iid":
        partitioner = IidPartitioner(num_partitions=lenders)
    elif method == "dirichlet":
        partitioner = DirichletPartitioner(
            num_partitions=lenders,
            partition_by="label",
            alpha=alpha,
            min_partition_size=MIN_LENDER_RECORDS,
            self_balancing=False,
            shuffle=True,
            seed=seed,
        )
    elif method == "quantity":
        partitioner = SizePartitioner(partition_sizes=_quantity_sizes(n, lenders, alpha, seed))
    else:
        raise DataError(f"unknown partition '{method}'")
    dataset = Dataset.from_dict(columns)
    if method in ("iid", "quantity"):
        dataset = dataset.shuffle(seed=seed).flatten_indices()
    partitioner.dataset = dataset
    try:
        parts = [np.asarray(partitioner.load_partition(i)["row"], dtype=np.int64) for i in range(lenders)]
    except ValueError as exc:
        raise DataError(
            f"cannot split {n} records into {lenders} lenders by '{method}' (alpha {alpha}): {exc}"
        ) from None
    if method == "natural" and lender_ids is not None:  # (a natural partition always has them: checked above)
        # NaturalIdPartitioner numbers lenders in its own order: order them by lender id instead.
        parts.sort(key=lambda rows: lender_ids[rows[0]] if len(rows) else 0)
    return [np.sort(p) for p in parts]


def _quantity_sizes(n: int, lenders: int, alpha: float, seed: int) -> list[int]:
    rng = np.random.default_rng([seed, 7])
    share = rng.dirichlet(np.full(lenders, alpha))
    spare = n - lenders * MIN_LENDER_RECORDS
    sizes = np.floor(share * spare).astype(int) + MIN_LENDER_RECORDS
    sizes[np.argmax(sizes)] += n - sizes.sum()  # every record goes to some lender
    return [int(s) for s in sizes]


def train_test_rows(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A lender's own train/test split (stratified where possible)."""
    return holdout_split(labels, fraction, seed)
