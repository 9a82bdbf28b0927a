"""Golden runs: short tiny-model federations, one per configuration the compatibility
matrix accepts (tests/test_compatibility.py), whose final weights are recorded in
``golden.json`` so that a change to the code that moves them shows up.

``python tests/golden/record.py`` (re)records them; ``tests/test_golden.py`` compares.
"""

from __future__ import annotations

import base64
import hashlib
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from conftest import TINY  # noqa: E402
from test_compatibility import COMBOS, refused, sets  # noqa: E402

GOLDEN = HERE / "golden.json"
STRIDE = 97  # the recorded sample: every 97th weight, for max |Δ| where bits may differ

BASE = [
    *(x for x in TINY if not x.startswith(("federation.eval_every", "federation.min_clients"))),
    "data.max_clients=6",
    "federation.min_clients=4",
    "federation.eval_every=2",
    "federation.distill_windows=4",
    "baselines.enabled=false",
    "runtime.threads=1",
    "privacy.reproducible_noise=true",
]


def name(combo) -> str:
    agg, mode, secure, distill, tiers, hybrid = combo
    return "-".join(
        [agg, mode, secure, distill, *(["tiers"] if tiers else [])] + (["hybrid"] if hybrid else [])
    )


ACCEPTED = {name(c): c for c in COMBOS if not refused(*c)}

# Outside the in-process bit-equality: CKKS decryption is approximate and its encryption
# randomness comes from the OS; server steps after it (hybrid aggregation's Adam steps)
# amplify the difference (two runs of the same code differ by up to ~1.5e-4).
APPROXIMATE = {n for n, c in ACCEPTED.items() if c[2] == "ckks"}

# What CI runs (every value of every axis at least once); the rest with FEDGPT_GOLDEN=all.
CI = [
    "fedavg-none-none-none",
    "fedavg-none-none-none-tiers",
    "attention-none-none-feddf-tiers-hybrid",
    "median-local_dp-none-none",
    "trimmed_mean-none-none-feddf",
    "krum-dp_sgd-none-none-hybrid",
    "multi_krum-none-none-none",
    "norm_bound-none-none-none",
    "fedatt-none-none-none",
    "fedavg-central_dp-none-none",
    "fedavg-local_dp-secagg-none",
    "fedavg-distributed_dp-secagg-none",
    "fedavg-none-ckks-none",
    "fedavg-none-none-fedmd",
    "fedavg-none-none-feddf-hybrid",
]


def overrides(case: str, out_dir: Path) -> list[str]:
    # recorded with federation.attention_windows = 4, since the learned attention's own
    # setting {kind = "attention", windows = 4}
    own = [
        'federation.aggregator={kind = "attention", windows = 4}'
        if s == 'federation.aggregator="attention"'
        else s
        for s in sets(*ACCEPTED[case])
    ]
    return [*BASE, *own, f'out_dir="{out_dir}"', f'name="{case}"']


def final_weights(run_dir: Path) -> torch.Tensor:
    from safetensors.torch import load_file

    last = sorted((run_dir / "checkpoints").glob("round_*"))[-1]
    return load_file(last / "weights.safetensors")["weights"]


def fingerprint(w: torch.Tensor) -> dict:
    sample = w.contiguous()[::STRIDE].clone().numpy().astype("<f4").tobytes()
    return {
        "sha256": hashlib.sha256(w.contiguous().numpy().astype("<f4").tobytes()).hexdigest(),
        "numel": w.numel(),
        "sample": base64.b64encode(sample).decode(),
    }


def sample_of(entry: dict) -> torch.Tensor:
    import numpy as np

    raw = np.frombuffer(base64.b64decode(entry["sample"]), dtype="<f4").copy()
    return torch.from_numpy(raw)


def run_in_process(case: str, tmp: Path) -> torch.Tensor:
    from fedgpt.config import load_config
    from fedgpt.experiment import run_experiment

    cfg = load_config(None, overrides(case, tmp))
    run_experiment(cfg, tmp / case)
    return final_weights(tmp / case)
