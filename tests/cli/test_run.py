"""End-to-end CLI runs on a tiny model: every output written, resume exact, LoRA sends
only adapters, eval and generate work on the saved model."""

import json
import re

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM
from typer.testing import CliRunner

from fedgpt.cli.main import app
from fedgpt.experiment import Hooks, run_experiment

runner = CliRunner()


def sets(overrides):
    return [a for o in overrides for a in ("--set", o)]


def test_two_client_two_round_run_writes_every_output(tiny_overrides, tmp_path):
    out = tmp_path / "run"
    res = runner.invoke(
        app, ["run", "--quiet", "--baselines", "--out", str(out), *sets(tiny_overrides)]
    )
    assert res.exit_code == 0, res.output
    for name in (
        "config.toml",
        "metrics.jsonl",
        "summary.json",
        "report.md",
        "report.html",
        "model/config.json",
        "model/model.safetensors",
        "model/tokenizer.json",
    ):
        assert (out / name).is_file(), name
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [1, 2]
    for key in (
        "train_loss",
        "test_loss",
        "test_accuracy",
        "perplexity",
        "participants",
        "dropped",
        "bytes_up",
        "bytes_down",
        "seconds",
    ):
        assert key in rows[-1]
    assert len(rows[0]["participants"]) == 2 and rows[-1]["test_accuracy"] > 0
    het = rows[0]["heterogeneity"]
    assert set(het) == set(rows[0]["participants"])
    assert all(-1 <= v["cos"] <= 1 and v["rel"] >= 0 for v in het.values())
    assert (out / "plots/heterogeneity.png").is_file()
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [
        "round_000001",
        "round_000002",
    ]
    summary = json.loads((out / "summary.json").read_text())
    b = summary["baselines"]
    assert b["centralized"]["steps"] == sum(r["client_steps"] for r in rows) == 2 * 2 * 2
    assert b["local_only"]["num_clients"] == 2
    assert "centralized" in (out / "report.md").read_text()
    # the final model's samples continue the configured prompts, seeded: a rerun of the
    # saved model with the same seed gives the same text
    from fedgpt.inference import generate_text

    prompts = [s["prompt"] for s in summary["samples"]]
    assert prompts == ["To be, or not to be", "The king"]
    first = summary["samples"][0]["text"]
    assert first.startswith("To be, or not to be") and len(first) > len(prompts[0])
    assert generate_text(out, prompts[0], 120, 0.8, seed=summary_seed(out)) == first
    t = summary["time"]
    assert set(t) == {"federation", "evaluation", "samples", "baselines", "other"}
    assert all(v >= 0 for v in t.values()) and t["baselines"] > 0
    assert sum(t.values()) == pytest.approx(summary["seconds"], abs=0.01)
    model = AutoModelForCausalLM.from_pretrained(out / "model", local_files_only=True)
    final = load_file(out / "checkpoints/round_000002/weights.safetensors")["weights"]
    saved = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    assert torch.equal(saved, final)

    res = runner.invoke(app, ["generate", str(out), "--prompt", "KING.", "--max-new-tokens", "20"])
    assert res.exit_code == 0 and res.output.startswith("KING.") and len(res.output) > 20
    text = tmp_path / "t.txt"
    text.write_text("Nothing will come of nothing: speak again.\n")
    res = runner.invoke(app, ["eval", str(out), "--data", str(text)])
    assert res.exit_code == 0, res.output
    ev = json.loads(res.output)
    assert ev["tokens"] == len(text.read_text()) - 1 and 0 <= ev["accuracy"] <= 1
    assert ev["unknown_characters"] == 0
    odd = tmp_path / "odd.txt"
    odd.write_text("Nothing will come of nothing \u2603\u2603 speak again.\n")
    res = runner.invoke(app, ["eval", str(out), "--data", str(odd)])
    assert res.exit_code == 0 and json.loads(res.stdout)["unknown_characters"] == 2
    assert "warning: 2 character(s) of --data are not in the model's vocabulary" in res.stderr
    res = runner.invoke(
        app, ["generate", str(out), "--prompt", "\u2603KING.", "--max-new-tokens", "2"]
    )
    assert res.exit_code == 0 and "1 character(s) of the prompt" in res.stderr
    for bad, why in (("-3", "must be >= 1"), ("64", "below the model's context of 64")):
        res = runner.invoke(app, ["eval", str(out), "--data", str(text), "--seq-len", bad])
        assert res.exit_code == 2 and why in res.output, res.output


class StopAt(Hooks):
    def __init__(self, rnd):
        self.rnd = rnd

    def round_done(self, row):
        if row["round"] == self.rnd:
            raise KeyboardInterrupt


def test_resume_ends_with_exactly_the_uninterrupted_weights(tiny_cfg, tmp_path):
    cfg = tiny_cfg.model_copy(
        update={
            "federation": tiny_cfg.federation.model_copy(
                update={"rounds": 3, "server_optimizer": "fedadam", "server_lr": 0.01}
            ),
            "baselines": tiny_cfg.baselines.model_copy(update={"enabled": False}),
        }
    )
    run_experiment(cfg, tmp_path / "full")
    with pytest.raises(KeyboardInterrupt):
        run_experiment(cfg, tmp_path / "cut", hooks=StopAt(2))
    res = runner.invoke(app, ["run", "--quiet", "--resume", str(tmp_path / "cut")])
    assert res.exit_code == 0, res.output
    a = load_file(tmp_path / "full/model/model.safetensors")
    b = load_file(tmp_path / "cut/model/model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    rows = (tmp_path / "cut/metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["round"] for r in rows] == [1, 2, 3]


