"""fedcredit's shared vocabulary: configuration, dataset cards, policy, models, privacy.

Nothing in this package runs a Flower server or client; `clients/` and `server/` build on it.
"""

__version__ = "0.1.0"
