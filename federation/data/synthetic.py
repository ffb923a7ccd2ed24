"""A synthetic lender market: five kinds of Chinese lenders with different borrower populations.

Each lender's borrowers are drawn from its lender type (age, file depth, income, assets, loan size,
default rate). Default risk is a nonlinear function of credit features only (utilization squared,
delinquency counts, severe days-past-due, debt-to-income amplified for thin files, loan-to-income),
plus unobserved noise; the intercept of each lender type is calibrated to its base default rate.
Raw records also carry what the guideline forbids (gender, ethnicity, marital status, age, social
media, shopping, reading and eating habits) and a consent flag, so the policy has real work to do.
The non-credit habits correlate with age and income, like the proxies lenders are tempted by.

Generation is vectorized per lender and seeded per (seed, lender): one lender's records can be made
without making the market, and 1,000,000 borrowers for 1,000 lenders take seconds.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import numpy as np
import pandas as pd

from federation.errors import ConfigError


@dataclass(frozen=True)
class LenderType:
    name: str
    size_weight: float  # relative number of borrowers
    default_rate: float
    age_mean: float
    age_sd: float
    file_months_mean: float  # depth of credit file
    income_median: float  # CNY per month
    asset_median: float  # CNY
    loan_median: float  # CNY
    home_owner_rate: float
    terms: tuple[int, ...]  # loan terms in months offered


LENDER_TYPES = (
    LenderType("bigtech_platform", 10.0, 0.045, 28, 6, 30, 7000, 20000, 6000, 0.25, (3, 6, 12)),
    LenderType("national_bank", 4.0, 0.018, 44, 10, 150, 14000, 900000, 200000, 0.75, (12, 24, 36, 60)),
    LenderType("city_commercial_bank", 2.0, 0.035, 38, 10, 90, 9000, 300000, 80000, 0.55, (12, 24, 36)),
    LenderType("consumer_finance", 2.0, 0.085, 31, 8, 45, 6000, 30000, 15000, 0.30, (6, 12, 24)),
    LenderType("rural_credit_cooperative", 0.4, 0.065, 47, 11, 60, 4500, 150000, 30000, 0.80, (6, 12, 24)),
)
TYPE_NAMES = tuple(t.name for t in LENDER_TYPES)
MIN_LENDER_SIZE = 20


def lender_type(lender: int) -> LenderType:
    """Types are assigned round-robin, so 5 lenders are one of each."""
    return LENDER_TYPES[lender % len(LENDER_TYPES)]


def lender_sizes(records: int, lenders: int, seed: int) -> np.ndarray:
    """Borrowers per lender: type weight times a lognormal draw, summing exactly to `records`."""
    return _lender_sizes(records, lenders, seed).copy()


@cache
def _lender_sizes(records: int, lenders: int, seed: int) -> np.ndarray:
    """(lender_sizes, computed once a process: each lender generated alone asks for all the sizes)"""
    if lenders * MIN_LENDER_SIZE > records:
        raise ConfigError(
            f"{records} synthetic records cannot give {lenders} lenders at least {MIN_LENDER_SIZE} borrowers each; "
            f"use --records {lenders * MIN_LENDER_SIZE} or more"
        )
    rng = np.random.default_rng([seed, 0xC0FFEE])
    weights = np.array([lender_type(i).size_weight for i in range(lenders)]) * rng.lognormal(0.0, 0.5, lenders)
    spare = records - lenders * MIN_LENDER_SIZE
    sizes = np.floor(weights / weights.sum() * spare).astype(np.int64)
    sizes[np.argsort(-weights)[: spare - sizes.sum()]] += 1  # hand out the rounding remainder
    return sizes + MIN_LENDER_SIZE


def _borrowers(rng: np.random.Generator, kind: LenderType, n: int) -> dict[str, np.ndarray]:
    """Raw borrower attributes of one lender type (everything but the label)."""
    age = np.clip(rng.normal(kind.age_mean, kind.age_sd, n), 18, 80).round()
    young = np.clip((35 - age) / 17, 0, 1)  # 1 at 18, 0 from 35
    file_months = np.clip(rng.gamma(2.0, kind.file_months_mean / 2.0, n) * (1.0 - 0.5 * young), 0, 600).round()
    thin = file_months < 24
    income = np.clip(kind.income_median * rng.lognormal(0, 0.55, n) * (0.7 + 0.6 * (1 - young)), 800, 500000).round(-1)
    assets = np.clip(kind.asset_median * rng.lognormal(0, 1.1, n), 0, 5e7).round(-2)
    owner = rng.random(n) < kind.home_owner_rate * (0.4 + 0.6 * (1 - young))
    mortgage = owner & (rng.random(n) < 0.5)
    home = np.where(owner, np.where(mortgage, "mortgage", "own"), np.where(rng.random(n) < 0.4, "family", "rent"))
    lines = np.clip(rng.poisson(1 + file_months / 40), 0, 40)
    utilization = np.clip(rng.beta(1.4, 3.0, n) + 0.25 * young * rng.random(n), 0, 1.5)
    delinq = np.clip(rng.negative_binomial(1, 0.75, n) + (utilization > 0.8) * rng.poisson(0.6, n), 0, 20)
    dpd = np.where(delinq > 0, rng.choice([15, 45, 75, 120], n, p=[0.5, 0.25, 0.15, 0.10]), 0)
    inquiries = np.clip(rng.poisson(0.8 + 1.5 * young + 1.0 * thin), 0, 20)
    employment = np.clip(rng.gamma(2.0, np.maximum(age - 18, 1) / 5.0), 0, 45).round(1)
    loan = np.clip(kind.loan_median * rng.lognormal(0, 0.6, n), 500, 5e6).round(-2)
    term = rng.choice(kind.terms, n)
    payment = loan / term
    dti = np.clip((payment + 0.02 * assets * mortgage / 12 + 0.03 * income * lines / 10) / income, 0, 3)
    # What the guideline forbids, drawn with realistic correlations to age and income.
    gender = rng.choice(["female", "male"], n)
    ethnicity = rng.choice(["han", "zhuang", "hui", "uyghur", "other"], n, p=[0.91, 0.02, 0.01, 0.01, 0.05])
    married = rng.random(n) < np.clip((age - 22) / 20, 0.05, 0.85)
    marital = np.where(married, "married", rng.choice(["single", "divorced"], n, p=[0.9, 0.1]))
    social = np.clip(rng.gamma(2.0, 1.0 + 1.5 * young), 0, 16).round(1)
    shopping = np.clip(rng.poisson(2 + 10 * young + income / 4000), 0, 200)
    reading = np.clip(rng.poisson(3 + income / 6000), 0, 300)
    eating = np.clip(rng.poisson(1 + 3 * young + income / 8000), 0, 40)
    consent = rng.random(n) < 0.95
    return {
        "age": age,
        "gender": gender,
        "ethnicity": ethnicity,
        "marital_status": marital,
        "social_media_hours_per_day": social,
        "online_shopping_orders_per_month": shopping,
        "books_read_per_year": reading,
        "meals_out_per_week": eating,
        "months_on_file": file_months,
        "num_credit_lines": lines,
        "delinquencies_24m": delinq,
        "max_days_past_due": dpd,
        "revolving_utilization": utilization.round(3),
        "inquiries_6m": inquiries,
        "monthly_income": income,
        "debt_to_income": dti.round(3),
        "employment_years": employment,
        "home_ownership": home,
        "assets_value": assets,
        "loan_amount": loan,
        "loan_term_months": term,
        "consent": consent,
    }


def _risk_score(b: dict[str, np.ndarray], rng: np.random.Generator) -> np.ndarray:
    """Log-odds of default without intercept: nonlinear in credit features only."""
    thin = (b["months_on_file"] < 24).astype(float)
    return (
        1.8 * b["revolving_utilization"] ** 2
        + 0.7 * np.log1p(b["delinquencies_24m"])
        + 0.9 * (b["max_days_past_due"] >= 30)
        + 0.8 * (b["max_days_past_due"] >= 90)
        + 1.2 * b["debt_to_income"] * (1.0 + thin)
        - 0.35 * np.log1p(b["months_on_file"] / 12.0)
        + 0.12 * b["inquiries_6m"]
        + 0.35 * np.log(b["loan_amount"] / (12 * b["monthly_income"]) + 0.05)
        - 0.3 * (b["home_ownership"] == "own")
        - 0.03 * np.minimum(b["employment_years"], 15)
        + rng.normal(0.0, 0.6, len(thin))  # what no lender observes
    )


@cache
def _intercept(type_index: int) -> float:
    """Intercept that gives the lender type its base default rate (bisection on a fixed sample)."""
    kind = LENDER_TYPES[type_index]
    rng = np.random.default_rng([20251, type_index])
    score = _risk_score(_borrowers(rng, kind, 40000), rng)
    lo, hi = -20.0, 10.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if (1 / (1 + np.exp(-(score + mid)))).mean() > kind.default_rate:
            hi = mid
        else:
            lo = mid
    return (lo + hi) / 2


def generate_lender(seed: int, lender: int, n: int) -> pd.DataFrame:
    """The raw records of one lender, reproducible from (seed, lender) alone."""
    kind = lender_type(lender)
    rng = np.random.default_rng([seed, 1 + lender])
    b = _borrowers(rng, kind, n)
    p = 1 / (1 + np.exp(-(_risk_score(b, rng) + _intercept(lender % len(LENDER_TYPES)))))
    b["defaulted"] = (rng.random(n) < p).astype(np.int8)
    ids = np.arange(n, dtype=np.int64) + lender * 10_000_000
    return pd.DataFrame({"borrower_id": ids, "lender_id": np.full(n, lender, dtype=np.int32), **b})


def generate_market(records: int, lenders: int, seed: int) -> pd.DataFrame:
    """All lenders' raw records, concatenated in lender order."""
    sizes = lender_sizes(records, lenders, seed)
    frames = [generate_lender(seed, i, int(n)) for i, n in enumerate(sizes)]
    return pd.concat(frames, ignore_index=True)
