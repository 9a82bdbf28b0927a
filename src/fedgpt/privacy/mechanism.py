"""The ``PrivacyMechanism`` component (after pfl-research's local vs central mechanisms):
which differential privacy a run applies, and where. Each mechanism has a client side and
a server side:

* ``client_training`` / ``client_steps``: what it adds to the client algorithm
  (:mod:`fedgpt.client.algorithm`): DP-SGD replaces local training, local DP is a step that
  clips and noises the update before it leaves;
* ``wrap``: the aggregator the server runs the round with — central DP *wraps* it in
  DP-FedAvg (the clipped, noised sum replaces the plain mean) rather than being a branch
  in the round;
* ``accounting``: the server's record of ε (:mod:`fedgpt.privacy.accounting`);
* ``noise_multiplier``: the configured one, or one calibrated to ``target_epsilon``.

Built in: ``none`` (:class:`NoPrivacy`, the null object), ``local_dp``
(:mod:`fedgpt.privacy.local_dp`), ``dp_sgd`` (:mod:`fedgpt.privacy.dp_sgd`),
``central_dp`` (:mod:`fedgpt.privacy.central_dp`) and ``distributed_dp``
(:mod:`fedgpt.privacy.skellam`: each client noises its own share of the sum under SecAgg).

Each declares what it needs of the rest of the round, and the compatibility of a run is
derived from these declarations (:mod:`fedgpt.federation.compat`):

* ``server_clips`` — the server clips individual updates, so it must see them (no secure
  sum hiding them);
* ``replaces_aggregator`` — its own estimator replaces the mean (DP-FedAvg's noised sum),
  so no rule that needs individual updates can run in its place;
* ``coverage`` — device tiers (partial slices) are carried;
* ``releases_client_models`` — post-steps may use individual client models (FedDF's
  teachers); central DP releases only the noised mean;
* ``active`` — it gives an accounted DP guarantee (ε is reported);
* ``secret_sampling`` — its ε counts on the cohort being unpredictable, so the server
  samples clients with a key from the OS (kept in its checkpoints), not from the
  configured seed (unless ``privacy.reproducible_noise``);
* ``needs_secure_sum`` — the secure sum it only runs under (distributed DP: ``secagg``);
* ``clients_need_z`` — clients noise with the run's noise multiplier, so remote clients
  learn it (and the federation's clients) before the first round.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch

from fedgpt.aggregation.base import Aggregate, Aggregator, Updates
from fedgpt.config import ClientConfig, PrivacyConfig
from fedgpt.privacy.accountant import plan_noise
from fedgpt.privacy.accounting import (
    Accounting,
    CentralAccounting,
    ClientReported,
    LocalAccounting,
)
from fedgpt.privacy.central_dp import CentralDP
from fedgpt.registry import Registry
from fedgpt.seeding import generator


class PrivacyMechanism:
    name: ClassVar[str] = ""
    server_clips: ClassVar[bool] = False
    replaces_aggregator: ClassVar[bool] = False
    coverage: ClassVar[bool] = False
    releases_client_models: ClassVar[bool] = True
    active: ClassVar[bool] = True
    secret_sampling: ClassVar[bool] = False
    needs_secure_sum: ClassVar[str] = ""
    clients_need_z: ClassVar[bool] = False

    def noise_multiplier(self, cfg: PrivacyConfig, sample_rate: float, rounds: int) -> float:
        return cfg.noise_multiplier

    def client_training(self, client: ClientConfig, cfg: PrivacyConfig | None):
        """A :class:`~fedgpt.client.algorithm.Training` in place of local training."""
        return None

    def client_steps(self, cfg: PrivacyConfig | None, noise_multiplier: float) -> list:
        """:class:`~fedgpt.client.algorithm.ClientStep` s after training."""
        return []

    def accounting(
        self, cfg: PrivacyConfig, z: float, sample_rate: float, per_round: int
    ) -> Accounting:
        return Accounting()

    def wrap(self, aggregator: Aggregator, privacy) -> Aggregator:
        """The aggregator this mechanism runs the round with (``privacy``: the run's
        :class:`~fedgpt.privacy.engine.ServerPrivacy`)."""
        return aggregator

    def refusal(self, cfg) -> str | None:
        """Why this mechanism cannot run with the rest of ``cfg`` (one line), or None."""
        need = self.needs_secure_sum
        if need and cfg.privacy.secure_aggregation != need:
            return (
                f'privacy.mode = "{self.name}" adds its noise inside secure aggregation: set '
                f'privacy.secure_aggregation = "{need}"'
            )
        return None

    def secagg_codec(self, cfg: PrivacyConfig, z: float, per_round: int):
        """The encoding of updates inside SecAgg's masked vectors, or None for the
        fixed-point default (:mod:`fedgpt.privacy.secagg.quantize`)."""
        return None


PRIVACY: Registry[type[PrivacyMechanism]] = Registry("privacy mechanism", "privacy.mode")


def mechanism_for(cfg: PrivacyConfig | None) -> PrivacyMechanism:
    """The mechanism ``privacy.mode`` names (NoPrivacy without a privacy section)."""
    return PRIVACY.get(cfg.mode if cfg is not None else "none")()


@PRIVACY.register("none")
class NoPrivacy(PrivacyMechanism):
    coverage = True
    active = False


@PRIVACY.register("local_dp")
class LocalDP(PrivacyMechanism):
    clients_need_z = True

    def noise_multiplier(self, cfg, sample_rate, rounds):
        if cfg.noise_multiplier > 0 or cfg.target_epsilon == 0:
            return cfg.noise_multiplier
        releases = max(1, math.ceil(rounds * sample_rate))  # a client's expected rounds
        return 2 * plan_noise(cfg.target_epsilon, 1.0, releases, cfg.delta, cfg.accountant)

    def client_steps(self, cfg, noise_multiplier):
        from fedgpt.privacy.local_dp import LocalDPRelease

        return [LocalDPRelease(cfg, noise_multiplier)]

    def accounting(self, cfg, z, sample_rate, per_round):
        return LocalAccounting(cfg, z)


@PRIVACY.register("dp_sgd")
class DPSGD(PrivacyMechanism):
    def client_training(self, client, cfg):
        from fedgpt.privacy.dp_sgd import DPSGDTraining

        return DPSGDTraining(client, cfg)

    def accounting(self, cfg, z, sample_rate, per_round):
        return ClientReported()

    def refusal(self, cfg):
        if cfg.model.gradient_checkpointing:
            return (
                'privacy.mode = "dp_sgd" computes per-sample gradients from hooks that '
                "recomputed activations would run twice: set model.gradient_checkpointing = false"
            )
        return super().refusal(cfg)


@PRIVACY.register("central_dp")
class CentralDPMechanism(PrivacyMechanism):
    secret_sampling = True  # its ε counts on amplification by sampling: see FederatedServer
    server_clips = True
    replaces_aggregator = True
    releases_client_models = False

    def noise_multiplier(self, cfg, sample_rate, rounds):
        if cfg.noise_multiplier > 0 or cfg.target_epsilon == 0:
            return cfg.noise_multiplier
        return plan_noise(cfg.target_epsilon, sample_rate, rounds, cfg.delta, cfg.accountant)

    def accounting(self, cfg, z, sample_rate, per_round):
        central = CentralDP(
            clip=cfg.clip_norm,
            noise_multiplier=z,
            expected_clients=per_round,
            adaptive=cfg.adaptive_clipping,
            quantile=cfg.target_quantile,
            clip_lr=cfg.clip_lr,
            count_std=cfg.count_noise_std or None,
        )
        return CentralAccounting(cfg, z, sample_rate, central)

    def wrap(self, aggregator: Aggregator, privacy) -> Aggregator:
        return DPFedAvg(privacy.central, privacy.cfg.reproducible_noise, aggregator.ctx.seed)


@PRIVACY.register("distributed_dp")
class DistributedDP(PrivacyMechanism):
    """Client-level DP of the released model without trusting the server: each client clips,
    rounds and adds its Skellam share of the noise before SecAgg masks it
    (:mod:`fedgpt.privacy.skellam`); the server unmasks only the noisy sum."""

    secret_sampling = True
    replaces_aggregator = True
    releases_client_models = False
    needs_secure_sum = "secagg"
    clients_need_z = True

    def noise_multiplier(self, cfg, sample_rate, rounds):
        if cfg.noise_multiplier > 0 or cfg.target_epsilon == 0:
            return cfg.noise_multiplier
        from fedgpt.privacy.skellam import SkellamCodec
        from fedgpt.privacy.skellam_accountant import MAX_DIM, plan_noise

        scale = SkellamCodec(cfg.clip_norm, 1.0, 1, 1).scale
        return plan_noise(cfg.target_epsilon, sample_rate, rounds, cfg.delta,
                          clip=cfg.clip_norm, dim=MAX_DIM, scale=scale)  # fmt: skip

    def refusal(self, cfg):
        p = cfg.privacy
        if p.adaptive_clipping:
            return (
                f'privacy.adaptive_clipping is central_dp\'s; privacy.mode = "{self.name}" '
                "clips at the fixed privacy.clip_norm on each client"
            )
        if p.noise_multiplier == 0 and p.target_epsilon == 0:
            return (
                f'privacy.mode = "{self.name}" needs privacy.noise_multiplier > 0 or '
                "privacy.target_epsilon > 0"
            )
        return super().refusal(cfg)

    def secagg_codec(self, cfg, z, per_round):
        from fedgpt.privacy.skellam import SkellamCodec, min_summands

        return SkellamCodec(
            cfg.clip_norm, z, min_summands(per_round, cfg), per_round, cfg.reproducible_noise
        )

    def accounting(self, cfg, z, sample_rate, per_round):
        from fedgpt.privacy.accounting import SkellamAccounting

        return SkellamAccounting(cfg, z, sample_rate, self.secagg_codec(cfg, z, per_round))


class DPFedAvg(Aggregator):
    """DP-FedAvg's clipped, noised sum over the expected cohort (McMahan et al. 2018,
    Alg. 1, estimator f̃_f; :class:`~fedgpt.privacy.central_dp.CentralDP`). Noise comes
    from the OS CSPRNG unless ``privacy.reproducible_noise``."""

    individual = True
    streaming = True  # each update is clipped and folded as it arrives

    def __init__(self, dp: CentralDP, reproducible: bool, seed: int):
        self.dp, self.reproducible, self.seed = dp, reproducible, seed

    def _noise(self, rnd: int) -> torch.Generator | None:
        return generator(self.seed, rnd, "__dp_noise__") if self.reproducible else None

    def aggregate(self, state, updates: Updates, gen: torch.Generator) -> Aggregate:
        avg, _ = self.dp.aggregate(updates.deltas, updates.weights, self._noise(updates.round))
        return Aggregate(avg, state)

    def begin(self, state, numel: int, rnd: int) -> dict:
        return {"sum": torch.zeros(numel), "norms": [], "round": rnd}

    def fold(self, acc, delta, weight, norm, index=None, tier=None, sign=1):
        scale = sign * self.dp.scale(norm)
        if index is None:
            acc["sum"].add_(delta, alpha=scale)
        else:
            acc["sum"].index_add_(0, index, delta, alpha=scale)
        if sign > 0:
            acc["norms"].append(norm)
        else:  # an identical copy of a folded update: the same norm
            acc["norms"].remove(norm)

    def finish(self, acc, state, gen, masks=None) -> Aggregate:
        norms = torch.tensor(acc["norms"], dtype=torch.float32)
        avg, _ = self.dp.release(acc["sum"], norms, self._noise(acc["round"]))
        return Aggregate(avg, state)
