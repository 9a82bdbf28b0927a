"""One typed schema per reply the server receives, and the one check every reply passes.

Replies come from clients the server does not control (in process or decoded from
Flower's records), so nothing in them is trusted: :func:`check_reply` returns the
one-line reason a reply is refused, or ``None``, given what the server expects
(:class:`Expect`). Configs are validated by strict pydantic models (no coercion: a
valid config holds exactly the declared fields, with the declared types; unknown keys
are refused): numbers finite, integers bounded and never bools, strings and dicts of
bounded size. Tensors are checked for dtype, shape and finiteness, blobs for being lists
of byte strings of bounded count and length. :func:`parse_reply` returns the validated
config model, which is what the server reads afterwards.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any

import torch
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)

from fedgpt.messages import Failure, Message

MAX_STR = 1000  # characters of any string in a config
MAX_REASON = 300  # characters of a reason reported for a refused reply
MAX_INT = 2**53  # integers beyond this are refused (floats hold them exactly below it)
MAX_ITEMS = 64  # entries of a metrics dict
MAX_NAMES = 4096  # entries of a dict or list keyed by client ids
MAX_BLOB = 1 << 16  # bytes of one key or sealed share


def _score_edges() -> tuple[float, ...]:
    """The inner edges of the score bins (fedgpt.tasks.scores): steps of 0.01 in p (the
    calibration bins' edges 0.1, ..., 0.9 among them), and in the tails, where p < 0.09 or
    p > 0.91, steps of 0.2 in log-odds out to ±9, so that a rare class's scores (p of
    0.001 against 0.005) still fall in different bins."""
    import math

    tails = {1 / (1 + math.exp(-k / 5)) for k in (*range(-45, -11), *range(12, 46))}
    return tuple(sorted(tails | {k / 100 for k in range(1, 100)}))


SCORE_EDGES = _score_edges()
BIN_LOW = (0.0, *SCORE_EDGES)  # bin b holds BIN_LOW[b] <= p < BIN_HIGH[b]
BIN_HIGH = (*SCORE_EDGES, 1.0)
HIST = 3 * len(BIN_LOW)  # numbers of a score histogram: 3 x fedgpt.tasks.scores.BINS


def one_line(text: Any, limit: int = MAX_REASON) -> str:
    """``text`` as one line of at most ``limit`` characters (longer ones are cut)."""
    s = " ".join(str(text)[: limit * 4].split())
    return s if len(s) <= limit else s[: limit - 3] + "..."


def _short(value: Any) -> str:
    """A bounded repr of an untrusted value, for a reason."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_INT:
        return f"an integer of {value.bit_length()} bits"
    if isinstance(value, str | bytes | list | dict | tuple) and len(value) > 40:
        return f"a {type(value).__name__} of length {len(value)}"
    return one_line(repr(value), 60)


def _no_bool(v: Any) -> Any:
    if isinstance(v, bool):
        raise ValueError("a bool is not a number")
    return v


def _as_tuple(v: Any) -> Any:
    return tuple(v) if isinstance(v, list) else v


Str = Annotated[str, Field(max_length=MAX_STR)]
Name = Annotated[str, Field(min_length=1, max_length=MAX_STR)]
Int = Annotated[int, BeforeValidator(_no_bool), Field(ge=-MAX_INT, le=MAX_INT)]
Count = Annotated[int, BeforeValidator(_no_bool), Field(ge=0, le=MAX_INT)]
Examples = Annotated[int, BeforeValidator(_no_bool), Field(ge=1, le=MAX_INT)]
Num = Annotated[float, BeforeValidator(_no_bool), Field(allow_inf_nan=False)]
NonNeg = Annotated[float, BeforeValidator(_no_bool), Field(ge=0.0, allow_inf_nan=False)]
Metrics = Annotated[dict[Annotated[str, Field(max_length=100)], Num], Field(max_length=MAX_ITEMS)]
Hex = Annotated[str, Field(pattern=r"^(0x)?[0-9a-fA-F]{1,140}$")]  # a Shamir share, < 2^521
HexBytes = Annotated[str, Field(pattern=r"^([0-9a-fA-F]{2}){0,64}$")]  # ≤ 64 bytes
Share = Annotated[tuple[Annotated[int, Field(ge=1, le=MAX_INT)], Hex], BeforeValidator(_as_tuple)]
PqShare = Annotated[
    tuple[Annotated[int, Field(ge=1, le=MAX_INT)], Hex, HexBytes], BeforeValidator(_as_tuple)
]


