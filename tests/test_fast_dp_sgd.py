"""The closed-form DP-SGD path (federation/fast_dp_sgd.py) against Opacus: same clipped sums, same noise, same run."""

import itertools
import math

import numpy as np
import pytest
import torch
from opacus import GradSampleModule
from opacus.optimizers import DPOptimizer
from scipy import stats

from federation import fast_dp_sgd
from federation.model import MLP, build_model
from federation.privacy.noise import SecureRandomness, SeededRandomness
from federation.training import DPSettings, train_local, zero_non_finite_examples

FEATURES, CLIP = 7, 0.8
MODELS = ["logreg", "mlp"]


def _model(kind: str, seed: int = 3) -> torch.nn.Module:
    return build_model(kind, FEATURES, hidden=5, seed=seed)


def _batch(kind: str, seed: int = 0, n: int = 40) -> tuple[torch.Tensor, torch.Tensor]:
    """Random records, some with gradients far above the clip norm, some below it, labels 0/1."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, FEATURES, generator=g) * torch.rand(n, 1, generator=g).pow(4) * 5
    y = (torch.rand(n, generator=g) < 0.4).float()
    return x, y


def _huge(x: torch.Tensor) -> torch.Tensor:
    x = x.clone()
    x[3] *= 1e6  # a per-example gradient of norm ~1e6: clipped, not dropped
    return x


def _nan_producing(x: torch.Tensor) -> torch.Tensor:
    x = x.clone()
    x[5, 2] = float("nan")  # NaN logit, NaN gradient
    x[9, 0] = float("inf")  # inf pre-activation: inf or NaN in the gradient
    return x


BATCHES = {
    "random": lambda x: x,
    "huge-norm example": _huge,
    "nan-producing examples": _nan_producing,
    "huge and nan": lambda x: _nan_producing(_huge(x)),
    "empty": lambda x: x[:0],
}


def _opacus_clipped_sum(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, clip: float) -> list[torch.Tensor]:
    """What train_local's Opacus path hands the base optimizer with noise multiplier 0: the clipped sum."""
    gsm = GradSampleModule(model, loss_reduction="sum")
    optimizer = DPOptimizer(
        torch.optim.SGD(model.parameters(), lr=1.0),
        noise_multiplier=0.0,
        max_grad_norm=clip,
        expected_batch_size=max(1, len(x)),
        loss_reduction="sum",
    )
    optimizer.zero_grad(set_to_none=True)
    torch.nn.BCEWithLogitsLoss(reduction="sum")(gsm(x), y[: len(x)]).backward()
    zero_non_finite_examples(model.parameters())
    assert optimizer.pre_step()
    sums = [p.grad.detach().clone() for p in model.parameters()]
    gsm._close()
    return sums


@pytest.mark.parametrize("batch", list(BATCHES))
@pytest.mark.parametrize("kind", MODELS)
def test_the_clipped_sums_equal_opacus(kind, batch):
    x, y = _batch(kind)
    x = BATCHES[batch](x)
    y = y[: len(x)]
    model = _model(kind)
    fast = fast_dp_sgd.clipped_sum(model, x, y, CLIP)
    reference = _opacus_clipped_sum(model, x, y, CLIP)
    assert [f.shape for f in fast] == [p.shape for p in model.parameters()]
    for f, r in zip(fast, reference, strict=True):
        assert torch.isfinite(f).all() and f.dtype == torch.float32
        assert torch.allclose(f.double(), r.double(), rtol=1e-6, atol=1e-6), (f - r).abs().max()
    if batch == "empty":
        assert all(not f.any() for f in fast)
    if batch == "random":  # the test means something: most examples are clipped, some are not
        norms = torch.stack(
            [torch.cat([g.flatten() for g in _grads(model, x[i : i + 1], y[i : i + 1])]).norm() for i in range(len(x))]
        )
        assert (norms > CLIP).sum() > 5 and (norms < CLIP).sum() > 5


