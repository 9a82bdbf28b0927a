"""FedMD, logit-only federation (Li & Wang 2019, §2; see ``federation.distill``).

One message per round and client, ``fedmd/train``, carries the previous round's
consensus logits (and the seed of the public windows they were computed on) down; the
client

1. *digests*: distils its own model toward the consensus on those public windows,
2. *revisits*: trains its own model on its private text (``client.local_steps``),
3. *communicates*: replies with its logits on this round's public windows (and its own
   test metrics, as sums),

and keeps its model. The server averages the logits (*aggregate*, f̃ = (1/m) Σ_k f_k),
distils its own model toward f̃ (the run's global model, whose architecture may be larger
than the clients') and sends f̃ down next round (*distribute*). No parameter leaves a
client. The consensus and its seed ride in the server state (checkpointed); the clients'
models are client state (in a deployment each client persists its own).
"""

from __future__ import annotations

import time

import torch

from fedgpt.aggregation.base import ServerContext
from fedgpt.client.trainer import Failure as TrainFailure
from fedgpt.client.trainer import evaluate_tokens, local_update
from fedgpt.federation.distill import distill, logits_on, public_windows
from fedgpt.federation.exchange import Exchange
from fedgpt.federation.state import RoundResult, ServerState
from fedgpt.federation.strategy import STRATEGIES, FedAvgFamily, Strategy, below_quorum
from fedgpt.messages import Message
from fedgpt.models.params import FlatModel
from fedgpt.schemas import Expect, check_reply
from fedgpt.seeding import client_seed

SEED, CONS = "fedmd.seed", "fedmd.consensus"


class FedMDClient:
    """The client side: each client's own model (``fm``'s architecture) lives here."""

    def __init__(self, fm: FlatModel, init: torch.Tensor, public: torch.Tensor, cfg):
        self.fm, self.init, self.public, self.cfg = fm, init, public, cfg
        self.models: dict[str, torch.Tensor] = {}  # never sent

    def state_dict(self) -> dict[str, bytes]:
        from fedgpt.client.algorithm import save_tensors

        return {"fedmd": save_tensors(dict(self.models))}

    def load_state_dict(self, saved) -> None:
        from fedgpt.client.algorithm import load_tensors

        if "fedmd" in saved:
            self.models = load_tensors(saved["fedmd"])

    def __call__(self, cid: str, msg: Message, train: torch.Tensor, test: torch.Tensor):
        c, rnd = msg.config, int(msg.config["round"])
        gen = torch.Generator().manual_seed(int(c["seed"]))
        n, seq = int(c["windows"]), int(c["seq_len"])
        w = self.models.get(cid, self.init)
        start = time.perf_counter()
        if "consensus" in msg.tensors:  # digest
            inputs = public_windows(self.public, n, seq, int(c["consensus_seed"]))
            w = distill(
                self.fm, w, inputs, msg.tensors["consensus"], int(c["steps"]),
                self.cfg.batch_size, float(c["lr"]), float(c["temperature"]), gen,
            )  # fmt: skip
        up = local_update(self.fm, w, train, self.cfg, gen, cid, rnd)  # revisit
        if isinstance(up, TrainFailure):
            return Message("train/failure", {"round": rnd, "reason": up.reason})
        w = w + up.delta
        self.models[cid] = w
        logits = logits_on(self.fm, w, public_windows(self.public, n, seq, int(c["public_seed"])))
        loss_sum, correct, count = evaluate_tokens(
            self.fm.model, test, seq, int(c.get("max_tokens", 0))
        )
        metrics = {
            "train_loss": up.metrics["train_loss"],
            "steps": up.metrics["steps"],
            "seconds": time.perf_counter() - start,
            "own_loss_sum": loss_sum,
            "own_correct": correct,
            "own_count": count,
        }
        return Message(
            "fedmd/logits",
            {"round": rnd, "num_examples": up.num_examples, "metrics": metrics},
            {"logits": logits},
        )


@STRATEGIES.register("fedmd")
class FedMDStrategy(Strategy):
    """The server side of FedMD: consensus logits down, logits up, the server's model
    distils the new consensus (``ctx``: the server's model and public text)."""

    def __init__(self, cfg, ctx: ServerContext, quorum: int = 0):
        self.cfg, self.ctx, self.quorum = cfg, ctx, quorum

    def init(self, weights: torch.Tensor) -> ServerState:
        return ServerState(0, weights.clone(), {})

    def round(self, state, cohort, ex: Exchange):
        rnd = state.round + 1
        received = ex.send(self.messages(state, cohort, rnd), hash_type="fedmd/logits")
        f = self.cfg.federation
        shape = (f.distill_windows, self.cfg.client.seq_len, self.ctx.vocab_size)
        good = {}
        for cid in cohort:
            reason = validate_logits(received[cid], rnd, shape)
            if reason is None:
                good[cid] = received[cid]
            else:
                ex.drop(cid, reason)
        if self.quorum and len(good) < self.quorum:
            return state, below_quorum(
                rnd, f"{len(good)} valid logit replies, quorum {self.quorum}", ex
            )
        new_state = (
            self.aggregate(state, good, rnd)
            if good
            else ServerState(rnd, state.weights, state.opt_state)
        )
        result = RoundResult(rnd, list(good), ex.dropped)
        result.client_metrics = {cid: m.config.get("metrics", {}) for cid, m in good.items()}
        result.tally({cid: float(m.config.get("num_examples", 1)) for cid, m in good.items()})
        return new_state, FedAvgFamily._report(result, ex)

    def messages(self, state, chosen: list[str], rnd: int) -> dict[str, Message]:
        """The round's ``fedmd/train`` messages: no weights, only public-set logits."""
        cfg = self.cfg
        f = cfg.federation
        base = {
            "round": rnd,
            "windows": f.distill_windows,
            "seq_len": cfg.client.seq_len,
            "steps": f.distill_steps,
            "lr": f.distill_lr,
            "temperature": f.distill_temperature,
            "public_seed": client_seed(cfg.seed, rnd, "__fedmd__"),
            "max_tokens": f.eval_max_chars,
        }
        tensors = {}
        if CONS in state.opt_state:
            base["consensus_seed"] = int(state.opt_state[SEED])
            tensors = {"consensus": state.opt_state[CONS]}
        return {
            cid: Message("fedmd/train", {**base, "seed": client_seed(cfg.seed, rnd, cid)}, tensors)
            for cid in chosen
        }

    def aggregate(self, state, good: dict[str, Message], rnd: int) -> ServerState:
        """Consensus f̃ = mean of the clients' logits; the server's model digests it."""
        cfg, f = self.cfg, self.cfg.federation
        consensus = torch.stack([m.tensors["logits"] for m in good.values()]).mean(0)
        seed = client_seed(cfg.seed, rnd, "__fedmd__")
        inputs = public_windows(self.ctx.public, f.distill_windows, cfg.client.seq_len, seed)
        gen = torch.Generator().manual_seed(seed + 1)
        w = distill(
            self.ctx.fm, state.weights, inputs, consensus, f.distill_steps, cfg.client.batch_size,
            f.distill_lr, f.distill_temperature, gen,
        )  # fmt: skip
        opt = {**state.opt_state, CONS: consensus, SEED: torch.tensor(seed, dtype=torch.int64)}
        return ServerState(rnd, w, opt)


def validate_logits(reply, rnd: int, shape: tuple[int, ...]) -> str | None:
    """Why a FedMD reply cannot be used (fedgpt.schemas: config, metrics, float32
    finite logits of ``shape`` and nothing else), or ``None``."""
    return check_reply(reply, Expect("fedmd/logits", rnd, shape=shape))
