"""The verifier against a lying coordinator (issue: a regulator's verification that a lying coordinator cannot fool).

Every forgery here is made by a coordinator that holds its own signing key and re-derives every file of the run
folder (tests/forge.py), and where a test says so, by one colluding lender signing with its own key. Each passed
verification before; each must now fail, and fail on the check that names what was forged.
"""

import json

import pytest
from typer.testing import CliRunner

from fedcredit.cli import app
from fedcredit.runner import run
from federation.audit_trail import ledger as L
from federation.audit_trail.report import build_report
from federation.audit_trail.verify import VerificationFailed, verify_run
from federation.config import RunConfig
from tests.forge import Forger, copy_run, entries_of, restate_privacy

CFG = RunConfig(records=3000, lenders=3, rounds=3, epsilon=3.0, engine="inprocess")


@pytest.fixture(scope="module")
def honest(tmp_path_factory):
    return run(CFG.replace(output_dir=str(tmp_path_factory.mktemp("attacks") / "run")), on_round=lambda s: None)


@pytest.fixture
def folder(honest, tmp_path):
    return copy_run(honest, tmp_path / "run")


def _fails(folder, check, registry=True, contains=""):
    with pytest.raises(VerificationFailed) as info:
        verify_run(folder, f"{folder}-registry.json" if registry else None)
    assert info.value.check == check, str(info.value)
    assert contains in str(info.value), str(info.value)
    return info.value


def _attempt_slices(entries):
    """Index ranges [start, end) of each round attempt (round_started .. round_finished)."""
    out, start = [], None
    for i, e in enumerate(entries):
        if e["type"] == L.ROUND_STARTED:
            start = i
        elif e["type"] == L.ROUND_FINISHED:
            out.append((start, i + 1))
    return out


def _without_last_round(entries):
    start, end = _attempt_slices(entries)[-1]
    kept = entries[:start] + entries[end:]
    kept[-1]["body"]["rounds_completed"] -= 1
    return restate_privacy(kept)


# ---- no trust anchor -----------------------------------------------------------------------------


def test_fresh_keys_for_everyone_and_edited_events_are_not_a_pass(folder):
    entries = entries_of(folder)
    for e in entries:  # lender 0 "spent" a third: its events now claim three times the noise
        if e["type"] == L.LENDER_UPDATE and e["body"]["lender"] == 0:
            e["body"]["events"][0]["noise_multiplier"] *= 3
    from federation.privacy.accountant import epsilon, epsilons
    from federation.privacy.events import PrivacyEvent

    events = []
    for e in entries:
        if e["type"] == L.LENDER_UPDATE and e["body"]["lender"] == 0:
            events.append(PrivacyEvent.from_dict(e["body"]["events"][0]))
            e["body"]["epsilon"] = epsilon(events, e["body"]["delta"])
        if e["type"] == L.LENDER_FINAL and e["body"]["lender"] == 0:
            both = epsilons(events, e["body"]["delta"])
            e["body"].update(
                epsilon=both["rdp"], epsilon_rdp=both["rdp"], epsilon_prv=both["prv"], lifetime_epsilon=both["rdp"]
            )
    Forger(folder).with_fresh_keys([0, 1, 2]).write(restate_privacy(entries))
    result = verify_run(folder)  # consistent with its own keys...
    assert not result.pinned and result.exit_code == 3  # ...which it says: not a pass
    cli = CliRunner().invoke(app, ["verify", str(folder)])
    assert cli.exit_code == 3 and cli.output.startswith("NOT PINNED")
    _fails(folder, "registry", contains="not the one the registry names")


def test_removing_every_trace_of_a_lender_fails_with_or_without_the_registry(folder):
    entries = [e for e in entries_of(folder) if e["body"].get("lender") != 2]
    for e in entries:
        if e["type"] == L.ROUND_STARTED:
            e["body"]["roster"] = [x for x in e["body"]["roster"] if x != 2]
        if e["type"] == L.AGGREGATE:
            e["body"]["lenders"] = [x for x in e["body"]["lenders"] if x != 2]
    entries[-1]["body"]["privacy"]["units"].pop("2")
    Forger(folder).write(entries)
    _fails(folder, "manifests", contains="lender 2 signed no manifest")
    _fails(folder, "manifests", registry=False)


# ---- omissions and replays, with the real coordinator key ------------------------------------------


def test_dropping_the_last_round_fails_against_the_lenders_own_count(folder):
    Forger(folder).write(_without_last_round(entries_of(folder)))
    _fails(folder, "completeness", contains="counts 3 releases")


def test_dropping_the_last_round_and_the_lenders_final_statements_fails(folder):
    entries = [e for e in _without_last_round(entries_of(folder)) if e["type"] != L.LENDER_FINAL]
    Forger(folder).write(entries)
    _fails(folder, "completeness", contains="signed no final statement")