class _Config(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)
    round: Count

    @model_validator(mode="before")
    @classmethod
    def _no_nulls(cls, data: Any) -> Any:  # honest clients leave a field out, never null
        if isinstance(data, dict) and any(v is None for v in data.values()):
            raise ValueError("null value in the config")
        return data


class TrainResult(_Config):
    num_examples: Examples
    metrics: Metrics = {}
    nonce: Annotated[str, Field(max_length=64)] | None = None  # echoed from the message
    tier: Name | None = None  # device tier of a partial update


class TrainFailure(_Config):
    round: Int = 0
    reason: Annotated[str, Field(max_length=100 * MAX_STR)] = "client reported a failure"
    nonce: Annotated[str, Field(max_length=64)] | None = None


class EvaluateResult(_Config):
    loss_sum: NonNeg
    correct: Count
    count: Count
    # classification with two classes (fedgpt.tasks.scores): the score histogram, and the
    # client's own AUC (None with one class in its test records)
    hist: Annotated[list[NonNeg], Field(min_length=HIST, max_length=HIST)] | None = None
    auc: Annotated[float, Field(ge=0.0, le=1.0)] | None = None

    @model_validator(mode="after")
    def _consistent_histogram(self):
        """Counts are whole, add up to ``count``, and each bin's sum of p lies in the bin."""
        if self.hist is None:
            return self
        bins = HIST // 3
        neg, pos, psum = self.hist[:bins], self.hist[bins : 2 * bins], self.hist[2 * bins :]
        counts = neg + pos
        if any(c != int(c) or c > MAX_INT for c in counts):
            raise ValueError("hist: counts must be whole numbers")
        if int(sum(counts)) != self.count:
            raise ValueError(f"hist: {int(sum(counts))} records counted, count says {self.count}")
        for b, (n0, n1, s) in enumerate(zip(neg, pos, psum, strict=True)):
            n = n0 + n1
            if not (BIN_LOW[b] * n - 1e-6 * n <= s <= BIN_HIGH[b] * n + 1e-6 * n):
                raise ValueError(f"hist: the sum of p in bin {b} lies outside the bin")
        return self


class SecAggKeys(_Config):
    num_examples: Examples
    metrics: Metrics = {}


class SecAggShares(_Config):
    pass


class SecAggMasked(_Config):
    pass


class SecAggSignature(_Config):
    pass


class SecAggSharesOut(_Config):
    b: Annotated[dict[Name, Share], Field(max_length=MAX_NAMES)] = {}
    s: Annotated[dict[Name, PqShare], Field(max_length=MAX_NAMES)] = {}
    tampered: Annotated[list[Name], Field(max_length=MAX_NAMES)] = []


class CkksAggregate(_Config):
    pass


class FedMDLogits(_Config):
    num_examples: Examples
    metrics: Metrics = {}


SCHEMAS: dict[str, type[_Config]] = {
    "train/result": TrainResult,
    "train/failure": TrainFailure,
    "evaluate/result": EvaluateResult,
    "secagg/keys": SecAggKeys,
    "secagg/shares": SecAggShares,
    "secagg/masked_input": SecAggMasked,
    "secagg/signature": SecAggSignature,
    "secagg/shares_out": SecAggSharesOut,
    "ckks/aggregate": CkksAggregate,
    "ckks/signature": SecAggSignature,
    "fedmd/logits": FedMDLogits,
}


@dataclass(frozen=True)
class Expect:
    """What the server expects of one reply: its ``type`` and ``round``, and per type:
    ``numel`` (train delta, CKKS aggregate; SecAgg: words of the input, masked input is
    ``numel + 1`` words), ``nonce``, ``tier_sizes``, ``ckks_chunks`` (train), ``shape``
    (FedMD logits), ``keys`` (SecAgg public-key blob names), ``peers`` (SecAgg: the
    client's neighbours), ``survivors``/``dropped`` and ``index`` (SecAgg unmasking: the
    peers it was asked about and the x of its shares)."""

    type: str
    round: int
    numel: int = 0
    nonce: str | None = None
    tier_sizes: Mapping[str, int] | None = None
    ckks_chunks: int = 0
    shape: tuple[int, ...] = ()
    keys: tuple[str, ...] = ()
    peers: frozenset[str] = field(default_factory=frozenset)
    survivors: frozenset[str] = field(default_factory=frozenset)
    dropped: frozenset[str] = field(default_factory=frozenset)
    index: int = 0
    item: int = 8  # bytes per word of a SecAgg masked input
    finite: bool = True  # check a train delta is finite (False: the caller does, by its norm)


