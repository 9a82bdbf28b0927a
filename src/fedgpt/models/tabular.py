"""The classical reference models on a record's raw features: logistic regression and a
small MLP, as plain ``torch.nn`` modules that every FedGPT strategy federates like any
other model (their weights are the flat trainable vector).

* ``model.family = "logistic"``: z = W x + b over K classes (multinomial logistic
  regression; for two classes the softmax equals the logistic model, Hastie et al. 2009,
  "The Elements of Statistical Learning", §4.4, eq. 4.17-4.18).
* ``model.family = "mlp"``: z = W₂ ReLU(W₁ x + b₁) + b₂ with ``model.hidden`` units.

Saved as ``model.safetensors`` and a ``config.json`` naming the family and the sizes.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

FAMILIES = ("logistic", "mlp")


@dataclass(frozen=True)
class TabularConfig:
    family: str
    n_features: int
    n_classes: int
    hidden: int = 0
    model_type: str = "fedgpt-tabular"


class TabularModel(nn.Module):
    """Class logits (B, K) of feature rows (B, d)."""

    def __init__(self, config: TabularConfig):
        super().__init__()
        self.config = config
        d, k, h = config.n_features, config.n_classes, config.hidden
        if config.family == "logistic":
            self.net = nn.Linear(d, k)
        else:
            self.net = nn.Sequential(nn.Linear(d, h), nn.ReLU(), nn.Linear(h, k))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features)


def build_tabular(
    family: str, n_features: int, n_classes: int, hidden: int, seed: int
) -> TabularModel:
    """A fresh model initialised from ``seed`` (PyTorch's default initialisation)."""
    cfg = TabularConfig(family, n_features, n_classes, hidden if family == "mlp" else 0)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return TabularModel(cfg)


def save_tabular(model: TabularModel, out: Path) -> None:
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().float().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, out / "model.safetensors")
    (out / "config.json").write_text(json.dumps(asdict(model.config), indent=2) + "\n")


def load_tabular(folder: Path) -> TabularModel:
    from safetensors.torch import load_file

    cfg = TabularConfig(**json.loads((folder / "config.json").read_text()))
    model = TabularModel(cfg)
    model.load_state_dict(load_file(folder / "model.safetensors"))
    return model
