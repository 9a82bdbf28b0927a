"""The ``SecureSum`` component: how the cohort's training replies become either the
individual updates or only their weighted sum.

* ``none`` (:class:`PlainSum`): each client sends Δ_k in the clear; every reply is
  validated on its own and the aggregator sees them all;
* ``secagg`` (:class:`SecAggSum`): pairwise-masked secure aggregation (Bonawitz et al.
  2017; Bell et al. 2020 for SecAgg+) as five exchanges over the runtime; the server
  obtains Σ w_k Δ_k only (:mod:`fedgpt.privacy.secagg.server`);
* ``ckks`` (:class:`CkksSum`): clients send CKKS ciphertexts of n_k Δ_k (Cheon et al.
  2017), the server adds them without the secret key and one key-holding participant
  decrypts only the sum (:mod:`fedgpt.privacy.ckks`).

Capabilities: ``reveals_individual`` (an aggregator that needs individual updates, a
norm bound, FedDF's teachers, central DP's server-side clipping all need it) and
``coverage`` (device tiers' per-parameter counts travel).

``collect(state, cohort, ex)`` returns a :class:`Collected`: the individual
:class:`~fedgpt.aggregation.base.Updates`, or the already averaged sum.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from fedgpt.aggregation.base import Aggregate, Aggregator, Updates
from fedgpt.federation.exchange import Exchange
from fedgpt.federation.ledger import payload_hash
from fedgpt.federation.state import ServerState
from fedgpt.federation.streaming import Folder
from fedgpt.federation.validation import (
    check_update,
    decompressed,
    max_update_bytes,
    validate_reply,
)
from fedgpt.messages import Failure, Message, broadcast
from fedgpt.registry import Registry
from fedgpt.schemas import Expect, check_reply
from fedgpt.seeding import client_seed


@dataclass(frozen=True)
class Fold:
    """What a streaming collect folds into: the aggregator, its state, the round's
    generator, and whether to sketch each update for the heterogeneity metrics."""

    aggregator: Aggregator
    state: dict
    gen: torch.Generator
    sketch: bool = True


@dataclass
class Collected:
    """A round's training outcome: ``updates`` (individual) or ``average`` (only the sum
    was revealed); ``weights`` n_k and ``metrics`` per participant."""

    participants: list[str]
    updates: Updates | None = None
    average: torch.Tensor | None = None
    weights: dict[str, float] = field(default_factory=dict)
    metrics: dict[str, dict] = field(default_factory=dict)
    failure: str | None = None  # the protocol failed as a whole (nothing aggregated)
    train_loss: float | None = None  # when only its weighted mean was revealed (SecAgg)
    folded: Aggregate | None = None  # the streamed aggregate (see federation.streaming)
    heterogeneity: dict[str, dict] = field(default_factory=dict)


class SecureSum:
    name: ClassVar[str] = ""
    streams: ClassVar[bool] = False  # can fold each update into the aggregate on arrival
    reveals_individual: ClassVar[bool] = True
    coverage: ClassVar[bool] = True
    clients_need_cohort: ClassVar[bool] = False  # remote clients learn the client ids first

    def __init__(self, cfg, tier_masks: dict[str, torch.Tensor] | None = None):
        self.cfg = cfg  # the RunConfig
        self.tier_masks = tier_masks or {}

    def collect(self, state: ServerState, cohort: list[str], ex: Exchange) -> Collected:
        raise NotImplementedError


SECURE_SUMS: Registry[type[SecureSum]] = Registry(
    "secure aggregation", "privacy.secure_aggregation"
)


@SECURE_SUMS.register("none")
class PlainSum(SecureSum):
    """Updates in the clear, each validated before it may touch the aggregate."""

    chunks = 0  # CKKS ciphertexts per update (0: a float32 vector)
    train_config: ClassVar[dict] = {}

    streams = True

    def collect(
        self, state: ServerState, cohort: list[str], ex: Exchange, fold: Fold | None = None
    ) -> Collected:
        """The round's replies; with ``fold`` (the aggregator, its state, the round's
        generator) each valid update is folded on arrival (:meth:`stream`)."""
        msgs, nonces = self._messages(state, cohort)
        if fold is not None and not self.chunks:
            return self.stream(state, msgs, nonces, ex, fold)
        rnd, w = state.round + 1, state.weights
        received = ex.send(msgs, hash_type="train/result")
        sizes = {t: int(m.sum()) for t, m in self.tier_masks.items()}
        good: dict[str, Message] = {}
        for cid in cohort:
            received[cid], reason = self.decompress(received[cid], w.numel())
            reason = reason or validate_reply(
                received[cid], rnd, w.numel(), self.chunks, sizes, nonce=nonces[cid],
                max_bytes=max_update_bytes(w.numel(), self.chunks),
            )  # fmt: skip
            if reason is None:
                good[cid] = received[cid]
            else:
                ex.drop(cid, reason)
        if not self.chunks:
            good = self._outliers(good, ex)
        return self.combine(good, state, ex)

    def decompress(self, reply, numel: int):
        """(the reply with its update decoded, or why it does not decode)."""
        c = self.cfg.client
        sizes = {numel, *(int(m.sum()) for m in self.tier_masks.values())}
        return decompressed(reply, c.compression, sizes, c.qsgd_bucket)

    def _messages(self, state: ServerState, cohort: list[str]):
        """The train messages, each with a fresh nonce the reply must echo."""
        rnd, seed = state.round + 1, self.cfg.seed
        w = broadcast(state.weights, self.cfg.federation.broadcast_dtype)
        nonces = {cid: secrets.token_hex(16) for cid in cohort}  # echoed: replays refused
        msgs = {
            cid: Message(
                "train",
                {
                    "round": rnd,
                    **self.train_config,
                    "seed": client_seed(seed, rnd, cid),
                    "nonce": nonces[cid],
                },
                {"weights": w},
            )  # fmt: skip
            for cid in cohort
        }
        return msgs, nonces

    def stream(self, state, msgs, nonces, ex: Exchange, fold: Fold) -> Collected:
        """Validate and fold each reply as it arrives (:mod:`fedgpt.federation.streaming`);
        nothing but each client's config and norm is kept."""
        f = self.cfg.federation
        folder = Folder(
            fold.aggregator, fold.state, state.weights.numel(), state.round + 1, fold.gen,
            factor=f.norm_outlier_factor, holdback=f.outlier_holdback,
            tier_masks=self.tier_masks, sketch=fold.sketch, cohort=len(msgs),
        )  # fmt: skip
        kept: dict[str, dict] = {}  # client -> its reply's config, and its weight n_k
        first: dict[str, str | None] = {}  # client -> the hash of its first reply
        borrowed = bool(getattr(ex.runtime, "borrowed", False))
        for cid, reply, again in ex.stream(msgs, hash_type="train/result"):
            if again:
                delta = reply.tensors.get("delta") if isinstance(reply, Message) else None
                folder.again(cid, first.get(cid), ex.hashes.get(cid), delta)
                kept.pop(cid, None)
            else:
                first[cid] = ex.hashes.get(cid)
                self._arrival(folder, state, cid, reply, nonces[cid], ex, kept, borrowed)
            del reply
        return self._folded(folder, kept, msgs, ex)

    def _arrival(self, folder, state, cid, reply, nonce, ex, kept, borrowed) -> None:
        """Check one reply (its norm computed once) and fold it, or drop its sender."""
        f, numel = self.cfg.federation, state.weights.numel()
        sizes = {t: int(m.sum()) for t, m in self.tier_masks.items()}
        reply, why = self.decompress(reply, numel)
        if why is not None:
            ex.drop(cid, why)
            return
        why, norm = check_update(
            reply, state.round + 1, numel, 0, sizes, nonce=nonce,
            max_bytes=max_update_bytes(numel),
        )  # fmt: skip
        if why is None and f.max_update_norm and norm > f.max_update_norm:
            folder.seen(cid, norm)  # counts towards the median, as on the held path
            why = f"update norm {norm:.4g} above federation.max_update_norm = " \
                  f"{f.max_update_norm:g}"  # fmt: skip
        if why is not None:
            ex.drop(cid, why)
            return
        n = float(min(reply.config["num_examples"], f.max_examples))
        folder.add(cid, reply.tensors["delta"], n, norm, reply.config.get("tier"), borrowed)
        kept[cid] = {**reply.config, "_n": n}

    def _folded(self, folder: Folder, kept: dict, msgs, ex: Exchange) -> Collected:
        """The round's outcome once every reply arrived: the held-back outliers settled,
        duplicated senders refused."""
        agg, refused = folder.finish()
        for cid, why in refused.items():
            ex.drop(cid, why)
            kept.pop(cid, None)
        for cid, count in ex.counts.items():
            if count > 1 and cid in msgs:  # refused once, with the count of its replies
                ex.dropped[:] = [d for d in ex.dropped if d["client"] != cid]
                ex.drop(cid, f"duplicate sender: {count} replies to one message")
                kept.pop(cid, None)
        n = {c: cfg.pop("_n") for c, cfg in kept.items()}
        metrics = {c: cfg.get("metrics", {}) for c, cfg in kept.items()}
        if folder.failure is not None or agg is None:
            return Collected([], weights=n, metrics=metrics, failure=folder.failure)
        return Collected(
            [c for c in msgs if c in kept], average=agg.delta, weights=n, metrics=metrics,
            folded=agg,
            heterogeneity=folder.heterogeneity(agg.delta),
        )  # fmt: skip

    def _outliers(self, good: dict[str, Message], ex: Exchange) -> dict[str, Message]:
        """Refuse updates whose norm is above ``federation.max_update_norm``, or more than
        ``federation.norm_outlier_factor`` times the round's median norm (with at least 3
        updates; the median is robust to a minority). One norm per update."""
        f = self.cfg.federation
        bound, factor = f.max_update_norm, f.norm_outlier_factor if len(good) >= 3 else 0.0
        if not bound and not factor:
            return good
        norms = {c: float(torch.linalg.vector_norm(m.tensors["delta"])) for c, m in good.items()}
        median = float(torch.tensor(list(norms.values())).median()) if norms else 0.0
        kept = {}
        for c, m in good.items():
            if bound and norms[c] > bound:
                ex.drop(c, f"update norm {norms[c]:.4g} above federation.max_update_norm = "
                        f"{bound:g}")  # fmt: skip
            elif factor and median > 0 and norms[c] > factor * median:
                ex.drop(c, f"update norm {norms[c]:.4g} over {factor:g}x the median {median:.4g}")
            else:
                kept[c] = m
        return kept

    def combine(self, good: dict[str, Message], state: ServerState, ex: Exchange) -> Collected:
        cap = self.cfg.federation.max_examples
        n = {c: float(min(m.config["num_examples"], cap)) for c, m in good.items()}
        metrics = {c: m.config.get("metrics", {}) for c, m in good.items()}
        if not good:
            return Collected([], weights=n, metrics=metrics)
        deltas, masks = self._stack(good, state.weights.numel())
        updates = Updates(
            list(good), deltas, torch.tensor(list(n.values()), dtype=torch.float64), masks,
            [m.config for m in good.values()], state.weights, state.round + 1,
        )  # fmt: skip
        return Collected(list(good), updates, weights=n, metrics=metrics)

    def _stack(self, good: dict[str, Message], numel: int):
        """(deltas (K, P), masks or None): slices of device tiers expanded to full length
        with zeros outside each client's slice."""
        if not any("tier" in m.config for m in good.values()):
            return torch.stack([m.tensors["delta"] for m in good.values()]), None
        full = torch.ones(numel, dtype=torch.bool)
        masks = torch.stack(
            [self.tier_masks.get(m.config.get("tier"), full) for m in good.values()]
        )
        deltas = torch.zeros(masks.shape, dtype=torch.float32)
        deltas[masks] = torch.cat([m.tensors["delta"] for m in good.values()])
        return deltas, masks


