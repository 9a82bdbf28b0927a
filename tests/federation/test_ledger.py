"""The run ledger (federation.ledger): a tiny run verifies; every flipped byte, deleted,
swapped, inserted or forged entry, every altered model, checkpoint or config file is
found, naming the entry; a resumed run continues the chain; a LoRA run verifies too."""

import json
import shutil
import stat

import numpy as np
import pytest
import torch
from conftest import TINY
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from safetensors.torch import load_file
from typer.testing import CliRunner

from fedgpt.cli.main import app
from fedgpt.config import load_config
from fedgpt.errors import RunError
from fedgpt.experiment import Hooks, run_experiment
from fedgpt.federation.ledger import (
    LEDGER,
    canonical,
    payload_hash,
    sha256_hex,
    sign,
    weights_hash,
)
from fedgpt.federation.ledger_keys import fedgpt_home
from fedgpt.federation.verify import verify_run
from fedgpt.runtime import Message

runner = CliRunner()


def config(tmp, *extra):
    return load_config(
        None,
        [*TINY, "baselines.enabled=false", f'out_dir="{tmp}"', *extra],
    )


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A finished two-round run (kept pristine; tests mutate copies)."""
    out = tmp_path_factory.mktemp("ledger") / "run"
    run_experiment(config(out.parent), out)
    return out


def lines_of(run_dir):
    return (run_dir / LEDGER).read_bytes().split(b"\n")[:-1]


def write_lines(run_dir, lines):
    (run_dir / LEDGER).write_bytes(b"".join(x + b"\n" for x in lines))


def test_tiny_run_verifies_and_records_each_round(run):
    res = runner.invoke(app, ["verify", str(run)])
    assert res.exit_code == 0, res.output
    out = res.output.strip().splitlines()
    assert out[-1].startswith("OK:") and "2 rounds" in out[-1] and "NOT pinned" in out[-1]
    assert [x for x in out[:-1] if not x.startswith("note: ")] == []
    entries = [json.loads(x) for x in lines_of(run)]
    assert [e["kind"] for e in entries] == ["header", "round", "round", "model", "final"]
    assert entries[0]["prev"] == "0" * 64
    # the signing key is outside the run folder, in the per-user store, mode 0600
    assert not list(run.rglob("*key.pem")) or [p.name for p in run.rglob("*key.pem")] == [
        "ledger_public_key.pem"
    ]
    store = fedgpt_home() / "keys/ledger_key.pem"
    assert stat.S_IMODE(store.stat().st_mode) == 0o600
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    for e, row in zip(entries[1:3], rows, strict=True):
        assert e["round"] == row["round"] and e["participants"] == row["participants"]
        assert set(e["updates"]) == set(row["participants"]) and e["epsilon"] is None
        assert e["start"] <= e["end"] and e["end"].endswith("Z")
    final = load_file(run / "checkpoints/round_000002/weights.safetensors")["weights"]
    assert entries[2]["global_weights"] == weights_hash(final) == entries[3]["weights"]
    assert entries[0]["config_hash"] == sha256_hex((run / "config.toml").read_bytes())


def test_payload_hash_covers_name_dtype_shape_bytes_and_blobs():
    t = torch.arange(6, dtype=torch.float32)
    base = payload_hash(Message("m", {}, {"delta": t}))
    assert base == payload_hash(Message("m", {"other": 1}, {"delta": t.clone()}))
    for changed in (
        {"delta": t.reshape(2, 3)},
        {"delta": t.double()},
        {"d": t},
        {"delta": t + torch.tensor([0, 0, 0, 0, 0, 1e-6])},
    ):
        assert payload_hash(Message("m", {}, changed)) != base
    blob = payload_hash(Message("m", {}, {}, {"y": [b"ab", b"c"]}))
    assert blob != payload_hash(Message("m", {}, {}, {"y": [b"a", b"bc"]}))


def mutated(run, tmp_path, lines):
    d = tmp_path / "m"
    if not d.exists():
        shutil.copytree(run, d)
    write_lines(d, lines)
    return verify_run(d, check_model=False)


def test_every_flipped_byte_is_detected_at_its_entry(run, tmp_path):
    lines = lines_of(run)
    gen = np.random.default_rng(1234)
    d = tmp_path / "m"
    shutil.copytree(run, d)
    tried = 0
    for i, line in enumerate(lines):
        raw = line + b"\n"  # the newline belongs to the entry too
        positions = {0, len(raw) - 1, *gen.choice(len(raw), size=10, replace=False).tolist()}
        for pos in sorted(positions):
            flipped = bytearray(raw)
            flipped[pos] ^= int(gen.integers(1, 256))
            before = b"".join(x + b"\n" for x in lines[:i])
            after = b"".join(x + b"\n" for x in lines[i + 1 :])
            (d / LEDGER).write_bytes(before + bytes(flipped) + after)
            v = verify_run(d, check_model=False)
            tried += 1
            assert not v.ok, (i, pos)
            assert any(p.startswith(f"entry {i + 1}:") for p in v.problems), (i, pos, v.problems)
    assert tried >= 4 * 10


def test_deleted_swapped_inserted_and_forged_entries_are_detected(run, tmp_path):
    lines = lines_of(run)
    n = len(lines)
    cases = {}
    for i in range(n):
        cases[f"delete {i + 1}"] = lines[:i] + lines[i + 1 :]
        cases[f"duplicate {i + 1}"] = lines[: i + 1] + [lines[i]] + lines[i + 1 :]
        if i < n - 1:
            cases[f"move {i + 1} to the end"] = lines[:i] + lines[i + 1 :] + [lines[i]]
    for i in range(n):
        for j in range(i + 1, n):
            swapped = list(lines)
            swapped[i], swapped[j] = swapped[j], swapped[i]
            cases[f"swap {i + 1} {j + 1}"] = swapped
    # a forged round, correctly chained, signed with another key
    entry = json.loads(lines[2])
    forged = sign(
        {**entry, "prev": sha256_hex(lines[1]), "global_weights": "0" * 64},
        Ed25519PrivateKey.generate(),
    )
    cases["forged entry 3"] = lines[:2] + [forged] + lines[3:]
    # a genuine entry with an edited field and its old signature
    edited = canonical({**json.loads(lines[1]), "participants": []})
    cases["edited entry 2"] = lines[:1] + [edited] + lines[2:]
    cases["emptied"] = []
    for name, mutation in cases.items():
        v = mutated(run, tmp_path, mutation)
        assert not v.ok, name
    detected = sum(not mutated(run, tmp_path, m).ok for m in cases.values())
    assert detected == len(cases)
    v = mutated(run, tmp_path, cases["forged entry 3"])
    assert "entry 3: signature does not verify" in v.problems
    v = mutated(run, tmp_path, cases["swap 2 3"])
    assert any(p.startswith("entry 2: round 2, expected 1") for p in v.problems)


def flip_data_bytes(path, gen, count):
    """Flip ``count`` bytes of a safetensors file's tensor data (after its header)."""
    raw = bytearray(path.read_bytes())
    start = 8 + int.from_bytes(raw[:8], "little")
    for pos in gen.choice(np.arange(start, len(raw)), size=count, replace=False):
        raw[pos] ^= 0x40
    path.write_bytes(bytes(raw))


