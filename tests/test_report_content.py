"""What report.html tells a regulator, checked on report dicts made here (no training) and on one small real run:
the run's facts at the top, consent stated truthfully, one epsilon as the guarantee, the plain-language box,
the parameter table, the fields x lenders matrix, a reason for every n/a, and a chart readable at 100 lenders."""

import copy
import html
import importlib.metadata
import re
import xml.etree.ElementTree as ET

import pytest

from federation.audit_trail.report import _one_in, _times, delta_text, guarantee, render_html, summary_sentences

NS = {"svg": "http://www.w3.org/2000/svg"}

USED = [{"name": "months_on_book", "category": "credit_history"}, {"name": "income", "category": "capacity"}]
REFUSED = [
    {"name": "gender", "category": "sensitive", "reason": "gender: sensitive personal data"},
    {"name": "shopping", "category": "non_credit", "reason": "shopping habits: not credit information"},
]


def lender(i: int, rounds: int = 5, accountant: str = "rdp") -> dict:
    rdp = 2.0 + 0.009 * i
    prv = rdp * 0.75
    final = rdp if accountant == "rdp" else prv  # what the enforcing accountant says, round by round too
    return {
        "lender": i,
        "fingerprint": f"{i:04x}:0000",
        "records_total": 5000 + i,
        "records_without_consent": 10 + i,
        "records_used": 4990,
        "train_records": 3992,
        "test_records": 998,
        "consent_checked": True,
        "card": "market",
        "card_sha256": "ab" * 32,
        "fields_used": copy.deepcopy(USED),
        "fields_refused": copy.deepcopy(REFUSED),
        "overrides": [],
        "data_commitment": "cd" * 32,
        "policy": {"max_epsilon": 3.0, "delta": 0.0, "min_noise_multiplier": 0.3, "max_clip_norm": 1.0},
        "budget": 3.0,
        "epsilon": final,
        "epsilon_rdp": rdp,
        "epsilon_prv": prv,
        "delta": 4.957595192603973e-05,
        "noise_multiplier": 0.7038947622914339,
        "sample_rate": 0.00826,
        "steps": 242,
        "clip_norm": 1.0,
        "noise": "ChaCha20 keystream keyed from os.urandom",
        "demo": False,
        "epsilon_by_round": [{"round": r, "epsilon": final * r / rounds, "declined": False} for r in range(1, 6)],
        "releases": rounds,
        "rounds_declined": 0,
        "refusals": [],
        "left_out": [],
        "bytes_sent": 400,
        "shapes_sent": {"linear.weight": [1, 49]},
        "records_sent": 0,
        "auc": 0.75,
        "ks": 0.39,
        "lifetime_epsilon": final,
        "lifetime_runs": 1,
        "auc_undefined_reason": None,
    }


def report_of(lenders: int, accountant: str = "rdp") -> dict:
    report = {
        "format": "fedcredit-privacy-report/3",
        "created": "2026-12-01T17:20:24Z",
        "run": "d5" * 32,
        "code_version": "fedcredit 0.1.0 (git " + "5e" * 20 + ")",
        "flwr_version": "1.42.0",
        "dataset": "synthetic",
        "cards": [{"name": "market", "sha256": "ab" * 32, "lenders": list(range(lenders))}],
        "lenders": lenders,
        "rounds": 5,
        "rounds_completed": 5,
        "stopped_early": "",
        "strategy": "fedavg",
        "model": "logreg",
        "privacy": {
            "dp": True,
            "granularity": "record",
            "accountant": accountant,
            "noise_sources": ["ChaCha20 keystream keyed from os.urandom"],
            "not_private": False,
            "neighbouring": "add or remove one record",
            "federation": None,
            "secure_aggregation": False,
        },
        "coverage": {"covers": ["each lender's training records"], "outside": ["its test scores"]},
        "lender_details": [lender(i, accountant=accountant) for i in range(lenders)],
        "utility": {"global_auc": 0.7496, "global_ks": 0.3918, "evaluated_on": "each lender's own test records"},
        "aggregation_check": "every round's aggregate redone with Flower's fedavg from the updates the lenders signed",
        "final_model_hash": "9f" * 32,
        "model_file_sha256": "a8" * 32,
        "ledger_head": "5d" * 32,
        "ledger_entries": 26,
        "coordinator_public_key": "fb" * 32,
        "coordinator_fingerprint": "9100:3350",
        "unverified_files": ["audit.json"],
        "signature": "37" * 64,
    }
    report["summary"] = summary_sentences(report)
    return report


