"""Flower's deployment runtime on 127.0.0.1: a SuperLink with TLS and SuperNode authentication, three
registered SuperNodes, `flwr run`; the result matches the in-process run on the same data and seed, an
unregistered SuperNode is turned away, every process started is gone afterwards, also on failure, and each
lender reads its records from its own folder (its node config's lender-dir), never from the coordinator's request."""

import os
import stat
import sys
import time
from pathlib import Path

import psutil
import pytest
from flwr.app import RecordDict

from clients.home import LenderHome, init_lender
from fedcredit.deploy import Deployment, DeploymentError
from fedcredit.inprocess_grid import InProcessGrid
from federation.audit_trail.verify import verify_run
from federation.config import RunConfig
from federation.lender_policy import for_simulated_lender, load_policy
from federation.messages import CONFIG, QUERY_MANIFEST, inspect_reply, run_config_record
from federation.registry import load_registry

# Seeded DP noise (not private): the deployed and the simulated run must give the same model.
CFG = RunConfig(records=6000, lenders=3, rounds=2, seed=1, reproducible_noise_not_private=True)


def _gone(procs):
    for proc in procs:
        try:
            if proc.status() != psutil.STATUS_ZOMBIE:
                return False
        except psutil.NoSuchProcess:
            pass
    return True


def _verified(folder):
    result = verify_run(folder, f"{folder}-registry.json")
    assert result.pinned
    return result


def test_every_process_and_secret_is_gone_when_the_block_fails(tmp_path):
    # The deployment end to end (its result equal to the in-process run's) is tests/test_multihost.py: the same
    # roles, each on its own address. Here: what a failure leaves behind.
    deployment = Deployment(tmp_path / "deploy", 2)
    cfg = deployment.prepare(CFG.replace(lenders=2, output_dir=str(tmp_path / "never")))
    made = [tmp_path / "never-lenders", tmp_path / "never-registry.json", tmp_path / "deploy" / "coordinator" / "keys"]
    assert all(path.exists() for path in made) and cfg.keys_dir == str(made[-1])
    with pytest.raises(RuntimeError, match="the operator gives up"), deployment:
        procs = deployment.process_tree()
        assert len(procs) >= 4  # the SuperLink, its gateway, two SuperNodes (and what they started)
        raise RuntimeError("the operator gives up")
    assert procs and _gone(procs)
    assert not any(path.exists() for path in made)  # secrets made for a run that did not finish are removed


def test_a_used_deployment_folder_is_refused(tmp_path):
    (tmp_path / "deploy").mkdir()
    (tmp_path / "deploy" / "something").write_text("x")
    with pytest.raises(DeploymentError, match="not empty"):
        Deployment(tmp_path / "deploy", 1).prepare(CFG.replace(output_dir=str(tmp_path / "run")))
    assert not (tmp_path / "run-lenders").exists()


def _manifest_reply(lender_dir, request: RunConfig, lender: int = 1):
    """The lender's ClientApp answering a manifest request on a node whose config names `lender_dir`."""
    from clients.app import app

    grid = InProcessGrid(app, 1, node_configs={0: {"lender-id": lender, "lender-dir": str(lender_dir)}})
    msg = grid.create_message(RecordDict({CONFIG: run_config_record(request)}), QUERY_MANIFEST, 1000, "manifest")
    (reply,) = grid.send_and_receive([msg])
    return reply


