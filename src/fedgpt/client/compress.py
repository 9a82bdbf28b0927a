"""Update compression on the wire (``client.compression``): the client encodes its update
after every other step (after DP noise: compressing a released update is
post-processing, so DP guarantees are unchanged), the server decodes it before any check.

* ``fp16`` / ``bf16``: the update cast to half precision (2 bytes per value);
* ``qsgd8`` / ``qsgd4``: stochastic quantisation (QSGD, Alistarh et al. 2017, "QSGD:
  Communication-Efficient SGD via Gradient Quantization and Encoding", §3.1: Q_s(v_i) =
  ‖v‖ · sgn(v_i) · ξ_i(v, s) with ξ_i = l/s or (l+1)/s, rounding up with probability
  |v_i|/‖v‖ · s − l, so E[Q_s(v)] = v). Per bucket of ``client.qsgd_bucket`` values, with
  the bucket's largest magnitude as the scale (the max-norm variant, tighter than the
  2-norm for the same levels); s = 127 levels in a signed byte, or s = 7 in four bits
  (two values per byte). Unbiased; about 1.01 or 0.51 bytes per value;
* ``topk``: the ``client.topk_fraction`` largest-magnitude coordinates of the update plus
  the client's residual, as (index, value) pairs, with error feedback (Deep Gradient
  Compression, Lin et al. 2018, §3.1 "gradient accumulation"; Stich et al. 2018): what
  was not sent is kept by the client and added to its next update, e ← u − top_k(u).
  8 bytes per value sent.

Every random draw is on the client's seeded generator. Decoding checks each part (dtype,
length, indices in range and increasing, finite scales) and returns the reason it cannot
decode, so a malformed reply drops its sender in one line like any other bad update.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import torch

from fedgpt.client.algorithm import ClientRound, ClientStep, load_tensors, save_tensors
from fedgpt.client.trainer import Update

KINDS = ("none", "fp16", "bf16", "qsgd8", "qsgd4", "topk")
HALF = {"fp16": torch.float16, "bf16": torch.bfloat16}
LEVELS = {"qsgd8": 127, "qsgd4": 7}


def encode(kind: str, delta: torch.Tensor, gen: torch.Generator, *, bucket: int = 512,
           fraction: float = 0.01) -> dict[str, torch.Tensor]:  # fmt: skip
    """The tensors that carry ``delta`` (float32, 1-D) under ``kind``."""
    if kind in HALF:
        return {"delta": delta.to(HALF[kind])}
    if kind in LEVELS:
        return quantize(delta, LEVELS[kind], bucket, gen)
    if kind == "topk":
        idx, val = top_k(delta, fraction)
        return {"delta_idx": idx, "delta_val": val, "delta_numel": _numel(delta)}
    return {"delta": delta}


def decode(kind: str, tensors: Mapping[str, torch.Tensor], sizes: set[int], *,
           bucket: int = 512) -> tuple[torch.Tensor | None, str | None]:  # fmt: skip
    """(the float32 update, None) or (None, why it cannot be decoded); ``sizes``: the
    lengths an update may have (the model's, each device tier's)."""
    try:
        if kind in HALF:
            return _half(tensors, HALF[kind])
        if kind in LEVELS:
            return dequantize(tensors, LEVELS[kind], bucket, sizes)
        if kind == "topk":
            return _sparse(tensors, sizes)
    except (TypeError, ValueError, RuntimeError) as exc:
        return None, f"compressed update does not decode ({type(exc).__name__})"
    return tensors.get("delta"), None


def _numel(t: torch.Tensor) -> torch.Tensor:
    return torch.tensor([t.numel()], dtype=torch.int64)


def _parts(tensors: Mapping, want: dict[str, torch.dtype]) -> str | None:
    if set(tensors) != set(want):
        return f"compressed update must carry {sorted(want)}"
    for name, dtype in want.items():
        t = tensors[name]
        if not isinstance(t, torch.Tensor) or t.dtype != dtype or t.ndim != 1:
            return f"{name} is not a 1-D {str(dtype).removeprefix('torch.')} tensor"
    return None


def _declared(tensors: Mapping, sizes: set[int]) -> tuple[int, str | None]:
    n = tensors["delta_numel"]
    if n.numel() != 1 or int(n[0]) not in sizes:
        return 0, "compressed update declares a length that is not the model's or a tier's"
    return int(n[0]), None


def _half(tensors, dtype) -> tuple[torch.Tensor | None, str | None]:
    if (why := _parts(tensors, {"delta": dtype})) is not None:
        return None, why
    return tensors["delta"].float(), None


def quantize(delta: torch.Tensor, s: int, bucket: int, gen: torch.Generator) -> dict:
    """QSGD's Q_s per bucket: integers in [−s, s] and one float32 scale per bucket."""
    n = delta.numel()
    pad = (-n) % bucket
    x = torch.nn.functional.pad(delta, (0, pad)).view(-1, bucket)
    scale = x.abs().amax(1)
    y = x.abs() * (s / scale.clamp_min(torch.finfo(torch.float32).tiny))[:, None]
    low = y.floor()
    up = torch.rand(y.shape, generator=gen) < (y - low)
    q = (low + up).clamp_max(s).to(torch.int8) * x.sign().to(torch.int8)
    return {"delta_q": pack(q.view(-1), s), "delta_scale": scale, "delta_numel": _numel(delta)}


