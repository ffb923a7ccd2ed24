"""`fedcredit verify RUN_DIR [--registry FILE]`: check a run folder without trusting whoever wrote it.

The adversary is the coordinator, who writes the ledger, the report and every file of the run folder, and anyone
who edits a folder and re-signs it. So the verifier rebuilds the run from the ledger and believes nothing it
cannot re-derive or check against a lender's own signature:

1. keys: with a registry (the regulator's trust anchor) every signer must be the registered one and every lender
   the run names must be registered; without one, the folder's own keys are used and the result says, in its
   first line and its exit status, that nothing was pinned;
2. the chain: canonical lines, sequence numbers, links, hashes, and every signature under its signer's key;
3. completeness: the manifests of every lender; each round's roster answered by exactly the rostered lenders
   (an update, a signed refusal or a recorded dropout); every lender body in the round it names, never replayed;
   each lender's releases numbered 1, 2, ... and their count equal to the lender's own signed final statement;
   every round the configuration asked for present, or a stop whose reason the ledger proves;
4. privacy: each lender's delta from its signed policy and record count, each claimed epsilon recomputed from the
   lender's signed events with Google's dp_accounting (not Opacus, which trained), within budget and within the
   lender's own limits; the data policy of every signed manifest;
5. the model file, secure aggregation (signed rosters, masked updates, weights from signed counts; gbdt: each
   lender's signed noise share against its signed policy and the round's roster, the survivors' shares against
   each opted-in lender's assumption, and the report's statement of that assumption);
6. every file of the folder: re-derived from the ledger and compared byte for byte, and hashed in the signed
   final entry; a file that belongs to no run folder fails;
7. the report: rebuilt from the ledger, compared field by field, its signature checked, and report.html
   re-rendered and compared.
The first failed check raises VerificationFailed naming the entry or file and the check.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import stat
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn, TypeGuard

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from federation.audit_trail import ledger as L
from federation.audit_trail.attest import BODY_KEYS, clip_count, encoding_of, sent_nothing
from federation.audit_trail.canonical import arrays_hash, canonical, config_hash
from federation.audit_trail.derive import NOT_DERIVED, UNVERIFIED_FILES, run_files
from federation.audit_trail.keys import COORDINATOR, public_from_hex, signer_label, verify_signature
from federation.audit_trail.report import build_report, render_html, report_bytes, signed_part
from federation.audit_trail.run_view import RunView, evaluators, global_scores, stop_reason
from federation.config import RunConfig
from federation.errors import FedCreditError
from federation.gbdt.accounting import secure_sum_statement
from federation.gbdt.leaf_sums import guaranteed_noise, secure_noise_share
from federation.gbdt_release import release_clip_norm
from federation.lender_policy import effective_delta
from federation.policy import used_field_violation
from federation.privacy import dpaccounting
from federation.privacy.accountant import default_delta
from federation.privacy.events import PrivacyEvent
from federation.privacy.limits import MAX_DELTA
from federation.privacy.noise import SECURE_SOURCE, SEEDED_SOURCE
from federation.registry import Registry, fingerprint, load_registry
from federation.secagg import confirmation_verifies

MASKED = "masked"  # federation.messages.MASKED, not imported: the verifier runs without Flower

# Opacus (training) and dp_accounting (here) are different implementations of the same analysis; on the same
# events they agree within 1% (tests/test_accounting.py), so that is the tolerance here.
TOLERANCE = 0.01
ENTRY_KEYS = {"seq", "time", "type", "signer", "body", "prev", "hash", "signature"}
TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")
CODE_VERSION = re.compile(r"fedcredit [0-9][0-9A-Za-z.+-]*( \(git [0-9a-f]{40}\))?")
FLWR_VERSION = re.compile(r"[0-9][0-9A-Za-z.+-]*")  # a release number as packaging writes it: no free text

# Exit codes of `fedcredit verify` (documented in the README).
EXIT_VERIFIED = 0  # every check passed and every key was pinned by the registry
EXIT_FAILED = 1  # a check failed
EXIT_USAGE = 2  # bad arguments: no such folder, an unreadable registry
EXIT_NOT_PINNED = 3  # consistent, but no registry: the folder's own keys were trusted


class VerificationFailed(FedCreditError):
    def __init__(self, where: str, check: str, message: str) -> None:
        super().__init__(f"{where}: check '{check}' failed: {message}")
        self.where, self.check = where, check


@dataclass
class VerifiedRun:
    entries: int
    lenders: int
    epsilons: dict[str, float]  # recomputed with dp_accounting
    accountant: str
    head: str
    pinned: bool
    fingerprints: dict[str, str] = field(default_factory=dict)
    unverified: list[str] = field(default_factory=list)  # files present that no check covers (declared as such)
    absent: list[int] = field(default_factory=list)  # registered lenders that took no part in this run
    not_private: bool = False
    aggregates: str = ""  # what ties each round's model to the lenders' updates

    @property
    def exit_code(self) -> int:
        return EXIT_VERIFIED if self.pinned else EXIT_NOT_PINNED

    def summary(self) -> str:
        eps = ", ".join(f"{k} {v:.3f}" for k, v in self.epsilons.items()) or "no DP"
        first = (
            "verified: every signer is the one the registry names"
            if self.pinned
            else "NOT PINNED: the run folder is consistent, but no registry was given, so its own keys were trusted "
            "(anyone can make such a folder); verify again with --registry"
        )
        lines = [
            first,
            f"{self.entries} ledger entries, chain intact, every signature valid; {self.lenders} lenders, every "
            f"round and release accounted for; no prohibited field used; epsilon recomputed with dp_accounting "
            f"({self.accountant}): {eps}, each within budget and equal to the reported value; every file "
            f"re-derived from the ledger; report bound to ledger head {self.head[:16]}...",
            "keys relied on: " + ", ".join(f"{who} {fp}" for who, fp in self.fingerprints.items()),
        ]
        if self.not_private:
            lines.insert(1, "NOT PRIVATE: this run used seeded, reproducible noise (a test or benchmark run)")
        if self.aggregates:
            lines.append("aggregation: " + self.aggregates)
        if self.unverified:
            lines.append("not covered by any check (written after the run): " + ", ".join(self.unverified))
        if self.absent:
            lines.append("in the registry but not in this run: lenders " + ", ".join(str(x) for x in self.absent))
        return "\n".join(lines)


def _fail(where: str, check: str, message: str) -> NoReturn:
    raise VerificationFailed(where, check, message)


def _describe(entry: dict) -> str:
    body = entry.get("body")
    if not isinstance(body, dict):
        body = {}
    who = f" of lender {body['lender']}" if isinstance(body.get("lender"), int) else ""
    rnd = f", round {body['round']}" if body.get("round") is not None else ""
    return f"ledger entry {entry.get('seq')} ({entry.get('type')}{who}{rnd})"


# ---- 1-2. keys and chain ----------------------------------------------------------------------


def _read_ledger(run_dir: Path) -> list[dict]:
    path = run_dir / "ledger.jsonl"
    if not path.exists():
        _fail("ledger.jsonl", "files", "the ledger is missing")
    raw = path.read_bytes()
    if not raw.endswith(b"\n"):
        _fail("ledger.jsonl", "format", "the ledger does not end with a complete line")
    entries = []
    for number, line in enumerate(raw[:-1].split(b"\n"), start=1):
        where = f"ledger line {number}"
        try:
            entry = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            _fail(where, "format", f"not JSON ({exc.__class__.__name__})")
        if not isinstance(entry, dict) or set(entry) != ENTRY_KEYS:
            _fail(where, "format", f"an entry has exactly the fields {sorted(ENTRY_KEYS)}")
        try:
            exact = canonical(entry) == line
        except (ValueError, TypeError):
            exact = False
        if not exact:
            _fail(where, "format", "not in canonical JSON form (bytes were altered)")
        if not isinstance(entry["body"], dict) or not isinstance(entry["seq"], int):
            _fail(where, "format", "an entry's body is an object and its seq an integer")
        if not isinstance(entry["time"], str) or not TIME.fullmatch(entry["time"]):
            _fail(where, "format", "an entry's time is a UTC timestamp YYYY-MM-DDTHH:MM:SSZ, nothing else")
        entries.append(entry)
    if not entries:
        _fail("ledger.jsonl", "format", "the ledger is empty")
    return entries


def _public(text: object, where: str, who: str) -> Ed25519PublicKey:
    try:
        return public_from_hex(str(text))
    except ValueError:
        _fail(where, "key format", f"{who}'s public key is not an Ed25519 key")


def _keys(
    entries: list[dict], registry: Registry | None
) -> tuple[Ed25519PublicKey, dict[int, Ed25519PublicKey], dict[str, str]]:
    """The coordinator's key and each lender's: the registry's, or (unpinned) the ledger's own."""
    first = entries[0]
    if first["type"] != L.RUN_STARTED:
        _fail(_describe(first), "run", "the ledger must start with run_started")
    claimed = first["body"].get("coordinator_public_key")
    if registry is not None:
        if claimed != registry.coordinator:
            _fail(_describe(first), "registry", "the run's coordinator key is not the one the registry names")
        coordinator = _public(registry.coordinator, "registry", "the coordinator")
    else:
        coordinator = _public(claimed, _describe(first), "the coordinator")
    lenders: dict[int, Ed25519PublicKey] = {}
    for entry in entries:
        if entry["type"] != L.LENDER_MANIFEST:
            continue
        lender, key = entry["body"].get("lender"), entry["body"].get("public_key")
        if not isinstance(lender, int) or lender in lenders:
            continue  # the structure checks name it
        if registry is not None:
            if registry.lender_key(lender) is None:
                _fail(_describe(entry), "registry", f"lender {lender} is not in the registry")
            if key != registry.lender_key(lender):
                _fail(_describe(entry), "registry", f"lender {lender}'s key is not the one the registry names")
        lenders[lender] = _public(key, _describe(entry), f"lender {lender}")
    fingerprints = {"coordinator": fingerprint(claimed if registry is None else registry.coordinator)}
    for lender in sorted(lenders):
        fingerprints[f"lender {lender}"] = fingerprint(
            next(
                e["body"]["public_key"]
                for e in entries
                if e["type"] == L.LENDER_MANIFEST and e["body"]["lender"] == lender
            )
        )
    return coordinator, lenders, fingerprints


def _count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _number(value: object, none: bool = True) -> bool:
    return (value is None and none) or (
        isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    )


def _finite(value: object) -> TypeGuard[int | float]:
    """A finite number, not None (`_number(value, none=False)`, for the type checker)."""
    return _number(value, none=False)


def body_type_problem(body: dict) -> str | None:
    """What a lender may sign, field by field: counts are counts, scores numbers, names short plain strings.
    (A lender could otherwise put markup or anything else where a number is read.)"""
    kind = body["type"]
    counts = {
        L.LENDER_MANIFEST: (
            "records_total",
            "records_without_consent",
            "records_used",
            "train_records",
            "test_records",
        ),
        L.LENDER_UPDATE: ("round", "release", "bytes_sent"),
        L.LENDER_REFUSAL: ("round",),
        L.LENDER_EVALUATION: ("round", "num_examples"),
        L.LENDER_FINAL: ("releases", "refusals", "evaluations", "lifetime_runs"),
    }[kind]
    bad = [k for k in counts if not _count(body.get(k))]
    if bad:
        return f"'{bad[0]}' must be a whole number"
    numbers = {
        L.LENDER_UPDATE: ("epsilon", "delta", "budget"),
        L.LENDER_REFUSAL: ("epsilon_spent", "budget", "delta"),
        L.LENDER_EVALUATION: ("auc", "ks", "gini", "brier", "loss"),
        L.LENDER_FINAL: ("epsilon", "epsilon_rdp", "epsilon_prv", "delta", "lifetime_epsilon"),
    }.get(kind, ())
    bad = [k for k in numbers if not _number(body.get(k))]
    if bad:
        return f"'{bad[0]}' must be a number"
    if kind == L.LENDER_UPDATE:
        shapes = body.get("shapes")
        if not isinstance(shapes, dict) or not all(
            isinstance(k, str) and isinstance(v, list) and all(_count(d) for d in v) for k, v in shapes.items()
        ):
            return "'shapes' must map array names to lists of dimensions"
    if kind == L.LENDER_MANIFEST:
        fields = [*body.get("fields_used", []), *body.get("fields_refused", [])]
        texts = [
            body.get("card"),
            body.get("dataset"),
            body.get("encoding"),
            *body.get("features", []),
            *[v for f in fields if isinstance(f, dict) for v in f.values()],
        ]
        if not all(isinstance(f, dict) for f in fields) or not all(isinstance(t, str) for t in texts):
            return "field descriptions and names must be plain strings"
        if not isinstance(body.get("consent_checked"), bool) or not isinstance(body.get("policy"), dict):
            return "'consent_checked' must be true or false and 'policy' an object"
        try:
            encoding_of(str(body.get("encoding")))
        except ValueError:
            return "'encoding' must be the JSON text of the scheme and the card"
        return _clip_counts_problem(body)
    return None


def _clip_counts_problem(manifest: dict) -> str | None:
    """`values_clipped`: one count of each kind per used column at most, of no more values than records used."""
    counts = manifest.get("values_clipped")
    if not isinstance(counts, list):
        return "'values_clipped' must be a list of counts"
    try:
        entries = [clip_count(c) for c in counts]
    except ValueError as exc:
        return f"'values_clipped': {exc}"
    used = {f.get("name") for f in manifest.get("fields_used", []) if isinstance(f, dict)}
    names = [e["name"] for e in entries]
    if len(set(names)) != len(names) or not set(names) <= used:
        return "'values_clipped' must count each used field at most once"
    if any(e["below"] + e["above"] > manifest["records_used"] for e in entries):
        return "'values_clipped' counts more values than the records used"
    return None


def _check_chain(
    entries: list[dict], coordinator: Ed25519PublicKey, lenders: dict[int, Ed25519PublicKey]
) -> tuple[str, RunConfig]:
    prev = L.GENESIS
    run_id, cfg = None, None
    for index, entry in enumerate(entries):
        where = _describe(entry)
        if entry["seq"] != index:
            _fail(where, "sequence", f"sequence number {entry['seq']} at position {index}")
        if entry["prev"] != prev:
            _fail(where, "chain", "does not link to the previous entry's hash")
        if entry["hash"] != L.entry_hash(entry):
            _fail(where, "hash", "its hash does not match its content")
        if entry["type"] not in L.ENTRY_TYPES:
            _fail(where, "type", f"unknown entry type {entry['type']!r}")
        body = entry["body"]
        if entry["type"] in L.LENDER_SIGNED:
            lender = body.get("lender")
            if entry["signer"] != signer_label(lender):
                _fail(where, "signer", f"signed by {entry['signer']}, but the body is lender {lender}'s")
            key = lenders.get(lender) if isinstance(lender, int) else None
            if key is None:
                _fail(where, "signature", f"no public key registered for lender {lender}")
            if body.get("run") != run_id:
                _fail(where, "run", "the signed body names another run")
            if body.get("type") != entry["type"] or set(body) != BODY_KEYS[entry["type"]]:
                _fail(where, "body", f"a {entry['type']} body holds exactly {sorted(BODY_KEYS[entry['type']])}")
            problem = body_type_problem(body)
            if problem:
                _fail(where, "body", problem)
        else:
            if entry["signer"] != COORDINATOR:
                _fail(where, "signer", f"a {entry['type']} entry must be signed by the coordinator")
            key = coordinator
        if not verify_signature(key, entry["signature"], L.signed_bytes(entry)):
            _fail(where, "signature", f"the signature does not verify under {entry['signer']}'s key")
        if index == 0:
            if entry["type"] != L.RUN_STARTED:
                _fail(where, "run", "the ledger must start with run_started")
            run_id = body.get("run")
            if not isinstance(body.get("code_version"), str) or not CODE_VERSION.fullmatch(body["code_version"]):
                _fail(where, "format", "the code version is 'fedcredit VERSION (git COMMIT)', nothing else")
            if not isinstance(body.get("flwr_version"), str) or not FLWR_VERSION.fullmatch(body["flwr_version"]):
                _fail(where, "format", "the Flower version is a release number (such as 1.42.0), nothing else")
            if config_hash(body.get("config", {})) != run_id:
                _fail(where, "config hash", "the recorded configuration does not hash to the run id")
            try:
                cfg = RunConfig.from_record(body["config"])
            except (FedCreditError, KeyError, TypeError) as exc:
                _fail(where, "config", str(exc))
        elif entry["type"] == L.RUN_STARTED:
            _fail(where, "run", "a ledger has one run_started entry")
        prev = entry["hash"]
    if run_id is None or cfg is None:  # cannot happen: _read_ledger refuses an empty ledger
        _fail("ledger.jsonl", "format", "the ledger is empty")
    return run_id, cfg


# ---- 3. completeness --------------------------------------------------------------------------


def _check_one_encoding(view: RunView) -> None:
    """One model needs one encoding: every lender signed the card, the encoding and the feature list that lender 0
    signed (model.json is derived from lender 0's manifest)."""
    first = view.manifests.get(0)
    if first is None:
        return  # a missing manifest fails next
    for lender, body in sorted(view.manifests.items()):
        for key in ("card_sha256", "encoding", "features"):
            if body.get(key) != first.get(key):
                _fail(
                    f"manifest of lender {lender}",
                    "manifests",
                    f"its {key} differs from lender 0's: the lenders did not encode their records the same way",
                )


def _check_structure(view: RunView, cfg: RunConfig) -> None:
    entries = view.entries
    first_round = next((i for i, e in enumerate(entries) if e["type"] == L.ROUND_STARTED), len(entries))
    seen_manifest: set[int] = set()
    for entry in entries:
        if entry["type"] != L.LENDER_MANIFEST:
            continue
        lender = entry["body"]["lender"]
        if not 0 <= lender < cfg.lenders or lender in seen_manifest or entry["seq"] > first_round:
            _fail(_describe(entry), "manifests", "one manifest per lender of the configuration, before the rounds")
        seen_manifest.add(lender)
        for used in entry["body"].get("fields_used", []):
            violation = used_field_violation(used)
            if violation:
                _fail(_describe(entry), "policy", violation)
    _check_one_encoding(view)
    missing = sorted(set(range(cfg.lenders)) - seen_manifest)
    if missing:
        _fail(
            "ledger",
            "manifests",
            f"the configuration names {cfg.lenders} lenders, but lender {missing[0]} signed no manifest",
        )
    if entries[-1]["type"] != L.RUN_FINISHED or sum(e["type"] == L.RUN_FINISHED for e in entries) != 1:
        _fail(_describe(entries[-1]), "finished", "the ledger must end with exactly one run_finished")
    _check_attempts(view, cfg)
    _check_replays(view)
    _check_releases(view, cfg)
    _check_stop(view, cfg)


def _initial_arrays(view: RunView, cfg: RunConfig) -> dict[str, np.ndarray]:
    """The model a run starts from: the configuration's model with its seed, on the lenders' features
    (server/round_driver.py builds it the same way)."""
    from federation.model import get_arrays, model_for

    features = next(iter(view.manifests.values()), {}).get("features", [])
    return get_arrays(model_for(cfg, len(features), seed=cfg.seed))


def _initial_model_hash(view: RunView, cfg: RunConfig) -> str:
    return arrays_hash(_initial_arrays(view, cfg))


def _check_attempts(view: RunView, cfg: RunConfig) -> None:
    """Rounds 1, 2, ... in order; each round's roster answered by exactly the rostered lenders; every lender body
    inside the round it names; an unfinished attempt only where the coordinator resumed after it (or the stop)."""
    expected, resumed_after = 1, _resumes(view)
    attempts = view.attempts
    # The model every lender of an attempt must have trained from: the run's initial model (rebuilt here from the
    # configuration and the features the lenders signed), then each completed round's aggregate.
    # Not for gbdt: its request adds the round's new tree structures to the model, so a lender starts from the
    # aggregate plus structures the ledger does not hold as a model (binding those is not done yet).
    current, origin = _initial_model_hash(view, cfg), "the run's initial model"
    for index, attempt in enumerate(attempts):
        where = _describe(attempt.started)
        if type(attempt.round) is not int or attempt.round != expected:  # True == 1: a bool is not a round number
            _fail(where, "rounds", f"round {attempt.round!r} where round {expected} was due")
        if not isinstance(attempt.started["body"].get("roster"), list):
            _fail(where, "roster", "a roster is a list of lender numbers")
        roster = attempt.roster
        if len(set(roster)) != len(roster) or not all(isinstance(x, int) and 0 <= x < cfg.lenders for x in roster):
            _fail(where, "roster", "a roster names distinct lenders of the configuration")
        if cfg.dp_level != "lender" or not cfg.dp:
            wanted = cfg.lenders_per_round or cfg.lenders
            if len(roster) != wanted:
                _fail(where, "roster", f"{len(roster)} lenders asked; the configuration asks {wanted} a round")
        outcome: dict[int, list[str]] = {}
        for entry in attempt.entries:
            body = entry["body"]
            if entry["type"] in (
                L.LENDER_UPDATE,
                L.LENDER_REFUSAL,
                L.LENDER_EVALUATION,
                L.UPDATE_REJECTED,
                L.AGGREGATE,
                L.SECAGG_ROSTER,
                L.ROUND_FINISHED,
            ) and (type(body.get("round")) is not int or body.get("round") != attempt.round):
                _fail(
                    _describe(entry),
                    "round",
                    f"it names round {body.get('round')} but stands in round {attempt.round} of the ledger",
                )
            if entry["type"] == L.UPDATE_REJECTED and not (
                type(body.get("lender")) is int and 0 <= body["lender"] < cfg.lenders
            ):  # the coordinator's own entry: a list or text here made the checks below raise TypeError
                _fail(_describe(entry), "roster", "a recorded dropout names one lender of the configuration by number")
            if entry["type"] == L.UPDATE_REJECTED and body.get("stage") == "evaluate":
                continue  # an evaluation that failed: counted with the evaluations below
            if entry["type"] in (L.LENDER_UPDATE, L.LENDER_REFUSAL, L.UPDATE_REJECTED):
                if body["lender"] not in roster:
                    _fail(_describe(entry), "roster", f"lender {body['lender']} was not asked in round {attempt.round}")
                outcome.setdefault(body["lender"], []).append(entry["type"])
            elif entry["type"] not in (L.LENDER_EVALUATION, L.AGGREGATE, L.SECAGG_ROSTER, L.ROUND_FINISHED):
                _fail(_describe(entry), "round", f"a {entry['type']} entry does not belong inside a round")
        for lender, kinds in outcome.items():
            answers = [k for k in kinds if k != L.UPDATE_REJECTED]
            if len(answers) > 1 or kinds.count(L.UPDATE_REJECTED) > 1:
                _fail(where, "roster", f"lender {lender} answers round {attempt.round} more than once")
        # In a finished round only: an attempt a killed coordinator left (resumed after it) aggregated nothing, and
        # may end between the empty update and its rejection.
        for update in attempt.of_type(L.LENDER_UPDATE) if attempt.finished is not None else []:
            if sent_nothing(update["body"]) and outcome[update["body"]["lender"]] != [
                L.LENDER_UPDATE,
                L.UPDATE_REJECTED,
            ]:
                _fail(_describe(update), "roster", "an update that holds nothing is not recorded as rejected")
        # After the checks above, so that an update out of its round fails as such.
        for update in attempt.of_type(L.LENDER_UPDATE) if cfg.model != "gbdt" else []:
            if update["body"].get("input_model") != current:
                _fail(
                    _describe(update),
                    "model",
                    f"lender {update['body'].get('lender')} trained in round {attempt.round} from another model than "
                    f"{origin} (the coordinator sent a model the ledger does not hold)",
                )
        complete = attempt.finished is not None
        if complete:
            silent = sorted(set(roster) - set(outcome))
            if silent:
                _fail(
                    where,
                    "roster",
                    f"lender {silent[0]} was asked in round {attempt.round}, but the ledger holds "
                    "no update, signed refusal or recorded dropout of it",
                )
            aggregates = attempt.of_type(L.AGGREGATE)
            if len(aggregates) != 1:
                _fail(where, "aggregate", f"round {attempt.round} has {len(aggregates)} aggregates, not one")
            agg = aggregates[0]["body"]
            named = agg.get("lenders", [])
            if not isinstance(named, list) or not all(type(x) is int for x in named) or len(set(named)) != len(named):
                _fail(_describe(aggregates[0]), "aggregate", "its lenders must be distinct lender numbers")
            current, origin = agg.get("model_hash"), f"round {attempt.round}'s aggregate"
            usable = {lender for lender, kinds in outcome.items() if kinds == [L.LENDER_UPDATE]}
            if not set(named) <= usable:
                _fail(_describe(aggregates[0]), "aggregate", "it aggregates a lender without an accepted update")
            for evaluation in attempt.of_type(L.LENDER_EVALUATION):
                if evaluation["body"]["model_hash"] != agg.get("model_hash"):
                    _fail(_describe(evaluation), "evaluation", "the lender scored another model than the round's")
            scored = [e["body"]["lender"] for e in attempt.of_type(L.LENDER_EVALUATION)]
            scored += [
                e["body"]["lender"] for e in attempt.of_type(L.UPDATE_REJECTED) if e["body"].get("stage") == "evaluate"
            ]
            scorers = evaluators(attempt, cfg.lenders, cfg.lenders_per_round)
            if sorted(scored) != scorers:
                _fail(
                    where,
                    "evaluation",
                    f"round {attempt.round} holds scores (or recorded failures) from lenders "
                    f"{sorted(scored)}; every one of {scorers} must score the round's model",
                )
            expected += 1
        elif not (index in resumed_after or index == len(attempts) - 1):
            _fail(where, "rounds", f"round {attempt.round} never finished and the run did not resume after it")
    finish = view.finished or {}
    completed = view.complete_rounds()
    expected_scores = global_scores(completed[-1]) if completed else {}
    claimed_scores = finish.get("final_metrics") or {}
    if completed and any(not _same(claimed_scores.get(k), v) for k, v in expected_scores.items()):
        _fail("run_finished", "evaluation", "its final scores are not the mean of the lenders' signed scores")
    if (view.finished or {}).get("rounds_completed") != len(view.complete_rounds()):
        _fail(
            "run_finished",
            "rounds",
            f"it claims {(view.finished or {}).get('rounds_completed')} rounds completed; "
            f"the ledger holds {len(view.complete_rounds())}",
        )


def _same(a: object, b: object) -> bool:
    if a is None or b is None:
        return a is b
    return (
        isinstance(a, (int, float)) and isinstance(b, (int, float)) and math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-15)
    )