def test_a_lender_reads_its_records_from_its_own_policy_whatever_the_request_says(tmp_path, fixture_dir):
    from federation.data import load_lender

    real = fixture_dir("taiwan_default")
    own = RunConfig(dataset="taiwan_default", partition="iid", lenders=2)
    # The lender's policy names data dir X; the coordinator's request names data dir Y.
    missing_here = tmp_path / "lender-1-data"
    init_lender(tmp_path / "a", for_simulated_lender(own.replace(data_dir=str(missing_here)), 1))
    reply = _manifest_reply(tmp_path / "a", own.replace(data_dir=str(real)))
    assert reply.has_error() and str(missing_here) in reply.error.reason  # X is missing: the error names X
    assert str(real) not in reply.error.reason  # and the lender never looked at Y, which holds the data
    init_lender(tmp_path / "b", for_simulated_lender(own.replace(data_dir=str(real)), 1))
    reply = _manifest_reply(tmp_path / "b", own.replace(data_dir=str(tmp_path / "coordinator-view")))
    manifest = inspect_reply(reply)["manifest"]  # X is there: its records, although Y does not exist
    expected = load_lender(own.replace(data_dir=str(real)), 1).manifest
    assert manifest["lender"] == 1 and manifest["train_records"] == expected["train_records"] > 0
    # the keyed commitment binds exactly the records in X
    assert manifest["data_commitment"] == LenderHome(tmp_path / "b").commit(bytes.fromhex(expected["records_digest"]))
    assert load_policy(tmp_path / "b").data["data-dir"] == str(real)
    reply = _manifest_reply(tmp_path / "b", own, lender=0)  # a node config naming another lender's folder
    assert reply.has_error() and "belongs to lender 1" in reply.error.reason


def test_deploy_command_refuses_a_used_folder_and_starts_nothing(tmp_path):
    from typer.testing import CliRunner

    from fedcredit.cli import app

    used = tmp_path / "deploy"
    used.mkdir()
    (used / "superlink.log").write_text("an earlier deployment\n")
    result = CliRunner().invoke(app, ["deploy", "--deploy-dir", str(used), "--output-dir", str(tmp_path / "run")])
    assert result.exit_code == 2 and "not empty" in result.output
    assert sorted(p.name for p in used.iterdir()) == ["superlink.log"] and not (tmp_path / "run").exists()
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith("run")]  # no keys, lender folders, registry


def test_each_supernode_gets_its_node_config_from_its_own_folder_only(tmp_path, monkeypatch):
    import clients.join as join

    commands = {}
    monkeypatch.setattr(join, "check_superlink", lambda address, ca: None)
    for lender in (0, 1):
        folder = tmp_path / f"lender_{lender:03d}"
        init_lender(folder, for_simulated_lender(CFG, lender))
        node = join.LenderNode(folder, "127.0.0.1:9999", tmp_path / "ca.crt")
        node.group.spawn = lambda name, command, lender=lender: commands.setdefault(lender, command)
        node.start()
    for lender, command in commands.items():
        assert (
            command[command.index("--node-config") + 1]
            == f'lender-id={lender} lender-dir="{tmp_path / f"lender_{lender:03d}"}"'
        )
        assert command[command.index("--auth-supernode-private-key") + 1] == str(
            tmp_path / f"lender_{lender:03d}" / "supernode.key"
        )
        assert "--root-certificates" in command
    assert not any("keys-dir" in " ".join(c) or "data-dir" in " ".join(c) for c in commands.values())


def test_prepare_writes_each_lender_its_own_data_dir_and_the_registry(tmp_path):
    shared, own = tmp_path / "shared", tmp_path / "own"
    shared.mkdir(), own.mkdir()
    deployment = Deployment(tmp_path / "deploy", 2, data_dir=str(shared), data_dirs={1: str(own)})
    cfg = deployment.prepare(RunConfig(records=2000, lenders=2, output_dir=str(tmp_path / "run")))
    assert [n.home.folder for n in deployment.nodes] == [tmp_path / "run-lenders" / f"lender_{i:03d}" for i in (0, 1)]
    assert cfg.card_sha256
    policies = [load_policy(tmp_path / "run-lenders" / f"lender_{lender:03d}") for lender in (0, 1)]
    assert [p.lender for p in policies] == [0, 1]
    assert policies[0].data["data-dir"] == str(shared) and policies[1].data["data-dir"] == str(own)
    registry = load_registry(tmp_path / "run-registry.json")
    for lender in (0, 1):  # each lender's own public key, as it published it
        pub = (tmp_path / "run-lenders" / f"lender_{lender:03d}" / "identity.pub").read_text().strip()
        assert registry.lender_key(lender) == pub
        assert (
            stat.S_IMODE(os.stat(tmp_path / "run-lenders" / f"lender_{lender:03d}" / "identity.key").st_mode) == 0o600
        )
    assert not (tmp_path / "deploy" / "coordinator" / "logs").exists()  # nothing started yet
    deployment.__exit__()  # a deployment that never finished a run leaves none of the secrets it made
    assert not (tmp_path / "run-lenders").exists() and not (tmp_path / "deploy" / "coordinator" / "keys").exists()
    assert not (tmp_path / "run-registry.json").exists()


