"""The ``Strategy`` component: one round of federated training, from the sampled cohort
to the new global weights (after Flower's ``configure_train`` / ``aggregate_train``, and
fedjax's algorithms as ``init`` / ``apply`` over frozen state).

    state = strategy.init(weights)
    state, result = strategy.round(state, cohort, exchange)

:class:`FedAvgFamily` composes the other components: a
:class:`~fedgpt.federation.secure_sum.SecureSum` collects the replies, an
:class:`~fedgpt.aggregation.base.Aggregator` (wrapped by the privacy mechanism, e.g.
DP-FedAvg) combines them, a server optimiser (:mod:`fedgpt.aggregation.server_opt`)
applies the delta, and post-steps (hybrid aggregation's public step, FedDF's ensemble
distillation) refine the result. FedMD is a strategy of its own
(:mod:`fedgpt.federation.fedmd`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import torch

from fedgpt.aggregation.base import Aggregator, Updates
from fedgpt.aggregation.fedavg import dissimilarity
from fedgpt.errors import RunFailed
from fedgpt.federation.exchange import Exchange
from fedgpt.federation.secure_sum import Collected, Fold, SecureSum
from fedgpt.federation.state import RoundResult, ServerState
from fedgpt.registry import Registry
from fedgpt.schemas import not_finite
from fedgpt.seeding import generator

# a post-step: (new weights, round, w_t, individual updates or None) -> new weights
PostStep = Callable[[torch.Tensor, int, torch.Tensor, "Updates | None"], torch.Tensor]


class Strategy:
    name: ClassVar[str] = ""

    def init(self, weights: torch.Tensor) -> ServerState:
        raise NotImplementedError

    def round(
        self, state: ServerState, cohort: list[str], ex: Exchange
    ) -> tuple[ServerState, RoundResult]:
        raise NotImplementedError


STRATEGIES: Registry[type[Strategy]] = Registry("strategy", "federation.distill")

EXTRA_STATE = ("attention.", "fedmd.", "sampling.")  # state beside the optimiser's


class FedAvgFamily(Strategy):
    """Collect → aggregate → server step → post-steps."""

    def __init__(
        self,
        secure_sum: SecureSum,
        aggregator: Aggregator,
        optimizer,
        *,
        seed: int = 0,
        quorum: int = 0,
        post_steps: tuple[PostStep, ...] = (),
        log_heterogeneity: bool = True,
        stream: bool = True,
    ):
        self.secure_sum, self.aggregator, self.optimizer = secure_sum, aggregator, optimizer
        self.seed, self.quorum, self.post_steps = seed, quorum, post_steps
        self.log_heterogeneity = log_heterogeneity  # off under DP: no per-client data
        # fold each update on arrival: a streaming rule, a secure sum that can, and no
        # post-step that needs the individual updates (FedDF's teachers)
        self.stream = stream and aggregator.streaming and secure_sum.streams

    def init(self, weights: torch.Tensor) -> ServerState:
        return ServerState(0, weights.clone(), self.optimizer.init(weights))

    def round(self, state, cohort, ex):
        rnd = state.round + 1
        if self.stream:
            got = self.secure_sum.collect(state, cohort, ex, self._fold(state))
        else:
            got = self.secure_sum.collect(state, cohort, ex)
        if got.failure is not None and self.quorum:
            return state, below_quorum(rnd, got.failure, ex)
        if self.quorum and len(got.participants) < self.quorum:
            why = f"{len(got.participants)} valid updates, quorum {self.quorum}"
            return state, below_quorum(rnd, why, ex)
        result = RoundResult(rnd, [], ex.dropped)
        if got.failure is not None:
            ex.drop("*", f"round failed: {got.failure}")
        delta, agg_state = self._aggregate(state, got, result)
        if delta is None:
            return ServerState(rnd, state.weights, state.opt_state), self._report(result, ex)
        # a folded or securely summed aggregate is this round's own buffer, used for nothing
        # after: the server step may build in it (a held rule's may view the updates)
        own = got.folded is not None or got.average is not None
        if own and getattr(self.optimizer, "consumes_delta", False):
            new_w, opt = self.optimizer.apply(state.opt_state, state.weights, delta, consume=True)
        else:
            new_w, opt = self.optimizer.apply(state.opt_state, state.weights, delta)
        for step in self.post_steps:
            new_w = step(new_w, rnd, state.weights, got.updates)
        if not_finite(new_w):  # one pass of its norm, no mask of the model's size
            raise RunFailed(
                f"round {rnd}: the new weights are not finite (the aggregate or the server "
                "optimiser overflowed); they were not applied"
            )
        extras = {k: v for k, v in state.opt_state.items() if k.startswith(EXTRA_STATE)}
        new = ServerState(rnd, new_w, {**extras, **opt, **agg_state})
        result.participants = got.participants
        result.client_metrics = {c: got.metrics.get(c, {}) for c in got.participants}
        result.tally(got.weights)
        if got.train_loss is not None:
            result.train_loss = got.train_loss
        return new, self._report(result, ex)

    def _fold(self, state: ServerState) -> Fold:
        agg_state = {k: v for k, v in state.opt_state.items() if k.startswith(EXTRA_STATE)}
        gen = generator(self.seed, state.round + 1, "__bucket__")
        return Fold(self.aggregator, agg_state, gen, sketch=self.log_heterogeneity)

    def _aggregate(self, state, got: Collected, result: RoundResult):
        """(the delta or None, the aggregator's new state)."""
        if got.folded is not None:
            result.attention = got.folded.weights
            if self.log_heterogeneity:
                result.heterogeneity = got.heterogeneity
            agg_state = {k: v for k, v in got.folded.state.items() if k.startswith(EXTRA_STATE)}
            return got.folded.delta, agg_state
        if got.average is not None:
            return got.average, {}
        if got.updates is None:
            return None, {}
        agg_state = {k: v for k, v in state.opt_state.items() if k.startswith(EXTRA_STATE)}
        gen = generator(self.seed, state.round + 1, "__bucket__")
        out = self.aggregator.aggregate(agg_state, got.updates, gen)
        agg_state = {k: v for k, v in out.state.items() if k.startswith(EXTRA_STATE)}
        result.attention = out.weights
        if self.log_heterogeneity:
            rel, cos = dissimilarity(got.updates.deltas, out.delta)
            result.heterogeneity = {
                cid: {"rel": round(float(r), 5), "cos": round(float(c), 5)}
                for cid, r, c in zip(got.updates.ids, rel, cos, strict=True)
            }
        return out.delta, agg_state

    @staticmethod
    def _report(result: RoundResult, ex: Exchange) -> RoundResult:
        result.bytes_up, result.bytes_down = ex.bytes_up, ex.bytes_down
        result.client_seconds, result.update_hashes = ex.seconds, dict(ex.hashes)
        return result


def below_quorum(rnd: int, why: str, ex: Exchange) -> RoundResult:
    """A round that aggregated nothing for lack of quorum (``runtime.min_replies``)."""
    return RoundResult(
        rnd, [], ex.dropped, client_seconds=ex.seconds, update_hashes=dict(ex.hashes),
        below_quorum=why,
    )  # fmt: skip