def visible(fragment: str) -> str:
    """Text as a reader sees it: inline tags dropped, block tags a space, entities decoded, spaces collapsed."""
    inline = re.sub(r"</?(?:b|code|span|sup|small|a)\b[^>]*>", "", fragment)
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", inline)).split())


def text_of(page: str, element_id: str) -> str:
    """The visible text of the element with this id."""
    match = re.search(rf'<(\w+)[^>]*\bid="{element_id}"[^>]*>(.*?)</\1>', page, re.S)
    assert match, f"no element with id {element_id}"
    return visible(match.group(2))


def table_rows(page: str, element_id: str) -> list[list[str]]:
    body = re.search(rf'<table id="{element_id}"[^>]*>(.*?)</table>', page, re.S).group(1)
    return [
        [
            " ".join(html.unescape(re.sub(r"<[^>]+>", " ", c)).split())
            for c in re.findall(r"<t[hd][^>]*>(.*?)</t[hd]>", row, re.S)
        ]
        for row in re.findall(r"<tr>(.*?)</tr>", body, re.S)
    ]


def test_the_run_facts_stand_at_the_top():
    page = render_html(report_of(3))
    facts = text_of(page, "facts")
    assert page.index('id="facts"') < page.index('id="summary"')
    assert "Run id " + "d5" * 32 in facts
    assert "Date 2026-12-01 17:20:24 UTC" in facts
    assert "fedcredit 0.1.0 (git " + "5e" * 20 + "); Flower (flwr) 1.42.0" in facts
    assert "Dataset synthetic: card market (SHA-256 abababababababab..., lenders 0-2)" in facts
    assert "3 lenders, 5 of 5 rounds, strategy fedavg, model logreg" in facts


@pytest.mark.parametrize(
    "unchecked, expected",
    [
        ([], "checked by every lender: 33 records without consent were left out before training"),
        ([0, 1, 2], "not checked: the dataset has no consent field"),
        (
            [1],
            "not checked for lender 1 (the dataset has no consent field in their card); checked for the others, "
            "which left out 22 records without consent",
        ),
    ],
)
def test_consent_is_stated_as_it_was_checked(unchecked, expected):
    report = report_of(3)
    for d in report["lender_details"]:
        if d["lender"] in unchecked:
            d["consent_checked"], d["records_without_consent"] = False, 0  # what a card without the column gives
    report["summary"] = summary_sentences(report)
    page = render_html(report)
    assert expected in text_of(page, "consent")
    if not unchecked:
        assert "33 records without consent were left out before training." in report["summary"]
    if len(unchecked) == 1:
        assert any(s.startswith("Consent was not checked for 1 of 3 lenders") for s in report["summary"])
    if unchecked:
        # never "0 records without consent were left out", which reads as "everyone consented"
        assert not any(s.startswith("0 records without consent") for s in report["summary"])
        assert any(s.startswith("Consent was not checked") for s in report["summary"])
        for d in unchecked:
            assert "not checked: the dataset has no consent field" in text_of(page, f"lender-{d}")