def _grads(model, x, y):
    model.zero_grad(set_to_none=True)
    torch.nn.BCEWithLogitsLoss(reduction="sum")(model(x), y).backward()
    return [p.grad.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("kind", MODELS)
def test_a_non_finite_example_contributes_exactly_zero(kind):
    """Without the zeroing the NaN example would poison the sum; with it, the sum is the one without that record."""
    x, y = _batch(kind, seed=1)
    bad = _nan_producing(x)
    keep = torch.ones(len(x), dtype=torch.bool)
    keep[[5, 9]] = False
    model = _model(kind)
    with_bad = fast_dp_sgd.clipped_sum(model, bad, y, CLIP)
    without = fast_dp_sgd.clipped_sum(model, x[keep], y[keep], CLIP)
    for a, b in zip(with_bad, without, strict=True):
        assert torch.isfinite(a).all()
        assert torch.allclose(a, b, rtol=0, atol=1e-6)


def test_the_red_team_probe_gives_a_finite_clipped_sum_without_the_nan_record():
    """The NaN oracle's model (NaN in the forward pass only for records with x_0 >= t) on the closed-form path."""
    flt_max, half_ulp, t = float(torch.finfo(torch.float32).max), 2.0**103, 0.5
    model = MLP(FEATURES, 4)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.hidden.weight[0, 0] = half_ulp / t
        model.hidden.bias[0] = flt_max
    x, y = _batch("mlp", seed=2)
    x[:, 0] = x[:, 0].clamp(max=0.4)
    x[7, 0] = 0.9  # the one record above the threshold
    pre = model.hidden(x)
    assert torch.isinf(pre[7, 0]) and torch.isfinite(pre[torch.arange(len(x)) != 7]).all()
    keep = torch.arange(len(x)) != 7
    with_record = fast_dp_sgd.clipped_sum(model, x, y, CLIP)
    without = fast_dp_sgd.clipped_sum(model, x[keep], y[keep], CLIP)
    for a, b in zip(with_record, without, strict=True):
        assert torch.isfinite(a).all() and torch.equal(a, b)


@pytest.mark.parametrize("randomness", [SecureRandomness, lambda: SeededRandomness(11)], ids=["secure", "seeded"])
def test_the_noise_has_the_claimed_std_and_is_independent(randomness):
    source, std = randomness(), 1.7 * 0.6
    draws = []
    for _ in range(2000):
        noised = source.noised(std, [torch.zeros(3, 4), torch.zeros(1)])
        assert [n.shape for n in noised] == [(3, 4), (1,)] and all(n.dtype == torch.float32 for n in noised)
        draws.append(torch.cat([n.flatten() for n in noised]).double() / std)
    z = torch.stack(draws).numpy()
    assert stats.kstest(z.flatten(), "norm").pvalue > 1e-3
    assert np.allclose(z.std(axis=0), 1.0, atol=0.08)  # every coordinate, the bias included
    assert np.abs(np.corrcoef(z.T)[np.triu_indices(z.shape[1], k=1)]).max() < 0.12


def test_seeded_noise_is_the_draw_opacus_makes():
    """SeededRandomness.noised draws what Opacus' DPOptimizer.add_noise draws from the same generator."""
    weight, bias = torch.nn.Parameter(torch.zeros(3, 4)), torch.nn.Parameter(torch.zeros(1))
    seeded = SeededRandomness(5)
    optimizer = seeded.dp_optimizer(
        torch.optim.SGD([weight, bias], lr=1.0), noise_multiplier=1.3, max_grad_norm=0.5, expected_batch_size=1
    )
    sums = [torch.randn(3, 4), torch.randn(1)]
    for p, s in zip((weight, bias), sums, strict=True):
        p.summed_grad = s.clone()
    optimizer.add_noise()
    ours = SeededRandomness(5).noised(1.3 * 0.5, sums)
    assert torch.equal(weight.grad, ours[0]) and torch.equal(bias.grad, ours[1])


@pytest.mark.parametrize("per_sample", ["closed-form", "opacus"])
def test_one_step_from_zero_moves_the_model_by_noise_of_sigma_times_clip(per_sample):
    n, d, sigma, clip, lr = 300, 3000, 2.0, 0.7, 1.0
    model = build_model("logreg", d)
    model.load_state_dict({k: torch.zeros_like(v) for k, v in model.state_dict().items()})
    x, y = np.zeros((n, d), np.float32), np.full(n, 0.5, np.float32)  # every per-example gradient is exactly 0
    dp = DPSettings(sigma, clip, SecureRandomness(), per_sample=per_sample)
    train_local(model, x, y, epochs=1, batch_size=n, learning_rate=lr, seed=0, dp=dp)
    moved = torch.cat([p.detach().flatten() for p in model.parameters()]).numpy().astype(np.float64)
    assert float(np.std(moved * n / lr)) == pytest.approx(sigma * clip, rel=0.06)


def _data(n: int = 600, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, FEATURES)).astype(np.float32) * 2
    y = (x[:, 0] + rng.normal(size=n) > 0.5).astype(np.float32)
    return x, y


