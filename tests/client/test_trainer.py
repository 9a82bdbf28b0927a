"""The local trainer: deltas, determinism, FedProx, failures on non-finite values."""

import torch

from fedgpt.client.trainer import ClientData, Failure, Update, evaluate_tokens, local_update
from fedgpt.config import ClientConfig, ModelConfig
from fedgpt.federation.client_app import ClientApp
from fedgpt.models.build import build_char_gpt2
from fedgpt.models.params import bind_flat
from fedgpt.runtime import Message
from fedgpt.seeding import client_seed
from fedgpt.tasks.windows import eval_windows, sample_windows

TEXT = "To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer\n"


def tiny(seed=0):
    bundle = build_char_gpt2(ModelConfig(n_layer=2, n_embd=32, n_head=2, context=64), [TEXT], seed)
    return bundle, bind_flat(bundle.model)


def toks(bundle, text=TEXT * 4):
    return torch.from_numpy(bundle.codec.encode(text))


CFG = ClientConfig(local_steps=3, batch_size=4, seq_len=16, lr=1e-2)


def test_update_is_delta_of_trainable_weights_and_deterministic():
    bundle, fm = tiny()
    w0 = fm.flat.clone()
    u1 = local_update(fm, w0, toks(bundle), CFG, torch.Generator().manual_seed(5), "a", 1)
    trained = fm.flat.clone()
    u2 = local_update(fm, w0, toks(bundle), CFG, torch.Generator().manual_seed(5), "a", 1)
    assert isinstance(u1, Update) and isinstance(u2, Update)
    assert torch.equal(u1.delta, u2.delta)
    assert torch.allclose(u1.delta, trained - w0)
    assert u1.num_examples == toks(bundle).numel() - 1
    assert u1.metrics["steps"] == 3 and u1.metrics["update_norm"] > 0
    u3 = local_update(fm, w0, toks(bundle), CFG, torch.Generator().manual_seed(6), "a", 1)
    assert not torch.equal(u1.delta, u3.delta)


def test_fedprox_pulls_towards_global_weights():
    bundle, fm = tiny()
    w0 = fm.flat.clone()
    sgd = CFG.model_copy(update={"optimizer": "sgd", "lr": 0.5, "local_steps": 5})
    plain = local_update(fm, w0, toks(bundle), sgd, torch.Generator().manual_seed(1), "a", 1)
    prox = local_update(
        fm,
        w0,
        toks(bundle),
        sgd.model_copy(update={"prox_mu": 1.0}),
        torch.Generator().manual_seed(1),
        "a",
        1,
    )
    assert prox.metrics["update_norm"] < plain.metrics["update_norm"]


def test_grad_clip_bounds_each_sgd_step():
    bundle, fm = tiny()
    w0 = fm.flat.clone()
    cfg = CFG.model_copy(
        update={"optimizer": "sgd", "lr": 1.0, "local_steps": 1, "grad_clip": 0.01}
    )
    u = local_update(fm, w0, toks(bundle), cfg, torch.Generator().manual_seed(1), "a", 1)
    assert u.metrics["update_norm"] <= 0.01 + 1e-6


def test_non_finite_loss_is_a_failure_not_an_update():
    bundle, fm = tiny()
    w0 = fm.flat.clone()
    bad = w0.clone()
    bad[:10] = float("nan")
    out = local_update(fm, bad, toks(bundle), CFG, torch.Generator().manual_seed(1), "x", 3)
    assert isinstance(out, Failure) and "non-finite" in out.reason


def test_windows_cover_every_target_once():
    t = torch.arange(50)
    wins = eval_windows(t, 16)
    targets = torch.cat([w[:, 1:].reshape(-1) for w in wins])
    assert torch.equal(targets, torch.arange(1, 50))
    batch = sample_windows(t, 8, 16, torch.Generator().manual_seed(0))
    assert batch.shape == (8, 17) and torch.equal(
        batch[:, 1:] - batch[:, :-1], torch.ones(8, 16, dtype=torch.long)
    )


def test_evaluate_counts_tokens_and_caps():
    bundle, fm = tiny()
    t = toks(bundle)
    s, correct, n = evaluate_tokens(fm.model, t, 16)
    assert n == t.numel() - 1 and 0 <= correct <= n and s > 0
    assert evaluate_tokens(fm.model, t, 16, max_tokens=33)[2] == 32


def test_client_app_dispatch_and_seed_independence():
    bundle, fm = tiny()
    data = {"a": ClientData("a", toks(bundle), toks(bundle, TEXT))}
    app = ClientApp.build(fm, data, CFG)
    w = fm.flat.clone()
    reply = app("a", Message("train", {"round": 1, "seed": client_seed(0, 1, "a")}, {"weights": w}))
    assert reply.type == "train/result" and reply.tensors["delta"].shape == w.shape
    ev = app("a", Message("evaluate", {"round": 1}, {"weights": w}))
    assert ev.type == "evaluate/result" and ev.config["count"] == len(TEXT) - 1
    assert client_seed(0, 1, "a") != client_seed(0, 2, "a") != client_seed(1, 1, "a")


def test_kept_optimizer_state_stays_on_the_client_and_changes_the_next_update():
    bundle, fm = tiny()
    data = {"a": ClientData("a", toks(bundle), toks(bundle, TEXT))}
    w = fm.flat.clone()
    msg = Message("train", {"round": 2, "seed": 7}, {"weights": w})
    fresh = ClientApp.build(fm, data, CFG)
    keep = ClientApp.build(fm, data, CFG.model_copy(update={"keep_optimizer_state": True}))
    keep("a", Message("train", {"round": 1, "seed": 3}, {"weights": w}))
    memory = keep.algorithm.training.memory
    assert "exp_avg_sq" in memory["a"]["state"]["state"][0] and not fresh.algorithm.training.memory
    d_keep = keep("a", msg)
    d_fresh = fresh("a", msg)
    assert set(d_keep.tensors) == {"delta"}  # the state is not sent
    assert not torch.equal(d_keep.tensors["delta"], d_fresh.tensors["delta"])
