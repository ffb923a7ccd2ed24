"""The red team's attacks that worked (redteam/a1..a10 on the red-team branch), replayed against the fixed code.

Each test re-runs the attack, trimmed to what it needs, and asserts that it now fails for the right reason: the
lender's refusal and its limit, the error the lender raises, or the verifier check that names what was forged.
Where the attack is a forgery of a run folder, the forger is tests/forge.py (the coordinator's own key, and where
the attack says so one colluding lender's); where it is a coordinator driving a lender, tests/lender_kit.py.
"""

from __future__ import annotations

import dataclasses
import html
import json
import os
import re
import shutil
import subprocess
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from federation.audit_trail import ledger as L
from federation.audit_trail.report import build_report
from federation.audit_trail.verify import VerificationFailed, verify_run
from federation.config import RunConfig
from tests.forge import Forger, copy_run, entries_of, restate_privacy

# One honest run serves most forgeries: lender 0 wrote a stricter clip limit than the coordinator asks, so it refuses
# every round (signed refusals, a6); lenders 1 and 2 train until their budgets stop them and in round 4 every lender
# declines (a proven stop, a10).
CFG = RunConfig(records=3000, lenders=3, rounds=8, epsilon=2.0, noise_multiplier=1.5, engine="inprocess")


def _run(out: Path, cfg: RunConfig, lender_policy: dict | None = None) -> Path:
    """A finished honest run in `out`, as fedcredit.runner.run makes it, with lender policies changed first."""
    from clients.home import LenderHome
    from fedcredit.runner import Parties, _run_engine, flower_environment, set_up_parties, validate

    flower_environment()
    cfg = cfg.replace(output_dir=str(out.resolve()))
    cfg = cfg.replace(card_sha256=validate(cfg).card_sha256)
    parties = Parties(out.resolve())
    set_up_parties(cfg, parties)
    for lender, changes in (lender_policy or {}).items():
        home = LenderHome(parties.lender(lender))
        dataclasses.replace(home.policy, **changes).write(home.folder)
    _run_engine(cfg, parties, lambda s: None, False)
    return out.resolve()


def _copy(run_dir: Path, tmp_path: Path) -> Path:
    return copy_run(run_dir, tmp_path / "run")


@pytest.fixture(scope="module")
def honest(tmp_path_factory):
    return _run(tmp_path_factory.mktemp("redteam") / "run", CFG, {0: {"max_clip_norm": 0.5}})


@pytest.fixture
def folder(honest, tmp_path):
    return _copy(honest, tmp_path)


def _registry(folder: Path) -> str:
    return f"{folder}-registry.json"


def _fails(folder, check, contains="", registry=None):
    with pytest.raises(VerificationFailed) as info:
        verify_run(folder, registry or _registry(folder))
    assert info.value.check == check, str(info.value)
    assert contains in str(info.value), str(info.value)
    return info.value


def test_the_shared_honest_run_verifies_and_holds_what_the_attacks_need(folder):
    assert verify_run(folder, _registry(folder)).exit_code == 0
    entries = entries_of(folder)
    refusals = [e["body"] for e in entries if e["type"] == L.LENDER_REFUSAL]
    assert {b["round"] for b in refusals if b["lender"] == 0 and b["limit"] == "max_clip_norm"} == {1, 2, 3, 4}
    assert {e["body"]["lender"] for e in entries if e["type"] == L.LENDER_UPDATE} == {1, 2}
    assert entries[-1]["body"]["stop"]["kind"] == "refused" and entries[-1]["body"]["rounds_completed"] == 3
    assert any(e["type"] == L.LENDER_EVALUATION for e in entries)


# ---- a1: the NaN oracle ----------------------------------------------------------------------------

FLT_MAX = float(np.finfo(np.float32).max)
HALF_ULP = 2.0**103  # FLT_MAX + x rounds to +inf in float32 iff x >= 2^103
A1_HONEST = RunConfig(records=3000, lenders=3, rounds=3, epsilon=3.0, engine="inprocess")
# The coordinator's request: an MLP, enormous noise (above the floor, so almost free), q = 1, one step a round.
A1_ATTACK = A1_HONEST.replace(model="mlp", hidden=4, noise_multiplier=1e6, batch_size=10**6, local_epochs=1, rounds=200)


def _probe_model(n_features: int, j: int, t: float) -> torch.nn.Module:
    """The red team's probe: NaN in the forward pass exactly for records with x_j >= t (t > 0)."""
    from federation.model import build_model

    model = build_model("mlp", n_features, A1_ATTACK.hidden)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.hidden.weight[0, j] = HALF_ULP / t  # pre = FLT_MAX + (2^103/t) x_j -> +inf iff x_j >= t
        model.hidden.bias[0] = FLT_MAX
        model.out.weight[0, 0] = 0.0  # 0 * inf = NaN; 0 * finite = 0
    return model


