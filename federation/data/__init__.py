"""One dataset API: what a lender holds, and the pooled held-out test kept aside for benchmarks.

    load_lender(cfg, lender)  -> LenderData   (its own records only: policy applied, encoded, split)
    load_holdout(cfg)         -> (X, y)       (pooled held-out test; benchmarks only, never training)
    describe(cfg)             -> DataSummary  (validates the whole input before a run starts)

Pipeline for every dataset: raw records -> pooled held-out test set aside -> lenders (partition)
-> per lender: consent filter, refuse non-credit columns (policy) -> encode with the card's public
bounds -> the lender's own train/test split.
"""

from federation.data.pipeline import (
    DataSummary,
    LenderData,
    card_sha256,
    describe,
    forget_loaded,
    load_holdout,
    load_lender,
)

__all__ = ["DataSummary", "LenderData", "card_sha256", "describe", "forget_loaded", "load_holdout", "load_lender"]