def _resumes(view: RunView) -> set[int]:
    """Indices of the attempts followed (before the next attempt) by a run_resumed entry."""
    out, index = set(), -1
    for entry in view.entries:
        if entry["type"] == L.ROUND_STARTED:
            index += 1
        elif entry["type"] == L.RUN_RESUMED and index >= 0:
            out.add(index)
    return out


def _check_replays(view: RunView) -> None:
    """A lender body appears once, except a reply resent unchanged to a coordinator that resumed, in the same round."""
    resumes = _resumes(view)
    where_seen: dict[bytes, int] = {}  # canonical lender body -> the attempt it first stands in
    for index, attempt in enumerate(view.attempts):
        for entry in attempt.entries:
            if entry["type"] not in L.LENDER_SIGNED:
                continue
            key = canonical(entry["body"])
            if key in where_seen:
                earlier = where_seen[key]
                if view.attempts[earlier].round != attempt.round or not any(earlier <= r < index for r in resumes):
                    _fail(_describe(entry), "replay", "this signed body already stands earlier in the ledger")
            where_seen[key] = index


def _check_releases(view: RunView, cfg: RunConfig) -> None:
    for lender in range(cfg.lenders):
        releases = view.releases(lender)
        for number, body in enumerate(releases, start=1):
            if body.get("release") != number:
                _fail(
                    f"lender {lender}'s releases",
                    "completeness",
                    f"release {number} of lender {lender} is numbered "
                    f"{body.get('release')}: the ledger leaves out a release the lender made",
                )
        final = view.finals.get(lender)
        if final is None:
            _fail(
                f"lender {lender}",
                "completeness",
                f"lender {lender} signed no final statement: its releases cannot be shown complete",
            )
        if final["releases"] != len(releases):
            _fail(
                f"lender {lender}'s final statement",
                "completeness",
                f"the lender counts {final['releases']} releases in this run; the ledger holds {len(releases)}",
            )
        for kind, name in ((L.LENDER_REFUSAL, "refusals"), (L.LENDER_EVALUATION, "evaluations")):
            held = {canonical(e["body"]) for e in view.entries_naming(lender, kind)}
            if final[name] != len(held):
                _fail(
                    f"lender {lender}'s final statement",
                    "completeness",
                    f"the lender counts {final[name]} {name} in this run; the ledger holds {len(held)}",
                )


