"""The performance scripts run end to end at a reduced size (no timing assertions)."""

import re

from benchmarks.perf import dp_cost, federation_cost, scale


def test_dp_cost_runs(capsys):
    dp_cost.main(["--records", "2000", "--repeats", "1"])
    out = capsys.readouterr().out
    assert "| logreg | 2000 |" in out and "| mlp | 2000 |" in out and "x |" in out


def test_federation_cost_runs(capsys):
    federation_cost.main(["--repeats", "1", "--records", "2000", "--lenders", "2", "--rounds", "1"])
    out = capsys.readouterr().out
    assert "sequential, no Flower" in out and "in-process Grid" in out


def test_scale_runs_one_size_with_sampling():
    result = scale.one(lenders=12, per_round=4, rounds=2, records_per_lender=200)
    assert result["lenders"] == 12 and result["sampled"] == 4 and result["borrowers"] == 2400
    assert result["seconds_per_round_median"] > 0 and result["peak_rss_mb"] > 0
    assert result["startup_seconds"] > 0 and result["closing_seconds"] > 0 and result["between_rounds_seconds"] > -0.01


def test_scale_splits_the_setup_where_the_rounds_begin_and_end(monkeypatch):
    """A stand-in run on a stand-in clock with known phases: 3 s before round 1, three rounds of 1 s with 0.5 s
    between them, 2 s after the last: the split finds each part, and the setup is the run less its rounds."""
    import types

    import fedcredit.runner

    clock = [100.0]
    monkeypatch.setattr(scale, "time", types.SimpleNamespace(perf_counter=lambda: clock[0]))

    def fake_run(cfg, on_round, lender_processes=1):
        clock[0] += 3.0
        for rnd in range(3):
            clock[0] += 0.5 if rnd else 0.0
            clock[0] += 1.0
            on_round(types.SimpleNamespace(seconds=1.0))
        clock[0] += 2.0

    monkeypatch.setattr(fedcredit.runner, "run", fake_run)
    result = scale.one(lenders=4, per_round=2, rounds=3, records_per_lender=100)
    assert result["startup_seconds"] == 3.0 and result["closing_seconds"] == 2.0
    assert result["between_rounds_seconds"] == 1.0 and result["setup_seconds"] == 6.0


def test_scale_reports_no_split_without_a_round(monkeypatch):
    import fedcredit.runner

    monkeypatch.setattr(fedcredit.runner, "run", lambda cfg, on_round, lender_processes=1: None)
    result = scale.one(lenders=4, per_round=2, rounds=1, records_per_lender=100)
    assert result["startup_seconds"] is None and result["closing_seconds"] is None
    assert result["between_rounds_seconds"] is None and result["setup_seconds"] >= 0


def test_scale_runs_with_lender_processes():
    result = scale.one(lenders=6, per_round=3, rounds=2, records_per_lender=300, processes=2)
    assert result["processes"] == 2 and result["lender_process_peak_rss_mb"] > 0 and result["last_round_pss_mb"] > 0


def test_secagg_cost_runs(capsys):
    from benchmarks.perf import secagg_cost

    table = secagg_cost.main(
        ["--lenders", "3", "--records", "2000", "--rounds", "1", "--model", "logreg", "--repeats", "1"]
    )
    assert "| plain FedAvg |" in table and "| secure aggregation |" in table and "| ratio |" in table
    # the masked vector is uint64 (the update and the lender's record count): twice the bytes of the float32 update
    ratio = float(re.search(r"\| ratio \| [0-9.]+x \| ([0-9.]+)x \|", table).group(1))
    assert 2.0 < ratio < 2.2


def test_scale_times_each_setup_phase(capsys):
    import json

    # two lender processes: the warm-up before they fork is a phase too
    options = ["--per-round", "3", "--rounds", "1", "--records-per-lender", "300", "--lender-processes", "2"]
    scale.main(["--one", "6", *options, "--phases"])
    phases = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["phase_seconds"]
    assert {name.split(".")[-1] for name in phases} == {name for _, name in scale.PHASES}
    assert all(seconds > 0 for seconds in phases.values())


def test_prv_cost_runs_and_finds_the_same_epsilons(capsys):
    from benchmarks.perf import prv_cost

    prv_cost.main()
    out = capsys.readouterr().out
    assert "| Opacus PRVAccountant |" in out and "| fast_prv |" in out
    difference = float(out.rsplit("largest relative difference ", 1)[1].split()[0])
    assert difference < 1e-6  # the widened FFT domain moves the last digits (fast_prv.py)
