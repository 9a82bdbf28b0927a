"""The round loop: sample → broadcast → collect and validate → aggregate → server step
→ evaluate. It knows nothing of how messages travel (that is the runtime's job) nor of
files (the caller checkpoints and logs the :class:`RoundResult`).
"""

from __future__ import annotations

import math
import secrets
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from fedgpt.aggregation import coverage_average, dissimilarity, make_server_optimizer
from fedgpt.aggregation.attention import PREFIX as ATT_PREFIX
from fedgpt.aggregation.attention import client_meta, fit_attention, init_mlp
from fedgpt.aggregation.fedatt import fedatt
from fedgpt.aggregation.robust import robust_aggregate
from fedgpt.client.app import client_seed
from fedgpt.config import RunConfig
from fedgpt.federation.sampling import sample_clients
from fedgpt.federation.schemas import Expect, check_reply, nbytes, parse_reply
from fedgpt.federation.validation import (  # noqa: F401  (validate_reply: public here too)
    max_update_bytes,
    undecodable,
    validate_reply,
)
from fedgpt.privacy.ckks import CiphertextError, CkksServer, num_chunks
from fedgpt.privacy.engine import ServerPrivacy
from fedgpt.runtime.base import Runtime
from fedgpt.runtime.messages import Failure, Message, Reply