def _check_stop(view: RunView, cfg: RunConfig) -> None:
    finish = view.finished or {}
    stop, done = finish.get("stop") or {}, len(view.complete_rounds())
    try:
        sentence = stop_reason(stop, cfg.epsilon)
    except (ValueError, KeyError, TypeError):
        sentence = None
    if finish.get("stopped_early") != sentence:
        _fail("run_finished", "stop", "its stop reason is not the sentence its stop's kind is stated in")
    if done == cfg.rounds:
        if stop or finish.get("stopped_early"):
            _fail("run_finished", "stop", "every round ran, yet the run says it stopped early")
        return
    if stop.get("round") != done + 1:
        _fail("run_finished", "stop", f"{done} of {cfg.rounds} rounds ran and no reason the ledger supports says why")
    if stop.get("kind") == "refused":
        last = view.attempts[-1] if view.attempts else None
        if (
            last is None
            or last.round != done + 1
            or last.finished is not None
            or last.roster != list(range(cfg.lenders))
        ):
            _fail(
                "run_finished",
                "stop",
                f"the run says no lender trained in round {done + 1}, but the ledger holds no such round",
            )
        answers = {
            e["body"]["lender"]: e["type"]
            for e in last.entries
            if e["type"] in (L.LENDER_UPDATE, L.LENDER_REFUSAL, L.UPDATE_REJECTED)
        }
        if answers != {lender: L.LENDER_REFUSAL for lender in last.roster}:
            _fail(
                "run_finished",
                "stop",
                f"the run says every lender declined round {done + 1}; not every lender asked signed a refusal",
            )
    elif stop.get("kind") == "no_counts" and cfg.model == "gbdt" and cfg.gbdt_split_candidates == "noisy_quantiles":
        rounds = view.complete_rounds()
        counts = (rounds[0].aggregate or {}) if done == 1 else {}
        if done != 1 or not (counts.get("skipped") is True or not counts.get("lenders")):
            _fail(
                "run_finished",
                "stop",
                "the run says the count release aggregated no counts, but the ledger's round 1 aggregated some",
            )
    elif stop.get("kind") == "lender_level_budget" and cfg.dp and cfg.dp_level == "lender":
        events = _lender_level_events(view)
        delta = cfg.delta or default_delta(cfg.lenders)
        nxt = PrivacyEvent.from_dict({**events[-1].to_dict(), "round": done + 1}) if events else None
        if nxt is None or dpaccounting.epsilon([*events, nxt], delta, _accountant(cfg)) <= cfg.epsilon * (
            1 - TOLERANCE
        ):
            _fail(
                "run_finished",
                "stop",
                f"the run says round {done + 1} would exceed the federation's budget; the "
                "recorded noise says it would not",
            )
    else:
        _fail("run_finished", "stop", f"unknown stop {stop!r}")


