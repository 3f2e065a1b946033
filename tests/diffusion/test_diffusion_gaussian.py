"""Gaussian diffusion against MONAI's DDPM/DDIM schedulers, plus its own invariants."""

from __future__ import annotations

import pytest
import torch
from monai.networks.schedulers import DDIMScheduler, DDPMScheduler

from medrefine.diffusion.gaussian import GaussianDiffusion
from medrefine.errors import ConfigError

T = 1000


def _x0(seed=0, shape=(3, 1, 8, 8)):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(shape, generator=g) > 0.5).float() * 2 - 1


def _noise(seed=1, shape=(3, 1, 8, 8)):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("t", [0, 1, 10, 250, 500, 999])
def test_add_noise_matches_monai_ddpm(t):
    ours = GaussianDiffusion(T, "linear", 1e-4, 0.02)
    monai = DDPMScheduler(
        num_train_timesteps=T, schedule="linear_beta", beta_start=1e-4, beta_end=0.02
    )
    x0, noise = _x0(), _noise()
    ts = torch.full((3,), t, dtype=torch.long)
    torch.testing.assert_close(
        ours.add_noise(x0, noise, ts), monai.add_noise(x0, noise, ts), rtol=1e-5, atol=1e-5
    )
    # a scalar t broadcasts the same way
    torch.testing.assert_close(ours.add_noise(x0, noise, t), ours.add_noise(x0, noise, ts))


def test_add_noise_per_sample_timesteps():
    ours = GaussianDiffusion(T)
    monai = DDPMScheduler(num_train_timesteps=T)
    x0, noise = _x0(), _noise()
    ts = torch.tensor([3, 400, 999])
    torch.testing.assert_close(
        ours.add_noise(x0, noise, ts), monai.add_noise(x0, noise, ts), rtol=1e-5, atol=1e-5
    )


def test_add_noise_edges():
    d = GaussianDiffusion(T)
    x0, noise = _x0(), _noise()
    torch.testing.assert_close(d.add_noise(x0, noise, -1), x0)  # "before step 0"
    # t = 0 adds noise with std sqrt(beta_0) = 0.01
    torch.testing.assert_close(
        d.add_noise(x0, noise, 0), x0, atol=0.01 * noise.abs().max() + 1e-4, rtol=0
    )
    x_end = d.add_noise(x0, noise, T - 1)
    assert (x_end - noise).abs().max() < 0.01  # abar_{T-1} ~ 4e-5: almost pure noise


@pytest.mark.parametrize("num_inference", [4, 10, 50])
@pytest.mark.parametrize("t", [999, 700, 333, 120, 20])
def test_ddim_step_eta0_matches_monai_sample_prediction(t, num_inference):
    ours = GaussianDiffusion(T, prediction="x0")
    monai = DDIMScheduler(num_train_timesteps=T, prediction_type="sample", clip_sample=False)
    monai.set_timesteps(num_inference)
    t_prev = t - T // num_inference  # MONAI's previous step; < 0 means alpha_prev = 1
    x_t = ours.add_noise(_x0(), _noise(), t)
    x0_pred = torch.tanh(_noise(seed=5))  # any estimate in [-1, 1]
    expected, _ = monai.step(x0_pred, t, x_t, eta=0.0)
    got = ours.step(x0_pred, x_t, t, max(t_prev, -1), eta=0.0)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("t", [500, 300, 60])
