"""Red team: the per-message caches (a28a301) and the fast .npy decoder (181bbca, 8a36a7b).

Attacked as the coordinator (it crafts every message a lender receives: its ConfigRecord, its ArrayRecords and their
bytes), as a lender whose replies reach the server, and as a lender's own operator editing its folder:
1. federation.messages.array_numpy returns what Flower's Array.numpy() (np.load, allow_pickle=False) returns, or
   raises what it raises, on forged headers; its header cache never answers for another message's header or data;
   the server's inspector refuses malformed replies exactly as with Array.numpy().
   Found: subarray dtypes ('(0,)<f4') and zero-width dtypes ('V0', 'S0', a structure of no fields) were refused
   where np.load accepts them; now they go to np.load. Headers over np.load's 10,000 characters no longer enter the
   header cache. Found (older than the cache): arrays np.load refuses raised out of inspect_reply and stopped the
   coordinator's round; now a rejected reply.
2. run_config_from: refusals at every message, no sharing between requests that differ in value or type.
   Found: a request with -0.0 was answered by the RunConfig (and run id) of one with 0.0; fixed in
   run_config_from (a float's repr is part of the key) and clients/session.py _run_id (keyed by identity).
3. load_policy and load_or_create: edits, replaced files and symlink swaps take effect at the next message; a file
   gone bad fails at every message; a policy's `data` is read-only (no path mutated it; now none can). Found: a
   key swapped for a dangling link, or a folder, raised FileExistsError / IsADirectoryError; now one ConfigError.
4. records-in-memory: only the in-process engine's True, never in the long-lived worker, never from a message.
5. clients/app.py _first_step: touches nothing of the lender's, and a failing warm-up does not stop the worker.
"""

from __future__ import annotations

import itertools
import os

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict

from clients import session
from clients.home import LenderHome, init_lender
from federation import messages
from federation.audit_trail.canonical import config_hash
from federation.config import RunConfig
from federation.errors import ConfigError
from federation.lender_policy import LenderPolicy, PolicyError, load_policy
from federation.messages import (
    ReplyRejected,
    array_numpy,
    inspect_reply,
    run_config_from,
    run_config_record,
    salvage_train_reply,
)
from federation.model import array_shapes, build_model


@pytest.fixture(autouse=True)
def _task_identity():
    # flwr.supercore is Flower's internal package (checked against flwr 1.42.0); a Message outside a run needs it.
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 1


# ---- 1. the .npy decoder ------------------------------------------------------------------------------------------


def _npy(header: str, version: bytes = b"\x01\x00") -> bytes:
    """A .npy header as np.save writes it (padded to 64 bytes, ending in a newline), with any dict text."""
    text = header.encode("latin1")
    width = 4 if version != b"\x01\x00" else 2
    pad = (64 - (8 + width + len(text) + 1) % 64) % 64
    text += b" " * pad + b"\n"
    return b"\x93NUMPY" + version + len(text).to_bytes(width, "little") + text


def _array(data: bytes) -> Array:
    return Array(dtype="", shape=(), stype="numpy.ndarray", data=data)


def _outcome(decode, data: bytes):
    try:
        return "ok", decode(_array(data))
    except Exception as exc:  # what np.load raises is the reference: any type
        return "raises", type(exc)


def _raw(a: np.ndarray) -> bytes:
    return np.ascontiguousarray(a).reshape(-1).view(np.uint8).tobytes() if a.dtype.itemsize else b""


def _assert_same(data: bytes, label: str) -> None:
    ref, got = _outcome(Array.numpy, data), _outcome(array_numpy, data)
    assert ref[0] == got[0], f"{label}: np.load {ref}, array_numpy {got}"
    if ref[0] == "raises":
        assert ref[1] is got[1], label
        return
    r, g = ref[1], got[1]
    assert type(g) is np.ndarray and g.dtype == r.dtype and g.shape == r.shape, label
    assert (g.flags.c_contiguous, g.flags.f_contiguous) == (r.flags.c_contiguous, r.flags.f_contiguous), label
    assert _raw(g) == _raw(r), label
    assert g.flags.writeable, label
    assert not np.shares_memory(g, np.frombuffer(data, np.uint8)), label


