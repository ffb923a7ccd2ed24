"""The privacy report: report.json (signed by the coordinator, bound to the ledger head) and report.html (one
self-contained page, plain language first).

Both are functions of the ledger alone: `build_report(entries)` reads nothing else, and `render_html(report)`
reads nothing but the report, with our own deterministic SVG chart (svg_chart.py) instead of a plot library's
bytes. So the verifier rebuilds the report from the ledger and re-renders the page, and a coordinator cannot
sign a report, or write a page, that says more or other than the ledger it is bound to.
"""

from __future__ import annotations

import html
import json
import math
from decimal import Decimal
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from federation.audit_trail import ledger as L
from federation.audit_trail.canonical import canonical
from federation.audit_trail.derive import UNVERIFIED_FILES
from federation.audit_trail.keys import sign
from federation.audit_trail.run_view import RunView, evaluators, global_scores
from federation.audit_trail.svg_chart import epsilon_chart, lender_names
from federation.registry import fingerprint
from federation.runfolder import write_atomically

FORMAT = "fedcredit-privacy-report/3"

# What the epsilon covers, and what lies outside it: stated in every report, in plain words.
COVERS = [
    "each lender's training records, as seen through every model update the lender sent (and any noisy statistic)",
]
OUTSIDE = [
    "the scores (AUC, KS, Brier, log loss) each lender computed on its own test records and reported as they are",
    "the record counts in each lender's manifest and updates (records held, without consent, used, training, test)",
    "the manifests themselves: the fields each lender used and refused, and a keyed commitment to its records",
    "which lenders took part in each round (the rosters in the ledger)",
]


def report_bytes(report: dict) -> bytes:
    """The one accepted serialization of report.json: any other byte sequence fails verification."""
    return (json.dumps(report, indent=2, sort_keys=True, ensure_ascii=True, allow_nan=False) + "\n").encode()


def signed_part(report: dict) -> bytes:
    return canonical({k: v for k, v in report.items() if k != "signature"})


def read_ledger(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (Path(run_dir) / "ledger.jsonl").read_text().splitlines()]


def build_report(entries: list[dict]) -> dict:
    """The report, unsigned: every fact in it comes from the ledger."""
    view = RunView(entries)
    finished_entry = entries[-1]
    finish = view.finished or {}
    cfg = view.config
    privacy = finish.get("privacy") or {"dp": False}
    units = privacy.get("units", {})
    lenders = [_lender_details(view, lender, units.get(str(lender), {})) for lender in sorted(view.manifests)]
    complete = view.complete_rounds()
    scores = global_scores(complete[-1]) if complete else {}  # from the lenders' signed scores, not the coordinator's
    sources = sorted(
        {d["noise"] for d in lenders if d["noise"]}
        | ({units["federation"]["noise"]} if "federation" in units else set())
    )
    report = {
        "format": FORMAT,
        "created": finished_entry["time"],
        "run": view.started["run"],
        "code_version": view.started.get("code_version"),
        "flwr_version": view.started.get("flwr_version"),
        "dataset": cfg["dataset"],
        "cards": _cards(view),
        "lenders": cfg["lenders"],
        "rounds": cfg["rounds"],
        "rounds_completed": finish.get("rounds_completed"),
        "stopped_early": finish.get("stopped_early", ""),
        "strategy": cfg["strategy"],
        "model": cfg["model"],
        "privacy": {
            "dp": bool(privacy.get("dp")),
            "granularity": privacy.get("granularity"),
            "accountant": privacy.get("accountant"),
            "noise_sources": sources,
            "not_private": bool(cfg.get("reproducible-noise-not-private")) and bool(privacy.get("dp")),
            "neighbouring": (
                "add or remove one lender" if privacy.get("granularity") == "lender" else "add or remove one record"
            )
            if privacy.get("dp")
            else None,
            "federation": units.get("federation"),
            "secure_aggregation": bool(cfg.get("secure-aggregation", False)),
        },
        "coverage": {"covers": COVERS if privacy.get("dp") else [], "outside": OUTSIDE},
        "lender_details": lenders,
        "utility": {
            "global_auc": scores.get("auc"),
            "global_ks": scores.get("ks"),
            "evaluated_on": "each lender's own test records (global: test-size-weighted mean)",
        },
        # What ties each round's model to the lenders' updates (federation/aggregation.py), so that a reader of the
        # report knows what `fedcredit verify` can check of the averaging, and what it takes on trust.
        "aggregation_check": _aggregation_check(cfg),
        "final_model_hash": finish.get("model_hash"),
        "model_file_sha256": finish.get("model_file_sha256"),
        "ledger_head": finished_entry["hash"],
        "ledger_entries": len(entries),
        "coordinator_public_key": view.started["coordinator_public_key"],
        "coordinator_fingerprint": fingerprint(view.started["coordinator_public_key"]),
        "unverified_files": list(UNVERIFIED_FILES),
    }
    if cfg["model"] == "gbdt" and cfg.get("gbdt-split-candidates", "all") != "all":  # absent otherwise: as before
        report["gbdt_split_candidates"] = cfg["gbdt-split-candidates"]
    report["summary"] = summary_sentences(report)
    return report


def _aggregation_check(config: dict) -> str:
    from federation.aggregation import aggregation_check
    from federation.config import RunConfig

    return aggregation_check(RunConfig.from_record(config))


def _cards(view: RunView) -> list[dict]:
    """Each dataset card the lenders signed they used (name and SHA-256), with the lenders that used it."""
    cards: dict[tuple[str, str], list[int]] = {}
    for lender in sorted(view.manifests):
        m = view.manifests[lender]
        cards.setdefault((str(m["card"]), str(m["card_sha256"])), []).append(
            lender
        )  # str: sortable, whatever was signed
    return [{"name": name, "sha256": sha, "lenders": who} for (name, sha), who in sorted(cards.items())]