def envelope(reply: Any) -> str | None:
    """Why ``reply`` is not a Message with a string type, a config dict, a dict of named
    tensors and a dict of lists of byte strings (or its Failure reason), or ``None``."""
    if isinstance(reply, Failure):
        return one_line(reply.reason) or "failure without a reason"
    if not isinstance(reply, Message):
        return f"not a message ({type(reply).__name__})"
    if not isinstance(reply.type, str):
        return f"message type is not a string ({type(reply.type).__name__})"
    if not isinstance(reply.config, dict):
        return f"config is not a dict ({type(reply.config).__name__})"
    if not isinstance(reply.tensors, dict) or not isinstance(reply.blobs, dict):
        return "payload does not decode (not dicts of tensors and blobs)"
    for name, t in reply.tensors.items():
        if not isinstance(name, str) or not isinstance(t, torch.Tensor):
            return f"payload does not decode: {_short(name)} is not a named tensor"
    for name, chunks in reply.blobs.items():
        ok = isinstance(chunks, list) and all(isinstance(c, bytes) for c in chunks)
        if not isinstance(name, str) or not ok:
            return f"payload does not decode: {_short(name)} is not a list of byte strings"
    return None


def nbytes(reply: Any) -> int:
    """Payload bytes of a reply, 0 for one whose payload does not decode."""
    return reply.nbytes if isinstance(reply, Message) and envelope(reply) is None else 0


def _pydantic_reason(exc: ValidationError) -> str:
    err = exc.errors(include_input=False, include_url=False)[0]
    loc = ".".join(_short(p) if not isinstance(p, str) else one_line(p, 40) for p in err["loc"])
    return one_line(f"{loc or 'config'}: {err['msg']}")


def check_config(reply: Message, expect: Expect) -> tuple[_Config | None, str | None]:
    """The validated config of a reply whose envelope is sound: (model, None) or
    (None, reason). Round and nonce first (with the reasons the ledger documents)."""
    c = reply.config
    if reply.type == "train/failure":
        try:
            return None, one_line(TrainFailure.model_validate(c).reason)
        except ValidationError as exc:
            return None, f"malformed train/failure: {_pydantic_reason(exc)}"
    if reply.type != expect.type:
        return None, f"unexpected reply type {_short(reply.type)}"
    if c.get("round") != expect.round or isinstance(c.get("round"), bool):
        return None, f"update for round {_short(c.get('round'))}, expected {expect.round}"
    if expect.nonce is not None and c.get("nonce") != expect.nonce:
        return None, "reply does not echo the nonce of this round's message (replayed or stale)"
    n = c.get("num_examples")
    if "num_examples" in SCHEMAS[reply.type].model_fields and not (
        isinstance(n, int) and not isinstance(n, bool) and 0 < n <= MAX_INT
    ):
        return None, f"num_examples must be a positive integer up to 2**53, got {_short(n)}"
    try:
        return SCHEMAS[reply.type].model_validate(c), None
    except ValidationError as exc:
        return None, _pydantic_reason(exc)


def _tensor(
    t: torch.Tensor | None, name: str, shape: tuple[int, ...], finite: bool = True
) -> str | None:
    if not isinstance(t, torch.Tensor) or t.dtype != torch.float32 or t.layout != torch.strided:
        return f"{name} is not a float32 tensor"
    if tuple(t.shape) != shape:
        return f"{name} has shape {tuple(t.shape)}, expected {shape}"
    if finite and not_finite(t):
        return f"{name} contains NaN or inf"
    return None


def l2_norm(t: torch.Tensor) -> float:
    """‖t‖₂ in one pass (NaN or inf when ``t`` has a NaN or an inf).

    A float32 tensor's norm is √(t·t) by BLAS ``dot``: it reads at memory speed, where
    ``vector_norm`` is bound by arithmetic at about half of it here, and its blocked sums
    round less (relative error 4e-5 against 3e-4 at 10⁷ values, benchmarks/limits.py). When
    the sum of squares is not finite (a NaN or an inf, or squares beyond float32) the norm is
    taken again in float64, so a finite update keeps a finite norm."""
    flat = t.reshape(-1)
    if flat.dtype == torch.float32:
        sq = float(torch.dot(flat, flat))
        if math.isfinite(sq):
            return math.sqrt(sq)
    return float(torch.linalg.vector_norm(flat, dtype=torch.float64))


