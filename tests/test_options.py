"""Options from one source: RunConfig's fields define the `fedcredit run` options, the Flower app config in
pyproject.toml and the dataset names every other list is checked against."""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path
from typing import Any

import click
import pytest
import typer
from typer.testing import CliRunner

from benchmarks.constants import BENCH_DATASETS, CONSTANTS, SPLITS
from fedcredit import cli
from federation.card import builtin_card
from federation.config import DATASETS, LAUNCHER_ONLY, OPTION_GROUPS, PARTITIONS, RunConfig
from federation.data.loaders import LOADERS
from federation.errors import ConfigError

runner = CliRunner()
FIELDS = [f.name for f in dataclasses.fields(RunConfig)]
PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"


def _run_params() -> list[click.Parameter]:
    command = typer.main.get_command(cli.app)
    assert isinstance(command, click.Group)
    params = command.commands["run"].params
    return [p for p in params if p.name not in cli.RUN_NOT_FIELDS and p.name != "help"]


def _field_value(param: click.Parameter, value: Any) -> Any:
    """What the option's value becomes in RunConfig."""
    assert param.name is not None
    return cli.RUN_CONVERTED[param.name](value) if param.name in cli.RUN_CONVERTED else value


def _captured_config(monkeypatch, args: list[str]) -> RunConfig:
    """The RunConfig `fedcredit run ARGS` hands the engine (not validated, never run)."""
    import fedcredit.runner

    seen: list[RunConfig] = []

    def engine(cfg: RunConfig, **_: Any) -> Path:
        seen.append(cfg)
        raise ConfigError("captured")

    monkeypatch.setattr(fedcredit.runner, "run", engine)
    monkeypatch.setattr(RunConfig, "validated", lambda self: self)  # each option alone, whatever the others say
    result = runner.invoke(cli.app, ["run", *args])
    assert result.exit_code == 2 and "captured" in result.output, result.output
    return seen[0]


def _changed(cfg: RunConfig) -> dict[str, Any]:
    default = RunConfig()
    return {
        f.name: getattr(cfg, f.name)
        for f in dataclasses.fields(cfg)
        if getattr(cfg, f.name) != getattr(default, f.name)
    }


def _other_value(param: click.Parameter) -> tuple[list[str], Any]:
    """Command-line words giving `param` a value other than its default, and that value."""
    if isinstance(param, click.Option) and param.is_flag:  # --x, or the --no-x of a pair whose default is on
        return [param.secondary_opts[0] if param.default else param.opts[0]], not param.default
    if isinstance(param.type, click.Choice):
        value: Any = next(c for c in param.type.choices if c != param.default)
    elif param.name == "epsilon_overrides":
        value = "0:2"
    elif isinstance(param.default, int):
        value = param.default + 1
    elif isinstance(param.default, float):
        value = param.default + 0.25
    else:
        value = "elsewhere"
    return [param.opts[0], str(value)], value


def test_each_run_option_names_one_field_and_no_two_the_same():
    fields = [p.name or "" for p in _run_params()]
    assert set(fields) <= set(FIELDS), set(fields) - set(FIELDS)
    assert len(fields) == len(set(fields)), sorted(f for f in fields if fields.count(f) > 1)


@pytest.mark.parametrize("param", _run_params(), ids=lambda p: p.opts[0])
def test_each_run_option_sets_exactly_its_field(monkeypatch, param):
    words, value = _other_value(param)
    cfg = _captured_config(monkeypatch, words)
    assert _changed(cfg) == {param.name: _field_value(param, value)}


def test_run_option_defaults_are_runconfig_defaults():
    default = RunConfig()
    for param in _run_params():
        name = param.name or ""
        assert _field_value(param, param.default) == getattr(default, name), param.opts[0]


def test_run_option_help_and_choices_come_from_runconfig():
    for param in _run_params():
        name = param.name or ""
        choices = RunConfig.choices_for(name)
        shown = tuple(param.type.choices) if isinstance(param.type, click.Choice) else ()
        assert shown == choices, param.opts[0]
        if param.name not in cli.RUN_CONVERTED:
            assert isinstance(param, click.Option) and param.help == RunConfig.help_for(name), param.opts[0]


def test_every_field_has_help():
    for name in FIELDS:
        assert RunConfig.help_for(name).strip(), name


