"""Multiparty (n-of-n threshold) CKKS with OpenFHE, measured the way benchmarks/he.py
measures FedGPT's shared-key CKKS; written to benchmarks/results/he_threshold.json.

The option weighed for "HE where no single party can read an update": the clients make
one joint public key (each adds its key share, ``MultipartyKeyGen``), encrypt under it,
the server adds the ciphertexts, and decryption needs a partial decryption from every
key holder (``MultipartyDecryptLead/Main``) fused by the server
(``MultipartyDecryptFusion``). No party, and no server colluding with fewer than all
clients, can decrypt alone.

OpenFHE's wheels import on CPython 3.10 and 3.12 only (not 3.11, FedGPT's default), so
this script runs under such an interpreter with ``pip install openfhe numpy``; it uses
nothing of FedGPT.

Usage: python3.10 benchmarks/he_threshold.py [--dim 1000000] [--clients 10]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).parent / "results" / "he_threshold.json"


def context(batch: int):
    import openfhe as fhe

    p = fhe.CCParamsCKKSRNS()
    p.SetMultiplicativeDepth(1)
    p.SetScalingModSize(40)
    p.SetBatchSize(batch)
    p.SetSecurityLevel(fhe.SecurityLevel.HEStd_128_classic)
    cc = fhe.GenCryptoContext(p)
    for feature in (fhe.PKE, fhe.KEYSWITCH, fhe.LEVELEDSHE, fhe.ADVANCEDSHE, fhe.MULTIPARTY):
        cc.Enable(feature)
    return cc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dim", type=int, default=1_000_000)
    ap.add_argument("--clients", type=int, default=10)
    ap.add_argument("--batch", type=int, default=8192)
    args = ap.parse_args()
    d, n, batch = args.dim, args.clients, args.batch
    cc = context(batch)
    t = time.perf_counter()
    keys = [cc.KeyGen()]
    for _ in range(n - 1):  # each client adds its share to the joint public key
        keys.append(cc.MultipartyKeyGen(keys[-1].publicKey))
    keygen_s = time.perf_counter() - t
    joint = keys[-1].publicKey
    rng = np.random.default_rng(0)
    xs = [rng.normal(0, 0.01, d) for _ in range(n)]
    chunks = range(0, d, batch)

    t = time.perf_counter()
    cts = [[cc.Encrypt(joint, cc.MakeCKKSPackedPlaintext(x[i : i + batch].tolist()))
            for i in chunks] for x in xs]  # fmt: skip
    encrypt_s = (time.perf_counter() - t) / n
    t = time.perf_counter()
    total = list(cts[0])
    for other in cts[1:]:
        total = [cc.EvalAdd(a, b) for a, b in zip(total, other, strict=True)]
    server_s = time.perf_counter() - t
    t = time.perf_counter()
    partials = [cc.MultipartyDecryptLead(total, keys[0].secretKey)]
    partials += [cc.MultipartyDecryptMain(total, k.secretKey) for k in keys[1:]]
    partial_s = (time.perf_counter() - t) / n
    t = time.perf_counter()
    out = []
    for j in range(len(total)):
        pt = cc.MultipartyDecryptFusion([p[j] for p in partials])
        pt.SetLength(min(batch, d - j * batch))
        out.extend(pt.GetRealPackedValue())
    fusion_s = time.perf_counter() - t
    want = np.sum(xs, axis=0)
    err = float(np.linalg.norm(np.array(out) - want) / np.linalg.norm(want))
    result = {
        "dim": d, "clients": n, "batch": batch, "ciphertexts_per_client": len(total),
        "joint_keygen_s": keygen_s, "client_encrypt_s": encrypt_s,
        "client_partial_decrypt_s": partial_s, "server_sum_s": server_s,
        "server_fusion_s": fusion_s, "relative_error": err,
    }  # fmt: skip
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
