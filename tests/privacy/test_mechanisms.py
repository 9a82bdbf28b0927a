"""Clipping, noise calibration, DP-FedAvg and adaptive clipping."""

import numpy as np
import pytest
import torch

from fedgpt.errors import ConfigError
from fedgpt.privacy.central_dp import CentralDP, adaptive_clip_step, update_noise_multiplier
from fedgpt.privacy.local_dp import privatize
from fedgpt.privacy.mechanisms import clip_rows, gaussian_noise, secure_normal


def test_clip_rows_scales_only_long_rows():
    d = torch.tensor([[3.0, 4.0], [0.3, 0.4]])
    c, norms = clip_rows(d, 1.0)
    assert torch.allclose(c, torch.tensor([[0.6, 0.8], [0.3, 0.4]]))
    assert torch.allclose(norms, torch.tensor([5.0, 0.5]))


@pytest.mark.parametrize("source", ["secure", "seeded"])
def test_noise_std_within_two_percent_over_a_million_draws(source):
    z, s = 1.3, 0.7
    gen = torch.Generator().manual_seed(0) if source == "seeded" else None
    x = gaussian_noise(2_000_000, z * s, gen).double()
    assert abs(float(x.std()) / (z * s) - 1) < 0.02
    assert abs(float(x.mean())) < 0.01


def test_secure_noise_differs_between_calls():
    assert not torch.equal(secure_normal(10, 1.0), secure_normal(10, 1.0))


def test_dp_fedavg_without_noise_is_clipped_sum_over_expected_clients():
    dp = CentralDP(clip=1.0, noise_multiplier=0.0, expected_clients=4)
    d = torch.tensor([[3.0, 4.0], [0.3, 0.4], [0.0, -2.0]])
    avg, info = dp.aggregate(d, torch.tensor([100.0, 1.0, 1.0]))
    # (0.6+0.3+0, 0.8+0.4-1) / 4 : weights ignored, fixed denominator m = 4
    assert torch.allclose(avg, torch.tensor([0.225, 0.05]))
    assert info["clipped"] == 2


def test_dp_fedavg_noise_std_is_z_s_over_m():
    dp = CentralDP(clip=2.0, noise_multiplier=0.5, expected_clients=10)
    avg, _ = dp.aggregate(torch.zeros(1, 400_000), torch.ones(1), torch.Generator().manual_seed(1))
    assert float(avg.std()) == pytest.approx(0.5 * 2.0 / 10, rel=0.02)


def test_budget_split_matches_andrew_et_al():
    # z_delta = (z^-2 - (2 sigma_b)^-2)^-1/2 ; z=1, sigma_b=1 -> (1 - 1/4)^-1/2
    assert update_noise_multiplier(1.0, 1.0) == pytest.approx((0.75) ** -0.5)
    with pytest.raises(ConfigError, match="count_noise_std"):
        update_noise_multiplier(2.0, 1.0)


def test_geometric_clip_update_direction():
    assert adaptive_clip_step(1.0, 0.9, 0.5, 0.2) < 1.0  # too many unclipped -> shrink
    assert adaptive_clip_step(1.0, 0.1, 0.5, 0.2) > 1.0
    assert adaptive_clip_step(1.0, 0.5, 0.5, 0.2) == 1.0


@pytest.mark.parametrize("quantile", [0.3, 0.5, 0.8])
def test_adaptive_clip_converges_to_the_target_quantile(quantile):
    rng = np.random.default_rng(0)
    dp = CentralDP(
        clip=0.1,
        noise_multiplier=0.0,
        expected_clients=200,
        adaptive=True,
        quantile=quantile,
        clip_lr=0.2,
    )
    gen = torch.Generator().manual_seed(0)
    for _ in range(300):
        norms = rng.lognormal(mean=0.0, sigma=0.5, size=200)  # a known norm distribution
        deltas = torch.zeros(200, 2, dtype=torch.float64)
        deltas[:, 0] = torch.from_numpy(norms)
        dp.aggregate(deltas, torch.ones(200), gen)
    true_q = float(np.exp(0.5 * __import__("scipy").stats.norm.ppf(quantile)))
    assert dp.clip == pytest.approx(true_q, rel=0.05)


def test_local_privatize_clips_then_noises():
    d = torch.full((1000,), 1.0)
    assert float(privatize(d, 2.0, 0.0, None).norm()) == pytest.approx(2.0)
    noisy = privatize(torch.zeros(200_000), 1.0, 0.8, torch.Generator().manual_seed(3))
    assert float(noisy.std()) == pytest.approx(0.8, rel=0.02)
