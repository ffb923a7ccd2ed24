"""The privacy report: report.json (signed by the coordinator, bound to the ledger head) and
report.html (one self-contained page, plain language first, plots embedded).

Built from the run folder's own files (config, privacy summary, epsilon and metrics tables,
manifests, ledger), so `fedcredit report RUN_DIR` can re-render the HTML from report.json alone.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import math
import time
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from federation.audit_trail.canonical import canonical
from federation.audit_trail.keys import public_hex, sign
from federation.audit_trail.ledger import LENDER_UPDATE, RUN_FINISHED
from federation.runfolder import write_atomically

FORMAT = "fedcredit-privacy-report/1"


def report_bytes(report: dict) -> bytes:
    """The one accepted serialization of report.json: any other byte sequence fails verification."""
    return (json.dumps(report, indent=2, sort_keys=True, ensure_ascii=True, allow_nan=False) + "\n").encode()


def signed_part(report: dict) -> bytes:
    return canonical({k: v for k, v in report.items() if k != "signature"})


def _finite(value: Any) -> Any:
    """NaN/inf are not JSON: a metric that is undefined (one-class test set) is reported as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def _num(text: str) -> float | None:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def build_report(run_dir: Path, key: Ed25519PrivateKey) -> dict:
    config = json.loads((run_dir / "config.json").read_text())
    privacy = json.loads((run_dir / "privacy.json").read_text())
    with (run_dir / "epsilon.csv").open() as fh:
        eps_rows = list(csv.DictReader(fh))
    with (run_dir / "metrics.csv").open() as fh:
        metric_rows = list(csv.DictReader(fh))
    entries = [json.loads(line) for line in (run_dir / "ledger.jsonl").read_text().splitlines()]
    finished = next(e for e in reversed(entries) if e["type"] == RUN_FINISHED)
    last_round = max((int(r["round"]) for r in metric_rows), default=0)
    units = privacy.get("units", {})

    lenders = []
    for path in sorted((run_dir / "manifests").glob("lender_*.json")):
        m = json.loads(path.read_text())
        lender = m["lender"]
        updates = list({(e["body"]["round"], e["body"]["update_hash"]): e["body"] for e in entries
                        if e["type"] == LENDER_UPDATE and e["body"]["lender"] == lender}.values())  # a resent update once
        mine = [r for r in eps_rows if r["lender"] == str(lender)]
        final = next((r for r in metric_rows if r["lender"] == str(lender) and r["round"] == str(last_round)), {})
        unit = units.get(str(lender), {})
        lenders.append({
            "lender": lender, "records_total": m["records_total"], "records_without_consent": m["records_without_consent"],
            "records_used": m["records_used"], "train_records": m["train_records"], "test_records": m["test_records"],
            "fields_used": m["fields_used"], "fields_refused": m["fields_refused"], "data_hash": m["data_hash"],
            "budget": unit.get("budget"), "epsilon": unit.get("epsilon"), "epsilon_rdp": unit.get("epsilon_rdp"),
            "epsilon_prv": unit.get("epsilon_prv"), "delta": unit.get("delta"),
            "noise_multiplier": unit.get("noise_multiplier"), "sample_rate": unit.get("sample_rate"),
            "steps": unit.get("steps", sum(int(u["events"][0]["steps"]) for u in updates if u["events"])),
            "clip_norm": unit.get("clip_norm", config.get("clip-norm")),
            "epsilon_by_round": [{"round": int(r["round"]), "epsilon": _num(r["epsilon"]), "declined": r["declined"] == "1"}
                                 for r in mine],
            "rounds_trained": len(updates), "rounds_declined": sum(r["declined"] == "1" for r in mine),
            "bytes_sent": sum(u["bytes_sent"] for u in updates), "shapes_sent": updates[0]["shapes"] if updates else {},
            "records_sent": 0, "auc": _num(final.get("auc")), "ks": _num(final.get("ks")),
        })
    glob = next((r for r in metric_rows if r["lender"] == "global" and r["round"] == str(last_round)), {})
    report = {
        "format": FORMAT,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "run": entries[0]["body"]["run"],
        "dataset": config["dataset"], "lenders": config["lenders"], "rounds": config["rounds"],
        "rounds_completed": config["rounds-completed"], "stopped_early": config["stopped-early"],
        "strategy": config["strategy"], "model": config["model"],
        "privacy": {"dp": privacy.get("dp", False), "granularity": privacy.get("granularity"),
                    "accountant": privacy.get("accountant"), "noise_source": privacy.get("noise_source"),
                    "neighbouring": ("add or remove one lender" if privacy.get("granularity") == "lender"
                                     else "add or remove one record") if privacy.get("dp") else None,
                    "federation": units.get("federation"), "secure_aggregation": bool(config.get("secure-aggregation", False))},
        "lender_details": lenders,
        "utility": {"global_auc": _num(glob.get("auc")), "global_ks": _num(glob.get("ks")),
                    "evaluated_on": "each lender's own test records (global: test-size-weighted mean)"},
        "final_model_hash": finished["body"]["model_hash"],
        "ledger_head": entries[-1]["hash"], "ledger_entries": len(entries),
        "coordinator_public_key": public_hex(key),
    }
    report["summary"] = summary_sentences(report)
    report = _finite(report)
    report["signature"] = sign(key, signed_part(report))
    return report


