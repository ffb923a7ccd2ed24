"""Who holds which secret: only a lender's own code opens its folder; no secret is printed when something fails;
--resume acts on the folder it is given; a lender makes its own keys from the command line."""

import base64
import json
import os
import subprocess
import sys
import traceback
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedcredit.cli import app
from fedcredit.runner import run
from federation.config import RunConfig

ROOT = Path(__file__).resolve().parents[1]
_WATCH: dict = {"on": False, "opened": []}


def _hook(event, args):
    if _WATCH["on"] and event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
        frames, frame = [], sys._getframe(1)  # file names only: reading source lines would open files again
        while frame is not None:
            frames.append(frame.f_code.co_filename)
            frame = frame.f_back
        _WATCH["opened"].append((os.fsdecode(args[0]), frames[::-1]))


sys.addaudithook(_hook)  # audit hooks cannot be removed: it records only while a test switches it on


def _opener(stack) -> str:
    """Whose code opened the file: the innermost frame of the lender (clients/) or of the coordinator (server/)."""
    for filename in reversed(stack):
        path = Path(filename).resolve()
        for side in ("clients", "server"):
            if path.is_relative_to(ROOT / side):
                return side
    return "neither"


def test_only_the_lenders_own_code_opens_its_folder(tmp_path):
    _WATCH.update(on=True, opened=[])
    try:
        out = run(
            RunConfig(records=3000, lenders=3, rounds=2, engine="inprocess", output_dir=str(tmp_path / "run")),
            on_round=lambda s: None,
        )
    finally:
        _WATCH["on"] = False
    lenders_dir = Path(f"{out}-lenders").resolve()
    private = [
        (path, _opener(stack)) for path, stack in _WATCH["opened"] if Path(path).resolve().is_relative_to(lenders_dir)
    ]
    names = {Path(p).name for p, _ in private}
    assert {"identity.key", "commitment.key", "policy.toml", "spent.json"} <= names, names  # the watch works
    assert {who for _, who in private} == {"clients"}, [p for p, who in private if who != "clients"]
    coordinator_opened = [p for p, stack in _WATCH["opened"] if _opener(stack) == "server"]
    assert coordinator_opened and not [p for p in coordinator_opened if p.endswith("identity.key")]


def _key_material(folder: Path) -> list[str]:
    """Every spelling of every secret in a folder that could end up in printed output."""
    out = []
    for path in folder.rglob("*"):
        if path.is_file() and path.suffix in (".key", ".aesgcm"):
            raw = path.read_bytes()
            out += [raw.hex(), base64.b64encode(raw).decode(), repr(raw)[2:40]]
            if b"PRIVATE KEY" in raw:
                out += [line for line in raw.decode().splitlines() if line and "PRIVATE KEY" not in line]
    return [s for s in out if len(s) >= 16]


STOP_AFTER_ROUND_1 = """
import os, sys
from federation.audit_trail import checkpoint
from federation.config import RunConfig
from fedcredit.runner import run

save = checkpoint.save
def save_then_die(folder, key, run_id, state):
    save(folder, key, run_id, state)
    os._exit(9)  # the coordinator dies right after its round-1 checkpoint
checkpoint.save = save_then_die
run(RunConfig(records=3000, lenders=3, rounds=3, engine="inprocess", output_dir=sys.argv[1]), on_round=lambda s: None)
"""


@pytest.fixture
def killed(tmp_path):
    target = tmp_path / "killed"
    child = subprocess.run(
        [sys.executable, "-c", STOP_AFTER_ROUND_1, str(target)], cwd=ROOT, timeout=300, capture_output=True, check=False
    )
    assert child.returncode == 9, child.stderr.decode()[-2000:]
    return target