# ---- 4. privacy -------------------------------------------------------------------------------


def _accountant(cfg: RunConfig) -> str:
    return "rdp" if cfg.accountant == "rdp" else "pld"  # dp_accounting's counterpart of Opacus' PRV


def _lender_level_events(view: RunView) -> list[PrivacyEvent]:
    return [
        PrivacyEvent.from_dict(a.aggregate["noise_event"])
        for a in view.complete_rounds()
        if a.aggregate and a.aggregate.get("noise_event")
    ]


def _compare(where: str, who: str, recomputed: float, claimed, budget: float | None) -> None:
    if not isinstance(claimed, (int, float)) or not math.isclose(recomputed, claimed, rel_tol=TOLERANCE, abs_tol=1e-9):
        _fail(where, "epsilon", f"{who} claims epsilon {claimed}, its recorded events give {recomputed:.4f}")
    if budget is not None and (claimed > budget or recomputed > budget * (1 + TOLERANCE)):
        _fail(where, "budget", f"{who} spent epsilon {recomputed:.4f} against a budget of {budget}")


def _check_privacy(view: RunView, cfg: RunConfig) -> dict[str, float]:
    finish = view.finished or {}
    summary = finish.get("privacy") or {}
    if not cfg.dp:
        for lender in range(cfg.lenders):
            if any(b.get("events") for b in view.releases(lender)):
                _fail(f"lender {lender}", "privacy events", "a run without DP records DP releases")
        if summary != {"dp": False}:
            _fail("run_finished", "privacy", "a run without DP must say so and claim nothing")
        return {}
    accountant = _accountant(cfg)
    if cfg.dp_level == "lender":
        return _check_lender_level(view, cfg, summary, accountant)
    out = {}
    for lender in range(cfg.lenders):
        manifest = view.manifests[lender]
        policy, records = manifest["policy"], int(manifest["train_records"])
        delta = effective_delta(cfg.delta, policy.get("delta", 0.0), records)
        budget = cfg.budget_for(lender)
        if view.releases(lender) and budget > policy.get("max_epsilon", math.inf):  # asking more is no release
            _fail(
                f"lender {lender}",
                "policy",
                f"lender {lender} released under budget {budget}, above its own maximum {policy.get('max_epsilon')}",
            )
        if not 0 < delta <= min(1 / records, MAX_DELTA):
            _fail(
                f"lender {lender}",
                "delta",
                f"delta {delta:.3g} gives lender {lender} (n = {records}) no meaningful "
                f"guarantee: it must be below 1/n and at most {MAX_DELTA:g}",
            )
        events: list[PrivacyEvent] = []
        bodies: list[dict] = []
        counted: set[bytes] = set()
        noise = SEEDED_SOURCE if cfg.reproducible_noise_not_private else SECURE_SOURCE
        for attempt in view.attempts:
            for entry in attempt.entries:
                body = entry["body"]
                if entry["type"] not in (L.LENDER_UPDATE, L.LENDER_REFUSAL) or body.get("lender") != lender:
                    continue
                where = _describe(entry)
                if body.get("budget") != budget:
                    _fail(where, "budget", f"states budget {body.get('budget')}, the run gave {budget}")
                if body.get("delta") != delta:
                    _fail(
                        where,
                        "delta",
                        f"accounts at delta {body.get('delta')}; lender {lender}'s signed policy and "
                        f"record count ({records}) give {delta:.6g}",
                    )
                if entry["type"] == L.LENDER_UPDATE:
                    if body.get("noise") != noise:
                        _fail(where, "noise", f"noise source {body.get('noise')!r}, the run's is {noise!r}")
                    if len(body.get("events", [])) != 1:
                        _fail(where, "privacy events", "a DP update must carry exactly its round's event")
                    try:
                        event = PrivacyEvent.from_dict(body["events"][0])
                    except (TypeError, KeyError) as exc:
                        _fail(where, "privacy events", str(exc))
                    _check_event(where, event, lender, attempt.round, cfg, policy)
                    _check_secure_sum_terms(where, body, event, cfg, policy, _roster_threshold(attempt))
                    if canonical(body) not in counted:
                        counted.add(canonical(body))
                        events.append(event)
                        bodies.append(body)
                    claimed = body.get("epsilon")
                else:
                    claimed = body.get("epsilon_spent")
                _compare(where, f"lender {lender}", dpaccounting.epsilon(events, delta, accountant), claimed, budget)
        final = view.finals[lender]
        eps = dpaccounting.epsilon(events, delta, accountant) if events else 0.0
        _compare(f"lender {lender}'s final statement", f"lender {lender}", eps, final.get("epsilon") or 0.0, budget)
        lifetime = final.get("lifetime_epsilon")
        if (
            not isinstance(lifetime, (int, float))
            or lifetime < eps * (1 - TOLERANCE) - 1e-9
            or lifetime > policy.get("max_epsilon", math.inf) * (1 + TOLERANCE)
        ):
            _fail(
                f"lender {lender}'s final statement",
                "budget",
                f"its epsilon over every run with its folder, "
                f"{lifetime}, is below this run's {eps:.4f} or above its own maximum {policy.get('max_epsilon')}",
            )
        unit = (summary.get("units") or {}).get(str(lender)) or {}
        _check_unit(f"privacy summary of lender {lender}", unit, events, delta, budget, cfg)
        _check_secure_sum_statement(f"privacy summary of lender {lender}", unit, bodies, delta, accountant)
        # What the report shows must be what the lender signed, exactly (not within the 1% the accountants differ by),
        # and the mechanism of its last release.
        last = view.releases(lender)[-1:] or [{}]
        event = (last[0].get("events") or [{}])[0]
        shown = {
            "epsilon": final.get("epsilon"),
            "epsilon_rdp": final.get("epsilon_rdp"),
            "epsilon_prv": final.get("epsilon_prv"),
            "noise_multiplier": event.get("noise_multiplier"),
            "sample_rate": event.get("sample_rate"),
            "clip_norm": release_clip_norm(cfg),
            "noise": last[0].get("noise"),
        }
        for name, value in shown.items():
            close = (
                name.startswith("epsilon")
                and _number(value, none=False)
                and _number(unit.get(name), none=False)
                and math.isclose(unit[name], value, rel_tol=1e-9)
            )  # PRV's last digit differs between processes
            if unit.get(name) != value and not close:
                _fail(
                    f"privacy summary of lender {lender}",
                    "privacy summary",
                    f"'{name}' is {unit.get(name)!r}; the lender signed {value!r}",
                )
        for name, other in (("epsilon_rdp", "rdp"), ("epsilon_prv", "pld")):
            recomputed = dpaccounting.epsilon(events, delta, other) if events else 0.0
            if not _number(final.get(name), none=False) or not math.isclose(
                final[name], recomputed, rel_tol=TOLERANCE, abs_tol=1e-9
            ):
                _fail(
                    f"lender {lender}'s final statement",
                    "epsilon",
                    f"{name} {final.get(name)} differs from the recomputed {recomputed:.4f}",
                )
        out[str(lender)] = eps
    return out


