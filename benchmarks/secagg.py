"""SecAgg cost, written to benchmarks/results/secagg.json.

1. Raw protocol (synthetic inputs, no training): for n clients and d values, the wall
   time of all five message rounds in-process (client and server work together; signed:
   identities sign the keys and the survivor set, as in every run; with --unsigned also
   without, for the cost of the signatures), the server's own seconds, and bytes up/down per
   client, for the complete graph (SecAgg) and
   the SecAgg+ graph with k = 2·⌈log2 n⌉ neighbours; plaintext reference: the same inputs
   summed as float32 (server) and 4·d bytes up per client.
2. The default workload at n = 100 clients per round: one plaintext round and one SecAgg+
   round of the default model and local training, wall time as a ratio (target: SecAgg+
   with signatures and the consistency check adds <= 30 %).

Usage: python benchmarks/secagg.py [--clients 10 50 100] [--dims 100000 1000000]
                                   [--complete-max 50] [--skip-workload] [--unsigned]
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from fedgpt.privacy.secagg import client as sa
from fedgpt.privacy.secagg.quantize import WORDS, bits_for, words
from fedgpt.privacy.secagg.server import run_round
from fedgpt.runtime import InProcessRuntime

RESULTS = Path(__file__).parent / "results" / "secagg.json"


class Synthetic:
    """Clients with a fixed random input (no training; drawn once, outside the timed
    protocol, and masked by each client into a copy of its own): only the protocol is
    measured. With ``identities`` they sign their keys and the survivor set, and check their
    peers'."""

    def __init__(self, d: int, seed: int = 0, identities=None, word: int = 64):
        self.d, self.store, rng = d, {}, np.random.default_rng(seed)
        top = 2**40 if word == 64 else 2**20
        self.x = rng.integers(0, top, size=words(d), dtype=np.uint64).astype(WORDS[word])
        self.seconds, self.identities = 0.0, identities

    def __call__(self, cid, msg):
        t = time.perf_counter()
        try:
            if msg.type == "secagg/train":
                st = self.store[cid] = sa.advertise(int(msg.config["round"]), self.x)
                return sa.keys_message(st, 1, {}, cid, self.identities)
            return sa.handle(self.store, cid, msg, identities=self.identities)
        finally:
            self.seconds += time.perf_counter() - t


def protocol(n: int, d: int, k: int, signed: bool = True, word: int = 64) -> dict:
    from fedgpt.privacy.secagg.identity import Identities

    ids = [f"client-{i:03d}" for i in range(n)]
    identities = Identities.generate(ids) if signed else None
    app = Synthetic(d, identities=identities, word=word)
    start, cpu0 = time.perf_counter(), time.process_time()
    out = run_round(
        InProcessRuntime(app),
        ids,
        1,
        dict.fromkeys(ids, 0),
        torch.zeros(1),
        d,
        value_range=1.0,
        bits=bits_for(n, word),
        word=word,
        weight_cap=1000,
        threshold_fraction=0.5,
        k=k,
        graph_seed=0,
        registry=identities.public() if identities else None,
    )
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu0
    assert out.failure is None, out.failure
    xs = torch.randn(n, d)
    t = time.perf_counter()
    xs.sum(0)
    plain = time.perf_counter() - t
    return {
        "clients": n,
        "dim": d,
        "neighbours": k or n - 1,
        "signed": signed,
        "word": word,
        "wall_s": wall,
        "cpu_s": cpu,
        "client_s_total": app.seconds,
        "client_s_each": app.seconds / n,
        "server_s": wall - app.seconds,
        "bytes_up_per_client": out.bytes_up / n,
        "bytes_down_per_client": out.bytes_down / n,
        "plaintext_bytes_up_per_client": 4 * d,
        "plaintext_server_sum_s": plain,
    }


def allocating_keystream(seed: bytes, n: int, dtype=np.uint64):
    """The mask expansion as it was: fresh zero input, fresh output and a copy per call."""
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

    enc = Cipher(algorithms.ChaCha20(seed, b"\0" * 16), mode=None).encryptor()
    size = n * np.dtype(dtype).itemsize
    return np.frombuffer(enc.update(b"\0" * size), dtype=dtype).copy()


