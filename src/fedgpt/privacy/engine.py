"""The server's privacy policy for a run: which aggregator, the noise multiplier
(configured or calibrated to a target ε), the accountant, and the budget check.

Central DP: one Poisson-subsampled Gaussian step per round with sample rate q = m/N (m
clients sampled per round out of N; sampling is without replacement of a fixed m, which
the accountant approximates by Poisson sampling with the same rate, as is common
practice), noise multiplier z.
DP-SGD: each client accounts its own record-level ε (see ``dp_sgd``) and reports it;
the run reports the largest.
Local DP: each client's own ε is that of c releases with multiplier z/2 (see
``local_dp``), c = the rounds it took part in; the run reports the largest, and a client
refuses to train once its next release would exceed ``target_epsilon``.
"""

from __future__ import annotations

import math

import torch

from fedgpt.config import PrivacyConfig
from fedgpt.privacy.accountant import Accountant, epsilon, plan_noise
from fedgpt.privacy.central_dp import CentralDP
from fedgpt.privacy.local_dp import local_noise_multiplier


def local_epsilon(z: float, releases: int, delta: float, kind: str = "rdp") -> float:
    """ε of one client after ``releases`` local-DP releases."""
    return epsilon(local_noise_multiplier(z), 1.0, releases, delta, kind)


def resolve_noise(cfg: PrivacyConfig, sample_rate: float, rounds: int) -> float:
    """The noise multiplier: the configured one, or calibrated to ``target_epsilon``."""
    if cfg.noise_multiplier > 0 or cfg.target_epsilon == 0:
        return cfg.noise_multiplier
    if cfg.mode == "central_dp":
        return plan_noise(cfg.target_epsilon, sample_rate, rounds, cfg.delta, cfg.accountant)
    # local DP: a client taking part in its expected number of rounds (at least 1)
    releases = max(1, math.ceil(rounds * sample_rate))
    return 2 * plan_noise(cfg.target_epsilon, 1.0, releases, cfg.delta, cfg.accountant)


class ServerPrivacy:
    """Per-run privacy state on the server (saved in checkpoints)."""

    def __init__(self, cfg: PrivacyConfig, num_clients: int, per_round: int, rounds: int):
        self.cfg = cfg
        self.sample_rate = per_round / num_clients
        self.z = resolve_noise(cfg, self.sample_rate, rounds)
        self.accountant = Accountant(cfg.delta, cfg.accountant)
        self.participation: dict[str, int] = {}
        self.client_epsilon: dict[str, float] = {}  # DP-SGD: as each client reports it
        self.central = None
        if cfg.mode == "central_dp":
            self.central = CentralDP(
                clip=cfg.clip_norm,
                noise_multiplier=self.z,
                expected_clients=per_round,
                adaptive=cfg.adaptive_clipping,
                quantile=cfg.target_quantile,
                clip_lr=cfg.clip_lr,
                count_std=cfg.count_noise_std or None,
            )

    @property
    def active(self) -> bool:
        """Whether the mode gives a DP guarantee that is accounted (ε reported)."""
        from fedgpt.privacy.mechanism import PRIVACY

        return PRIVACY.get(self.cfg.mode).active

    def aggregate(self, deltas: torch.Tensor, weights: torch.Tensor, gen):
        return self.central.aggregate(deltas, weights, gen)

    def epsilon(self) -> float:
        if self.cfg.mode == "central_dp":
            return self.accountant.epsilon()
        if self.cfg.mode == "dp_sgd":
            return max(self.client_epsilon.values(), default=0.0)
        most = max(self.participation.values(), default=0)
        return local_epsilon(self.z, most, self.cfg.delta, self.cfg.accountant) if most else 0.0

    def would_exceed(self) -> bool:
        """Whether one more round could take ε past ``target_epsilon`` (central DP; under
        local DP each client enforces its own budget)."""
        if self.cfg.mode != "central_dp" or self.cfg.target_epsilon == 0:
            return False
        extra = self.accountant.epsilon((self.z, self.sample_rate))
        return extra > self.cfg.target_epsilon * (1 + 1e-9)

    def after_round(self, participants: list[str], client_metrics: dict | None = None) -> dict:
        if self.cfg.mode == "central_dp":
            self.accountant.spend(self.z, self.sample_rate)
        for cid, m in (client_metrics or {}).items():
            if "epsilon" in m:
                self.client_epsilon[cid] = float(m["epsilon"])
        for cid in participants:
            self.participation[cid] = self.participation.get(cid, 0) + 1
        row = {"epsilon": self.epsilon(), "delta": self.cfg.delta, "noise_multiplier": self.z}
        if self.central is not None:
            row["clip_norm"] = self.central.clip
        return row

    def state(self) -> dict:
        return {
            "history": self.accountant.history,
            "participation": self.participation,
            "client_epsilon": self.client_epsilon,
            "clip": self.central.clip if self.central is not None else None,
            "z": self.z,
        }

    def load_state(self, state: dict) -> None:
        self.accountant.history = [tuple(h) for h in state.get("history", [])]
        self.participation = dict(state.get("participation", {}))
        self.client_epsilon = dict(state.get("client_epsilon", {}))
        if self.central is not None and state.get("clip") is not None:
            self.central.clip = float(state["clip"])
