"""The server's round: sample a cohort → the strategy's round over an exchange →
privacy accounting → evaluation. It knows nothing of how messages travel (that is the
runtime's job) nor of files (the runner checkpoints and logs the :class:`RoundResult`);
what a round does is the :class:`~fedgpt.federation.strategy.Strategy`'s.

Build one with :func:`fedgpt.build.build_server` (from a configuration), or pass the
components yourself; the server is complete when constructed.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence

import torch

from fedgpt.config import RunConfig
from fedgpt.federation.exchange import Exchange
from fedgpt.federation.sampling import sample_clients
from fedgpt.federation.state import RoundResult, ServerState
from fedgpt.federation.strategy import Strategy
from fedgpt.messages import Message, Reply, Runtime, broadcast
from fedgpt.schemas import Expect, parse_reply
from fedgpt.tasks import scores

__all__ = ["FederatedServer", "RoundResult", "ServerState"]

SAMPLING_KEY = "sampling.key"  # server state: the secret key of client sampling


class FederatedServer:
    """Runs rounds of ``strategy`` over ``runtime`` for ``client_ids``; ``privacy`` (a
    :class:`~fedgpt.privacy.engine.ServerPrivacy`, or None) accounts ε after each round.

    Optional progress callbacks: ``on_round_start(round, cohort)``, ``on_reply(client,
    reply)`` for every arrival, ``on_eval_start(round, clients)``."""

    def __init__(
        self,
        cfg: RunConfig,
        runtime: Runtime,
        client_ids: Sequence[str],
        strategy: Strategy,
        privacy=None,
    ):
        self.cfg, self.runtime, self.strategy, self.privacy = cfg, runtime, strategy, privacy
        self.client_ids = list(client_ids)
        self.on_round_start: Callable[[int, list[str]], None] | None = None
        self.on_reply: Callable[[str, Reply], None] | None = None
        self.on_eval_start: Callable[[int, int], None] | None = None

    def init_state(self, weights: torch.Tensor) -> ServerState:
        state = self.strategy.init(weights)
        if self._secret_sampling():  # a key from the OS, kept in the server's checkpoints
            state.opt_state[SAMPLING_KEY] = torch.frombuffer(
                bytearray(os.urandom(32)), dtype=torch.uint8
            ).clone()
        return state

    def _secret_sampling(self) -> bool:
        """Whether the cohort must be unpredictable from the configuration: a mechanism
        whose ε counts on amplification by sampling (central DP), unless
        ``privacy.reproducible_noise``."""
        mech = getattr(self.privacy, "mechanism", None)
        return bool(getattr(mech, "secret_sampling", False)) and not (
            self.cfg.privacy.reproducible_noise
        )

    def run_round(self, state: ServerState) -> tuple[ServerState, RoundResult]:
        start = time.perf_counter()
        rnd, f = state.round + 1, self.cfg.federation
        key = state.opt_state.get(SAMPLING_KEY)
        seed = int.from_bytes(bytes(key.tolist()), "big") if key is not None else self.cfg.seed
        cohort = sample_clients(self.client_ids, rnd, seed, f.fraction, f.min_clients)
        if self.on_round_start:
            self.on_round_start(rnd, cohort)
        new_state, result = self.strategy.round(
            state, cohort, Exchange(self.runtime, self.on_reply)
        )
        if result.below_quorum is None:
            self._finish(new_state, result)
        result.seconds = time.perf_counter() - start
        return new_state, result

    def _finish(self, state: ServerState, result: RoundResult) -> None:
        """Account privacy and, on evaluation rounds, evaluate the new weights."""
        f, rnd = self.cfg.federation, result.round
        if self.privacy is not None and self.privacy.active:
            result.privacy = self.privacy.after_round(result.participants, result.client_metrics)
        if rnd % f.eval_every == 0 or rnd == f.rounds:
            t1 = time.perf_counter()
            result.eval = self.evaluate(state.weights, rnd)
            result.eval_seconds = time.perf_counter() - t1

    def send_receipts(self, rnd: int, run_id: str, receipts: dict[str, bytes]) -> int | None:
        """Hand each client its signed receipt (federation.receipts); the number kept, or
        None where the runtime carries them with its next exchange (``carry``: a round over
        Flower is then one exchange)."""
        from fedgpt.federation.receipts import RECEIPT

        cfg = {"round": rnd, "run_id": run_id}
        msgs = {c: Message(RECEIPT, cfg, blobs={"receipt": [raw]}) for c, raw in receipts.items()}
        carry = getattr(self.runtime, "carry", None)
        if carry is not None:
            carry(msgs)
            return None
        replies = self.runtime.send_and_receive(msgs) if msgs else {}
        kept = [r for r in replies.values() if isinstance(r, Message) and r.config.get("kept")]
        return len(kept)

    def evaluate(
        self, weights: torch.Tensor, rnd: int, client_ids: Sequence[str] | None = None
    ) -> dict:
        """Token-weighted test loss, perplexity and next-token accuracy over every client's
        test split (each client evaluates locally and reports sums)."""
        ids = list(client_ids if client_ids is not None else self.client_ids)
        if self.on_eval_start:
            self.on_eval_start(rnd, len(ids))
        cfg = {
            "round": rnd,
            "seq_len": self.cfg.client.seq_len,
            "max_tokens": self.cfg.federation.eval_max_chars,
        }
        down = broadcast(weights, self.cfg.federation.broadcast_dtype)
        msgs = {cid: Message("evaluate", cfg, {"weights": down}) for cid in ids}
        replies = self.runtime.send_and_receive(msgs, on_reply=self.on_reply)
        per_client: dict[str, dict] = {}
        loss_sum = correct = count = 0.0
        refused: list[dict[str, str]] = []  # malformed replies: skipped, with their reason
        hists: list[list[float]] = []
        for cid, r in replies.items():
            c, why = parse_reply(r, Expect("evaluate/result", rnd)) if cid in msgs else (None, "")
            if why and isinstance(r, Message):
                refused.append({"client": cid, "reason": why})
            if c is not None and c.count > 0:
                loss_sum += c.loss_sum
                correct += c.correct
                count += c.count
                per_client[cid] = {
                    "loss": c.loss_sum / c.count,
                    "accuracy": c.correct / c.count,
                    "count": c.count,
                }
                if c.hist is not None:  # two-class classification: AUC, calibration
                    hists.append(c.hist)
                    per_client[cid] |= {"auc": c.auc, "ece": scores.summarize(c.hist)["ece"]}
        if count == 0:
            return {
                "test_loss": None,
                "test_accuracy": None,
                "perplexity": None,
                "per_client": per_client,
                "bytes_down": 0,
                **({"dropped": refused} if refused else {}),
            }
        loss = loss_sum / count
        pooled = scores.pooled_summary([sum(x) for x in zip(*hists, strict=True)]) if hists else {}
        return {
            "test_loss": loss,
            "test_accuracy": correct / count,
            "perplexity": math.exp(min(loss, 50.0)),
            **{f"test_{k}": v for k, v in pooled.items()},
            "per_client": per_client,
            "tokens": int(count),
            "bytes_down": sum(m.nbytes for m in msgs.values()),
            **({"dropped": refused} if refused else {}),
        }