@pytest.fixture(scope="module")
def a1_lender(tmp_path_factory):
    from clients.session import _records
    from tests.lender_kit import make_lender

    context, home = make_lender(tmp_path_factory.mktemp("a1") / "lender_000", A1_HONEST, 0)
    data = _records(str(home.folder), home.policy.data_config(), 0, "")
    return context, home, data, data.features.index("monthly_income")


def _nan_releases(x, y, model_for, count: int, per_sample: str = "auto") -> int:
    from federation.privacy.noise import SecureRandomness
    from federation.training import DPSettings, train_local

    nan = 0
    for _ in range(count):
        model = model_for()
        train_local(
            model,
            x,
            y,
            epochs=1,
            batch_size=10**6,
            learning_rate=0.5,
            seed=0,
            dp=DPSettings(1e6, 1.0, SecureRandomness(), per_sample=per_sample),
        )
        nan += not all(torch.isfinite(p).all() for p in model.parameters())
    return nan


@pytest.mark.parametrize("per_sample", ["closed-form", "opacus"])
def test_a1_neighbouring_datasets_give_the_same_finite_answer_to_the_nan_probe(a1_lender, monkeypatch, per_sample):
    import federation.fast_dp_sgd as fast_dp_sgd
    import federation.training as training

    _, _, data, j = a1_lender
    x, y = data.x_train, data.y_train
    keep = np.ones(len(x), bool)
    keep[int(np.argmax(x[:, j]))] = False  # D' = D without the record at the maximum
    top, second = float(x[:, j].max()), float(x[keep, j].max())
    assert top > second > 0

    def probe():
        return _probe_model(len(data.features), j, (top + second) / 2)

    n = 5
    assert _nan_releases(x, y, probe, n, per_sample) == 0  # D: 0 of 5 releases NaN
    assert _nan_releases(x[keep], y[keep], probe, n, per_sample) == 0  # D': 0 of 5
    # The probe is a real one: without the zeroing of non-finite per-example gradients (on either DP-SGD path),
    # D answers NaN, D' does not.
    if per_sample == "opacus":
        monkeypatch.setattr(training, "zero_non_finite_examples", lambda parameters: None)
    else:
        monkeypatch.setattr(
            fast_dp_sgd, "non_finite_examples", lambda layers, norm_sq: torch.zeros_like(norm_sq, dtype=torch.bool)
        )
    assert _nan_releases(x, y, probe, 1, per_sample) == 1
    assert _nan_releases(x[keep], y[keep], probe, 1, per_sample) == 0


def test_a1_the_lender_refuses_the_crafted_model_with_limit_model_and_releases_nothing(a1_lender):
    from clients.app import train as lender_train
    from federation.messages import ARRAYS, ATTESTATION, METRICS
    from tests.lender_kit import message, spent

    context, home, data, j = a1_lender
    probe = _probe_model(len(data.features), j, float(data.x_train[:, j].max()) / 2)
    reply = lender_train(message(A1_ATTACK, 1, model=probe), context)
    assert ARRAYS not in reply.content and dict(reply.content[METRICS])["declined"] == 1
    body = json.loads(reply.content[ATTESTATION]["body"])
    assert body["type"] == L.LENDER_REFUSAL and body["limit"] == "model", body
    assert "magnitude 3.4e+38" in body["reason"]
    account = spent(home, A1_ATTACK)
    assert account["releases"] == 0 and account["events"] == [] and list(account["refused"].values()) == ["model"]
    # A NaN weight is refused the same way, in any array (here the last one, which Python's max() used to skip).
    with torch.no_grad():
        probe.out.bias[0] = float("nan")
        probe.hidden.weight.zero_()
        probe.hidden.bias.zero_()
    body = json.loads(lender_train(message(A1_ATTACK, 2, model=probe), context).content[ATTESTATION]["body"])
    assert body["limit"] == "model" and "magnitude nan" in body["reason"]


# ---- a2: the demo fallback ---------------------------------------------------------------------------


def _demo_node(flower_run_id: int):
    """What a SuperNode without lender-dir hands the ClientApp (a plain `flwr run .`)."""
    from flwr.app import Context, RecordDict

    return Context(run_id=flower_run_id, node_id=7, node_config={"partition-id": 0}, state=RecordDict(), run_config={})


