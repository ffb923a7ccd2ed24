"""Cheap deployment rounds (issue 14, item 4): Flower starts a ClientApp process per message, so what that process
imports and reads is the round's cost. The secure-aggregation steps and the manifest (from the lender's cache) run
without torch, Opacus or pandas; a deployed lender keeps its encoded records in its own folder (0600 in 0700),
keyed by everything they are made from, and reads them again when any of it changes."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import clients.session as session
from clients.home import LenderHome, init_lender
from clients.record_cache import records_key
from federation.data import load_lender
from federation.lender_policy import for_simulated_lender
from federation.lender_records import LenderData
from tests.test_data import _own_data

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "opacus", "pandas", "sklearn", "scipy")

# One lender's process, as Flower starts it for one message: import the ClientApp, answer the manifest query and
# the first secure-aggregation step, then say which heavy libraries the process holds.
LENDER_PROCESS = """
import json, sys
from pathlib import Path
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity
import clients.app as app
from federation.audit_trail.canonical import config_hash
from federation.audit_trail.keys import load_or_create
from federation.config import RunConfig
from federation.messages import CONFIG, MANIFEST, SECAGG, run_config_record
from federation.secagg import roster_body, signed

lender_dir, keys_dir, record, rnd = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), int(sys.argv[4])
cfg = RunConfig.from_record(record)
TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 1
context = Context(run_id=1, node_id=7, node_config={"lender-dir": lender_dir, "lender-id": 0}, state=RecordDict(),
                  run_config={})
