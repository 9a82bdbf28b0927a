"""Pieces of the Flower runtime without Flower processes: the message codec is exact, the
client state survives a save/restore between every message, the run configuration and
the Flower App project are what they say."""

from __future__ import annotations

import sys

import pytest

pytest.importorskip("flwr")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from fedgpt.errors import ConfigError  # noqa: E402
from fedgpt.runtime import Failure, InProcessRuntime, Message  # noqa: E402
from fedgpt.runtime.flower.codec import CodecError, decode_batch, roundtrip  # noqa: E402
from fedgpt.runtime.flower.runtime import flower_type  # noqa: E402
from fedgpt.runtime.flower.settings import FlowerSettings, split_overrides  # noqa: E402


def bits(t: torch.Tensor) -> bytes:
    return t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def test_codec_round_trip_is_bit_exact_for_every_dtype():
    gen = torch.Generator().manual_seed(0)
    tensors = {
        "f32": torch.randn(1000, generator=gen),
        "f64": torch.randn(3, 4, generator=gen, dtype=torch.float64),
        "f16": torch.randn(7, generator=gen).half(),
        "bf16": torch.randn(2, 5, generator=gen).to(torch.bfloat16),
        "nan": torch.tensor([float("nan"), float("inf"), -0.0, 1e-45]),
        "i64": torch.arange(-5, 5),
        "u8": torch.arange(256, dtype=torch.uint8),
        "bool": torch.tensor([True, False, True]),
        "scalar": torch.tensor(2.5),
        "empty": torch.empty(0, 3),
        "strided": torch.arange(12.0).reshape(3, 4).t(),
    }
    config = {
        "round": 3,
        "seed": 2**62 + 1,
        "metrics": {"train_loss": 0.1 + 0.2, "steps": 2.0},
        "index": {"lear/ALB": 1, "lear/COR": 2},
        "b": {"u": (1, "ff")},
        "alive": ["a", "b"],
        "numpy": np.float32(0.25),
    }
    blobs = {"y": [b"\x00\x01", b""], "none": [], "pk:lear/ALB": [b"k" * 1000]}
    msg = Message("secagg/shares_out", config, tensors, blobs)
    [(cid, got), (cid2, fail)] = roundtrip([("lear/ALB", msg), ("lear/COR", Failure("gone"))])
    assert (cid, cid2) == ("lear/ALB", "lear/COR")
    assert fail == Failure("gone")
    assert got.type == msg.type and got.blobs == blobs
    for k, t in tensors.items():
        g = got.tensors[k]
        assert g.dtype == t.dtype and g.shape == t.shape, k
        assert bits(g) == bits(t), k
    assert got.config["b"] == {"u": [1, "ff"]}  # tuples travel as lists
    assert got.config["seed"] == config["seed"] and got.config["numpy"] == 0.25
    assert got.config["metrics"]["train_loss"] == 0.1 + 0.2
    assert got.nbytes == msg.nbytes


def test_codec_refuses_what_is_not_a_fedgpt_batch():
    from flwr.app import ConfigRecord, RecordDict

    with pytest.raises(CodecError, match="not a FedGPT batch"):
        decode_batch(RecordDict({"x": ConfigRecord({"a": 1})}))
    with pytest.raises(TypeError, match="not JSON-able"):
        roundtrip([("c", Message("train", {"w": torch.zeros(1)}))])


def test_flower_message_types():
    assert flower_type({"train"}) == "train"
    assert flower_type({"secagg/train"}) == "train"
    assert flower_type({"evaluate"}) == "evaluate"
    assert flower_type({"secagg/share"}) == "query"
    assert flower_type({"train", "evaluate"}) == "query"


def test_overrides_split_on_top_level_semicolons_only():
    text = "federation.rounds=2; data.plays=['lear'; 'x']; name='a;b' ;seed=3;"
    assert split_overrides(text) == [
        "federation.rounds=2",
        "data.plays=['lear'; 'x']",
        "name='a;b'",
        "seed=3",
    ]


def test_run_config_is_checked(tmp_path):
    s = FlowerSettings.from_run_config({"overrides": "federation.rounds=1; seed=4"})
    cfg = s.fedgpt_config()
    assert cfg.federation.rounds == 1 and cfg.seed == 4
    with pytest.raises(ConfigError, match="unknown Flower run-config key"):
        FlowerSettings.from_run_config({"rounds": 3})
    with pytest.raises(ConfigError, match="min-nodes must be >= 1"):
        FlowerSettings.from_run_config({"min-nodes": 0})
    with pytest.raises(ConfigError, match="does not exist"):
        FlowerSettings.from_run_config({"config-path": str(tmp_path / "no.toml")}).fedgpt_config()