def test_ddim_step_epsilon_prediction_matches_monai(t):
    # Where the x0 derived from epsilon lies inside [-1, 1]. (Where it is clipped, ours
    # re-derives epsilon from the clipped x0, as GLIDE and diffusers' use_clipped_model_output
    # do; MONAI keeps the raw epsilon.)
    ours = GaussianDiffusion(T, prediction="epsilon")
    monai = DDIMScheduler(num_train_timesteps=T, prediction_type="epsilon", clip_sample=True)
    monai.set_timesteps(10)
    t_prev = t - 100
    x0 = 0.8 * torch.tanh(_noise(seed=2))
    x_t = ours.add_noise(x0, _noise(), t)
    eps_pred = _noise() + 0.01 * _noise(seed=7)  # a slightly wrong noise estimate
    expected, expected_x0 = monai.step(eps_pred, t, x_t, eta=0.0)
    x0_pred = ours.predict_x0(eps_pred, x_t, t)
    assert x0_pred.abs().max() < 1  # the clamp does not bite
    torch.testing.assert_close(x0_pred, expected_x0, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(
        ours.step(x0_pred, x_t, t, max(t_prev, -1)), expected, rtol=1e-4, atol=1e-5
    )


@pytest.mark.parametrize("t", [999, 300])
def test_ddim_step_eta1_matches_monai_with_the_same_generator(t):
    ours = GaussianDiffusion(T)
    monai = DDIMScheduler(num_train_timesteps=T, prediction_type="sample", clip_sample=False)
    monai.set_timesteps(10)
    x_t = ours.add_noise(_x0(), _noise(), t)
    x0_pred = torch.tanh(_noise(seed=5))
    expected, _ = monai.step(x0_pred, t, x_t, eta=1.0, generator=torch.Generator().manual_seed(3))
    got = ours.step(x0_pred, x_t, t, t - 100, eta=1.0, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_final_step_returns_the_prediction():
    d = GaussianDiffusion(T)
    x_t = d.add_noise(_x0(), _noise(), 80)
    x0_pred = torch.tanh(_noise(seed=5))
    torch.testing.assert_close(d.step(x0_pred, x_t, 80, -1), x0_pred)
    # eta > 0 adds no noise at the last step either
    torch.testing.assert_close(d.step(x0_pred, x_t, 80, -1, eta=1.0), x0_pred)


def test_step_with_the_true_x0_stays_on_the_forward_trajectory():
    # DDIM eta=0 with a perfect x0 and the same epsilon lands on add_noise(x0, eps, t_prev).
    d = GaussianDiffusion(T)
    x0, noise = _x0(), _noise()
    x_t = d.add_noise(x0, noise, 600)
    torch.testing.assert_close(
        d.step(x0, x_t, 600, 200), d.add_noise(x0, noise, 200), rtol=1e-5, atol=1e-5
    )


@pytest.mark.parametrize("t", [0, 5, 300, 999])
def test_x0_and_epsilon_conversions_invert_each_other(t):
    d = GaussianDiffusion(T, prediction="epsilon")
    x0 = torch.tanh(_noise(seed=2))  # in (-1, 1): the clamp in predict_x0 does not bite
    noise = _noise()
    ts = torch.full((3,), t)
    x_t = d.add_noise(x0, noise, ts)
    eps = d.epsilon_target(x0, x_t, ts)
    torch.testing.assert_close(eps, noise, rtol=1e-3, atol=1e-3 if t else 5e-2)
    torch.testing.assert_close(d.predict_x0(eps, x_t, ts), x0, rtol=1e-4, atol=1e-4)


def test_x0_prediction_maps_logits_into_minus_one_one():
    d = GaussianDiffusion(T, prediction="x0")
    logits = torch.tensor([-50.0, 0.0, 50.0])
    torch.testing.assert_close(
        d.predict_x0(logits, torch.zeros(3), 10), torch.tensor([-1.0, 0.0, 1.0])
    )


def test_epsilon_prediction_clamps_x0():
    d = GaussianDiffusion(T, prediction="epsilon")
    x_t = torch.full((1, 1, 2, 2), 5.0)
    x0 = d.predict_x0(torch.zeros_like(x_t), x_t, 500)
    assert x0.max() <= 1.0 and x0.min() >= -1.0


def test_seeded_stochastic_steps_repeat_and_differ_across_seeds():
    d = GaussianDiffusion(T)
    x_t = d.add_noise(_x0(), _noise(), 500)
    x0_pred = torch.tanh(_noise(seed=5))

    def run(seed):
        return d.step(
            x0_pred, x_t, 500, 400, eta=1.0, generator=torch.Generator().manual_seed(seed)
        )

    assert torch.equal(run(0), run(0))
    assert not torch.equal(run(0), run(1))


def test_bad_prediction():
    with pytest.raises(ConfigError):
        GaussianDiffusion(prediction="v")