def _roster_threshold(attempt) -> tuple[int, int] | None:
    """(threshold, size) of the round's signed roster (its signature is checked in _check_secure_aggregation)."""
    rosters = attempt.of_type(L.SECAGG_ROSTER)
    try:
        body = json.loads(str(rosters[0]["body"].get("body", ""))) if rosters else {}
    except json.JSONDecodeError:
        return None
    threshold = body.get("threshold") if isinstance(body, dict) else None
    participants = body.get("participants") if isinstance(body, dict) else None
    if not isinstance(threshold, int) or isinstance(threshold, bool) or not isinstance(participants, list):
        return None
    return threshold, len(participants)


def _check_secure_sum_terms(
    where: str, body: dict, event: PrivacyEvent, cfg: RunConfig, policy: dict, roster: tuple[int, int] | None
) -> None:
    """A gbdt update under secure aggregation signs the noise it added itself: its policy's own colluders term,
    the threshold of the roster it was sent, and the share that formula gives (federation.gbdt.leaf_sums.
    secure_noise_share). Every other update carries none."""
    terms = body.get("secure_sum")
    if not (cfg.model == "gbdt" and cfg.secure_aggregation):
        if terms is not None:
            _fail(where, "secure sum", "a noise share in a run that is not gbdt under secure aggregation")
        return
    if not isinstance(terms, dict) or set(terms) != {"colluders", "threshold", "share_noise_multiplier"}:
        _fail(where, "secure sum", "a gbdt update under secure aggregation must sign the noise share it added")
    colluders, share = terms["colluders"], terms["share_noise_multiplier"]
    if colluders != policy.get("secure_sum_colluders"):
        _fail(
            where,
            "secure sum",
            f"relies on {colluders} colluders; lender's signed policy says {policy.get('secure_sum_colluders')}",
        )
    threshold, size = roster or (None, 0)
    if terms["threshold"] != threshold:
        _fail(where, "secure sum", f"threshold {terms['threshold']} is not the signed roster's {threshold}")
    try:
        expected = secure_noise_share(event.noise_multiplier, int(threshold or 0), colluders, size)
    except (TypeError, ValueError) as exc:
        _fail(where, "secure sum", str(exc))
    if not _finite(share) or not math.isclose(share, expected, rel_tol=1e-12):
        _fail(where, "secure sum", f"noise share {share} is not the {expected:.6g} its policy and roster give")


