"""Bernoulli diffusion: closed forms checked against brute-force products of one-step
transition matrices, flip statistics, posterior ranges and the KL loss."""

from __future__ import annotations

import itertools

import pytest
import torch

from medrefine.diffusion.bernoulli import BernoulliDiffusion

T = 1000


def _transition(beta: float) -> torch.Tensor:
    """q(x_k | x_{k-1}) as a 2x2 matrix [from, to]: flip with probability beta / 2."""
    return torch.tensor([[1 - beta / 2, beta / 2], [beta / 2, 1 - beta / 2]], dtype=torch.float64)


def _chain(d: BernoulliDiffusion, first: int, last: int) -> torch.Tensor:
    """Product of the one-step transitions first..last (identity when first > last)."""
    m = torch.eye(2, dtype=torch.float64)
    for k in range(first, last + 1):
        m = m @ _transition(d.betas[k].item())
    return m


@pytest.mark.parametrize("t", [0, 1, 37, 500, 999])
def test_marginal_matches_the_markov_chain(t):
    d = BernoulliDiffusion(T)
    m = _chain(d, 0, t)
    x0 = torch.tensor([0.0, 1.0], dtype=torch.float64)
    expected = torch.stack([m[0, 1], m[1, 1]])  # P(x_t = 1 | x0)
    torch.testing.assert_close(d.marginal(x0, t), expected, rtol=1e-9, atol=1e-9)
    abar = d.alphas_cumprod[t]
    torch.testing.assert_close(d.marginal(x0, t), torch.stack([(1 - abar) / 2, (1 + abar) / 2]))


@pytest.mark.parametrize(
    ("t", "s"), [(1, 0), (10, 9), (500, 499), (999, 998), (600, 200), (999, 0), (50, -1)]
)
def test_posterior_is_bayes_on_all_binary_cases(t, s):
    d = BernoulliDiffusion(T)
    prior = _chain(d, 0, s)  # x0 -> x_s  (identity for s = -1)
    like = _chain(d, s + 1, t)  # x_s -> x_t
    for x0, xt in itertools.product((0, 1), (0, 1)):
        joint = torch.tensor([prior[x0, v] * like[v, xt] for v in (0, 1)])
        expected = joint[1] / joint.sum()
        got = d.posterior(
            torch.tensor([float(xt)], dtype=torch.float64),
            torch.tensor([float(x0)], dtype=torch.float64),
            t,
            s,
        )
        torch.testing.assert_close(
            got, expected.reshape(1), rtol=1e-7, atol=1e-9, msg=f"x0={x0} x_t={xt}"
        )


def test_posterior_probabilities_in_unit_interval():
    d = BernoulliDiffusion(T)
    g = torch.Generator().manual_seed(0)
    x_t = (torch.rand(8, 1, 6, 6, generator=g) > 0.5).float()
    x0 = torch.rand(8, 1, 6, 6, generator=g)  # soft predictions too
    for t, s in [(1, 0), (300, 299), (999, 500), (5, -1)]:
        p = d.posterior(x_t, x0, torch.full((8,), t), torch.full((8,), s))
        assert p.shape == x_t.shape
        assert (p >= 0).all() and (p <= 1).all()


def test_add_noise_flip_rate():
    d = BernoulliDiffusion(T)
    n = 200_000
    for t in (100, 400, 999):
        expected = (1 - d.alphas_cumprod[t].item()) / 2
        for value in (0.0, 1.0):
            x0 = torch.full((1, n), value)
            x_t = d.add_noise(x0, t, torch.Generator().manual_seed(t))
            assert set(x_t.unique().tolist()) <= {0.0, 1.0}
            rate = (x_t != x0).float().mean().item()
            tol = 5 * (expected * (1 - expected) / n) ** 0.5
            assert rate == pytest.approx(expected, abs=tol), (t, value)


def test_add_noise_is_seeded():
    d = BernoulliDiffusion(T)
    x0 = (torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(1)) > 0.5).float()

    def run(seed):
        return d.add_noise(x0, 300, torch.Generator().manual_seed(seed))

    assert torch.equal(run(4), run(4))
    assert not torch.equal(run(4), run(5))


def test_step_samples_binary_masks_and_ends_with_the_prediction():
    d = BernoulliDiffusion(T)
    g = torch.Generator().manual_seed(0)
    x_t = (torch.rand(2, 1, 8, 8, generator=g) > 0.5).float()
    x0_prob = torch.rand(2, 1, 8, 8, generator=g)
    x_prev = d.step(x0_prob, x_t, 200, 100, torch.Generator().manual_seed(2))
    assert set(x_prev.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(x_prev, d.step(x0_prob, x_t, 200, 100, torch.Generator().manual_seed(2)))
    assert torch.equal(d.step(x0_prob, x_t, 200, -1), x0_prob)


def test_kl_loss_zero_for_a_perfect_prediction_and_positive_otherwise():
    d = BernoulliDiffusion(T)
    g = torch.Generator().manual_seed(0)
    x0 = (torch.rand(4, 1, 8, 8, generator=g) > 0.5).float()
    t = torch.tensor([1, 10, 300, 999])
    x_t = d.add_noise(x0, t, g)
    assert d.kl_loss(x_t, x0, x0.clone(), t).item() == pytest.approx(0.0, abs=1e-7)
    assert d.kl_loss(x_t, x0, 1 - x0, t).item() > 0.01
    assert d.kl_loss(x_t, x0, torch.full_like(x0, 0.5), t).item() > 0


def test_predict_x0_is_a_probability():
    d = BernoulliDiffusion(T)
    p = d.predict_x0(torch.tensor([-30.0, 0.0, 30.0]), torch.zeros(3), 5)
    torch.testing.assert_close(p, torch.tensor([0.0, 0.5, 1.0]))
