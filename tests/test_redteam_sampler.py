"""Red team of the DP-SGD Poisson sampler and noise (federation/privacy/noise.py, federation/fast_dp_sgd.py), as a
curious coordinator who chooses n, the batch size and epochs and reads every release: the sampler must put each
record in each batch with probability at most the accountant's q, whatever happened before, and the noise and the
norm check must be what the accountant assumes."""

import math

import numpy as np
import pytest
import torch
from scipy import stats

from federation import fast_dp_sgd
from federation.model import build_model
from federation.privacy import noise as noise_module
from federation.privacy.noise import ChaChaStream, secure_noised
from federation.training import DPSettings, train_local


class _Keystream:
    """Stands in for the ChaCha20 encryptor: hands out the 64-bit words `first`, then `rest` forever (what
    ChaChaStream.uniform turns into doubles), so a test can drive the sampler through every uniform value."""

    def __init__(self, first: list[int], rest: int) -> None:
        self.words, self.rest = list(first), rest

    def update(self, zeros) -> bytes:
        count = len(zeros) // 8
        head, self.words = self.words[:count], self.words[count:]
        return np.array(head + [self.rest] * (count - len(head)), dtype=np.uint64).tobytes()


def _stream_of(first: list[int], rest: int) -> ChaChaStream:
    stream = ChaChaStream()
    stream._stream = _Keystream(first, rest)  # type: ignore[assignment]
    return stream


TOP = 2**64 - 1


def test_the_largest_keystream_word_gives_a_uniform_below_1():
    # (2^53 - 1) + 0.5 is not a double: it rounded to 2^53 and uniform() returned exactly 1.0 (log 1 = 0: a gap of
    # 1 whatever q), with probability 2^-53 a draw
    u = _stream_of([TOP, 0], 0).uniform(2)
    assert u.min() > 0.0 and u.max() < 1.0


def test_a_rate_below_2_to_the_53_draws_no_record_even_from_the_largest_uniform():
    # q = 5e-324 was drawn at rate 2^-53 (1e307 times q): every draw of the top word was a gap of 1
    batches = _stream_of([TOP] * 64, TOP).poisson_batches(8, 5e-324, 8)
    assert sum(len(b) for b in batches) == 0


def _first_success(q: float, trials: int, word: int) -> float:
    """Where the first record lands when the first keystream word is `word` and every later one is 0 (the
    smallest uniform: the longest gap), inf when none does."""
    flat = np.concatenate(_stream_of([word], 0).poisson_batches(trials, q, 1))
    return float(flat[0]) + 1 if len(flat) else math.inf


@pytest.mark.parametrize("q", [0.5, 0.1])
def test_no_trial_is_a_success_with_probability_above_q_whatever_the_trials_before_it(q):
    """The exact distribution of the first gap over all 2^64 first keystream words (binary search: the gap
    falls as the word grows): the hazard P(G = j) / P(G >= j) is the probability a trial is drawn given the
    j - 1 before it were not, and must never exceed q. The old inversion cut the tail at the smallest uniform:
    after a long run without a success (probability 3e-8 at q = 0.5, 3e-5 at q = 1/313) the next trial was drawn
    with probability above q, up to 1 at the longest gap (so each record at most q, independently, was false)."""
    trials = 2 + int(60 / -math.log1p(-q))  # past the longest gap a 64-bit word can give
    below = 0  # words with a gap < j
    for j in range(1, trials + 1):
        lo, hi = 0, 2**64  # the smallest word whose gap is <= j (2^64: none)
        while lo < hi:
            mid = (lo + hi) // 2
            if _first_success(q, trials, mid) <= j:
                hi = mid
            else:
                lo = mid + 1
        at_most_j = 2**64 - lo
        exactly_j, at_least_j = at_most_j - below, 2**64 - below
        if at_least_j == 0:
            break
        assert exactly_j <= q * at_least_j, f"gap {j}: hazard {exactly_j / at_least_j:.17g} > q = {q}"
        below = at_most_j


def test_positions_past_2_to_the_53_are_refused_not_rounded():
    # float64 positions past 2^53 are not integers any more: records would be skipped or drawn twice
    with pytest.raises(ValueError, match="2\\^53"):
        ChaChaStream().poisson_batches(2**40, 1e-12, 2**14)


def _gaps(q: float, trials: int) -> np.ndarray:
    flat = np.concatenate(ChaChaStream().poisson_batches(trials, q, 1))
    return np.diff(flat, prepend=-1)


