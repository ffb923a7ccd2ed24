"""The `fedcredit` command line (typer + rich)."""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, NoReturn

import click
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from typer.core import TyperCommand

from benchmarks.constants import BENCH_DATASETS
from benchmarks.constants import METHODS as BENCH_METHODS
from fedcredit.typer_compat import keep_argument_help
from federation.config import (
    ACCOUNTANTS,
    DATASETS,
    DP_LEVELS,
    MODELS,
    RunConfig,
    parse_epsilon_overrides,
)
from federation.errors import ConfigError, FedCreditError

keep_argument_help()  # argument help in --help (why: fedcredit/typer_compat.py)
# No pretty tracebacks with local variables: an unexpected failure must never print a key that was in scope.

app = typer.Typer(
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    pretty_exceptions_show_locals=False,
    help="Privacy-preserving federated credit scoring: lenders train one model, raw data never pooled.",
)
console = Console()
err = Console(stderr=True)


DEFAULTS = RunConfig()


class Listed(click.Choice):
    """Shows a choice field's values in --help and offers them to shell completion. It lets any value through:
    RunConfig.validated() is the one check (an error line naming the value and the choices, exit 2)."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        return value


def _complete_list(choices: tuple[str, ...]) -> Callable[[click.Context, click.Parameter, str], list[str]]:
    """Shell completion of a comma-separated list of `choices`: the next value, after those already typed."""

    def complete(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[str]:
        done, _, last = incomplete.rpartition(",")
        prefix = done + "," if done else ""
        return [prefix + c for c in choices if c.startswith(last) and c not in done.split(",")]

    return complete


def _option(name: str, *flags: str, help: str | None = None, default: Any = None, shared: bool = False) -> Any:
    """The typer option of RunConfig field `name`, named after it (`--name-with-hyphens`: the run config key): its
    default, help text, choices and help panel come from the field (`help` and `default` where a command means
    something else by it; `flags` only for a flag pair `--x/--no-x`; `shared`: no default, for an Annotated
    option whose default each command's signature gives)."""
    choices = RunConfig.choices_for(name)
    return typer.Option(
        ... if shared else RunConfig.field_of(name).default if default is None else default,
        *flags,
        help=help or RunConfig.help_for(name),
        click_type=Listed(choices) if choices else None,
        rich_help_panel=RunConfig.group_for(name),
    )


# Options that run, sweep and audit share, declared once.
DatasetOption = Annotated[str, _option("dataset", shared=True)]
DataDirOption = Annotated[str, _option("data_dir", shared=True)]
LendersOption = Annotated[int, _option("lenders", shared=True)]
PartitionOption = Annotated[str, _option("partition", shared=True)]
AlphaOption = Annotated[float, _option("alpha", shared=True)]
RoundsOption = Annotated[int, _option("rounds", shared=True)]
SettingsOption = Annotated[
    list[str],
    typer.Option(
        "--set", help="Any other run option as KEY=VALUE (e.g. --set batch-size=128).", rich_help_panel="Other"
    ),
]
FlowerClientAppOption = Annotated[
    bool,
    typer.Option(
        "--flower-clientapp",
        help="Answer each message in a ClientApp process Flower starts for it, running the app bundle the "
        "coordinator ships, instead of the lender's own long-lived worker (slower: for comparison).",
    ),
]

# The `run` options whose value is not the field's own: epsilon_overrides is parsed from its text ('0:1,3:8').
# Every `run` option is named after the RunConfig field it sets (tests/test_options.py).
RUN_CONVERTED: dict[str, Callable[[Any], Any]] = {"epsilon_overrides": parse_epsilon_overrides}
RUN_NOT_FIELDS = ("resume", "settings", "json_out", "lender_processes")  # `run` options that are no RunConfig field


def renamed(aliases: dict[str, str]) -> type[TyperCommand]:
    """A command that still takes the old names of its renamed options, hidden from --help: each is replaced by
    its new name before parsing, with a note on stderr naming the new one. `aliases`: old flag -> new flag."""

    class WithOldNames(TyperCommand):
        old_names = aliases

        def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
            words = []
            for i, word in enumerate(args):
                if word == "--":  # what follows is no option
                    words += args[i:]
                    break
                flag, sep, value = word.partition("=")
                if flag in aliases:
                    err.print(f"note: {flag} is now {aliases[flag]} (the old name will go)", highlight=False)
                    word = aliases[flag] + sep + value
                words.append(word)
            return super().parse_args(ctx, words)

    return WithOldNames


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        from federation import __version__

        typer.echo(f"fedcredit {__version__} (flwr {version('flwr')})")
        raise typer.Exit()


@app.callback()
def _commands(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print fedcredit's and Flower's versions and exit."
    ),
) -> None:
    """Privacy-preserving federated credit scoring: lenders train one model, raw data never pooled."""


def _fail(message: str) -> NoReturn:
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)  # a path may hold "[/]"
    raise typer.Exit(code=2)


def _interrupted(what: str) -> NoReturn:
    """Ctrl-C: one line, exit code 130 (128 + SIGINT), as a shell reports it."""
    err.print(f"interrupted: {what}", highlight=False, soft_wrap=True, markup=False)  # it may name a path
    runner = sys.modules.get("fedcredit.runner")  # not loaded: no run was interrupted
    if runner is not None:
        runner.finish_interrupt()  # an interrupted simulation run ends here, past any thread Flower left waiting
    raise typer.Exit(code=130)


def _choice(value: str, allowed: tuple[str, ...], option: str) -> str:
    if value not in allowed:
        _fail(f"unknown {option} '{value}' (choose from {', '.join(allowed)})")
    return value


def _run_config(ctx: click.Context) -> RunConfig:
    """The RunConfig of `fedcredit run`'s options: each explicit option sets its field, --set KEY=VALUE any other."""
    values: dict[str, Any] = {}
    flags: dict[str, str] = {}
    for param in ctx.command.params:
        if param.name is None or param.name in RUN_NOT_FIELDS:
            continue
        value = ctx.params[param.name]
        values[param.name] = RUN_CONVERTED[param.name](value) if param.name in RUN_CONVERTED else value
        flags[param.name] = param.opts[0]
    settings = _settings(ctx.params["settings"])
    for key in settings:
        if key.replace("-", "_") in flags:
            raise ConfigError(f"--set {key}: use {flags[key.replace('-', '_')]} (the option of its own)")
    cfg = RunConfig(**values)
    return RunConfig.from_record({**cfg.to_record(), **settings}) if settings else cfg.validated()


RUN_OLD_NAMES = {"--budget": "--epsilon-overrides", "--csv": "--csv-path", "--card": "--card-path"}