config = ConfigRecord({**dict(run_config_record(cfg)), "server-round": rnd})
manifest = app.manifest(Message(RecordDict({CONFIG: config}), dst_node_id=7, message_type="query.manifest"), context)
roster = signed(load_or_create(Path(keys_dir), "coordinator"), roster_body(config_hash(cfg.to_record()), rnd, [0, 1, 2], 2))
request = ConfigRecord({"roster": roster["body"], "roster-signature": roster["signature"], "position": 0})
keys = app.secagg_keys(
    Message(RecordDict({CONFIG: config, SECAGG: request}), dst_node_id=7, message_type="query.secagg_keys"), context
)
print(json.dumps({
    "train_records": manifest.content[MANIFEST]["train-records"],
    "commitment": manifest.content[MANIFEST]["data-commitment"],
    "mask_key": len(bytes(keys.content[SECAGG]["mask-key"])),
    "heavy": sorted(name for name in json.loads(sys.argv[5]) if name in sys.modules),
}))
"""


def _lender_process(folder: Path, keys: Path, record: dict, rnd: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, "-c", LENDER_PROCESS, str(folder), str(keys), json.dumps(record), str(rnd), json.dumps(HEAVY)],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=300,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_the_manifest_and_a_secure_aggregation_step_run_without_torch_opacus_or_pandas(tmp_path):
    from fedcredit.runner import Parties, set_up_parties
    from federation.audit_trail.keys import keys_dir_for

    cfg = _own_data(tmp_path / "data", [i % 3 == 0 for i in range(120)])
    cfg = cfg.replace(lenders=3, secure_aggregation=True, output_dir=str(tmp_path / "run"))
    parties = Parties(tmp_path / "run")
    set_up_parties(cfg, parties)
    folder, keys = parties.lender(0), keys_dir_for(cfg.output_dir)
    cold = _lender_process(folder, keys, cfg.to_record(), 1)  # the first message reads and encodes the records
    assert "pandas" in cold["heavy"] and (folder / "cache" / "records.npz").is_file()
    warm = _lender_process(folder, keys, cfg.to_record(), 2)  # every later one takes them from the lender's cache
    assert warm == {**cold, "heavy": []}
    assert warm["train_records"] == len(load_lender(LenderHome(folder).policy.data_config(), 0).y_train)
    assert warm["mask_key"] > 0


def _deployed(tmp_path: Path, cfg) -> LenderHome:
    init_lender(tmp_path / "lender", for_simulated_lender(cfg, 0))
    return LenderHome(tmp_path / "lender")


def _read(home: LenderHome) -> LenderData:
    session.forget_records()  # a new process per message: nothing in memory
    return session._records(str(home.folder), home.policy.data_config(), 0, home.policy.audit_canaries, True)


def _same(a: LenderData, b: LenderData) -> None:
    assert (a.lender, a.features, a.manifest) == (b.lender, b.features, b.manifest)
    for name in ("x_train", "y_train", "x_test", "y_test"):
        left, right = getattr(a, name), getattr(b, name)
        assert left.dtype == right.dtype and np.array_equal(left, right)


def test_a_deployed_lender_caches_its_records_0600_in_its_own_folder_and_serves_them_unchanged(tmp_path, monkeypatch):
    cfg = _own_data(tmp_path / "data", [i % 3 == 0 for i in range(120)])
    home = _deployed(tmp_path, cfg)
    first = _read(home)
    path = home.folder / "cache" / "records.npz"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["card.toml", "data.csv"]  # nothing beside the data
    _same(first, load_lender(home.policy.data_config(), 0))

    def no_reading(*args):
        raise AssertionError("the records were read again although nothing they come from changed")

    monkeypatch.setattr(session, "_load", no_reading)
    _same(_read(home), first)


def test_a_simulated_lender_writes_no_cache(tmp_path):
    cfg = _own_data(tmp_path / "data", [i % 3 == 0 for i in range(120)])
    home = _deployed(tmp_path, cfg)
    session.forget_records()
    session._records(str(home.folder), home.policy.data_config(), 0, "", False)
    assert not (home.folder / "cache").exists()


@pytest.mark.parametrize("change", ["csv", "card", "policy"])
def test_an_edited_csv_card_or_policy_gives_another_key_and_the_records_are_read_again(tmp_path, change):
    cfg = _own_data(tmp_path / "data", [i % 3 == 0 for i in range(120)])
    home = _deployed(tmp_path, cfg)
    before = _read(home)
    key = records_key(home.policy.data_config(), 0, "")
    if change == "csv":  # one record's income changed: same size, same names
        text = Path(cfg.csv_path).read_text().replace("\n5,", "\n6,", 1)
        Path(cfg.csv_path).write_text(text)
    elif change == "card":
        Path(cfg.card_path).write_text(Path(cfg.card_path).read_text() + "\n")
    else:
        init_lender(home.folder, for_simulated_lender(cfg.replace(test_fraction=0.5), 0))
        home = LenderHome(home.folder)
    assert records_key(home.policy.data_config(), 0, "") != key
    after = _read(home)
    _same(after, load_lender(home.policy.data_config(), 0))
    if change == "csv":
        assert after.manifest["records_digest"] != before.manifest["records_digest"]
    if change == "policy":
        assert len(after.y_test) != len(before.y_test)


def test_a_cache_made_under_another_key_or_unreadable_is_never_served(tmp_path):
    cfg = _own_data(tmp_path / "data", [i % 3 == 0 for i in range(120)])
    home = _deployed(tmp_path, cfg)
    real = _read(home)
    key = records_key(home.policy.data_config(), 0, "")
    forged = LenderData(0, real.x_train[:1] * 0, real.y_train[:1], real.x_test, real.y_test, real.features, {})
    home.save_records("another key", forged)  # e.g. left by an earlier data configuration
    assert home.cached_records(key) is None
    _same(_read(home), real)
    assert home.cached_records(key) is not None  # rewritten under the right key
    (home.folder / "cache" / "records.npz").write_bytes(b"not a zip file")
    assert home.cached_records(key) is None
    _same(_read(home), real)


class _Replies:
    """The deployed grid as the coordinator sees it: replies arrive over several pulls, some never."""

    def __init__(self, arrive: dict[str, int]) -> None:
        self.arrive, self.pulls = arrive, 0  # message id -> the pull at which its reply is there

    def push_messages(self, messages):
        return [m.metadata.message_id for m in messages]

    def pull_messages(self, message_ids):
        from flwr.app import Message, RecordDict
        from flwr.supercore.task_identity import TaskIdentity

        TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 1
        self.pulls += 1
        out = []
        for mid in sorted(message_ids):
            if self.arrive.get(mid, 10**9) <= self.pulls:
                reply = Message(RecordDict(), dst_node_id=1, message_type="train")
                reply.metadata.__dict__["_reply_to_message_id"] = mid
                out.append(reply)
        return out


def _grid(arrive: dict[str, int], monkeypatch):
    from flwr.superlink.grid.http_grid import HttpGrid

    import server.messaging as messaging

    monkeypatch.setattr(messaging, "POLL_S", 0.0)
    grid = HttpGrid.__new__(HttpGrid)  # no SuperLink: pushing and pulling are the fake's
    fake = _Replies(arrive)
    monkeypatch.setattr(grid, "push_messages", fake.push_messages, raising=False)
    monkeypatch.setattr(grid, "pull_messages", fake.pull_messages, raising=False)
    return grid, fake


def _messages(ids):
    from flwr.app import Message, RecordDict
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 1
    out = []
    for mid in ids:
        msg = Message(RecordDict(), dst_node_id=1, message_type="train")
        msg.metadata.__dict__["_message_id"] = mid
        out.append(msg)
    return out


def test_the_coordinator_collects_every_reply_each_once_however_late_it_arrives(monkeypatch):
    from server.messaging import send_and_receive

    grid, fake = _grid({"a": 1, "b": 3, "c": 2}, monkeypatch)
    replies = send_and_receive(grid, _messages(["a", "b", "c"]), timeout=60)
    assert sorted(r.metadata.reply_to_message_id for r in replies) == ["a", "b", "c"]
    assert fake.pulls == 3  # it stops pulling once every reply is in


def test_a_lender_that_never_replies_is_given_up_at_the_timeout_with_the_others_kept(monkeypatch):
    from server.messaging import send_and_receive

    grid, _ = _grid({"a": 1}, monkeypatch)
    replies = send_and_receive(grid, _messages(["a", "silent"]), timeout=0.05)
    assert [r.metadata.reply_to_message_id for r in replies] == ["a"]
