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
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from federation.audit_trail import ledger as L
from federation.audit_trail.canonical import canonical
from federation.audit_trail.derive import UNVERIFIED_FILES
from federation.audit_trail.keys import sign
from federation.audit_trail.run_view import RunView, global_scores
from federation.audit_trail.svg_chart import epsilon_chart
from federation.registry import fingerprint
from federation.runfolder import write_atomically

FORMAT = "fedcredit-privacy-report/2"

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
        "dataset": cfg["dataset"],
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
        "final_model_hash": finish.get("model_hash"),
        "model_file_sha256": finish.get("model_file_sha256"),
        "ledger_head": finished_entry["hash"],
        "ledger_entries": len(entries),
        "coordinator_public_key": view.started["coordinator_public_key"],
        "coordinator_fingerprint": fingerprint(view.started["coordinator_public_key"]),
        "unverified_files": list(UNVERIFIED_FILES),
    }
    report["summary"] = summary_sentences(report)
    return report


def _lender_details(view: RunView, lender: int, unit: dict) -> dict:
    m = view.manifests[lender]
    releases = view.releases(lender)
    final = view.finals.get(lender) or {}
    event = ((releases[-1].get("events") or [{}])[0]) if releases else {}
    finished = view.complete_rounds()
    answers = [
        (a.round, e)
        for a in finished
        for e in a.entries
        if e["type"] in (L.LENDER_UPDATE, L.LENDER_REFUSAL) and e["body"].get("lender") == lender
    ]
    refusals = [
        {"round": rnd, "limit": e["body"]["limit"], "reason": e["body"]["reason"]}
        for rnd, e in answers
        if e["type"] == L.LENDER_REFUSAL
    ]
    left_out = [
        {"round": a.round, "reason": e["body"]["reason"]}
        for a in view.attempts
        for e in a.of_type(L.UPDATE_REJECTED)
        if e["body"].get("lender") == lender
    ]
    by_round = [
        {
            "round": rnd,
            "epsilon": e["body"].get("epsilon_spent") if e["type"] == L.LENDER_REFUSAL else e["body"].get("epsilon"),
            "declined": e["type"] == L.LENDER_REFUSAL,
        }
        for rnd, e in answers
    ]
    last: dict = next(
        (
            e["body"]
            for e in (finished[-1].of_type(L.LENDER_EVALUATION) if finished else [])
            if e["body"]["lender"] == lender
        ),
        {},
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
        "auc_undefined_reason": (
            "its test records hold one class only, so AUC and KS are undefined"
            if last and last.get("auc") is None
            else None
        ),
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
            f"{who} stayed within {budget_text} at delta {max(deltas):.1e} or less ({p['accountant'].upper()} "
            "accountant): record-level differential privacy protects each lender's training records in the "
            "model updates it sent; the scores and counts it reported lie outside the epsilon (see 'What the "
            "epsilon covers')."
        )
    elif p["dp"]:
        fed = p["federation"] or {}
        out.append(
            f"The federation stayed within epsilon {fed.get('budget', 0):g} at delta {fed.get('delta', 0):.1e} for "
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
    out.append(f"{len(refused)} prohibited or non-credit fields were refused" + (f" ({detail})." if detail else "."))
    overrides = sorted({f["name"] for d in lenders for f in d["overrides"]})
    if overrides:
        out.append(
            f"Flagged: {len(overrides)} field(s) whose names mark protected or non-credit data were used as "
            f"credit data on the card's written reason: {', '.join(overrides)}."
        )
    unchecked = [d["lender"] for d in lenders if not d["consent_checked"]]
    if unchecked:
        out.append(
            f"Consent was not checked for {len(unchecked)} of {n} lenders: their dataset card has no consent "
            "column (the card declares the data public)."
        )
    else:
        out.append(
            f"{sum(d['records_without_consent'] for d in lenders)} records without consent were left out before "
            "training."
        )
    sent = sum(d["bytes_sent"] for d in lenders)
    if report["model"] == "gbdt":
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
    if p["secure_aggregation"]:
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


def write_report(run_dir: Path, key: Ed25519PrivateKey) -> dict:
    report = sign_report(build_report(read_ledger(run_dir)), key)
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


def _delta(value: Any) -> str:
    return "-" if value is None else f"{value:.1e}"


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


def _fields(fields: list[dict]) -> str:
    e = html.escape
    return (
        ", ".join(
            f"{e(f['name'])} ({e(f['category'])}"
            + (f"; override: {e(f['override'])}" if f.get("override") else "")
            + (f": {e(f['reason'])}" if f.get("reason") else "")
            + ")"
            for f in fields
        )
        or "-"
    )


def render_html(report: dict) -> str:
    """report.html from report.json alone, deterministically (the verifier re-renders it and compares)."""
    e = html.escape
    p = report["privacy"]
    fields_seen: dict[tuple[str, str], int] = {}  # identical field lists are shown once, then referred to
    rows = []
    for d in report["lender_details"]:
        used, refused = _fields(d["fields_used"]), _fields(d["fields_refused"])
        first = fields_seen.setdefault((used, refused), d["lender"])
        shapes = ", ".join(f"{e(k)} {_t(v)}" for k, v in d["shapes_sent"].items())
        refusals = (
            "; ".join(f"round {_t(r['round'])}: {e(r['limit'])} ({e(r['reason'])})" for r in d["refusals"]) or "-"
        )
        auc = _fmt(d["auc"]) if d["auc"] is not None else f"n/a: {e(d['auc_undefined_reason'] or 'not evaluated')}"
        field_rows = (
            f"<tr><th>Fields used / refused</th><td>as lender {_t(first)}</td></tr>"
            if first != d["lender"]
            else f"<tr><th>Fields used</th><td>{used}</td></tr>\n<tr><th>Fields refused</th><td>{refused}</td></tr>"
        )
        consent = (
            f"{_t(d['records_without_consent'])}"
            if d["consent_checked"]
            else "not checked (the card has no consent column: it declares the data public)"
        )
        rows.append(f"""
<section class="lender" id="lender-{_t(d["lender"])}">
<h3>Lender {_t(d["lender"])} <small>key {e(d["fingerprint"])}</small></h3>
<table>
<tr><th>Records held</th><td>{_t(d["records_total"])}</td></tr>
<tr><th>Records without consent</th><td>{consent}</td></tr>
<tr><th>Records used (training / test)</th><td>{_t(d["records_used"])} ({_t(d["train_records"])} / {_t(d["test_records"])})</td></tr>
<tr><th>Epsilon spent / budget</th><td>{_fmt(d["epsilon"])} / {_fmt(d["budget"])}</td></tr>
<tr><th>Epsilon by accountant</th><td>RDP {_fmt(d["epsilon_rdp"])}, PRV {_fmt(d["epsilon_prv"])} (the first is the one enforced when the run's accountant is RDP)</td></tr>
<tr><th>Delta</th><td>{_delta(d["delta"])}</td></tr>
<tr><th>Noise multiplier</th><td>{_fmt(d["noise_multiplier"])}</td></tr>
<tr><th>Sampling rate per step</th><td>{_fmt(d["sample_rate"])}</td></tr>
<tr><th>DP-SGD steps</th><td>{_fmt(d["steps"])}</td></tr>
<tr><th>Clip norm</th><td>{_fmt(d["clip_norm"])}</td></tr>
<tr><th>Noise source</th><td>{e(str(d["noise"] or "-"))}</td></tr>
<tr><th>Its own limits (policy)</th><td>max epsilon {_fmt(d["policy"].get("max_epsilon"))}, delta {"rule 1/N^1.1" if not d["policy"].get("delta") else _delta(d["policy"].get("delta"))}, min noise {_fmt(d["policy"].get("min_noise_multiplier"))}, max clip {_fmt(d["policy"].get("max_clip_norm"))}</td></tr>
<tr><th>Epsilon over every run with its folder</th><td>{_fmt(d["lifetime_epsilon"])} ({d["lifetime_runs"]} run(s) with releases)</td></tr>
<tr><th>Releases / rounds declined</th><td>{_t(d["releases"])} / {_t(d["rounds_declined"])}</td></tr>
<tr><th>Refusals (limit and reason)</th><td>{refusals}</td></tr>
<tr><th>What left this lender</th><td>{_t(d["bytes_sent"])} bytes of {"masked " if p["secure_aggregation"] else ""}model parameters ({shapes}); {_t(d["records_sent"])} records</td></tr>
{field_rows}
<tr><th>AUC / KS on its own test records</th><td>{auc} / {_fmt(d["ks"])}</td></tr>
</table>
</section>""")
    summary = "\n".join(f"<li>{e(s)}</li>" for s in report["summary"])
    covers = "".join(f"<li>{e(s)}</li>" for s in report["coverage"]["covers"]) or "<li>nothing: no DP in this run</li>"
    outside = "".join(f"<li>{e(s)}</li>" for s in report["coverage"]["outside"])
    banner = (
        '<p id="not-private"><b>NOT PRIVATE</b>: seeded, reproducible noise (a test or benchmark run).</p>'
        if p["not_private"]
        else ""
    )
    sources = "; ".join(e(s) for s in p["noise_sources"]) or "-"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'">
<title>fedcredit privacy report {e(report["run"][:12])}</title>
<style>
body {{ font-family: sans-serif; max-width: 60em; margin: 2em auto; padding: 0 1em; color: #222; line-height: 1.45; }}
#summary {{ background: #eef6ee; border: 1px solid #9c9; padding: 0.5em 1.5em; border-radius: 6px; }}
#summary li {{ margin: 0.4em 0; font-size: 1.05em; }}
#not-private {{ background: #fdd; border: 2px solid #c00; padding: 0.5em 1em; }}
table {{ border-collapse: collapse; width: 100%; margin: 0.5em 0 1.5em; }}
th, td {{ text-align: left; vertical-align: top; border-bottom: 1px solid #ddd; padding: 0.3em 0.5em; }}
th {{ width: 30%; font-weight: 600; }}
code {{ word-break: break-all; }}
dt {{ font-weight: 600; margin-top: 0.4em; }}
svg {{ max-width: 100%; height: auto; }}
</style></head>
<body>
{banner}
<h1>Privacy report: federated credit model</h1>
<p>Run <code>{e(report["run"])}</code>, finished {e(report["created"])}, {e(str(report["code_version"]))}.
Dataset <b>{e(str(report["dataset"]))}</b>, {_t(report["lenders"])} lenders, strategy {e(str(report["strategy"]))}, model {e(str(report["model"]))}.</p>
<section id="summary"><h2>In short</h2><ul>
{summary}
</ul></section>
<h2>What the epsilon covers</h2>
<p>Covered by the epsilon:</p><ul>{covers}</ul>
<p>Outside it (released as they are, not protected by the noise):</p><ul>{outside}</ul>
<h2>How to read the numbers</h2>
<dl>
<dt>epsilon</dt><dd>How much one borrower's record (one lender's data, at lender level) can change what the coordinator
sees: smaller is stronger. Below 1 is strong, 1 to 3 is typical of deployed systems, 8 or more is weak.</dd>
<dt>delta</dt><dd>The small probability that the epsilon guarantee does not hold; it must be far below one over the
number of records (written here as, for example, 2.3e-04 = 0.00023).</dd>
<dt>RDP and PRV</dt><dd>Two ways of adding up the privacy spent over many steps. Both are valid upper bounds; the
run's accountant is the one that enforced the budgets ({e(str(p["accountant"] or "-")).upper()}).</dd>
<dt>AUC and KS</dt><dd>How well the model ranks borrowers who defaulted above those who did not (AUC: 0.5 is chance,
1 is perfect); KS is the largest gap between the two groups' score distributions.</dd>
</dl>
<h2>How privacy was protected</h2>
<table>
<tr><th>Differential privacy</th><td>{"on" if p["dp"] else "off"}</td></tr>
<tr><th>Granularity</th><td>{e(str(p["granularity"] or "-"))} level ({e(str(p["neighbouring"] or "-"))})</td></tr>
<tr><th>Accountant enforcing budgets</th><td>{e(str(p["accountant"] or "-")).upper()}</td></tr>
<tr><th>Noise source</th><td>{sources}</td></tr>
<tr><th>Secure aggregation</th><td>{"on" if p["secure_aggregation"] else "off"}</td></tr>
</table>
{_chart(report)}
<h2>Lenders</h2>
{"".join(rows)}
<h2>Integrity</h2>
<table>
<tr><th>Run id</th><td><code>{e(report["run"])}</code></td></tr>
<tr><th>Final model hash</th><td><code>{e(str(report["final_model_hash"]))}</code></td></tr>
<tr><th>Ledger head ({_t(report["ledger_entries"])} entries)</th><td><code>{e(report["ledger_head"])}</code></td></tr>
<tr><th>Coordinator key</th><td><code>{e(report["coordinator_fingerprint"])}</code></td></tr>
<tr><th>Coordinator signature</th><td><code>{e(report["signature"])}</code></td></tr>
</table>
<p>Check this report with <code>fedcredit verify RUN_DIR --registry REGISTRY</code>: it rebuilds this page and every
file of the run folder from the signed ledger and recomputes every epsilon with an independent accountant.
Not covered by that check: {", ".join(e(f) for f in report["unverified_files"])} (written after the run by other commands).</p>
</body></html>
"""