@pytest.mark.parametrize("noise_multiplier", [0.0, 1.1])
@pytest.mark.parametrize("kind", MODELS)
def test_a_seeded_run_gives_the_same_weights_on_both_paths(kind, noise_multiplier):
    x, y = _data()
    weights = {}
    for per_sample in ("closed-form", "opacus"):
        model = _model(kind)
        dp = DPSettings(noise_multiplier, 0.5, SeededRandomness(42), per_sample=per_sample)
        result = train_local(model, x, y, epochs=2, batch_size=32, learning_rate=0.3, seed=0, dp=dp, proximal_mu=0.05)
        assert result.steps == 2 * 19
        weights[per_sample] = torch.cat([p.detach().flatten() for p in model.parameters()])
    assert not torch.equal(weights["opacus"], torch.cat([p.detach().flatten() for p in _model(kind).parameters()]))
    assert torch.allclose(weights["closed-form"], weights["opacus"], rtol=0, atol=1e-5), (
        (weights["closed-form"] - weights["opacus"]).abs().max()
    )


def test_auto_takes_the_closed_form_for_the_built_in_models_only(monkeypatch):
    calls = []
    real = fast_dp_sgd.clipped_sum_of_layers
    monkeypatch.setattr(fast_dp_sgd, "clipped_sum_of_layers", lambda *args: calls.append(1) or real(*args))
    x, y = _data(100)
    dp = DPSettings(1.0, 1.0, SeededRandomness(0))
    for kind in MODELS:
        train_local(_model(kind), x, y, epochs=1, batch_size=50, learning_rate=0.1, seed=0, dp=dp)
    assert len(calls) == 4  # 2 steps each

    class Wider(MLP):  # a subclass may change forward: Opacus
        pass

    calls.clear()
    others = [Wider(FEATURES), torch.nn.Sequential(torch.nn.Linear(FEATURES, 1), torch.nn.Flatten(0))]
    for model in others:
        train_local(model, x, y, epochs=1, batch_size=50, learning_rate=0.1, seed=0, dp=dp)
        assert not fast_dp_sgd.supports(model)
    assert calls == []
    with pytest.raises(ValueError, match="no closed-form"):
        train_local(
            others[1],
            x,
            y,
            epochs=1,
            batch_size=50,
            learning_rate=0.1,
            seed=0,
            dp=DPSettings(1.0, 1.0, SeededRandomness(0), per_sample="closed-form"),
        )
    with pytest.raises(ValueError, match="per_sample"):
        train_local(
            _model("mlp"),
            x,
            y,
            epochs=1,
            batch_size=50,
            learning_rate=0.1,
            seed=0,
            dp=DPSettings(1.0, 1.0, SeededRandomness(0), per_sample="fast"),
        )


@pytest.mark.parametrize("kind", MODELS)
def test_the_careful_float64_path_agrees_with_the_float32_one(kind):
    x, y = _batch(kind, seed=4)
    model = _model(kind)
    linears = fast_dp_sgd.linear_layers(model)
    with torch.no_grad():
        layers = fast_dp_sgd._inputs_and_deltas(linears, x, y)
        careful = fast_dp_sgd._clipped_sum_float64(layers, CLIP)
    for a, b in zip(fast_dp_sgd.clipped_sum(model, x, y, CLIP), careful, strict=True):
        assert torch.allclose(a, b, rtol=1e-6, atol=1e-6)


def test_secure_normals_drawn_ahead_are_never_handed_out_twice(monkeypatch):
    from federation.privacy.noise import ChaChaStream

    monkeypatch.setattr(ChaChaStream, "SECURE_NORMAL_CHUNK", 5)
    stream = ChaChaStream()
    draws = [stream.secure_normal(count) for count in (3, 4, 7, 1, 5, 5, 2000)]
    assert [len(d) for d in draws] == [3, 4, 7, 1, 5, 5, 2000]
    values = torch.cat(draws)
    assert len(set(values.tolist())) == len(values)  # continuous draws: a repeat would be a reuse
    assert stats.kstest(values.numpy(), "norm").pvalue > 1e-3


def test_the_poisson_rate_is_q_over_millions_of_trials():
    from federation.privacy.noise import ChaChaStream

    q, n, steps = 1 / 313, 20_000, 100
    drawn = sum(len(b) for b in ChaChaStream().poisson_batches(n, q, steps))
    assert abs(drawn - n * steps * q) < 5 * np.sqrt(n * steps * q * (1 - q))  # q/2 or 2q: ~80 standard deviations


