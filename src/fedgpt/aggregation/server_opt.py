"""Server optimisers: how the averaged client delta moves the global model.

Algorithms as ``init``/``apply`` over frozen state (a dict of tensors), so checkpoints
save and restore them exactly. With Δ_t the weighted average of client deltas
(w_k − w_t, i.e. a negative pseudo-gradient) and η the server learning rate:

* FedAvg (McMahan et al. 2017):  x_{t+1} = x_t + η Δ_t.
* FedAvgM (Hsu et al. 2019, "Measuring the Effects of Non-Identical Data Distribution
  for Federated Visual Classification", Alg. FedAvgM):  v_t = β v_{t−1} + Δ_t,
  x_{t+1} = x_t + η v_t.
* FedAdagrad / FedAdam / FedYogi (Reddi et al. 2021, "Adaptive Federated Optimization",
  Algorithm 2): m_t = β1 m_{t−1} + (1 − β1) Δ_t and
    Adagrad: v_t = v_{t−1} + Δ_t²
    Adam:    v_t = β2 v_{t−1} + (1 − β2) Δ_t²
    Yogi:    v_t = v_{t−1} − (1 − β2) Δ_t² sign(v_{t−1} − Δ_t²)
  then x_{t+1} = x_t + η m_t / (√v_t + τ), with v_{−1} = τ² and m_{−1} = 0 as in the
  paper (no bias correction).

``apply(state, params, delta)`` returns (new params, new state) and leaves its inputs as
they were. An optimiser that declares ``consumes_delta = True`` (FedAvgM) is also called
``apply(..., consume=True)`` when the caller hands over ``delta`` (the round's own
aggregate buffer, used for nothing after): FedAvgM builds v_t in it, so a round's server
step needs one new model-sized buffer (the new params), not two.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from fedgpt.registry import Registry

State = dict[str, torch.Tensor]

SERVER_OPTIMIZERS: Registry[type] = Registry("server optimiser", "federation.server_optimizer")


@SERVER_OPTIMIZERS.register("fedavg")
@dataclass(frozen=True)
class FedAvg:
    lr: float = 1.0

    @classmethod
    def from_config(cls, f) -> FedAvg:
        """Built from the ``[federation]`` section (``server_lr``)."""
        return cls(lr=f.server_lr)

    def init(self, params: torch.Tensor) -> State:
        return {}

    def apply(self, state: State, params: torch.Tensor, delta: torch.Tensor, consume=False):
        return torch.add(params, delta, alpha=self.lr), state  # no temporary of Δ's size


@SERVER_OPTIMIZERS.register("fedavgm")
@dataclass(frozen=True)
class FedAvgM:
    lr: float = 1.0
    momentum: float = 0.9
    consumes_delta: ClassVar[bool] = True  # apply(..., consume=True) builds v_t in Δ_t

    @classmethod
    def from_config(cls, f) -> FedAvgM:
        return cls(lr=f.server_lr, momentum=f.server_momentum)

    def init(self, params: torch.Tensor) -> State:
        return {"v": torch.zeros_like(params)}

    def apply(self, state: State, params: torch.Tensor, delta: torch.Tensor, consume=False):
        if consume:  # v_t = Δ_t + β v_{t-1}, built in Δ_t's buffer: the same bits
            v = delta.add_(state["v"], alpha=self.momentum)
        else:
            v = torch.add(delta, state["v"], alpha=self.momentum)
        return torch.add(params, v, alpha=self.lr), {"v": v}


@dataclass(frozen=True)
class _Adaptive:
    lr: float = 0.01
    beta1: float = 0.9
    beta2: float = 0.99
    tau: float = 1e-3

    @classmethod
    def from_config(cls, f):
        return cls(lr=f.server_lr, beta1=f.beta1, beta2=f.beta2, tau=f.tau)

    def init(self, params: torch.Tensor) -> State:
        return {
            "m": torch.zeros_like(params),
            "v": torch.full_like(params, self.tau**2),
        }

    def second_moment(self, v: torch.Tensor, d2: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def apply(self, state: State, params: torch.Tensor, delta: torch.Tensor, consume=False):
        m = self.beta1 * state["m"] + (1 - self.beta1) * delta
        v = self.second_moment(state["v"], delta * delta)
        return params + self.lr * m / (v.sqrt() + self.tau), {"m": m, "v": v}


@SERVER_OPTIMIZERS.register("fedadagrad")
@dataclass(frozen=True)
class FedAdagrad(_Adaptive):
    def second_moment(self, v, d2):
        return v + d2


@SERVER_OPTIMIZERS.register("fedadam")
@dataclass(frozen=True)
class FedAdam(_Adaptive):
    def second_moment(self, v, d2):
        return self.beta2 * v + (1 - self.beta2) * d2


@SERVER_OPTIMIZERS.register("fedyogi")
@dataclass(frozen=True)
class FedYogi(_Adaptive):
    def second_moment(self, v, d2):
        return v - (1 - self.beta2) * d2 * torch.sign(v - d2)


def make_server_optimizer(f):
    """The server optimiser named in ``federation.server_optimizer`` (``f``: the
    ``[federation]`` section)."""
    return SERVER_OPTIMIZERS.get(f.server_optimizer).from_config(f)
