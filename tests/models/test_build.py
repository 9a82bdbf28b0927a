"""Models: the built char GPT-2, loading from a local path, LoRA, flat parameters."""

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from fedgpt.config import ModelConfig
from fedgpt.errors import ModelError
from fedgpt.models.build import build_char_gpt2, build_model, load_pretrained, save_model
from fedgpt.models.params import ParamSpec, bind_flat
from fedgpt.models.tokenizer import Codec, build_char_tokenizer


def test_char_codec_matches_hf_tokenizer_and_round_trips():
    tok = build_char_tokenizer(["To be, or not to be:\nthat is the question."])
    codec = Codec(tok)
    text = "not to be:\nthe quest ZZ"
    ids = codec.encode(text)
    assert ids.tolist() == tok(text, add_special_tokens=False)["input_ids"]
    assert codec.is_char
    assert codec.decode(codec.encode("to be\n")) == "to be\n"
    assert (ids[-2:] == tok.convert_tokens_to_ids("<unk>")).all()  # Z is unseen


def test_built_model_is_seeded_and_untied():
    cfg = ModelConfig(n_layer=2, n_embd=32, n_head=2, context=64)
    a = build_char_gpt2(cfg, ["hello world"], seed=1)
    b = build_char_gpt2(cfg, ["hello world"], seed=1)
    c = build_char_gpt2(cfg, ["hello world"], seed=2)
    fa, fb, fc = bind_flat(a.model).flat, bind_flat(b.model).flat, bind_flat(c.model).flat
    assert torch.equal(fa, fb) and not torch.equal(fa, fc)
    assert not a.model.config.tie_word_embeddings


def test_checkpoint_loads_via_model_path_and_plain_transformers(tiny_checkpoint):
    bundle = build_model(ModelConfig(path=str(tiny_checkpoint)), [], seed=0)
    plain = AutoModelForCausalLM.from_pretrained(tiny_checkpoint, local_files_only=True)
    tok = AutoTokenizer.from_pretrained(tiny_checkpoint, local_files_only=True)
    ids = torch.tensor([tok("abc", add_special_tokens=False)["input_ids"]])
    assert torch.allclose(bundle.model(input_ids=ids).logits, plain(input_ids=ids).logits)
    assert bundle.codec.encode("abc").tolist() == ids[0].tolist()


def test_bad_model_paths_raise_model_error(tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        load_pretrained(tmp_path / "nope")
    with pytest.raises(ModelError, match="config.json"):
        load_pretrained(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ModelError, match="cannot load"):
        load_pretrained(tmp_path)


def test_lora_trains_only_adapters_and_saves_loadable_merged_model(tiny_checkpoint, tmp_path):
    cfg = ModelConfig(
        path=str(tiny_checkpoint), lora={"enabled": True, "r": 2, "target_modules": ["c_attn"]}
    )
    bundle = build_model(cfg, [], seed=0)
    spec = ParamSpec.from_model(bundle.model)
    assert spec.names and all("lora_" in n for n in spec.names)
    # 2 layers x c_attn (A: r x 32, B: 96 x r) = 2 * (2*32 + 96*2)
    assert spec.numel == 2 * (2 * 32 + 96 * 2)
    out = save_model(bundle, tmp_path / "m")
    merged = AutoModelForCausalLM.from_pretrained(out, local_files_only=True)
    assert (out / "adapter" / "adapter_config.json").is_file()
    ids = torch.tensor([[1, 2, 3]])
    assert torch.allclose(
        merged(input_ids=ids).logits, bundle.model(input_ids=ids).logits, atol=1e-5
    )


def test_lora_unknown_target_module_is_an_error(tiny_checkpoint):
    cfg = ModelConfig(
        path=str(tiny_checkpoint), lora={"enabled": True, "target_modules": ["q_proj"]}
    )
    with pytest.raises(ModelError, match="q_proj"):
        build_model(cfg, [], seed=0)


def test_bind_flat_views_params_and_grads():
    bundle = build_char_gpt2(
        ModelConfig(n_layer=2, n_embd=32, n_head=2, context=64), ["abc"], seed=0
    )
    fm = bind_flat(bundle.model)
    before = {n: p.detach().clone() for n, p in bundle.model.named_parameters()}
    flat_before = torch.cat([before[n].reshape(-1) for n in fm.spec.names])
    assert torch.equal(flat_before, fm.flat)
    fm.load(torch.zeros_like(fm.flat))
    assert all(float(p.abs().sum()) == 0 for p in bundle.model.parameters())
    ids = torch.tensor([[1, 2, 3, 1]])
    fm.load(flat_before)
    bundle.model(input_ids=ids, labels=ids).loss.backward()
    per_param = torch.cat([p.grad.reshape(-1) for p in fm.params()])
    assert torch.equal(per_param, fm.grad) and fm.grad.abs().sum() > 0