@pytest.mark.parametrize("accountant, other", [("rdp", "prv"), ("prv", "rdp")])
def test_one_epsilon_is_the_guarantee_and_the_other_accountant_is_labelled_in_the_details(accountant, other):
    report = report_of(4, accountant)
    page = render_html(report)
    top = max(d[f"epsilon_{accountant}"] for d in report["lender_details"])
    assert page.count('id="guarantee"') == 1
    assert text_of(page, "guarantee") == f"epsilon {top:.3f}"
    assert guarantee(report)["epsilon"] == top
    assert f"({accountant.upper()} accountant, which enforced the budgets; budget 3.000)" in text_of(page, "facts")
    header = table_rows(page, "parameters")[0]
    assert header[1] == f"epsilon ({accountant.upper()}, the guarantee)"
    assert [row[1] for row in table_rows(page, "parameters")[1:]] == [
        f"{d[f'epsilon_{accountant}']:.3f}" for d in report["lender_details"]
    ]
    for d in report["lender_details"]:
        details = text_of(page, f"lender-{d['lender']}")
        assert f"{d[f'epsilon_{other}']:.3f} under {other.upper()} (for comparison; not the guarantee)" in details
        # the other accountant's value appears nowhere outside the lender's details
        assert page.count(f"{d[f'epsilon_{other}']:.3f}") == 1


def test_the_plain_language_box_explains_epsilon_delta_auc_and_ks_with_this_runs_values():
    box = text_of(render_html(report_of(3)), "explain")
    assert "At epsilon 1 that factor is at most 2.72; at epsilon 8 it is 2,981" in box
    assert "This run: epsilon 2.018, so at most 7.52 times." in box
    assert "This run: 4.96e-05, that is 0.0000496, about 1 in 50,000." not in box  # (a wrong rounding)
    assert "This run: 4.96e-05, that is 0.0000496, about 1 in 20,000." in box
    assert "AUC is the chance the model gives the defaulter the higher risk" in box
    assert "This model: 0.750, so it ranks the defaulter higher 75.0% of the time." in box
    assert "KS: how well the scores separate" in box and "This model: 0.392." in box
    assert _times(1.0) == "2.72" and _times(8.0) == "2,981" and _times(20.0) == "more than a million"
    assert _one_in(4.957595192603973e-05) == "1 in 20,000" and _one_in(1e-5) == "1 in 100,000"


def test_every_delta_on_the_page_and_in_the_summary_has_one_format():
    report = report_of(3)
    page = render_html(report)
    written = re.findall(r"\d+(?:\.\d+)?e[-+]\d+", page)
    assert written and set(written) == {delta_text(4.957595192603973e-05), "4.96e-05"}
    assert "at delta 4.96e-05 or less" in report["summary"][0]


def test_the_parameter_table_has_a_labelled_column_per_parameter_and_a_row_per_lender():
    rows = table_rows(render_html(report_of(3)), "parameters")
    assert rows[0] == [
        "lender",
        "epsilon (RDP, the guarantee)",
        "budget",
        "delta",
        "noise multiplier",
        "sampling rate",
        "DP-SGD steps",
        "clip norm",
        "AUC",
        "KS",
    ]
    assert rows[1] == ["lender 0", "2.000", "3.000", "4.96e-05", "0.704", "0.00826", "242", "1.000", "0.750", "0.390"]
    assert len(rows) == 4


def test_the_fields_matrix_shows_each_field_once_and_splits_lenders_only_where_they_differ():
    report = report_of(4)
    page = render_html(report)
    rows = table_rows(page, "fields")
    assert rows[0] == ["field", "category", "lenders 0-3", "reason"]
    assert rows[1:] == [
        ["gender", "sensitive", "refused", "gender: sensitive personal data"],
        ["shopping", "non_credit", "refused", "shopping habits: not credit information"],
        ["months_on_book", "credit_history", "used", ""],
        ["income", "capacity", "used", ""],
    ]
    assert page.count("gender: sensitive personal data") == 1  # not once per lender
    # lender 2's card lacks the shopping column and uses income under an override: it gets a column of its own
    report["lender_details"][2]["fields_refused"] = REFUSED[:1]
    report["lender_details"][2]["fields_used"][1]["override"] = "a credit bureau field"
    rows = table_rows(render_html(report), "fields")
    assert rows[0] == ["field", "category", "lenders 0, 1, 3", "lender 2", "reason"]
    assert rows[2] == [
        "shopping",
        "non_credit",
        "refused",
        "not in its data",
        "shopping habits: not credit information",
    ]
    assert rows[4] == ["income", "capacity", "used", "used", "override: a credit bureau field"]


