"""The ``ClientAlgorithm`` component: what a client does with a ``train`` message.

A client algorithm is one :class:`Training` (how the update is computed: plain local
training, or record-level DP-SGD) and a pipeline of :class:`ClientStep` s around it, each
small and independent (after fedjax's ``init``/``apply`` over explicit state, and Flower's
client "mods"):

    for step in steps:  reason = step.admit(client)           # refuse before any work
    weights = step.weights(client, weights)                   # e.g. HetLoRA's zero mask
    update  = training.run(weights, data, trainable=step.trainable(client), generator)
    for step in steps:  update = step.after(client, update, generator)   # in order

Built-in steps: the device tier's slice (:class:`~fedgpt.client.steps.TierSlice`),
local DP (:class:`~fedgpt.privacy.local_dp.LocalDPRelease`) and attack simulation
(:class:`~fedgpt.client.attack.Poison`); encoding for a secure sum (SecAgg's field
encoding, CKKS encryption) is the secure sum's client side
(:mod:`fedgpt.federation.secure_sum_client`). A privacy mechanism contributes its client
parts through ``PrivacyMechanism.client_training`` and ``client_steps``.

Every part keeps what it must remember between rounds (optimiser memory, DP-SGD's
accounting, local-DP release counts) in its own ``state_dict()``, as bytes, so any runtime
can persist a client's state without knowing what it holds.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch

from fedgpt.client.trainer import ClientData, Failure, Update, local_update
from fedgpt.config import ClientConfig
from fedgpt.models.params import FlatModel
from fedgpt.tasks import Task


@dataclass(frozen=True)
class ClientRound:
    """What a step knows of the round it runs in: the client, the round, the seed the
    server sent, and the client's generator for the round (seeded by that seed; training
    draws from it first, then the steps in order)."""

    client_id: str
    round: int
    seed: int
    gen: torch.Generator


class ClientStep:
    """One composable step around a client's local training. Every hook is optional."""

    name: ClassVar[str] = ""

    def admit(self, ctx: ClientRound) -> str | None:
        """A reason to refuse this round before training (e.g. a spent budget), or None."""
        return None

    def weights(self, ctx: ClientRound, weights: torch.Tensor) -> torch.Tensor:
        """The weights this client trains from."""
        return weights

    def trainable(self, ctx: ClientRound) -> torch.Tensor | None:
        """One bool per parameter when only a slice trains here, else None."""
        return None

    def after(self, ctx: ClientRound, update: Update) -> Update:
        """The update as it leaves this step."""
        return update

    def state_dict(self) -> dict[str, bytes]:
        return {}

    def load_state_dict(self, saved: Mapping[str, bytes]) -> None:
        pass


class Training:
    """How a client computes its update from the global weights."""

    name: ClassVar[str] = ""

    def run(
        self,
        fm: FlatModel,
        weights: torch.Tensor,
        data: ClientData,
        task: Task,
        gen: torch.Generator,
        rnd: int,
        trainable: torch.Tensor | None,
    ) -> Update | Failure:
        raise NotImplementedError

    def state_dict(self) -> dict[str, bytes]:
        return {}

    def load_state_dict(self, saved: Mapping[str, bytes]) -> None:
        pass


def save_tensors(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def load_tensors(data: bytes):
    return torch.load(io.BytesIO(data), weights_only=True)


class LocalTraining(Training):
    """Plain local training (:func:`~fedgpt.client.trainer.local_update`: SGD/AdamW,
    FedProx), keeping each client's optimiser memory when ``keep_optimizer_state``."""

    name = "local"

    def __init__(self, cfg: ClientConfig):
        self.cfg = cfg
        self.memory: dict[str, dict] = {}  # per client, never sent

    def run(self, fm, weights, data, task, gen, rnd, trainable):
        cid = data.client_id
        memory = self.memory.setdefault(cid, {}) if self.cfg.keep_optimizer_state else None
        return local_update(
            fm, weights, data.train, self.cfg, gen, cid, rnd,
            opt_memory=memory, trainable=trainable, task=task,
        )  # fmt: skip

    def state_dict(self) -> dict[str, bytes]:
        return {"opt_memory": save_tensors(self.memory)}

    def load_state_dict(self, saved: Mapping[str, bytes]) -> None:
        if "opt_memory" in saved:
            self.memory = load_tensors(saved["opt_memory"])


class ClientAlgorithm:
    """A :class:`Training` and its :class:`ClientStep` s over the clients' own data."""

    def __init__(
        self,
        fm: FlatModel,
        data: Mapping[str, ClientData],
        task: Task,
        training: Training,
        steps: Sequence[ClientStep] = (),
    ):
        self.fm, self.data, self.task = fm, data, task
        self.training, self.steps = training, list(steps)

    def step(self, kind: type) -> ClientStep | None:
        """The first step of type ``kind`` in the pipeline, if any."""
        return next((s for s in self.steps if isinstance(s, kind)), None)

    def train(self, client_id: str, rnd: int, seed: int, weights: torch.Tensor):
        """This client's update for round ``rnd``, or a :class:`Failure` (a refusal)."""
        ctx = ClientRound(client_id, rnd, seed, torch.Generator().manual_seed(seed))
        for s in self.steps:
            if (reason := s.admit(ctx)) is not None:
                return Failure(reason)
        trainable = None
        for s in self.steps:
            weights = s.weights(ctx, weights)
            trainable = s.trainable(ctx) if trainable is None else trainable
        data = self.data[client_id]
        result = self.training.run(self.fm, weights, data, self.task, ctx.gen, rnd, trainable)
        if isinstance(result, Failure):
            return result
        for s in self.steps:
            result = s.after(ctx, result)
        return result

    def parts(self) -> list:
        return [self.training, *self.steps]

    def state_dict(self) -> dict[str, bytes]:
        return state_of(self.parts())

    def load_state_dict(self, saved: Mapping[str, bytes]) -> None:
        restore(self.parts(), saved)

    def charge_unseen(self, newer: Mapping[str, bytes]) -> None:
        charge_unseen(self.parts(), newer)


def state_of(parts) -> dict[str, bytes]:
    """The parts' ``state_dict()`` s in one mapping (each part owns its keys)."""
    out: dict[str, bytes] = {}
    for part in parts:
        out.update(part.state_dict())
    return out


def restore(parts, saved: Mapping[str, bytes]) -> None:
    for part in parts:
        part.load_state_dict(saved)


def charge_unseen(parts, newer: Mapping[str, bytes]) -> None:
    """Charge the parts that spend privacy with what they released after the state they
    were restored to: ``newer`` is a later state of the same clients (releases of a round
    the run redoes). Each such part adds the difference to its budget and never forgets it."""
    for part in parts:
        if hasattr(part, "charge_unseen"):
            part.charge_unseen(newer)
