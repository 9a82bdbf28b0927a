"""CKKS aggregation cost, written to benchmarks/results/he.json.

For d parameters and n clients (default 1e6 and 10): per-client encrypt and decrypt
seconds, server weighted-sum seconds, ciphertext bytes per value, and the plaintext
equivalents (weighted average of float32 vectors) in the same run; and the verified
decryption every run does (fedgpt.privacy.ckks_guard): the key holder checks the n
ciphertext signatures and the set's, adds the n ciphertexts itself and decrypts, after
downloading them (bytes reported).
Targets: server aggregation of 1e6 x 10 <= 2 s; per-client encrypt + decrypt of 1e6 <= 3 s.

Usage: python benchmarks/he.py [--dim 1000000] [--clients 10]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from fedgpt.aggregation import weighted_average
from fedgpt.privacy.ckks import CkksClient, CkksServer, add, make_keys
from fedgpt.privacy.ckks_guard import DecryptGuard, members_statement
from fedgpt.privacy.secagg.identity import Identities

RESULTS = Path(__file__).parent / "results" / "he.json"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dim", type=int, default=1_000_000)
    ap.add_argument("--clients", type=int, default=10)
    args = ap.parse_args()
    d, n = args.dim, args.clients
    secret, public = make_keys()
    client, server = CkksClient(secret), CkksServer(public)
    g = torch.Generator().manual_seed(0)
    deltas = [torch.randn(d, generator=g) * 0.01 for _ in range(n)]
    weights = torch.arange(1, n + 1, dtype=torch.float64)

    t = time.perf_counter()  # each client encrypts n_k * delta_k; the server only adds
    cts = [client.encrypt(float(wk) * x) for wk, x in zip(weights, deltas, strict=True)]
    encrypt_s = (time.perf_counter() - t) / n
    t = time.perf_counter()
    agg = server.sum(cts)
    server_s = time.perf_counter() - t
    t = time.perf_counter()
    out = client.decrypt(agg, d) / float(weights.sum())
    decrypt_s = time.perf_counter() - t

    ids = [f"c{i}" for i in range(n)]  # the verified decryption of the same sum
    who = Identities.generate(ids)
    guard = DecryptGuard(n, 0.5, who)
    ct_sigs = {c: guard.sign_ciphertexts(c, 1, ct) for c, ct in zip(ids, cts, strict=True)}
    set_sigs = {c: who.sign(c, members_statement(1, ids)) for c in ids}
    guard.sign_members(ids[0], 1, ids)
    t = time.perf_counter()
    parts = guard.check_decrypt(ids[0], 1, ids, dict(zip(ids, cts, strict=True)), ct_sigs, set_sigs)
    verified = client.decrypt(add(client.ctx, parts), d) / float(weights.sum())
    verified_s = time.perf_counter() - t
    request_bytes = sum(len(c) for ct in cts for c in ct)

    t = time.perf_counter()
    plain = weighted_average(torch.stack(deltas), weights)
    plain_s = time.perf_counter() - t
    err = float((out - plain).norm() / plain.norm())
    bytes_per_value = sum(len(c) for c in cts[0]) / d
    result = {
        "dim": d,
        "clients": n,
        "ciphertexts_per_client": len(cts[0]),
        "client_encrypt_s": encrypt_s,
        "client_decrypt_s": decrypt_s,
        "client_encrypt_plus_decrypt_s": encrypt_s + decrypt_s,
        "server_sum_s": server_s,
        "plaintext_weighted_average_s": plain_s,
        "server_ratio_to_plaintext": server_s / plain_s,
        "bytes_per_value": bytes_per_value,
        "plaintext_bytes_per_value": 4,
        "relative_error": err,
        "verified_decrypt_s": verified_s,
        "verified_decrypt_request_bytes": request_bytes,
        "verified_relative_error": float((verified - plain).norm() / plain.norm()),
        "targets": {"server_sum_s": 2.0, "client_encrypt_plus_decrypt_s": 3.0},
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2))
    print(
        f"d={d:,} n={n}: client encrypt {encrypt_s:.2f} s + decrypt {decrypt_s:.2f} s "
        f"(target <= 3 s); server sum of ciphertexts {server_s:.2f} s (target <= 2 s; plaintext "
        f"{plain_s * 1e3:.1f} ms, {server_s / plain_s:.0f}x); {bytes_per_value:.1f} bytes/value "
        f"(plaintext 4); relative error {err:.2e}"
    )
    print(
        f"verified decryption (signatures, the key holder's own sum, decrypt): {verified_s:.2f} s "
        f"after a {request_bytes / 2**20:.0f} MiB download"
    )
    print(f"written to {RESULTS}")


if __name__ == "__main__":
    main()