def not_finite(t: torch.Tensor, norm: float | None = None) -> bool:
    """Whether ``t`` holds a NaN or an inf. One pass of its norm (finite values have a
    finite norm unless their squares overflow, which the slower exact check then settles)."""
    norm = l2_norm(t) if norm is None else norm
    return not math.isfinite(norm) and not bool(torch.isfinite(t).all())


def _blobs(reply: Message, names: set[str], count: tuple[int, int], most: int) -> str | None:
    if reply.tensors:
        return f"unexpected tensors {_short(sorted(reply.tensors))}"
    if set(reply.blobs) - names:
        return f"unexpected blobs {_short(sorted(set(reply.blobs) - names))}"
    for name, chunks in reply.blobs.items():
        if not count[0] <= len(chunks) <= count[1]:
            return f"blob {_short(name)} has {len(chunks)} parts, expected {count[0]}-{count[1]}"
        if not all(0 < len(c) <= most for c in chunks):
            return f"blob {_short(name)} has an empty part or one over {most} bytes"
    return None


def check_payload(reply: Message, model: _Config, expect: Expect) -> str | None:
    """Why the tensors and blobs of a reply with a valid config are not what its type
    carries, or ``None``."""
    kind = reply.type
    if kind == "train/result":
        if expect.ckks_chunks:
            chunks = reply.blobs.get("delta_ckks")
            if chunks is None or len(chunks) != expect.ckks_chunks or not all(chunks):
                return f"expected {expect.ckks_chunks} non-empty CKKS ciphertexts"
            return None
        numel = expect.numel
        if model.tier is not None:
            if not expect.tier_sizes or model.tier not in expect.tier_sizes:
                return f"unknown device tier {_short(model.tier)}"
            numel = expect.tier_sizes[model.tier]
        return _tensor(reply.tensors.get("delta"), "update", (numel,), expect.finite)
    if kind in ("ckks/aggregate", "fedmd/logits"):
        name = "aggregate" if kind == "ckks/aggregate" else "logits"
        if set(reply.tensors) != {name} or reply.blobs:
            return f"{kind} must carry the tensor {name!r} only"
        return _tensor(reply.tensors[name], name, expect.shape or (expect.numel,))
    if kind == "evaluate/result":
        if model.correct > model.count:
            return f"correct = {model.correct} above count = {model.count}"
        return None if not reply.tensors and not reply.blobs else "unexpected payload"
    if kind == "secagg/keys":
        if any(not reply.blobs.get(n) for n in expect.keys):
            return "missing public keys"
        return _blobs(reply, {*expect.keys, "sig"}, (1, 1), MAX_BLOB)
    if kind == "secagg/shares":
        return _blobs(reply, {f"to:{v}" for v in expect.peers}, (1, 3), MAX_BLOB)
    if kind in ("secagg/signature", "ckks/signature"):
        return _blobs(reply, {"sig"}, (1, 1), 64)
    if kind == "secagg/masked_input":
        y = reply.blobs.get("y")
        if set(reply.blobs) != {"y"} or reply.tensors or len(y) != 1:
            return "masked input must be one blob 'y' of one byte string"
        ok = len(y[0]) == expect.item * (expect.numel + 1)
        return None if ok else "masked input of wrong length"
    if kind == "secagg/shares_out":
        if reply.tensors or reply.blobs:
            return "unexpected payload"
        if set(model.b) - expect.survivors or set(model.s) - expect.dropped:
            return "shares of clients it was not asked about"
        if set(model.tampered) - expect.peers:
            return "names a client that is not its neighbour as tampered"
        if any(x != expect.index for x, *_ in [*model.b.values(), *model.s.values()]):
            return f"a share whose x is not the client's index {expect.index}"
        return None
    return None


def parse_reply(reply: Any, expect: Expect) -> tuple[_Config | None, str | None]:
    """(validated config model, None) for a valid reply, else (None, one-line reason)."""
    if (why := envelope(reply)) is not None:
        return None, why
    model, why = check_config(reply, expect)
    if why is not None:
        return None, why
    why = check_payload(reply, model, expect)
    return (None, why) if why is not None else (model, None)


def check_reply(reply: Any, expect: Expect) -> str | None:
    """Why ``reply`` cannot be used where ``expect`` describes it, or ``None``."""
    return parse_reply(reply, expect)[1]