def summary_sentences(report: dict) -> list[str]:
    lenders = report["lender_details"]
    n = len(lenders)
    p = report["privacy"]
    out = []
    if p["dp"] and p["granularity"] == "record":
        within = [d for d in lenders if d["epsilon"] is not None and d["budget"] is not None and d["epsilon"] <= d["budget"]]
        budgets = sorted({d["budget"] for d in lenders})
        deltas = [d["delta"] for d in lenders if d["delta"] is not None]
        budget_text = f"epsilon {budgets[0]:g}" if len(budgets) == 1 else f"their epsilon budgets ({', '.join(f'{b:g}' for b in budgets)})"
        who = f"All {n} lenders" if len(within) == n else f"{len(within)} of {n} lenders"
        out.append(f"{who} stayed within {budget_text} at delta {max(deltas):.1e} or less "
                   f"({p['accountant'].upper()} accountant; every borrower's record was protected by differential privacy).")
    elif p["dp"]:
        fed = p["federation"] or {}
        out.append(f"The federation stayed within epsilon {fed.get('budget', 0):g} at delta {fed.get('delta', 0):.1e} "
                   f"for each lender as a whole (lender-level differential privacy); spent {fed.get('epsilon', 0):.3f}.")
    else:
        out.append("This run used no differential privacy: the model updates were not protected by noise.")
    refused = {f["name"]: f["category"] for d in lenders for f in d["fields_refused"]}
    by_cat: dict[str, int] = {}
    for category in refused.values():
        by_cat[category] = by_cat.get(category, 0) + 1
    detail = ", ".join(f"{v} {k.replace('_', '-')}" for k, v in sorted(by_cat.items()))
    out.append(f"{len(refused)} prohibited or non-credit fields were refused" + (f" ({detail})." if detail else "."))
    out.append(f"{sum(d['records_without_consent'] for d in lenders)} records without consent were left out before training.")
    sent = sum(d["bytes_sent"] for d in lenders)
    out.append(f"0 raw records left any lender: lenders sent only model parameters ({sent:,} bytes in all) and summary scores.")
    if p["secure_aggregation"]:
        out.append("Secure aggregation was on: each lender sent its update masked, and the coordinator learned only "
                   "the sum of the lenders' updates, never one lender's.")
    else:
        out.append("Secure aggregation was off: the coordinator saw each lender's model update.")
    if report["utility"]["global_auc"] is not None:
        out.append(f"The shared model reached AUC {report['utility']['global_auc']:.3f} on the lenders' own test records.")
    out.append(f"{report['rounds_completed']} of {report['rounds']} rounds ran"
               + (f"; the run stopped early because {report['stopped_early']}." if report["stopped_early"] else "."))
    out.append(f"The final model (hash {report['final_model_hash'][:16]}...) and this report are bound to a "
               f"{report['ledger_entries']}-entry signed ledger (head {report['ledger_head'][:16]}...).")
    return out


def write_report(run_dir: Path, key: Ed25519PrivateKey) -> dict:
    report = build_report(run_dir, key)
    write_atomically(run_dir / "report.json", report_bytes(report))
    write_atomically(run_dir / "report.html", render_html(report).encode())
    return report


# ---- HTML ---------------------------------------------------------------------------------------

def _epsilon_plot(report: dict) -> str:
    """Epsilon spent over rounds per lender, with budgets, as an embedded PNG (data URI)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.6))
    for d in report["lender_details"]:
        points = [(p["round"], p["epsilon"]) for p in d["epsilon_by_round"] if p["epsilon"] is not None]
        if points:
            ax.plot(*zip(*points), marker="o", ms=3, label=f"lender {d['lender']}")
    for budget in sorted({d["budget"] for d in report["lender_details"] if d["budget"] is not None}):
        ax.axhline(budget, color="k", ls="--", lw=1)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_xlabel("round")
    ax.set_ylabel("epsilon spent (cumulative)")
    ax.set_title("Privacy spent per lender; dashed: budget")
    if len(report["lender_details"]) <= 12:
        ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1e-2 and value != 0 else f"{value:.{digits}f}"
    return html.escape(str(value))


def render_html(report: dict) -> str:
    e = html.escape
    p = report["privacy"]
    rows = []
    for d in report["lender_details"]:
        used = ", ".join(f"{e(f['name'])} ({e(f['category'])})" for f in d["fields_used"])
        refused = ", ".join(f"{e(f['name'])} ({e(f['category'])}: {e(f['reason'])})" for f in d["fields_refused"])
        shapes = ", ".join(f"{e(k)} {v}" for k, v in d["shapes_sent"].items())
        rows.append(f"""