def test_app_project_matches_the_repository_folder(tmp_path):
    from pathlib import Path

    import fedgpt.runtime.flower as pkg
    from fedgpt.runtime.flower.__main__ import main
    from fedgpt.runtime.flower.app_project import PYPROJECT

    folder = Path(pkg.__file__).parent / "app"
    assert (folder / "pyproject.toml").read_text() == PYPROJECT
    assert main(["app", str(tmp_path / "app")]) == 0
    assert (tmp_path / "app" / "pyproject.toml").read_text() == PYPROJECT
    if sys.version_info >= (3, 11):
        import tomllib

        app = tomllib.loads(PYPROJECT)["tool"]["flwr"]["app"]
        from fedgpt.runtime.flower.settings import DEFAULTS

        assert app["config"] == DEFAULTS
        assert app["components"]["serverapp"] == "fedgpt.runtime.flower.server_app:app"
        assert app["components"]["clientapp"] == "fedgpt.runtime.flower.client_app:app"


TEXT = "Friends, Romans, countrymen, lend me your ears;\nI come to bury Caesar.\n"


@pytest.mark.parametrize("post_quantum", [False, True])
def test_client_state_survives_a_fresh_process_per_message(post_quantum):
    """SecAgg over a runtime that rebuilds the ClientApp for every message from the saved
    state (as Flower does) gives exactly the sum of the in-memory run."""
    from fedgpt.client.trainer import ClientData
    from fedgpt.config import ClientConfig, ModelConfig
    from fedgpt.federation.client_app import ClientApp
    from fedgpt.models.build import build_char_gpt2
    from fedgpt.models.params import bind_flat
    from fedgpt.privacy.secagg.quantize import bits_for
    from fedgpt.privacy.secagg.server import run_round

    b = build_char_gpt2(ModelConfig(n_layer=2, n_embd=32, n_head=2, context=64), [TEXT], 0)
    fm = bind_flat(b.model)
    data = {}
    for i in range(5):
        t = torch.from_numpy(b.codec.encode(TEXT * (i + 2)))
        data[f"c{i}"] = ClientData(f"c{i}", t, t[:30])
    ccfg = ClientConfig(local_steps=1, batch_size=2, seq_len=16, keep_optimizer_state=True)
    ids = list(data)
    init = fm.flat.clone()

    def go(runtime):
        return run_round(
            runtime, ids, 1, {c: i for i, c in enumerate(ids)}, init.clone(), init.numel(),
            value_range=1.0, bits=bits_for(len(ids)), weight_cap=1e9, threshold_fraction=0.5,
            k=0, graph_seed=0, post_quantum=post_quantum,
        )  # fmt: skip

    plain = go(InProcessRuntime(ClientApp.build(fm, data, ccfg)))
    saved: dict[str, bytes] = {}

    def fresh_each_time(cid, msg):
        app = ClientApp.build(fm, data, ccfg)
        app.load_state_dict(saved)
        reply = app(cid, msg)
        saved.update(app.state_dict())
        return reply

    flower_like = go(InProcessRuntime(fresh_each_time))
    assert plain.failure is None and flower_like.failure is None
    assert torch.equal(plain.weighted_sum, flower_like.weighted_sum)
    restored = ClientApp.build(fm, data, ccfg)
    restored.load_state_dict(saved)
    assert set(restored.algorithm.training.memory) == set(ids)
    assert restored.secure["secagg"].rounds == {}  # the unmask step ends the round's secrets


def test_weights_several_clients_share_are_sent_once_and_held_once_on_the_node():
    """The round's weights go to every client of a node: they are encoded once on the
    server, carried once (Flower keeps one object per content), and decoded into one
    tensor on the node; replies decode into tensors of their own."""
    from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects
    from flwr.supercore.inflatable.inflatable_utils import inflate_object_from_contents

    from fedgpt.runtime.flower.codec import encode_batch

    w = torch.randn(4000, generator=torch.Generator().manual_seed(1))
    items = [(c, Message("train", {"round": 1}, {"weights": w})) for c in ("a", "b", "c")]
    rd = encode_batch(items)
    arrays = [rd[f"{i}.tensors"]["weights"] for i in range(3)]
    assert arrays[0].data is arrays[1].data is arrays[2].data  # encoded once
    contents = {oid: obj.deflate() for oid, obj in get_all_nested_objects(rd).items()}
    assert sum(len(c) for c in contents.values()) < 1.2 * 4 * w.numel()  # once, not 3 times
    again = dict(contents)
    node = decode_batch(inflate_object_from_contents(rd.object_id, contents), shared=True)
    assert node[0][1].tensors["weights"] is node[2][1].tensors["weights"]
    assert torch.equal(node[0][1].tensors["weights"], w)
    server = decode_batch(inflate_object_from_contents(rd.object_id, again))
    a, b = server[0][1].tensors["weights"], server[1][1].tensors["weights"]
    assert a is not b and a.data_ptr() != b.data_ptr() and torch.equal(a, b)
