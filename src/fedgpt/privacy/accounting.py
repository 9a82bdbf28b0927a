"""The server side of a privacy mechanism's accounting: the run's ε, and whether one more
round would exceed ``privacy.target_epsilon``. Each mechanism makes its own
(``PrivacyMechanism.accounting``):

* :class:`Accounting` (no guarantee): ε = 0, never exceeds;
* :class:`CentralAccounting` (central DP): one Poisson-subsampled Gaussian step per round
  with sample rate q = m/N (m clients sampled per round out of N; sampling is without
  replacement of a fixed m, which the accountant approximates by Poisson sampling with the
  same rate, as is common practice), noise multiplier z; the server refuses a round that
  would exceed the target;
* :class:`LocalAccounting` (local DP): each client's ε is that of c releases with
  multiplier z/2 (:mod:`fedgpt.privacy.local_dp`), c = the rounds it took part in; the
  run reports the largest (each client enforces its own budget);
* :class:`SkellamAccounting` (distributed DP): one Poisson-subsampled Skellam round per
  round (:mod:`fedgpt.privacy.skellam_accountant`); the server refuses a round that would
  exceed the target;
* :class:`ClientReported` (DP-SGD): each client accounts its own record-level ε and
  reports it with its update; the run reports the largest.

``state()`` / ``load_state()`` go into checkpoints.
"""

from __future__ import annotations

from fedgpt.config import PrivacyConfig
from fedgpt.privacy.accountant import Accountant
from fedgpt.privacy.local_dp import local_epsilon


class Accounting:
    def epsilon(self, participation: dict[str, int]) -> float:
        return 0.0

    def would_exceed(self) -> bool:
        return False

    def spend(self, client_metrics: dict[str, dict]) -> None:
        pass

    def row(self) -> dict:
        """Extra per-round figures for metrics.jsonl."""
        return {}

    def state(self) -> dict:
        return {}

    def load_state(self, state: dict) -> None:
        pass


class CentralAccounting(Accounting):
    def __init__(self, cfg: PrivacyConfig, z: float, sample_rate: float, central):
        self.cfg, self.z, self.q, self.central = cfg, z, sample_rate, central
        self.accountant = Accountant(cfg.delta, cfg.accountant)

    def epsilon(self, participation):
        return self.accountant.epsilon()

    def would_exceed(self) -> bool:
        if self.cfg.target_epsilon == 0:
            return False
        extra = self.accountant.epsilon((self.z, self.q))
        return extra > self.cfg.target_epsilon * (1 + 1e-9)

    def spend(self, client_metrics):
        self.accountant.spend(self.z, self.q)

    def row(self) -> dict:
        return {"clip_norm": self.central.clip}

    def state(self) -> dict:
        return {"history": self.accountant.history, "clip": self.central.clip}

    def load_state(self, state: dict) -> None:
        self.accountant.history = [tuple(h) for h in state.get("history", [])]
        if state.get("clip") is not None:
            self.central.clip = float(state["clip"])


class LocalAccounting(Accounting):
    def __init__(self, cfg: PrivacyConfig, z: float):
        self.cfg, self.z = cfg, z

    def epsilon(self, participation):
        most = max(participation.values(), default=0)
        return local_epsilon(self.z, most, self.cfg.delta, self.cfg.accountant) if most else 0.0


class ClientReported(Accounting):
    def __init__(self):
        self.client_epsilon: dict[str, float] = {}

    def epsilon(self, participation):
        return max(self.client_epsilon.values(), default=0.0)

    def spend(self, client_metrics):
        for cid, m in client_metrics.items():
            if "epsilon" in m:
                self.client_epsilon[cid] = float(m["epsilon"])

    def state(self) -> dict:
        return {"client_epsilon": self.client_epsilon}

    def load_state(self, state: dict) -> None:
        self.client_epsilon = dict(state.get("client_epsilon", {}))


class SkellamAccounting(Accounting):
    """Distributed DP's ε: ``rounds`` rounds of the subsampled Skellam mechanism."""

    def __init__(self, cfg: PrivacyConfig, z: float, sample_rate: float, codec):
        self.cfg, self.z, self.q, self.codec, self.rounds = cfg, z, sample_rate, codec, 0

    def _epsilon(self, rounds: int) -> float:
        from fedgpt.privacy.skellam_accountant import MAX_DIM, epsilon

        return epsilon(self.z, self.q, rounds, self.cfg.delta, clip=self.codec.clip,
                       dim=MAX_DIM, scale=self.codec.scale)  # fmt: skip

    def epsilon(self, participation):
        return self._epsilon(self.rounds)

    def would_exceed(self) -> bool:
        target = self.cfg.target_epsilon
        return target > 0 and self._epsilon(self.rounds + 1) > target * (1 + 1e-9)

    def spend(self, client_metrics):
        self.rounds += 1

    def state(self) -> dict:
        return {"rounds": self.rounds}

    def load_state(self, state: dict) -> None:
        self.rounds = int(state.get("rounds", 0))