def _no_score_reason(view: RunView, lender: int, scored: dict | None) -> str | None:
    """Why the lender's AUC and KS of the final model are missing (None when they are there)."""
    finished = view.complete_rounds()
    if scored is not None:
        return (
            "its test records hold one class only, so AUC and KS are undefined" if scored.get("auc") is None else None
        )
    if not finished:
        return "no round finished, so there is no model to score"
    last = finished[-1]
    failed = [
        e["body"]["reason"]
        for e in last.of_type(L.UPDATE_REJECTED)
        if e["body"].get("lender") == lender and e["body"].get("stage") == "evaluate"
    ]
    if failed:
        return f"its score of the final model was not received ({failed[-1]})"
    if lender not in evaluators(last, int(view.config["lenders"]), int(view.config.get("lenders-per-round", 0))):
        return "it was not drawn in the last round, and only the lenders drawn score its model"
    return "it sent no score of the final model"


def _lender_details(view: RunView, lender: int, unit: dict) -> dict:
    m = view.manifests[lender]
    releases = view.releases(lender)
    final = view.finals.get(lender) or {}
    event = ((releases[-1].get("events") or [{}])[0]) if releases else {}
    finished = view.complete_rounds()
    answers = [
        (a.round, e) for a, e in view.of_lender(lender, L.LENDER_UPDATE, L.LENDER_REFUSAL) if a.finished is not None
    ]
    refusals = [
        {"round": rnd, "limit": e["body"]["limit"], "reason": e["body"]["reason"]}
        for rnd, e in answers
        if e["type"] == L.LENDER_REFUSAL
    ]
    left_out = [{"round": a.round, "reason": e["body"]["reason"]} for a, e in view.of_lender(lender, L.UPDATE_REJECTED)]
    by_round = [
        {
            "round": rnd,
            "epsilon": e["body"].get("epsilon_spent") if e["type"] == L.LENDER_REFUSAL else e["body"].get("epsilon"),
            "declined": e["type"] == L.LENDER_REFUSAL,
        }
        for rnd, e in answers
    ]
    last: dict = next(
        (e["body"] for a, e in view.of_lender(lender, L.LENDER_EVALUATION) if finished and a is finished[-1]), {}
    )
    return {
        "lender": lender,
        "fingerprint": fingerprint(m["public_key"]),
        "records_total": m["records_total"],
        "records_without_consent": m["records_without_consent"],
        "records_used": m["records_used"],
        "train_records": m["train_records"],
        "test_records": m["test_records"],
        "consent_checked": m["consent_checked"],
        "card": m["card"],
        "card_sha256": m["card_sha256"],
        "fields_used": m["fields_used"],
        "fields_refused": m["fields_refused"],
        "overrides": [f for f in m["fields_used"] if f.get("override")],
        "data_commitment": m["data_commitment"],
        "policy": m["policy"],
        # Record level: the lender's own signed figures (its final statement, its last release), not the coordinator's.
        "budget": unit.get("budget"),
        "epsilon": final.get("epsilon", unit.get("epsilon")),
        "epsilon_rdp": final.get("epsilon_rdp", unit.get("epsilon_rdp")),
        "epsilon_prv": final.get("epsilon_prv", unit.get("epsilon_prv")),
        "delta": final.get("delta", unit.get("delta")),
        "noise_multiplier": event.get("noise_multiplier"),
        # gbdt under secure aggregation: what its epsilon rests on, and its epsilon from its own noise alone
        # (the verifier recomputes both from its signed updates and policy)
        "secure_sum": unit.get("secure_sum"),
        "sample_rate": event.get("sample_rate"),
        "steps": sum(int(e.get("steps", 0)) for b in releases for e in b.get("events", [])) if unit else None,
        "clip_norm": event.get("clip_norm"),
        "noise": releases[-1].get("noise") if releases else None,
        "demo": bool(m["policy"].get("demo")),
        "epsilon_by_round": by_round,
        "releases": len(releases),
        "rounds_declined": len(refusals),
        "refusals": refusals,
        "left_out": left_out,
        "bytes_sent": sum(b["bytes_sent"] for b in releases),
        "shapes_sent": releases[0]["shapes"] if releases else {},
        "records_sent": 0,
        "auc": last.get("auc"),
        "ks": last.get("ks"),
        "lifetime_epsilon": (view.finals.get(lender) or {}).get("lifetime_epsilon"),
        "lifetime_runs": (view.finals.get(lender) or {}).get("lifetime_runs"),
        "auc_undefined_reason": _no_score_reason(view, lender, last or None),
    }


