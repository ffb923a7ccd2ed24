"""One message, as the lender sees it: its own folder, policy and records, and what the coordinator asks.

The lender's folder comes from where the lender's operator put it, never from the coordinator: the SuperNode's
node config (`lender-dir`, deployment), or the folder fedcredit made for each simulated lender
($FEDCREDIT_LENDERS_DIR/lender_NNN, set by the simulation harness before the lenders start). A lender started with
neither (a plain `flwr run .`) makes a demo folder under $FLWR_HOME with the default policy, whose data keys are
taken from the run configuration: acceptable on one machine for a demo, and said so in the manifest's policy.
"""

from __future__ import annotations

import hashlib
import os
from functools import cached_property, lru_cache
from pathlib import Path

import numpy as np
from flwr.app import ConfigRecord, Context, Message

from clients.home import LenderHome, init_lender
from clients.record_cache import records_key
from federation.audit_trail.attest import signed_record
from federation.audit_trail.canonical import arrays_hash, canonical, config_hash
from federation.audit_trail.keys import lender_name
from federation.config import RunConfig
from federation.errors import ConfigError, DataError
from federation.lender_policy import DATA_KEYS, FILE_NAME, LenderPolicy
from federation.lender_records import LenderData
from federation.messages import ARRAYS, CONFIG, array_record, config_int, config_record, numpy_arrays, run_config_from

LENDERS_DIR_ENV = "FEDCREDIT_LENDERS_DIR"
IN_MEMORY = "records-in-memory"  # node config: the lender's records stay in this process's memory, not in its folder
DEMO_MAX_EPSILON = 10.0  # the default policy of a lender nobody configured (a plain `flwr run .`)


def node_lender_id(context: Context) -> int | None:
    """The lender id the node says it is: the node config's lender-id (deployment) or Flower's partition-id."""
    config = context.node_config
    value = config.get("lender-id", config.get("partition-id"))
    return None if value is None else int(value)


def lender_folder(context: Context, request: RunConfig) -> Path:
    config = context.node_config
    if config.get("lender-dir"):
        return Path(str(config["lender-dir"]))
    lender = node_lender_id(context) or 0
    if os.environ.get(LENDERS_DIR_ENV):
        return Path(os.environ[LENDERS_DIR_ENV]) / lender_name(lender)
    # One demo folder per lender, for every run (its lifetime budget must not restart with each Flower run), with
    # DP always required; only its data keys come from the request, and the policy says so (`demo`).
    folder = Path(os.environ.get("FLWR_HOME", ".flwr")) / "fedcredit-lenders" / lender_name(lender)
    record = request.to_record()
    data = {k: record[k] for k in DATA_KEYS}  # a placeholder: a demo lender reads the request's data keys each time
    if not (folder / FILE_NAME).exists():
        init_lender(folder, LenderPolicy(lender=lender, max_epsilon=DEMO_MAX_EPSILON, demo=True, data=data))
    return folder


# Set by the lender's worker (clients/worker.py), one process that answers every message of its lender for as long
# as it runs: there the records are checked against their content at every message. A process per message, and the
# in-process engine (every lender of one run in one process), read them once.
LONG_LIVED = False
_CURRENT: dict[str, tuple[str, LenderData]] = {}  # a long-lived lender's records: folder -> (content key, records)
_READ: dict[tuple[RunConfig, int, str], str] = {}  # the content key each source was last read from files under


def _records(folder: str, data: RunConfig, lender: int, canaries: str, deployed: bool = False) -> LenderData:
    """A lender's encoded records. A deployed lender also keeps them in its own folder under a key of the content of
    everything they come from (clients/record_cache.py): an edited file gives another key and is read again."""
    if not deployed:
        return _simulated(folder, data, lender, canaries)
    if not LONG_LIVED:
        return _deployed_once(folder, data, lender, canaries)
    key = records_key(data, lender, canaries)
    if _CURRENT.get(folder, ("",))[0] != key:
        _CURRENT[folder] = (key, _from_folder(folder, data, lender, canaries, key))
    return _CURRENT[folder][1]


@lru_cache(maxsize=1024)
def _deployed_once(folder: str, data: RunConfig, lender: int, canaries: str) -> LenderData:
    return _from_folder(folder, data, lender, canaries, records_key(data, lender, canaries))


def _from_folder(folder: str, data: RunConfig, lender: int, canaries: str, key: str) -> LenderData:
    """The records cached in the lender's folder under `key`, else read, encoded and cached there."""
    home = LenderHome(folder)
    cached = home.cached_records(key)
    if cached is None:
        source = (data, lender, canaries)
        if _READ.get(source, key) != key:
            # This process read these files before and their content changed since: the data layer's caches
            # (keyed by paths and file times) must not answer, or a long-lived worker would be handed the
            # records it read before the lender edited them (tests/test_redteam_worker.py).
            from federation.data import forget_loaded

            forget_loaded()
        cached = _load(data, lender, canaries)
        _READ[source] = key
        home.save_records(key, cached)
    return cached


