"""The server's privacy for a run: the mechanism ``privacy.mode`` names, its noise
multiplier (configured or calibrated to a target ε), its accounting
(:mod:`fedgpt.privacy.accounting`) and each client's participation count. Saved in
checkpoints (:meth:`ServerPrivacy.state`).
"""

from __future__ import annotations

from fedgpt.config import PrivacyConfig
from fedgpt.privacy.local_dp import local_epsilon  # noqa: F401  (re-exported)
from fedgpt.privacy.mechanism import mechanism_for


def resolve_noise(cfg: PrivacyConfig, sample_rate: float, rounds: int) -> float:
    """The noise multiplier: the configured one, or calibrated to ``target_epsilon``."""
    return mechanism_for(cfg).noise_multiplier(cfg, sample_rate, rounds)


class ServerPrivacy:
    """Per-run privacy state on the server (saved in checkpoints)."""

    def __init__(self, cfg: PrivacyConfig, num_clients: int, per_round: int, rounds: int):
        self.cfg = cfg
        self.mechanism = mechanism_for(cfg)
        self.per_round = per_round
        self.sample_rate = per_round / num_clients
        self.z = self.mechanism.noise_multiplier(cfg, self.sample_rate, rounds)
        self.accounting = self.mechanism.accounting(cfg, self.z, self.sample_rate, per_round)
        # how updates ride inside SecAgg's masked vectors (None: the fixed-point default)
        self.secagg_codec = self.mechanism.secagg_codec(cfg, self.z, per_round)
        self.participation: dict[str, int] = {}

    @property
    def active(self) -> bool:
        """Whether the mode gives a DP guarantee that is accounted (ε reported)."""
        return self.mechanism.active

    @property
    def central(self):
        """Central DP's :class:`~fedgpt.privacy.central_dp.CentralDP` (else None)."""
        return getattr(self.accounting, "central", None)

    def epsilon(self) -> float:
        return self.accounting.epsilon(self.participation)

    def would_exceed(self) -> bool:
        """Whether one more round could take ε past ``target_epsilon``."""
        return self.accounting.would_exceed()

    def after_round(self, participants: list[str], client_metrics: dict | None = None) -> dict:
        self.accounting.spend(client_metrics or {})
        for cid in participants:
            self.participation[cid] = self.participation.get(cid, 0) + 1
        row = {"epsilon": self.epsilon(), "delta": self.cfg.delta, "noise_multiplier": self.z}
        return {**row, **self.accounting.row()}

    def state(self) -> dict:
        base = {"history": [], "participation": self.participation, "client_epsilon": {}}
        return {**base, "clip": None, **self.accounting.state(), "z": self.z}

    def load_state(self, state: dict) -> None:
        self.participation = dict(state.get("participation", {}))
        self.accounting.load_state(state)
