"""Weak privacy settings are refused with one line naming the problem: a delta at or above 1/n or above
MAX_DELTA (explicit or from the default rule), a lender given two budgets, an epsilon beyond what the
accountants can evaluate; and no accountant ever reports a negative epsilon."""

from pathlib import Path

import pytest
from typer.testing import CliRunner

import fedcredit.runner as runner_module
from fedcredit.cli import app
from fedcredit.runner import validate
from federation.config import RunConfig, parse_epsilon_overrides
from federation.errors import ConfigError
from federation.privacy import planner
from federation.privacy.accountant import _epsilon, compose_history, default_delta, epsilon
from federation.privacy.events import PrivacyEvent
from federation.privacy.limits import MAX_DELTA, MAX_EPSILON, check_delta, check_epsilon, min_records_for

cli = CliRunner()


def _refused(call, *needles: str) -> str:
    """`call()` raises ConfigError whose message is one line holding every needle; returns the message."""
    with pytest.raises(ConfigError) as caught:
        call()
    message = str(caught.value)
    assert "\n" not in message
    for needle in needles:
        assert needle in message, message
    return message


def _cli_refused(args: list[str], out: Path | None, *needles: str) -> None:
    """The CLI exits 2 with one error (rich wraps it at 80 columns here) and leaves no folder behind."""
    result = cli.invoke(app, args)
    text = " ".join(result.output.split())
    assert result.exit_code == 2, result.output
    assert text.count("error:") == 1 and "Traceback" not in text, result.output
    for needle in needles:
        assert needle in text, result.output
    if out is not None:
        assert not out.exists() and not Path(f"{out}-keys").exists()
        assert not any(p.name.startswith(f".{out.name}.partial") for p in out.parent.iterdir())


def _run_args(out: Path, *args: str) -> list[str]:
    return ["run", "--engine", "inprocess", "--rounds", "1", "--output-dir", str(out), *args]


# ---- delta ------------------------------------------------------------------------------------------


def test_min_records_follows_the_default_delta_rule():
    assert min_records_for() == 65  # 1/64^1.1 = 0.0103 > 0.01 >= 1/128^1.1
    for cap in (0.5, 0.1, MAX_DELTA, 1e-3, 1e-5):
        needed = min_records_for(cap)
        assert default_delta(needed) <= cap
        assert needed == 1 or default_delta(needed - 1) > cap


def test_delta_above_one_over_n_is_refused_naming_the_lender_and_n():
    _refused(
        lambda: check_delta(120, 0.5, "lender 3"),
        "delta 0.5 is above 1/n for lender 3 (n = 120 training records)",
        "use a delta below 1/120",
    )
    _refused(lambda: check_delta(20, 0.1, "lender 1"), "(n = 20 training records)", "at most 0.01")
    check_delta(120, 1e-3, "lender 3")  # below 1/120 and MAX_DELTA: fine


def test_default_delta_of_a_tiny_lender_is_refused_with_the_size_it_needs():
    _refused(
        lambda: check_delta(20, default_delta(20), "lender 3"),
        "lender 3 has 20 training records",
        "0.0221",
        "the default rule",
        "at least 65 training records",
    )
    _refused(lambda: check_delta(2, 0, "lender 0"), "at its delta 0.467")  # 0 means the default rule too
    _refused(lambda: check_delta(50, 0.015, "lender 2"), "at delta 0.015", "use a delta of at most 0.01")
    check_delta(65, default_delta(65), "lender 0")
    _refused(lambda: check_delta(64, default_delta(64), "lender 0"), "at least 65")


def test_cli_refuses_an_explicit_delta_above_the_limit(tmp_path):
    out = tmp_path / "run"
    _cli_refused(_run_args(out, "--delta", "0.5"), out, "delta 0.5 is above 0.01")
    assert RunConfig(delta=MAX_DELTA).validated().delta == MAX_DELTA  # at the limit is allowed by the config


def test_cli_refuses_a_delta_above_one_over_n_for_a_real_lender(tmp_path):
    out = tmp_path / "run"  # lender 0 of this market has 881 training records
    _cli_refused(
        _run_args(out, "--records", "2000", "--lenders", "2", "--delta", "0.01"),
        out,
        "delta 0.01 is above 1/n for lender 0 (n = 881 training records)",
    )


def test_cli_refuses_the_default_delta_of_a_small_lender(tmp_path):
    out = tmp_path / "run"  # training records per lender: 43, 21, 18, 24, 12
    _cli_refused(
        _run_args(out, "--records", "200", "--lenders", "5"),
        out,
        "lender 0 has 43 training records",
        "at least 65 training records",
    )


