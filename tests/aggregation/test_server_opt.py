"""Server optimisers and FedAvg against values computed by hand (see comments)."""

import pytest
import torch

from fedgpt.aggregation import (
    FedAdagrad,
    FedAdam,
    FedAvg,
    FedAvgM,
    FedYogi,
    make_server_optimizer,
    weighted_average,
)
from fedgpt.errors import ConfigError, FedGPTError

X = torch.tensor([1.0, 2.0], dtype=torch.float64)
D = torch.tensor([0.2, -0.4], dtype=torch.float64)


def test_weighted_average_is_n_weighted_mean():
    deltas = torch.tensor([[1.0, 0.0, 2.0], [3.0, 4.0, -2.0]])
    # weights 1 and 3 -> (1*row0 + 3*row1) / 4
    out = weighted_average(deltas, torch.tensor([1.0, 3.0]))
    assert torch.allclose(out, torch.tensor([2.5, 3.0, -1.0]))


def test_weighted_average_rejects_bad_shapes_and_zero_weight():
    with pytest.raises(FedGPTError):
        weighted_average(torch.zeros(2, 3), torch.ones(3))
    with pytest.raises(FedGPTError):
        weighted_average(torch.zeros(2, 3), torch.zeros(2))


def test_fedavg_step():
    opt = FedAvg(lr=0.5)
    x, _ = opt.apply(opt.init(X), X, D)
    assert torch.allclose(x, torch.tensor([1.1, 1.8], dtype=torch.float64))


def test_fedavgm_two_steps():
    opt = FedAvgM(lr=1.0, momentum=0.5)
    s = opt.init(X)
    x, s = opt.apply(s, X, D)  # v = [0.2, -0.4]
    assert torch.allclose(x, torch.tensor([1.2, 1.6], dtype=torch.float64))
    x, s = opt.apply(s, x, torch.tensor([0.2, 0.2], dtype=torch.float64))
    # v = 0.5*[0.2,-0.4] + [0.2,0.2] = [0.3, 0.0]
    assert torch.allclose(s["v"], torch.tensor([0.3, 0.0], dtype=torch.float64))
    assert torch.allclose(x, torch.tensor([1.5, 1.6], dtype=torch.float64))


@pytest.mark.parametrize("opt", [FedAvg(lr=0.7), FedAvgM(lr=0.7, momentum=0.9), FedAdam()])
def test_a_consumed_delta_gives_the_same_bits_and_leaves_the_old_state(opt):
    gen = torch.Generator().manual_seed(3)
    x, v0 = torch.randn(1000, generator=gen), torch.randn(1000, generator=gen)
    state = {k: v0.abs() if k == "v" else t for k, t in opt.init(x).items()}
    before = {k: t.clone() for k, t in state.items()}
    delta = torch.randn(1000, generator=gen)
    ref_x, ref_s = opt.apply(state, x, delta.clone())
    got_x, got_s = opt.apply(state, x, delta.clone(), consume=True)
    assert torch.equal(got_x, ref_x) and all(torch.equal(got_s[k], ref_s[k]) for k in ref_s)
    assert all(torch.equal(state[k], before[k]) for k in state)  # the old state stays


# beta1 = 0.9, beta2 = 0.99, tau = 0.01, lr = 0.1; v_{-1} = tau^2 = 1e-4, m_{-1} = 0.
# m = 0.1 * D = [0.02, -0.04]
# Adam:    v = 0.99e-4 + 0.01 D^2          = [0.000499, 0.001699]
# Yogi:    v = 1e-4 - 0.01 D^2 sign(1e-4 - D^2) = 1e-4 + 0.01 D^2 = [0.0005, 0.0017]
# Adagrad: v = 1e-4 + D^2                  = [0.0401, 0.1601]
# x = X + 0.1 m / (sqrt(v) + 0.01), e.g. Adam x0 = 1 + 0.002 / 0.0323383 = 1.0618462
@pytest.mark.parametrize(
    ("cls", "v", "x"),
    [
        (FedAdam, [0.000499, 0.001699], [1.0618461549, 1.9219038707]),
        (FedYogi, [0.0005, 0.0017], [1.0618033989, 1.9219223594]),
        (FedAdagrad, [0.0401, 0.1601], [1.0095124922, 1.9902468755]),
    ],
)
def test_adaptive_first_step(cls, v, x):
    opt = cls(lr=0.1, beta1=0.9, beta2=0.99, tau=0.01)
    s = opt.init(X)
    assert torch.allclose(s["v"], torch.full_like(X, 1e-4))
    new, s = opt.apply(s, X, D)
    assert torch.allclose(s["m"], torch.tensor([0.02, -0.04], dtype=torch.float64))
    assert torch.allclose(s["v"], torch.tensor(v, dtype=torch.float64))
    assert torch.allclose(new, torch.tensor(x, dtype=torch.float64), atol=1e-9)


def test_yogi_second_moment_shrinks_when_v_exceeds_delta_squared():
    # v = 1.0 > D^2 -> v - (1 - beta2) D^2: [1 - 0.01*0.04, 1 - 0.01*0.16]
    opt = FedYogi(lr=0.1, beta1=0.9, beta2=0.99, tau=0.01)
    _, s = opt.apply(
        {"m": torch.zeros(2, dtype=torch.float64), "v": torch.ones(2, dtype=torch.float64)}, X, D
    )
    assert torch.allclose(s["v"], torch.tensor([0.9996, 0.9984], dtype=torch.float64))


def test_factory_maps_names():
    from fedgpt.config import FederationConfig

    def make(**kw):
        return make_server_optimizer(FederationConfig(**kw))

    assert isinstance(make(server_optimizer="fedavg", server_lr=1), FedAvg)
    assert make(server_optimizer="fedavgm", server_momentum=0.5).momentum == 0.5
    adam = make(server_optimizer="fedadam", server_lr=0.05, beta1=0.8, beta2=0.95, tau=1e-4)
    assert (adam.lr, adam.beta1, adam.beta2, adam.tau) == (0.05, 0.8, 0.95, 1e-4)
    with pytest.raises(ConfigError, match="unknown server optimiser 'sgd'"):
        make(server_optimizer="sgd")