def test_a2_a_lender_without_a_folder_is_flagged_requires_dp_and_keeps_one_lifetime_budget(
    honest, tmp_path, monkeypatch
):
    from flwr.supercore.task_identity import TaskIdentity

    from clients.app import manifest as lender_manifest
    from clients.app import train as lender_train
    from clients.session import LENDERS_DIR_ENV
    from federation.messages import ATTESTATION, METRICS
    from federation.privacy.accountant import epsilon
    from federation.privacy.events import PrivacyEvent
    from tests.lender_kit import initial_model, message

    monkeypatch.setenv("FLWR_HOME", str(tmp_path / "flwr-home"))
    monkeypatch.delenv(LENDERS_DIR_ENV, raising=False)
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 1
    no_dp = RunConfig(records=3000, lenders=1, rounds=2, dp=False, engine="inprocess")
    man = json.loads(
        lender_manifest(message(no_dp, 0, kind="query.manifest"), _demo_node(1)).content[ATTESTATION]["body"]
    )
    assert man["policy"]["demo"] is True and man["policy"]["require_dp"] is True  # signed: a demo lender, DP required
    reply = lender_train(message(no_dp, 1, model=initial_model(no_dp)), _demo_node(1))
    assert dict(reply.content[METRICS])["declined"] == 1
    assert json.loads(reply.content[ATTESTATION]["body"])["limit"] == "require_dp"

    # The same lender asked in three Flower runs (three runs of its own, too): one folder, one lifetime budget.
    limits = []
    for flower_run in (2, 3, 4):
        cfg = RunConfig(
            records=3000, lenders=3, rounds=3, epsilon=10.0, noise_multiplier=0.5, engine="inprocess", seed=flower_run
        )
        for rnd in range(1, 4):
            r = lender_train(message(cfg, rnd, model=initial_model(cfg)), _demo_node(flower_run))
            limits.append(json.loads(r.content[ATTESTATION]["body"]).get("limit"))
    assert limits[0] is None and set(limits[3:]) == {"max_epsilon"}, limits  # runs 3 and 4: past its lifetime max
    demo_root = tmp_path / "flwr-home" / "fedcredit-lenders"
    assert sorted(os.listdir(demo_root)) == ["lender_000"]
    spent = json.loads((demo_root / "lender_000" / "state" / "spent.json").read_text())["runs"]
    every = [PrivacyEvent.from_dict(e) for a in spent.values() for e in a["events"]]
    delta = json.loads(r.content[ATTESTATION]["body"])["delta"]
    assert every and epsilon(every, delta) <= 10.0  # the demo maximum, over all runs together

    # The report flags a lender whose signed manifest says demo.
    entries = entries_of(honest)
    for e in entries:
        if e["type"] == L.LENDER_MANIFEST and e["body"]["lender"] == 1:
            e["body"]["policy"]["demo"] = True
    report = build_report(entries)
    assert [d["lender"] for d in report["lender_details"] if d["demo"]] == [1]
    assert any(s.startswith("Flagged: 1 lender(s) ran without a folder of their own") for s in report["summary"])


# ---- a3: what the folder walk did not see ------------------------------------------------------------


@pytest.mark.parametrize(
    "make, where",
    [
        (lambda f: (f / "REGULATOR_APPROVED_all_lenders_epsilon_below_0.1").mkdir(), "REGULATOR_APPROVED"),
        (lambda f: (f / "manifests" / "lender_003_withdrawn_after_refusing").mkdir(), "lender_003_withdrawn"),
        (lambda f: os.symlink(f / "manifests", f / "more_manifests"), "more_manifests"),
    ],
    ids=["empty folder", "empty folder in manifests", "link to a folder"],
)
def test_a3_a_folder_the_run_does_not_hold_fails(folder, make, where):
    make(folder)
    error = _fails(folder, "files", "this folder is not part of a run folder")
    assert where in error.where


def test_a3_a_fifo_fails(folder):
    os.mkfifo(folder / "model_v2.pt")
    error = _fails(folder, "files", "a run folder holds regular files only")
    assert error.where == "model_v2.pt"


def test_a3_an_extra_zip_member_in_model_pt_fails_even_re_hashed(folder):
    with zipfile.ZipFile(folder / "model.pt", "a") as archive:
        archive.writestr("model/extra/anything.json", '{"lender_0_update": [0.12, -0.5, 0.33]}')
    Forger(folder).write(entries_of(folder))  # the coordinator re-hashes model.pt into its signed final entry
    _fails(folder, "model", "the model file holds more than a saved state dict")


def _hide_appendix(run_dir: Path) -> None:
    hidden = run_dir / "appendix"
    hidden.mkdir()
    (hidden / "real_privacy.json").write_text('{"epsilon": 48.0}\n')
    os.chmod(hidden, 0)  # only root can list it


