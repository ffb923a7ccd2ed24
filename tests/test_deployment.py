"""Flower's deployment runtime on 127.0.0.1: a SuperLink with TLS and SuperNode authentication, three
registered SuperNodes, `flwr run`; the result matches the in-process run on the same data and seed, an
unregistered SuperNode is turned away, and every process started is gone afterwards, also on failure."""

import json
import os
import stat

import psutil
import pytest
import torch

from federation.audit_trail.verify import verify_run
from federation.config import RunConfig
from federation.deploy import Deployment, DeploymentError
from federation.deploy_pki import make_node_key
from federation.runner import run

CFG = RunConfig(records=6000, lenders=3, rounds=2, seed=1)


def _gone(procs):
    for proc in procs:
        try:
            if proc.status() != psutil.STATUS_ZOMBIE:
                return False
        except psutil.NoSuchProcess:
            pass
    return True


def test_three_lenders_on_superlink_and_supernodes_match_the_simulation(tmp_path):
    started = []
    with Deployment(tmp_path / "deploy", CFG.lenders) as deployment:
        assert stat.S_IMODE(os.stat(deployment.tls["key"]).st_mode) == 0o600
        assert all(stat.S_IMODE(os.stat(key).st_mode) == 0o600 for key, _ in deployment.node_keys)
        # A SuperNode whose key was never registered is refused by the SuperLink and gives up.
        intruder = deployment.start_supernode(0, *make_node_key(tmp_path / "intruder", "intruder"), name="intruder")
        assert intruder.wait(timeout=120) != 0
        assert "Failed to activate SuperNode" in deployment.log_tail("intruder", 5000)
        listed = deployment.flwr("supernode", "ls", "fedcredit-deployment", "--format", "json")
        assert len([n for n in json.loads(listed.stdout)["nodes"] if n.get("status") == "online"]) == 3, listed.stdout
        deployed = deployment.run(CFG.replace(output_dir=str(tmp_path / "deployed")))
        started = deployment.process_tree()
    assert started and _gone(started)  # SuperLink, SuperNodes and the SuperExec processes they started
    simulated = run(CFG.replace(engine="inprocess", output_dir=str(tmp_path / "simulated")), on_round=lambda s: None)
    verify_run(deployed)
    rounds = [[json.loads(line) for line in (folder / "rounds.jsonl").read_text().splitlines()]
              for folder in (deployed, simulated)]
    assert len(rounds[0]) == len(rounds[1]) == 2
    for mine, theirs in zip(*rounds):
        assert mine["global_metrics"]["auc"] == pytest.approx(theirs["global_metrics"]["auc"], abs=1e-4)
    first, second = torch.load(deployed / "model.pt"), torch.load(simulated / "model.pt")
    assert max(float((first[k] - second[k]).abs().max()) for k in first) < 1e-4


def test_processes_are_stopped_when_the_block_fails(tmp_path):
    with pytest.raises(DeploymentError, match="did not finish"):
        with Deployment(tmp_path / "deploy", 2) as deployment:
            procs = deployment.process_tree()
            # the lenders find no data where they are told to look: the run fails at the manifests
            broken = CFG.replace(lenders=2, dataset="taiwan_default", partition="iid", data_dir=str(tmp_path / "missing"))
            deployment.run(broken.replace(output_dir=str(tmp_path / "never")), timeout=300)
    assert procs and _gone(procs)


def test_a_used_deployment_folder_is_refused(tmp_path):
    (tmp_path / "deploy").mkdir()
    (tmp_path / "deploy" / "something").write_text("x")
    with pytest.raises(DeploymentError, match="not empty"):
        Deployment(tmp_path / "deploy", 1).start()


def test_a_deployed_lender_reads_from_its_own_node_config_data_dir(tmp_path):
    from flwr.app import Context, RecordDict

    from clients.app import _data
    from federation.errors import FedCreditError

    cfg = RunConfig(dataset="taiwan_default", partition="iid", lenders=2, data_dir=str(tmp_path / "coordinator-view"))
    node = Context(run_id=1, node_id=1, node_config={"lender-id": 1, "data-dir": str(tmp_path / "lender-1-data")},
                   state=RecordDict(), run_config={})
    with pytest.raises(FedCreditError, match="lender-1-data"):
        _data(cfg, node)


def test_deploy_command_refuses_a_used_folder_and_starts_nothing(tmp_path):
    from typer.testing import CliRunner

    from federation.cli import app

    used = tmp_path / "deploy"
    used.mkdir()
    (used / "superlink.log").write_text("an earlier deployment\n")
    result = CliRunner().invoke(app, ["deploy", "--deploy-dir", str(used), "--output-dir", str(tmp_path / "run")])
    assert result.exit_code == 2 and "not empty" in result.output
    assert sorted(p.name for p in used.iterdir()) == ["superlink.log"] and not (tmp_path / "run").exists()


def test_each_supernode_gets_its_own_node_config(tmp_path):
    deployment = Deployment(tmp_path / "deploy", 2, data_dir=str(tmp_path / "shared"), data_dirs={1: str(tmp_path / "own")})
    deployment.tls, deployment.ports = {"ca": tmp_path / "ca.crt"}, {"superlink": 9999}
    commands = {}
    deployment._spawn = lambda name, command: commands.setdefault(name, command)
    for lender in (0, 1):
        deployment.start_supernode(lender, tmp_path / "k", tmp_path / "k.pub")
    configs = {name: command[command.index("--node-config") + 1] for name, command in commands.items()}
    assert configs["supernode_000"].startswith("lender-id=0 ") and f'data-dir="{tmp_path / "shared"}"' in configs["supernode_000"]
    assert configs["supernode_001"].startswith("lender-id=1 ") and f'data-dir="{tmp_path / "own"}"' in configs["supernode_001"]
    assert all("--root-certificates" in c and "--auth-supernode-private-key" in c for c in commands.values())
    assert f'keys-dir="{tmp_path / "deploy" / "lender-keys" / "lender_001"}"' in configs["supernode_001"]


def test_deploy_command_refuses_a_bad_node_data_dir(tmp_path):
    from typer.testing import CliRunner

    from federation.cli import app

    for bad, message in (("7=/tmp", "LENDER=PATH with LENDER in 0..2"), (f"1={tmp_path / 'nowhere'}", "no such folder")):
        result = CliRunner().invoke(app, ["deploy", "--node-data-dir", bad, "--deploy-dir", str(tmp_path / "d"),
                                          "--output-dir", str(tmp_path / "run")])
        assert result.exit_code == 2 and message in " ".join(result.output.split()), result.output
        assert "deploying" not in result.output and not (tmp_path / "d").exists()