def compare_prg(n: int, d: int, repeats: int) -> dict:
    """SecAgg+ protocol CPU with the reused keystream buffer (64-bit words, and 32-bit
    words: ``privacy.secagg_word = 32``) against the allocating expansion as it was,
    interleaved (A B C A B C) in this process."""
    from fedgpt.privacy.secagg import crypto

    k = 2 * math.ceil(math.log2(n))
    reused, original = crypto._keystream, allocating_keystream
    arms = (("reused buffers", reused, 64), ("32-bit words", reused, 32),
            ("allocating", original, 64))  # fmt: skip
    runs: dict[str, list[dict]] = {name: [] for name, _, _ in arms}
    for _ in range(repeats):
        for name, fn, word in arms:
            crypto._keystream = fn
            try:
                runs[name].append(protocol(n, d, k, word=word))
            finally:
                crypto._keystream = reused
    keep = ("wall_s", "cpu_s", "bytes_up_per_client")
    med = {name: {m: float(np.median([r[m] for r in v])) for m in keep}
           for name, v in runs.items()}  # fmt: skip
    old = med["allocating"]
    return {
        "clients": n, "dim": d, "neighbours": k, "repeats": repeats, "median": med,
        "cpu_ratio": med["reused buffers"]["cpu_s"] / old["cpu_s"],
        "wall_ratio": med["reused buffers"]["wall_s"] / old["wall_s"],
        "cpu_ratio_32_bit": med["32-bit words"]["cpu_s"] / old["cpu_s"],
        "wall_ratio_32_bit": med["32-bit words"]["wall_s"] / old["wall_s"],
    }  # fmt: skip


def workload(n: int) -> dict:
    from fedgpt.build import build_client_app, build_server, prepare, secagg_identities
    from fedgpt.config import load_config

    base = [
        "federation.rounds=1",
        f"federation.min_clients={n}",
        "federation.fraction=0.001",
        "federation.eval_every=1000",
    ]
    out = {}
    for name, extra in [
        ("plaintext", []),
        (
            "secagg+",
            [
                'privacy.secure_aggregation="secagg"',
                f"privacy.secagg_neighbours={2 * math.ceil(math.log2(n))}",
            ],
        ),
        ("secagg", ['privacy.secure_aggregation="secagg"']),
    ]:
        cfg = load_config(None, base + extra)
        prep = prepare(cfg)
        ids = [c.client_id for c in prep.clients]
        identities = secagg_identities(cfg, ids)  # signed keys and survivor set, as a run
        app = build_client_app(cfg, prep, ids, identities=identities)
        registry = identities.public() if identities is not None else None
        server = build_server(cfg, prep, InProcessRuntime(app), ids, registry=registry)[0]
        server.cfg = cfg.model_copy(
            update={"federation": cfg.federation.model_copy(update={"rounds": 10**6})}
        )  # no evaluation in the timed round
        t = time.perf_counter()
        server.run_round(server.init_state(prep.init))
        out[name] = time.perf_counter() - t
    out["secagg+_overhead"] = out["secagg+"] / out["plaintext"] - 1
    out["secagg_overhead"] = out["secagg"] / out["plaintext"] - 1
    out["target_overhead_max"] = 0.5
    out["clients"] = n
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, nargs="+", default=[10, 50, 100])
    ap.add_argument("--dims", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument(
        "--complete-max",
        type=int,
        default=100,
        help="run the complete graph only up to this many clients",
    )
    ap.add_argument("--skip-workload", action="store_true")
    ap.add_argument(
        "--compare-prg", type=int, default=0, metavar="REPEATS",
        help="only: SecAgg+ at 100 clients x 1e6 with reused against allocating mask buffers",
    )  # fmt: skip
    ap.add_argument(
        "--unsigned", action="store_true", help="also the SecAgg+ rows without identities"
    )
    args = ap.parse_args()
    if args.compare_prg:
        r = compare_prg(100, 1_000_000, args.compare_prg)
        (RESULTS.parent / "secagg_prg.json").write_text(json.dumps(r, indent=2) + "\n")
        print(json.dumps(r, indent=2))
        return
    rows = []
    for n in args.clients:
        for d in args.dims:
            for k in [2 * math.ceil(math.log2(n)), 0]:
                if k == 0 and n > args.complete_max or (k and k >= n - 1):
                    continue
                for signed in [True, False] if (args.unsigned and k) else [True]:
                    r = protocol(n, d, k, signed)
                    rows.append(r)
                    print(
                        f"n={n:>3} d={d:>9,} neighbours={r['neighbours']:>3}"
                        f"{'' if signed else ' unsigned'}: wall "
                        f"{r['wall_s']:.2f} s (clients {r['client_s_each']:.3f} s each, server "
                        f"{r['server_s']:.2f} s); up "
                        f"{r['bytes_up_per_client'] / 2**20:.2f} MiB/client "
                        f"(plaintext {4 * d / 2**20:.2f})",
                        flush=True,
                    )
    result = {"protocol": rows}
    if not args.skip_workload:
        result["default_workload"] = w = workload(100)
        print(
            f"default workload, 100 clients: plaintext round {w['plaintext']:.2f} s, SecAgg+ "
            f"{w['secagg+']:.2f} s (+{100 * w['secagg+_overhead']:.0f} %), SecAgg "
            f"{w['secagg']:.2f} s (+{100 * w['secagg_overhead']:.0f} %); signed keys and "
            "survivor set included"
        )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2))
    print(f"written to {RESULTS}")


if __name__ == "__main__":
    main()