@pytest.mark.parametrize("clip", [1e-6, 1e-5, 1e-4])
def test_a_tiny_delta_with_a_huge_input_is_still_clipped_as_opacus_clips_it(clip):
    # The red team's case: logit -52 with label 0 gives delta = sigmoid(-52) ~ 2.6e-23, whose float32 square is 0;
    # an input row of norm ~1.7e19 makes the true gradient norm ~4.4e-4. With norms in float32 the example escaped
    # clipping (443 C at C = 1e-6); it must contribute at most C, as under Opacus.
    model = build_model("logreg", 4)
    with torch.no_grad():
        model.linear.weight.zero_()
        model.linear.bias.fill_(-52.0)
    x = torch.tensor([[1.7e19, 0.0, 0.0, 0.0]])
    y = torch.zeros(1)
    fast = fast_dp_sgd.clipped_sum(model, x, y, clip)
    contribution = torch.sqrt(sum(t.double().square().sum() for t in fast))
    assert contribution <= clip * (1 + 1e-4)
    reference = _opacus_clipped_sum(model, x, y, clip)
    assert torch.sqrt(sum(t.double().square().sum() for t in reference)) <= clip * (1 + 1e-4)


class _FewUniforms:
    """A ChaChaStream whose uniform() returns at most 3 values a call: poisson_batches must draw on until done."""

    def __init__(self):
        from federation.privacy.noise import ChaChaStream

        self.stream = ChaChaStream()

    def uniform(self, count):
        return self.stream.uniform(min(count, 3))

    def poisson_batches(self, n, q, steps):
        from federation.privacy.noise import ChaChaStream

        return ChaChaStream.poisson_batches(self, n, q, steps)  # type: ignore[arg-type]


@pytest.mark.parametrize("source", ["stream", "few-uniforms"])
def test_an_epochs_poisson_batches_are_independent_bernoulli_trials_at_rate_q(source):
    """ChaChaStream.poisson_batches draws the gaps between successes of the (step, record) trials: every record in
    every batch with probability q, independently. Checked: sorted distinct indices in range, the number drawn,
    the variance of batch sizes (Binomial(n, q)), records in two consecutive batches (q^2 n a pair: a gap that
    carried over a batch boundary wrongly would show here), and each record's count over the epoch."""
    from federation.privacy.noise import ChaChaStream

    stream = ChaChaStream() if source == "stream" else _FewUniforms()
    # 250 steps for both: at 40, the batch sizes' variance fell outside the bounds below in 1.3% of honest draws
    # (26 of 2,000), a random failure of CI; at 250 its ratio to n q (1 - q) stayed within 0.77-1.27 in 500 draws.
    n, steps = (4000, 250) if source == "stream" else (300, 250)
    q = 1 / 25
    batches = stream.poisson_batches(n, q, steps)
    assert len(batches) == steps
    for b in batches:
        assert b.dtype == np.int64 and np.all(np.diff(b) > 0) and (len(b) == 0 or (b[0] >= 0 and b[-1] < n))
    sizes = np.array([len(b) for b in batches])
    trials = n * steps
    assert abs(sizes.sum() - trials * q) < 5 * math.sqrt(trials * q * (1 - q))
    var = n * q * (1 - q)
    assert 0.5 * var < sizes.var() < 1.6 * var  # a chi-square of `steps` degrees: far inside for 250
    both = sum(len(np.intersect1d(a, b)) for a, b in itertools.pairwise(batches))
    pairs = n * (steps - 1)
    assert abs(both - pairs * q * q) < 5 * math.sqrt(pairs * q * q) + 1
    per_record = np.bincount(np.concatenate(batches), minlength=n)
    assert abs(per_record.var() - steps * q * (1 - q)) < 0.3 * steps * q * (1 - q)
    assert ChaChaStream().poisson_batches(5, 1.0, 3)[2].tolist() == [0, 1, 2, 3, 4]
    assert all(len(b) == 0 for b in ChaChaStream().poisson_batches(1000, 0.0, 4))
    assert [len(b) for b in ChaChaStream().poisson_batches(0, 0.5, 3)] == [0, 0, 0]


def test_the_seeded_sampler_still_draws_one_mask_a_step_as_opacus_would():
    from federation.privacy.noise import SeededRandomness

    a, b = SeededRandomness(3), SeededRandomness(3)
    batches = a.poisson_batches(500, 0.1, 4)
    masks = [b.poisson_mask(500, 0.1) for _ in range(4)]
    assert [x.tolist() for x in batches] == [np.flatnonzero(m.numpy()).tolist() for m in masks]
