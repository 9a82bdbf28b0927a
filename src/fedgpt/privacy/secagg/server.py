"""The server's side of SecAgg / SecAgg+: four message rounds over the runtime seam.

The server only ever holds public keys, sealed shares it cannot open, masked vectors, and
the shares it asks for in the last step (self-mask shares of survivors, mask-key shares of
clients that dropped after sharing). From these it removes the masks and obtains
Σ_{u ∈ survivors} x_u mod 2^64 and nothing else. Fewer than t shares for any secret it
must rebuild — or fewer than t + 1 clients at any step — fails the round cleanly: no
aggregate, the reason returned, the global model unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from fedgpt.messages import Failure, Message
from fedgpt.privacy.secagg import crypto, shamir
from fedgpt.privacy.secagg.client import MASK_INFO, salt
from fedgpt.privacy.secagg.quantize import decode
from fedgpt.schemas import Expect, check_reply, envelope, nbytes, parse_reply


@dataclass
class SecAggOutcome:
    weighted_sum: torch.Tensor | None = None  # Σ w_k Δ_k
    weight: float = 0.0  # Σ w_k
    survivors: list[str] = field(default_factory=list)
    dropped: list[dict[str, str]] = field(default_factory=list)
    metrics: dict[str, dict] = field(default_factory=dict)
    num_examples: dict[str, int] = field(default_factory=dict)  # n_k as each client sent it
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


def run_round(
    runtime,
    chosen: Sequence[str],
    rnd: int,
    seeds: Mapping[str, int],
    weights: torch.Tensor,
    numel: int,
    *,
    value_range: float,
    bits: int,
    weight_cap: float,
    threshold_fraction: float,
    k: int,
    graph_seed: int,
    post_quantum: bool = False,
    on_reply: Callable | None = None,
) -> SecAggOutcome:
    out = SecAggOutcome()
    ex = _Exchange(runtime, on_reply, out, rnd)
    cfg = {
        "round": rnd,
        "range": value_range,
        "bits": bits,
        "weight_cap": weight_cap,
        "post_quantum": post_quantum,
    }
    # 0. train and advertise keys
    names = ("c_pk", "s_pk", "kc_pk", "ks_pk") if post_quantum else ("c_pk", "s_pk")
    keys = ex(
        {
            c: Message("secagg/train", {**cfg, "seed": seeds[c]}, {"weights": weights})
            for c in chosen
        },
        "secagg/keys",
        lambda c: Expect("secagg/keys", rnd, keys=names),
    )
    u1 = sorted(keys)
    graph = neighbours(u1, k, np.random.default_rng([graph_seed, rnd]))
    deg = min(len(v) for v in graph.values()) if graph else 0
    t = max(2, math.ceil(threshold_fraction * deg)) if deg >= 2 else 2
    if len(u1) < t + 1:
        out.failure = f"only {len(u1)} clients advertised keys, need {t + 1} (threshold {t})"
        return out
    index = {u: i + 1 for i, u in enumerate(u1)}
    pk = {u: tuple(keys[u][0].blobs[n][0] for n in names) for u in u1}
    # 1. share keys
    shares = ex(
        {
            u: Message(
                "secagg/share",
                {"round": rnd, "threshold": t, "index": index},
                {},
                {f"pk:{v}": list(pk[v]) for v in graph[u]},
            )
            for u in u1
        },
        "secagg/shares",
        lambda u: Expect("secagg/shares", rnd, peers=frozenset(graph[u])),
    )
    u2 = sorted(shares)
    if len(u2) < t + 1:
        out.failure = f"only {len(u2)} clients shared keys, need {t + 1}"
        return out
    # 2. masked input: route each sealed share to its recipient
    inbox: dict[str, dict[str, bytes]] = {u: {} for u in u2}
    for u in u2:
        for key, blob in shares[u][0].blobs.items():
            v = key.removeprefix("to:")
            if v in inbox and v in graph[u]:
                inbox[v][u] = blob
    masked = ex(
        {
            u: Message(
                "secagg/masked",
                {"round": rnd, "alive": [v for v in graph[u] if v in shares]},
                {},
                {f"from:{v}": parts for v, parts in inbox[u].items()},
            )
            for u in u2
        },
        "secagg/masked_input",
        lambda u: Expect("secagg/masked_input", rnd, numel),  # y: numel + 1 words
    )
    u3 = sorted(masked)
    if len(u3) < t + 1:
        out.failure = f"only {len(u3)} clients sent masked inputs, need {t + 1}"
        return out
    gone = set(u2) - set(u3)
    # 3. unmask
    reveal = ex(
        {
            v: Message(
                "secagg/unmask",
                {
                    "round": rnd,
                    "survivors": [u for u in graph[v] if u in u3],
                    "dropped": [u for u in graph[v] if u in gone],
                },
            )
            for v in u3
        },
        "secagg/shares_out",
        lambda v: Expect(
            "secagg/shares_out",
            rnd,
            peers=frozenset(graph[v]),
            survivors=frozenset(u for u in graph[v] if u in u3),
            dropped=frozenset(u for u in graph[v] if u in gone),
            index=index[v],
        ),
    )
    b_sh: dict[str, dict[int, int]] = {u: {} for u in u3}
    s_sh: dict[str, dict[int, int]] = {u: {} for u in gone}
    pq_part: dict[tuple[str, str], bytes] = {}  # (dropped u, survivor v) -> ML-KEM secret
    for v, (_, r) in reveal.items():  # r: the validated config (fedgpt.schemas)
        for u, (x, y) in r.b.items():
            b_sh[u][x] = int(y, 16)
        for u, (x, y, pq) in r.s.items():
            s_sh[u][x] = int(y, 16)
            pq_part[(u, v)] = bytes.fromhex(pq)
        for u in r.tampered:
            out.dropped.append(
                {"client": u, "reason": f"secagg: share for {v} failed authentication (discarded)"}
            )
    total = np.zeros(numel + 1, dtype=np.uint64)
    for u in u3:
        total += np.frombuffer(masked[u][0].blobs["y"][0], dtype=np.uint64)
    for u in u3:  # remove self masks
        if len(b_sh[u]) < t:
            out.failure = f"only {len(b_sh[u])} shares of {u}'s self mask, need {t}"
            return out
        try:  # a false share (valid in form) gives no secret: the round fails cleanly
            b = shamir.reconstruct(dict(list(b_sh[u].items())[:t]))
        except ValueError as exc:
            out.failure = f"{u}'s self mask: {exc}"
            return out
        total -= crypto.prg(b, numel + 1)
    for u in sorted(gone):  # remove the pairwise masks survivors shared with dropped u
        if len(s_sh[u]) < t:
            out.failure = f"only {len(s_sh[u])} shares of {u}'s mask key, need {t}"
            return out
        try:
            s_sk = shamir.reconstruct(dict(list(s_sh[u].items())[:t]))
        except ValueError as exc:
            out.failure = f"{u}'s mask key: {exc}"
            return out
        for v in graph[u]:
            if v in u3:
                if post_quantum and (u, v) not in pq_part:
                    out.failure = f"{v} did not reveal its post-quantum pair secret with {u}"
                    return out
                seed = crypto.agree(s_sk, pk[v][1], MASK_INFO, salt(rnd), pq_part.get((u, v), b""))
                m = crypto.prg(seed, numel + 1)
                total -= m if u > v else (np.uint64(0) - m)  # what v added for peer u
    out.weighted_sum, out.weight = decode(total, len(u3), value_range, bits)
    out.survivors = u3
    out.metrics = {u: dict(keys[u][1].metrics) for u in u3}
    out.num_examples = {u: keys[u][1].num_examples for u in u3}
    return out
