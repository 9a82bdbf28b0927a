"""The client side of the message protocol: dispatch on the message type.

Each handler is a plain function of (message, local state). The local state is the
client's own tokenised data and a model to train in; nothing else leaves the client but
the reply.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from fedgpt.client.trainer import ClientData, Failure, local_update
from fedgpt.config import ClientConfig, PrivacyConfig
from fedgpt.messages import Message
from fedgpt.models.params import FlatModel
from fedgpt.tasks import CausalLM, Task


class ClientApp:
    """Handles ``train`` and ``evaluate`` messages for the clients whose data it holds."""

    def __init__(
        self,
        fm: FlatModel,
        data: Mapping[str, ClientData],
        cfg: ClientConfig,
        privacy: PrivacyConfig | None = None,
        local_noise_multiplier: float = 0.0,
        task: Task | None = None,
    ):
        self.task = task if task is not None else CausalLM()
        self.fm = fm
        self.data = data
        self.cfg = cfg
        self.privacy = privacy if privacy is not None and privacy.mode != "none" else None
        self.local_z = local_noise_multiplier
        self.releases: dict[str, int] = {}  # local DP: updates each client has released
        self.dp_steps: dict[str, list[tuple[float, float]]] = {}  # DP-SGD: (z, q) per step
        self.secagg_state: dict = {}  # SecAgg: each client's secrets of the current round
        self.opt_memory: dict[str, dict] = {}  # per client, stays on the client

    def state_dict(self) -> dict[str, bytes]:
        """What these clients must remember between messages, as opaque bytes (a runtime
        persists it without knowing what it holds; federation.client_state)."""
        from fedgpt.federation.client_state import dump_client_state

        return dump_client_state(self)

    def load_state_dict(self, saved: dict[str, bytes]) -> None:
        from fedgpt.federation.client_state import load_client_state

        load_client_state(self, saved)

    ckks = None  # a CkksClient when this client holds the CKKS secret context
    fedmd = None  # a FedMDClient (federation.distill = "fedmd"): the clients' own models

    def __call__(self, client_id: str, msg: Message) -> Message:
        if msg.type == "train":
            reply = self.train(client_id, msg)
            if msg.config.get("secure_aggregation") == "ckks" and reply.type == "train/result":
                reply = self._encrypt(reply)
            if "nonce" in msg.config:  # echoed, so the server can refuse replayed replies
                config = {**reply.config, "nonce": msg.config["nonce"]}
                reply = Message(reply.type, config, reply.tensors, reply.blobs)
            return reply
        if msg.type == "evaluate":
            return self.evaluate(client_id, msg)
        if msg.type == "fedmd/train":
            d = self.data[client_id]
            return self.fedmd(client_id, msg, d.train, d.test)
        if msg.type == "ckks/decrypt":
            return self._decrypt(msg)
        if msg.type.startswith("secagg/"):
            return self._secagg(client_id, msg)
        raise ValueError(f"unknown message type {msg.type!r}")

    def _secagg(self, cid: str, msg: Message) -> Message:
        """The four SecAgg steps; the per-round secrets stay in ``self.secagg_state``."""
        from fedgpt.privacy.secagg import client as sa
        from fedgpt.privacy.secagg.quantize import encode

        c, rnd = msg.config, int(msg.config["round"])
        if msg.type == "secagg/train":
            reply = self.train(
                cid, Message("train", {"round": rnd, "seed": c["seed"]}, msg.tensors)
            )
            if reply.type != "train/result":
                return reply
            n = reply.config["num_examples"]
            w = min(n, c["weight_cap"]) / c["weight_cap"]
            x = encode(reply.tensors["delta"], w, c["range"], c["bits"])
            st = self.secagg_state[cid] = sa.advertise(rnd, x, bool(c.get("post_quantum")))
            return sa.keys_message(st, n, reply.config["metrics"])
        return sa.handle(self.secagg_state, cid, msg)

    def _encrypt(self, reply: Message) -> Message:
        """Replace the plaintext delta by the CKKS ciphertexts of n_k·Δ_k (the weight rides
        inside, so the server only adds)."""
        if self.ckks is None:
            return Message(
                "train/failure",
                {"round": reply.config["round"], "reason": "client holds no CKKS secret context"},
            )
        chunks = self.ckks.encrypt(reply.tensors["delta"] * reply.config["num_examples"])
        return Message(reply.type, reply.config, {}, {"delta_ckks": chunks})

    def _decrypt(self, msg: Message) -> Message:
        agg = self.ckks.decrypt(msg.blobs["aggregate"], int(msg.config["numel"]))
        return Message("ckks/aggregate", {"round": msg.config["round"]}, {"aggregate": agg})

    malicious: frozenset[str] = frozenset()  # attack simulation: clients that poison
    tiers: dict = {}  # device tiers: client -> (tier, trainable per parameter, flat mask)
    attack = None  # an AttackConfig when some clients are malicious

    def train(self, client_id: str, msg: Message) -> Message:
        reply = self._train(client_id, msg)
        if client_id in self.malicious and reply.type == "train/result":
            from fedgpt.client.attack import poison

            gen = torch.Generator().manual_seed(int(msg.config["seed"]) ^ 0xBAD)
            bad = poison(reply.tensors["delta"], self.attack.kind, self.attack.scale, gen)
            return Message(reply.type, reply.config, {"delta": bad}, reply.blobs)
        return reply

    def _train(self, client_id: str, msg: Message) -> Message:
        gen = torch.Generator().manual_seed(int(msg.config["seed"]))
        rnd = int(msg.config["round"])
        if self.privacy is not None and self.privacy.mode == "dp_sgd":
            return self._train_dp_sgd(client_id, rnd, msg, gen)
        local_dp = self.privacy is not None and self.privacy.mode == "local_dp"
        if local_dp and self._budget_spent(client_id):
            return Message("train/failure", {"round": rnd, "reason": "privacy budget exhausted"})
        tier = self.tiers.get(client_id)
        memory = (
            self.opt_memory.setdefault(client_id, {}) if self.cfg.keep_optimizer_state else None
        )
        weights = msg.tensors["weights"]
        if tier and tier[0].startswith("lora:"):  # HetLoRA: rank components >= r are zero here
            weights = torch.where(tier[2], weights, torch.zeros((), dtype=weights.dtype))
        result = local_update(
            self.fm,
            weights,
            self.data[client_id].train,
            self.cfg,
            gen,
            client_id,
            rnd,
            opt_memory=memory,
            trainable=tier[1] if tier else None,
            task=self.task,
        )
        if isinstance(result, Failure):
            return Message("train/failure", {"round": rnd, "reason": result.reason})
        if local_dp:
            return self._release_private(client_id, rnd, result.delta, result.metrics, gen)
        config = {"round": rnd, "num_examples": result.num_examples, "metrics": result.metrics}
        if tier:  # only the trained slice travels
            return Message(
                "train/result", {**config, "tier": tier[0]}, {"delta": result.delta[tier[2]]}
            )
        return Message("train/result", config, {"delta": result.delta})

    def _train_dp_sgd(self, client_id: str, rnd: int, msg: Message, gen) -> Message:
        """Record-level DP-SGD; the client accounts (and enforces) its own epsilon."""
        from fedgpt.privacy.accountant import Accountant
        from fedgpt.privacy.dp_sgd import dp_sgd_update, record_windows, sample_rate

        p, tokens = self.privacy, self.data[client_id].train
        n = record_windows(tokens, self.cfg.seq_len).shape[0]
        planned = [(p.noise_multiplier, sample_rate(n, self.cfg.batch_size))] * self.cfg.local_steps
        acc = Accountant(p.delta, p.accountant, list(self.dp_steps.get(client_id, [])))
        if p.target_epsilon and Accountant(
            p.delta, p.accountant, acc.history + planned
        ).epsilon() > (p.target_epsilon):
            return Message("train/failure", {"round": rnd, "reason": "privacy budget exhausted"})
        result, q = dp_sgd_update(
            self.fm, msg.tensors["weights"], tokens, self.cfg, p, gen, client_id, rnd
        )
        if isinstance(result, Failure):
            return Message("train/failure", {"round": rnd, "reason": result.reason})
        acc.history += [(p.noise_multiplier, q)] * self.cfg.local_steps
        self.dp_steps[client_id] = acc.history
        metrics = {**result.metrics, "epsilon": acc.epsilon()}
        return Message(
            "train/result",
            {"round": rnd, "num_examples": result.num_examples, "metrics": metrics},
            {"delta": result.delta},
        )

    def _budget_spent(self, client_id: str) -> bool:
        from fedgpt.privacy.engine import local_epsilon

        p = self.privacy
        if p.target_epsilon == 0:
            return False
        nxt = self.releases.get(client_id, 0) + 1
        return local_epsilon(self.local_z, nxt, p.delta, p.accountant) > p.target_epsilon

    def _release_private(self, client_id, rnd, delta, metrics, gen) -> Message:
        """Local DP: clip and noise the update here; send neither n_k nor loss/norm (they
        are data-dependent): equal weights, timing metrics only."""
        from fedgpt.privacy.local_dp import privatize

        noise_gen = gen if self.privacy.reproducible_noise else None
        noisy = privatize(delta, self.privacy.clip_norm, self.local_z, noise_gen)
        self.releases[client_id] = self.releases.get(client_id, 0) + 1
        kept = {k: metrics[k] for k in ("steps", "seconds")}
        return Message(
            "train/result", {"round": rnd, "num_examples": 1, "metrics": kept}, {"delta": noisy}
        )

    def evaluate(self, client_id: str, msg: Message) -> Message:
        self.fm.load(msg.tensors["weights"])
        loss_sum, correct, count = self.task.metric_sums(
            self.fm.model,
            self.data[client_id].test,
            int(msg.config.get("seq_len", self.cfg.seq_len)),
            int(msg.config.get("max_tokens", 0)),
        )
        return Message(
            "evaluate/result",
            {
                "round": msg.config.get("round", 0),
                "loss_sum": loss_sum,
                "correct": correct,
                "count": count,
            },
        )
