"""FedAtt against a two-client case computed by hand."""

import json
import math

import torch

from fedgpt.aggregation.fedatt import fedatt, layer_ids
from fedgpt.config import load_config
from fedgpt.experiment import run_experiment
from fedgpt.models.params import ParamSpec


def test_two_clients_by_hand():
    # layer A has 2 elements, layer B one
    spec = ParamSpec(("A", "B"), ((2,), (1,)), (0, 2), 3)
    ids = layer_ids(spec)
    assert ids.tolist() == [0, 0, 1]
    deltas = torch.tensor([[3.0, 4.0, 0.0], [0.0, 0.0, 2.0]])
    # s^A = [5, 0] -> alpha^A = [e^5, 1] / (e^5 + 1); s^B = [0, 2] -> [1, e^2] / (1 + e^2)
    a_a = math.exp(5) / (math.exp(5) + 1)
    a_b = math.exp(2) / (1 + math.exp(2))
    out, alpha = fedatt(deltas, ids, 2, step=0.5)
    assert torch.allclose(
        alpha, torch.tensor([[a_a, 1 - a_b], [1 - a_a, a_b]], dtype=torch.float64)
    )
    want = 0.5 * torch.tensor([a_a * 3, a_a * 4, a_b * 2])
    assert torch.allclose(out, want)


def test_fedatt_run_logs_attention(tiny_overrides, tmp_path):
    cfg = load_config(
        None,
        [
            *tiny_overrides,
            "baselines.enabled=false",
            "federation.rounds=1",
            'federation.aggregator="fedatt"',
            "federation.min_clients=3",
        ],
    )
    run_experiment(cfg, tmp_path / "r")
    row = json.loads((tmp_path / "r/metrics.jsonl").read_text().splitlines()[0])
    assert set(row["attention"]) == set(row["participants"])
    assert abs(sum(row["attention"].values()) - 1.0) < 1e-6  # softmax over clients, per layer
    assert (tmp_path / "r/plots/attention.png").is_file()
