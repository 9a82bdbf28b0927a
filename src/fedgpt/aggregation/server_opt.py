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
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

State = dict[str, torch.Tensor]


@dataclass(frozen=True)
class FedAvg:
    lr: float = 1.0

    def init(self, params: torch.Tensor) -> State:
        return {}

    def apply(self, state: State, params: torch.Tensor, delta: torch.Tensor):
        return params + self.lr * delta, state


@dataclass(frozen=True)
class FedAvgM:
    lr: float = 1.0
    momentum: float = 0.9

    def init(self, params: torch.Tensor) -> State:
        return {"v": torch.zeros_like(params)}

    def apply(self, state: State, params: torch.Tensor, delta: torch.Tensor):
        v = self.momentum * state["v"] + delta
        return params + self.lr * v, {"v": v}


@dataclass(frozen=True)
class _Adaptive:
    lr: float = 0.01
    beta1: float = 0.9
    beta2: float = 0.99
    tau: float = 1e-3

    def init(self, params: torch.Tensor) -> State:
        return {
            "m": torch.zeros_like(params),
            "v": torch.full_like(params, self.tau**2),
        }

    def second_moment(self, v: torch.Tensor, d2: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def apply(self, state: State, params: torch.Tensor, delta: torch.Tensor):
        m = self.beta1 * state["m"] + (1 - self.beta1) * delta
        v = self.second_moment(state["v"], delta * delta)
        return params + self.lr * m / (v.sqrt() + self.tau), {"m": m, "v": v}


@dataclass(frozen=True)
class FedAdagrad(_Adaptive):
    def second_moment(self, v, d2):
        return v + d2


@dataclass(frozen=True)
class FedAdam(_Adaptive):
    def second_moment(self, v, d2):
        return self.beta2 * v + (1 - self.beta2) * d2


@dataclass(frozen=True)
class FedYogi(_Adaptive):
    def second_moment(self, v, d2):
        return v - (1 - self.beta2) * d2 * torch.sign(v - d2)


def make_server_optimizer(
    name: str,
    lr: float,
    momentum: float = 0.9,
    beta1: float = 0.9,
    beta2: float = 0.99,
    tau: float = 1e-3,
):
    """The server optimiser named in ``federation.server_optimizer``."""
    if name == "fedavg":
        return FedAvg(lr=lr)
    if name == "fedavgm":
        return FedAvgM(lr=lr, momentum=momentum)
    cls = {"fedadam": FedAdam, "fedyogi": FedYogi, "fedadagrad": FedAdagrad}[name]
    return cls(lr=lr, beta1=beta1, beta2=beta2, tau=tau)
