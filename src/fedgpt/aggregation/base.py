"""The ``Aggregator`` component: how the round's client updates become one delta.

An aggregator is pure math over frozen state (fedjax-style ``init`` / ``aggregate``):

    state = agg.init()
    out = agg.aggregate(state, updates, gen)   # out.delta, out.state, out.weights

It declares what it needs, and the compatibility of a run is derived from these
declarations in one place (:mod:`fedgpt.federation.compat`):

* ``individual`` — it must see every client's update (robust rules, attention); a secure
  sum that reveals only the sum cannot feed it; a linear rule (FedAvg) can;
* ``coverage`` — it accepts coverage masks (device tiers: which parameters each client
  trained);
* ``streaming`` — it can fold updates one at a time as they arrive (``begin`` / ``fold``
  / ``finish``, a running sum, :mod:`fedgpt.aggregation.stream`): the server holds
  O(model), not O(clients × model). Rules that need every update at once (median, Krum,
  attention) do not stream; the server holds at most ``federation.max_held_updates`` of
  them and refuses a larger cohort in one line.

A new rule is one module plus one registration line::

    @AGGREGATORS.register("my_rule")
    class MyRule(Aggregator):
        class Config(AggregatorConfig):
            strength: float = 1.0
        def aggregate(self, state, updates, gen):
            return Aggregate(updates.deltas.mean(0), state)

and is then selected with ``federation.aggregator = {kind = "my_rule", strength = 2.0}``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict

from fedgpt.registry import Registry

State = dict[str, torch.Tensor]


class AggregatorConfig(BaseModel):
    """Hyperparameters of an aggregator (a subclass per rule adds its fields)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    kind: str


@dataclass(frozen=True)
class ServerContext:
    """What server-side components may use besides the updates: the server's flat model
    (``fm``), the public token stream (``public``, or None), the run seed, the training
    sequence length and the model's vocabulary size."""

    fm: Any = None
    public: torch.Tensor | None = None
    seed: int = 0
    seq_len: int = 0
    vocab_size: int = 0


@dataclass
class Updates:
    """The round's valid individual updates, stacked: ``deltas`` (K, P) float32 (zeros
    outside a client's slice), ``weights`` n_k (K,) float64, ``masks`` (K, P) bool or
    None (every client trained everything), ``configs`` the replies' config dicts (meta:
    metrics, tier), ``ids`` the senders, ``base`` the round's global weights."""

    ids: list[str]
    deltas: torch.Tensor
    weights: torch.Tensor
    masks: torch.Tensor | None = None
    configs: list[dict] = field(default_factory=list)
    base: torch.Tensor | None = None  # the global weights w_t the deltas start from
    round: int = 0

    @property
    def coverage(self) -> list[float]:
        """Each client's share of the parameters it trained."""
        if self.masks is None:
            return [1.0] * len(self.ids)
        return self.masks.float().mean(1).tolist()


@dataclass
class Aggregate:
    """An aggregator's output: the delta, its new state and, when it weighs clients,
    each client's weight (reported in metrics as ``attention``)."""

    delta: torch.Tensor
    state: State = field(default_factory=dict)
    weights: dict[str, float] = field(default_factory=dict)


class Aggregator:
    """Base class; see the module docstring."""

    name: ClassVar[str] = ""
    individual: ClassVar[bool] = True
    coverage: ClassVar[bool] = False
    streaming: ClassVar[bool] = False
    Config: ClassVar[type[AggregatorConfig]] = AggregatorConfig

    def __init__(self, cfg: AggregatorConfig, ctx: ServerContext):
        self.cfg, self.ctx = cfg, ctx

    def init(self) -> State:
        """State carried from round to round (checkpointed); most rules have none."""
        return {}

    def aggregate(self, state: State, updates: Updates, gen: torch.Generator) -> Aggregate:
        raise NotImplementedError

    # streaming rules (``streaming = True``) also implement these three
    def begin(self, state: State, numel: int, rnd: int) -> Any:
        """A fresh accumulator for round ``rnd``."""
        raise NotImplementedError

    def fold(self, acc: Any, delta: torch.Tensor, weight: float, norm: float,
             index: torch.Tensor | None = None, tier: str | None = None,
             sign: int = 1) -> None:  # fmt: skip
        """Fold one validated update (``norm``: its L2 norm, already computed;
        ``index``: the coordinates a device tier's slice covers); ``sign = -1`` takes a
        folded update back out."""
        raise NotImplementedError

    def finish(self, acc: Any, state: State, gen: torch.Generator,
               masks: dict | None = None) -> Aggregate:  # fmt: skip
        """The aggregate of what was folded (``masks``: tier -> bool mask)."""
        raise NotImplementedError


AGGREGATORS: Registry[type[Aggregator]] = Registry("aggregator", "federation.aggregator.kind")


def aggregate(
    kind: str,
    deltas: torch.Tensor,
    weights: torch.Tensor,
    *,
    gen: torch.Generator | None = None,
    ctx: ServerContext | None = None,
    **params,
) -> torch.Tensor:
    """The registered rule ``kind`` with ``params`` applied once to stacked ``deltas``
    (K, P) weighted by ``weights`` (K,): a one-call use of any aggregator."""
    cls = AGGREGATORS.get(kind)
    agg = cls(cls.Config(kind=kind, **params), ctx or ServerContext())
    ids = [str(i) for i in range(deltas.shape[0])]
    gen = gen if gen is not None else torch.Generator().manual_seed(0)
    return agg.aggregate(agg.init(), Updates(ids, deltas, weights), gen).delta