@SECURE_SUMS.register("ckks")
class CkksSum(PlainSum):
    """CKKS ciphertexts of n_k Δ_k, signed by their senders; the members of the sum sign
    the set, and one key holder adds the signed ciphertexts itself and decrypts that sum
    (:mod:`fedgpt.privacy.ckks_guard`). An unreadable or unsigned ciphertext drops its
    sender."""

    reveals_individual = False
    coverage = False
    streams = False
    clients_need_cohort = True  # a key holder checks the set's size against the cohort
    train_config: ClassVar[dict] = {"secure_aggregation": "ckks"}

    def __init__(self, cfg, tier_masks=None, server=None, registry=None):
        from fedgpt.privacy.ckks import num_chunks

        super().__init__(cfg, tier_masks)
        self.server = server  # a CkksServer holding the public context only
        self.registry = registry  # the clients' public identities (or None: not checked)
        self._num_chunks = num_chunks

    META = 3  # inside each plaintext after n_k·Δ_k: n_k, n_k·loss, n_k·[loss known]

    def collect(self, state, cohort, ex):
        self.chunks = self._num_chunks(state.weights.numel() + self.META)
        return super().collect(state, cohort, ex)

    def _signed(self, good: dict[str, Message], rnd: int) -> dict[str, Message]:
        """The replies whose ciphertexts carry their sender's registered signature."""
        from fedgpt.privacy.ckks_guard import ciphertext_statement

        if self.registry is None:
            return good
        return {c: m for c, m in good.items() if self.registry.verify(
            c, m.blobs.get("ckks_sig", [b""])[0],
            ciphertext_statement(rnd, c, m.blobs["delta_ckks"]))}  # fmt: skip

    def combine(self, good, state, ex):
        from fedgpt.privacy.ckks import CiphertextError

        signed = self._signed(good, state.round + 1)
        for c in set(good) - set(signed):
            ex.drop(c, "CKKS: ciphertexts not signed by the client's registered identity")
        good = signed
        while good:
            try:
                # the sum is the decryptor's to make; adding here names unreadable senders
                self.server.sum([good[c].blobs["delta_ckks"] for c in good])
                break
            except CiphertextError as exc:
                bad = list(good)[exc.index]
                ex.drop(bad, f"CKKS: {exc}")
                del good[bad]
        n = {c: 1.0 for c in good}  # each n_k rides inside its ciphertext
        metrics = {c: m.config.get("metrics", {}) for c, m in good.items()}
        if not good:
            return Collected([], weights=n, metrics=metrics)
        total = self._decrypt(good, state, ex)
        if total is None:
            return Collected([], weights=n, metrics=metrics, failure="CKKS: no sum decrypted")
        numel = state.weights.numel()
        count, loss_sum, known = (float(x) for x in total[numel:])
        if not count > 0:
            return Collected([], weights=n, metrics=metrics, failure="CKKS: the weights sum to 0")
        loss = loss_sum / known if known > 0.5 else None
        return Collected(list(good), average=total[:numel] / count, weights=n, metrics=metrics,
                         train_loss=loss)  # fmt: skip

    def _decrypt(self, good: dict[str, Message], state, ex: Exchange) -> torch.Tensor | None:
        """The members sign the set; the first that can then decrypts its sum."""
        numel, rnd, members = state.weights.numel() + self.META, state.round + 1, sorted(good)
        check = {c: Message("ckks/check", {"round": rnd, "members": members}) for c in members}
        sigs = {}
        for c, reply in ex.send(check).items():
            if (why := check_reply(reply, Expect("ckks/signature", rnd))) is None:
                sigs[c] = reply.blobs.get("sig", [b""])[0]
            else:
                ex.drop(c, f"CKKS check: {why}")
        blobs = {f"sig:{c}": [s] for c, s in sigs.items() if s}
        for c in members:
            blobs[f"ct:{c}"] = list(good[c].blobs["delta_ckks"])
            blobs |= (
                {f"ctsig:{c}": good[c].blobs["ckks_sig"]} if "ckks_sig" in good[c].blobs else {}
            )
        for cid in sigs:
            msg = Message("ckks/decrypt", {"round": rnd, "numel": numel, "members": members},
                          {}, blobs)  # fmt: skip
            reply = ex.send({cid: msg}).get(cid, Failure("no reply"))
            if check_reply(reply, Expect("ckks/aggregate", rnd, numel)) is None:
                return reply.tensors["aggregate"]
        return None