def _set_value(name: str) -> tuple[str, Any]:
    default = RunConfig.field_of(name).default
    if isinstance(default, bool):
        return str(not default).lower(), not default
    if isinstance(default, int):
        return str(default + 1), default + 1
    if isinstance(default, float):
        return str(default + 0.25), default + 0.25
    if isinstance(default, tuple):
        return "0:2", ((0, 2.0),)
    return "ab" * 32, "ab" * 32


def test_every_field_without_an_option_is_reachable_with_set(monkeypatch):
    explicit = {p.name or "" for p in _run_params()}
    rest = [name for name in FIELDS if name not in explicit]
    assert rest, "every field has an option: --set would then have nothing left to set"
    for name in rest:
        text, value = _set_value(name)
        cfg = _captured_config(monkeypatch, ["--set", f"{name.replace('_', '-')}={text}"])
        assert _changed(cfg) == {name: value}, name


def test_set_refuses_a_key_that_has_an_option(tmp_path):
    result = runner.invoke(cli.app, ["run", "--output-dir", str(tmp_path / "run"), "--set", "rounds=3"])
    assert result.exit_code == 2
    assert [line for line in result.output.splitlines() if line.startswith("error:")] == [
        "error: --set rounds: use --rounds (the option of its own)"
    ]
    assert not (tmp_path / "run").exists()


def test_pyproject_flower_app_config_is_runconfig_defaults():
    table = tomllib.loads(PYPROJECT.read_text())["tool"]["flwr"]["app"]["config"]
    launcher_only = {name.replace("_", "-") for name in LAUNCHER_ONLY}
    record = {k: v for k, v in RunConfig().to_record().items() if k not in launcher_only}
    assert list(table) == list(record)  # same keys, same order as the fields
    for key, value in record.items():
        assert table[key] == value and type(table[key]) is type(value), key
    assert RunConfig.from_record(table) == RunConfig()


def test_one_list_of_datasets():
    assert set(DATASETS) == {"synthetic", *LOADERS}  # synthetic is generated, every other one loaded
    for name in DATASETS:
        if name != "csv":
            assert builtin_card(name).name, name  # a built-in dataset has its card
    assert tuple(d for d in DATASETS if d != "csv") == BENCH_DATASETS
    assert set(CONSTANTS) == set(BENCH_DATASETS)
    assert set(SPLITS) == set(PARTITIONS) - {"natural"}


# ---- one name for each option: the CLI, the run config keys and RunConfig's fields ----------------------------


def _commands(group: click.Group, path: str = "fedcredit") -> list[tuple[str, click.Command]]:
    out: list[tuple[str, click.Command]] = []
    for name, command in group.commands.items():
        out += (
            _commands(command, f"{path} {name}") if isinstance(command, click.Group) else [(f"{path} {name}", command)]
        )
    return out


def name_disagreements(group: click.Group) -> list[str]:
    """Every option, in every command, that sets a RunConfig field under a name other than the field's run config
    key (`--` + the key; `--key/--no-key` for a flag pair), or that takes a field's name (an old one included) for
    something else. The expected names are derived from the fields, the same keys as pyproject.toml's."""
    flag_of = {f.name: "--" + f.name.replace("_", "-") for f in dataclasses.fields(RunConfig)}
    field_of = {flag: name for name, flag in flag_of.items()}
    problems = []
    for path, command in _commands(group):
        old_names = getattr(command, "old_names", {})
        for param in command.params:
            if not isinstance(param, click.Option):
                continue
            if param.name in flag_of:
                flag = flag_of[param.name]
                expected = ([flag], ["--no-" + flag[2:]] if param.secondary_opts else [])
                if (param.opts, param.secondary_opts) != expected:
                    problems.append(f"{path}: field {param.name} is {flag}, not {param.opts + param.secondary_opts}")
            for flag in [
                *param.opts,
                *param.secondary_opts,
                *(old for old, new in old_names.items() if new in param.opts),
            ]:
                owner = field_of.get(flag) or field_of.get(flag.replace("--no-", "--", 1))
                if owner is not None and owner != param.name:
                    problems.append(f"{path}: {flag} is field {owner}'s name, used for {param.name}")
    return problems


def test_every_option_has_the_name_of_its_run_config_key():
    command = typer.main.get_command(cli.app)
    assert isinstance(command, click.Group)
    assert name_disagreements(command) == []