def test_every_n_a_says_why():
    report = report_of(3)
    one_class, silent = report["lender_details"][1], report["lender_details"][2]
    one_class.update(
        auc=None, ks=None, auc_undefined_reason="its test records hold one class only, so AUC and KS are undefined"
    )
    silent.update(
        epsilon=None,
        epsilon_rdp=None,
        epsilon_prv=None,
        delta=None,
        noise_multiplier=None,
        sample_rate=None,
        steps=None,
        clip_norm=None,
        noise=None,
        releases=0,
        epsilon_by_round=[],
        lifetime_epsilon=None,
    )
    page = render_html(report)
    reasons = re.findall(r'<span class="na">(.*?)</span>', page)
    assert reasons and all(r.startswith("n/a: ") and len(r) > len("n/a: ") + 10 for r in reasons)
    assert page.count("n/a") == len(reasons)  # no bare n/a anywhere else
    rows = table_rows(page, "parameters")
    assert rows[2][-2:] == ["n/a: its test records hold one class only, so AUC and KS are undefined"] * 2
    assert rows[3][1] == "n/a: it released no update" and rows[3][3] == "n/a: it released no update"
    assert "n/a: it sent no final statement" in text_of(page, "lender-2")


def test_no_dp_says_so_instead_of_a_table_of_n_a():
    report = report_of(2)
    report["privacy"].update(dp=False, granularity=None, accountant=None, noise_sources=[], neighbouring=None)
    for d in report["lender_details"]:
        d.update(epsilon=None, epsilon_rdp=None, epsilon_prv=None, budget=None, delta=None, noise=None)
    report["summary"] = summary_sentences(report)
    page = render_html(report)
    assert 'id="guarantee"' not in page and "none: this run used no differential privacy" in text_of(page, "facts")
    assert "No differential privacy in this run" in text_of(page, "parameters")
    assert "This run used no differential privacy, so it makes no such promise." in text_of(page, "explain")


def test_lender_level_shows_the_federations_mechanism_once_and_each_lenders_ledger_reader_epsilon():
    report = report_of(3)
    known = {"0": 2.528, "1": 0.0, "2": 4.789}
    report["privacy"].update(
        granularity="lender",
        neighbouring="add or remove one lender",
        federation={
            "budget": 3.0,
            "delta": 1e-4,
            "epsilon": 2.992,
            "epsilon_rdp": 2.992,
            "epsilon_prv": 2.2,
            "noise_multiplier": 1.542,
            "sample_rate": 0.5,
            "steps": 3,
            "clip_norm": 1.0,
            "epsilon_known_sampling": known,
            "epsilon_known_sampling_max": 4.789,
        },
    )
    for d in report["lender_details"]:
        d.update(
            epsilon=None,
            epsilon_rdp=None,
            epsilon_prv=None,
            budget=None,
            noise_multiplier=None,
            sample_rate=None,
            steps=None,
            clip_norm=None,
            noise=None,
            epsilon_by_round=[],
            lifetime_epsilon=None,
        )
    report["summary"] = summary_sentences(report)
    page = render_html(report)
    assert text_of(page, "guarantee") == "epsilon 2.992"
    assert "against a reader of the ledger, who sees which lenders were drawn, up to epsilon 4.789" in text_of(
        page, "facts"
    )
    rows = table_rows(page, "parameters")
    assert rows[1] == [
        "the federation (each lender as a whole)",
        "2.992",
        "3.000",
        "1.00e-04",
        "1.542",
        "0.5 (of lenders, per round)",
        "3 rounds",
        "1.000",
        "0.750 (mean)",
        "0.392 (mean)",
    ]
    for row, lender_id in zip(rows[2:], "012", strict=True):
        assert row == [
            f"lender {lender_id}",
            f"{known[lender_id]:.3f}",
            "n/a: lender-level DP: the mechanism is the federation's (row above)",
            "0.750",
            "0.390",
        ]
    assert page.count('colspan="6"') == 3  # one cell spanning the six mechanism columns: the rows stay aligned
    assert "The PRV value is for comparison only: epsilon 2.200 for the federation." in text_of(page, "explain")
    assert "that lender's borrowers" in text_of(page, "explain")