@app.command(cls=renamed(RUN_OLD_NAMES))
def run(
    ctx: typer.Context,
    dataset: str = _option("dataset"),
    data_dir: str = _option("data_dir"),
    csv_path: str = _option("csv_path"),
    card_path: str = _option("card_path"),
    records: int = _option("records"),
    lenders: int = _option("lenders"),
    lenders_per_round: int = _option("lenders_per_round"),
    partition: str = _option("partition"),
    alpha: float = _option("alpha"),
    rounds: int = _option("rounds"),
    local_epochs: int = _option("local_epochs"),
    batch_size: int = _option("batch_size"),
    learning_rate: float = _option("learning_rate"),
    optimizer: str = _option("optimizer"),
    weight_decay: float = _option("weight_decay"),
    lr_schedule: str = _option("lr_schedule"),
    model: str = _option("model"),
    gbdt_trees_per_round: int = _option("gbdt_trees_per_round"),
    gbdt_depth: int = _option("gbdt_depth"),
    gbdt_bins: int = _option("gbdt_bins"),
    gbdt_learning_rate: float = _option("gbdt_learning_rate"),
    gbdt_lambda: float = _option("gbdt_lambda"),
    gbdt_leaf_clip: float = _option("gbdt_leaf_clip"),
    gbdt_split_candidates: str = _option("gbdt_split_candidates"),
    gbdt_count_share: float = _option("gbdt_count_share"),
    gbdt_min_fraction: float = _option("gbdt_min_fraction"),
    strategy: str = _option("strategy"),
    proximal_mu: float = _option("proximal_mu"),
    trim_fraction: float = _option("trim_fraction"),
    max_update_norm: float = _option("max_update_norm"),
    fail_rate: float = _option("fail_rate"),
    dp: bool = _option("dp", "--dp/--no-dp"),
    epsilon: float = _option("epsilon"),
    epsilon_overrides: str = _option("epsilon_overrides", default=""),
    delta: float = _option("delta"),
    clip_norm: float = _option("clip_norm"),
    accountant: str = _option("accountant"),
    noise_multiplier: float = _option("noise_multiplier"),
    dp_level: str = _option("dp_level"),
    lender_sample_rate: float = _option("lender_sample_rate"),
    reproducible_noise_not_private: bool = _option("reproducible_noise_not_private"),
    secure_aggregation: bool = _option("secure_aggregation"),
    seed: int = _option("seed"),
    output_dir: str = _option("output_dir"),
    keys_dir: str = _option("keys_dir"),
    engine: str = _option("engine"),
    lender_processes: int = typer.Option(
        1,
        help="With the inprocess engine: the lenders work in this many processes in parallel (0: one per CPU). The "
        "run's results do not depend on it.",
        rich_help_panel="Run",
    ),
    settings: Annotated[
        list[str],
        typer.Option(
            "--set",
            help="A run configuration key without an option of its own, as KEY=VALUE (e.g. --set hidden=64, "
            "--set server-learning-rate=0.05); the keys are those of pyproject.toml's Flower app config.",
            rich_help_panel="Other",
        ),
    ] = [],
    resume: Path | None = typer.Option(
        None,
        help="Finish the killed run whose folder was RUN_DIR, from its last "
        "checkpoint (its configuration comes from its ledger; other options are ignored).",
        rich_help_panel="Other",
    ),
    json_out: bool = typer.Option(
        False,
        "--json",
        help="Print the run's summary as one JSON object on stdout (run folder, report, final metrics, one row "
        "per lender); the progress lines go to stderr.",
        rich_help_panel="Output",
    ),
) -> None:
    """Train a shared credit model across lenders with Flower and differential privacy."""
    from fedcredit.runner import run as run_federation
    from server.app import progress_line

    human = err if json_out else console  # with --json, stdout holds the JSON object alone

    def on_round(summary) -> None:
        human.print(progress_line(summary), highlight=False)

    try:
        if resume is not None:
            from fedcredit.runner import resume_config

            cfg = resume_config(resume)
            human.print(f"fedcredit: resuming {resume}", highlight=False)
        else:
            cfg = _run_config(ctx)
            privacy = (
                f"DP epsilon {cfg.epsilon:g} per "
                f"{'lender' if cfg.dp_level == 'record' else 'federation (lender-level)'}"
                if cfg.dp
                else "no DP"
            )
            human.print(
                f"fedcredit: {cfg.lenders} lenders, {cfg.dataset} ({cfg.partition}), {cfg.rounds} rounds, "
                f"{cfg.strategy}, {cfg.model}, {privacy}, engine {cfg.engine}"
                + (", secure aggregation" if cfg.secure_aggregation else ""),
                highlight=False,
            )
        _quiet_libraries()
        # A SIGTERM (a job scheduler, `timeout`) stops a run like Ctrl-C: it killed the run outright, leaving its keys,
        # its lenders' folders and registry behind (tests/test_redteam_procs.py).
        _stop_on_term()
        path = run_federation(cfg, on_round=on_round, resume=resume is not None, lender_processes=lender_processes)
    except KeyboardInterrupt as exc:  # fedcredit.runner.run has cleaned up, and says what it left (RunInterrupted)
        _interrupted(getattr(exc, "what", "nothing was written"))  # before run() began: nothing was
    except FedCreditError as exc:
        _fail(str(exc))
    except RuntimeError as exc:  # Flower wraps errors raised in the ServerApp thread
        cause = exc.__cause__ or exc
        _fail(str(cause) if isinstance(cause, FedCreditError) else f"run failed: {exc}")
    _print_summary(path, json_out)


