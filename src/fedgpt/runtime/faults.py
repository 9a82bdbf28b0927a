"""Fault injection for the in-process runtime: crashing clients, stragglers that miss the
round deadline, SecAgg clients that vanish after a given stage (``[runtime]`` settings).

Every draw comes from a generator keyed by (run seed, round, attempt, client, kind of
fault), so faults do not depend on the order clients are called in, a retried round
draws afresh, and a resumed run sees exactly the faults of an uninterrupted one.
Stragglers are simulated without sleeping: a straggler's reply is marked as arriving
``straggle_delay`` seconds after the round started, and the runtime drops it when that
is past ``round_timeout``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedgpt.config import RunConfig
from fedgpt.errors import ConfigError
from fedgpt.messages import Failure, Message

# SecAgg stages in order, keyed by the message that starts each one
SECAGG_STAGES = {"secagg/train": 0, "secagg/share": 1, "secagg/masked": 2, "secagg/unmask": 3}
STAGE_INDEX = {"train": 0, "share": 1, "masked": 2}
TRAINING = ("train", "secagg/train")


@dataclass
class FaultInjector:
    seed: int
    fail: frozenset[str] = frozenset()
    fail_fraction: float = 0.0
    straggle: frozenset[str] = frozenset()
    straggle_fraction: float = 0.0
    straggle_delay: float = 60.0
    drop_after_stage: str = ""
    attempt: int = 0  # the experiment sets it before each attempt of a round

    def set_attempt(self, attempt: int) -> None:
        """Called before each attempt of a round: a retry draws its faults afresh."""
        self.attempt = attempt

    @classmethod
    def from_config(cls, cfg: RunConfig, client_ids: list[str]) -> FaultInjector | None:
        """The injector of ``cfg.runtime``, or ``None`` when no fault is configured."""
        r = cfg.runtime
        known = set(client_ids)
        for key, ids in (
            ("fail_clients", r.fail_clients),
            ("straggle_clients", r.straggle_clients),
        ):
            unknown = [c for c in ids if c not in known]
            if unknown:
                raise ConfigError(f"runtime.{key}: unknown client {unknown[0]!r}")
        if r.drop_after_stage and cfg.privacy.secure_aggregation != "secagg":
            raise ConfigError(
                'runtime.drop_after_stage applies to privacy.secure_aggregation = "secagg"'
            )
        if not (r.fail_clients or r.fail_fraction or r.straggle_clients or r.straggle_fraction):
            return None
        return cls(
            seed=cfg.seed,
            fail=frozenset(r.fail_clients),
            fail_fraction=r.fail_fraction,
            straggle=frozenset(r.straggle_clients),
            straggle_fraction=r.straggle_fraction,
            straggle_delay=r.straggle_delay,
            drop_after_stage=r.drop_after_stage,
        )

    def _draw(self, what: int, rnd: int, cid: str) -> float:
        key = np.frombuffer(cid.encode("utf-8"), dtype=np.uint8).astype(np.uint32).tolist()
        return float(
            np.random.default_rng([self.seed, 0xFA17, what, rnd, self.attempt, *key]).random()
        )

    def fails(self, cid: str, rnd: int) -> bool:
        """Whether ``cid`` fails in round ``rnd`` (this attempt)."""
        return cid in self.fail or (
            self.fail_fraction > 0 and self._draw(1, rnd, cid) < self.fail_fraction
        )

    def straggles(self, cid: str, rnd: int) -> bool:
        return cid in self.straggle or (
            self.straggle_fraction > 0 and self._draw(2, rnd, cid) < self.straggle_fraction
        )

    def before(self, cid: str, msg: Message) -> Failure | None:
        """The failure that replaces ``cid``'s handling of ``msg``, if any."""
        rnd = int(msg.config.get("round", 0))
        stage = self.drop_after_stage
        if msg.type in SECAGG_STAGES and stage:
            if SECAGG_STAGES[msg.type] > STAGE_INDEX[stage] and self.fails(cid, rnd):
                return Failure(f"client vanished after SecAgg stage {stage!r} (fault injection)")
            return None
        if msg.type in TRAINING and self.fails(cid, rnd):
            return Failure("client crashed (fault injection)")
        return None

    def delay(self, cid: str, msg: Message) -> float:
        """Simulated seconds until ``cid``'s reply to ``msg`` arrives."""
        if msg.type in TRAINING and self.straggles(cid, int(msg.config.get("round", 0))):
            return self.straggle_delay
        return 0.0


class FaultyRuntime:
    """Fault injection around any runtime (here: the Flower runtime; the in-process
    runtime applies the same injector itself). A client the injector crashes or makes
    vanish is not sent its message and answers with the :class:`Failure`; a straggler's
    reply arrives, and is refused when its simulated delay passes ``timeout``."""

    def __init__(self, inner, faults: FaultInjector, timeout: float | None = None):
        self.inner, self.faults, self.timeout = inner, faults, timeout

    def send_and_receive(self, messages, timeout=None, on_reply=None):
        deadline = timeout if timeout is not None else self.timeout
        failed = {c: f for c, m in messages.items() if (f := self.faults.before(c, m)) is not None}
        live = {c: m for c, m in messages.items() if c not in failed}
        replies = dict(self.inner.send_and_receive(live, timeout)) if live else {}
        for cid, msg in live.items():
            late = self.faults.delay(cid, msg)
            if deadline and late > deadline and cid in replies:
                replies[cid] = Failure(
                    f"no reply within the round deadline of {deadline:g} s "
                    f"(straggler, {late:g} s, fault injection)"
                )
        replies.update(failed)
        out = {c: replies[c] for c in messages if c in replies}
        out.update({c: r for c, r in replies.items() if c not in out})
        if on_reply is not None:
            for cid, r in out.items():
                on_reply(cid, r)
        return out
