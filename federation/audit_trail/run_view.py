"""A run as its ledger tells it: the one reading of ledger.jsonl that the run folder, the report and the verifier
all share.

The ledger is a sequence of round *attempts*: each `round_started` opens one, and it is complete when its
`round_finished` arrives. A coordinator that crashed and resumed leaves an incomplete attempt before its
`run_resumed` entry; the releases in it still happened and still count. A lender's releases are its distinct
signed update bodies (a resent reply is the same body, the same release), in ledger order.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field
from functools import cached_property
from typing import TypeVar

from federation.audit_trail import ledger as L
from federation.audit_trail.canonical import canonical

T = TypeVar("T")


@dataclass
class Attempt:
    round: int
    started: dict  # the round_started entry
    entries: list[dict] = field(default_factory=list)  # everything after it, up to the next attempt or the end
    finished: dict | None = None  # its round_finished entry

    def of_type(self, kind: str) -> list[dict]:
        return [e for e in self.entries if e["type"] == kind]

    @property
    def roster(self) -> list[int]:
        return list(self.started["body"].get("roster", []))

    @property
    def aggregate(self) -> dict | None:
        found = self.of_type(L.AGGREGATE)
        return found[-1]["body"] if found else None


@dataclass
class RunView:
    entries: list[dict]
    started: dict = field(init=False)
    manifests: dict[int, dict] = field(init=False)
    attempts: list[Attempt] = field(init=False)
    finals: dict[int, dict] = field(init=False)
    finished: dict | None = field(init=False)

    def __post_init__(self) -> None:
        self.started = self.entries[0]["body"]
        self.manifests, self.attempts, self.finals, self.finished = {}, [], {}, None
        current: Attempt | None = None
        for entry in self.entries[1:]:
            kind, body = entry["type"], entry["body"]
            if kind == L.LENDER_MANIFEST:
                self.manifests.setdefault(body.get("lender"), body)
            elif kind == L.ROUND_STARTED:
                current = Attempt(body.get("round"), entry)
                self.attempts.append(current)
            elif (
                kind in (L.RUN_RESUMED, L.RUN_FINISHED)
                or (kind == L.LENDER_FINAL)
                or (kind == L.UPDATE_REJECTED and body.get("round") is None)
            ):
                current = None
                if kind == L.LENDER_FINAL:
                    self.finals.setdefault(body.get("lender"), body)
                if kind == L.RUN_FINISHED:
                    self.finished = body
            elif current is not None:
                current.entries.append(entry)
                if kind == L.ROUND_FINISHED:
                    current.finished = entry
                    current = None

    @property
    def config(self) -> dict:
        return self.started["config"]

    def complete_rounds(self) -> list[Attempt]:
        """The attempt that finished, for each round that finished (in order)."""
        return [a for a in self.attempts if a.finished is not None]

    def releases(self, lender: int) -> list[dict]:
        """The lender's distinct update bodies, in the order it made them (resends counted once)."""
        seen, out = set(), []
        for _, entry in self.of_lender(lender, L.LENDER_UPDATE):
            body = entry["body"]
            key = canonical(body)
            if key not in seen:
                seen.add(key)
                out.append(body)
        return out

    def of_lender(self, lender: int, *kinds: str) -> list[tuple[Attempt, dict]]:
        """The entries of the round attempts whose body names `lender` (those of `kinds`, if given), in ledger order,
        each with its attempt. From an index made once: the report and the verifier ask for every lender, and a scan
        of every attempt for each was quadratic in the lenders (seconds at 1,000)."""
        found = self._by_lender.get(lender, []) if isinstance(lender, Hashable) else []
        return [(a, e) for a, e in found if not kinds or e["type"] in kinds]

    def entries_naming(self, lender: int, *kinds: str) -> list[dict]:
        """Every ledger entry whose body names `lender` (those of `kinds`, if given), in ledger order, round attempt
        or not; from an index made once, like of_lender."""
        found = self._all_by_lender.get(lender, []) if isinstance(lender, Hashable) else []
        return [e for e in found if not kinds or e["type"] in kinds]

    @cached_property
    def _by_lender(self) -> dict[object, list[tuple[Attempt, dict]]]:
        return _index(((attempt, entry), entry) for attempt in self.attempts for entry in attempt.entries)

    @cached_property
    def _all_by_lender(self) -> dict[object, list[dict]]:
        return _index((entry, entry) for entry in self.entries)

    def lenders(self) -> list[int]:
        return list(range(int(self.config.get("lenders", 0))))


def _index(pairs: Iterable[tuple[T, dict]]) -> dict[object, list[T]]:
    """Each (item, entry) under the lender its entry's body names. Keyed as `body["lender"] == lender` compares (True,
    1 and 1.0 are one key); an unhashable lender value equals no lender and is left out. A view is read-only once
    made, so its indexes stay right."""
    index: dict[object, list[T]] = {}
    for item, entry in pairs:
        body = entry.get("body")
        lender = body.get("lender") if isinstance(body, dict) else None
        if lender is not None and isinstance(lender, Hashable):
            index.setdefault(lender, []).append(item)
    return index


def weighted_mean(values: list, weights: list) -> float | None:
    """The test-size-weighted mean over the lenders where a score is defined (None where none is)."""
    pairs = [(v, w) for v, w in zip(values, weights, strict=False) if v is not None and not math.isnan(v) and w > 0]
    if not pairs:
        return None
    return float(sum(v * w for v, w in pairs) / sum(w for _, w in pairs))


def stop_reason(stop: dict, epsilon: float | None = None) -> str:
    """The one sentence a stop of each kind is stated in (the coordinator writes no free text of its own)."""
    if not stop:
        return ""
    if stop.get("kind") == "refused":
        return f"no lender trained in round {stop['round']}: every lender asked declined"
    if stop.get("kind") == "no_counts":
        return (
            f"round {stop['round']} cannot grow trees: the count release of round 1 aggregated no lender's counts, so "
            "there are no split candidates"
        )
    if stop.get("kind") == "lender_level_budget":
        return f"round {stop['round']} would take the federation past epsilon {epsilon} (lender-level)"
    raise ValueError(f"unknown stop {stop!r}")


def evaluators(attempt: Attempt, lenders: int, lenders_per_round: int) -> list[int]:
    """Who must score a finished round's model: every lender, or the round's roster when lenders are drawn."""
    return sorted(attempt.roster) if lenders_per_round else list(range(lenders))


def global_scores(attempt: Attempt) -> dict:
    """The test-size-weighted mean of the lenders' signed scores of a round's model."""
    from federation.metrics import METRICS

    bodies = [e["body"] for e in attempt.of_type(L.LENDER_EVALUATION)]
    weights = [b["num_examples"] for b in bodies]
    return {k: weighted_mean([b.get(k) for b in bodies], weights) for k in METRICS}
