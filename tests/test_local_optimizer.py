"""The lender's local optimizer (SGD, Adam, AdamW; constant or cosine rate): under DP it changes only the step.

The claim: the optimizer is post-processing of the DP release, so the gradient it is handed (clipped per-example
sum plus Gaussian noise) is exactly the one SGD is handed, on both DP paths. If AdamW saw an unclipped or
un-noised gradient, or the noise were drawn differently, these tests would fail.
"""

import itertools

import numpy as np
import pytest
import torch

from federation.config import RunConfig
from federation.errors import ConfigError
from federation.model import build_model
from federation.privacy.noise import SeededRandomness
from federation.training import DPSettings, LocalOptimizer, train_local

FEATURES, CLIP = 6, 0.5


def _data(n: int = 300, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = (rng.normal(size=(n, FEATURES)) * rng.uniform(0, 6, size=(n, 1))).astype(np.float32)
    y = (x[:, 0] + rng.normal(size=n) > 0.3).astype(np.float32)
    return x, y


def _gradients_handed_to_the_optimizer(monkeypatch, optim: LocalOptimizer, per_sample: str, sigma: float):
    """The .grad of every parameter at each step, as the torch optimizer (not Opacus' wrapper) sees it."""
    seen: list[list[torch.Tensor]] = []
    kind = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[optim.name]
    real_step = kind.step

    def recording_step(self, *args, **kwargs):
        seen.append([p.grad.detach().clone() for group in self.param_groups for p in group["params"]])
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(kind, "step", recording_step)
    x, y = _data()
    model = build_model("mlp", FEATURES, hidden=4, seed=1)
    dp = DPSettings(sigma, CLIP, SeededRandomness(7), per_sample=per_sample)
    result = train_local(model, x, y, epochs=1, batch_size=60, learning_rate=0.01, seed=0, dp=dp, optim=optim)
    assert result.steps == len(seen) == 5
    return seen


@pytest.mark.parametrize("per_sample", ["closed-form", "opacus"])
def test_adamw_is_handed_the_same_clipped_noised_gradient_as_sgd(monkeypatch, per_sample):
    sgd = _gradients_handed_to_the_optimizer(monkeypatch, LocalOptimizer("sgd"), per_sample, 1.3)
    adamw = _gradients_handed_to_the_optimizer(
        monkeypatch, LocalOptimizer("adamw", weight_decay=0.01, schedule="cosine"), per_sample, 1.3
    )
    # Step 1 starts from the same weights with the same Poisson batch and noise draws: the same gradient exactly.
    for a, b in zip(sgd[0], adamw[0], strict=True):
        assert torch.equal(a, b)
    # Later steps differ only because the weights moved differently (the optimizer is what differs).
    assert not all(torch.equal(a, b) for a, b in zip(sgd[1], adamw[1], strict=True))


@pytest.mark.parametrize("per_sample", ["closed-form", "opacus"])
def test_without_noise_adamw_sees_a_sum_of_clipped_gradients(monkeypatch, per_sample):
    """sigma 0: the handed gradient is a sum of per-example gradients of norm <= C, so its norm is at most
    (batch size) x C; unclipped, these records (norms up to ~50 C) would exceed that bound."""
    seen = _gradients_handed_to_the_optimizer(monkeypatch, LocalOptimizer("adamw"), per_sample, 0.0)
    x, y = _data()
    model = build_model("mlp", FEATURES, hidden=4, seed=1)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(
        model(torch.as_tensor(x)), torch.as_tensor(y), reduction="none"
    )
    norms = []
    for i in range(len(x)):
        grads = torch.autograd.grad(loss[i], list(model.parameters()), retain_graph=True)
        norms.append(float(torch.sqrt(sum(g.pow(2).sum() for g in grads))))
    assert max(norms) > 10 * CLIP  # the data would break the bound if clipping were skipped
    first = float(torch.sqrt(sum(g.pow(2).sum() for g in seen[0])))
    # a Poisson batch of q = 1/5 over 300 records: far fewer than 300 records, so 300 C is a loose but sure bound
    assert 0 < first <= len(x) * CLIP


def test_both_dp_paths_take_the_same_adamw_steps():
    x, y = _data()
    weights = {}
    for per_sample in ("closed-form", "opacus"):
        model = build_model("mlp", FEATURES, hidden=4, seed=1)
        dp = DPSettings(1.1, CLIP, SeededRandomness(3), per_sample=per_sample)
        train_local(
            model,
            x,
            y,
            epochs=2,
            batch_size=60,
            learning_rate=0.01,
            seed=0,
            dp=dp,
            optim=LocalOptimizer("adamw", 0.01, "cosine"),
        )
        weights[per_sample] = torch.cat([p.detach().flatten() for p in model.parameters()])
    assert torch.allclose(weights["closed-form"], weights["opacus"], rtol=0, atol=1e-5)


def test_adam_on_the_summed_gradient_steps_as_on_the_mean():
    """DP hands the optimizer a sum over the expected batch; eps scaled by it makes Adam's step that of the mean."""
    torch.manual_seed(0)
    grads = [torch.randn(5) * 1e-6 for _ in range(4)]  # tiny: eps matters here
    for name in ("adam", "adamw"):
        final = []
        for scale in (1.0, 64.0):
            p = torch.nn.Parameter(torch.ones(5))
            opt = LocalOptimizer(name, weight_decay=0.1).build([p], 0.01, sum_over=scale)
            for g in grads:
                p.grad = g * scale
                opt.step()
            final.append(p.detach().clone())
        assert torch.allclose(final[0], final[1], rtol=0, atol=1e-6)


def test_cosine_schedule_decays_the_rate_to_zero():
    p = torch.nn.Parameter(torch.ones(1))
    optim = LocalOptimizer("sgd", schedule="cosine")
    opt = optim.build([p], 0.2)
    schedule = optim.scheduler(opt, 10)
    rates = []
    for _ in range(10):
        p.grad = torch.ones(1)
        opt.step()
        schedule.step()
        rates.append(opt.param_groups[0]["lr"])
    assert rates[0] < 0.2 and rates[-1] == pytest.approx(0.0, abs=1e-12)
    assert all(a >= b for a, b in itertools.pairwise(rates))


def test_plain_adamw_trains_a_better_model_than_nothing():
    x, y = _data(600)
    model = build_model("mlp", FEATURES, hidden=16, seed=0)
    train_local(model, x, y, epochs=5, batch_size=64, learning_rate=0.01, seed=0, optim=LocalOptimizer("adamw"))
    from sklearn.metrics import roc_auc_score

    from federation.model import predict_proba

    assert roc_auc_score(y, predict_proba(model, x)) > 0.75


def test_config_options_reach_the_optimizer_and_bad_values_are_refused():
    cfg = RunConfig(optimizer="adamw", weight_decay=0.05, lr_schedule="cosine").validated()
    assert LocalOptimizer.of(cfg) == LocalOptimizer("adamw", 0.05, "cosine")
    assert RunConfig.from_record(cfg.to_record()) == cfg
    with pytest.raises(ConfigError, match="unknown optimizer 'lbfgs'"):
        RunConfig(optimizer="lbfgs").validated()
    with pytest.raises(ConfigError, match="weight-decay"):
        RunConfig(weight_decay=-1.0).validated()
    with pytest.raises(ConfigError, match="unknown lr-schedule"):
        RunConfig(lr_schedule="step").validated()
