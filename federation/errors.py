"""User-facing errors: each carries a one-line message that names the problem."""


class FedCreditError(Exception):
    """Base class for errors caused by input or configuration (printed without a traceback)."""


class ConfigError(FedCreditError):
    """An option or combination of options is invalid."""


class DataError(FedCreditError):
    """A dataset file, its schema or its values are unusable."""


class CardError(FedCreditError):
    """A dataset card is malformed or does not describe the data."""


class PolicyViolation(FedCreditError):
    """Data the policy forbids would reach training."""