def summary_sentences(report: dict) -> list[str]:
    lenders = report["lender_details"]
    n = len(lenders)
    p = report["privacy"]
    out = []
    if p["not_private"]:
        out.append(
            "NOT PRIVATE: this run used seeded, reproducible noise for a test or benchmark; anyone who knows "
            "the run's seed can recompute and subtract it, so the epsilons below describe the mechanism, "
            "not a protection."
        )
    if p["dp"] and p["granularity"] == "record":
        within = [
            d for d in lenders if d["epsilon"] is not None and d["budget"] is not None and d["epsilon"] <= d["budget"]
        ]
        budgets = sorted({d["budget"] for d in lenders if d["budget"] is not None})
        deltas = [d["delta"] for d in lenders if d["delta"] is not None]
        budget_text = (
            f"epsilon {budgets[0]:g}"
            if len(budgets) == 1
            else f"their epsilon budgets ({', '.join(f'{b:g}' for b in budgets)})"
        )
        who = f"All {n} lenders" if len(within) == n else f"{len(within)} of {n} lenders"
        out.append(
            f"{who} stayed within {budget_text} at delta {delta_text(max(deltas))} or less ({p['accountant'].upper()} "
            "accountant): record-level differential privacy protects each lender's training records in the "
            "model updates it sent; the scores and counts it reported lie outside the epsilon (see 'What the "
            "epsilon covers')."
        )
    elif p["dp"]:
        fed = p["federation"] or {}
        out.append(
            f"The federation stayed within epsilon {fed.get('budget', 0):g} at delta {delta_text(fed.get('delta', 0))} for "
            f"each lender as a whole (lender-level differential privacy, with amplification by sampling): spent "
            f"{fed.get('epsilon', 0):.3f} against whoever sees only the released models. The ledger names the "
            f"lenders sampled in each round: against a reader of the ledger the most any lender spent is "
            f"epsilon {fed.get('epsilon_known_sampling_max', 0):.3f}. The coordinator adds this noise and sees "
            f"each lender's clipped update: lender-level DP gives no protection against it."
        )
    else:
        out.append("This run used no differential privacy: the model updates were not protected by noise.")
    demo = [d["lender"] for d in lenders if d["demo"]]
    if demo:
        out.append(
            f"Flagged: {len(demo)} lender(s) ran without a folder of their own (a demo): their data keys came "
            "from the coordinator's request, and their limits are the default ones."
        )
    earlier = [d for d in lenders if (d["lifetime_runs"] or 0) > 1]
    if earlier:
        out.append(
            f"{len(earlier)} lender(s) also spent privacy budget in other runs with the same folder: "
            + "; ".join(
                f"lender {d['lender']}, {d['lifetime_runs']} runs, epsilon {d['lifetime_epsilon']:.3f} over all of them"
                for d in earlier
            )
            + "."
        )
    refused = {f["name"]: f["category"] for d in lenders for f in d["fields_refused"]}
    by_cat: dict[str, int] = {}
    for category in refused.values():
        by_cat[category] = by_cat.get(category, 0) + 1
    detail = ", ".join(f"{v} {k.replace('_', '-')}" for k, v in sorted(by_cat.items()))
    # the categories named, not assumed: a card may refuse identifiers and outcome leaks too, not only the prohibited
    out.append(f"{len(refused)} fields were refused before training" + (f" ({detail})." if detail else "."))
    overrides = sorted({f["name"] for d in lenders for f in d["overrides"]})
    if overrides:
        out.append(
            f"Flagged: {len(overrides)} field(s) whose names mark protected or non-credit data were used as "
            f"credit data on the card's written reason: {', '.join(overrides)}."
        )
    unchecked = [d["lender"] for d in lenders if not d["consent_checked"]]
    if unchecked and len(unchecked) == n:
        out.append(
            "Consent was not checked: the dataset has no consent field (no lender's card names a consent column), "
            "so no record could be left out for lack of consent."
        )
    elif unchecked:
        out.append(
            f"Consent was not checked for {len(unchecked)} of {n} lenders: the dataset has no consent field in "
            f"their card; the others left out "
            f"{sum(d['records_without_consent'] for d in lenders if d['consent_checked']):,} records without consent "
            "before training."
        )
    else:
        out.append(
            f"{sum(d['records_without_consent'] for d in lenders):,} records without consent were left out before "
            "training."
        )
    sent = sum(d["bytes_sent"] for d in lenders)
    if report["model"] == "gbdt" and report.get("gbdt_split_candidates") == "noisy_quantiles":
        out.append(
            f"0 raw records left any lender: the model is gradient-boosted trees. In round 1 every lender sent only "
            f"its count of records per feature and public bin, and in each later round only the gradient and "
            f"hessian sums of its records per leaf of the round's trees, "
            f"{'each with noise of its own' if p['dp'] else 'without noise'} ({sent:,} bytes in all), and summary "
            "scores. The coordinator drew the tree structures among the thresholds the summed counts leave with "
            "records on both sides: post-processing of the counts, whose release is accounted like any other."
        )
    elif report["model"] == "gbdt":
        out.append(
            f"0 raw records left any lender: the model is gradient-boosted trees, and each round every lender sent "
            f"only the gradient and hessian sums of its records per leaf of the round's trees, "
            f"{'with noise of its own' if p['dp'] else 'without noise'} ({sent:,} bytes in all), and summary scores. The tree structures were drawn by the coordinator from "
            "public information only (they cost no privacy)."
        )
    else:
        out.append(
            f"0 raw records left any lender: lenders sent only model parameters ({sent:,} bytes in all) and summary "
            "scores."
        )
    if p["secure_aggregation"] and report["model"] == "gbdt":
        relying = [
            d["lender"]
            for d in report["lender_details"]
            if (d.get("secure_sum") or {}).get("share_noise_multiplier", math.inf) < (d.get("noise_multiplier") or 0)
        ]
        out.append(
            "Secure aggregation was on: each lender sent its noisy leaf sums masked, and the coordinator learned only "
            "their sum. "
            + (
                f"Lenders {', '.join(map(str, relying))} added only a share of the noise, relying on the others' "
                "(the assumption and the epsilon without it are in each lender's details); the others added it all."
                if relying
                else "Every lender still added the full noise itself, so its epsilon holds whoever colludes."
            )
        )
    elif p["secure_aggregation"]:
        out.append(
            "Secure aggregation was on: each lender sent its update masked, and the coordinator learned only "
            "the sum of the lenders' updates, never one lender's."
        )
    else:
        out.append(
            "Secure aggregation was off: the coordinator saw each lender's "
            + (
                "noisy leaf sums: each lender added the full noise itself, so its epsilon holds whoever colludes."
                if report["model"] == "gbdt"
                else "model update."
            )
        )
    if report["utility"]["global_auc"] is not None:
        out.append(
            f"The shared model reached AUC {report['utility']['global_auc']:.3f} on the lenders' own test records."
        )
    out.append(
        f"{report['rounds_completed']} of {report['rounds']} rounds ran"
        + (f"; the run stopped early because {report['stopped_early']}." if report["stopped_early"] else ".")
    )
    out.append(
        f"The final model (hash {str(report['final_model_hash'])[:16]}...) and this report are bound to a "
        f"{report['ledger_entries']}-entry signed ledger (head {report['ledger_head'][:16]}...)."
    )
    return out