@lru_cache(maxsize=1024)
def _simulated(folder: str, data: RunConfig, lender: int, canaries: str) -> LenderData:
    return _load(data, lender, canaries)


def forget_records() -> None:
    """Nothing in this process's memory (a new process per message starts so)."""
    _CURRENT.clear()
    _READ.clear()
    _deployed_once.cache_clear()
    _simulated.cache_clear()


def preload_records(folder: Path) -> LenderData:
    """A deployed lender's records as its policy names them, read ahead of its first message (its worker)."""
    home = LenderHome(folder)
    policy = home.policy
    # keyed by the folder as a Session names it (resolved), so that the first message finds them
    return _records(str(home.folder), policy.data_config(), policy.lender, policy.audit_canaries, True)


def _load(data: RunConfig, lender: int, canaries: str) -> LenderData:
    from federation.data import load_lender  # pandas and the loaders: only when the records are read

    extra = None
    if canaries:
        try:
            with np.load(canaries, allow_pickle=False) as file:
                extra = (file["x"], file["y"])
        except (OSError, KeyError, ValueError) as exc:
            raise DataError(f"lender {lender}: cannot read its audit canaries {canaries} ({exc})") from None
    return load_lender(data, lender, extra)


_RUN_IDS: dict[int, tuple[RunConfig, str]] = {}  # id(request) -> (request, its run id); the request is kept alive


def _run_id(request: RunConfig) -> str:
    """The run a request belongs to: the hash of its configuration, computed once per RunConfig object
    (run_config_from hands every message of a run the same one). Keyed by identity, not equality: RunConfigs
    holding 0.0 and -0.0 are equal but hash to different runs (tests/test_redteam_cache.py)."""
    hit = _RUN_IDS.get(id(request))
    if hit is not None and hit[0] is request:
        return hit[1]
    run = config_hash(request.to_record())
    if len(_RUN_IDS) >= 256:
        _RUN_IDS.clear()
    _RUN_IDS[id(request)] = (request, run)
    return run


class Session:
    """The lender's view of one message."""

    def __init__(self, msg: Message, context: Context) -> None:
        self.msg, self.context = msg, context
        self.config: ConfigRecord = config_record(msg.content, CONFIG)
        self.request = run_config_from(self.config)
        self.run = _run_id(self.request)
        self.round = config_int(self.config, "server-round") if "server-round" in self.config else 0
        self.home = LenderHome(lender_folder(context, self.request))
        # A lender of the in-process engine (fedcredit/runner.py) shares the process of the run that loaded its records
        # and keeps them in memory: a copy in its folder would be written for nothing (1,000 files for 1,000 lenders).
        # Only the engine's own True counts (an operator's "false" is a truthy string), and never in the long-lived
        # worker: there the records must be checked against their content at every message.
        in_memory = context.node_config.get(IN_MEMORY) is True and not LONG_LIVED
        self.deployed = bool(context.node_config.get("lender-dir")) and not in_memory
        self.policy = self.home.policy
        self.lender = self.policy.lender
        claimed = node_lender_id(context)
        if claimed is not None and claimed != self.lender:
            raise ConfigError(
                f"this node is lender {claimed} but its folder {self.home.folder} belongs to lender {self.lender}"
            )

    @cached_property
    def data(self) -> LenderData:
        source = self.policy.data_config()
        if self.policy.demo:  # a demo lender holds whatever the run configuration names (flagged as such)
            record = self.request.to_record()
            source = LenderPolicy(
                lender=self.lender, max_epsilon=1.0, data={k: record[k] for k in DATA_KEYS}
            ).data_config()
        return _records(str(self.home.folder), source, self.lender, self.policy.audit_canaries, self.deployed)

    @cached_property
    def received(self) -> dict[str, np.ndarray]:
        """The model the coordinator sent, decoded once per message (train, evaluate and the update's body use it)."""
        return numpy_arrays(array_record(self.msg.content, ARRAYS))

    @cached_property
    def received_hash(self) -> str:
        """The hash of the model it was sent: what its request digest, evaluation and update name."""
        return arrays_hash(self.received)

    @property
    def own_records(self) -> int:
        """Training records of the lender's own (an audit's canaries excluded): what its manifest signs."""
        return int(self.data.manifest["train_records"])

    def sign(self, body: dict, with_public_key: bool = False) -> ConfigRecord:
        return signed_record(self.home.identity, body, with_public_key)

    def digest(self, input_hash: str) -> str:
        """This request, exactly: the run, the round, the model it starts from and every setting asked for."""
        request = {"run": self.run, "round": self.round, "input": input_hash, "config": dict(self.config)}
        return hashlib.sha256(canonical(request)).hexdigest()
