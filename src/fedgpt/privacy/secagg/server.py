"""The server's side of SecAgg / SecAgg+: five message rounds over the runtime seam.

The server only ever holds public keys, sealed shares it cannot open, masked vectors, and
the shares it asks for in the last step (self-mask shares of survivors, mask-key shares of
clients that dropped after sharing). Clients check what the server asks of them: the
threshold (more than half of their neighbours, and their own configured fraction) and the
Shamir evaluation points (distinct, in [1, p)); advertised public keys that peers cannot
use are dropped with their sender named; a false share is found and its sender named when
enough consistent shares remain; an unmasked sum that no set of honest encodings gives
fails the round. From these it removes the masks and obtains
Σ_{u ∈ survivors} x_u mod 2^64 and nothing else. Fewer than t shares for any secret it
must rebuild — or fewer than t + 1 clients at any step — fails the round cleanly: no
aggregate, the reason returned, the global model unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from fedgpt.messages import Failure, Message
from fedgpt.privacy.secagg import crypto, shamir
from fedgpt.privacy.secagg.client import MASK_INFO, min_threshold, salt
from fedgpt.privacy.secagg.identity import keys_statement
from fedgpt.privacy.secagg.quantize import WORDS, decode_all, words
from fedgpt.schemas import Expect, check_reply, envelope, nbytes, parse_reply


@dataclass
class SecAggOutcome:
    weighted_sum: torch.Tensor | None = None  # Σ w_k Δ_k
    weight: float = 0.0  # Σ w_k
    survivors: list[str] = field(default_factory=list)
    dropped: list[dict[str, str]] = field(default_factory=list)
    metrics: dict[str, dict] = field(default_factory=dict)
    train_loss: float | None = None  # the w-weighted mean loss, from inside the masked sum
    bytes_up: int = 0
    bytes_down: int = 0
    failure: str | None = None


def neighbours(ids: Sequence[str], k: int, rng: np.random.Generator) -> dict[str, list[str]]:
    """SecAgg+ graph: a Harary graph H(k, n) over a random permutation (each client linked
    to the k/2 nearest on each side of a ring); k = 0 or k ≥ n − 1: the complete graph."""
    n = len(ids)
    if k <= 0 or k >= n - 1:
        return {u: [v for v in ids if v != u] for u in ids}
    order = [ids[i] for i in rng.permutation(n)]
    half = max(1, k // 2)
    out: dict[str, set[str]] = {u: set() for u in ids}
    for i, u in enumerate(order):
        for d in range(1, half + 1):
            v = order[(i + d) % n]
            out[u].add(v)
            out[v].add(u)
    return {u: sorted(vs) for u, vs in out.items()}


class _Exchange:
    """One message round: each addressed client's reply must be a valid ``want`` reply
    (fedgpt.schemas, with what ``expect(cid)`` says); any other is a dropout."""

    def __init__(self, runtime, on_reply, outcome: SecAggOutcome, rnd: int):
        self.runtime, self.on_reply, self.out, self.rnd = runtime, on_reply, outcome, rnd

    def __call__(
        self, msgs: Mapping[str, Message], want: str, expect: Callable[[str], Expect]
    ) -> dict[str, tuple[Message, object]]:
        """{client: (reply, its validated config)} of the valid replies."""
        replies = self.runtime.send_and_receive(msgs, on_reply=self.on_reply)
        self.out.bytes_down += sum(m.nbytes for m in msgs.values())
        good = {}
        for cid in msgs:
            r = replies.get(cid, Failure("no reply"))
            self.out.bytes_up += nbytes(r)
            if isinstance(r, Failure) or envelope(r) is not None or r.type != want:
                reason = f"secagg {want}: {check_reply(r, Expect(want, self.rnd))}"
            else:
                model, why = parse_reply(r, expect(cid))
                if why is None:
                    good[cid] = (r, model)
                    continue
                reason = f"secagg: {why}"
            self.out.dropped.append({"client": cid, "reason": reason})
        return good


@dataclass(frozen=True)
class SecAggParams:
    """The round's settings: value range and bits of the quantisation, the weight cap,
    Shamir's threshold as a fraction of the neighbours, SecAgg+'s neighbours ``k`` (0 =
    everyone), the graph's seed, hybrid post-quantum key agreement, and the encoding of the
    inputs: ``codec`` None for fixed point (:mod:`fedgpt.privacy.secagg.quantize`), or
    distributed DP's :class:`~fedgpt.privacy.skellam.SkellamCodec` with the round's
    public ``rotation_seed``."""

    value_range: float
    bits: int
    weight_cap: float
    threshold_fraction: float
    k: int
    graph_seed: int
    post_quantum: bool = False
    codec: object = None
    rotation_seed: int = 0
    word: int = 64  # bits of the masked words (64, or 32: privacy.secagg_word)


class _Abort(Exception):
    """Too few clients or shares at some step: the round fails with this reason."""


def run_round(
    runtime,
    chosen: Sequence[str],
    rnd: int,
    seeds: Mapping[str, int],
    weights: torch.Tensor,
    numel: int,
    *,
    on_reply: Callable | None = None,
    registry=None,
    **params,
) -> SecAggOutcome:
    """One SecAgg(+) round over ``runtime`` for the ``chosen`` clients (``params``: the
    fields of :class:`SecAggParams`; ``registry``: the clients' identities, to drop an
    advertiser whose keys are not signed by its own); the outcome holds Σ w_k Δ_k of the
    survivors, or the reason the round failed."""
    r = _Round(runtime, on_reply, rnd, numel, SecAggParams(**params), registry)
    try:
        keys = r.advertise(chosen, seeds, weights)
        shares = r.share(keys)
        masked = r.masked(shares)
        sigs = r.check(masked)
        total = r.unmask(masked, set(shares) - set(masked), sigs)
    except _Abort as exc:
        r.out.failure = str(exc)
        return r.out
    p, u3 = r.p, sorted(masked)
    if (why := _decode(r.out, total, len(u3), numel, p)) is not None:
        r.out.failure = why
        return r.out
    r.out.survivors = u3
    r.out.metrics = {u: dict(keys[u][1].metrics) for u in u3}
    return r.out


def _decode(out: SecAggOutcome, total, count: int, numel: int, p: SecAggParams) -> str | None:
    """Fill ``out`` with what the unmasked ``total`` encodes, or say why it cannot be the
    sum of ``count`` honest encodings."""
    if p.codec is None:
        why = out_of_range(total, count, p.bits)
        if why is None:
            out.weighted_sum, out.weight, out.train_loss = decode_all(
                total, count, p.value_range, p.bits
            )
        return why
    why = p.codec.check_sum(total, count, numel)
    if why is None:  # the noisy sum of clipped updates, over the expected cohort
        out.weighted_sum = p.codec.decode(total, numel, p.rotation_seed)
        out.weight = float(p.codec.expected)
    return why


def out_of_range(total: np.ndarray, count: int, bits: int) -> str | None:
    """Why the unmasked sum cannot be the sum of ``count`` honest encodings (each value of
    an encoding lies in [0, 2^bits − 1], so their sum in [0, count·(2^bits − 1)]), or None.
    A client whose masked input is not a masked encoding, or a false share that rebuilt a
    wrong mask, shows here with near certainty; the round then fails, nothing applied."""
    bound = total.dtype.type(count * (2**bits - 1))
    over = int(np.count_nonzero(total > bound))
    if not over:
        return None
    where = "the weight sum" if total[-1] > bound else f"{over} of {total.size - 1} values"
    return (
        f"secagg: the unmasked sum is outside the range of {count} encodings ({where}): a "
        "client sent a masked input that is no encoding, or a share was false; not applied"
    )


class _Round:
    """The five SecAgg stages of one round (Bonawitz et al. 2017, Fig. 4 with Fig. 5's
    consistency check; SecAgg+ graph: Bell et al. 2020): advertise keys, share keys,
    masked input, consistency check, unmasking."""

    def __init__(self, runtime, on_reply, rnd: int, numel: int, p: SecAggParams, registry=None):
        self.out, self.rnd, self.numel, self.p = SecAggOutcome(), rnd, numel, p
        # the encoding: values, metadata, weight (fixed point) or distributed DP's
        self.words = p.codec.words(numel) if p.codec is not None else words(numel)
        self.dtype = WORDS[p.word]
        self.registry = registry  # privacy.secagg.identity.Identities (public part), or None
        self.ex = _Exchange(runtime, on_reply, self.out, rnd)
        self.names = ("c_pk", "s_pk", "kc_pk", "ks_pk") if p.post_quantum else ("c_pk", "s_pk")

    def _need(self, have: int, what: str) -> None:
        if have < self.t + 1:
            raise _Abort(f"only {have} clients {what}, need {self.t + 1}")

    def advertise(self, chosen, seeds, weights) -> dict:
        """0. Train and advertise keys; fixes the graph, threshold t and indices."""
        p, rnd = self.p, self.rnd
        cfg = {"round": rnd, "range": p.value_range, "bits": p.bits,
               "weight_cap": p.weight_cap, "post_quantum": p.post_quantum}  # fmt: skip
        if p.codec is not None:
            cfg["rotation"] = p.rotation_seed
        if p.word != 64:
            cfg["word"] = p.word
        msgs = {
            c: Message("secagg/train", {**cfg, "seed": seeds[c]}, {"weights": weights})
            for c in chosen
        }
        keys = self.ex(msgs, "secagg/keys", lambda c: Expect("secagg/keys", rnd, keys=self.names))
        keys = self._usable(keys)
        u1 = sorted(keys)
        self.graph = neighbours(u1, p.k, np.random.default_rng([p.graph_seed, rnd]))
        degrees = [len(v) for v in self.graph.values()] or [0]
        self.t = max(min_threshold(d, p.threshold_fraction) for d in degrees)
        if len(u1) < self.t + 1 or self.t > min(degrees):
            raise _Abort(
                f"only {len(u1)} clients advertised keys, need {self.t + 1} (threshold {self.t})"
            )
        self.index = {u: i + 1 for i, u in enumerate(u1)}
        self.at_index = {i: u for u, i in self.index.items()}
        self.pk = {u: tuple(keys[u][0].blobs[n][0] for n in self.names) for u in u1}
        self.sig = {u: keys[u][0].blobs.get("sig", [b""])[0] for u in u1}
        return keys

    def _usable(self, keys: dict) -> dict:
        """The advertisers whose public keys a peer can use; the others are dropped and
        named (a bad key must not make its honest peers fail the next step)."""
        good = {}
        for u, (reply, model) in keys.items():
            bad = [n for n in self.names if not crypto.usable_public_key(n, reply.blobs[n][0])]
            if bad:
                why = f"secagg: unusable public key {bad[0]} (dropped before sharing)"
            elif self.registry is not None and not self.registry.verify(
                u, reply.blobs.get("sig", [b""])[0],
                keys_statement(self.rnd, u, [reply.blobs[n][0] for n in self.names]),
            ):  # fmt: skip
                why = "secagg: keys not signed by the client's registered identity (dropped)"
            else:
                good[u] = (reply, model)
                continue
            self.out.dropped.append({"client": u, "reason": why})
        return good

    def share(self, keys: dict) -> dict:
        """1. Each client seals Shamir shares of its secrets for its neighbours."""
        rnd, g = self.rnd, self.graph
        msgs = {
            u: Message(
                "secagg/share",
                {"round": rnd, "threshold": self.t, "index": self.index},
                {},
                {
                    **{f"pk:{v}": list(self.pk[v]) for v in g[u]},
                    **{f"sig:{v}": [self.sig[v]] for v in g[u] if self.sig[v]},
                },
            )  # fmt: skip
            for u in sorted(keys)
        }
        want = "secagg/shares"
        shares = self.ex(msgs, want, lambda u: Expect(want, rnd, peers=frozenset(g[u])))
        self._need(len(shares), "shared keys")
        return shares

    def masked(self, shares: dict) -> dict:
        """2. Route each sealed share to its recipient; collect the masked inputs."""
        rnd, g, u2 = self.rnd, self.graph, sorted(shares)
        inbox: dict[str, dict[str, bytes]] = {u: {} for u in u2}
        for u in u2:
            for key, blob in shares[u][0].blobs.items():
                v = key.removeprefix("to:")
                if v in inbox and v in g[u]:
                    inbox[v][u] = blob
        msgs = {
            u: Message(
                "secagg/masked",
                {"round": rnd, "alive": [v for v in g[u] if v in shares]},
                {},
                {f"from:{v}": parts for v, parts in inbox[u].items()},
            )  # fmt: skip
            for u in u2
        }
        want = "secagg/masked_input"  # y: self.words words
        item = np.dtype(self.dtype).itemsize
        masked = self.ex(msgs, want, lambda u: Expect(want, rnd, self.words - 1, item=item))
        self._need(len(masked), "sent masked inputs")
        return masked

    def check(self, masked: dict) -> dict[str, bytes]:
        """3. Consistency check: each client in U3 signs U3 (Bonawitz et al. 2017, Fig. 5);
        {signer: signature}."""
        rnd, u3, want = self.rnd, sorted(masked), "secagg/signature"
        msgs = {u: Message("secagg/check", {"round": rnd, "u3": u3}) for u in u3}
        signed = self.ex(msgs, want, lambda u: Expect(want, rnd))
        self._need(len(signed), "signed the survivor set")
        return {u: r.blobs.get("sig", [b""])[0] for u, (r, _) in signed.items()}

    def unmask(self, masked: dict, gone: set[str], sigs: dict[str, bytes]) -> np.ndarray:
        """4. Ask the signers for the shares that remove every mask; the masked sum
        minus the survivors' self masks and the pairwise masks of the dropped."""
        b_sh, s_sh, pq = self._reveal(sorted(masked), gone, sigs)
        total = np.zeros(self.words, dtype=self.dtype)
        for u in sorted(masked):
            total += np.frombuffer(masked[u][0].blobs["y"][0], dtype=self.dtype)
        for u in sorted(masked):  # remove self masks
            crypto.add_prg(total, self._secret(b_sh[u], f"{u}'s self mask"), -1)
        for u in sorted(gone):  # remove the pairwise masks survivors shared with dropped u
            s_sk = self._secret(s_sh[u], f"{u}'s mask key")
            for v in self.graph[u]:
                if v in masked:
                    seed, sign = self._pair_mask(u, v, s_sk, pq)
                    crypto.add_prg(total, seed, -sign)
        return total

    def _reveal(self, u3: list[str], gone: set[str], sigs: dict[str, bytes]):
        rnd, g, want = self.rnd, self.graph, "secagg/shares_out"
        signers = sorted(sigs)
        alive = {v: [u for u in g[v] if u in u3] for v in signers}
        lost = {v: [u for u in g[v] if u in gone] for v in signers}
        blobs = {f"sig:{v}": [s] for v, s in sigs.items() if s}
        msgs = {
            v: Message(
                "secagg/unmask",
                {"round": rnd, "survivors": alive[v], "dropped": lost[v], "u3": u3},
                {},
                blobs,
            )  # fmt: skip
            for v in signers
        }
        reveal = self.ex(msgs, want, lambda v: Expect(
            want, rnd, peers=frozenset(g[v]), survivors=frozenset(alive[v]),
            dropped=frozenset(lost[v]), index=self.index[v],
        ))  # fmt: skip
        b_sh: dict[str, dict[int, int]] = {u: {} for u in u3}
        s_sh: dict[str, dict[int, int]] = {u: {} for u in gone}
        pq: dict[tuple[str, str], bytes] = {}  # (dropped u, survivor v) -> ML-KEM secret
        for v, (_, r) in reveal.items():  # r: the validated config (fedgpt.schemas)
            for u, (x, y) in r.b.items():
                b_sh[u][x] = int(y, 16)
            for u, (x, y, pq_hex) in r.s.items():
                s_sh[u][x] = int(y, 16)
                pq[(u, v)] = bytes.fromhex(pq_hex)
            for u in r.tampered:
                why = f"secagg: share for {v} failed authentication (discarded)"
                self.out.dropped.append({"client": u, "reason": why})
        return b_sh, s_sh, pq

    def _secret(self, shares: dict[int, int], what: str) -> bytes:
        """The secret behind t of ``shares``. When those t do not give one (a false share
        among them), the secret is rebuilt from t shares that a further share confirms and
        the senders of the shares off that polynomial are named and dropped; with too few
        consistent shares the round fails cleanly."""
        if len(shares) < self.t:
            raise _Abort(f"only {len(shares)} shares of {what}, need {self.t}")
        items = list(shares.items())
        first = dict(items[: self.t])
        # a false share among the first t still gives a secret in range (points are small
        # integers, so the error is a small multiple); one more share checks them
        if len(items) == self.t or shamir.value_at(first, items[self.t][0]) == items[self.t][1]:
            try:
                return shamir.reconstruct(first)
            except ValueError:
                pass
        try:
            secret, false = shamir.reconstruct_robust(shares, self.t)
        except ValueError as exc:
            raise _Abort(f"{what}: {exc}") from None
        for x in false:
            why = f"secagg: sent a false share of {what} (discarded; rebuilt without it)"
            self.out.dropped.append({"client": self.at_index[x], "reason": why})
        return secret

    def _pair_mask(self, u: str, v: str, s_sk: int, pq: dict) -> tuple[bytes, int]:
        """What survivor v added to its input for its dropped peer u: (seed, sign) of
        ±PRG(seed)."""
        if self.p.post_quantum and (u, v) not in pq:
            raise _Abort(f"{v} did not reveal its post-quantum pair secret with {u}")
        seed = crypto.agree(s_sk, self.pk[v][1], MASK_INFO, salt(self.rnd), pq.get((u, v), b""))
        return seed, 1 if u > v else -1  # v added +PRG(seed) when u > v, else −PRG(seed)