def test_a3_an_unreadable_folder_fails_for_a_verifier_that_is_not_root(folder):
    """Path.rglob skipped a folder the verifier cannot list; the walk now refuses every folder but manifests/ and
    keys/ by its name, before it needs to read it (and an unreadable folder it must read fails too)."""
    if os.getuid() != 0:  # this verifier is not root: it cannot list the folder itself
        _hide_appendix(folder)
        try:
            error = _fails(folder, "files", "this folder is not part of a run folder")
        finally:
            os.chmod(folder / "appendix", 0o700)
        assert error.where == "appendix"
        return
    # As root: a world-readable copy of the run, a folder only root can list, and the verifier run as 'nobody'.
    import pwd

    nobody = pwd.getpwnam("nobody")
    base = Path(tempfile.mkdtemp(prefix="redteam-a3-"))
    try:
        os.chmod(base, 0o755)
        run_dir, registry = base / "run", base / "registry.json"
        shutil.copytree(folder, run_dir)
        shutil.copy(_registry(folder), registry)
        for p in [run_dir, registry, *run_dir.rglob("*")]:
            os.chmod(p, 0o755 if p.is_dir() else 0o644)
        outcomes = {}
        for hide in (False, True):
            if hide:
                _hide_appendix(run_dir)
            read, write = os.pipe()
            pid = os.fork()
            if pid == 0:  # pragma: no cover (the child reports through the pipe)
                try:
                    os.close(read)
                    os.setgid(nobody.pw_gid)
                    os.setuid(nobody.pw_uid)
                    try:
                        result = f"exit {verify_run(run_dir, registry).exit_code}"
                    except VerificationFailed as exc:
                        result = f"{exc.check} at {exc.where}: {exc}"
                    os.write(write, result.encode())
                finally:
                    os._exit(0)
            os.close(write)
            os.waitpid(pid, 0)
            with os.fdopen(read, "rb") as pipe:
                outcomes[hide] = pipe.read().decode()
        assert outcomes[False] == "exit 0", outcomes  # 'nobody' verifies the readable copy
        assert outcomes[True].startswith("files at appendix: ") and "not part of a run folder" in outcomes[True], (
            outcomes
        )
    finally:
        for p in base.rglob("*"):
            if p.is_dir() and not p.is_symlink():
                os.chmod(p, 0o755)
        shutil.rmtree(base, ignore_errors=True)


# ---- a4: the report's fields the verifier did not compare ----------------------------------------------


def _last_scores(entries):
    last = max(e["body"]["round"] for e in entries if e["type"] == L.LENDER_EVALUATION)
    return [e["body"] for e in entries if e["type"] == L.LENDER_EVALUATION and e["body"]["round"] == last]


def test_a4_free_global_scores_fail_and_the_report_shows_the_lenders_own(folder):
    honest_auc = build_report(entries_of(folder))["utility"]["global_auc"]
    entries = entries_of(folder)
    entries[-1]["body"]["final_metrics"].update({"auc": 0.9412, "ks": 0.71})
    assert build_report(entries)["utility"]["global_auc"] == honest_auc != 0.9412  # the page is not misled
    Forger(folder).write(entries)
    _fails(folder, "evaluation", "its final scores are not the mean of the lenders' signed scores")


def test_a4_leaving_out_the_worst_lenders_evaluations_fails(folder):
    entries = entries_of(folder)
    worst = min(_last_scores(entries), key=lambda b: b["auc"])["lender"]
    entries = [e for e in entries if not (e["type"] == L.LENDER_EVALUATION and e["body"]["lender"] == worst)]
    Forger(folder).write(restate_privacy(entries))  # final_metrics restated as the mean of what is left
    _fails(folder, "evaluation", "every one of [0, 1, 2] must score the round's model")


@pytest.mark.parametrize(
    "edit, contains",
    [
        (
            lambda es: es[-1].__setitem__("time", es[-1]["time"] + " -- independently audited by the regulator --"),
            "an entry's time is a UTC timestamp",
        ),
        (
            lambda es: es[0]["body"].__setitem__(
                "code_version", "fedcredit 0.1.0 (certified build, audit #2026-118 passed)"
            ),
            "the code version is 'fedcredit VERSION (git COMMIT)'",
        ),
    ],
    ids=["time", "code_version"],
)
def test_a4_free_text_in_time_or_code_version_fails(folder, edit, contains):
    entries = entries_of(folder)
    edit(entries)
    Forger(folder).write(entries)
    _fails(folder, "format", contains)


def test_a4_epsilons_stated_one_percent_low_fail(folder):
    entries = entries_of(folder)
    for name, unit in entries[-1]["body"]["privacy"]["units"].items():
        if name != "federation":
            for k in ("epsilon", "epsilon_rdp", "epsilon_prv"):
                unit[k] *= 0.993  # within the verifier's 1% accountant tolerance
    Forger(folder).write(entries)
    _fails(folder, "privacy summary", "'epsilon' is")


@pytest.mark.parametrize("name, value", [("noise_multiplier", 4.0), ("sample_rate", 0.001), ("clip_norm", 0.1)])
def test_a4_a_stated_mechanism_other_than_the_lenders_fails(folder, name, value):
    entries = entries_of(folder)
    units = entries[-1]["body"]["privacy"]["units"]
    units["1"][name] = value
    shown = {d["lender"]: d[name] for d in build_report(entries)["lender_details"]}
    assert shown[1] != value  # the report takes the lender's signed release, not the coordinator's summary
    Forger(folder).write(entries)
    _fails(folder, "privacy summary", f"'{name}' is {value!r}; the lender signed")