DESCRS = [
    "'<f4'",
    "'>f8'",
    "'|u1'",
    "'|b1'",
    "'<c16'",
    "'<M8[ns]'",
    "'<U3'",
    "'<U0'",
    "'|S0'",
    "'|V0'",
    "[]",
    "'(2,)<f8'",
    "'(0,)<f4'",
    "[('a','<f4',(2,))]",
    "[('a','<i4'),('b','>f8')]",
    "[('a','O')]",
    "[('a','<f4'),('b',[('c','O')])]",
    "'O'",
    "'foo'",
    "'<f4 '",
    "3",
]
SHAPES = [
    "()",
    "(0,)",
    "(3,)",
    "(2,3)",
    "(0,5)",
    "(-1,)",
    "(2,-3)",
    "(-2,-3)",
    "(2**40,)",
    "(2**32,2**32)",
    "(0,2**70)",
    "(1.0,)",
    "(True,)",
    "[3]",
]


def test_array_numpy_is_np_load_on_forged_headers():
    """Every descr x shape x order, with exact, one byte short and one byte over-long data: the same array (dtype,
    shape, memory order, bytes, writable, not aliasing the message) or the same exception type as np.load."""
    for descr, shape, order in itertools.product(DESCRS, SHAPES, ["False", "True", "0"]):
        head = _npy(f"{{'descr': {descr}, 'fortran_order': {order}, 'shape': {shape}, }}")
        try:
            itemsize, count = np.dtype(eval(descr)).itemsize, int(np.prod(eval(shape)))
            size = itemsize * count if 0 <= count < 10_000 else 24
        except Exception:
            size = 24
        body = (bytes(range(256)) * (size // 256 + 1))[:size]
        for data in (head + body, head + body + b"\x07", (head + body)[:-1]):
            _assert_same(data, f"{descr} {shape} {order} {len(data) - len(head) - size:+d}")


def test_array_numpy_refuses_what_np_load_refuses():
    good = np.arange(6, dtype="<f4").reshape(2, 3)
    import io

    saved = io.BytesIO()
    np.save(saved, good)
    plain = saved.getvalue()
    saved = io.BytesIO()
    np.save(saved, np.array([{"x": 1}], dtype=object), allow_pickle=True)
    pickled = saved.getvalue()
    header_end = 10 + int.from_bytes(plain[8:10], "little")
    cases = {
        "pickle": pickled,
        "raw pickle": pickled[header_end:],
        "version 2": _npy("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }", b"\x02\x00")
        + plain[header_end:],
        "version 3": _npy("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }", b"\x03\x00")
        + plain[header_end:],
        "version 9": b"\x93NUMPY\x09\x00" + plain[8:],
        "header length past the data": plain[:8] + (60_000).to_bytes(2, "little") + plain[10:],
        "header length short": plain[:8] + (10).to_bytes(2, "little") + plain[10:],
        "header over np.load's 10,000": _npy(
            "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }" + " " * 12_000
        )
        + plain[header_end:],
        "no header": plain[:9],
        "extra key": _npy("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), 'x': 1}") + plain[header_end:],
        "not a dict": _npy("[1, 2]") + plain[header_end:],
        "a call": _npy("{'descr': '<f4', 'fortran_order': False, 'shape': __import__('os').getpid()}")
        + plain[header_end:],
        "order 1": _npy("{'descr': '<f4', 'fortran_order': 1, 'shape': (2, 3), }") + plain[header_end:],
        "empty": b"",
        "zip": b"PK\x03\x04" + plain,
    }
    for label, data in cases.items():
        _assert_same(data, label)
    cached = messages._npy_header.cache_info().currsize
    for n in range(5):  # headers np.load refuses for their length do not fill the header cache
        _assert_same(_npy("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }" + " " * (20_000 + n)), "long")
    assert messages._npy_header.cache_info().currsize == cached
    core = "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }"
    for n in (9_999, 10_000, 10_001):  # np.load's limit on the header's characters, newline included
        text = (core + " " * (n - len(core) - 1) + "\n").encode()
        _assert_same(b"\x93NUMPY\x01\x00" + len(text).to_bytes(2, "little") + text + plain[header_end:], f"{n}")
    _assert_same(plain, "np.save")
    assert np.array_equal(array_numpy(_array(plain)), good)


def test_the_header_cache_never_answers_for_another_message():
    """Two messages with one header and different values, and one body under two headers: each decodes as its own."""
    first, second = np.arange(6, dtype="<f4").reshape(2, 3), -np.arange(6, dtype="<f4").reshape(2, 3)
    a, b = ArrayRecord({"w": Array(first)}), ArrayRecord({"w": Array(second)})
    assert a["w"].data[:64] == b["w"].data[:64]
    assert np.array_equal(array_numpy(a["w"]), first) and np.array_equal(array_numpy(b["w"]), second)
    data = a["w"].data
    end = 10 + int.from_bytes(data[8:10], "little")
    as_int = _npy("{'descr': '<i4', 'fortran_order': False, 'shape': (2, 3), }") + data[end:]
    as_fortran = _npy("{'descr': '<f4', 'fortran_order': True, 'shape': (3, 2), }") + data[end:]
    for forged in (as_int, as_fortran, data):
        _assert_same(forged, "same body, another header")
    assert array_numpy(_array(as_int)).dtype == np.int32 and array_numpy(_array(as_fortran)).flags.f_contiguous
    decoded = array_numpy(a["w"])
    decoded[0, 0] = 99.0  # the caller's own copy: the next decoding of the same message is unchanged
    assert array_numpy(a["w"])[0, 0] == 0.0


def _reply(content: dict) -> Message:
    ins = Message(RecordDict({}), dst_node_id=5, message_type="train")
    ins.metadata.__dict__["_message_id"] = "x"  # private Metadata field (flwr 1.42.0): a reply needs an id
    return Message(RecordDict(content), reply_to=ins)


def _judged(reply: Message, shapes):
    try:
        return "accepted", sorted(inspect_reply(reply, shapes)["arrays"])
    except ReplyRejected as exc:
        return "rejected", str(exc)
    except Exception as exc:  # the inspector's caller (server/screening.py) handles what escapes it
        return type(exc).__name__, str(exc)


def test_the_server_judges_malformed_replies_as_with_flowers_decoder(monkeypatch):
    """A lender's training reply with forged arrays: the inspector's verdict is the one it gave with
    Array.numpy() (the code before a28a301), for each forgery."""
    model = build_model("logreg", 4)
    shapes = array_shapes(model)
    good = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
    written = Array(good["linear.weight"])  # what Flower sends: the .npy bytes, and its dtype and shape fields
    weight = written.data

    def sent(data: bytes) -> Array:
        return Array(dtype=written.dtype, shape=written.shape, stype=written.stype, data=data)

    end = 10 + int.from_bytes(weight[8:10], "little")
    forged = {
        "good": weight,
        "truncated": weight[:-1],
        "over-long": weight + b"\0" * 8,
        "object dtype": _npy("{'descr': '|O', 'fortran_order': False, 'shape': (1, 4), }") + b"\0" * 32,
        "subarray": _npy("{'descr': '(4,)<f4', 'fortran_order': False, 'shape': (1,), }") + weight[end:],
        "zero-width": _npy("{'descr': '|V0', 'fortran_order': False, 'shape': (1, 4), }"),
        "big-endian": _npy("{'descr': '>f4', 'fortran_order': False, 'shape': (1, 4), }") + weight[end:],
        "wrong shape": _npy("{'descr': '<f4', 'fortran_order': False, 'shape': (4, 1), }") + weight[end:],
        "negative": _npy("{'descr': '<f4', 'fortran_order': False, 'shape': (-1, -4), }") + weight[end:],
        "NaN": _npy("{'descr': '<f4', 'fortran_order': False, 'shape': (1, 4), }")
        + np.full(4, np.nan, "<f4").tobytes(),
        "structured": _npy("{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (1, 4), }") + weight[end:],
        "zip": b"PK\x03\x04" + weight,
        "empty": b"",
        "text": _npy("{'descr': '<U1', 'fortran_order': False, 'shape': (1, 4), }") + b"\0" * 16,
    }
    metrics = MetricRecord({"num-examples": 10, "declined": 0, "epsilon": 0.5})
    verdicts = {}
    for label, data in forged.items():
        arrays = ArrayRecord({k: Array(v) for k, v in good.items()})
        arrays["linear.weight"] = sent(data)
        verdicts[label] = _judged(_reply({"arrays": arrays, "metrics": metrics}), shapes)
    assert verdicts["good"] == ("accepted", sorted(shapes)) and verdicts["NaN"][0] == "rejected"
    # What np.load refuses, and arrays of no numbers, are rejected replies: a ValueError, TypeError or BadZipFile
    # escaping the inspector stopped the coordinator's round (server/screening.py catches ReplyRejected).
    rejected = (
        "truncated",
        "over-long",  # bytes after the values, which np.load ignores: a channel no signature covers
        "big-endian",  # values as np.save would write no float32 array of this model's
        "object dtype",
        "zero-width",
        "structured",
        "zip",
        "text",
        "empty",
        "wrong shape",
        "negative",
    )
    for label in rejected:
        assert verdicts[label][0] == "rejected", (label, verdicts[label])
        arrays = ArrayRecord({k: Array(v) for k, v in good.items()})
        arrays["linear.weight"] = sent(forged[label])
        salvage_train_reply(_reply({"arrays": arrays, "metrics": metrics}))  # returns, whatever it salvages
    monkeypatch.setattr(messages, "array_numpy", Array.numpy)
    for label, data in forged.items():
        arrays = ArrayRecord({k: Array(v) for k, v in good.items()})
        arrays["linear.weight"] = sent(data)
        assert _judged(_reply({"arrays": arrays, "metrics": metrics}), shapes) == verdicts[label], label


def test_a_reply_carries_nothing_beyond_its_values_as_flower_writes_them():
    """A red team's channels from a lender to the coordinator that the signature (over the decoded values) does not
    cover and np.load ignores: a comment or padding in the .npy header, a dtype alias, a version 2 header, bytes after
    the values, and the Array's own dtype and shape fields. Each is a rejected reply; the values as Flower writes them
    are accepted."""
    model = build_model("logreg", 4)
    shapes = array_shapes(model)
    good = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
    written = Array(good["linear.weight"])
    values = good["linear.weight"].tobytes()
    metrics = MetricRecord({"num-examples": 10, "declined": 0, "epsilon": 0.5})
    plain = "{'descr': '<f4', 'fortran_order': False, 'shape': (1, 4), }"
    channels = {
        "as written": written,
        "a comment in the header": _npy(
            "{'descr': '<f4', # applicant 123 income 55000\n 'fortran_order': False, 'shape': (1, 4), }"
        )
        + values,
        "padding": _npy(plain + " " * 900) + values,
        "a dtype alias": _npy("{'descr': 'float32', 'fortran_order': False, 'shape': (1, 4), }") + values,
        "version 2": _npy(plain, b"\x02\x00") + values,
        "bytes after": written.data + b"secret",
        "the dtype field": Array(dtype="applicant 123", shape=written.shape, stype=written.stype, data=written.data),
        "the shape field": Array(dtype=written.dtype, shape=(55000, 123), stype=written.stype, data=written.data),
    }
    flags = Array(np.array([True, False]))  # a bool's byte: 1 bit of value, 7 bits a lender could fill
    channels["bool bytes"] = Array(
        dtype=flags.dtype, shape=flags.shape, stype=flags.stype, data=flags.data[:-2] + b"\x07\x00"
    )
    for label, array in channels.items():
        if isinstance(array, bytes):
            array = Array(dtype=written.dtype, shape=written.shape, stype=written.stype, data=array)
        arrays = ArrayRecord({k: Array(v) for k, v in good.items()})
        arrays["linear.weight"] = array
        verdict = _judged(_reply({"arrays": arrays, "metrics": metrics}), shapes)
        if label == "as written":
            assert verdict == ("accepted", sorted(shapes)), verdict
        elif label == "bool bytes":
            assert verdict[0] == "rejected" and "neither 0 nor 1" in verdict[1], verdict
        else:
            assert verdict[0] == "rejected" and "as Flower writes" in verdict[1], (label, verdict)


# ---- 2. the run configuration of a request --------------------------------------------------------------------------


def test_a_refused_request_is_refused_at_every_message_and_names_its_key():
    record = dict(run_config_record(RunConfig()))
    cases = [("epsilon", -1.0), ("epsilon", float("nan")), ("rounds", 0), ("rounds", "many"), ("model", "x")]
    # unhashable values (lists) and bytes where one setting belongs; bool([False]) was True before
    cases += [
        ("rounds", [1, 2]),
        ("dp", [False]),
        ("secure-aggregation", []),
        ("dataset", ["synthetic"]),
        ("model", b"x"),
    ]
    for key, value in cases:
        bad = {**record, key: value}
        with pytest.raises(ConfigError) as uncached:
            RunConfig.from_record(bad)
        for _ in range(3):
            with pytest.raises(ConfigError) as cached:
                run_config_from(ConfigRecord(bad))
            assert str(cached.value) == str(uncached.value) and key in str(cached.value)


def test_requests_differing_in_value_or_type_never_share_a_run_config():
    """-0.0 and 0.0 are equal and hash alike, as are True and 1: each request gets what from_record gives it, and
    its own run id (the hash of exactly what it asked)."""
    record = dict(run_config_record(RunConfig()))
    pairs = [("weight-decay", 0.0, -0.0), ("delta", 0.0, -0.0), ("learning-rate", 0.0, -0.0)]
    pairs += [("secure-aggregation", True, 1), ("rounds", 3, 3.0), ("rounds", True, 1), ("epsilon", 2, 2.0)]
    for key, one, other in pairs:
        a, b = {**record, key: one}, {**record, key: other}
        for first, second in ((a, b), (b, a)):
            messages._run_config_of.cache_clear()
            session._RUN_IDS.clear()
            try:
                expected = RunConfig.from_record(second)
            except ConfigError:
                with pytest.raises(ConfigError):
                    run_config_from(ConfigRecord(second))
                continue
            run_config_from(ConfigRecord(first))
            session._run_id(run_config_from(ConfigRecord(first)))
            got = run_config_from(ConfigRecord(second))
            assert repr(got) == repr(expected), key
            assert session._run_id(got) == config_hash(expected.to_record()), key
    zero = run_config_from(ConfigRecord({**record, "weight-decay": 0.0}))
    negative = run_config_from(ConfigRecord({**record, "weight-decay": -0.0}))
    assert repr(negative.weight_decay) == "-0.0"
    assert session._run_id(zero) != session._run_id(negative)


# ---- 3. the policy and the identity key --------------------------------------------------------------------------


def _folder(tmp_path):
    folder = tmp_path / "lender"
    init_lender(folder, LenderPolicy(lender=0, max_epsilon=3.0, data={"dataset": "synthetic"}))
    return folder


def test_a_replaced_or_swapped_policy_takes_effect_and_a_bad_one_fails_every_time(tmp_path):
    folder = _folder(tmp_path)
    policy = folder / "policy.toml"
    text = policy.read_text()
    assert load_policy(folder).max_epsilon == 3.0
    replacement = tmp_path / "new.toml"
    replacement.write_text(text.replace("max_epsilon = 3.0", "max_epsilon = 1.5"))
    os.replace(replacement, policy)  # a new inode
    assert load_policy(folder).max_epsilon == 1.5
    (tmp_path / "a.toml").write_text(text.replace("max_epsilon = 3.0", "max_epsilon = 0.5"))
    (tmp_path / "b.toml").write_text(text.replace("max_epsilon = 3.0", "max_epsilon = 0.25"))
    policy.unlink()
    policy.symlink_to(tmp_path / "a.toml")
    assert load_policy(folder).max_epsilon == 0.5
    (tmp_path / "link").symlink_to(tmp_path / "b.toml")
    os.replace(tmp_path / "link", policy)  # the link swapped for another
    assert load_policy(folder).max_epsilon == 0.25
    for broken in (
        text.replace("max_epsilon = 3.0", "max_epsilon = -1.0"),
        text + "[[",
        text.replace("lender", "lendr"),
    ):
        (tmp_path / "b.toml").write_text(broken)
        for _ in range(3):  # no stale good copy
            with pytest.raises(PolicyError):
                load_policy(folder)
            with pytest.raises(PolicyError):
                _ = LenderHome(folder).policy
    (tmp_path / "b.toml").write_bytes(b"\xff\xfe")
    with pytest.raises(PolicyError):
        load_policy(folder)
    (tmp_path / "b.toml").unlink()  # a dangling link
    with pytest.raises(PolicyError):
        load_policy(folder)
    (tmp_path / "b.toml").write_text(text)
    assert load_policy(folder).max_epsilon == 3.0


def test_a_cached_policys_data_cannot_be_changed_by_one_session_for_the_next(tmp_path):
    folder = _folder(tmp_path)
    first = load_policy(folder)
    assert load_policy(folder) is first  # the same object: what one Session could change, the next would see
    with pytest.raises(TypeError):
        first.data["dataset"] = "csv"  # type: ignore[index]
    with pytest.raises(TypeError):
        del first.data["dataset"]  # type: ignore[attr-defined]
    assert load_policy(folder).data == {"dataset": "synthetic"}
    given = {"dataset": "synthetic"}
    made = LenderPolicy(lender=0, max_epsilon=1.0, data=given)
    given["dataset"] = "csv"  # the caller's dict is copied, not kept
    assert made.data["dataset"] == "synthetic" and made.to_toml().count('dataset = "synthetic"') == 1


def test_an_edited_replaced_or_swapped_key_is_the_one_used_and_a_bad_one_fails_every_time(tmp_path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from federation.audit_trail.keys import load_or_create, public_hex

    folder = _folder(tmp_path)
    path = folder / "identity.key"
    original = public_hex(load_or_create(folder, "identity"))

    def pem(key) -> bytes:
        return key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    other, third = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    times = path.stat()
    path.write_bytes(pem(other))  # the same size (PKCS8 Ed25519 PEM) and times
    os.utime(path, ns=(times.st_atime_ns, times.st_mtime_ns))
    assert path.stat().st_size == times.st_size
    assert public_hex(load_or_create(folder, "identity")) == public_hex(other) != original
    (tmp_path / "third.key").write_bytes(pem(third))
    (tmp_path / "link").symlink_to(tmp_path / "third.key")
    os.replace(tmp_path / "link", path)
    assert public_hex(load_or_create(folder, "identity")) == public_hex(third)
    (tmp_path / "third.key").write_bytes(pem(third)[:-40] + b"\n")
    for _ in range(3):
        with pytest.raises(ConfigError):
            load_or_create(folder, "identity")
    (tmp_path / "third.key").write_bytes(pem(third))
    assert public_hex(load_or_create(folder, "identity")) == public_hex(third)
    (tmp_path / "third.key").unlink()  # the link now points at nothing: refused, no new key made through it
    for _ in range(2):
        with pytest.raises(ConfigError, match="link to a missing file"):
            load_or_create(folder, "identity")
    assert not (tmp_path / "third.key").exists()
    path.unlink()
    path.mkdir()  # a folder where the key belongs: one line, not an IsADirectoryError
    with pytest.raises(ConfigError, match="cannot read private key"):
        load_or_create(folder, "identity")


# ---- 4. records in memory ---------------------------------------------------------------------------------------


def _session(folder, node_config: dict, extra: dict | None = None, run_config: dict | None = None):
    config = ConfigRecord({**dict(run_config_record(RunConfig())), "server-round": 1, **(extra or {})})
    msg = Message(RecordDict({"config": config}), dst_node_id=7, message_type="train")
    context = Context(run_id=1, node_id=7, node_config=node_config, state=RecordDict(), run_config=run_config or {})
    return session.Session(msg, context)


def test_a_deployed_lender_never_takes_the_in_memory_path(tmp_path, monkeypatch):
    folder = str(_folder(tmp_path))
    deployed = {"lender-dir": folder, "lender-id": 0}
    assert _session(folder, deployed).deployed
    # the coordinator's message and run config cannot set node config
    assert _session(folder, deployed, {session.IN_MEMORY: True}, {session.IN_MEMORY: True}).deployed
    # an operator's string is not the engine's True
    for value in ("false", "true", 1, "0"):
        assert _session(folder, {**deployed, session.IN_MEMORY: value}).deployed, value
    assert not _session(folder, {**deployed, session.IN_MEMORY: True}).deployed  # fedcredit/runner.py
    monkeypatch.setattr(session, "LONG_LIVED", True)  # the lender's worker checks its records at every message
    assert _session(folder, {**deployed, session.IN_MEMORY: True}).deployed


# ---- 5. the worker's warm-up step -----------------------------------------------------------------------------


def _tree(folder) -> dict:
    return {
        str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_the_warm_up_step_touches_nothing_of_the_lenders_and_never_stops_the_worker(tmp_path, monkeypatch, capsys):
    import torch

    from clients import app

    folder = _folder(tmp_path)
    home = LenderHome(folder)
    with home.spent() as spent:
        spent["runs"]["r"] = {"releases": 2, "events": [], "sigma": None, "closed": False}
    before = _tree(folder)
    monkeypatch.chdir(tmp_path)
    cwd_before = sorted(p.name for p in tmp_path.iterdir())
    from federation.model import build_model

    fresh = {k: v.clone() for k, v in build_model("mlp", 5, 3).state_dict().items()}
    after_fresh = torch.random.get_rng_state()
    app._first_step()
    assert _tree(folder) == before and sorted(p.name for p in tmp_path.iterdir()) == cwd_before
    # The warm-up draws from torch's global generator (its models' initial weights); every model a message builds
    # reseeds it (federation.model.build_model), so what a message computes does not depend on the warm-up.
    warmed = build_model("mlp", 5, 3).state_dict()
    assert all(torch.equal(warmed[k], fresh[k]) for k in fresh)
    assert torch.equal(torch.random.get_rng_state(), after_fresh)
    with home.spent() as spent:
        assert spent["runs"]["r"]["releases"] == 2

    def broken() -> None:
        raise RuntimeError("no torch today")

    monkeypatch.setattr(app, "_first_step", broken)
    app.warm_up(folder)  # returns: the first message meets the problem and reports it
    assert "no warm-up step (RuntimeError: no torch today)" in capsys.readouterr().err
    assert _tree(folder).keys() >= before.keys()
