"""Shared fixtures: a tiny configuration (2 layers, width 32, a few steps) and a tiny
Hugging Face checkpoint saved to disk and loaded back (never from a hub)."""

from __future__ import annotations

import os
import tempfile

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# the per-user key store and the clients' receipts live in a folder of the test session
os.environ["FEDGPT_HOME"] = tempfile.mkdtemp(prefix="fedgpt-home-")
torch.set_num_threads(1)

TINY = [
    'data.plays=["lear"]',
    "data.min_chars=4000",
    "model.n_layer=2",
    "model.n_embd=32",
    "model.n_head=2",
    "model.context=64",
    "client.local_steps=2",
    "client.batch_size=4",
    "client.seq_len=32",
    "federation.rounds=2",
    "federation.fraction=0.1",
    "federation.min_clients=2",
    "federation.eval_every=1",
    "federation.eval_max_chars=400",
    "baselines.local_clients=2",
    "baselines.local_max_steps=4",
    "baselines.local_eval_every=2",
]


@pytest.fixture
def tiny_overrides(tmp_path) -> list[str]:
    return [*TINY, f"out_dir={str(tmp_path / 'runs')!r}".replace("'", '"')]


@pytest.fixture
def tiny_cfg(tiny_overrides):
    from fedgpt.config import load_config

    return load_config(None, tiny_overrides)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """A 2-layer width-32 GPT-2 with a character tokenizer, saved with save_pretrained."""
    from fedgpt.config import ModelConfig
    from fedgpt.models.build import build_char_gpt2, save_model

    cfg = ModelConfig(n_layer=2, n_embd=32, n_head=2, context=64)
    text = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ .,;:!?'\n-"
    bundle = build_char_gpt2(cfg, [text], seed=3)
    return save_model(bundle, tmp_path_factory.mktemp("ckpt") / "tiny")


def with_identities(overrides: list[str], folder) -> list[str]:
    """``overrides`` plus, under SecAgg or CKKS, ``privacy.secagg_identities`` naming a folder of
    fresh identities for the run's clients (as ``fedgpt keys secagg`` writes it): what
    every node of a Flower run needs."""
    if not any("secure_aggregation" in o and ("secagg" in o or "ckks" in o) for o in overrides):
        return list(overrides)
    from fedgpt.build import load_clients, load_run_config
    from fedgpt.privacy.secagg.identity import Identities

    ids = [c.client_id for c in load_clients(load_run_config(None, list(overrides)))]
    Identities.generate(ids).write(folder)
    return [*overrides, f'privacy.secagg_identities="{folder}"']


CAESAR = "Friends, Romans, countrymen, lend me your ears;\nI come to bury Caesar.\n"


def caesar_clients(n: int):
    """A tiny character model and ``n`` clients c0..c{n-1} holding 2..n+1 copies of one
    speech (its first 30 tokens as test text): (bound flat model, {client: ClientData})."""
    from fedgpt.client.trainer import ClientData
    from fedgpt.config import ModelConfig
    from fedgpt.models.build import build_char_gpt2
    from fedgpt.models.params import bind_flat

    b = build_char_gpt2(ModelConfig(n_layer=2, n_embd=32, n_head=2, context=64), [CAESAR], 0)
    data = {}
    for i in range(n):
        t = torch.from_numpy(b.codec.encode(CAESAR * (i + 2)))
        data[f"c{i}"] = ClientData(f"c{i}", t, t[:30])
    return bind_flat(b.model), data


def kill_in_round(run_round, n: int, mid_round: bool = False):
    """``FederatedServer.run_round`` that raises KeyboardInterrupt in the n-th call: at its
    start, or (``mid_round``) after the round ran, before anything of it is saved."""
    calls = {"n": 0}

    def dies(self, state):
        calls["n"] += 1
        if calls["n"] == n and not mid_round:
            raise KeyboardInterrupt("server killed")
        result = run_round(self, state)
        if calls["n"] == n:
            raise KeyboardInterrupt("server killed mid-round")
        return result

    return dies