def test_deploy_command_refuses_a_bad_node_data_dir(tmp_path):
    from typer.testing import CliRunner

    from fedcredit.cli import app

    for bad, message in (
        ("7=/tmp", "LENDER=PATH with LENDER in 0..2"),
        (f"1={tmp_path / 'nowhere'}", "no such folder"),
    ):
        result = CliRunner().invoke(
            app,
            [
                "deploy",
                "--node-data-dir",
                bad,
                "--deploy-dir",
                str(tmp_path / "d"),
                "--output-dir",
                str(tmp_path / "run"),
            ],
        )
        assert result.exit_code == 2 and message in " ".join(result.output.split()), result.output
        assert "deploying" not in result.output and not (tmp_path / "d").exists()


FAKE_FLWR = """
import sys, time
from pathlib import Path

args = sys.argv[1:]
config = args[args.index("--run-config") + 1]
output = Path(config.split('output-dir="', 1)[1].split('"', 1)[0])
release, leak = Path(sys.argv[0] + ".release"), Path(sys.argv[0] + ".leak")
print("round 1: global AUC 0.7000, max epsilon spent 1.000, 3 lenders trained (40.0 s)")  # no flush: like flwr's
if leak.exists():
    print("a line carrying a secret: " + leak.read_text())
for _ in range(600):  # until the test has read round 1 (a hang guard: at most 60 s)
    if release.exists():
        break
    time.sleep(0.1)
else:
    sys.exit(7)
output.mkdir(parents=True)
(output / "report.json").write_text("{}")
print("round 2: global AUC 0.7100, max epsilon spent 2.000, 3 lenders trained (40.0 s)")
"""


def _fake_flwr(tmp_path, monkeypatch):
    """`flwr run --stream` as the coordinator's host starts it, played by a script that prints round 1, then waits
    until whoever reads its output has read that line before it finishes the run."""
    import server.superlink_host as superlink_host

    script = tmp_path / "flwr"
    script.write_text(f"#!{sys.executable}\n" + FAKE_FLWR)
    script.chmod(0o755)
    real_tool = superlink_host.tool
    monkeypatch.setattr(superlink_host, "tool", lambda name: str(script) if name == "flwr" else real_tool(name))
    monkeypatch.setattr(superlink_host, "PROJECT", tmp_path)  # `flwr` runs in the project folder
    return script


def test_the_coordinators_host_streams_each_line_of_flwr_run_as_it_comes(tmp_path, monkeypatch):
    from server.superlink_host import CoordinatorHost

    script = _fake_flwr(tmp_path, monkeypatch)
    host = CoordinatorHost(tmp_path / "coord")
    host.init("127.0.0.1:9099")
    seen = []

    def on_line(line: str) -> None:
        seen.append(line)
        if line.startswith("round 1:"):  # read before the run finished: only now may it finish
            assert not (tmp_path / "run" / "report.json").exists()
            Path(f"{script}.release").write_text("")

    assert host.run(RunConfig(output_dir=str(tmp_path / "run")), on_line=on_line) == tmp_path / "run"
    assert [line.split(":")[0] for line in seen] == ["round 1", "round 2"]
    assert (tmp_path / "coord" / "logs" / "flwr-run.log").read_text().splitlines() == seen


