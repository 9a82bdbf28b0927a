"""A GGUF file (llama.cpp's format) as a plain Hugging Face checkpoint.

``transformers`` reads GGUF files (with the ``gguf`` package) and dequantises their weights
to float, but a model loaded that way is still flagged as quantised and refuses
``save_pretrained``. :func:`import_gguf` therefore loads the file, copies its weights into a
fresh model of the same architecture (no quantisation config), and saves that with its
tokenizer as safetensors in ``dtype``. The result loads in a second with
``from_pretrained(dir)``, which is what ``model.path`` expects.

The architectures are those ``transformers`` maps from GGUF (Llama, Mistral, Qwen2, …);
any other file is refused with one line naming its architecture.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from fedgpt.errors import ModelError

DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16,
          "bfloat16": torch.bfloat16}  # fmt: skip


def gguf_architecture(path: Path) -> str:
    """The ``general.architecture`` of a GGUF file, or a one-line ModelError."""
    try:
        from gguf import GGUFReader
    except ImportError:
        raise ModelError(
            'reading GGUF files needs the gguf package: pip install "fedgpt[gguf]"'
        ) from None
    try:
        reader = GGUFReader(str(path))
        field = reader.fields["general.architecture"]
        return bytes(field.parts[field.data[0]]).decode()
    except (KeyError, ValueError, IndexError, OSError) as exc:
        raise ModelError(f"{path}: not a readable GGUF file ({type(exc).__name__})") from None


def supported_architectures() -> list[str]:
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    return sorted(set(GGUF_SUPPORTED_ARCHITECTURES) - {"general", "tokenizer"})


def import_gguf(path: str | Path, out: str | Path, dtype: str = "fp32", log=None) -> Path:
    """Convert the GGUF file ``path`` to a Hugging Face checkpoint in ``out`` (a new or
    empty folder) with weights in ``dtype`` (fp32 or bf16); returns ``out``."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from fedgpt.files import replace_dir
    from fedgpt.models.build import _quiet_transformers

    path, out = Path(path), Path(out)
    if not path.is_file():
        raise ModelError(f"{path}: no such GGUF file")
    if dtype not in DTYPES:
        raise ModelError(f"--dtype: expected one of fp32, bf16, got {dtype!r}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ModelError(f"--out {out}: exists and is not an empty folder")
    arch = gguf_architecture(path)
    if log is not None:
        log(f"converting {path.name} ({arch}) to a Hugging Face checkpoint in {dtype}")
    _quiet_transformers()
    folder, name = str(path.parent), path.name
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
        config = AutoConfig.from_pretrained(folder, gguf_file=name)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        if "not supported" in first:
            first = (f"GGUF architecture {arch!r} is not one transformers can read "
                     f"(it reads {', '.join(supported_architectures())})")  # fmt: skip
        raise ModelError(f"{path}: cannot read the model: {first}") from None
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = DTYPES[dtype]
    with torch.device("meta"):
        fresh = AutoModelForCausalLM.from_config(config)
    fresh.load_state_dict(loaded.state_dict(), assign=True)
    fresh.tie_weights()
    fresh.to(DTYPES[dtype])
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    fresh.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    (tmp / "fedgpt_source.json").write_text(
        json.dumps({"gguf": name, "architecture": arch, "dtype": dtype}, indent=2) + "\n"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.exists():
        out.rmdir()
    return replace_dir(tmp, out)
