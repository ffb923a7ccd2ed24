"""What a lender holds after its policy: its encoded train and test records and the manifest of what it used.

A module of its own (numpy only) so that a lender's process can rebuild its records from its own cache
(clients/record_cache.py) without importing the data pipeline and pandas (federation.data makes them)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class LenderData:
    lender: int
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    features: list[str]
    manifest: dict