def test_a_hundred_lenders_give_a_readable_chart_and_a_table_row_each():
    report = report_of(100)
    page = render_html(report)
    svg = ET.fromstring(re.search(r"<svg.*?</svg>", page, re.S).group(0))
    assert len(svg.findall(".//svg:polyline", NS)) == 2  # the median and the highest lender, not 100 lines
    assert svg.find(".//svg:polygon[@class='band']", NS) is not None
    legend = [t.text for t in svg.find(".//svg:g[@class='legend']", NS).iter(f"{{{NS['svg']}}}text")]
    assert legend == ["range over the 100 lenders (lowest to highest)", "median lender", "highest: lender 99", "budget"]
    assert next(t.text for t in svg.iter(f"{{{NS['svg']}}}text") if t.get("class") == "ytick") == "0"
    assert len(table_rows(page, "parameters")) == 101
    assert table_rows(page, "fields")[0] == ["field", "category", "lenders 0-99", "reason"]
    assert page.count("<details>") == 100  # each lender's details folded: one click away, not 100 screens
    assert len(page) < 400_000


def test_hostile_strings_signed_by_a_lender_or_the_coordinator_are_shown_as_text():
    evil = '<script>alert(1)</script><img src=x onerror=alert(2)>"'
    report = report_of(2)
    report["code_version"] = evil
    report["flwr_version"] = evil
    report["dataset"] = evil
    report["cards"][0]["name"] = evil
    d = report["lender_details"][0]
    d["card"] = evil
    d["fields_used"][0]["name"] = evil
    d["fields_refused"][0]["reason"] = evil
    d["fields_used"][1]["override"] = evil
    d["left_out"] = [{"round": 1, "reason": evil}]
    d["refusals"] = [{"round": 2, "limit": evil, "reason": evil}]
    d["auc"], d["auc_undefined_reason"] = None, evil
    report["summary"] = summary_sentences(report)
    page = render_html(report)
    assert (
        "<script" not in page and "<img" not in page and "onerror=alert" not in page.replace("onerror=alert(2)&gt;", "")
    )
    assert html.escape(evil) in page


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    from fedcredit.runner import run
    from federation.config import RunConfig

    out = tmp_path_factory.mktemp("content") / "run"
    return run(RunConfig(records=1500, lenders=3, rounds=2, epsilon=2.0, output_dir=str(out)), on_round=lambda s: None)


def test_a_real_run_records_the_flower_version_and_the_page_shows_it(small_run):
    import json

    entries = [json.loads(line) for line in (small_run / "ledger.jsonl").read_text().splitlines()]
    flwr = importlib.metadata.version("flwr")
    assert entries[0]["body"]["flwr_version"] == flwr
    report = json.loads((small_run / "report.json").read_text())
    assert report["flwr_version"] == flwr and report["cards"][0]["lenders"] == [0, 1, 2]
    page = (small_run / "report.html").read_text()
    assert f"Flower (flwr) {flwr}" in text_of(page, "facts") and report["run"] in text_of(page, "facts")


def test_the_real_run_verifies_against_its_registry(small_run):
    from federation.audit_trail.verify import verify_run

    assert verify_run(small_run, f"{small_run}-registry.json").exit_code == 0  # the page re-renders byte for byte


def test_free_text_in_the_flower_version_fails_verification(small_run, tmp_path):
    import shutil

    from federation.audit_trail.verify import VerificationFailed, verify_run
    from tests.forge import Forger, entries_of

    folder = tmp_path / "run"
    shutil.copytree(small_run, folder)
    for suffix in ("-keys", "-lenders"):
        shutil.copytree(f"{small_run}{suffix}", f"{folder}{suffix}")
    entries = entries_of(folder)
    entries[0]["body"]["flwr_version"] = "1.42.0 (certified by the regulator)"
    Forger(folder).write(entries)
    with pytest.raises(VerificationFailed) as info:
        verify_run(folder, f"{small_run}-registry.json")
    assert info.value.check == "format" and "the Flower version is a release number" in str(info.value)