<section class="lender" id="lender-{d['lender']}">
<h3>Lender {d['lender']}</h3>
<table>
<tr><th>Records held / without consent / used</th><td>{d['records_total']} / {d['records_without_consent']} / {d['records_used']} ({d['train_records']} training, {d['test_records']} test)</td></tr>
<tr><th>Epsilon spent / budget</th><td>{_fmt(d['epsilon'])} / {_fmt(d['budget'])} (RDP {_fmt(d['epsilon_rdp'])}, PRV {_fmt(d['epsilon_prv'])})</td></tr>
<tr><th>Delta</th><td>{_fmt(d['delta'])}</td></tr>
<tr><th>Noise multiplier, sample rate, steps, clip norm</th><td>{_fmt(d['noise_multiplier'])}, {_fmt(d['sample_rate'])}, {_fmt(d['steps'])}, {_fmt(d['clip_norm'])}</td></tr>
<tr><th>Rounds trained / declined (budget)</th><td>{d['rounds_trained']} / {d['rounds_declined']}</td></tr>
<tr><th>What left this lender</th><td>{d['bytes_sent']:,} bytes of {'masked ' if p['secure_aggregation'] else ''}model parameters ({shapes}); {d['records_sent']} records</td></tr>
<tr><th>Fields used</th><td>{used or '-'}</td></tr>
<tr><th>Fields refused</th><td>{refused or '-'}</td></tr>
<tr><th>AUC / KS on its own test records</th><td>{_fmt(d['auc'])} / {_fmt(d['ks'])}</td></tr>
</table>
</section>""")
    summary = "\n".join(f"<li>{e(s)}</li>" for s in report["summary"])
    plot = f'<img alt="epsilon spent per lender over rounds" src="{_epsilon_plot(report)}">' if p["dp"] and p["granularity"] == "record" else ""
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>fedcredit privacy report</title>
<style>
body {{ font-family: sans-serif; max-width: 60em; margin: 2em auto; padding: 0 1em; color: #222; line-height: 1.45; }}
#summary {{ background: #eef6ee; border: 1px solid #9c9; padding: 0.5em 1.5em; border-radius: 6px; }}
#summary li {{ margin: 0.4em 0; font-size: 1.05em; }}
table {{ border-collapse: collapse; width: 100%; margin: 0.5em 0 1.5em; }}
th, td {{ text-align: left; vertical-align: top; border-bottom: 1px solid #ddd; padding: 0.3em 0.5em; }}
th {{ width: 30%; font-weight: 600; }}
code {{ word-break: break-all; }}
</style></head>
<body>
<h1>Privacy report: federated credit model</h1>
<p>Dataset <b>{e(str(report['dataset']))}</b>, {report['lenders']} lenders, strategy {e(str(report['strategy']))}, model {e(str(report['model']))}.</p>
<section id="summary"><h2>In short</h2><ul>
{summary}
</ul></section>
<h2>How privacy was protected</h2>
<table>
<tr><th>Differential privacy</th><td>{'on' if p['dp'] else 'off'}</td></tr>
<tr><th>Granularity</th><td>{e(str(p['granularity'] or '-'))} level ({e(str(p['neighbouring'] or '-'))})</td></tr>
<tr><th>Accountant</th><td>{e(str(p['accountant'] or '-')).upper()} (both RDP and PRV are given per lender)</td></tr>
<tr><th>Noise source</th><td>{e(str(p['noise_source'] or '-'))}</td></tr>
<tr><th>Secure aggregation</th><td>{'on' if p['secure_aggregation'] else 'off'}</td></tr>
</table>
{plot}
<h2>Lenders</h2>
{''.join(rows)}
<h2>Integrity</h2>
<table>
<tr><th>Final model hash</th><td><code>{e(report['final_model_hash'])}</code></td></tr>
<tr><th>Ledger head ({report['ledger_entries']} entries)</th><td><code>{e(report['ledger_head'])}</code></td></tr>
<tr><th>Coordinator public key</th><td><code>{e(report['coordinator_public_key'])}</code></td></tr>
<tr><th>Coordinator signature</th><td><code>{e(report['signature'])}</code></td></tr>
</table>
<p>Check this report with <code>fedcredit verify RUN_DIR</code>: it recomputes every epsilon from the signed ledger.</p>
</body></html>
"""