@SECURE_SUMS.register("secagg")
class SecAggSum(SecureSum):
    """SecAgg / SecAgg+ over the runtime; the server learns Σ w_k Δ_k of the survivors."""

    reveals_individual = False
    coverage = False

    def __init__(self, cfg, tier_masks=None, registry=None, codec=None):
        super().__init__(cfg, tier_masks)
        self.registry = registry  # the clients' public identities (or None: not checked here)
        self.codec = codec  # distributed DP's encoding (None: fixed point)

    def collect(self, state, cohort, ex):
        from fedgpt.privacy.secagg.quantize import bits_for
        from fedgpt.privacy.secagg.server import run_round as secagg

        rnd, p = state.round + 1, self.cfg.privacy
        w = broadcast(state.weights, self.cfg.federation.broadcast_dtype)

        def arrival(cid, reply):
            if isinstance(reply, Message) and reply.type == "secagg/masked_input":
                ex.hashes[cid] = payload_hash(reply)
            if ex.on_reply:
                ex.on_reply(cid, reply)

        out = secagg(
            ex.runtime, cohort, rnd, {c: client_seed(self.cfg.seed, rnd, c) for c in cohort},
            w, w.numel(), value_range=p.secagg_range, bits=bits_for(len(cohort), p.secagg_word),
            word=p.secagg_word,
            weight_cap=p.secagg_weight_cap, threshold_fraction=p.secagg_threshold,
            k=p.secagg_neighbours, graph_seed=self.cfg.seed, post_quantum=p.post_quantum,
            on_reply=arrival, registry=self.registry, codec=self.codec,
            rotation_seed=client_seed(self.cfg.seed, rnd, "__rotation__"),
        )  # fmt: skip
        ex.dropped.extend(out.dropped)
        ex.bytes_up, ex.bytes_down = ex.bytes_up + out.bytes_up, ex.bytes_down + out.bytes_down
        if out.failure is not None:
            return Collected([], failure=out.failure)
        avg = (
            out.weighted_sum / out.weight
            if out.weighted_sum is not None and out.weight > 0
            else None
        )
        return Collected(
            list(out.survivors), average=avg, weights={c: 1.0 for c in out.survivors},
            metrics=out.metrics, train_loss=out.train_loss,
        )  # fmt: skip