@pytest.mark.parametrize("q", [0.5, 0.1, 1 / 313])
def test_the_gaps_are_geometric_with_rate_q(q):
    """Chi-square of the gap values against the exact geometric (bins of about equal probability, the tail
    pooled): a biased inversion (log q for log(1 - q), a floor off by one, a 32-bit uniform) fails it."""
    gaps = _gaps(q, 3_000_000 if q < 0.01 else 400_000)
    # bins at the geometric's 2.5% quantiles, the last one the tail past the 97.5% quantile
    edges = np.unique(1 + np.floor(np.log1p(-np.linspace(0, 0.975, 40)) / math.log1p(-q)))
    observed = np.bincount(np.searchsorted(edges, gaps, side="right") - 1, minlength=len(edges))
    survival = (1 - q) ** (edges - 1)  # P(G >= edge)
    expected = len(gaps) * -np.diff(np.append(survival, 0.0))
    assert len(edges) >= 6 and expected.min() > 20
    assert stats.chisquare(observed, expected).pvalue > 1e-4


def test_the_trials_across_a_batch_boundary_and_across_epochs_are_independent_fair_coins():
    """n = 2 records, 2 steps, q = 1/2: the 4 trials of an epoch (record 1 of step 0 then record 0 of step 1
    straddle the boundary) take each of the 16 patterns with probability 1/16, and the last trial of an epoch says
    nothing about the first of the next (one stream, consecutive calls)."""
    stream = ChaChaStream()
    epochs = 16_000
    patterns = np.zeros(16, dtype=np.int64)
    last, first = np.zeros(epochs, dtype=bool), np.zeros(epochs, dtype=bool)
    for e in range(epochs):
        b0, b1 = stream.poisson_batches(2, 0.5, 2)
        bits = [0 in b0, 1 in b0, 0 in b1, 1 in b1]
        patterns[sum(bit << i for i, bit in enumerate(bits))] += 1
        first[e], last[e] = bits[0], bits[3]
    assert stats.chisquare(patterns).pvalue > 1e-4
    table = np.histogram2d(last[:-1], first[1:], bins=2)[0]
    assert stats.chi2_contingency(table).pvalue > 1e-4


@pytest.mark.parametrize("q", [1 - 2**-53, 1 - 1e-6, 0.999])
def test_a_rate_just_below_1_is_drawn_at_that_rate_not_above(q):
    n, steps = 50_000, 40
    drawn = sum(len(b) for b in ChaChaStream().poisson_batches(n, q, steps))
    trials = n * steps
    assert drawn <= trials
    assert abs(drawn - trials * q) < 6 * math.sqrt(trials * q * (1 - q)) + 2


@pytest.mark.parametrize(("n", "q", "steps"), [(0, 0.5, 3), (1, 0.0, 2), (5, -1.0, 2), (7, 2.0, 1), (3, 1.0, 0)])
def test_degenerate_epochs(n, q, steps):
    batches = ChaChaStream().poisson_batches(n, q, steps)
    assert len(batches) == steps
    assert all(b.tolist() == (list(range(n)) if q >= 1 else []) for b in batches)


def test_one_record_one_step_is_a_coin_of_rate_q():
    stream = ChaChaStream()
    drawn = sum(len(stream.poisson_batches(1, 0.3, 1)[0]) for _ in range(8000))
    assert abs(drawn - 2400) < 5 * math.sqrt(8000 * 0.3 * 0.7)


# ---- the noise ----------------------------------------------------------------------------------------------------


def _twin_streams(monkeypatch) -> tuple[ChaChaStream, ChaChaStream]:
    monkeypatch.setattr(noise_module.os, "urandom", lambda k: bytes(range(k)))
    return ChaChaStream(), ChaChaStream()


def _sums(dtype: torch.dtype) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    wide = torch.randn(6, 5, generator=g).to(dtype)
    return [wide.T, torch.randn((), generator=g).to(dtype), torch.zeros(0, 3, dtype=dtype), wide[:, 1:3]]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_the_foreach_noise_is_the_tensor_by_tensor_noise_bit_for_bit(monkeypatch, dtype):
    """Transposed and sliced (non-contiguous), 0-dimensional and empty tensors: each gets its own slice of one
    float64 secure-mode draw rounded to its dtype, the inputs are left alone, and the next call draws fresh."""
    a, b = _twin_streams(monkeypatch)
    sums = _sums(dtype)
    before = [s.clone() for s in sums]
    for _ in range(2):
        ours = secure_noised(a, 0.7, sums)
        noise, start, expected = 0.7 * b.secure_normal(sum(s.numel() for s in sums)), 0, []
        for s in sums:
            expected.append(s + noise[start : start + s.numel()].view(s.shape).to(s.dtype))
            start += s.numel()
        assert all(x.dtype == s.dtype and x.shape == s.shape for x, s in zip(ours, sums, strict=True))
        assert all(torch.equal(x, e) for x, e in zip(ours, expected, strict=True))
    assert all(torch.equal(s, t) for s, t in zip(sums, before, strict=True))