def sign_report(report: dict, key: Ed25519PrivateKey) -> dict:
    return {**report, "signature": sign(key, signed_part(report))}


def write_report(run_dir: Path, key: Ed25519PrivateKey, entries: list[dict] | None = None) -> dict:
    """Sign and write the report of the ledger in `run_dir` (`entries`: that ledger, parsed already)."""
    report = sign_report(build_report(read_ledger(run_dir) if entries is None else entries), key)
    write_atomically(run_dir / "report.json", report_bytes(report))
    write_atomically(run_dir / "report.html", render_html(report).encode())
    return report


# ---- HTML ---------------------------------------------------------------------------------------


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1e-2 and value != 0 else f"{value:.{digits}f}"
    return html.escape(str(value))


def _t(value: Any) -> str:
    """Any value as page text, escaped: every value on the page goes through here or html.escape, whoever signed it."""
    return html.escape(f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else str(value))


def delta_text(value: float) -> str:
    """The one way a delta is written, in the summary and on the page: 3 significant digits (4.96e-05)."""
    return f"{value:.2e}"


def _delta(value: Any) -> str:
    return "-" if value is None else html.escape(delta_text(value))


def _eps(value: Any) -> str:
    """An epsilon on the page: 3 decimals, as a reader compares it with a budget."""
    return "-" if value is None else f"{value:.3f}"


def _rate(value: Any) -> str:
    """A sampling rate: 3 significant digits (0.01, 0.00826)."""
    return "-" if value is None else f"{value:.3g}"


def _na(reason: str) -> str:
    return f'<span class="na">n/a: {html.escape(reason)}</span>'


def _times(epsilon: float) -> str:
    """e^epsilon, the most any outcome's probability can be multiplied by one borrower's record, as text.

    In decimal arithmetic, whose exp is correctly rounded: libm's last bit may differ between machines, and the
    verifier re-renders this page byte for byte."""
    factor = Decimal(epsilon).exp()
    if factor >= 1_000_000:
        return "more than a million"
    return f"{factor:,.0f}" if factor >= 100 else f"{factor:.3g}"


def _one_in(delta: float) -> str:
    """1/delta to 2 significant digits, as '1 in 20,000'."""
    return f"1 in {int(float(f'{1 / delta:.2g}')):,}" if delta > 0 else "0"


def _expanded(delta: float) -> str:
    """The delta as written (3 significant digits) with its zeros spelled out: 4.96e-05 as 0.0000496."""
    written = delta_text(delta)
    return f"{float(written):.{max(0, 2 - int(written.split('e')[1]))}f}"


def _date(created: str) -> str:
    """The ledger's 2026-12-01T17:20:24Z (a form the verifier checks) as 2026-12-01 17:20:24 UTC."""
    return html.escape(created.replace("T", " ").replace("Z", " UTC"))


def _chart(report: dict) -> str:
    p = report["privacy"]
    if not (p["dp"] and p["granularity"] == "record"):
        return ""
    series = [
        (str(d["lender"]), [(r["round"], r["epsilon"]) for r in d["epsilon_by_round"] if r["epsilon"] is not None])
        for d in report["lender_details"]
    ]
    budgets = sorted({d["budget"] for d in report["lender_details"] if d["budget"] is not None})
    return epsilon_chart(series, budgets, rounds=int(report["rounds"]))


def guarantee(report: dict) -> dict | None:
    """The one (epsilon, delta) the page states as the guarantee: the enforcing accountant's, the largest over
    lenders at record level (each lender's own is in its row), the federation's at lender level."""
    p = report["privacy"]
    if not p["dp"]:
        return None
    if p["granularity"] == "lender":
        fed = p["federation"] or {}
        return {"epsilon": fed.get("epsilon"), "delta": fed.get("delta"), "budget": fed.get("budget")}
    spent = [d for d in report["lender_details"] if d["epsilon"] is not None]
    if not spent:
        return None
    return {
        "epsilon": max(d["epsilon"] for d in spent),
        "delta": max((d["delta"] for d in spent if d["delta"] is not None), default=None),
        "budget": max((d["budget"] for d in spent if d["budget"] is not None), default=None),
    }


def _other_accountant(accountant: str | None) -> str:
    return "prv" if accountant == "rdp" else "rdp"


def _consent_text(report: dict) -> str:
    lenders = report["lender_details"]
    unchecked = [str(d["lender"]) for d in lenders if not d["consent_checked"]]
    dropped = sum(d["records_without_consent"] for d in lenders if d["consent_checked"])
    if unchecked and len(unchecked) == len(lenders):
        return (
            "<b>not checked</b>: the dataset has no consent field (no lender's card names a consent column), "
            "so no record could be left out for lack of consent"
        )
    if unchecked:
        return (
            f"<b>not checked</b> for {html.escape(lender_names(unchecked))} (the dataset has no consent field in "
            f"their card); checked for the others, which left out {_t(dropped)} records without consent"
        )
    return f"checked by every lender: {_t(dropped)} records without consent were left out before training"