def test_altered_model_checkpoint_and_config_are_detected(run, tmp_path):
    gen = np.random.default_rng(7)
    found = 0
    targets = [
        ("model/model.safetensors", "model"),
        ("checkpoints/round_000002/weights.safetensors", "checkpoint"),
        ("checkpoints/round_000002/server_state.safetensors", "checkpoint"),
    ]
    for rel, what in targets:
        for k in range(3):
            d = tmp_path / f"{what}{k}-{rel.count('server')}"
            shutil.copytree(run, d)
            if "server_state" in rel:  # flip a byte of the optimiser state, not the RNG state
                state = load_file(d / rel)
                key = next(x for x in state if x != "torch_rng_state")
                state[key] = state[key].clone()
                state[key].view(-1)[int(gen.integers(state[key].numel()))] += 1.0
                from safetensors.torch import save_file

                save_file(state, d / rel)
            else:
                flip_data_bytes(d / rel, gen, 1)
            v = verify_run(d)
            assert not v.ok and any(p.startswith(what) for p in v.problems), (rel, v.problems)
            found += 1
    d = tmp_path / "cfg"
    shutil.copytree(run, d)
    (d / "config.toml").write_text((d / "config.toml").read_text().replace("seed = 0", "seed = 1"))
    v = verify_run(d, check_model=False)
    assert any(p.startswith("config.toml") for p in v.problems)
    d = tmp_path / "tok"
    shutil.copytree(run, d)
    (d / "model/tokenizer.json").write_text((d / "model/tokenizer.json").read_text() + " ")
    assert "model: tokenizer.json differs from the ledger" in verify_run(d).problems
    res = runner.invoke(app, ["verify", str(d)])
    assert res.exit_code == 1 and "tokenizer.json" in res.output and "FAILED" in res.output
    assert found == 9


