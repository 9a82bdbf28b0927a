"""The client side of the message protocol: dispatch on the message type.

A :class:`ClientApp` holds the clients' own data inside a
:class:`~fedgpt.client.algorithm.ClientAlgorithm` (training and its client steps), the
client sides of the secure sums (:mod:`fedgpt.federation.secure_sum_client`) and, under
FedMD, the clients' own models. Nothing leaves a client but its replies; what it must
remember between messages is :meth:`ClientApp.state_dict`, opaque bytes that any runtime
can persist (the Flower runtime keeps them in the node's ``context.state``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

from fedgpt.client.algorithm import (
    ClientAlgorithm,
    ClientStep,
    LocalTraining,
    charge_unseen,
    restore,
    state_of,
)
from fedgpt.client.trainer import ClientData, Failure
from fedgpt.config import ClientConfig, PrivacyConfig
from fedgpt.federation.ledger import payload_hash
from fedgpt.federation.receipts import RECEIPT, ReceiptBook
from fedgpt.federation.secure_sum_client import SecAggClient, SecureSumClient
from fedgpt.messages import Message, widened
from fedgpt.models.params import FlatModel
from fedgpt.tasks import CausalLM, Task


def client_algorithm(
    fm: FlatModel,
    data: Mapping[str, ClientData],
    cfg: ClientConfig,
    privacy: PrivacyConfig | None = None,
    noise_multiplier: float = 0.0,
    task: Task | None = None,
    before: Sequence[ClientStep] = (),
    after: Sequence[ClientStep] = (),
) -> ClientAlgorithm:
    """The client algorithm of a run: the privacy mechanism's training (DP-SGD) or plain
    local training, and the steps ``before`` (e.g. a device tier's slice), then the
    mechanism's own (local DP), then ``after`` (e.g. attack simulation), then the
    update's compression (``client.compression``)."""
    from fedgpt.privacy.mechanism import mechanism_for

    mech = mechanism_for(privacy)
    training = mech.client_training(cfg, privacy) or LocalTraining(cfg)
    steps = [*before, *mech.client_steps(privacy, noise_multiplier), *after]
    if cfg.compression != "none":  # last: what is released is what gets compressed
        from fedgpt.client.compress import Compress

        steps.append(Compress(cfg.compression, cfg.qsgd_bucket, cfg.topk_fraction))
    return ClientAlgorithm(fm, data, task if task is not None else CausalLM(), training, steps)


SENT = "receipts.sent"  # state_dict key: the hash of each client's last update
UPDATE_TYPES = ("train/result", "secagg/masked_input", "fedmd/logits")


class ClientApp:
    """Answers ``train``, ``evaluate``, the secure sums' messages and ``fedmd/train`` for
    the clients whose data it holds."""

    def __init__(
        self,
        algorithm: ClientAlgorithm,
        cfg: ClientConfig,
        secure: Sequence[SecureSumClient] = (),
        fedmd=None,
        receipts: ReceiptBook | None = None,
    ):
        self.algorithm, self.cfg, self.fedmd = algorithm, cfg, fedmd
        self.receipts = receipts  # where these clients keep the server's receipts
        self.sent: dict[str, list] = {}  # client -> [round, hash of the update it sent]
        self.secure: dict[str, SecureSumClient] = {"secagg": SecAggClient()}
        self.secure.update({s.name: s for s in secure})

    @classmethod
    def build(cls, fm, data, cfg: ClientConfig, privacy=None, noise_multiplier=0.0, **kw):
        """A ClientApp from its parts (``task``, ``before``, ``after`` as in
        :func:`client_algorithm`; ``secure``, ``fedmd`` as in the constructor)."""
        parts = {k: kw.pop(k) for k in ("task", "before", "after") if k in kw}
        algo = client_algorithm(fm, data, cfg, privacy, noise_multiplier, **parts)
        return cls(algo, cfg, **kw)

    @property
    def data(self) -> Mapping[str, ClientData]:
        return self.algorithm.data

    def parts(self) -> list:
        return [self.algorithm, *self.secure.values(), *([self.fedmd] if self.fedmd else [])]

    def state_dict(self) -> dict[str, bytes]:
        """What these clients must remember between messages, as opaque bytes."""
        return {**state_of(self.parts()), SENT: json.dumps(self.sent).encode()}

    def load_state_dict(self, saved: Mapping[str, bytes]) -> None:
        saved = dict(saved)
        self.sent = json.loads(saved.pop(SENT, b"{}"))
        restore(self.parts(), saved)

    def charge_unseen(self, newer: Mapping[str, bytes]) -> None:
        """Count, against the clients' budgets, what they released after the restored
        state (``newer``: their state in a round the resumed run redoes)."""
        charge_unseen(self.parts(), newer)

    def __call__(self, client_id: str, msg: Message) -> Message:
        reply = self._answer(client_id, msg)
        if reply.type in UPDATE_TYPES:  # what the server's ledger will hash as "update"
            self.sent[client_id] = [msg.config.get("round"), payload_hash(reply)]
        return reply

    def _answer(self, client_id: str, msg: Message) -> Message:
        msg = widened(msg)
        if msg.type == RECEIPT:
            return self._receipt(client_id, msg)
        if msg.type == "train":
            reply = self.train(client_id, msg)
            if (kind := msg.config.get("secure_aggregation")) and reply.type == "train/result":
                reply = self._encode(kind, client_id, reply)
            if "nonce" in msg.config:  # echoed, so the server can refuse replayed replies
                config = {**reply.config, "nonce": msg.config["nonce"]}
                reply = Message(reply.type, config, reply.tensors, reply.blobs)
            return reply
        if msg.type == "evaluate":
            return self.evaluate(client_id, msg)
        if msg.type == "fedmd/train":
            d = self.data[client_id]
            return self.fedmd(client_id, msg, d.train, d.test)
        for side in self.secure.values():
            if msg.type.startswith(side.prefix):
                return side.handle(client_id, msg, self.train)
        raise ValueError(f"unknown message type {msg.type!r}")

    def _receipt(self, client_id: str, msg: Message) -> Message:
        if self.receipts is None:
            return Message("ledger/receipt/result", {"kept": False, "problem": "no receipt book"})
        raw = (msg.blobs.get("receipt") or [b""])[0]
        rnd, sent = self.sent.get(client_id, [None, None])
        return self.receipts.keep(client_id, raw, sent if rnd == msg.config.get("round") else None)

    def _encode(self, kind: str, client_id: str, reply: Message) -> Message:
        side = self.secure.get(kind)
        if side is None:
            reason = f"client holds no {kind.upper()} secret context"
            return Message("train/failure", {"round": reply.config["round"], "reason": reason})
        return side.encode(client_id, reply)

    def train(self, client_id: str, msg: Message) -> Message:
        rnd = int(msg.config["round"])
        result = self.algorithm.train(
            client_id, rnd, int(msg.config["seed"]), msg.tensors["weights"]
        )
        if isinstance(result, Failure):
            return Message("train/failure", {"round": rnd, "reason": result.reason})
        config = {"round": rnd, "num_examples": result.num_examples, "metrics": result.metrics}
        tensors = result.payload if result.payload is not None else {"delta": result.delta}
        return Message("train/result", {**config, **result.extra}, tensors)

    def evaluate(self, client_id: str, msg: Message) -> Message:
        fm, task = self.algorithm.fm, self.algorithm.task
        fm.load(msg.tensors["weights"])
        loss_sum, correct, count, extra = task.evaluate(
            fm.model,
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
                **extra,
            },
        )