def _facts(report: dict) -> str:
    e = html.escape
    p = report["privacy"]
    cards = "; ".join(
        f"card {e(c['name'])} (SHA-256 <code>{e(c['sha256'][:16])}</code>..., "
        f"{e(lender_names([str(x) for x in c['lenders']], 60))})"
        for c in report["cards"]
    )
    code = e(str(report["code_version"] or "not recorded"))
    flwr = f"Flower (flwr) {e(report['flwr_version'])}" if report.get("flwr_version") else "Flower version not recorded"
    g = guarantee(report)
    if g is None:
        promise = (
            "none: this run used no differential privacy"
            if not p["dp"]
            else "none: no lender released an update, so nothing was spent"
        )
    else:
        who = "each lender as a whole" if p["granularity"] == "lender" else "every borrower's record at every lender"
        promise = (
            f'<span id="guarantee">epsilon {_eps(g["epsilon"])}</span> at delta {_delta(g["delta"])} or less, for '
            f"{who} ({e(str(p['accountant'] or '-')).upper()} accountant, which enforced the budgets"
            + (f"; budget {_fmt(g['budget'])}" if g["budget"] is not None else "")
            + ")"
            + (
                f"; against a reader of the ledger, who sees which lenders were drawn, up to epsilon "
                f"{_eps((p['federation'] or {}).get('epsilon_known_sampling_max'))} for one lender"
                if p["granularity"] == "lender"
                else ""
            )
            + (" <b>NOT PRIVATE</b>: seeded noise" if p["not_private"] else "")
        )
    rounds = f"{_t(report['rounds_completed'])} of {_t(report['rounds'])} rounds"
    return f"""<table id="facts">
<tr><th>Run id</th><td><code>{e(report["run"])}</code></td></tr>
<tr><th>Date</th><td>{_date(report["created"])} (the run finished)</td></tr>
<tr><th>Code version</th><td>{code}; {flwr}</td></tr>
<tr><th>Dataset</th><td><b>{e(str(report["dataset"]))}</b>: {cards or "no lender signed a manifest"}</td></tr>
<tr><th>Federation</th><td>{_t(report["lenders"])} lenders, {rounds}, strategy {e(str(report["strategy"]))}, model {e(str(report["model"]))}</td></tr>
<tr><th>Consent</th><td id="consent">{_consent_text(report)}</td></tr>
<tr><th>Privacy guarantee</th><td>{promise}</td></tr>
</table>"""


def _explain(report: dict) -> str:
    """The plain-language box: what epsilon, delta, the accountants, AUC and KS mean, with this run's values."""
    p = report["privacy"]
    g = guarantee(report)
    lender_level = p["granularity"] == "lender"
    one = "one lender's whole data set" if lender_level else "one borrower's record"
    whom = "that lender's borrowers" if lender_level else "that borrower"
    single = "a single lender" if lender_level else "a single borrower"
    here_eps = (
        f" This run: epsilon {_eps(g['epsilon'])}, so at most {_times(g['epsilon'])} times."
        if g is not None and g["epsilon"] is not None
        else " This run used no differential privacy, so it makes no such promise."
    )
    here_delta = (
        f" This run: {_delta(g['delta'])}, that is {_expanded(g['delta'])}, about {_one_in(g['delta'])}."
        if g is not None and g["delta"]
        else ""
    )
    u = report["utility"]
    auc = (
        f" This model: {u['global_auc']:.3f}, so it ranks the defaulter higher {100 * u['global_auc']:.1f}% of the time."
        if u["global_auc"] is not None
        else " This run: n/a (no lender could score the final model: see each lender's row)."
    )
    ks = f" This model: {u['global_ks']:.3f}." if u["global_ks"] is not None else ""
    enforcing = html.escape(str(p["accountant"] or "rdp")).upper()
    other = _other_accountant(p["accountant"]).upper()
    fed = p["federation"] or {}
    rule = (
        ""
        if lender_level
        else " Each lender keeps it below one over its number of records, so it cannot amount to giving up one "
        "borrower in each lender's data."
    )
    enforcer = "the federation" if lender_level else "the lenders"
    compare = (
        f"epsilon {_eps(fed.get('epsilon_' + other.lower()))} for the federation"
        if lender_level
        else "it is in each lender's details"
    )
    return f"""<section id="explain"><h2>What the numbers mean</h2>
<dl>
<dt>epsilon: how much privacy is lost</dt><dd>Differential privacy promises that anything the run released is almost as
likely with {one} as without it, so nobody can tell much from the release about {whom}. Epsilon bounds the
"almost": no outcome becomes more than e<sup>epsilon</sup> times more likely. At epsilon 1 that factor is at most
{_times(1.0)}; at epsilon 8 it is {_times(8.0)}, which promises little about {single}. Smaller is stronger:
below 1 is strong protection, 1 to 3 is typical of deployed systems, 8 or more is weak.{here_eps}</dd>
<dt>delta: the chance the promise fails</dt><dd>The small probability that the epsilon bound does not hold.{rule}
Deltas are written like 4.96e-05, which means 0.0000496.{here_delta}</dd>
<dt>RDP and PRV: two accountants</dt><dd>Two ways of adding up the privacy spent over many training steps; both
give valid upper bounds. The guarantee on this page is the {enforcing} one: {enforcer} enforced the budgets with
it. The {other} value is for comparison only: {compare}.</dd>
<dt>AUC: how well the model ranks</dt><dd>Pick one borrower who defaulted and one who repaid: AUC is the chance the
model gives the defaulter the higher risk. 0.5 is a coin toss, 1 is perfect.{auc}</dd>
<dt>KS: how well the scores separate</dt><dd>The largest gap, over every score cut-off, between the share of
defaulters and the share of repayers scored below it: 0 means the scores do not separate them, 1 that they separate
them completely.{ks} AUC and KS are measured by each lender on its own test records, outside the epsilon.</dd>
</dl></section>"""