def test_lora_run_exchanges_only_adapters(tiny_overrides, tiny_checkpoint, tmp_path):
    out = tmp_path / "lora"
    res = runner.invoke(
        app,
        [
            "run",
            "--quiet",
            "--no-baselines",
            "--out",
            str(out),
            *sets(tiny_overrides),
            "--set",
            f'model.path="{tiny_checkpoint}"',
            "--set",
            "model.lora.enabled=true",
            "--set",
            "model.lora.r=2",
            "--set",
            'model.lora.target_modules=["c_attn"]',
        ],
    )
    assert res.exit_code == 0, res.output
    row = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    adapter_floats = 2 * (2 * 32 + 96 * 2)  # 2 layers x (A: 2x32, B: 96x2)
    assert row["bytes_up"] == len(row["participants"]) * adapter_floats * 4
    summary = json.loads((out / "summary.json").read_text())
    assert summary["model"]["trainable_params"] == adapter_floats
    assert summary["model"]["total_params"] > 10 * adapter_floats
    assert (out / "model/adapter/adapter_model.safetensors").is_file()


def test_config_show_is_valid_documented_toml(tmp_path):
    res = runner.invoke(app, ["config", "show"])
    assert res.exit_code == 0 and "# local optimiser" in res.output
    path = tmp_path / "c.toml"
    path.write_text(res.output)
    assert runner.invoke(app, ["config", "show", "-c", str(path)]).output == res.output


def test_data_stats_reports_clients():
    res = runner.invoke(app, ["data", "stats", "--set", 'data.plays=["lear"]'])
    assert res.exit_code == 0, res.output
    assert re.search(r"clients\s+│\s+\d+", res.output)


def test_a_run_in_which_every_client_fails_exits_1_with_the_reasons(tiny_overrides, tmp_path):
    out = tmp_path / "run"
    over = [*tiny_overrides, "federation.rounds=5", "runtime.fail_fraction=1.0"]
    res = runner.invoke(app, ["run", "--quiet", "--no-baselines", "--out", str(out), *sets(over)])
    assert res.exit_code == 1, res.output
    failed = [x for x in res.stderr.splitlines() if x.startswith("run failed:")]
    assert len(failed) == 1 and failed[0].startswith(
        "run failed: every client failed in rounds 1-3"
    )
    assert "client crashed (fault injection)" in failed[0]
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [1, 2, 3]  # stopped early, what happened is kept
    assert all(not r["participants"] for r in rows)
    assert "every client failed" in json.loads((out / "summary.json").read_text())["stopped"]


def test_tensorboard_curves_are_written(tiny_overrides, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    res = runner.invoke(
        app, ["run", "--quiet", "--no-baselines", "--out", str(out), *sets(tiny_overrides)]
    )
    assert res.exit_code == 0, res.output
    acc = EventAccumulator(str(out / "tensorboard"))
    acc.Reload()
    losses = [e.value for e in acc.Scalars("train_loss")]
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert losses == pytest.approx([r["train_loss"] for r in rows], rel=1e-6)
    assert [e.step for e in acc.Scalars("test_accuracy")] == [1, 2]


def summary_seed(run_dir) -> int:
    from fedgpt.config import load_config

    return load_config(run_dir / "config.toml").seed


def test_a_run_without_report_or_tensorboard_writes_neither_and_fedgpt_report_adds_it(
    tiny_overrides, tmp_path
):
    out = tmp_path / "lean"
    lean = [*tiny_overrides, "report.enabled=false", "report.tensorboard=false"]
    res = runner.invoke(app, ["run", "--quiet", "--out", str(out), *sets(lean)])
    assert res.exit_code == 0, res.output
    assert (out / "summary.json").is_file() and (out / "model/model.safetensors").is_file()
    assert not (out / "report.html").exists() and not (out / "report.md").exists()
    assert not (out / "plots").exists() and not (out / "tensorboard").exists()
    assert f"run folder: {out} (no report)" in " ".join(res.output.split())
    res = runner.invoke(app, ["report", str(out)])
    assert res.exit_code == 0, res.output
    assert (out / "report.html").is_file() and (out / "report.md").is_file()
    assert list((out / "plots").glob("*.png"))  # the plots, from the run folder's files
    missing = runner.invoke(app, ["report", str(tmp_path / "nowhere")])
    assert missing.exit_code == 2 and "run folder not found" in missing.output
    assert len(missing.output.strip().splitlines()) == 1


def test_a_run_whose_clients_evaluate_no_tokens_finishes_and_says_n_a(tiny_overrides, tmp_path):
    """federation.eval_max_chars = 1 leaves no next-character pair to score: the run
    finishes and its summary table shows n/a (found by the generated-configuration test)."""
    out = tmp_path / "none"
    over = [*tiny_overrides, "federation.eval_max_chars=1"]
    res = runner.invoke(app, ["run", "--quiet", "--no-baselines", "--out", str(out), *sets(over)])
    assert res.exit_code == 0, (res.output, repr(res.exception))
    assert "│ federated │ n/a" in res.output
    assert json.loads((out / "summary.json").read_text())["federated"]["test_loss"] is None
