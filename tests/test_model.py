import math

import numpy as np
import pytest

from federation.metrics import credit_metrics
from federation.model import Scorecard, build_model, get_arrays, set_arrays


def test_scorecard_points_to_double_the_odds():
    card = Scorecard(base_score=600, base_odds=50, pdo=20)
    p_at_base = 1 / 51  # good:bad odds 50:1
    assert card.score(np.array([p_at_base]))[0] == pytest.approx(600)
    p_double = 1 / 101  # odds 100:1 -> 20 points more
    assert card.score(np.array([p_double]))[0] == pytest.approx(620)
    p = np.array([0.01, 0.05, 0.2, 0.6])
    scores = card.score(p)
    assert np.all(np.diff(scores) < 0)  # riskier borrowers score lower
    np.testing.assert_allclose(card.probability(scores), p, rtol=1e-9)


def test_scorecard_is_configurable():
    assert Scorecard(base_score=500, base_odds=20, pdo=40).score(np.array([1 / 21]))[0] == pytest.approx(500)


def test_model_arrays_round_trip():
    model = build_model("mlp", 7, hidden=5, seed=1)
    arrays = get_arrays(model)
    assert {k: v.shape for k, v in arrays.items()} == {
        "hidden.weight": (5, 7),
        "hidden.bias": (5,),
        "out.weight": (1, 5),
        "out.bias": (1,),
    }
    other = build_model("mlp", 7, hidden=5, seed=2)
    set_arrays(other, arrays)
    for k, v in get_arrays(other).items():
        np.testing.assert_array_equal(v, arrays[k])


def test_credit_metrics_match_definitions():
    y = np.array([0, 0, 1, 1, 0, 1])
    p = np.array([0.1, 0.4, 0.35, 0.8, 0.2, 0.9])
    m = credit_metrics(y, p)
    assert m["auc"] == pytest.approx(8 / 9)
    assert m["gini"] == pytest.approx(2 * 8 / 9 - 1)
    assert m["ks"] == pytest.approx(2 / 3)
    assert m["brier"] == pytest.approx(np.mean((p - y) ** 2))
    assert math.isnan(credit_metrics(np.zeros(4), np.full(4, 0.3))["auc"])


def test_credit_metrics_equal_scikit_learns_own_calls_with_ties_and_refuse_other_outcomes():
    """credit_metrics skips scikit-learn's argument checks (it checks once itself), takes the AUC from the one
    ROC curve it also uses for KS and computes the log loss of two outcomes itself: the same numbers as
    scikit-learn's roc_auc_score, brier_score_loss and log_loss. A NaN score is refused by its own check."""
    from sklearn.metrics import brier_score_loss, log_loss, roc_auc_score

    rng = np.random.default_rng(3)
    y = (rng.random(500) < 0.25).astype(float)
    p = np.round(rng.random(500), 2)  # ties
    m = credit_metrics(y, p)
    assert m["auc"] == roc_auc_score(y, p)
    assert m["brier"] == pytest.approx(brier_score_loss(y, np.clip(p, 1e-7, 1 - 1e-7)), rel=1e-12)
    assert m["loss"] == pytest.approx(log_loss(y, np.clip(p, 1e-7, 1 - 1e-7), labels=[0, 1]), rel=1e-12)
    with pytest.raises(ValueError, match="outcomes 0 or 1"):
        credit_metrics(np.array([0.0, 2.0, 1.0]), np.array([0.1, 0.2, 0.3]))
    with pytest.raises(ValueError, match="finite scores"):
        credit_metrics(y, np.where(np.arange(500) == 7, np.nan, p))
    with pytest.raises(ValueError, match="finite scores"):  # one class: no ROC curve, still refused
        credit_metrics(np.zeros(3), np.array([0.1, np.nan, 0.3]))


@pytest.mark.parametrize(
    "array",
    [
        np.arange(6, dtype=np.float32).reshape(2, 3),
        np.asfortranarray(np.arange(6.0).reshape(2, 3)),
        np.array(3.0),
        np.zeros((0, 4), np.int64),
        np.arange(5, dtype=">i4"),
        np.array([True, False]),
        np.zeros(3, dtype=[("a", "<f4"), ("b", "<i2")]),
    ],
)
def test_array_numpy_returns_what_flowers_array_numpy_returns(array):
    """federation.messages.array_numpy parses each .npy header once: the same values, dtype, shape, memory order and
    a writable array of its own, as Flower's Array.numpy()."""
    from flwr.app import Array

    from federation.messages import array_numpy

    wire = Array(array)
    ours, flowers = array_numpy(wire), wire.numpy()
    assert ours.dtype == flowers.dtype and ours.shape == flowers.shape and np.array_equal(ours, flowers)
    assert ours.flags.writeable and ours.flags.f_contiguous == flowers.flags.f_contiguous
    ours[...] = 0  # its own copy: the message's bytes are untouched
    assert np.array_equal(wire.numpy(), array)


def test_array_numpy_leaves_truncated_pickled_or_odd_bytes_to_numpys_refusal():
    """A reply whose bytes do not match their header, or that holds a pickle, is refused exactly as np.load refuses
    it: the fast path never reads past the bytes or unpickles."""
    from flwr.app import Array

    from federation.messages import array_numpy

    good = Array(np.arange(4, dtype=np.float64))
    short = Array(dtype=good.dtype, shape=good.shape, stype=good.stype, data=good.data[:-8])
    with pytest.raises(ValueError):
        array_numpy(short)
    import io

    buf = io.BytesIO()
    np.save(buf, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    pickled = Array(dtype="object", shape=(1,), stype=good.stype, data=buf.getvalue())
    with pytest.raises(ValueError, match="pickle"):
        array_numpy(pickled)
    for shape in ((-2, -2), (-1, 4)):  # a forged header: as many bytes as 4 values, an impossible shape
        text = good.data[10:].split(b"}", 1)[0].replace(b"(4,)", repr(shape).encode()) + b"}"
        forged = good.data[:8] + len(text + b"\n").to_bytes(2, "little") + text + b"\n" + good.data[-32:]
        with pytest.raises(ValueError):
            array_numpy(Array(dtype=good.dtype, shape=(4,), stype=good.stype, data=forged))