def _parameters(report: dict) -> str:
    """One labelled row per lender: the guarantee epsilon, its budget and the mechanism that produced it."""
    p = report["privacy"]
    if not p["dp"]:
        return (
            '<h2>Privacy parameters per lender</h2>\n<p id="parameters">No differential privacy in this run: no '
            "lender added noise, so there is no epsilon, delta, noise multiplier, sampling rate or clip norm to show."
            "</p>"
        )
    accountant = html.escape(str(p["accountant"] or "-")).upper()
    rows = []
    if p["granularity"] == "lender":
        fed = p["federation"] or {}
        rows.append(
            "<tr><th>the federation (each lender as a whole)</th>"
            f"<td>{_eps(fed.get('epsilon'))}</td><td>{_fmt(fed.get('budget'))}</td><td>{_delta(fed.get('delta'))}</td>"
            f"<td>{_fmt(fed.get('noise_multiplier'))}</td><td>{_rate(fed.get('sample_rate'))} (of lenders, per round)</td>"
            f"<td>{_t(fed.get('steps'))} rounds</td><td>{_fmt(fed.get('clip_norm'))}</td>"
            f"<td>{_score(report['utility']['global_auc'])}</td><td>{_score(report['utility']['global_ks'])}</td></tr>"
        )
    for d in report["lender_details"]:
        cells = _lender_mechanism(report, d)
        auc = _fmt(d["auc"]) if d["auc"] is not None else _na(d["auc_undefined_reason"] or "not scored")
        ks = _fmt(d["ks"]) if d["ks"] is not None else _na(d["auc_undefined_reason"] or "not scored")
        rows.append(
            f'<tr><th><a href="#lender-{_t(d["lender"])}">lender {_t(d["lender"])}</a></th>{cells}'
            f"<td>{auc}</td><td>{ks}</td></tr>"
        )
    lender_level = p["granularity"] == "lender"
    note = (
        "At lender level the coordinator adds the noise to the sum of the lenders' clipped updates: the federation's "
        "row is the mechanism; each lender's epsilon is the one against a reader of the ledger, who knows the rounds "
        "it was drawn in (no amplification by sampling)."
        if lender_level
        else "Each lender trained with DP-SGD on its own records: every step takes each record with the sampling "
        "rate, clips each record's gradient to the clip norm and adds Gaussian noise of standard deviation noise "
        "multiplier x clip norm."
    )
    return f"""<h2>Privacy parameters per lender</h2>
<p>{note} Epsilon is the guarantee ({accountant} accountant); delta as everywhere on this page.</p>
<table id="parameters" class="grid">
<thead><tr><th>lender</th><th>epsilon ({accountant}, the guarantee)</th><th>budget</th><th>delta</th>
<th>noise multiplier</th><th>sampling rate</th><th>DP-SGD steps</th><th>clip norm</th>
<th>AUC</th><th>KS</th></tr></thead>
<tbody>
{chr(10).join(rows)}
</tbody></table>"""


def _score(value: float | None) -> str:
    """The federation's AUC or KS: the test-size-weighted mean of the lenders' scores."""
    return f"{value:.3f} (mean)" if value is not None else _na("no lender could score the final model")


def _lender_mechanism(report: dict, d: dict) -> str:
    """The six privacy cells of a lender's row, each value or the reason it is missing."""
    p = report["privacy"]
    if p["granularity"] == "lender":
        known = ((p["federation"] or {}).get("epsilon_known_sampling") or {}).get(str(d["lender"]))
        same = _na("lender-level DP: the mechanism is the federation's (row above)")
        return f'<td>{_eps(known) if known is not None else _na("not in the ledger")}</td><td colspan="6">{same}</td>'
    missing = "it released no update" if not d["releases"] else "not recorded"
    values = [
        (_eps(d["epsilon"]), d["epsilon"]),
        (_fmt(d["budget"]), d["budget"]),
        (_delta(d["delta"]), d["delta"]),
        (_fmt(d["noise_multiplier"]), d["noise_multiplier"]),
        (_rate(d["sample_rate"]), d["sample_rate"]),
        (_t(d["steps"]), d["steps"]),
        (_fmt(d["clip_norm"]), d["clip_norm"]),
    ]
    out = []
    for index, (text, raw) in enumerate(values):
        if index == 1 and raw is None:
            out.append(f"<td>{_na('no budget set')}</td>")
        else:
            out.append(f"<td>{text}</td>" if raw is not None else f"<td>{_na(missing)}</td>")
    return "".join(out)