# ---- a5: markup in a colluding lender's signed count -------------------------------------------------

PAYLOAD = (
    "1000<script>document.addEventListener('DOMContentLoaded',()=>{"
    "document.querySelectorAll('section.lender td').forEach(td=>{"
    "if(/^\\d\\.\\d{3} \\/ /.test(td.textContent))td.textContent='0.412 / 3.000'});"
    "document.querySelector('#summary ul').innerHTML='<li>All lenders stayed within epsilon 0.5 at delta 1e-06."
    " Audited and approved.</li>';});</script>"
)


def _dom(page: Path) -> str:
    return subprocess.run(
        [
            "/usr/bin/chromium",
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--virtual-time-budget=2000",
            "--dump-dom",
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    ).stdout


def _epsilon_cells(text: str) -> list[str]:
    return re.findall(r"<th>Epsilon spent / budget</th><td>([^<]*)</td>", text)


def test_a5_markup_in_a_signed_count_fails_and_the_page_runs_no_script(folder):
    honest_cells = _epsilon_cells((folder / "report.html").read_text())
    assert len(honest_cells) == 3
    entries = entries_of(folder)
    for entry in entries:
        if entry["type"] == L.LENDER_MANIFEST and entry["body"]["lender"] == 2:
            entry["body"]["records_total"] = PAYLOAD  # lender 2 signs this about itself
    Forger(folder).colluding_with(2).write(entries)
    _fails(folder, "body", "'records_total' must be a whole number")
    page = (folder / "report.html").read_text()  # what the coordinator would publish all the same
    assert "<script" not in page.lower() and html.escape(PAYLOAD) in page
    assert "Content-Security-Policy" in page and "default-src 'none'" in page
    assert _epsilon_cells(page) == honest_cells
    if not Path("/usr/bin/chromium").exists():
        pytest.skip("headless Chromium not installed: the rendered page was not checked")
    dom = _dom(folder / "report.html")

    def summary(text):
        return re.search(r'<section id="summary">.*?</section>', text, re.S).group(0)

    assert _epsilon_cells(dom) == honest_cells  # what the regulator sees: the honest lenders' epsilons
    assert "Audited and approved" not in summary(dom) and summary(dom).count("<li>") == summary(page).count("<li>")
    assert "1000&lt;script&gt;document.addEventListener" in dom  # the payload is shown as text, not run
    # The check can tell: the same page with the payload unescaped and no CSP has its cells rewritten.
    control = folder.parent / "control.html"
    control.write_text(
        re.sub(r'<meta http-equiv="Content-Security-Policy"[^>]*>', "", page.replace(html.escape(PAYLOAD), PAYLOAD))
    )
    assert set(_epsilon_cells(_dom(control))) == {"0.412 / 3.000"}


# ---- a6: signed refusals replaced by dropouts ----------------------------------------------------------


def test_a6_refusals_replaced_by_no_reply_dropouts_fail_against_the_lenders_own_count(folder):
    entries = entries_of(folder)
    stop = entries[-1]["body"]["stop"]["round"]  # the stop round's refusals stay: they prove the stop
    hidden = 0
    for entry in entries:
        if entry["type"] == L.LENDER_REFUSAL and entry["body"]["round"] < stop:
            body = entry["body"]
            entry.update(
                type=L.UPDATE_REJECTED,
                signer="coordinator",
                body={
                    "round": body["round"],
                    "lender": body["lender"],
                    "reason": "no reply (the lender failed or timed out)",
                },
            )
            hidden += 1
    assert hidden == 4  # lender 0 in rounds 1-3, lender 2 in round 3
    Forger(folder).write(entries)
    _fails(
        folder,
        "completeness",
        "lender 0's final statement: check 'completeness' failed: the lender counts 4 "
        "refusals in this run; the ledger holds 1",
    )


# ---- a7: two secure-aggregation requests answered from one Context snapshot ----------------------------


class _Node:
    """A SuperNode's context handling, as the red team modelled it: a task starts from a snapshot of the persisted
    Context (pull_task_input) and its copy overwrites it wholesale when it ends (push_task_output)."""

    def __init__(self, context) -> None:
        self.persisted = context

    def start(self, handler, msg):
        from flwr.common.serde import context_from_proto, context_to_proto

        return handler, msg, context_from_proto(context_to_proto(self.persisted))

    def finish(self, task):
        from flwr.common.serde import context_from_proto, context_to_proto

        handler, msg, snapshot = task
        reply = handler(msg, snapshot)  # a handler that raises leaves the persisted Context as it was
        self.persisted = context_from_proto(context_to_proto(snapshot))
        return reply

    def run(self, handler, msg):
        return self.finish(self.start(handler, msg))


def test_a7_a_second_survivor_set_sent_concurrently_is_refused_and_no_update_can_be_unmasked(tmp_path):
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
    from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
    from flwr.supercore.task_identity import TaskIdentity

    import clients.app as lender_app
    from clients.home import LenderHome
    from clients.session import _records
    from fedcredit.runner import Parties, set_up_parties, validate
    from federation.audit_trail.canonical import config_hash
    from federation.audit_trail.keys import keys_dir_for, load_or_create
    from federation.messages import ARRAYS, CONFIG, MASKED, SECAGG, run_config_record
    from federation.model import build_model
    from federation.secagg import (
        SecAggError,
        _combine32,
        pair_seed,
        prg,
        roster_body,
        signed,
        unmask_body,
        unpack_share,
        weighted_quantizer,
    )

    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 1
    out = tmp_path / "run"
    cfg = RunConfig(
        records=3000, lenders=3, rounds=1, epsilon=3.0, engine="inprocess", secure_aggregation=True, output_dir=str(out)
    )
    cfg = cfg.replace(card_sha256=validate(cfg).card_sha256)
    parties = Parties(out)
    set_up_parties(cfg, parties)  # each lender's folder, identity key and pinned registry
    coordinator = load_or_create(keys_dir_for(cfg.output_dir), "coordinator")
    run_id, rnd, k, t = config_hash(cfg.to_record()), 1, 3, 2
    nodes = [
        _Node(
            Context(
                run_id=1,
                node_id=100 + i,
                node_config={"lender-dir": str(parties.lender(i)), "lender-id": i},
                state=RecordDict(),
                run_config={},
            )
        )
        for i in range(k)
    ]
    config = ConfigRecord({**dict(run_config_record(cfg)), "server-round": rnd})

    def msg(kind: str, secagg: dict, arrays=None) -> Message:
        content = {CONFIG: config, SECAGG: ConfigRecord(secagg)}
        if arrays is not None:
            content[ARRAYS] = arrays
        return Message(RecordDict(content), dst_node_id=1, message_type=kind)

    roster = signed(coordinator, roster_body(run_id, rnd, [0, 1, 2], t))
    rf = {"roster": roster["body"], "roster-signature": roster["signature"]}
    keys = [
        nodes[p].run(lender_app.secagg_keys, msg("query.secagg_keys", {**rf, "position": p})).content[SECAGG]
        for p in range(k)
    ]
    shares_req = {
        **rf,
        "mask-keys": [bytes(x["mask-key"]) for x in keys],
        "channel-keys": [bytes(x["channel-key"]) for x in keys],
        "key-signatures": [bytes(x["signature"]) for x in keys],
    }
    sealed = [
        list(nodes[p].run(lender_app.secagg_shares, msg("query.secagg_shares", shares_req)).content[SECAGG]["sealed"])
        for p in range(k)
    ]
    home = LenderHome(parties.lender(0))
    features = _records(str(home.folder), home.policy.data_config(), 0, "").features
    model = build_model(cfg.model, len(features), cfg.hidden, seed=cfg.seed)
    masked = []
    for p in range(k):
        reply = nodes[p].run(
            lender_app.train,
            msg(
                "train",
                {**rf, "active": [0, 1, 2], "sealed": [bytes(sealed[j][p]) if j != p else b"" for j in range(k)]},
                ArrayRecord(model.state_dict()),
            ),
        )
        masked.append(reply.content[ARRAYS][MASKED].numpy())

    sets = {"A": ([0, 1], [2]), "B": ([1, 2], [0])}  # lender 0 a survivor in A, dropped in B
    reqs = {}
    for name, (surv, drop) in sets.items():
        u = signed(coordinator, unmask_body(run_id, rnd, surv, drop))
        reqs[name] = {**rf, "unmask": u["body"], "unmask-signature": u["signature"]}

    def confirm(node, name):
        return bytes(
            node.run(lender_app.secagg_confirm, msg("query.secagg_confirm", reqs[name])).content[SECAGG]["signature"]
        )

    sig = {(0, "A"): confirm(nodes[0], "A"), (2, "B"): confirm(nodes[2], "B")}
    # Lender 1 gets two confirmation requests at once: both tasks start from the same snapshot of its Context.
    n1 = nodes[1]
    confirm_a = n1.start(lender_app.secagg_confirm, msg("query.secagg_confirm", reqs["A"]))
    confirm_b = n1.start(lender_app.secagg_confirm, msg("query.secagg_confirm", reqs["B"]))
    sig[(1, "A")] = bytes(n1.finish(confirm_a).content[SECAGG]["signature"])
    unmask_a = n1.start(
        lender_app.secagg_unmask,
        msg("query.secagg_unmask", {**reqs["A"], "confirmations": [sig[(0, "A")], sig[(1, "A")]]}),
    )
    shares_1a = n1.finish(unmask_a).content[SECAGG]
    with pytest.raises(SecAggError, match="already took the secure-aggregation step 'confirm' in round 1"):
        n1.finish(confirm_b)  # the slow task: its snapshot never saw A confirmed, the lender's folder did
    with pytest.raises(SecAggError, match="already took the secure-aggregation step 'confirm' in round 1"):
        confirm(n1, "B")  # nor asked again afterwards
    # Without lender 1's signature on B, neither lender 1 nor lender 2 reveals anything for B.
    unsigned = b"\0" * 64
    with pytest.raises(SecAggError):
        n1.run(
            lender_app.secagg_unmask,
            msg("query.secagg_unmask", {**reqs["B"], "confirmations": [unsigned, sig[(2, "B")]]}),
        )
    with pytest.raises(SecAggError, match="only 1 survivors signed this survivor set"):
        nodes[2].run(
            lender_app.secagg_unmask,
            msg("query.secagg_unmask", {**reqs["B"], "confirmations": [unsigned, sig[(2, "B")]]}),
        )
    # Lender 0 gets its unmasking request twice at once: it answers one, the other is refused.
    unmask_0a = [
        nodes[0].start(
            lender_app.secagg_unmask,
            msg("query.secagg_unmask", {**reqs["A"], "confirmations": [sig[(0, "A")], sig[(1, "A")]]}),
        )
        for _ in range(2)
    ]
    shares_0a = nodes[0].finish(unmask_0a[0]).content[SECAGG]
    with pytest.raises(SecAggError, match="already took the secure-aggregation step 'reveal' in round 1"):
        nodes[0].finish(unmask_0a[1])

    # What the coordinator holds: shares for set A only. Key shares of lender 2 (dropped in A), none of lender 0's
    # or lender 1's mask key (the pairwise mask between 0 and 1 stays): it unmasks the sum of 0 and 1, not either.
    assert [len(s["key-shares"]) for s in (shares_0a, shares_1a)] == [1, 1]  # one dropped lender: 2

    def sh(rec, key, i):
        return unpack_share(bytes(rec[key][i]))

    seed = {i: _combine32([sh(shares_0a, "seed-shares", i), sh(shares_1a, "seed-shares", i)]) for i in (0, 1)}
    sk2 = X25519PrivateKey.from_private_bytes(
        _combine32([sh(shares_0a, "key-shares", 0), sh(shares_1a, "key-shares", 0)])
    )
    length, pk = len(masked[0]), shares_req["mask-keys"]
    quant = weighted_quantizer(cfg.max_update_norm, k)
    alone = {}
    for i in (0, 1):  # the best the coordinator can do for one lender: remove its self mask and its mask with 2
        x = masked[i] - prg(seed[i], length)
        x = x - prg(pair_seed(sk2, pk[i], i, 2), length)  # i < 2: lender i added +mask(i, 2)
        alone[i] = x
    total = quant.decode_sum(alone[0] + alone[1])  # the mask between 0 and 1 cancels in the sum only
    records = [
        json.loads(lender_app.manifest(msg("query.manifest", {}), nodes[i].persisted).content["attestation"]["body"])[
            "train_records"
        ]
        for i in range(k)
    ]
    assert total[-1] == pytest.approx(records[0] + records[1], abs=1e-3)  # the honest sum of A's survivors
    for i in (0, 1):  # each lender alone is still masked by the pair mask: its weight coordinate is noise
        assert abs(quant.decode_sum(alone[i])[-1] - records[i]) > 1e3


# ---- a8: the lender-level headline ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def lender_level(tmp_path_factory):
    # The red team's run, at delta 1e-3: at its 0.01 each lender refuses (delta above 1/n of its own records) and,
    # with the lenders drawn at random, a run often ends with no round trained and every figure 0.
    return _run(
        tmp_path_factory.mktemp("a8") / "run",
        RunConfig(
            records=3000,
            lenders=5,
            rounds=3,
            epsilon=5.0,
            dp_level="lender",
            lender_sample_rate=0.6,
            delta=1e-3,
            engine="inprocess",
        ),
    )


def test_a8_a_lowered_lender_level_maximum_fails_and_the_headline_names_the_coordinator(lender_level, tmp_path):
    folder = _copy(lender_level, tmp_path)
    assert verify_run(folder, _registry(folder)).exit_code == 0
    headline = next(s for s in json.loads((folder / "report.json").read_text())["summary"] if "lender-level" in s)
    assert "lender-level DP gives no protection against it" in headline  # the coordinator adds the noise
    entries = entries_of(folder)
    fed = entries[-1]["body"]["privacy"]["units"]["federation"]
    assert fed["epsilon_known_sampling_max"] > 0.05
    fed["epsilon_known_sampling_max"] = 0.05
    Forger(folder).write(entries)
    _fails(folder, "epsilon", "the most any lender spent against a reader of the ledger is stated as 0.05")


# ---- a9: secure-aggregation ledger entries, and the registry ------------------------------------------------


@pytest.fixture(scope="module")
def secure(tmp_path_factory):
    return _run(
        tmp_path_factory.mktemp("a9") / "run",
        RunConfig(
            records=3000,
            lenders=3,
            rounds=2,
            epsilon=3.0,
            noise_multiplier=1.5,
            secure_aggregation=True,
            engine="inprocess",
        ),
    )


def _aggregates(entries):
    return [e["body"] for e in entries if e["type"] == L.AGGREGATE]


def test_a9_an_unmasking_request_naming_other_survivors_than_the_aggregate_fails(secure, tmp_path):
    from federation.audit_trail.keys import keys_dir_for, load_or_create
    from federation.secagg import signed, unmask_body

    folder = _copy(secure, tmp_path)
    coordinator = load_or_create(keys_dir_for(str(folder)), "coordinator")
    entries = entries_of(folder)
    for body in _aggregates(entries):
        assert sorted(body["lenders"]) == [0, 1, 2]
        run = json.loads(body["unmask"]["body"])["run"]
        body["unmask"] = signed(coordinator, unmask_body(run, body["round"], [0, 1], [2]))  # validly signed
    Forger(folder).write(entries)
    _fails(
        folder,
        "secure aggregation",
        "the aggregate names lenders [0, 1, 2]; the signed unmasking request's survivors are [0, 1]",
    )


@pytest.mark.parametrize(
    "confirmations",
    [
        {"0": "00" * 64, "1": "ff" * 64},  # garbage in place of the survivors' signatures
        "drop one",  # one valid confirmation of three kept: the threshold is 2
    ],
    ids=["garbage", "too few"],
)
def test_a9_confirmations_that_do_not_verify_or_are_too_few_fail(secure, tmp_path, confirmations):
    folder = _copy(secure, tmp_path)
    entries = entries_of(folder)
    for body in _aggregates(entries):
        if confirmations == "drop one":
            kept = sorted(body["confirmations"])[:1]
            body["confirmations"] = {k: body["confirmations"][k] for k in kept}
        else:
            body["confirmations"] = confirmations
    Forger(folder).write(entries)
    _fails(folder, "secure aggregation", "valid survivor confirmations")


def _bigger_registry(folder: Path) -> Path:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from federation.audit_trail.keys import public_hex
    from federation.registry import Registry, load_registry

    reg = load_registry(_registry(folder))
    bigger = Registry(reg.coordinator, {**reg.lenders, **{i: public_hex(Ed25519PrivateKey.generate()) for i in (3, 4)}})
    path = folder.parent / "registry-5-lenders.json"
    bigger.write(path)
    return path


def test_a9_a_registry_naming_more_lenders_verifies_a_run_of_three_and_says_three(folder):
    """As the code is: the registry pins keys, not the federation's membership. A registry of 5 lenders verifies a
    run of 3 of them; what the verifier states is the run's own count (3 lenders, 3 lender keys relied on)."""
    from fedcredit.cli import app

    bigger = _bigger_registry(folder)
    result = verify_run(folder, bigger)
    assert result.exit_code == 0 and result.lenders == 3
    assert sorted(k for k in result.fingerprints if k != "coordinator") == ["lender 0", "lender 1", "lender 2"], (
        result.fingerprints
    )
    cli = CliRunner().invoke(app, ["verify", str(folder), "--registry", str(bigger)])
    assert cli.exit_code == 0 and "; 3 lenders, every round" in cli.output, cli.output


def test_a9_the_verifier_notes_registered_lenders_absent_from_the_run(folder):
    from fedcredit.cli import app

    cli = CliRunner().invoke(app, ["verify", str(folder), "--registry", str(_bigger_registry(folder))])
    assert cli.exit_code == 0
    assert re.search(r"lenders? 3(,| and) 4", cli.output) and "registry" in cli.output.split("\n", 1)[1], cli.output


# ---- a10: the stop reason as free text -------------------------------------------------------------------


def test_a10_a_stop_reason_in_other_words_than_its_kinds_sentence_fails(folder):
    entries = entries_of(folder)
    assert entries[-1]["body"]["stopped_early"] == "no lender trained in round 4: every lender asked declined"
    entries[-1]["body"]["stopped_early"] = (
        "the regulator's audit confirmed the model; no further rounds were "
        "needed (each lender spent less than epsilon 0.2)"
    )
    Forger(folder).write(entries)
    _fails(folder, "stop", "its stop reason is not the sentence its stop's kind is stated in")
