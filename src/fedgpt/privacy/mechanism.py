"""The ``PrivacyMechanism`` component (after pfl-research's local vs central mechanisms):
which differential privacy a run applies, and where.

* ``none`` (:class:`NoPrivacy`, the null object): updates go as they are;
* ``local_dp``: each client clips and noises its own update before it leaves
  (:mod:`fedgpt.privacy.local_dp`);
* ``dp_sgd``: record-level DP-SGD inside each client (:mod:`fedgpt.privacy.dp_sgd`);
* ``central_dp``: DP-FedAvg on the server (:mod:`fedgpt.privacy.central_dp`): it *wraps*
  the aggregator — the clipped, noised sum replaces the plain mean — rather than being a
  branch in the round.

Each declares what it needs of the rest of the round, and the compatibility of a run is
derived from these declarations (:mod:`fedgpt.federation.compat`):

* ``server_clips`` — the server clips individual updates, so it must see them (no secure
  sum hiding them);
* ``replaces_aggregator`` — its own estimator replaces the mean (DP-FedAvg's noised sum),
  so no rule that needs individual updates can run in its place;
* ``coverage`` — device tiers (partial slices) are carried;
* ``releases_client_models`` — post-steps may use individual client models (FedDF's
  teachers); central DP releases only the noised mean.

The accounting (ε so far, would the next round exceed the budget) is
:class:`fedgpt.privacy.engine.ServerPrivacy`.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from fedgpt.aggregation.base import Aggregate, Aggregator, Updates
from fedgpt.privacy.central_dp import CentralDP
from fedgpt.registry import Registry
from fedgpt.seeding import generator


class PrivacyMechanism:
    name: ClassVar[str] = ""
    server_clips: ClassVar[bool] = False
    replaces_aggregator: ClassVar[bool] = False
    coverage: ClassVar[bool] = False
    releases_client_models: ClassVar[bool] = True
    active: ClassVar[bool] = True  # gives an accounted DP guarantee (ε is reported)

    def wrap(self, aggregator: Aggregator, privacy) -> Aggregator:
        """The aggregator this mechanism runs the round with (``privacy``: the run's
        :class:`~fedgpt.privacy.engine.ServerPrivacy`)."""
        return aggregator


PRIVACY: Registry[type[PrivacyMechanism]] = Registry("privacy mechanism", "privacy.mode")


@PRIVACY.register("none")
class NoPrivacy(PrivacyMechanism):
    coverage = True
    active = False


@PRIVACY.register("local_dp")
class LocalDP(PrivacyMechanism):
    pass


@PRIVACY.register("dp_sgd")
class DPSGD(PrivacyMechanism):
    pass


@PRIVACY.register("central_dp")
class CentralDPMechanism(PrivacyMechanism):
    server_clips = True
    replaces_aggregator = True
    releases_client_models = False

    def wrap(self, aggregator: Aggregator, privacy) -> Aggregator:
        return DPFedAvg(privacy.central, privacy.cfg.reproducible_noise, aggregator.ctx.seed)


class DPFedAvg(Aggregator):
    """DP-FedAvg's clipped, noised sum over the expected cohort (McMahan et al. 2018,
    Alg. 1, estimator f̃_f; :class:`~fedgpt.privacy.central_dp.CentralDP`). Noise comes
    from the OS CSPRNG unless ``privacy.reproducible_noise``."""

    individual = True

    def __init__(self, dp: CentralDP, reproducible: bool, seed: int):
        self.dp, self.reproducible, self.seed = dp, reproducible, seed

    def aggregate(self, state, updates: Updates, gen: torch.Generator) -> Aggregate:
        noise = generator(self.seed, updates.round, "__dp_noise__") if self.reproducible else None
        avg, _ = self.dp.aggregate(updates.deltas, updates.weights, noise)
        return Aggregate(avg, state)