def test_a_misnamed_option_is_caught():
    """The check above fails on each kind of disagreement (its mutation check, kept as a test)."""
    app = typer.Typer()

    @app.command("renamed")
    def renamed(csv_path: str = typer.Option("", "--csv")) -> None: ...

    @app.command("pair")
    def pair(dp: bool = typer.Option(True, "--private/--no-private")) -> None: ...

    @app.command("reused", cls=cli.renamed({"--epsilon": "--epsilons"}))
    def reused(records: int = typer.Option(0, "--records"), epsilons: str = typer.Option("")) -> None: ...

    @app.command("other")
    def other(records_per_lender: int = typer.Option(0, "--records")) -> None: ...

    command = typer.main.get_command(app)
    assert isinstance(command, click.Group)
    problems = name_disagreements(command)
    assert any("renamed: field csv_path is --csv-path" in p for p in problems), problems
    assert any("pair: field dp is --dp" in p for p in problems), problems
    assert any("reused: --epsilon is field epsilon's name, used for epsilons" in p for p in problems), problems
    assert any("other: --records is field records's name, used for records_per_lender" in p for p in problems)
    assert len(problems) == 4, problems


@pytest.mark.parametrize(
    "old, new, value, field",
    [
        ("--budget", "--epsilon-overrides", "0:2", "epsilon_overrides"),
        ("--csv", "--csv-path", "x.csv", "csv_path"),
        ("--card", "--card-path", "x.toml", "card_path"),
    ],
)
def test_an_old_option_name_still_sets_its_field_and_says_the_new_one(monkeypatch, old, new, value, field):
    renamed = _captured_config(monkeypatch, [new, value])
    assert _captured_config(monkeypatch, [f"{old}={value}"]) == renamed == _captured_config(monkeypatch, [old, value])
    assert set(_changed(renamed)) == {field}
    result = runner.invoke(cli.app, ["run", old, value, "--epsilon", "-1"])
    assert f"note: {old} is now {new}" in result.stderr
    help_text = runner.invoke(cli.app, ["run", "--help"], env={"COLUMNS": "200"}).output
    assert new in help_text and f"{old} " not in help_text  # the old name is hidden


def test_every_field_is_in_one_help_panel_and_run_help_shows_them():
    grouped = [name for names in OPTION_GROUPS.values() for name in names]
    assert sorted(grouped) == sorted(FIELDS)  # each field in exactly one group
    for param in _run_params():
        assert getattr(param, "rich_help_panel", None) == RunConfig.group_for(param.name or ""), param.opts[0]
    help_text = runner.invoke(cli.app, ["run", "--help"], env={"COLUMNS": "120"}).output
    for group in OPTION_GROUPS:
        assert f"─ {group} ─" in help_text, group


def test_version_names_fedcredit_and_flower():
    from importlib.metadata import version

    from federation import __version__

    result = runner.invoke(cli.app, ["--version"])
    assert result.exit_code == 0
    assert result.output == f"fedcredit {__version__} (flwr {version('flwr')})\n"


def test_shell_completion_is_offered_and_completes_choices():
    assert "--install-completion" in runner.invoke(cli.app, ["--help"], env={"COLUMNS": "120"}).output
    command = typer.main.get_command(cli.app)
    assert isinstance(command, click.Group)
    ctx = click.Context(command.commands["run"])
    strategy = next(p for p in command.commands["run"].params if p.name == "strategy")
    assert [c.value for c in strategy.shell_complete(ctx, "fed")] == list(RunConfig.choices_for("strategy"))
    accountants = next(p for p in command.commands["plan"].params if p.name == "accountants")
    assert [c.value for c in accountants.shell_complete(ctx, "rdp,")] == ["rdp,prv"]


def test_a_messages_run_config_is_built_once_and_still_checked_every_time():
    """federation.messages.run_config_from caches the RunConfig of each distinct request: the same value as
    RunConfig.from_record, a refused request refused again on every message, and a list value refused by name."""
    from flwr.app import ConfigRecord

    from federation.messages import run_config_from

    cfg = RunConfig(lenders=4, rounds=3, epsilon=2.0)
    record = {**cfg.to_record(), "server-round": 2}
    assert run_config_from(ConfigRecord(record)) == cfg
    assert run_config_from(ConfigRecord(record)) is run_config_from(ConfigRecord(record))
    bad = {**record, "epsilon": -1.0}
    for _ in range(2):
        with pytest.raises(ConfigError):
            run_config_from(ConfigRecord(bad))
    with pytest.raises(ConfigError, match="rounds"):
        run_config_from({**record, "rounds": [1, 2]})