def test_no_secret_key_of_the_coordinator_reaches_what_deploy_prints(tmp_path, monkeypatch):
    from server.superlink_host import CoordinatorHost

    script = _fake_flwr(tmp_path, monkeypatch)
    host = CoordinatorHost(tmp_path / "coord")
    host.init("127.0.0.1:9099")
    keys = tmp_path / "coord" / "keys"
    signing = (keys / "coordinator.key").read_text().splitlines()[1]  # the PEM body: the key itself
    tls = (tmp_path / "coord" / "tls" / "public" / "server.key").read_text().splitlines()[1]
    from federation.audit_trail import checkpoint

    raw = checkpoint.load_or_create_key(keys).hex()
    Path(f"{script}.leak").write_text(f"{signing} {tls} {raw}")
    Path(f"{script}.release").write_text("")
    seen: list[str] = []
    host.run(RunConfig(output_dir=str(tmp_path / "run")), on_line=seen.append)
    leaked = next(line for line in seen if line.startswith("a line carrying a secret"))
    assert leaked.count("[secret removed]") == 3
    printed = "\n".join(seen) + (tmp_path / "coord" / "logs" / "flwr-run.log").read_text()
    assert signing not in printed and tls not in printed and raw not in printed


def test_deploy_prints_each_line_of_the_run_as_it_comes(tmp_path, monkeypatch):
    """The deploy command hands the run a printer (it prints each line as the run delivers it), not a buffer."""
    from typer.testing import CliRunner

    import fedcredit.deploy as deploy
    from fedcredit.cli import app

    class Started(Deployment):
        def prepare(self, cfg):
            return cfg

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return None

        def run(self, cfg, timeout=900.0, on_line=None):
            on_line("round 1: global AUC 0.7000, max epsilon spent 1.000, 3 lenders trained (40.0 s)")
            sys.stdout.flush()
            assert b"round 1: global AUC" in sys.stdout.buffer.getvalue()  # printed already, the run goes on
            output = Path(cfg.output_dir)
            output.mkdir(parents=True)
            (output / "rounds.jsonl").write_text('{"seconds": 40.0}\n')
            return output

    monkeypatch.setattr(deploy, "Deployment", Started)
    result = CliRunner().invoke(
        app, ["deploy", "--deploy-dir", str(tmp_path / "d"), "--output-dir", str(tmp_path / "r")]
    )
    assert result.exit_code == 0, result.output
    assert "round 1: global AUC 0.7000" in result.output and "seconds per round in deployment: 40.0" in result.output


def test_deploy_goes_on_when_nobody_reads_its_output_any_more():
    from fedcredit.deploy import LinePrinter

    class Closed:
        writes = 0

        def write(self, text):
            Closed.writes += 1
            raise BrokenPipeError(32, "Broken pipe")

        def flush(self):
            pass

    printer = LinePrinter(Closed())
    printer("round 1: ...")  # `fedcredit deploy | head -1` after head exited: no exception stops the run
    printer("round 2: ...")
    assert printer.closed and Closed.writes == 1


def test_a_sigterm_to_deploy_stops_it_like_ctrl_c_and_its_cleanup_runs(tmp_path, monkeypatch):
    """A job scheduler's SIGTERM used to kill deploy outright, leaving the coordinator's keys and the lender folders
    it made; now it raises KeyboardInterrupt in deploy, so the deployment's __exit__ (which stops every process by id
    and removes what it made) runs, and deploy exits 130 with one line."""
    import signal

    from typer.testing import CliRunner

    import fedcredit.deploy as deploy
    from fedcredit.cli import app

    exited = []

    class Terminated(Deployment):
        def prepare(self, cfg):
            return cfg

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            exited.append(exc[0])

        def run(self, cfg, timeout=900.0, on_line=None):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the signal arrives before this ends
            raise AssertionError("SIGTERM did not stop the run")

    previous = signal.getsignal(signal.SIGTERM)
    monkeypatch.setattr(deploy, "Deployment", Terminated)
    try:
        result = CliRunner().invoke(
            app, ["deploy", "--deploy-dir", str(tmp_path / "d"), "--output-dir", str(tmp_path / "r")]
        )
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert result.exit_code == 130, result.output
    assert exited == [KeyboardInterrupt] and "interrupted: deploy stopped every process" in result.output
    assert "Traceback" not in result.output