def _fields_matrix(report: dict) -> str:
    """Fields x lenders: each field once, with its category and reason, and one column per group of lenders whose
    cards treat every field alike (one column when they all share a card), instead of a list per lender."""
    e = html.escape
    lenders = report["lender_details"]
    if not lenders:
        return ""
    status: dict[int, dict[str, str]] = {}
    about: dict[str, dict] = {}  # field name -> category and reasons, in order of first appearance
    for d in lenders:
        status[d["lender"]] = {}
        for state, fields in (("refused", d["fields_refused"]), ("used", d["fields_used"])):  # refused first
            for f in fields:
                status[d["lender"]][str(f["name"])] = state
                seen = about.setdefault(str(f["name"]), {"categories": [], "notes": []})
                for key, value in (("categories", str(f["category"])), ("notes", _field_note(f))):
                    if value and value not in seen[key]:
                        seen[key].append(value)
    groups: dict[tuple, list[int]] = {}
    for d in lenders:
        groups.setdefault(tuple(sorted(status[d["lender"]].items())), []).append(d["lender"])
    columns = list(groups.values())
    head = "".join(f"<th>{e(lender_names([str(x) for x in c], 40))}</th>" for c in columns)
    rows = []
    for name, info in about.items():
        cells = []
        for column in columns:
            found = status[column[0]].get(name)
            cells.append(f'<td class="{found}">{found}</td>' if found else '<td class="absent">not in its data</td>')
        rows.append(
            f"<tr><th>{e(name)}</th><td>{e(' / '.join(info['categories']))}</td>{''.join(cells)}"
            f"<td>{e('; '.join(info['notes']))}</td></tr>"
        )
    return f"""<h2>Fields used and refused</h2>
<p>Each field of the lenders' data, and what each lender's policy did with it: <b>used</b> for training (credit
data) or <b>refused</b> before training (sensitive, non-credit or identifying data never reaches the model).
Lenders whose cards treat every field alike share one column.</p>
<table id="fields" class="grid">
<thead><tr><th>field</th><th>category</th>{head}<th>reason</th></tr></thead>
<tbody>
{chr(10).join(rows)}
</tbody></table>"""


def _field_note(f: dict) -> str:
    if f.get("override"):
        return f"override: {f['override']}" + (f" ({f['reason']})" if f.get("reason") else "")
    return str(f.get("reason") or "")


def _lender_section(report: dict, d: dict) -> str:
    e = html.escape
    p = report["privacy"]
    shapes = ", ".join(f"{e(k)} {_t(v)}" for k, v in d["shapes_sent"].items())
    refusals = "; ".join(f"round {_t(r['round'])}: {e(r['limit'])} ({e(r['reason'])})" for r in d["refusals"]) or "none"
    left_out = "; ".join(f"round {_t(r['round'])}: {e(str(r['reason']))}" for r in d["left_out"]) or "never"
    auc = _fmt(d["auc"]) if d["auc"] is not None else _na(d["auc_undefined_reason"] or "not scored")
    ks = _fmt(d["ks"]) if d["ks"] is not None else _na(d["auc_undefined_reason"] or "not scored")
    consent = (
        f"{_t(d['records_without_consent'])}"
        if d["consent_checked"]
        else "not checked: the dataset has no consent field (its card names no consent column)"
    )
    other = _other_accountant(p["accountant"])
    no_dp = (
        "no differential privacy in this run"
        if not p["dp"]
        else "lender-level DP: see the federation's row"
        if p["granularity"] == "lender"
        else "it released no update"
    )
    spent = f"{_eps(d['epsilon'])} / {_fmt(d['budget'])}" if d["epsilon"] is not None else _na(no_dp)
    compare = (
        f"{_eps(d['epsilon_' + other])} under {other.upper()} (for comparison; not the guarantee)"
        if d.get("epsilon_" + other) is not None
        else _na(no_dp)
    )
    lifetime = (
        f"{_eps(d['lifetime_epsilon'])} ({_t(d['lifetime_runs'])} run(s) with releases)"
        if d["lifetime_epsilon"] is not None
        else _na("it sent no final statement")
    )
    policy = d["policy"]
    delta_rule = "rule 1/N^1.1" if not policy.get("delta") else _delta(policy.get("delta"))
    title = f"Lender {_t(d['lender'])}: epsilon {spent}, {_t(d['train_records'])} training records"
    return f"""
<section class="lender" id="lender-{_t(d["lender"])}">
<details{" open" if len(report["lender_details"]) <= 5 else ""}><summary><h3>{title} <small>key {e(d["fingerprint"])}</small></h3></summary>
<table>
<tr><th>Records held</th><td>{_t(d["records_total"])}</td></tr>
<tr><th>Records without consent</th><td>{consent}</td></tr>
<tr><th>Records used (training / test)</th><td>{_t(d["records_used"])} ({_t(d["train_records"])} / {_t(d["test_records"])})</td></tr>
<tr><th>Epsilon spent / budget</th><td>{spent}</td></tr>
<tr><th>Epsilon under the other accountant</th><td>{compare}</td></tr>
<tr><th>Noise source</th><td>{e(str(d["noise"])) if d["noise"] else _na(no_dp)}</td></tr>
{_secure_sum_row(d.get("secure_sum"))}<tr><th>Its own limits (policy)</th><td>max epsilon {_fmt(policy.get("max_epsilon"))}, delta {delta_rule}, min noise {_fmt(policy.get("min_noise_multiplier"))}, max clip {_fmt(policy.get("max_clip_norm"))}</td></tr>
<tr><th>Epsilon over every run with its folder</th><td>{lifetime}</td></tr>
<tr><th>Releases / rounds declined</th><td>{_t(d["releases"])} / {_t(d["rounds_declined"])}</td></tr>
<tr><th>Refusals (limit and reason)</th><td>{refusals}</td></tr>
<tr><th>Left out of a round (reason)</th><td>{left_out}</td></tr>
<tr><th>What left this lender</th><td>{_t(d["bytes_sent"])} bytes of {"masked " if p["secure_aggregation"] else ""}model parameters ({shapes or "none"}); {_t(d["records_sent"])} records</td></tr>
<tr><th>Dataset card</th><td>{e(str(d["card"]))} (SHA-256 <code>{e(str(d["card_sha256"]))}</code>)</td></tr>
<tr><th>AUC / KS on its own test records</th><td>{auc} / {ks}</td></tr>
</table>
</details>
</section>"""


