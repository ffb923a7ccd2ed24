"""The command line and the engines: the only code that imports both the lender (`clients/`) and the
coordinator (`server/`).

    fedcredit/cli.py            `fedcredit ...` (typer)
    fedcredit/api.py            the Python API: api.run(RunConfig) -> RunResult (paths, summary, lenders DataFrame)
    fedcredit/runner.py         one machine: set up every party in its own folder, run on an engine
    fedcredit/inprocess_grid.py the in-process Grid engine (Flower's wire format, no engine start)
    fedcredit/lender_processes.py its lenders in N forked processes, a round's messages in parallel
    fedcredit/deploy.py         Flower's deployment runtime on one machine, composed from the per-role hosts
    fedcredit/canary_audit.py   `fedcredit audit`: a run with canaries, then the one-run epsilon lower bound

Import direction (import-linter contracts in pyproject.toml, checked by .ci/run):
fedcredit.cli -> benchmarks -> fedcredit.api -> the rest of fedcredit -> clients | server -> federation.
"""