def test_not_a_run_folder_is_one_line_exit_2(tmp_path):
    res = runner.invoke(app, ["verify", str(tmp_path)])
    assert res.exit_code == 2 and "not a run folder" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    (tmp_path / "config.toml").write_text("[runtime]\nledger = false\n")
    res = runner.invoke(app, ["verify", str(tmp_path)])
    assert res.exit_code == 2 and "kept no ledger" in res.stderr
    (tmp_path / "config.toml").write_text("[runtime]\nledger = true\n")
    res = runner.invoke(app, ["verify", str(tmp_path)])
    assert res.exit_code == 1 and "ledger.jsonl: missing" in res.output


class StopAt(Hooks):
    def __init__(self, rnd):
        self.rnd = rnd

    def round_done(self, row):
        if row["round"] == self.rnd:
            raise KeyboardInterrupt


def test_resume_continues_the_chain(tmp_path):
    cfg = config(tmp_path, "federation.rounds=3")
    run_experiment(cfg, tmp_path / "full")
    cut = tmp_path / "cut"
    with pytest.raises(KeyboardInterrupt):
        run_experiment(cfg, cut, hooks=StopAt(2))
    # as if the crash came after the ledger entry of round 2, before its checkpoint, and
    # in the middle of writing one more line
    shutil.rmtree(cut / "checkpoints/round_000002")
    with (cut / LEDGER).open("ab") as fh:
        fh.write(b'{"config_hash":"12')
    run_experiment(cfg, cut, resume=True)
    assert verify_run(cut).ok, verify_run(cut).problems
    a = [json.loads(x) for x in lines_of(tmp_path / "full")]
    b = [json.loads(x) for x in lines_of(cut)]
    assert [e["kind"] for e in b] == ["header", "round", "round", "round", "model", "final"]
    for x, y in zip(a[1:], b[1:], strict=True):
        for key in ("round", "updates", "global_weights", "server_state", "participants"):
            assert x.get(key) == y.get(key)
    # more rounds on a finished run: its model entry goes, a config entry comes
    run_experiment(config(tmp_path, "federation.rounds=4"), cut, resume=True)
    v = verify_run(cut)
    assert v.ok and v.rounds == 4, v.problems
    kinds = [json.loads(x)["kind"] for x in lines_of(cut)]
    assert kinds == ["header", "round", "round", "round", "config", "round", "model", "final"]
    # a checkpoint that disagrees with the ledger refuses to resume: one byte changed and
    # its manifest rewritten to match (a torn file without that is skipped instead)
    from fedgpt.files import manifest

    folder = cut / "checkpoints/round_000004"
    flip_data_bytes(folder / "weights.safetensors", np.random.default_rng(3), 1)
    (folder / "manifest.json").write_text(json.dumps(manifest(folder)))
    with pytest.raises(RunError, match="weights differ"):
        run_experiment(config(tmp_path, "federation.rounds=5"), cut, resume=True)


def test_lora_run_verifies(tiny_checkpoint, tmp_path):
    cfg = config(
        tmp_path,
        f'model.path="{tiny_checkpoint}"',
        "model.lora.enabled=true",
        "model.lora.r=2",
        'model.lora.target_modules=["c_attn"]',
        "federation.rounds=1",
    )
    run_experiment(cfg, tmp_path / "lora")
    assert verify_run(tmp_path / "lora").ok
    flip_data_bytes(
        tmp_path / "lora/model/adapter/adapter_model.safetensors", np.random.default_rng(0), 1
    )
    problems = verify_run(tmp_path / "lora").problems
    assert "model: saved trainable weights differ from the ledger" in problems


def test_verify_command_in_a_fresh_process(tmp_path):
    """``fedgpt verify`` imports cleanly on its own (no import-order luck) and answers
    a folder that is not a run with one line and exit code 2."""
    import subprocess
    import sys

    res = subprocess.run(
        [sys.executable, "-m", "fedgpt", "verify", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 2, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