def pack(q: torch.Tensor, s: int) -> torch.Tensor:
    """int8 in [−s, s] as bytes: one per value (s = 127), or two per byte (s = 7)."""
    if s > 7:
        return q.view(torch.uint8)
    u = (q + 8).to(torch.uint8)
    u = torch.nn.functional.pad(u, (0, u.numel() % 2), value=8)
    return u[0::2] | (u[1::2] << 4)


def unpack(b: torch.Tensor, s: int, count: int) -> torch.Tensor:
    if s > 7:
        return b.view(torch.int8)[:count]
    both = torch.stack([b & 0xF, b >> 4], 1).reshape(-1)[:count]
    return both.to(torch.int8) - 8


def dequantize(tensors, s: int, bucket: int, sizes: set[int]):
    want = {"delta_q": torch.uint8, "delta_scale": torch.float32, "delta_numel": torch.int64}
    if (why := _parts(tensors, want)) is not None:
        return None, why
    n, why = _declared(tensors, sizes)
    if why is not None:
        return None, why
    padded = n + (-n) % bucket
    scale = tensors["delta_scale"]
    per_byte = 1 if s > 7 else 2
    if scale.numel() != padded // bucket or tensors["delta_q"].numel() != -(-padded // per_byte):
        return None, "compressed update has the wrong number of values or scales"
    if not bool(torch.isfinite(scale).all()) or bool((scale < 0).any()):
        return None, "compressed update has a negative or non-finite scale"
    q = unpack(tensors["delta_q"], s, padded)
    if bool((q.to(torch.int16).abs() > s).any()):  # int8 −128 has no absolute value
        return None, f"compressed update has a level beyond ±{s}"
    x = q.view(-1, bucket).float() * (scale / s)[:, None]
    return x.view(-1)[:n].contiguous(), None


def top_k(u: torch.Tensor, fraction: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The indices (increasing, int32) and values of the ⌈fraction · P⌉ largest |u_i|."""
    k = max(1, min(u.numel(), round(fraction * u.numel())))
    idx = u.abs().topk(k, sorted=False).indices.sort().values
    return idx.to(torch.int32), u[idx]


def _sparse(tensors, sizes: set[int]):
    want = {"delta_idx": torch.int32, "delta_val": torch.float32, "delta_numel": torch.int64}
    if (why := _parts(tensors, want)) is not None:
        return None, why
    n, why = _declared(tensors, sizes)
    if why is not None:
        return None, why
    idx, val = tensors["delta_idx"], tensors["delta_val"]
    if idx.numel() != val.numel() or idx.numel() > n:
        return None, "compressed update: indices and values differ in number"
    if idx.numel() and (int(idx[0]) < 0 or int(idx[-1]) >= n or bool((idx[1:] <= idx[:-1]).any())):
        return None, "compressed update: indices out of range or not increasing"
    out = torch.zeros(n, dtype=torch.float32)
    out[idx.long()] = val
    return out, None


class Compress(ClientStep):
    """The client step that encodes each released update (last of the steps); top-k keeps
    each client's residual (error feedback) in its state."""

    name = "compress"

    def __init__(self, kind: str, bucket: int = 512, fraction: float = 0.01):
        self.kind, self.bucket, self.fraction = kind, bucket, fraction
        self.residual: dict[str, torch.Tensor] = {}  # per client, never sent

    def after(self, ctx: ClientRound, update: Update) -> Update:
        delta = update.delta
        if self.kind == "topk":
            u = delta + self.residual.get(ctx.client_id, torch.zeros_like(delta))
            idx, val = top_k(u, self.fraction)
            rest = u.clone()
            rest[idx.long()] = 0
            self.residual[ctx.client_id] = rest
            payload = {"delta_idx": idx, "delta_val": val, "delta_numel": _numel(u)}
        else:
            payload = encode(self.kind, delta, ctx.gen, bucket=self.bucket)
        return dataclasses.replace(update, payload=payload)

    def state_dict(self) -> dict[str, bytes]:
        return {"topk_residual": save_tensors(self.residual)} if self.kind == "topk" else {}

    def load_state_dict(self, saved) -> None:
        if "topk_residual" in saved:
            self.residual = load_tensors(saved["topk_residual"])
