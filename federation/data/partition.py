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

import math

import numpy as np

from federation.errors import DataError

MIN_LENDER_RECORDS = 10


def holdout_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(pool, holdout) row indices; stratified by label where both classes can be split.

    The same indices as sklearn's `train_test_split(arange(n), test_size=fraction, random_state=seed,
    stratify=...)` (falling back to the plain shuffle where stratifying fails), computed with numpy alone:
    sklearn's input validation cost more than the split itself, once per lender (tests/test_data.py checks
    the two agree)."""
    index = np.arange(len(labels))
    if len(labels) < 2:
        return index, index[:0]
    if np.bincount(labels.astype(int), minlength=2).min() >= 2:
        try:
            pool, held = _stratified_shuffle_split(labels, fraction, seed)
        except ValueError:  # too few records to stratify at this fraction
            pool, held = _shuffle_split(len(labels), fraction, seed)
    else:
        pool, held = _shuffle_split(len(labels), fraction, seed)
    return np.sort(pool), np.sort(held)


def _split_sizes(n: int, fraction: float) -> tuple[int, int]:
    """(n_train, n_test) as sklearn's train_test_split sizes a float test_size."""
    n_test = math.ceil(fraction * n)
    n_train = n - n_test
    if n_train == 0:
        raise ValueError(f"with {n} records and test fraction {fraction} the training split would be empty")
    return n_train, n_test


def _shuffle_split(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """sklearn's ShuffleSplit (one split): one permutation, test first."""
    n_train, n_test = _split_sizes(n, fraction)
    permutation = np.random.RandomState(seed).permutation(n)
    return permutation[n_test : n_test + n_train], permutation[:n_test]


def _stratified_shuffle_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """sklearn's StratifiedShuffleSplit (one split), the same draws from the same RandomState, unsorted."""
    n_train, n_test = _split_sizes(len(labels), fraction)
    classes, y_indices, class_counts = np.unique(labels, return_inverse=True, return_counts=True)
    if class_counts.min() < 2 or n_train < len(classes) or n_test < len(classes):
        raise ValueError("too few records of some class to stratify")
    class_indices = np.split(np.argsort(y_indices, kind="stable"), np.cumsum(class_counts)[:-1])
    rng = np.random.RandomState(seed)
    n_i = _approximate_mode(class_counts, n_train, rng)
    t_i = _approximate_mode(class_counts - n_i, n_test, rng)
    train, test = [], []
    for i in range(len(classes)):
        rows = class_indices[i].take(rng.permutation(class_counts[i]), mode="clip")
        train.append(rows[: n_i[i]])
        test.append(rows[n_i[i] : n_i[i] + t_i[i]])
    # (sklearn then permutes each side once more: the order only, which the caller sorts away)
    return np.concatenate(train), np.concatenate(test)


def _approximate_mode(class_counts: np.ndarray, n_draws: int, rng: np.random.RandomState) -> np.ndarray:
    """sklearn.utils.extmath._approximate_mode: per-class draws, ties broken at random."""
    continuous = class_counts / class_counts.sum() * n_draws
    floored = np.floor(continuous)
    need_to_add = int(n_draws - floored.sum())
    if need_to_add > 0:
        remainder = continuous - floored
        for value in np.sort(np.unique(remainder))[::-1]:
            (inds,) = np.where(remainder == value)
            add_now = min(len(inds), need_to_add)
            inds = rng.choice(inds, size=add_now, replace=False)
            floored[inds] += 1
            need_to_add -= add_now
            if need_to_add == 0:
                break
    return floored.astype(int)


def partition(
    labels: np.ndarray, lenders: int, method: str, alpha: float, seed: int, lender_ids: np.ndarray | None = None
) -> list[np.ndarray]:
    """Row indices of each lender's records (indices into `labels`)."""
    # Imported here: `datasets` and flwr-datasets (which imports seaborn, scipy.stats and matplotlib for its plots)
    # take 1-1.5 s to import, and only a partition needs them; a synthetic market made lender by lender, a lender's
    # own file and every process that only reads encoded records never do (tests/test_data.py checks the import).
    import datasets
    from datasets import Dataset
    from flwr_datasets.partitioner import DirichletPartitioner, IidPartitioner, NaturalIdPartitioner, SizePartitioner

    datasets.disable_progress_bars()  # partitioning is bookkeeping, not a task worth a progress bar
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