def test_lender_level_dp_counts_lenders():
    cfg = RunConfig(records=2000, lenders=3, dp_level="lender")
    _refused(lambda: validate(cfg), "the federation (lender-level DP) has 3 lenders", "at least 65 lenders")
    _refused(lambda: check_delta(150, 1e-2, "the federation (lender-level DP)", unit="lenders"), "(n = 150 lenders)")
    validate(cfg.replace(delta=1e-3))  # a delta set for the federation, below 1/3 and MAX_DELTA


def test_the_default_run_and_a_small_tested_market_pass_validate():
    summary = validate(RunConfig())
    assert min(summary.lender_records) >= min_records_for()
    validate(RunConfig(records=2000, lenders=2, delta=1e-4))
    validate(RunConfig(records=200, lenders=5, dp=False))  # without DP there is no delta to refuse


# ---- budgets ----------------------------------------------------------------------------------------


def test_a_lender_given_two_budgets_is_refused(tmp_path):
    _refused(lambda: parse_epsilon_overrides("0:1,0:8"), "lender 0 is given two budgets (1 and 8)")
    _refused(lambda: RunConfig(epsilon_overrides=((0, 1.0), (0, 8.0))).validated(), "lender 0 is given two budgets")
    assert parse_epsilon_overrides("3:8,0:1") == ((0, 1.0), (3, 8.0))
    out = tmp_path / "run"
    _cli_refused(_run_args(out, "--budget", "0:1,0:8"), out, "lender 0 is given two budgets (1 and 8)")


def test_an_epsilon_beyond_the_accountants_is_refused_before_anything_runs(tmp_path, monkeypatch):
    monkeypatch.setattr(runner_module, "run", lambda *a, **k: pytest.fail("the run started"))
    monkeypatch.setattr(runner_module, "validate", lambda *a, **k: pytest.fail("the data was loaded"))
    out = tmp_path / "run"
    _cli_refused(_run_args(out, "--epsilon", "1e9"), out, "epsilon 1e+09 is above 50")
    _cli_refused(_run_args(out, "--budget", "1:1e9"), out, "epsilon budget of lender 1 1e+09 is above 50")
    check_epsilon(MAX_EPSILON, "epsilon")
    _refused(lambda: check_epsilon(MAX_EPSILON * 1.01, "epsilon"), "above 50")
    _refused(lambda: check_epsilon(float("inf"), "epsilon"), "positive finite")


# ---- planner ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--records-per-lender", "40", "--epsilons", "1"], "a lender has 40 training records"),
        (
            ["--records-per-lender", "1000", "--delta", "0.01", "--epsilons", "1"],
            "above 1/n for a lender (n = 1000 training records)",
        ),
        (["--records-per-lender", "1000", "--epsilons", "1,1e9"], "target epsilon 1e+09 is above 50"),
        (
            ["--dp-level", "lender", "--lenders", "5", "--epsilons", "1"],
            "the federation (lender-level DP) has 5 lenders",
        ),
    ],
)
def test_plan_refuses_what_a_run_refuses(args, needle):
    _cli_refused(["plan", *args], None, needle)


def test_plan_accepts_a_lender_level_delta_set_by_hand():
    result = cli.invoke(
        app,
        [
            "plan",
            "--dp-level",
            "lender",
            "--lenders",
            "5",
            "--delta",
            "1e-3",
            "--epsilons",
            "1",
            "--rounds",
            "2",
            "--accountants",
            "rdp",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output


# ---- never a negative epsilon -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "sigma, q, steps, delta",
    [
        (3.0, 1.0, 5, default_delta(2)),  # a lender of 2 records, the whole lender every step
        (10.0, 0.1, 1, 1e-2),  # within the limits: a nearly private step at the largest allowed delta
    ],
)
def test_accountants_never_report_a_negative_epsilon(sigma, q, steps, delta):
    events = [PrivacyEvent(0, 1, sigma, q, steps, 1.0)]
    raw = {name: _epsilon(tuple(compose_history(events)), delta, name) for name in ("rdp", "prv")}
    assert raw["prv"] < 0  # Opacus' own estimate: the case is real
    assert all(epsilon(events, delta, name) == max(0.0, raw[name]) for name in raw)
    mech = planner.Mechanism(q, steps, 1, delta)
    [row] = planner.plan(mech, [], [sigma], ["rdp", "prv"])
    assert row["epsilon_rdp"] >= 0 and row["epsilon_prv"] == 0.0