def _check_secure_sum_statement(where: str, unit: dict, bodies: list[dict], delta: float, accountant: str) -> None:
    """The report's statement of what a lender's epsilon rests on (its assumption, and its epsilon from its own
    noise alone) must be what its signed updates give, recomputed here with dp_accounting."""
    recomputed = secure_sum_statement(bodies, lambda own: dpaccounting.epsilon(own, delta, accountant))
    claimed = unit.get("secure_sum")
    if recomputed is None or not isinstance(claimed, dict):
        if claimed is not None or recomputed is not None:
            _fail(
                where,
                "secure sum",
                f"states {claimed!r} of the trust it rests on; its signed updates give {recomputed!r}",
            )
        return
    for name, value in recomputed.items():
        close = (
            name == "epsilon_own_share"
            and _finite(claimed.get(name))
            and math.isclose(claimed[name], value, rel_tol=TOLERANCE, abs_tol=1e-9)
        )
        if claimed.get(name) != value and not close:
            _fail(where, "secure sum", f"'{name}' is {claimed.get(name)!r}; the lender's signed updates give {value!r}")


def _check_secure_sum_noise(view: RunView, cfg: RunConfig) -> None:
    """Each round of a gbdt run under secure aggregation: for every lender that relied on the others' noise, the
    survivors' signed shares must leave at least its noise multiplier z on the unmasked sum against its c
    colluders (federation.gbdt.leaf_sums.guaranteed_noise); otherwise its epsilon under the assumption is not
    what it claims (a survivor with a smaller noise multiplier of its own added a smaller share)."""
    if not (cfg.model == "gbdt" and cfg.secure_aggregation and cfg.dp):
        return
    for attempt in view.complete_rounds():
        agg = attempt.aggregate
        if agg is None or agg.get("skipped"):
            continue
        shares: dict[int, dict] = {}
        for entry in attempt.of_type(L.LENDER_UPDATE):
            if entry["body"].get("lender") in agg.get("lenders", []):
                shares[entry["body"]["lender"]] = entry["body"]
        for lender, body in sorted(shares.items()):
            terms, z = body["secure_sum"], body["events"][0]["noise_multiplier"]
            if terms["colluders"] is None:
                continue
            others = [b["secure_sum"]["share_noise_multiplier"] for other, b in shares.items() if other != lender]
            left = guaranteed_noise(terms["share_noise_multiplier"], others, terms["colluders"])
            if left < z * (1 - 1e-9):
                _fail(
                    _describe(attempt.started),
                    "secure sum",
                    f"lender {lender} relied on the others' noise, but round {attempt.round}'s survivors' signed "
                    f"shares leave noise multiplier {left:.4g} against {terms['colluders']} colluders, below its "
                    f"{z:.4g}: its epsilon under that assumption does not hold (give the lenders one delta and budget)",
                )


def _check_event(where: str, event: PrivacyEvent, lender: int, rnd: int, cfg: RunConfig, policy: dict) -> None:
    if event.lender != lender or event.round != rnd or event.granularity != "record":
        _fail(where, "privacy events", "the event names another lender, round or granularity")
    if not 0 < event.sample_rate <= 1 or event.steps < 1 or not event.noise_multiplier > 0:
        _fail(where, "privacy events", "the event's sampling rate, steps or noise are out of range")
    if event.noise_multiplier < policy.get("min_noise_multiplier", 0) * (1 - 1e-12):
        _fail(
            where,
            "policy",
            f"noise multiplier {event.noise_multiplier:.4g} is below the lender's own floor "
            f"{policy.get('min_noise_multiplier')}",
        )
    if cfg.model == "gbdt" and (event.sample_rate != 1.0 or event.steps != 1):
        # a gbdt round releases the leaf sums over every record once (federation/gbdt_release.py)
        _fail(where, "privacy events", "a gbdt release is one Gaussian release over every record (rate 1, 1 step)")
    clip = release_clip_norm(cfg)  # gbdt: the sensitivity of the leaf sums
    if event.clip_norm != clip or event.clip_norm > policy.get("max_clip_norm", math.inf):
        _fail(where, "policy", f"clip norm {event.clip_norm} is not the run's {clip} within the lender's limit")


def _check_unit(
    where: str, unit: dict, events: list[PrivacyEvent], delta: float, budget: float, cfg: RunConfig
) -> None:
    """The coordinator's privacy summary (privacy.json, the report) against the recomputation."""
    rdp = dpaccounting.epsilon(events, delta, "rdp") if events else 0.0
    pld = dpaccounting.epsilon(events, delta, "pld") if events else 0.0
    enforced = rdp if cfg.accountant == "rdp" else pld
    for name, value in (("epsilon_rdp", rdp), ("epsilon_prv", pld), ("epsilon", enforced)):
        claimed = unit.get(name)
        if not isinstance(claimed, (int, float)) or not math.isclose(claimed, value, rel_tol=TOLERANCE, abs_tol=1e-9):
            _fail(where, "epsilon", f"{name} {claimed} differs from the recomputed {value:.4f}")
    if unit.get("budget") != budget or unit.get("delta") != delta:
        _fail(where, "budget", "its budget or delta differs from the ledger's")
    if unit.get("rounds_released") != len(events) or unit.get("steps") != sum(e.steps for e in events):
        _fail(where, "privacy events", "its count of releases or steps differs from the ledger's")


def _known_sampling(sigma: float, rounds: int, delta: float, accountant: str) -> float:
    """A lender's epsilon against whoever knows the rounds it was sampled in: the Gaussian mechanism, unsampled,
    composed over those rounds (no amplification; the coordinator's figure is checked against this)."""
    if not rounds:
        return 0.0
    event = PrivacyEvent(-1, 0, sigma, 1.0, rounds, 1.0, neighbouring="add_or_remove_one_lender", granularity="lender")
    return dpaccounting.epsilon([event], delta, accountant)