def test_mixed_dtypes_take_the_same_draw(monkeypatch):
    a, b = _twin_streams(monkeypatch)
    sums = [torch.zeros(4, dtype=torch.float64), torch.zeros(3, dtype=torch.float32)]
    ours = secure_noised(a, 2.0, sums)
    noise = 2.0 * b.secure_normal(7)
    assert torch.equal(ours[0], noise[:4]) and torch.equal(ours[1], noise[4:].float())


def test_the_noise_has_std_sigma_and_no_coordinate_shares_a_draw():
    stream = ChaChaStream()
    single = torch.cat([t.flatten() for t in secure_noised(stream, 1.5, [torch.zeros(300, 40), torch.zeros(7)])])
    doubles = torch.cat([secure_noised(stream, 1.5, [torch.zeros(12_000, dtype=torch.float64)])[0] for _ in range(3)])
    assert len(torch.unique(doubles)) == len(doubles)  # float64 draws: a repeat would be a reuse
    for values in (single.double(), doubles):
        assert float(values.std()) == pytest.approx(1.5, rel=0.03)
        assert stats.kstest(values.numpy() / 1.5, "norm").pvalue > 1e-3


# ---- the norm check -----------------------------------------------------------------------------------------------


def _careful_calls(monkeypatch) -> list[int]:
    calls: list[int] = []
    careful = fast_dp_sgd._clipped_sum_float64

    def spy(layers, clip_norm):
        calls.append(len(layers[0][0]))
        return careful(layers, clip_norm)

    monkeypatch.setattr(fast_dp_sgd, "_clipped_sum_float64", spy)
    return calls


@pytest.mark.parametrize(
    ("row", "value", "careful"),
    [
        (None, 0.0, False),
        (7, float("nan"), True),
        (0, float("inf"), True),
        (39, float("-inf"), True),
        (20, 3e19, True),  # ||g||^2 ~ 1e39: finite in float64, past float32's max
        (20, 1e18, False),  # ||g||^2 ~ 1e36: fits float32
    ],
)
@pytest.mark.parametrize("kind", ["logreg", "mlp"])
def test_every_batch_with_a_bad_norm_takes_the_float64_path(monkeypatch, kind, row, value, careful):
    calls = _careful_calls(monkeypatch)
    model = build_model(kind, 4, hidden=3, seed=1)
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(0.5)  # every input moves the logit: a huge input is a huge gradient
    x, y = torch.rand(40, 4), torch.zeros(40)
    if row is not None:
        x[row, 1] = value
    sums = fast_dp_sgd.clipped_sum(model, x, y, 1.0)
    assert bool(calls) == careful
    assert all(torch.isfinite(s).all() for s in sums)
    assert torch.sqrt(sum(s.double().square().sum() for s in sums)) <= 40 * (1 + 1e-5)


@pytest.mark.parametrize("per_sample", ["closed-form", "opacus"])
def test_an_epoch_of_empty_poisson_batches_releases_noise_only(monkeypatch, per_sample):
    calls = _careful_calls(monkeypatch)
    monkeypatch.setattr(ChaChaStream, "poisson_batches", lambda self, n, q, steps: [np.zeros(0, np.int64)] * steps)
    model = build_model("logreg", 5)
    model.load_state_dict({k: torch.zeros_like(v) for k, v in model.state_dict().items()})
    x, y = np.ones((30, 5), np.float32) * 1e30, np.ones(30, np.float32)  # would be clipped, were any drawn
    dp = DPSettings(2.0, 0.5, noise_module.SecureRandomness(), per_sample=per_sample)
    result = train_local(model, x, y, epochs=1, batch_size=10, learning_rate=1.0, seed=0, dp=dp)
    assert result.steps == 3 and not calls
    moved = torch.cat([p.detach().flatten() for p in model.parameters()])
    assert torch.isfinite(moved).all() and bool((moved != 0).all())  # noise, and nothing else, moved every weight


def test_a_stream_whatever_its_random_bytes_never_runs_out(monkeypatch):
    """The 16-byte ChaCha20 nonce of the cryptography library begins with the 32-bit block counter. Taken from
    os.urandom it could start near 2^32, leaving a stream of a few blocks, and a lender's round failed with
    "Exceeded the maximum number of bytes that can be encrypted with ChaCha20 for this nonce" (a 1,000-lender
    benchmark run did). The worst random bytes must still give a full stream: draw well past 64 bytes."""
    monkeypatch.setattr(noise_module.os, "urandom", lambda n: b"\xff" * n)
    stream = ChaChaStream()
    assert stream.normal((1 << 16,)).shape == (1 << 16,)  # 1 MiB of keystream and more
    assert len(stream.secure_normal(1 << 16)) == 1 << 16
    assert sum(len(b) for b in stream.poisson_batches(10_000, 0.01, 50)) > 0
