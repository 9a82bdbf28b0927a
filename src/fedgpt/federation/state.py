"""What a round carries forward (:class:`ServerState`) and what it reports
(:class:`RoundResult`, one ``metrics.jsonl`` line)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class ServerState:
    """Everything the server carries from one round to the next: the global weights and
    the components' state (server optimiser moments, learned attention θ, FedMD's
    consensus), checkpointed as one dict of tensors."""

    round: int
    weights: torch.Tensor
    opt_state: dict[str, torch.Tensor]


@dataclass
class RoundResult:
    round: int
    participants: list[str]
    dropped: list[dict[str, str]]
    train_loss: float | None = None
    bytes_up: int = 0
    bytes_down: int = 0
    seconds: float = 0.0
    client_seconds: float = 0.0
    update_norm_mean: float | None = None
    eval: dict | None = None
    privacy: dict | None = None
    eval_seconds: float = 0.0
    client_metrics: dict[str, dict] = field(default_factory=dict)
    heterogeneity: dict[str, dict] = field(default_factory=dict)
    attention: dict[str, float] = field(default_factory=dict)  # α per client, if weighed
    update_hashes: dict[str, str] = field(default_factory=dict)  # SHA-256 of payloads received
    below_quorum: str | None = None  # set when too few valid updates: nothing was aggregated

    def tally(self, weights: dict[str, float]) -> RoundResult:
        """Fill ``train_loss`` (n_k-weighted over the participants that report it) and
        ``update_norm_mean`` from ``client_metrics``; ``weights``: n_k per client."""
        ms = [(self.client_metrics[c], weights.get(c, 1.0)) for c in self.participants]
        if ms and all("train_loss" in m for m, _ in ms):
            n = torch.tensor([w for _, w in ms], dtype=torch.float64)
            losses = torch.tensor([m["train_loss"] for m, _ in ms], dtype=torch.float64)
            self.train_loss = float((losses * n).sum() / n.sum())
        if ms and all("update_norm" in m for m, _ in ms):
            self.update_norm_mean = float(torch.tensor([m["update_norm"] for m, _ in ms]).mean())
        return self

    def row(self) -> dict:
        """The ``metrics.jsonl`` line of this round."""
        ev = self.eval or {}
        own = [m for m in self.client_metrics.values() if "own_count" in m]
        if own:  # FedMD: the clients' own models on their own test text
            count = sum(m["own_count"] for m in own)
            ev = {**ev, "personal_accuracy": sum(m["own_correct"] for m in own) / max(count, 1)}
        return {
            "round": self.round,
            "train_loss": self.train_loss,
            "test_loss": ev.get("test_loss"),
            "test_accuracy": ev.get("test_accuracy"),
            "perplexity": ev.get("perplexity"),
            "participants": self.participants,
            "dropped": self.dropped,
            "bytes_up": self.bytes_up,
            "bytes_down": self.bytes_down,
            "eval_bytes_down": ev.get("bytes_down", 0),
            "seconds": round(self.seconds, 4),
            "client_seconds": round(self.client_seconds, 4),
            "eval_seconds": round(self.eval_seconds, 4),
            "update_norm_mean": self.update_norm_mean,
            **(self.privacy or {}),
            **({"heterogeneity": self.heterogeneity} if self.heterogeneity else {}),
            **({"attention": self.attention} if self.attention else {}),
            **({"personal_accuracy": ev["personal_accuracy"]} if own else {}),
            **{k: ev[k] for k in ("test_auc", "test_ece") if k in ev},
        }


def count(participants) -> int:
    """The number of participants of a ``metrics.jsonl`` row (a list, or a count where the
    cohort is hidden)."""
    return participants if isinstance(participants, int) else len(participants or [])