def test_a_release_recorded_as_a_dropout_fails(folder):
    entries = entries_of(folder)
    start, end = _attempt_slices(entries)[1]
    i = next(
        i for i in range(start, end) if entries[i]["type"] == L.LENDER_UPDATE and entries[i]["body"]["lender"] == 0
    )
    entries[i] = {
        **entries[i],
        "type": L.UPDATE_REJECTED,
        "signer": "coordinator",
        "body": {"round": 2, "lender": 0, "reason": "no reply (the lender failed or timed out)"},
    }
    agg = next(e for e in entries[start:end] if e["type"] == L.AGGREGATE)
    agg["body"]["lenders"] = [1, 2]
    Forger(folder).write(restate_privacy(entries))
    _fails(folder, "completeness", contains="release 2 of lender 0 is numbered 3")


def test_a_round_3_attestation_replaced_by_its_round_2_one_fails(folder):
    entries = entries_of(folder)
    updates = [i for i, e in enumerate(entries) if e["type"] == L.LENDER_UPDATE and e["body"]["lender"] == 0]
    second, third = updates[1], updates[2]
    entries[third] = {**entries[third], "body": entries[second]["body"], "signature": entries[second]["signature"]}
    Forger(folder).write(restate_privacy(entries))
    _fails(folder, "round", contains="names round 2 but stands in round 3")


def test_a_lender_the_roster_does_not_name_fails(folder):
    entries = entries_of(folder)
    start, _ = _attempt_slices(entries)[1]
    entries[start]["body"]["roster"] = [0, 1]
    Forger(folder).write(entries)
    _fails(folder, "roster")


def test_an_answer_missing_for_a_rostered_lender_fails(folder):
    entries = entries_of(folder)
    start, end = _attempt_slices(entries)[2]
    entries = [
        e
        for i, e in enumerate(entries)
        if not (start <= i < end and e["type"] == L.LENDER_UPDATE and e["body"]["lender"] == 1)
    ]
    Forger(folder).write(entries)
    _fails(folder, "roster", contains="lender 1 was asked in round 3")


def test_a_stop_reason_the_ledger_does_not_support_fails(folder):
    entries = entries_of(folder)
    entries[-1]["body"]["stop"] = {"kind": "refused", "round": 4}
    entries[-1]["body"]["stopped_early"] = "no lender trained in round 4: every lender asked declined"
    Forger(folder).write(entries)
    _fails(folder, "stop")


def test_an_update_re_signed_with_delta_0_4_fails(folder):
    entries = entries_of(folder)
    i = next(i for i, e in enumerate(entries) if e["type"] == L.LENDER_UPDATE and e["body"]["lender"] == 0)
    entries[i]["body"]["delta"] = 0.4  # lender 0 colludes: epsilon 0.000 "at delta 4.0e-01"
    entries[i]["body"]["epsilon"] = 0.0
    Forger(folder).colluding_with(0).write(entries)
    _fails(folder, "delta")


# ---- the report's content ------------------------------------------------------------------------


def _lie(report, change):
    report = json.loads(json.dumps(report))
    change(report)
    return report


@pytest.mark.parametrize(
    "change",
    [
        lambda r: r["summary"].__setitem__(0, "All 3 lenders stayed within epsilon 1 at delta 1.0e-05 or less."),
        lambda r: [d.__setitem__("budget", 1.0) for d in r["lender_details"]],
        lambda r: r["lender_details"][0]["fields_refused"].append(
            {"name": "wechat", "category": "non_credit", "reason": "x"}
        ),
        lambda r: r["lender_details"][1].__setitem__("records_without_consent", 999),
        lambda r: r["privacy"].__setitem__("noise_sources", ["os.urandom"]),
        lambda r: r["privacy"].__setitem__("secure_aggregation", True),
        lambda r: r["coverage"].__setitem__("outside", []),
        lambda r: r.__setitem__("aggregation_check", "every round's aggregate checked by an auditor"),
    ],
    ids=[
        "summary",
        "budgets",
        "refused field",
        "consent",
        "noise source",
        "secure aggregation",
        "coverage",
        "aggregation check",
    ],
)
def test_a_re_signed_report_that_says_other_than_the_ledger_fails(folder, change):
    Forger(folder).sign_report(_lie(build_report(entries_of(folder)), change))
    _fails(folder, "report")


@pytest.mark.parametrize(
    "edit",
    [
        ("within epsilon 3", "within epsilon 0.5"),
        ("<th>Secure aggregation</th><td>off", "<th>Secure aggregation</th><td>on"),
    ],
)
def test_an_edited_report_page_fails(folder, edit):
    page = folder / "report.html"
    text = page.read_text()
    assert edit[0] in text
    page.write_text(text.replace(edit[0], edit[1]))
    _fails(folder, "report", contains="report.json renders")


def _first_line_changed(data: bytes) -> bytes:
    lines = data.decode().splitlines(keepends=True)
    return "".join(lines[:-1]).encode() if len(lines) > 2 else data + b" "