def _check_lender_level(view: RunView, cfg: RunConfig, summary: dict, accountant: str) -> dict[str, float]:
    events = _lender_level_events(view)
    delta = cfg.delta or default_delta(cfg.lenders)
    eps = dpaccounting.epsilon(events, delta, accountant) if events else 0.0
    for attempt in view.complete_rounds():
        agg = attempt.aggregate or {}
        event = agg.get("noise_event")
        if not event or event.get("granularity") != "lender" or event.get("sample_rate") != cfg.lender_sample_rate:
            _fail(
                _describe(attempt.started),
                "privacy events",
                "a lender-level round must record its noise event at the run's sampling rate",
            )
        if agg.get("delta") != delta:
            _fail(_describe(attempt.started), "delta", f"delta {agg.get('delta')} is not the run's {delta:.6g}")
    unit = (summary.get("units") or {}).get("federation") or {}
    _compare("privacy summary of the federation", "the federation", eps, unit.get("epsilon"), cfg.epsilon)
    _check_unit("privacy summary of the federation", unit, events, delta, cfg.epsilon, cfg)
    sigma = events[-1].noise_multiplier if events else 0.0
    known = {}
    for lender in range(cfg.lenders):
        rounds = sum(lender in a.roster for a in view.complete_rounds())
        known[str(lender)] = _known_sampling(sigma, rounds, delta, accountant) if events else 0.0
        claimed = (unit.get("epsilon_known_sampling") or {}).get(str(lender))
        if not isinstance(claimed, (int, float)) or not math.isclose(
            claimed, known[str(lender)], rel_tol=TOLERANCE, abs_tol=1e-9
        ):
            _fail(
                "privacy summary of the federation",
                "epsilon",
                f"lender {lender}'s epsilon against a reader of the "
                f"ledger is {claimed}; its {rounds} sampled rounds give {known[str(lender)]:.4f}",
            )
    top = max(known.values(), default=0.0)
    claimed_top = unit.get("epsilon_known_sampling_max")
    if not _finite(claimed_top) or not math.isclose(claimed_top, top, rel_tol=TOLERANCE, abs_tol=1e-9):
        _fail(
            "privacy summary of the federation",
            "epsilon",
            f"the most any lender spent against a reader of the "
            f"ledger is stated as {claimed_top}; the lenders' own figures give {top:.4f}",
        )
    if unit.get("epsilon") != unit.get("epsilon_rdp" if cfg.accountant == "rdp" else "epsilon_prv"):
        _fail("privacy summary of the federation", "privacy summary", "its epsilon is not its enforcing accountant's")
    return {"federation": eps, "federation, sampling known (max)": top}


# ---- 5. model and secure aggregation -------------------------------------------------------------


def _check_model(run_dir: Path, view: RunView, cfg: RunConfig) -> dict[str, np.ndarray]:
    finish = view.finished or {}
    model_hash = finish.get("model_hash")
    complete = view.complete_rounds()
    last = complete[-1].aggregate if complete else None
    if last is not None and last.get("model_hash") != model_hash:
        _fail("run_finished", "model", "the final model is not the last aggregate")
    # With no round finished (every lender declined the first, say), the model is the one the run started from: else
    # nothing tied the final model to anything (a coordinator published a model of its own making and the run verified).
    if last is None and model_hash != _initial_model_hash(view, cfg):
        _fail("run_finished", "model", "no round finished, but the final model is not the run's initial model")
    path = run_dir / "model.pt"
    if not path.exists():
        _fail("model.pt", "files", "the model file is missing")
    if hashlib.sha256(path.read_bytes()).hexdigest() != finish.get("model_file_sha256"):
        _fail("model.pt", "model", "the model file differs from the one the ledger names")
    # torch.save writes a zip of a fixed set of members: anything more is a message hidden in the model file.
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError):
        _fail("model.pt", "model", "the model file is not a torch archive")
    members = re.compile(
        r"[^/]+/(data\.pkl|version|byteorder|\.format_version|\.storage_alignment|"
        r"\.data/serialization_id|\.data/version|data/\d+)"
    )
    if not all(members.fullmatch(n) for n in names) or len({n.split("/")[0] for n in names}) != 1:
        _fail("model.pt", "model", "the model file holds more than a saved state dict")
    import torch

    try:
        state = torch.load(path, weights_only=True)
        arrays = {k: v.numpy() for k, v in state.items()}
        actual = arrays_hash(arrays)
    except Exception as exc:
        _fail("model.pt", "model", f"cannot read the model file ({exc.__class__.__name__})")
    if actual != model_hash:
        _fail("model.pt", "model", "the model file's arrays differ from the ledger's final model hash")
    return arrays  # their hash is the ledger's model_hash


def _check_gbdt(view: RunView, cfg: RunConfig) -> None:
    """A gbdt run's every round's model, rebuilt from the structures and the lenders' signed leaf sums in its
    aggregates (federation/audit_trail/gbdt_ledger.py), must be the model the round recorded."""
    if cfg.model != "gbdt":
        return
    from federation.audit_trail.gbdt_ledger import LedgerModelMismatch, rederived_arrays

    try:
        rederived_arrays(view, cfg)
    except LedgerModelMismatch as exc:
        _fail("aggregate", "model", str(exc))


def _check_aggregates(view: RunView, cfg: RunConfig) -> int:
    """A run that publishes its updates (record-level DP without secure aggregation): every round's aggregate redone
    from them with Flower's strategy (federation/audit_trail/aggregate_replay.py). Returns the rounds redone."""
    from federation.audit_trail.aggregate_replay import AggregateMismatch, check_aggregates

    try:
        return check_aggregates(view, cfg, _initial_arrays(view, cfg))
    except AggregateMismatch as exc:
        _fail("aggregate", "aggregate", str(exc))


def _hex(text: object) -> bool:
    return isinstance(text, str) and bool(re.fullmatch(r"(?:[0-9a-f]{2})+", text))


