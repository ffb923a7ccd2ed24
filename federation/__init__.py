"""fedcredit's shared vocabulary: configuration, dataset cards, policy, encoding, models, privacy, messages and
the audit trail.

It imports neither the lender (`clients/`) nor the coordinator (`server/`) nor the engines and command line
(`fedcredit/`); both sides build on it (import-linter contracts in pyproject.toml).
"""

__version__ = "0.1.0"