def _floats(text: str, option: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        _fail(f"{option} expects comma-separated numbers, got '{text}'")
        raise


@app.command()
def plan(
    records_per_lender: int = typer.Option(None, help="Training records of each lender (record-level DP)."),
    batch_size: int = _option("batch_size", help="Expected batch size (sample rate q = 1/ceil(n/B))."),
    local_epochs: int = _option("local_epochs"),
    rounds: int = _option("rounds"),
    delta: float = _option(
        "delta",
        help="DP delta; 0 means 1/N^1.1, N = records per lender (or lenders at lender level) rounded up to a "
        "power of two.",
    ),
    epsilons: str = typer.Option(
        "", help="Target epsilons, comma-separated (e.g. 0.5,1,2,4,8): prints the sigma for each."
    ),
    sigmas: str = typer.Option(
        "", help="Noise multipliers, comma-separated: prints the epsilon each gives (the reverse)."
    ),
    accountants: str = typer.Option(
        "rdp,prv",
        help=f"Accountants to report, comma-separated ({', '.join(ACCOUNTANTS)}).",
        shell_complete=_complete_list(ACCOUNTANTS),
    ),
    calibrate_with: str = typer.Option(
        "rdp", help="Accountant used to calibrate sigma to a target.", click_type=Listed(ACCOUNTANTS)
    ),
    dp_level: str = _option("dp_level", help="DP granularity."),
    lenders: int = typer.Option(None, help="Number of lenders (lender-level DP).", rich_help_panel="Federation"),
    lender_sample_rate: float = _option("lender_sample_rate"),
    model: str = _option(
        "model",
        help="The model: logreg and mlp train with DP-SGD (records, batch size, epochs); gbdt releases its leaf "
        "sums once a round over every record (rate 1, one step a round; batch size and epochs do not apply).",
    ),
    gbdt_count_share: float = typer.Option(
        0.0,
        help="gbdt with --gbdt-split-candidates noisy_quantiles: the share of the budget round 1's count release "
        "takes (0: no count release). Prints both noise multipliers.",
    ),
    json_out: bool = typer.Option(False, "--json", help="Print JSON rows instead of a table."),
) -> None:
    """Plan a privacy budget: noise multiplier for each target epsilon, and epsilon for each sigma."""
    from federation.privacy import planner
    from federation.privacy.limits import check_delta, check_epsilon

    _choice(dp_level, DP_LEVELS, "dp-level")
    _choice(model, MODELS, "model")
    if model == "gbdt" and dp_level != "record":
        _fail("model gbdt protects records (each lender noises its own leaf sums); plan it with dp-level 'record'")
    accountant_list = [a.strip() for a in accountants.split(",") if a.strip()]
    for name in [*accountant_list, calibrate_with]:
        _choice(name, ACCOUNTANTS, "accountant")
    targets, sigma_list = _floats(epsilons, "--epsilons"), _floats(sigmas, "--sigmas")
    if not targets and not sigma_list:
        _fail("give target epsilons (--epsilons 1,3,8) or noise multipliers (--sigmas 0.8,1.2)")
    for name, value, low in (("batch-size", batch_size, 1), ("local-epochs", local_epochs, 1), ("rounds", rounds, 1)):
        if value < low:
            _fail(f"{name} must be at least {low}, got {value}")
    if not 0 <= delta < 1:
        _fail(f"delta must be in [0, 1), got {delta}")
    if dp_level == "record":
        if not records_per_lender or records_per_lender < 1:
            _fail("record-level planning needs --records-per-lender N (training records of each lender)")
        count, who, unit = records_per_lender, "a lender", "training records"  # the privacy unit is a record
    else:
        if not lenders or lenders < 1:
            _fail("lender-level planning needs --lenders N")
        if not 0 < lender_sample_rate <= 1:
            _fail(f"lender-sample-rate must be in (0, 1], got {lender_sample_rate}")
        count, who, unit = lenders, "the federation (lender-level DP)", "lenders"  # ... or a lender
    try:  # a plan is refused where a run would be: the same limits on delta and on the epsilons
        check_delta(count, delta, who, unit=unit)
        for target in targets:
            check_epsilon(target, "target epsilon")
    except FedCreditError as exc:
        _fail(str(exc))
    if model == "gbdt":
        mech = planner.boosting(records_per_lender, rounds, delta)
    elif dp_level == "record":
        mech = planner.record_level(records_per_lender, batch_size, local_epochs, rounds, delta)
    else:
        mech = planner.lender_level(lenders, lender_sample_rate, rounds, delta)
    if gbdt_count_share and not (model == "gbdt" and 0 < gbdt_count_share < 1):
        _fail(
            f"gbdt-count-share plans a gbdt count release: give --model gbdt and a share in (0, 1), got {gbdt_count_share}"
        )
    try:
        if gbdt_count_share:
            rows = planner.boosting_with_counts(
                mech, gbdt_count_share, targets, sigma_list, accountant_list, calibrate_with
            )
        else:
            rows = planner.plan(mech, targets, sigma_list, accountant_list, calibrate_with)
    except ValueError as exc:
        _fail(str(exc))
    if json_out:
        typer.echo(json.dumps(rows, indent=2))
        return
    table = Table(
        title=f"{dp_level}-level DP{' (gbdt leaf sums)' if model == 'gbdt' else ''}: q={mech.sample_rate:.5g}, {mech.total_steps} steps "
        f"({mech.steps_per_round} per round x {mech.rounds} rounds), delta={mech.delta:.3g}"
    )
    table.add_column("target epsilon", justify="right")
    table.add_column("noise multiplier", justify="right")
    if gbdt_count_share:
        table.add_column("round 1 (counts) noise multiplier", justify="right")
    for name in accountant_list:
        table.add_column(f"epsilon ({name})", justify="right")
    for row in rows:
        shown = f"{row['target_epsilon']:g}" if row["target_epsilon"] is not None else "-"
        counts = [f"{row['count_noise_multiplier']:.4f}"] if gbdt_count_share else []
        table.add_row(
            shown, f"{row['noise_multiplier']:.4f}", *counts, *[f"{row[f'epsilon_{n}']:.4f}" for n in accountant_list]
        )
    console.print(table)


def _command(name: str, **options) -> str:
    """The command line that reproduces this invocation (written next to the results it made)."""
    import shlex

    parts = ["fedcredit", name]
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        if key in ("settings", "gbdt_settings"):
            for item in value:
                parts += ["--set" if key == "settings" else "--gbdt-set", shlex.quote(item)]
        elif value is True:
            parts.append(flag)
        elif value not in (False, "", None):
            parts += [flag, shlex.quote(str(value))]
    return " ".join(parts)


def _settings(settings: list[str], option: str = "--set") -> dict[str, str]:
    """--set KEY=VALUE pairs, keys as written (run configuration keys, hyphenated)."""
    out = {}
    for item in settings:
        if "=" not in item:
            _fail(f"{option} expects KEY=VALUE, got '{item}'")
        key, value = item.split("=", 1)
        out[key.strip()] = value.strip()
    return out


def _config_with(base: RunConfig, settings: list[str], option: str = "--set") -> RunConfig:
    """Apply --set KEY=VALUE pairs (any run configuration key) to `base`."""
    return RunConfig.from_record({**base.to_record(), **_settings(settings, option)})


# What both lines of a frontier must share: the lenders, their data and the seed (the sweep sets it).
FRONTIER_SHARED = ("dataset", "data_dir", "lenders", "partition", "alpha", "records", "seed")


def _gbdt_line(base: RunConfig, gbdt_settings: list[str]) -> RunConfig:
    """The frontier's gbdt line: `base` as a gbdt run with its own rounds (the gbdt defaults') and fedavg (the only
    strategy gbdt takes: it sums leaf sums, not model updates), then --gbdt-set, validated once with all of it."""
    from federation.gbdt.boosting import GbdtParams

    if base.model == "gbdt":
        _fail("--gbdt adds a gbdt line beside the federation's own model, and --set model=gbdt is that model")
    own = _settings(gbdt_settings, "--gbdt-set")
    for key in own:
        if key.replace("-", "_") in FRONTIER_SHARED:
            _fail(f"--gbdt-set cannot change '{key}': both lines of a frontier run on the same lenders and data")
    gbdt_cfg = RunConfig.from_record(
        {**base.to_record(), "model": "gbdt", "rounds": GbdtParams().rounds, "strategy": "fedavg", **own}
    )
    if gbdt_cfg.model != "gbdt":
        _fail(f"--gbdt-set cannot change the gbdt line's model (got model={gbdt_cfg.model})")
    return gbdt_cfg


@app.command()
def sweep(
    dataset: DatasetOption = DEFAULTS.dataset,
    data_dir: DataDirOption = DEFAULTS.data_dir,
    lenders: LendersOption = DEFAULTS.lenders,
    partition: PartitionOption = DEFAULTS.partition,
    alpha: AlphaOption = DEFAULTS.alpha,
    rounds: RoundsOption = DEFAULTS.rounds,
    epsilons: str = typer.Option("0.5,1,2,4,8,inf", help="Epsilons per lender, comma-separated; inf = no DP."),
    seeds: str = typer.Option("0,1,2", help="Seeds, comma-separated."),
    settings: SettingsOption = [],
    gbdt: bool = typer.Option(
        False,
        "--gbdt",
        help="Add a line of DP federated gradient boosting (model gbdt) at the same epsilons and seeds.",
    ),
    gbdt_settings: Annotated[
        list[str],
        typer.Option(
            "--gbdt-set",
            help="KEY=VALUE for the gbdt line only, over --set (e.g. --gbdt-set rounds=51 --gbdt-set gbdt-depth=2); "
            "its rounds default to the gbdt defaults' (50).",
        ),
    ] = [],
    output_dir: str = typer.Option(..., help="Folder for frontier.csv and frontier.png."),
) -> None:
    """Privacy-utility frontier: AUC vs epsilon across seeds, with pooled and local-only lines."""
    gbdt_cfg = None
    try:
        base = _config_with(
            RunConfig(
                dataset=dataset, data_dir=data_dir, lenders=lenders, partition=partition, alpha=alpha, rounds=rounds
            ),
            settings,
        )
        if gbdt_settings and not gbdt:
            _fail("--gbdt-set needs --gbdt")
        if gbdt:
            gbdt_cfg = _gbdt_line(base, gbdt_settings)
        eps = _floats(epsilons, "--epsilons")
        if not eps or any(not (e > 0) for e in eps):
            _fail("--epsilons must be positive numbers or inf")
    except (FedCreditError, ValueError) as exc:
        _fail(str(exc))
    try:
        seed_list = [int(x) for x in seeds.split(",") if x.strip()]
    except ValueError:
        _fail(f"--seeds expects comma-separated integers, got '{seeds}'")
    from benchmarks.frontier import sweep as run_sweep
    from fedcredit.runner import validate

    _quiet_libraries()
    try:
        validate(base)
        command = _command(
            "sweep",
            dataset=dataset,
            data_dir=data_dir,
            lenders=lenders,
            partition=partition,
            alpha=alpha,
            rounds=rounds,
            epsilons=epsilons,
            seeds=seeds,
            settings=settings,
            gbdt=gbdt,
            gbdt_settings=gbdt_settings,
            output_dir=output_dir,
        )
        if gbdt_cfg is not None:
            validate(gbdt_cfg)
        run_sweep(
            base,
            eps,
            seed_list,
            Path(output_dir),
            log=lambda line: console.print(line, highlight=False),
            command=command,
            gbdt=gbdt_cfg,
        )
    except FedCreditError as exc:
        _fail(str(exc))
    except KeyboardInterrupt:  # the interrupted run has cleaned up after itself (fedcredit.runner.run)
        _interrupted(f"the runs that finished, if any, are in {Path(output_dir) / 'frontier.csv'}")
    _paths("wrote:", Path(output_dir) / "frontier.csv", Path(output_dir) / "frontier.png")


@app.command()
def deploy(
    dataset: DatasetOption = DEFAULTS.dataset,
    data_dir: DataDirOption = DEFAULTS.data_dir,
    lenders: LendersOption = 3,
    partition: PartitionOption = DEFAULTS.partition,
    rounds: RoundsOption = 2,
    records: int = _option("records"),
    secure_aggregation: bool = _option("secure_aggregation", "--secure-aggregation"),
    seed: int = _option("seed", help="Seed: the same as a simulated run with this seed gives the same numbers."),
    settings: SettingsOption = [],
    output_dir: str = _option("output_dir"),
    deploy_dir: str = typer.Option(
        "",
        help="Folder for certificates, SuperNode keys, Flower's home and the process "
        "logs (default: RUN-deploy beside the run folder); must be new or empty.",
    ),
    node_data_dir: Annotated[
        list[str],
        typer.Option(
            "--node-data-dir",
            help="LENDER=PATH: that lender's SuperNode reads its records from PATH (default: --data-dir).",
        ),
    ] = [],
    flower_clientapp: FlowerClientAppOption = False,
) -> None:
    """Run on Flower's deployment runtime on this machine: a SuperLink with TLS (run-local CA) and SuperNode
    authentication, one registered SuperNode per lender, then `flwr run`. Stops every process it started."""
    from fedcredit.deploy import Deployment, LinePrinter
    from federation.runfolder import default_run_dir

    try:
        cfg = _config_with(
            RunConfig(
                dataset=dataset,
                data_dir=data_dir,
                lenders=lenders,
                partition=partition,
                rounds=rounds,
                records=records,
                secure_aggregation=secure_aggregation,
                seed=seed,
                output_dir=output_dir,
            ),
            settings,
        )
        cfg = cfg.replace(output_dir=str(Path(cfg.output_dir or default_run_dir()).resolve()))
        data_dirs = {}
        for item in node_data_dir:
            lender, sep, path_text = item.partition("=")
            if not sep or not lender.strip().isdigit() or not 0 <= int(lender) < cfg.lenders:
                _fail(f"--node-data-dir expects LENDER=PATH with LENDER in 0..{cfg.lenders - 1}, got '{item}'")
            if not Path(path_text).is_dir():
                _fail(f"--node-data-dir {item}: no such folder '{path_text}'")
            data_dirs[int(lender)] = path_text
        folder = Path(deploy_dir or f"{cfg.output_dir}-deploy")
        console.print(
            f"fedcredit: deploying {cfg.lenders} SuperNodes and a SuperLink (TLS, SuperNode authentication) "
            f"on 127.0.0.1; processes and logs in {folder}",
            highlight=False,
        )
        deployment = Deployment(
            folder, cfg.lenders, data_dir=cfg.data_dir, data_dirs=data_dirs, worker=not flower_clientapp
        )
        _stop_on_term()  # a SIGTERM (a job scheduler, a timeout) stops it like Ctrl-C: no key or process left
        cfg = deployment.prepare(cfg)
        with deployment:
            # the ServerApp's output as it comes: its rounds, then the table and paths `fedcredit run` prints
            path = deployment.run(cfg, on_line=LinePrinter())
    except FedCreditError as exc:
        _fail(str(exc))
    except KeyboardInterrupt:
        _interrupted("deploy stopped every process it started and removed the keys and lender folders it made")
    rounds_seconds = [json.loads(line)["seconds"] for line in (path / "rounds.jsonl").read_text().splitlines()]
    console.print(f"seconds per round in deployment: {', '.join(f'{s:.1f}' for s in rounds_seconds)}", highlight=False)


@app.command()
def audit(
    dataset: DatasetOption = DEFAULTS.dataset,
    data_dir: DataDirOption = DEFAULTS.data_dir,
    lenders: LendersOption = DEFAULTS.lenders,
    partition: PartitionOption = DEFAULTS.partition,
    rounds: RoundsOption = DEFAULTS.rounds,
    epsilon: float = _option("epsilon", help="Each lender's epsilon budget (the claim under audit)."),
    dp: bool = _option(
        "dp", "--dp/--no-dp", help="Audit a private run (--no-dp: a non-private one, whose bound should exceed 0)."
    ),
    lender: int = typer.Option(0, help="The lender whose data receives the canaries."),
    canaries: int = typer.Option(
        0,
        help="Canaries drawn; each is inserted with probability 1/2 (0: enough that the "
        "audit could refute the claimed epsilon).",
    ),
    guesses: int = typer.Option(
        0, help="Guesses fixed before training, half 'member' and half 'non-member' (0: sized with the canaries)."
    ),
    confidence: float = typer.Option(0.95, help="Confidence of the epsilon lower bound."),
    seed: int = _option("seed", help="Seed (also draws the canaries)."),
    settings: SettingsOption = [],
    output_dir: str = typer.Option("", help="Run folder (audit.json is written into it)."),
) -> None:
    """Empirical privacy audit in one run: epsilon lower bound next to the claimed epsilon (in-process engine
    unless --set engine=simulation)."""
    from fedcredit.canary_audit import audit as run_audit

    try:
        cfg = _config_with(
            RunConfig(
                dataset=dataset,
                data_dir=data_dir,
                lenders=lenders,
                partition=partition,
                rounds=rounds,
                epsilon=epsilon,
                dp=dp,
                seed=seed,
                output_dir=output_dir,
                engine="inprocess",
            ),
            settings,
        )
        if not cfg.output_dir:
            from federation.runfolder import default_run_dir

            cfg = cfg.replace(output_dir=str(default_run_dir()))
        _quiet_libraries()
        result = run_audit(cfg, lender, canaries or None, guesses or None, confidence)
    except FedCreditError as exc:
        _fail(str(exc))
    except KeyboardInterrupt as exc:  # the audited run has cleaned up after itself, canaries included
        _interrupted(getattr(exc, "what", "nothing was written"))
    claimed = result["epsilon_claimed"]
    table = Table(
        title=f"Privacy audit of lender {result['lender']} ({result['canaries_inserted']} of "
        f"{result['canaries']} canaries inserted)"
    )
    table.add_column("quantity")
    table.add_column("value", justify="right")
    table.add_row("correct guesses", f"{result['correct']} / {result['guesses']}")
    table.add_row(
        f"epsilon lower bound ({result['confidence']:.0%} confidence)", f"{result['epsilon_lower_bound']:.3f}"
    )
    table.add_row("epsilon claimed", "none (no DP)" if math.isinf(claimed) else f"{claimed:.3f}")
    table.add_row("largest claim this audit could refute", f"{result['largest_refutable']:.3f}")
    table.add_row("membership AUC, canaries", f"{result['mia_auc_canaries']:.3f}")
    table.add_row("membership AUC, natural records", f"{result['mia_auc_natural']:.3f}")
    console.print(table)
    if result["epsilon_lower_bound"] > claimed:
        err.print("[bold red]audit failed:[/] the measured lower bound exceeds the claimed epsilon")
        raise typer.Exit(code=1)
    if result["largest_refutable"] < claimed:
        console.print(
            f"note: this audit could refute a claim of at most {result['largest_refutable']:.3f}; it cannot "
            f"show that epsilon {claimed:.3f} is too low (more canaries and guesses would be needed)",
            highlight=False,
        )
    _paths("wrote:", Path(result["run_folder"]) / "audit.json")


@app.command()
def verify(
    run_dir: Path = typer.Argument(..., help="The run folder to check."),
    registry: Path | None = typer.Option(
        None,
        help="The key registry (the coordinator's and each lender's public "
        "key, from what they published): every signer must be the registered one.",
    ),
    json_out: bool = typer.Option(
        False,
        "--json",
        help="Print the result as one JSON object on stdout, whatever the outcome (same exit codes); its "
        "'verified' is true, false (a check failed) or null (bad arguments).",
    ),
) -> None:
    """Check a run folder: exit 0 verified against the registry, 1 a check failed, 2 bad arguments, 3 consistent but
    no registry given (the folder's own keys were trusted)."""
    from federation.audit_trail.verify import EXIT_FAILED, EXIT_USAGE, VerificationFailed, verify_run

    def usage_error(message: str) -> NoReturn:
        if json_out:
            typer.echo(json.dumps({"verified": None, "exit_code": EXIT_USAGE, "error": message}))
        else:
            err.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
        raise typer.Exit(code=EXIT_USAGE)

    if not run_dir.is_dir():
        usage_error(f"no such run folder: {run_dir}")
    try:
        result = verify_run(run_dir, registry)
    except VerificationFailed as exc:
        if json_out:
            failed = {"where": exc.where, "check": exc.check, "message": str(exc)}
            typer.echo(json.dumps({"verified": False, "exit_code": EXIT_FAILED, **failed}, indent=2))
        else:
            err.print(f"[bold red]verification failed:[/] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(code=EXIT_FAILED) from None
    except FedCreditError as exc:  # an unreadable registry, a bad argument
        usage_error(str(exc))
    if json_out:
        typer.echo(
            json.dumps(
                {
                    "verified": True,
                    "exit_code": result.exit_code,
                    "pinned": result.pinned,
                    "entries": result.entries,
                    "lenders": result.lenders,
                    "epsilons": result.epsilons,
                    "fingerprints": result.fingerprints,
                    "not_private": result.not_private,
                    "unverified_files": result.unverified,
                    "ledger_head": result.head,
                },
                indent=2,
            )
        )
    else:
        console.print(result.summary(), highlight=False)
    raise typer.Exit(code=result.exit_code)


@app.command()
def report(
    run_dir: Path = typer.Argument(..., help="The run folder holding report.json."),
    registry: Path | None = typer.Option(None, help="The key registry to verify against first."),
) -> None:
    """Re-render report.html from report.json, only after the run folder verifies (report.html included)."""
    from federation.audit_trail.report import render_html
    from federation.audit_trail.verify import VerificationFailed, verify_run
    from federation.runfolder import write_atomically

    path = run_dir / "report.json"
    if not path.exists():
        _fail(f"{path} not found")
    page = run_dir / "report.html"
    missing = not page.exists()
    try:
        # The one file that may be re-rendered; the page written is then verified with everything else.
        data = json.loads(path.read_text())
        html_text = render_html(data)
        if missing:
            write_atomically(page, html_text)
        verify_run(run_dir, registry)
    except VerificationFailed as exc:
        if missing:
            page.unlink(missing_ok=True)
        _fail(f"the run folder does not verify, so its report is not rendered: {exc}")
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
        if missing:
            page.unlink(missing_ok=True)
        _fail(f"{path} is not a fedcredit report ({exc.__class__.__name__})")
    except FedCreditError as exc:
        _fail(str(exc))
    _paths("wrote:" if missing else "verified:", page)


lender_app = typer.Typer(no_args_is_help=True, help="A lender's own commands, run on the lender's machine.")
app.add_typer(lender_app, name="lender")
registry_app = typer.Typer(no_args_is_help=True, help="The key registry: the regulator's list of public keys.")
app.add_typer(registry_app, name="registry")


@lender_app.command("init", cls=renamed({"--csv": "--csv-path", "--card": "--card-path"}))
def lender_init(
    lender_dir: Path = typer.Option(
        ...,
        help="The lender's own folder (made 0700): its policy, identity key and privacy state. Nobody else reads it.",
    ),
    lender: int = typer.Option(..., help="This lender's id in the federation."),
    max_epsilon: float = typer.Option(
        ..., help="The most epsilon this lender spends, over every run with this folder."
    ),
    dataset: str = _option("dataset", help="The lender's data.", default="csv"),
    csv_path: str = _option("csv_path", help="Its records (with --dataset csv)."),
    card_path: str = _option("card_path", help="Its dataset card (with --dataset csv)."),
    data_dir: str = _option("data_dir", help="Folder of a built-in dataset."),
    delta: float = typer.Option(0.0, help="Its delta; 0: 1/N^1.1 on its own training records."),
    min_noise_multiplier: float = typer.Option(0.3, help="Never train with less noise than this."),
    max_clip_norm: float = typer.Option(
        10.0,
        help="Never clip at a larger norm than this (gbdt: the sensitivity sqrt(trees per round) of its leaf sums).",
    ),
    no_dp_allowed: bool = typer.Option(False, "--allow-no-dp", help="Also take part in runs without DP."),
    registry: str = typer.Option("", help="The federation's key registry to pin (needed for secure aggregation)."),
    secure_sum_colluders: int = typer.Option(
        -1,
        help="gbdt under secure aggregation: add only a share of the noise, assuming at most this many other lenders "
        "collude with the coordinator (-1, the default: add the full noise, trusting nobody).",
    ),
) -> None:
    """Make a lender's folder: its privacy policy and a new identity key; prints the public key to publish."""
    from clients.home import init_lender
    from federation.lender_policy import LenderPolicy
    from federation.registry import fingerprint

    _choice(dataset, DATASETS, "dataset")
    if (lender_dir / "identity.key").exists():
        _fail(f"{lender_dir} already holds an identity key; a lender keeps the key it registered")
    data = {
        "dataset": dataset,
        "data-dir": data_dir,
        "csv-path": str(Path(csv_path).resolve()) if csv_path else "",
        "card-path": str(Path(card_path).resolve()) if card_path else "",
        "lenders": lender + 1,
        "partition": "iid",
    }
    try:
        policy = LenderPolicy(
            lender=lender,
            max_epsilon=max_epsilon,
            delta=delta,
            min_noise_multiplier=min_noise_multiplier,
            max_clip_norm=max_clip_norm,
            require_dp=not no_dp_allowed,
            registry=registry,
            secure_sum_colluders=None if secure_sum_colluders == -1 else secure_sum_colluders,
            data=data,
        )
        public = init_lender(lender_dir, policy)
    except FedCreditError as exc:
        _fail(str(exc))
    console.print(f"lender {lender}: public key {public}", highlight=False)
    from clients.home import LenderHome
    from clients.join import supernode_key

    _, node_public = supernode_key(LenderHome(lender_dir))
    console.print(f"fingerprint {fingerprint(public)}", highlight=False)
    _paths("send the regulator, for the key registry, your public key:", lender_dir / "identity.pub")
    console.print(f"SuperNode key: {node_public}  (send it to the coordinator)", highlight=False)


@lender_app.command("join")
def lender_join(
    lender_dir: Path = typer.Option(..., help="The lender's own folder (fedcredit lender init)."),
    superlink: str = typer.Option(..., help="The coordinator's address HOST:PORT."),
    ca: Path = typer.Option(..., help="The coordinator's CA certificate (it sent it)."),
    listen_host: str = typer.Option(
        "127.0.0.1", help="Where this SuperNode's own runtime API listens (its worker connects there)."
    ),
    flower_clientapp: FlowerClientAppOption = False,
) -> None:
    """Start this lender's SuperNode against the coordinator: its data, limits and keys stay in its folder."""
    from clients.join import LenderNode

    node = LenderNode(lender_dir, superlink, ca, listen_host, worker=not flower_clientapp)
    _stop_on_term()
    try:
        node.start()
        console.print(
            f"lender {node.home.policy.lender}: SuperNode started against {superlink} (Ctrl-C stops it)",
            highlight=False,
        )
        node.wait()
    except FedCreditError as exc:
        node.stop()
        _fail(str(exc))
    except KeyboardInterrupt:
        node.stop()
        raise typer.Exit(code=130) from None
    node.stop()


coordinator_app = typer.Typer(no_args_is_help=True, help="The coordinator's own commands, run on its host.")
app.add_typer(coordinator_app, name="coordinator")
CoordinatorDirOption = Annotated[Path, typer.Option("--dir", help="The coordinator's own folder.")]


def _stop_on_term() -> None:
    """SIGTERM ends a foreground role like Ctrl-C: every process it started is stopped by id."""
    import signal

    def interrupt(*_):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)


@coordinator_app.command("init")
def coordinator_init(
    folder: CoordinatorDirOption,
    address: str = typer.Option(..., help="The address lenders dial, HOST:PORT (the gateway binds it)."),
    name: Annotated[
        list[str],
        typer.Option("--name", help="Another name or address the certificate must carry (repeat for several)."),
    ] = [],
    cert: Path | None = typer.Option(
        None, help="Your own server certificate (with --key and --ca), instead of a run-local CA."
    ),
    key: Path | None = typer.Option(None, help="Its private key."),
    ca: Path | None = typer.Option(None, help="The CA that signed it (lenders must trust it)."),
) -> None:
    """Make the coordinator's folder: its signing key, TLS certificates for its address and names, a connection."""
    from server.superlink_host import CoordinatorHost

    brought = None
    if cert or key or ca:
        if cert is None or key is None or ca is None:
            _fail("--cert, --key and --ca go together")
        brought = (cert, key, ca)
    try:
        published = CoordinatorHost(folder).init(address, name, brought)
    except FedCreditError as exc:
        _fail(str(exc))
    console.print(
        f"coordinator at {published['address']} (certificate names: {', '.join(published['names'])})", highlight=False
    )
    _paths("send lenders the CA certificate:", published["ca"])
    console.print(
        f"coordinator public key {published['coordinator_public_key']} fingerprint {published['fingerprint']} "
        "(send it to the regulator for the key registry)",
        highlight=False,
    )


@coordinator_app.command("add-lender")
def coordinator_add_lender(
    folder: CoordinatorDirOption,
    lender: int = typer.Option(..., help="The lender's id."),
    supernode_key: Path = typer.Option(..., help="The SuperNode public key the lender sent (supernode.pub)."),
) -> None:
    """Accept a lender's SuperNode key: registered with the SuperLink when it starts."""
    from server.superlink_host import CoordinatorHost

    try:
        target = CoordinatorHost(folder).add_lender(lender, supernode_key)
    except FedCreditError as exc:
        _fail(str(exc))
    console.print(f"lender {lender}: SuperNode key saved as {target}", highlight=False)


@coordinator_app.command("start")
def coordinator_start(folder: CoordinatorDirOption) -> None:
    """Start the SuperLink (127.0.0.1 only) and the Fleet gateway on the public address; runs until stopped."""
    import time

    from server.superlink_host import CoordinatorHost

    host = CoordinatorHost(folder)
    _stop_on_term()
    try:
        host.start()
        console.print(f"SuperLink up; lenders dial {host.config['address']} (Ctrl-C stops it)", highlight=False)
        while all(p.poll() is None for p in host.group.processes.values()):
            time.sleep(0.5)
        failed = next(name for name, p in host.group.processes.items() if p.poll() is not None)
        host.stop()
        _fail(f"{failed} exited: {' '.join(host.group.log_tail(failed).split()[-30:])}")
    except FedCreditError as exc:
        host.stop()
        _fail(str(exc))
    except KeyboardInterrupt:
        host.stop()
        raise typer.Exit(code=130) from None


@coordinator_app.command("run")
def coordinator_run(
    folder: CoordinatorDirOption,
    lenders: LendersOption = 3,
    rounds: RoundsOption = 2,
    dataset: DatasetOption = DEFAULTS.dataset,
    partition: PartitionOption = DEFAULTS.partition,
    settings: SettingsOption = [],
    output_dir: str = _option("output_dir"),
) -> None:
    """Run the federation on the started SuperLink with `flwr run`; exits non-zero when no round ran."""
    from federation.runfolder import default_run_dir
    from server.superlink_host import CoordinatorHost

    try:
        cfg = _config_with(
            RunConfig(
                dataset=dataset,
                lenders=lenders,
                rounds=rounds,
                partition=partition,
                output_dir=output_dir or str(default_run_dir()),
            ),
            settings,
        )
        from fedcredit.deploy import LinePrinter

        # the ServerApp's output as it comes (its rounds, then the table and paths `fedcredit run` prints)
        path = CoordinatorHost(folder).run(cfg, on_line=LinePrinter())
    except FedCreditError as exc:
        _fail(str(exc))
    config = json.loads((path / "config.json").read_text())
    if not config.get("rounds-completed"):
        _fail(f"no round ran: {config.get('stopped-early') or 'see the report'}")


@registry_app.command("build")
def registry_build(
    output: Path = typer.Option(..., "--output", "-o", help="The registry file to write."),
    coordinator: str = typer.Option(..., help="The coordinator's public key (hex, or a file holding it)."),
    lender: Annotated[
        list[str],
        typer.Option(
            "--lender", help="ID=KEY: a lender's public key (hex, or a file holding it, such as its identity.pub)."
        ),
    ] = [],
) -> None:
    """Build the key registry from the public keys the parties published, and print their fingerprints."""
    from federation.registry import Registry, load_registry

    def key_of(text: str) -> str:
        path = Path(text)
        return path.read_text().strip() if path.is_file() else text.strip()

    lenders = {}
    for item in lender:
        name, sep, key = item.partition("=")
        if not sep or not name.strip().isdigit():
            _fail(f"--lender expects ID=KEY, got '{item}'")
        if int(name) in lenders:
            _fail(f"lender {int(name)} is given twice")
        lenders[int(name)] = key_of(key)
    tmp = output.with_name(output.name + ".check")
    try:
        Registry(key_of(coordinator), lenders).write(tmp)
        checked = load_registry(tmp)  # the same checks a reader applies
    except (FedCreditError, OSError) as exc:
        tmp.unlink(missing_ok=True)
        _fail(str(exc))
    tmp.replace(output)
    for who, fp in checked.fingerprints().items():
        console.print(f"{who}: {fp}", highlight=False)
    _paths("wrote:", output)


@app.command()
def bench(
    output_dir: str = typer.Option(..., help="Folder for results.csv, the PNG plots and RESULTS.md (a rerun resumes)."),
    datasets: str = typer.Option(
        "",
        help=f"Comma-separated datasets (default: {', '.join(BENCH_DATASETS)}; --quick: synthetic).",
        shell_complete=_complete_list(BENCH_DATASETS),
    ),
    seeds: str = typer.Option("", help="Comma-separated seeds (default 0,1,2; --quick: 0)."),
    methods: str = typer.Option(
        "",
        help=f"Comma-separated from {', '.join(BENCH_METHODS)} (default all but fedyogi and fedadagrad).",
        shell_complete=_complete_list(BENCH_METHODS),
    ),
    epsilons: str = typer.Option("", help="Comma-separated epsilons per lender, inf = no DP (default inf,1,3,8)."),
    partitions: str = typer.Option(
        "",
        help="Partitions of the real datasets, e.g. 'iid,dirichlet:0.5' (default: iid, "
        "dirichlet:0.5, dirichlet:0.1, quantity:0.5; synthetic keeps its natural split).",
    ),
    data_dir: str = typer.Option("", help="Folder holding the real datasets."),
    quick: bool = typer.Option(False, "--quick", help="A tiny grid for tests: 2 rounds, small data, IID splits."),
    results_md: str = typer.Option("", help="Where to write RESULTS.md (default OUTPUT_DIR/RESULTS.md)."),
    settings: SettingsOption = [],  # applied to every cell
) -> None:
    """The federated credit benchmark: pooled vs local-only vs FedAvg/FedProx/FedAdam, with and without DP."""
    from benchmarks import bench as grid_bench
    from benchmarks.constants import DEFAULT_METHODS, EPSILONS, METHODS, PARTITIONS, SPLITS

    names = [d.strip() for d in datasets.split(",") if d.strip()] or (["synthetic"] if quick else list(BENCH_DATASETS))
    for name in names:
        if name not in BENCH_DATASETS:
            _fail(f"unknown dataset '{name}' (choose from {', '.join(BENCH_DATASETS)})")
    method_list = [m.strip() for m in methods.split(",") if m.strip()] or (
        ["pooled", "local", "fedavg"] if quick else list(DEFAULT_METHODS)
    )
    for m in method_list:
        if m not in METHODS:
            _fail(f"unknown method '{m}' (choose from {', '.join(METHODS)})")
    eps = _floats(epsilons, "--epsilons") if epsilons else ([math.inf, 3.0] if quick else list(EPSILONS))
    if any(not e > 0 for e in eps):
        _fail("--epsilons must be positive numbers or inf")
    try:
        seed_list = [int(x) for x in seeds.split(",") if x.strip()] or ([0] if quick else [0, 1, 2])
    except ValueError:
        _fail(f"--seeds expects comma-separated integers, got '{seeds}'")
    overrides = {key.replace("-", "_"): value for key, value in _settings(settings).items()}
    if quick:
        overrides = {"rounds": "2", "records": "8000", **overrides}  # the smallest synthetic lender needs >= 65 records
    chosen = PARTITIONS
    if partitions:
        parsed = []
        for item in partitions.split(","):
            name, _, alpha_text = item.strip().partition(":")
            if name not in SPLITS:
                _fail(f"unknown partition '{name}' (choose from iid, dirichlet:ALPHA, quantity:ALPHA)")
            try:
                parsed.append((name, float(alpha_text) if alpha_text else 0.5))
            except ValueError:
                _fail(f"partition '{item}' needs a number after ':'")
        chosen = {**PARTITIONS, "default": parsed}
    elif quick:
        chosen = {**PARTITIONS, "default": [("iid", 0.5)]}
    cells = grid_bench.grid(names, seed_list, method_list, eps, chosen)
    if not cells:  # every method asked for is one this build cannot run
        from benchmarks.constants import unavailable

        _fail("; ".join(f"{m}: {unavailable(m)}" for m in method_list))
    command = _command(
        "bench",
        quick=quick,
        datasets=",".join(names),
        seeds=",".join(map(str, seed_list)),
        methods=",".join(method_list),
        epsilons=",".join(f"{e:g}" for e in eps),
        partitions=partitions,
        data_dir=data_dir,
        settings=settings,
        output_dir=output_dir,
        results_md=results_md,
    )
    _quiet_libraries()
    try:
        typed = {
            k: v
            for k, v in RunConfig.from_record({k.replace("_", "-"): v for k, v in overrides.items()}).__dict__.items()
            if k in overrides
        }
        grid_bench.config_for(cells[0], data_dir, typed)  # fail on a bad override before any work
        grid_bench.bench(
            cells,
            Path(output_dir),
            data_dir,
            typed,
            command,
            Path(results_md) if results_md else None,
            log=lambda line: console.print(line, highlight=False),
            methods=method_list,
        )
    except (FedCreditError, ValueError) as exc:
        _fail(str(exc))
    except KeyboardInterrupt:  # results.csv gains a cell's rows when the cell ends: none of the interrupted one
        _interrupted(
            f"the cells that finished, if any, are in {Path(output_dir) / 'results.csv'}; the same command skips them"
        )
    _paths("wrote:", Path(output_dir) / "results.csv")


def _paths(label: str, *paths: str | Path) -> None:
    """A label, then each path on a line of its own, never folded at the terminal's width (copy it whole)."""
    console.print(label, highlight=False)
    for path in paths:
        console.print(f"  {path}", highlight=False, soft_wrap=True, markup=False)


def _quiet_libraries() -> None:
    """Flower's warnings only, once: the CLI shows its own progress line per round instead of its INFO lines."""
    from fedcredit.runner import quiet_flower

    quiet_flower()


def _print_summary(path: Path, json_out: bool = False) -> None:
    """The run's summary: the per-lender table and its paths, or (json_out) one JSON object on stdout and nothing
    else there."""
    from federation.run_summary import print_summary, read_summary

    summary = read_summary(path)
    if json_out:
        typer.echo(json.dumps(summary, indent=2, allow_nan=False))
    else:
        print_summary(summary, console)


# ---- fedcredit card: dataset cards for your own data ---------------------------------------------------------------

card_app = typer.Typer(no_args_is_help=True, help="Dataset cards: a skeleton card for your own CSV, to review.")
app.add_typer(card_app, name="card")


@card_app.command("init")
def card_init(
    csv: Annotated[Path, typer.Argument(help="Your CSV file (a header line, one record per line).")],
    out: Annotated[
        Path | None, typer.Option("--out", help="Where to write the card (default: the CSV's path with .toml).")
    ] = None,
    label: Annotated[
        str | None, typer.Option("--label", help="The label column (default: guessed from the names).")
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing card file.")] = False,
) -> None:
    """Write a skeleton dataset card for CSV: every column typed and classified, each guess marked for review."""
    from federation.card import CREDIT_CATEGORIES, PROHIBITED_CATEGORIES, ROLE_CATEGORIES
    from federation.card_skeleton import write_skeleton

    try:
        skeleton = write_skeleton(csv, out, label, force)
    except FedCreditError as exc:
        _fail(str(exc))
    console.print(
        f"wrote a skeleton card for {csv.name}: {len(skeleton.columns)} columns, "
        f"{skeleton.count(CREDIT_CATEGORIES)} to train on, {skeleton.count(PROHIBITED_CATEGORIES)} refused, "
        f"{skeleton.count(ROLE_CATEGORIES)} roles:",
        highlight=False,
        soft_wrap=True,
    )
    console.print(str(skeleton.path), highlight=False, soft_wrap=True)
    console.print(
        f"{skeleton.to_review} columns carry a review line: a run refuses the card until each is checked and its "
        "line deleted (bounds must be public, not this file's minimum and maximum).",
        highlight=False,
        soft_wrap=True,
    )


# ---- score: new applicants with a finished run's model (federation/scoring.py) ------------------------------------


@app.command()
def score(
    run_dir: Path = typer.Argument(..., help="The finished run folder: its model.json scores."),
    applicants: Path | None = typer.Option(None, "--csv", help="The applicants: a CSV with the card's credit columns."),
    out: Path = typer.Option(Path("scores.csv"), "--out", help="Where the scores go (id, probability, points)."),
    points_table: Path | None = typer.Option(
        None, "--points-table", help="Also write the logistic scorecard's points per feature bin to this CSV."
    ),
    clip: bool = typer.Option(
        False, "--clip", help="Clip values outside the card's public bounds, as training does (default: refuse them)."
    ),
    registry: Path | None = typer.Option(
        None, help="Verify the run folder against this key registry before scoring (model.json included)."
    ),
) -> None:
    """Score new applicants: the run's card, policy and encoding, then the probability of default and the
    scorecard points of each consenting applicant. Nothing is written unless everything is."""
    from federation import scoring
    from federation.audit_trail.verify import VerificationFailed, verify_run
    from federation.runfolder import write_atomically

    if applicants is None and points_table is None:
        _fail("nothing to do: give --csv APPLICANTS.csv, --points-table OUT.csv, or both")
    outputs: dict[Path, str] = {}
    try:
        if registry is not None:
            verify_run(run_dir, registry)
        model = scoring.load_model(run_dir)
        if points_table is not None:
            outputs[points_table] = scoring.points_csv(model)
        scores = None
        if applicants is not None:
            scores = scoring.score_frame(model, scoring.read_applicants(applicants), clip=clip)
            outputs[out] = scoring.scores_csv(scores)
        for path in outputs:
            if path.resolve().is_relative_to(run_dir.resolve()):
                _fail(f"{path} is inside the run folder, which holds only the run's own files; write it elsewhere")
            if not path.parent.is_dir():
                _fail(f"folder {path.parent} does not exist (for {path})")
    except VerificationFailed as exc:
        _fail(f"the run folder does not verify, so it scores nothing: {exc}")
    except FedCreditError as exc:
        _fail(str(exc))
    for path, text in outputs.items():
        write_atomically(path, text)
    if scores is not None:
        if scores.dropped:
            names = ", ".join(f"{d['name']} ({d['category']})" for d in scores.dropped)
            console.print(f"dropped (the card refuses them, as in training): {names}", highlight=False, soft_wrap=True)
        if scores.without_consent:
            console.print(
                f"not scored: {scores.without_consent} applicant(s) without consent", highlight=False, soft_wrap=True
            )
        console.print(f"scored {len(scores.ids)} applicant(s) with the {model.kind} model of card '{model.card.name}'")
        console.print(f"scores: {out}", highlight=False)
    if points_table is not None:
        console.print(f"points table: {points_table}", highlight=False)


def main() -> None:
    from federation.training import set_torch_threads

    set_torch_threads()
    # Every command: SIGTERM (a job scheduler, `timeout`) stops it like Ctrl-C, so that what it made is cleaned up (the
    # default SIGTERM killed sweep, bench and audit outright, leaving a run's keys and canaries in their temporary
    # folders: tests/test_interrupt.py).
    _stop_on_term()
    try:
        app()
    except KeyboardInterrupt:  # a command with no interrupt line of its own
        err.print("interrupted", highlight=False)
        sys.exit(130)
    finally:
        _forget_caught_interrupt()


def _forget_caught_interrupt() -> None:
    """CPython 3.11 marks a KeyboardInterrupt that leaves code run by exec() of a string as never handled, even when a
    caller catches it: `python -m fedcredit` then ends by killing itself with SIGINT (exit status -2, no traceback)
    instead of the exit code the CLI chose. A SIGTERM that landed in a dataclass's generated __init__ while torch
    imported torch._dynamo in an audit's first round did that (tests/test_interrupt.py). Each exec() of a string
    clears the mark as it starts: this one, once the CLI has handled every interrupt, leaves it clear."""
    exec("")


if __name__ == "__main__":
    main()