@pytest.mark.parametrize(
    "name, change",
    [
        ("privacy.json", lambda b: b.replace(b'"epsilon": 2.9', b'"epsilon": 0.9', 1)),
        ("epsilon.csv", _first_line_changed),
        ("privacy_events.jsonl", _first_line_changed),
        (
            "manifests/lender_001.json",
            lambda b: b.replace(b'"records_without_consent": ', b'"records_without_consent": 1', 1),
        ),
        ("metrics.csv", _first_line_changed),
        ("config.json", lambda b: b.replace(b'"run-epsilon": 3.0', b'"run-epsilon": 1.0')),
    ],
)
def test_a_derived_file_rewritten_and_re_hashed_by_the_coordinator_fails(folder, name, change):
    changed = change((folder / name).read_bytes())
    assert changed != (folder / name).read_bytes()
    Forger(folder).write(entries_of(folder), tamper={name: changed})
    _fails(folder, "files", contains="differs from what the ledger derives")


def test_a_file_outside_the_run_folder_fails_and_an_audit_file_is_declared(folder):
    (folder / "audit.json").write_text("{}")
    assert verify_run(folder, f"{folder}-registry.json").unverified == ["audit.json"]
    (folder / "notes.txt").write_text("the coordinator's own claims")
    _fails(folder, "files", contains="not part of a run folder")


def test_an_override_travels_in_the_signed_manifest_verifies_and_is_flagged(tmp_path):
    from federation.card import CARDS_DIR
    from federation.data import synthetic

    frame = synthetic.generate_market(4000, 3, 0).rename(columns={"num_credit_lines": "credit_union_lines"})
    frame.to_csv(tmp_path / "loans.csv", index=False)
    card = (
        (CARDS_DIR / "synthetic.toml")
        .read_text()
        .replace(
            "[columns.num_credit_lines]\n",
            '[columns.credit_union_lines]\noverride = "credit-union accounts, not trade-union membership"\n',
        )
    )
    (tmp_path / "loans.toml").write_text(card)
    out = run(
        RunConfig(
            dataset="csv",
            csv_path=str(tmp_path / "loans.csv"),
            card_path=str(tmp_path / "loans.toml"),
            lenders=3,
            rounds=1,
            engine="inprocess",
            output_dir=str(tmp_path / "run"),
        ),
        on_round=lambda s: None,
    )
    manifest = next(e["body"] for e in entries_of(out) if e["type"] == L.LENDER_MANIFEST)
    used = {f["name"]: f for f in manifest["fields_used"]}
    assert used["credit_union_lines"]["override"].startswith("credit-union accounts")
    verify_run(out, f"{out}-registry.json")
    report = json.loads((out / "report.json").read_text())
    assert any(s.startswith("Flagged: 1 field(s)") and "credit_union_lines" in s for s in report["summary"])
    assert "override: credit-union accounts" in (out / "report.html").read_text()
    # without its written reason the same card is refused before anything runs
    (tmp_path / "bare.toml").write_text(
        card.replace('override = "credit-union accounts, not trade-union membership"\n', "")
    )
    with pytest.raises(Exception, match="union"):
        run(
            RunConfig(
                dataset="csv",
                csv_path=str(tmp_path / "loans.csv"),
                card_path=str(tmp_path / "bare.toml"),
                lenders=3,
                rounds=1,
                engine="inprocess",
                output_dir=str(tmp_path / "bare"),
            ),
            on_round=lambda s: None,
        )
    assert not (tmp_path / "bare").exists() and not (tmp_path / "bare-lenders").exists()


def test_a_coordinator_that_sends_a_lender_a_model_of_its_own_making_is_caught(tmp_path, monkeypatch):
    """The coordinator sends lender 1, in round 2, another model than the ledger's round-1 aggregate (one crafted,
    say, to make its update expose records) and records everything else honestly. The lender signs the hash of the
    model it trained from (attest.update_body `input_model`), and the verifier chains it to the initial model and
    each round's aggregate: the run fails on 'model'. The honest run above verifies."""
    import numpy as np
    from flwr.app import Array, ArrayRecord

    import fedcredit.inprocess_grid as grid_module
    from federation.messages import numpy_arrays

    honest_send = grid_module.InProcessGrid.send_and_receive

    def crafted(self, messages, *, timeout=None):
        messages = list(messages)
        for msg in messages:
            config = msg.content.config_records.get("config", {})
            if (
                msg.metadata.message_type == "train"
                and config.get("server-round") == 2
                and msg.metadata.dst_node_id == 1001
            ):  # lender 1
                arrays = numpy_arrays(msg.content.array_records["arrays"])
                first = next(iter(arrays))
                arrays[first] = arrays[first] + np.float32(0.5)
                msg.content.array_records["arrays"] = ArrayRecord({k: Array(v) for k, v in arrays.items()})
        return honest_send(self, messages, timeout=timeout)

    monkeypatch.setattr(grid_module.InProcessGrid, "send_and_receive", crafted)
    lying = run(CFG.replace(output_dir=str(tmp_path / "lying")), on_round=lambda s: None)
    with pytest.raises(VerificationFailed) as info:
        verify_run(lying, f"{lying}-registry.json")
    assert info.value.check == "model" and "round 2" in str(info.value), str(info.value)