def _secure_sum_row(statement: dict | None) -> str:
    """gbdt under secure aggregation: the trust assumption the lender's epsilon rests on, and without it."""
    if not statement:
        return ""
    return (
        f"<tr><th>Its epsilon rests on</th><td>{html.escape(str(statement.get('assumption')))}; from its own noise "
        f"alone (noise multiplier {_fmt(statement.get('share_noise_multiplier'))}): epsilon "
        f"{_fmt(statement.get('epsilon_own_share'))}</td></tr>\n"
    )


def render_html(report: dict) -> str:
    """report.html from report.json alone, deterministically (the verifier re-renders it and compares)."""
    e = html.escape
    p = report["privacy"]
    rows = [_lender_section(report, d) for d in report["lender_details"]]
    summary = "\n".join(f"<li>{e(s)}</li>" for s in report["summary"])
    covers = "".join(f"<li>{e(s)}</li>" for s in report["coverage"]["covers"]) or "<li>nothing: no DP in this run</li>"
    outside = "".join(f"<li>{e(s)}</li>" for s in report["coverage"]["outside"])
    banner = (
        '<p id="not-private"><b>NOT PRIVATE</b>: seeded, reproducible noise (a test or benchmark run).</p>'
        if p["not_private"]
        else ""
    )
    sources = "; ".join(e(s) for s in p["noise_sources"]) or _na(
        "no differential privacy in this run" if not p["dp"] else "no lender released an update"
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'">
<title>fedcredit privacy report {e(report["run"][:12])}</title>
<style>
body {{ font-family: sans-serif; max-width: 62em; margin: 2em auto; padding: 0 1em; color: #222; line-height: 1.45; }}
#summary {{ background: #eef6ee; border: 1px solid #9c9; padding: 0.5em 1.5em; border-radius: 6px; }}
#summary li {{ margin: 0.4em 0; font-size: 1.05em; }}
#explain {{ background: #eef2fa; border: 1px solid #99b; padding: 0.5em 1.5em; border-radius: 6px; margin-top: 1em; }}
#not-private {{ background: #fdd; border: 2px solid #c00; padding: 0.5em 1em; }}
table {{ border-collapse: collapse; width: 100%; margin: 0.5em 0 1.5em; }}
th, td {{ text-align: left; vertical-align: top; border-bottom: 1px solid #ddd; padding: 0.3em 0.5em; }}
th {{ width: 30%; font-weight: 600; }}
table.grid th, table.grid td {{ width: auto; font-size: 0.92em; }}
table.grid td {{ white-space: nowrap; }}
table.grid td .na, table.grid td[colspan] {{ white-space: normal; }}
table.grid thead th {{ vertical-align: bottom; border-bottom: 2px solid #999; }}
td.used {{ background: #e3f2e3; }}
td.refused {{ background: #f8e0e0; font-weight: 600; }}
td.absent, .na {{ color: #666; font-style: italic; }}
details > summary {{ cursor: pointer; }}
details > summary h3 {{ display: inline; font-size: 1.05em; }}
section.lender {{ margin: 0.6em 0; }}
code {{ word-break: break-all; }}
dt {{ font-weight: 600; margin-top: 0.5em; }}
svg {{ max-width: 100%; height: auto; }}
</style></head>
<body>
{banner}
<h1>Privacy report: federated credit model</h1>
{_facts(report)}
<section id="summary"><h2>In short</h2><ul>
{summary}
</ul></section>
{_explain(report)}
<h2>What the epsilon covers</h2>
<p>Covered by the epsilon:</p><ul>{covers}</ul>
<p>Outside it (released as they are, not protected by the noise):</p><ul>{outside}</ul>
<h2>How privacy was protected</h2>
<table>
<tr><th>Differential privacy</th><td>{"on" if p["dp"] else "off"}</td></tr>
<tr><th>Granularity</th><td>{e(str(p["granularity"] or "none"))} level ({e(str(p["neighbouring"] or "no neighbouring relation: no DP"))})</td></tr>
<tr><th>Accountant enforcing budgets</th><td>{e(str(p["accountant"] or "none")).upper()}</td></tr>
<tr><th>Noise source</th><td>{sources}</td></tr>
<tr><th>Secure aggregation</th><td>{"on" if p["secure_aggregation"] else "off"}</td></tr>
</table>
{_chart(report)}
{_parameters(report)}
{_fields_matrix(report)}
<h2>Lenders</h2>
{"".join(rows)}
<h2>Integrity</h2>
<table>
<tr><th>Run id</th><td><code>{e(report["run"])}</code></td></tr>
<tr><th>Final model hash</th><td><code>{e(str(report["final_model_hash"]))}</code></td></tr>
<tr><th>Each round's model</th><td>{e(str(report["aggregation_check"]))}</td></tr>
<tr><th>Ledger head ({_t(report["ledger_entries"])} entries)</th><td><code>{e(report["ledger_head"])}</code></td></tr>
<tr><th>Coordinator key</th><td><code>{e(report["coordinator_fingerprint"])}</code></td></tr>
<tr><th>Coordinator signature</th><td><code>{e(report["signature"])}</code></td></tr>
</table>
<p>Check this report with <code>fedcredit verify RUN_DIR --registry REGISTRY</code>: it rebuilds this page and every
file of the run folder from the signed ledger and recomputes every epsilon with an independent accountant.
Not covered by that check: {", ".join(e(f) for f in report["unverified_files"])} (written after the run by other commands).</p>
</body></html>
"""
