"""Building and loading the causal language model a federation fine-tunes.

* Default: a small GPT-2 (``transformers.GPT2LMHeadModel`` from a ``GPT2Config``) over a
  character vocabulary built from the clients' training text, initialised from the run
  seed. Input and output embeddings are untied, so per-sample gradient engines
  (record-level DP-SGD) can handle every parameter.
* ``model.path``: any local Hugging Face causal LM checkpoint with its tokenizer, loaded
  with ``local_files_only=True`` (no hub access).
* ``model.lora``: wraps the model with PEFT LoRA adapters (Hu et al. 2021, "LoRA:
  Low-Rank Adaptation of Large Language Models", eq. 3: h = W0 x + (alpha/r) B A x); only
  the adapters are trainable, so only they travel.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch

from fedgpt.config import ModelConfig
from fedgpt.config.paths import is_hub_id, is_pulled_name
from fedgpt.errors import ModelError
from fedgpt.models.tokenizer import Codec, build_char_tokenizer

logging.getLogger("transformers").setLevel(logging.ERROR)


@dataclass
class ModelBundle:
    """A model, its tokenizer and a fast codec; ``base_dir`` is set when loaded from disk."""

    model: torch.nn.Module
    tokenizer: object
    codec: Codec
    name: str
    lora: bool = False

    @property
    def max_length(self) -> int:
        cfg = self.base_config
        return int(
            getattr(cfg, "n_positions", None) or getattr(cfg, "max_position_embeddings", 1024)
        )

    @property
    def base_config(self):
        return self.model.config

    def counts(self) -> tuple[int, int]:
        """(trainable, total) parameter counts."""
        total = sum(p.numel() for p in self.model.parameters())
        trainable = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        return trainable, total


def _quiet_transformers() -> None:
    import warnings

    from transformers.utils import logging as hf_logging

    # PEFT asks transformers a deprecated question on every LoRA model: not the user's concern
    warnings.filterwarnings(
        "ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning
    )

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


HEAD = "fedgpt_head"  # attribute of a model with a classification head: its class count
PAD = 0  # the token id that right-pads a classifier's rows (its last-token pooling skips it)


def build_char_gpt2(
    cfg: ModelConfig, texts: Iterable[str], seed: int, tokenizer=None, num_labels: int = 2
) -> ModelBundle:
    """A fresh character-level GPT-2 initialised from ``seed``, its vocabulary built from
    ``texts`` (or ``tokenizer``'s, to share another model's); with ``model.head =
    "classifier"`` a ``GPT2ForSequenceClassification`` of ``num_labels`` classes."""
    from transformers import GPT2Config, GPT2ForSequenceClassification, GPT2LMHeadModel

    _quiet_transformers()
    tokenizer = tokenizer if tokenizer is not None else build_char_tokenizer(texts)
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=cfg.context,
        n_embd=cfg.n_embd,
        n_layer=cfg.n_layer,
        n_head=cfg.n_head,
        resid_pdrop=cfg.dropout,
        embd_pdrop=cfg.dropout,
        attn_pdrop=cfg.dropout,
        bos_token_id=None,
        eos_token_id=None,
        tie_word_embeddings=False,
        num_labels=num_labels,
        pad_token_id=PAD if cfg.head == "classifier" else None,
    )
    cls = GPT2ForSequenceClassification if cfg.head == "classifier" else GPT2LMHeadModel
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = cls(config)
    if cfg.head == "classifier":
        setattr(model, HEAD, num_labels)
    name = f"char-gpt2-{cfg.n_layer}x{cfg.n_embd}"
    return ModelBundle(model=model, tokenizer=tokenizer, codec=Codec(tokenizer), name=name)


def _from_hub(repo: str, head: str = "lm", num_labels: int = 2) -> ModelBundle:
    """A model by its Hugging Face hub id (downloaded to the hub cache), where the hub is
    reachable; else one line that names the way in without it."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    logging.getLogger("fedgpt").warning("model.path: loading %s from the Hugging Face hub", repo)
    try:
        tokenizer = AutoTokenizer.from_pretrained(repo)
        if head == "classifier":
            model = AutoModelForSequenceClassification.from_pretrained(
                repo, num_labels=num_labels, pad_token_id=PAD
            )
            setattr(model, HEAD, num_labels)
        else:
            model = AutoModelForCausalLM.from_pretrained(repo)
    except (OSError, ValueError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise ModelError(
            f"model.path 'hf:{repo}': the Hugging Face hub did not serve it ({first}); use "
            "a local checkpoint or `fedgpt model pull`"
        ) from None
    model.float()
    return ModelBundle(model=model, tokenizer=tokenizer, codec=Codec(tokenizer), name=repo)


def load_pretrained(path: str | Path, head: str = "lm", num_labels: int = 2) -> ModelBundle:
    """A Hugging Face causal LM and its tokenizer: from a local folder, a pulled model's
    name, or (only when asked for by ``hf:org/name``) the hub. ``head = "classifier"``:
    the same checkpoint as ``AutoModelForSequenceClassification`` with a new head of
    ``num_labels`` classes (initialised from the global torch seed)."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    _quiet_transformers()
    p = Path(path)
    if is_hub_id(str(path)):
        return _from_hub(str(path).removeprefix("hf:"), head, num_labels)
    if is_pulled_name(str(path)):
        from fedgpt.models.catalogue import pulled

        p = pulled(str(path))
    if not p.exists():
        raise ModelError(f"model.path '{p}' does not exist")
    if not (p / "config.json").is_file():
        raise ModelError(f"model.path '{p}': expected a Hugging Face checkpoint with config.json")
    kw = {"num_labels": num_labels, "pad_token_id": PAD} if head == "classifier" else {}
    auto = AutoModelForSequenceClassification if head == "classifier" else AutoModelForCausalLM
    try:
        model = auto.from_pretrained(p, local_files_only=True, **kw)
    except (OSError, ValueError, KeyError, json.JSONDecodeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"model.path '{p}': cannot load the model: {first}") from None
    try:
        tokenizer = AutoTokenizer.from_pretrained(p, local_files_only=True)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"model.path '{p}': cannot load the tokenizer: {first}") from None
    model.float()
    if head == "classifier":
        setattr(model, HEAD, num_labels)
    return ModelBundle(model=model, tokenizer=tokenizer, codec=Codec(tokenizer), name=p.name)


#: LoRA's default target modules per ``model_type``: every projection of attention and MLP
#: (as QLoRA, Dettmers et al. 2023, found best), by their names in each architecture.
LORA_TARGETS = {
    "gpt2": ["c_attn", "c_proj", "c_fc"],
    **dict.fromkeys(
        ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "phi3", "olmo", "granite"),
        ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    ),
}


def default_lora_targets(model) -> list[str]:
    """The default LoRA target modules of ``model``'s architecture; a ModelError naming
    ``model.lora.target_modules`` for an architecture without one."""
    kind = getattr(model.config, "model_type", "")
    if kind not in LORA_TARGETS:
        raise ModelError(
            f"model.lora.target_modules: no default for model type {kind!r}; name the "
            f"modules to adapt (known defaults: {', '.join(sorted(LORA_TARGETS))})"
        )
    return list(LORA_TARGETS[kind])


def add_lora(bundle: ModelBundle, cfg: ModelConfig) -> ModelBundle:
    """Wrap the model with PEFT LoRA adapters; only adapter weights stay trainable."""
    from peft import LoraConfig, get_peft_model

    present = {name.rsplit(".", 1)[-1] for name, _ in bundle.model.named_modules()}
    targets = list(cfg.lora.target_modules) or default_lora_targets(bundle.model)
    missing = [m for m in targets if m not in present]
    if missing:
        raise ModelError(
            f"model.lora.target_modules: {missing} not found in the model "
            f"(it has e.g. {sorted(present - {''})[:8]})"
        )
    fan_in_fan_out = type(bundle.model).__name__.startswith("GPT2")
    lcfg = LoraConfig(
        r=cfg.lora.r,
        lora_alpha=cfg.lora.alpha,
        lora_dropout=cfg.lora.dropout,
        target_modules=targets,
        fan_in_fan_out=fan_in_fan_out,
        task_type="SEQ_CLS" if getattr(bundle.model, HEAD, None) else "CAUSAL_LM",
    )  # SEQ_CLS: the new classification head trains (and travels) with the adapters
    model = get_peft_model(bundle.model, lcfg)
    if (k := getattr(bundle.model, HEAD, None)) is not None:
        setattr(model, HEAD, k)
    return ModelBundle(
        model=model, tokenizer=bundle.tokenizer, codec=bundle.codec, name=bundle.name, lora=True
    )


def build_model(
    cfg: ModelConfig, texts: Iterable[str], seed: int, num_labels: int = 2
) -> ModelBundle:
    """The model described by ``cfg``: loaded from ``cfg.path`` or built fresh, plus LoRA;
    with ``model.head = "classifier"``, a sequence classifier of ``num_labels`` classes."""
    if cfg.path:
        with torch.random.fork_rng():
            torch.manual_seed(seed)  # the new classification head, if any
            bundle = load_pretrained(cfg.path, cfg.head, num_labels)
    else:
        bundle = build_char_gpt2(cfg, texts, seed, num_labels=num_labels)

    if cfg.lora.enabled:
        with torch.random.fork_rng():
            torch.manual_seed(seed + 1)
            bundle = add_lora(bundle, cfg)
    if cfg.gradient_checkpointing:
        base = bundle.model.get_base_model() if bundle.lora else bundle.model
        if not getattr(base, "supports_gradient_checkpointing", False):
            raise ModelError(f"model.gradient_checkpointing: {type(base).__name__} has none")
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return bundle


def tabular_bundle(
    cfg: ModelConfig, n_features: int, seed: int, num_classes: int = 2
) -> ModelBundle:
    """The classical reference model (``model.family`` logistic or mlp)."""
    from fedgpt.models.tabular import build_tabular

    model = build_tabular(cfg.family, n_features, num_classes, cfg.hidden, seed)
    name = f"{cfg.family}-{n_features}" + (f"x{cfg.hidden}" if cfg.family == "mlp" else "")
    return ModelBundle(model=model, tokenizer=None, codec=None, name=name)


def save_model(bundle: ModelBundle, out: str | Path) -> Path:
    """Save in Hugging Face format (safetensors + tokenizer), loadable by plain transformers.

    A LoRA model is saved merged (a plain causal LM, float32 whatever ``model.dtype``) and
    its adapters beside it in ``adapter/`` (loadable with PEFT).
    """
    import shutil

    from fedgpt.files import replace_dir

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")  # built whole, then renamed into place
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    model = bundle.model
    if bundle.tokenizer is None:  # the classical reference: no tokenizer
        from fedgpt.models.tabular import save_tabular

        save_tabular(model, tmp)
        return replace_dir(tmp, out)
    if bundle.lora:
        model.save_pretrained(tmp / "adapter", safe_serialization=True)
        import copy

        # merged in float32: a small adapter delta added to bfloat16 weights would round away
        model = copy.deepcopy(model).float().merge_and_unload()
    model.save_pretrained(tmp, safe_serialization=True)
    bundle.tokenizer.save_pretrained(tmp)
    return replace_dir(tmp, out)
