import json

import pytest
from typer.testing import CliRunner

from fedcredit.cli import app
from federation.privacy import dpaccounting, planner
from federation.privacy.accountant import epsilon, sample_rate, steps_per_epoch
from federation.privacy.events import PrivacyEvent

runner = CliRunner()


def test_plan_calibrates_each_target_and_reports_both_accountants():
    mech = planner.record_level(2400, 64, 1, 10)
    rows = planner.plan(mech, [1.0, 3.0, 8.0], [], ["rdp", "prv"])
    sigmas = [r["noise_multiplier"] for r in rows]
    assert sigmas == sorted(sigmas, reverse=True)  # more budget, less noise
    for row in rows:
        assert 0.995 * row["target_epsilon"] <= row["epsilon_rdp"] <= row["target_epsilon"]
        assert row["epsilon_prv"] < row["epsilon_rdp"]
        # the plan describes exactly the run's mechanism: q = 1/ceil(n/B), steps = epochs x ceil(n/B) x rounds
        run_events = [
            PrivacyEvent(0, r, row["noise_multiplier"], sample_rate(2400, 64), steps_per_epoch(2400, 64), 1.0)
            for r in range(10)
        ]
        assert row["epsilon_rdp"] == pytest.approx(epsilon(run_events, mech.delta))
        assert row["epsilon_rdp"] == pytest.approx(dpaccounting.epsilon(run_events, mech.delta, "rdp"), rel=0.01)


def test_plan_reverse_sigma_to_epsilon_round_trips():
    mech = planner.record_level(5000, 128, 2, 5, delta=1e-5)
    [forward] = planner.plan(mech, [2.0], [], ["rdp"])
    [reverse] = planner.plan(mech, [], [forward["noise_multiplier"]], ["rdp"])
    assert reverse["epsilon_rdp"] == pytest.approx(forward["epsilon_rdp"])


def test_lender_level_plan_counts_one_step_per_round():
    mech = planner.lender_level(1000, 0.1, 20, delta=1e-5)
    assert (mech.sample_rate, mech.total_steps, mech.granularity) == (0.1, 20, "lender")
    [row] = planner.plan(mech, [3.0], [], ["rdp"])
    assert row["epsilon_rdp"] <= 3.0


def test_plan_command_prints_a_table_over_several_targets():
    result = runner.invoke(
        app,
        [
            "plan",
            "--records-per-lender",
            "2400",
            "--rounds",
            "10",
            "--epsilons",
            "1,3,8",
            "--sigmas",
            "1.0",
            "--accountants",
            "rdp",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "noise multiplier" in result.output and "epsilon (rdp)" in result.output
    assert result.output.count("│") >= 4 * 3


def test_plan_command_json_rows():
    result = runner.invoke(
        app, ["plan", "--records-per-lender", "1000", "--epsilons", "2", "--accountants", "rdp", "--json"]
    )
    assert result.exit_code == 0, result.output
    [row] = json.loads(result.output)
    assert row["given"] == "target" and row["epsilon_rdp"] <= 2.0


@pytest.mark.parametrize(
    "args,message",
    [
        (["--records-per-lender", "1000"], "give target epsilons"),
        (["--epsilons", "1"], "needs --records-per-lender"),
        (["--records-per-lender", "1000", "--epsilons", "one"], "comma-separated numbers"),
        (["--records-per-lender", "1000", "--epsilons", "1", "--accountants", "moments"], "unknown accountant"),
        (["--dp-level", "lender", "--epsilons", "1"], "needs --lenders"),
        (["--records-per-lender", "1000", "--sigmas", "-1"], "must be positive"),
    ],
)
def test_plan_bad_input_is_a_clear_error(args, message):
    result = runner.invoke(app, ["plan", *args])
    assert result.exit_code == 2
    assert message in result.output