def _check_secure_aggregation(view: RunView, cfg: RunConfig, coordinator) -> None:
    """Secure aggregation on: every update was sent masked, each round's roster is the one the coordinator signed
    for the lenders, and the weights are the lenders' signed record counts. Off: nothing was masked."""
    for attempt in view.attempts:
        for entry in attempt.of_type(L.LENDER_UPDATE):
            if sent_nothing(entry["body"]):  # neither masked nor in the clear (and never aggregated: _check_rounds)
                continue
            masked = list(entry["body"].get("shapes", {})) == [MASKED]
            if masked is not cfg.secure_aggregation:
                _fail(
                    _describe(entry),
                    "secure aggregation",
                    "the update was sent "
                    + (
                        "in the clear although secure aggregation was on"
                        if cfg.secure_aggregation
                        else "masked although secure aggregation was off"
                    ),
                )
        rosters = attempt.of_type(L.SECAGG_ROSTER)
        if not cfg.secure_aggregation:
            if rosters:
                _fail(_describe(rosters[0]), "secure aggregation", "a secure-aggregation roster in a run without it")
            continue
        agg = attempt.aggregate
        if attempt.finished is None or agg is None or agg.get("skipped"):
            continue
        if len(rosters) != 1:
            _fail(
                _describe(attempt.started), "secure aggregation", "an aggregated secure round records one signed roster"
            )
        signed = rosters[0]["body"]
        try:
            body = json.loads(str(signed.get("body", "")))
        except json.JSONDecodeError:
            body = None
        if not isinstance(body, dict) or not verify_signature(
            coordinator, str(signed.get("signature", "")), str(signed.get("body", "")).encode()
        ):
            _fail(
                _describe(rosters[0]),
                "secure aggregation",
                "the roster the lenders checked is not signed by the coordinator",
            )
        participants = body.get("participants", [])
        if (
            body.get("run") != view.started["run"]
            or body.get("round") != attempt.round
            or not set(participants) <= set(attempt.roster)
        ):
            _fail(_describe(rosters[0]), "secure aggregation", "the signed roster names another run, round or lenders")
        threshold = body.get("threshold", 0)
        if not (len(participants) // 2 < threshold <= len(participants)):
            _fail(
                _describe(rosters[0]),
                "secure aggregation",
                f"threshold {threshold} of {len(participants)} is not more than half",
            )
        unmask = agg.get("unmask") or {}
        try:
            request = json.loads(str(unmask.get("body", "")))
        except json.JSONDecodeError:
            request = None
        if not isinstance(request, dict) or not verify_signature(
            coordinator, str(unmask.get("signature", "")), str(unmask.get("body", "")).encode()
        ):
            _fail(
                _describe(attempt.started),
                "secure aggregation",
                "the unmasking request is not signed by the coordinator",
            )
        survivors, dropped = request.get("survivors", []), request.get("dropped", [])
        if (request.get("run"), request.get("round")) != (view.started["run"], attempt.round) or sorted(
            agg.get("lenders", [])
        ) != sorted(survivors):
            _fail(
                _describe(attempt.started),
                "secure aggregation",
                f"the aggregate names lenders "
                f"{sorted(agg.get('lenders', []))}; the signed unmasking request's survivors are {sorted(survivors)}",
            )
        confirmations = agg.get("confirmations") or {}
        registry = Registry(
            view.started["coordinator_public_key"],
            {lender: view.manifests[lender]["public_key"] for lender in view.manifests},
        )
        valid = sum(
            confirmation_verifies(
                registry,
                view.started["run"],
                attempt.round,
                survivors,
                dropped,
                int(lender),
                bytes.fromhex(sig) if _hex(sig) else b"",
            )
            for lender, sig in confirmations.items()
            if str(lender).isdigit() and int(lender) in survivors
        )
        if valid < threshold or len(confirmations) != valid:
            _fail(
                _describe(attempt.started),
                "secure aggregation",
                f"{valid} valid survivor confirmations of "
                f"{len(confirmations)} recorded; at least {threshold}, and only valid ones, are needed",
            )
        # A gbdt round is a plain sum (no weights, federation/secagg.py sum_quantizer): it records none.
        weights = (
            None
            if cfg.model == "gbdt"
            else sum(int(view.manifests[lender]["train_records"]) for lender in agg.get("lenders", []))
        )
        if agg.get("weight_sum") != weights:
            _fail(
                _describe(attempt.started),
                "secure aggregation",
                f"the unmasked weight sum {agg.get('weight_sum')} is "
                f"not the aggregated lenders' signed record counts ({weights})",
            )


# ---- 6-7. files and report --------------------------------------------------------------------

FOLDERS = {"manifests", "keys"}  # the only folders a run folder holds


def _folder_files(run_dir: Path) -> list[str]:
    """Every regular file, walking so that nothing is skipped: an unreadable folder, a link, a FIFO, a device or
    any folder besides manifests/ and keys/ fails (an empty folder's name could carry a message too)."""
    out = []

    def refuse(error: OSError) -> None:
        _fail(str(error.filename), "files", f"cannot read it ({error.strerror})")

    for root, dirs, files in os.walk(run_dir, onerror=refuse, followlinks=False):
        here = Path(root).relative_to(run_dir)
        for name in dirs:
            path = Path(root) / name
            if path.is_symlink() or here != Path(".") or name not in FOLDERS:
                _fail(str(here / name), "files", "this folder is not part of a run folder")
        for name in files:
            mode = os.lstat(Path(root) / name).st_mode
            if not stat.S_ISREG(mode):
                _fail(str(here / name), "files", "a run folder holds regular files only (no links, FIFOs or devices)")
            out.append(str(here / name))
    return sorted(out)


def _check_file_hashes(run_dir: Path, view: RunView) -> None:
    """Every file the signed final entry names has the SHA-256 it names (cheap: checked early)."""
    hashes = (view.finished or {}).get("files")
    if not isinstance(hashes, dict) or not hashes:
        _fail("run_finished", "files", "the final entry must hash every file of the run folder")
    for name, digest in sorted(hashes.items()):
        path = run_dir / name
        if ".." in Path(name).parts or not path.is_file():
            _fail(name, "files", "the signed final entry names this file, but it is missing")
        if hashlib.sha256(path.read_bytes()).hexdigest() != digest:
            _fail(name, "files", "its SHA-256 differs from the one in the signed final entry")


def _check_files(run_dir: Path, view: RunView, model: dict[str, np.ndarray]) -> list[str]:
    """Every file re-derived from the ledger (model.json also from the checked model arrays) and compared byte for
    byte; a file outside a run folder fails."""
    finish = dict(view.finished or {})
    hashes = finish.pop("files", None)
    expected = run_files(view, finish, model)
    present = _folder_files(run_dir)
    unverified = []
    for name in present:
        path = run_dir / name
        if path.is_symlink():
            _fail(name, "files", "a run folder holds no links")
        if name in expected or name in NOT_DERIVED:
            continue
        if name in UNVERIFIED_FILES:
            unverified.append(name)
            continue
        _fail(
            name,
            "files",
            "this file is not part of a run folder (a finished run holds only the files its ledger derives)",
        )
    for name, data in expected.items():
        path = run_dir / name
        if not path.is_file():
            _fail(name, "files", "the ledger derives this file, but it is missing")
        if path.read_bytes() != data:
            _fail(name, "files", "its content differs from what the ledger derives")
    if not isinstance(hashes, dict) or set(hashes) != set(expected) | {"model.pt"}:
        _fail("run_finished", "files", "the final entry must hash every file of the run folder")
    return unverified


def _read_report(run_dir: Path, entries: list[dict], coordinator) -> dict:
    """report.json: canonical, signed by the coordinator, bound to this ledger's head (cheap: checked early)."""
    path = run_dir / "report.json"
    if not path.exists():
        _fail("report.json", "files", "the report is missing")
    raw = path.read_bytes()
    try:
        report = json.loads(raw)
        exact = isinstance(report, dict) and report_bytes(report) == raw
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError, TypeError):
        exact, report = False, None
    if not exact:
        _fail("report.json", "format", "not the canonical serialization of a report (bytes were altered)")
    if not verify_signature(coordinator, str(report.get("signature", "")), signed_part(report)):
        _fail("report.json", "signature", "the coordinator's signature does not verify")
    if report.get("ledger_head") != entries[-1]["hash"] or report.get("ledger_entries") != len(entries):
        _fail("report.json", "binding", "the report is not bound to this ledger's head")
    return report


def _check_report(run_dir: Path, entries: list[dict], report: dict) -> None:
    """Every fact of the report re-derived from the ledger, and report.html re-rendered from report.json."""
    expected = json.loads(report_bytes({**build_report(entries), "signature": report["signature"]}))
    for key in sorted(set(expected) | set(report)):
        if report.get(key) != expected.get(key):
            _fail(
                "report.json",
                "report",
                f"'{key}' says {_short(report.get(key))}; the ledger says {_short(expected.get(key))}",
            )
    page = run_dir / "report.html"
    if not page.is_file():
        _fail("report.html", "files", "the page is missing")
    if page.read_bytes() != render_html(report).encode():
        _fail("report.html", "report", "the page differs from the one report.json renders")


def _short(value: object) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= 120 else text[:117] + "..."


def verify_run(run_dir: str | Path, registry: str | Path | Registry | None = None) -> VerifiedRun:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        _fail(str(run_dir), "files", "no such run folder")
    if registry is not None and not isinstance(registry, Registry):
        registry = load_registry(registry)
    entries = _read_ledger(run_dir)
    coordinator, lenders, fingerprints = _keys(entries, registry)
    _run_id, cfg = _check_chain(entries, coordinator, lenders)
    if registry is not None:
        unregistered = [lender for lender in range(cfg.lenders) if registry.lender_key(lender) is None]
        if unregistered:
            _fail("registry", "registry", f"the run names lender {unregistered[0]}, which the registry does not")
    view = RunView(entries)
    # Cheap integrity checks first (they catch any changed byte), then the rebuild of the run.
    report = _read_report(run_dir, entries, coordinator)
    if entries[-1]["type"] == L.RUN_FINISHED:
        _check_file_hashes(run_dir, view)
    _check_structure(view, cfg)
    epsilons = _check_privacy(view, cfg)
    model = _check_model(run_dir, view, cfg)
    _check_gbdt(view, cfg)
    redone = _check_aggregates(view, cfg)
    _check_secure_aggregation(view, cfg, coordinator)
    _check_secure_sum_noise(view, cfg)
    unverified = _check_files(run_dir, view, model)
    _check_report(run_dir, entries, report)
    absent = sorted(set(registry.lenders) - set(range(cfg.lenders))) if registry is not None else []
    return VerifiedRun(
        len(entries),
        len(view.manifests),
        epsilons,
        cfg.accountant if cfg.dp else "-",
        entries[-1]["hash"],
        registry is not None,
        fingerprints=fingerprints,
        unverified=unverified,
        absent=absent,
        not_private=cfg.dp and cfg.reproducible_noise_not_private,
        aggregates=_aggregates_line(cfg, redone),
    )


def _aggregates_line(cfg: RunConfig, redone: int) -> str:
    """What ties each round's model to the lenders' updates, in one line of the summary (the report's sentence, with
    the rounds this verification redid)."""
    from federation.aggregation import aggregation_check, publishes_updates

    if publishes_updates(cfg):
        return f"{redone} rounds' aggregates redone with Flower's {cfg.strategy} from the updates the lenders signed"
    return aggregation_check(cfg)
