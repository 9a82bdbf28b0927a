"""The plain secure sum's streaming path: each valid update is folded into the
aggregator's running sum as it arrives and let go, so a round holds O(model) on the
server, not O(clients × model) (:mod:`fedgpt.aggregation.stream`).

The checks are those of the held path (:mod:`fedgpt.federation.validation`), each
update's norm computed once and reused. Two rules look at the round as a whole:

* the norm-outlier rule (``federation.norm_outlier_factor``: refuse an update more than
  that many times the round's median norm) keeps back the ``federation.outlier_holdback``
  largest-norm updates seen so far, unfolded; when every update has arrived, the median is
  known and the held ones are folded or refused. Outliers have the largest norms, so any
  number up to the holdback is refused exactly as the held path refuses them; more
  outliers than that fail the round in one line (nothing is aggregated);
* a second reply from a sender whose first was folded: an identical copy is taken back
  out of the sum (both are refused, as on the held path); a different one fails the round,
  since the first can no longer be removed.

Each client's heterogeneity (``‖Δ_k − Δ‖ / ‖Δ‖``, ``cos``) comes from a
:class:`~fedgpt.aggregation.stream.Sketch` (exact for models of at most 65,536
parameters, else from a systematic sample of that many coordinates per client, fewer in a
large cohort: the round's sketches together hold at most 4 M values, 16 MB, so they do not
grow the server with the number of clients).
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field

import torch

from fedgpt.aggregation.base import Aggregate, Aggregator
from fedgpt.aggregation.stream import Sketch

SKETCH_SIZE = 65_536  # sampled coordinates per client, at most
SKETCH_BUDGET = 1 << 22  # ... and in all, over the round's cohort


@dataclass(order=True)
class _Held:
    norm: float
    seq: int
    cid: str = field(compare=False)
    delta: torch.Tensor = field(compare=False)
    weight: float = field(compare=False)
    tier: str | None = field(compare=False)


class Folder:
    """One round's streaming fold over ``aggregator`` (``streaming = True``)."""

    def __init__(
        self,
        aggregator: Aggregator,
        state: dict,
        numel: int,
        rnd: int,
        gen: torch.Generator,
        *,
        factor: float = 0.0,
        holdback: int = 0,
        tier_masks: dict[str, torch.Tensor] | None = None,
        sketch: bool = True,
        cohort: int = 1,
    ):
        self.agg, self.state, self.numel, self.gen = aggregator, state, numel, gen
        self.acc = aggregator.begin(state, numel, rnd)
        self.factor, self.holdback = factor, holdback
        self.masks = tier_masks or {}
        self._index: dict[str, torch.Tensor] = {}
        size = max(1, min(SKETCH_SIZE, SKETCH_BUDGET // max(1, cohort)))
        self.sketch = Sketch(numel, size, gen) if sketch else None
        self.held: list[_Held] = []  # a min-heap by norm
        self.folded: dict[str, tuple[float, float, str | None]] = {}  # cid -> norm, w, tier
        self.norms: dict[str, float] = {}
        self.failure: str | None = None
        self._seq = 0

    def seen(self, cid: str, norm: float) -> None:
        """A valid update refused by the absolute norm bound: its norm still counts
        towards the round's median (as on the held path)."""
        self.norms[cid] = norm

    def index(self, tier: str | None) -> torch.Tensor | None:
        if tier is None:
            return None
        if tier not in self._index:
            self._index[tier] = self.masks[tier].nonzero().squeeze(1)
        return self._index[tier]

    def add(self, cid: str, delta: torch.Tensor, weight: float, norm: float,
            tier: str | None = None, borrowed: bool = False) -> None:  # fmt: skip
        """A validated update of L2 norm ``norm`` (``borrowed``: its memory is reused
        after this call, so keeping it back needs a copy)."""
        self.norms[cid] = norm
        if self.sketch is not None:
            self.sketch.add(cid, self._full(delta, tier), norm)
        if self.factor <= 0 or self.holdback <= 0:
            return self._fold(cid, delta, weight, norm, tier)
        self._seq += 1
        held = _Held(norm, self._seq, cid, delta.clone() if borrowed else delta, weight,
                     tier)  # fmt: skip
        heapq.heappush(self.held, held)
        if len(self.held) > self.holdback:
            low = heapq.heappop(self.held)
            self._fold(low.cid, low.delta, low.weight, low.norm, low.tier)

    def _full(self, delta: torch.Tensor, tier: str | None) -> torch.Tensor:
        if tier is None:
            return delta
        full = torch.zeros(self.numel, dtype=delta.dtype)
        full[self.index(tier)] = delta
        return full

    def _fold(self, cid, delta, weight, norm, tier, sign: int = 1) -> None:
        self.agg.fold(self.acc, delta, weight, norm, self.index(tier), tier, sign)
        if sign > 0:
            self.folded[cid] = (norm, weight, tier)

    def again(self, cid: str, first_hash: str | None, reply_hash: str | None,
              delta: torch.Tensor | None) -> None:  # fmt: skip
        """A second reply from ``cid``: neither copy may count."""
        self.norms.pop(cid, None)
        if self.sketch is not None:
            self.sketch.drop(cid)
        for i, h in enumerate(self.held):
            if h.cid == cid:
                self.held.pop(i)
                heapq.heapify(self.held)
                return
        if cid not in self.folded:
            return
        norm, weight, tier = self.folded.pop(cid)
        if delta is not None and first_hash is not None and first_hash == reply_hash:
            self._fold(cid, delta, weight, norm, tier, sign=-1)
        else:
            self.failure = (
                f"client {cid} sent a second, different update after its first was "
                "aggregated; nothing is aggregated this round"
            )

    def finish(self) -> tuple[Aggregate | None, dict[str, str]]:
        """(the aggregate or None when nothing was folded, {client: why refused})."""
        refused: dict[str, str] = {}
        median = self._median()
        for h in sorted(self.held, key=lambda h: h.seq):  # in order of arrival
            if median > 0 and h.norm > self.factor * median:
                refused[h.cid] = (f"update norm {h.norm:.4g} over {self.factor:g}x the median "
                                  f"{median:.4g}")  # fmt: skip
                self.norms.pop(h.cid)
                if self.sketch is not None:
                    self.sketch.drop(h.cid)
            else:
                self._fold(h.cid, h.delta, h.weight, h.norm, h.tier)
        self.held = []
        late = [
            c for c, (n, _, _) in self.folded.items() if median > 0 and n > self.factor * median
        ]
        if late and self.failure is None:
            self.failure = (
                f"{len(refused) + len(late)} updates are norm outliers, more than "
                f"federation.outlier_holdback = {self.holdback}; nothing is aggregated this round"
            )
        if self.failure is not None or not self.folded:
            return None, refused
        return self.agg.finish(self.acc, self.state, self.gen, self._masks()), refused

    def _median(self) -> float:
        if self.factor <= 0 or self.holdback <= 0 or len(self.norms) < 3:
            return 0.0
        return float(torch.tensor(list(self.norms.values())).median())

    def _masks(self) -> dict | None:
        return self.masks or None

    def heterogeneity(self, delta: torch.Tensor) -> dict[str, dict[str, float]]:
        if self.sketch is None:
            return {}
        return {
            c: {"rel": round(r, 5), "cos": round(k, 5)}
            for c, (r, k) in self.sketch.dissimilarity(delta).items()
            if c in self.folded
        }