def test_a_crash_on_resume_prints_no_secret(killed):
    staging = next(killed.parent.glob(".killed.partial-*"))
    blob = (staging / "checkpoint.enc").read_bytes()
    (staging / "checkpoint.enc").write_bytes(blob[: len(blob) // 2])  # truncated
    result = CliRunner().invoke(app, ["run", "--resume", str(killed)])
    assert result.exit_code == 2 and result.output.count("error:") == 1, result.output
    assert "does not decrypt" in result.output and "Traceback" not in result.output
    secrets = _key_material(Path(f"{killed}-keys")) + _key_material(Path(f"{killed}-lenders"))
    assert len(secrets) > 6 and not [s for s in secrets if s in result.output]


def test_resume_acts_on_the_folder_it_is_given(killed):
    other = killed.parent / "other"
    staging = next(killed.parent.glob(".killed.partial-*"))
    staging.rename(killed.parent / f".other.partial-{staging.name.rsplit('-', 1)[1]}")
    result = CliRunner().invoke(app, ["run", "--resume", str(other)])
    assert result.exit_code == 2 and str(killed) in result.output and str(other) in " ".join(result.output.split())


def test_an_unexpected_failure_prints_no_local_variables(tmp_path, monkeypatch):
    import server.loop as loop

    def broken(*args, **kwargs):
        checkpoint_key = b"\x13" * 32  # noqa: F841  (a secret in scope when it fails)
        raise ZeroDivisionError("unexpected")

    monkeypatch.setattr(loop, "collect_finals", broken)
    result = CliRunner().invoke(
        app,
        [
            "run",
            "--records",
            "3000",
            "--lenders",
            "3",
            "--rounds",
            "1",
            "--engine",
            "inprocess",
            "--output-dir",
            str(tmp_path / "run"),
        ],
    )
    assert result.exit_code != 0
    shown = (
        result.output + "".join(traceback.format_exception(result.exc_info[1])) if result.exc_info else result.output
    )
    assert "1313131313131313" not in shown and "\\x13\\x13" not in result.output
    assert not (tmp_path / "run").exists() and not (tmp_path / "run-lenders").exists()


def test_a_lender_makes_its_own_keys_and_the_regulator_builds_the_registry(tmp_path, fixture_dir):
    data = fixture_dir("german_credit")
    runner = CliRunner()
    made = runner.invoke(
        app,
        [
            "lender",
            "init",
            "--lender-dir",
            str(tmp_path / "bank"),
            "--lender",
            "0",
            "--max-epsilon",
            "2",
            "--dataset",
            "german_credit",
            "--data-dir",
            str(data),
        ],
    )
    assert made.exit_code == 0, made.output
    public = (tmp_path / "bank" / "identity.pub").read_text().strip()
    assert public in made.output and "fingerprint" in made.output
    assert "PRIVATE" not in made.output and oct((tmp_path / "bank" / "identity.key").stat().st_mode)[-3:] == "600"
    again = runner.invoke(
        app, ["lender", "init", "--lender-dir", str(tmp_path / "bank"), "--lender", "0", "--max-epsilon", "2"]
    )
    assert again.exit_code == 2 and "already holds an identity key" in again.output
    from federation.audit_trail.keys import load_or_create, public_hex

    coordinator = public_hex(load_or_create(tmp_path / "coordinator", "coordinator"))
    built = runner.invoke(
        app,
        [
            "registry",
            "build",
            "-o",
            str(tmp_path / "registry.json"),
            "--coordinator",
            coordinator,
            "--lender",
            f"0={tmp_path / 'bank' / 'identity.pub'}",
        ],
    )
    assert built.exit_code == 0, built.output
    assert json.loads((tmp_path / "registry.json").read_text())["lenders"] == {"0": public}
    twice = runner.invoke(
        app,
        [
            "registry",
            "build",
            "-o",
            str(tmp_path / "r2.json"),
            "--coordinator",
            coordinator,
            "--lender",
            f"0={public}",
            "--lender",
            f"1={public}",
        ],
    )
    assert twice.exit_code == 2 and "share one key" in twice.output and not (tmp_path / "r2.json").exists()


def test_a_lenders_policy_and_key_are_parsed_once_but_an_edit_takes_effect_at_once(tmp_path):
    """The lender's policy and identity key are parsed once per content (federation/lender_policy.py,
    federation/audit_trail/keys.py), and read at every message: an edit that keeps the file's size and times (a
    lender lowering its epsilon limit from 3 to 2) is what the next message sees, and so is a new key."""
    from clients.home import LenderHome, init_lender
    from federation.lender_policy import LenderPolicy

    folder = tmp_path / "lender"
    init_lender(folder, LenderPolicy(lender=0, max_epsilon=3.0, data={"dataset": "synthetic"}))
    policy_file = folder / "policy.toml"
    assert LenderHome(folder).policy.max_epsilon == 3.0
    first = LenderHome(folder).policy
    assert LenderHome(folder).policy is first  # the same content: not parsed again
    times = policy_file.stat()
    text = policy_file.read_text()
    assert "max_epsilon = 3.0" in text
    policy_file.write_text(text.replace("max_epsilon = 3.0", "max_epsilon = 2.0"))
    os.utime(policy_file, ns=(times.st_atime_ns, times.st_mtime_ns))
    assert policy_file.stat().st_size == times.st_size
    assert LenderHome(folder).policy.max_epsilon == 2.0

    key_before = LenderHome(folder).public_hex
    key_file = folder / "identity.key"
    key_file.unlink()
    (folder / "identity.pub").unlink()
    assert LenderHome(folder).public_hex != key_before  # a new key made and read, not the one parsed before
    assert LenderHome(folder).public_hex == LenderHome(folder).public_hex