def _extras(opt_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Server-state entries that are not the server optimiser's (learned attention θ,
    FedMD consensus); they ride along in the checkpoint."""
    return {k: v for k, v in opt_state.items() if k.startswith((ATT_PREFIX, "fedmd."))}


@dataclass
class ServerState:
    """Everything the server carries from one round to the next."""

    round: int
    weights: torch.Tensor
    opt_state: dict[str, torch.Tensor]


@dataclass
class RoundResult:
    round: int
    participants: list[str]
    dropped: list[dict[str, str]]
    train_loss: float | None
    bytes_up: int
    bytes_down: int
    seconds: float
    client_seconds: float
    update_norm_mean: float | None
    eval: dict | None = None
    privacy: dict | None = None
    eval_seconds: float = 0.0
    client_metrics: dict[str, dict] = field(default_factory=dict)
    heterogeneity: dict[str, dict] = field(default_factory=dict)
    attention: dict[str, float] = field(default_factory=dict)  # FedAtt: mean α per client
    update_hashes: dict[str, str] = field(default_factory=dict)  # SHA-256 of payloads received
    below_quorum: str | None = None  # set when too few valid updates: nothing was aggregated

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
        }


class FederatedServer:
    """Runs rounds of federated training over a :class:`Runtime`."""

    def __init__(
        self,
        cfg: RunConfig,
        runtime: Runtime,
        client_ids: Sequence[str],
        privacy: ServerPrivacy | None = None,
    ):
        self.cfg = cfg
        self.privacy = privacy
        self.ckks: CkksServer | None = None  # set to aggregate CKKS ciphertexts
        self.tier_masks: dict[str, torch.Tensor] = {}  # device tier -> flat mask
        self.layer_ids: torch.Tensor | None = None  # FedAtt: each element's layer
        # FedDF: (aggregate, w_t, deltas, round) -> distilled weights (federation.distill)
        self.distill_step: Callable[..., torch.Tensor] | None = None
        self.attention_val: torch.Tensor | None = None  # attention: public validation windows
        self.fm = None  # the server's FlatModel (attention fusion, FedMD digest)
        self.public: torch.Tensor | None = None  # public tokens (FedMD)
        self.vocab_size = 0  # FedMD: logits' last dimension
        # hybrid aggregation: (w, round) -> w + λ Δ_public (see federation.hybrid)
        self.public_step: Callable[[torch.Tensor, int], torch.Tensor] | None = None
        self.runtime = runtime
        self.client_ids = list(client_ids)
        f = cfg.federation
        self.opt = make_server_optimizer(
            f.server_optimizer, f.server_lr, f.server_momentum, f.beta1, f.beta2, f.tau
        )
        self.on_round_start: Callable[[int, list[str]], None] | None = None
        self.on_reply: Callable[[str, Reply], None] | None = None
        self.on_eval_start: Callable[[int, int], None] | None = None
        self.update_hashes: dict[str, str] = {}  # this round's received payloads (ledger)

    def init_state(self, weights: torch.Tensor) -> ServerState:
        return ServerState(round=0, weights=weights.clone(), opt_state=self.opt.init(weights))

    def run_round(self, state: ServerState) -> tuple[ServerState, RoundResult]:
        start = time.perf_counter()
        self.update_hashes = {}
        rnd = state.round + 1
        f, seed = self.cfg.federation, self.cfg.seed
        chosen = sample_clients(self.client_ids, rnd, seed, f.fraction, f.min_clients)
        if self.on_round_start:
            self.on_round_start(rnd, chosen)
        weights = state.weights
        if self.cfg.privacy.secure_aggregation == "secagg":
            return self._secagg_round(state, chosen, start)
        if self.cfg.federation.distill == "fedmd":
            return self._fedmd_round(state, chosen, start)
        train_cfg = {"round": rnd}
        if self.ckks is not None:
            train_cfg["secure_aggregation"] = "ckks"
        nonces = {cid: secrets.token_hex(16) for cid in chosen}  # echoed: replays are refused
        msgs = {
            cid: Message(
                "train",
                {**train_cfg, "seed": client_seed(seed, rnd, cid), "nonce": nonces[cid]},
                {"weights": weights},
            )
            for cid in chosen
        }
        t0 = time.perf_counter()
        replies, received, dropped = self._receive(msgs)
        client_seconds = time.perf_counter() - t0
        chunks = num_chunks(weights.numel()) if self.ckks is not None else 0
        good: dict[str, Message] = {}
        for cid in chosen:
            reply = received.get(cid, Failure("no reply"))
            reason = validate_reply(
                reply,
                rnd,
                weights.numel(),
                chunks,
                {t: int(m.sum()) for t, m in self.tier_masks.items()},
                nonce=nonces[cid],
                max_norm=0.0 if chunks else self.cfg.federation.max_update_norm,
                max_bytes=max_update_bytes(weights.numel(), chunks),
            )
            if reason is None:
                good[cid] = reply
            else:
                dropped.append({"client": cid, "reason": reason})
        quorum = self.cfg.runtime.min_replies
        if quorum and len(good) < quorum:
            return state, self._no_quorum(
                rnd, f"{len(good)} valid updates, quorum {quorum}", dropped, start, client_seconds
            )
        extra_up = extra_down = 0
        avg = deltas = None
        attention: dict[str, float] = {}
        attn_state: dict[str, torch.Tensor] = {}
        tiered = any("tier" in m.config for m in good.values())
        if good and self.ckks is not None:
            avg, extra_down, extra_up = self._ckks_aggregate(good, dropped, rnd, weights.numel())
        elif good and self.cfg.federation.aggregator == "attention":
            if tiered:
                deltas, masks = self._expand_tiers(good, weights.numel())
                coverage = masks.float().mean(1).tolist()
            else:
                deltas, coverage = torch.stack([m.tensors["delta"] for m in good.values()]), None
            avg, alpha, attn_state = self._learned_attention(state, good, deltas, coverage)
            attention = {cid: float(a) for cid, a in zip(good, alpha, strict=True)}
        elif good and tiered:
            deltas, masks = self._expand_tiers(good, weights.numel())
            n = torch.tensor([m.config["num_examples"] for m in good.values()], dtype=torch.float64)
            avg = coverage_average(deltas, masks, n)
        elif good:
            deltas = torch.stack([m.tensors["delta"] for m in good.values()])
            n = torch.tensor([m.config["num_examples"] for m in good.values()], dtype=torch.float64)
            if self.privacy is not None and self.privacy.central is not None:
                avg, _ = self.privacy.aggregate(deltas, n, self._noise_gen(rnd))
            elif self.cfg.federation.aggregator == "fedatt":
                avg, alpha = fedatt(
                    deltas,
                    self.layer_ids,
                    int(self.layer_ids[-1]) + 1,
                    self.cfg.federation.fedatt_step,
                )
                attention = {cid: float(a) for cid, a in zip(good, alpha.mean(1), strict=True)}
            else:
                f = self.cfg.federation
                avg = robust_aggregate(
                    f.aggregator,
                    deltas,
                    n,
                    trim=f.trim_fraction,
                    byzantine=f.krum_byzantine,
                    multi_krum_m=f.multi_krum_m,
                    bound=f.norm_bound,
                    bucket=f.bucket_size,
                    gen=torch.Generator().manual_seed(client_seed(seed, rnd, "__bucket__")),
                )
        heterogeneity: dict[str, dict] = {}
        private = self.privacy is not None and self.privacy.active
        if deltas is not None and avg is not None and not private:  # DP runs log no per-client data
            rel, cos = dissimilarity(deltas, avg)
            heterogeneity = {
                cid: {"rel": round(float(r), 5), "cos": round(float(c), 5)}
                for cid, r, c in zip(good, rel, cos, strict=True)
            }
        participants = [cid for cid in chosen if cid in good]
        new_state = ServerState(rnd, weights, state.opt_state)
        train_loss = norm_mean = None
        if avg is not None:
            new_w, new_opt = self.opt.apply(state.opt_state, weights, avg)
            if self.public_step is not None:
                new_w = self.public_step(new_w, rnd)
            if self.distill_step is not None and deltas is not None:
                new_w = self.distill_step(new_w, weights, deltas, rnd)
            new_state = ServerState(rnd, new_w, {**_extras(state.opt_state), **new_opt})
            new_state.opt_state.update(attn_state)
            n = torch.tensor([m.config["num_examples"] for m in good.values()], dtype=torch.float64)
            metrics = [m.config.get("metrics", {}) for m in good.values()]
            if all("train_loss" in x for x in metrics):
                losses = torch.tensor([x["train_loss"] for x in metrics], dtype=torch.float64)
                train_loss = float((losses * n).sum() / n.sum())
            if all("update_norm" in x for x in metrics):
                norm_mean = float(torch.tensor([x["update_norm"] for x in metrics]).mean())
        else:
            participants = []
        result = RoundResult(
            round=rnd,
            participants=participants,
            dropped=dropped,
            train_loss=train_loss,
            bytes_up=sum(r.nbytes for r in replies.values() if isinstance(r, Message)) + extra_up,
            bytes_down=sum(m.nbytes for m in msgs.values()) + extra_down,
            seconds=0.0,
            client_seconds=client_seconds,
            update_norm_mean=norm_mean,
            client_metrics={cid: good[cid].config.get("metrics", {}) for cid in participants},
            heterogeneity=heterogeneity,
            attention=attention,
        )
        return self._finish_round(new_state, result, start)

    def _finish_round(
        self, new_state: ServerState, result: RoundResult, start: float
    ) -> tuple[ServerState, RoundResult]:
        f, rnd = self.cfg.federation, result.round
        participants = result.participants
        result.update_hashes = dict(self.update_hashes)
        if self.privacy is not None and self.privacy.active:
            result.privacy = self.privacy.after_round(participants, result.client_metrics)
        if rnd % f.eval_every == 0 or rnd == f.rounds:
            t1 = time.perf_counter()
            result.eval = self.evaluate(new_state.weights, rnd)
            result.eval_seconds = time.perf_counter() - t1
        result.seconds = time.perf_counter() - start
        return new_state, result

    def _receive(
        self, msgs: dict[str, Message]
    ) -> tuple[dict[str, Reply], dict[str, Reply], list[dict[str, str]]]:
        """Send ``msgs`` and collect the replies: (as the runtime returned them, one usable
        reply per addressed client, drops). Every arrival is seen through ``on_reply``, so a
        sender that was not addressed is dropped, and one that replied twice is refused
        (which reply is genuine is unknown). The SHA-256 of every update payload, as it
        arrived, goes to ``self.update_hashes`` (for the ledger)."""
        arrivals: list[tuple[str, Reply]] = []

        def record(cid: str, reply: Reply) -> None:
            arrivals.append((cid, reply))
            if self.on_reply:
                self.on_reply(cid, reply)

        replies = self.runtime.send_and_receive(msgs, on_reply=record)
        self._hash_updates(replies)
        for cid, r in replies.items():
            if (why := undecodable(r)) is not None:
                replies[cid] = Failure(why)
        counts = Counter(cid for cid, _ in arrivals)
        for cid in replies:  # a runtime that does not report every arrival
            counts[cid] = max(counts[cid], 1)
        received: dict[str, Reply] = {}
        dropped: list[dict[str, str]] = []
        for cid, count in counts.items():
            if cid not in msgs:
                dropped.append({"client": cid, "reason": "reply from a client not addressed"})
            elif count > 1:
                received[cid] = Failure(f"duplicate sender: {count} replies to one message")
            elif cid in replies:
                received[cid] = replies[cid]
        return replies, received, dropped

    def _hash_updates(self, replies: dict[str, Reply], kind: str = "train/result") -> None:
        from fedgpt.federation.ledger import payload_hash

        for cid, r in replies.items():
            if isinstance(r, Message) and r.type == kind:
                self.update_hashes[cid] = payload_hash(r)

    def _no_quorum(
        self, rnd: int, why: str, dropped: list[dict[str, str]], start: float, client_s: float
    ) -> RoundResult:
        """A round that aggregated nothing for lack of quorum (``runtime.min_replies``)."""
        return RoundResult(
            round=rnd,
            participants=[],
            dropped=dropped,
            train_loss=None,
            bytes_up=0,
            bytes_down=0,
            seconds=time.perf_counter() - start,
            client_seconds=client_s,
            update_norm_mean=None,
            update_hashes=dict(self.update_hashes),
            below_quorum=why,
        )

    def _secagg_round(self, state: ServerState, chosen: list[str], start: float):
        """A round whose updates arrive pairwise-masked; only their sum is recovered."""
        from fedgpt.privacy.secagg.quantize import bits_for
        from fedgpt.privacy.secagg.server import run_round as secagg

        rnd, p, weights = state.round + 1, self.cfg.privacy, state.weights
        t0 = time.perf_counter()
        out = secagg(
            self.runtime,
            chosen,
            rnd,
            {c: client_seed(self.cfg.seed, rnd, c) for c in chosen},
            weights,
            weights.numel(),
            value_range=p.secagg_range,
            bits=bits_for(len(chosen)),
            weight_cap=p.secagg_weight_cap,
            threshold_fraction=p.secagg_threshold,
            k=p.secagg_neighbours,
            graph_seed=self.cfg.seed,
            post_quantum=p.post_quantum,
            on_reply=self._secagg_arrival,
        )
        client_seconds = time.perf_counter() - t0
        quorum = self.cfg.runtime.min_replies
        if quorum and (out.failure is not None or len(out.survivors) < quorum):
            why = out.failure or f"{len(out.survivors)} SecAgg survivors, quorum {quorum}"
            return state, self._no_quorum(rnd, why, list(out.dropped), start, client_seconds)
        new_state = ServerState(rnd, weights, state.opt_state)
        dropped = list(out.dropped)
        if out.failure is not None:
            dropped.append({"client": "*", "reason": f"round failed: {out.failure}"})
        train_loss = None
        if out.weighted_sum is not None and out.weight > 0:
            avg = out.weighted_sum / out.weight
            new_w, new_opt = self.opt.apply(state.opt_state, weights, avg)
            if self.public_step is not None:
                new_w = self.public_step(new_w, rnd)
            new_state = ServerState(rnd, new_w, {**_extras(state.opt_state), **new_opt})
            losses = [m["train_loss"] for m in out.metrics.values() if "train_loss" in m]
            train_loss = sum(losses) / len(losses) if losses else None
        result = RoundResult(
            round=rnd,
            participants=out.survivors if out.failure is None else [],
            dropped=dropped,
            train_loss=train_loss,
            bytes_up=out.bytes_up,
            bytes_down=out.bytes_down,
            seconds=0.0,
            client_seconds=client_seconds,
            update_norm_mean=None,
            client_metrics=out.metrics if out.failure is None else {},
        )
        return self._finish_round(new_state, result, start)

    def _fedmd_round(self, state: ServerState, chosen: list[str], start: float):
        from fedgpt.federation.fedmd import fedmd_round

        return fedmd_round(self, state, chosen, start)

    def _learned_attention(self, state, good, deltas, coverage):
        """α = softmax(MLP(meta)) with the MLP trained on the public validation objective
        (aggregation.attention); returns (Σ α_k Δ_k, α, θ to keep in the server state)."""
        f = self.cfg.federation
        theta = {k: v for k, v in state.opt_state.items() if k.startswith(ATT_PREFIX)}
        if not theta:
            gen = torch.Generator().manual_seed(client_seed(self.cfg.seed, 0, "__attention__"))
            theta = init_mlp(f.attention_hidden, gen)
        configs = [m.config for m in good.values()]
        meta = client_meta(configs, coverage or [1.0] * len(configs))
        alpha, theta, _ = fit_attention(
            self.fm, theta, meta, state.weights, deltas, self.attention_val,
            f.attention_steps, f.attention_lr,
        )  # fmt: skip
        return alpha.to(deltas.dtype) @ deltas, alpha, theta

    def _secagg_arrival(self, cid: str, reply: Reply) -> None:
        """SecAgg replies as they arrive: the masked inputs are the updates hashed."""
        self._hash_updates({cid: reply}, "secagg/masked_input")
        if self.on_reply:
            self.on_reply(cid, reply)

    def _expand_tiers(self, good: dict[str, Message], numel: int):
        """Full-length deltas (zeros outside each client's slice) and coverage masks."""
        masks = torch.stack(
            [
                self.tier_masks[m.config["tier"]]
                if "tier" in m.config
                else torch.ones(numel, dtype=torch.bool)
                for m in good.values()
            ]
        )
        deltas = torch.zeros(masks.shape, dtype=torch.float32)
        deltas[masks] = torch.cat([m.tensors["delta"] for m in good.values()])
        return deltas, masks

    def _ckks_aggregate(
        self, good: dict[str, Message], dropped: list[dict[str, str]], rnd: int, numel: int
    ) -> tuple[torch.Tensor | None, int, int]:
        """Sum of the ciphertexts of n_k·Δ_k, decrypted by one key-holding participant, then
        divided by Σ n_k.

        An unreadable ciphertext drops its sender (reason logged) and the sum is redone
        without it. Returns (aggregate or None, bytes down, bytes up) of the extra exchange.
        """
        while good:
            ids = list(good)
            total = float(sum(good[c].config["num_examples"] for c in ids))
            try:
                agg = self.ckks.sum([good[c].blobs["delta_ckks"] for c in ids])
                break
            except CiphertextError as exc:
                bad = ids[exc.index]
                dropped.append({"client": bad, "reason": f"CKKS: {exc}"})
                del good[bad]
        else:
            return None, 0, 0
        down = up = 0
        for cid in list(good):  # the first participant able to decrypt does it
            msg = Message("ckks/decrypt", {"round": rnd, "numel": numel}, {}, {"aggregate": agg})
            reply = self.runtime.send_and_receive({cid: msg}).get(cid, Failure("no reply"))
            down += msg.nbytes
            up += nbytes(reply)
            if check_reply(reply, Expect("ckks/aggregate", rnd, numel)) is None:
                return reply.tensors["aggregate"] / total, down, up
        return None, down, up

    def _noise_gen(self, rnd: int) -> torch.Generator | None:
        """Seeded DP noise only when ``privacy.reproducible_noise``; else the OS CSPRNG."""
        if not self.cfg.privacy.reproducible_noise:
            return None
        return torch.Generator().manual_seed(client_seed(self.cfg.seed, rnd, "__dp_noise__"))

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
        msgs = {cid: Message("evaluate", cfg, {"weights": weights}) for cid in ids}
        replies = self.runtime.send_and_receive(msgs, on_reply=self.on_reply)
        per_client: dict[str, dict] = {}
        loss_sum = correct = count = 0.0
        refused: list[dict[str, str]] = []  # malformed replies: skipped, with their reason
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
        return {
            "test_loss": loss,
            "test_accuracy": correct / count,
            "perplexity": math.exp(min(loss, 50.0)),
            "per_client": per_client,
            "tokens": int(count),
            "bytes_down": sum(m.nbytes for m in msgs.values()),
            **({"dropped": refused} if refused else {}),
        }
