"""The server side of a FedGPT run over Flower, given a runtime and the client ids.

It wires the same :class:`~fedgpt.federation.loop.FederatedServer` as
:func:`fedgpt.experiment.run_experiment` (:func:`fedgpt.build.build_server`) and
drives it with the same :class:`fedgpt.runner.Runner` into the same run folder
(``config.toml``, ``metrics.jsonl``, ledger, ``checkpoints/``, ``model/``,
``summary.json``, report; ``resume`` continues from the last checkpoint), with two
differences that follow from the server not holding the clients' data:

* no baselines (centralized and local-only training need every client's text);
* ``dataset`` in the summary covers only what the server knows.

FedMD (its client side lives outside FedGPT's ``ClientApp`` messages on the nodes) and
the in-process fault injection (``runtime.fail_*``, ``runtime.straggle_*``) are refused
with a one-line error.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from fedgpt.errors import ConfigError
from fedgpt.federation.state import count

Log = Callable[[str], None]


def server_model(cfg):
    """The server's model (and, for Shakespeare, the clients' texts as the server can
    rebuild them), as a :class:`~fedgpt.experiment.Prepared`.

    Shakespeare: ``prepare(cfg)`` on the packaged plays, so the character vocabulary is
    the one every node builds from the same configuration. ``data.source = "dir"``: the
    server has no client text, so the model must come from a shared checkpoint
    (``model.path``) that every node holds too.
    """
    from fedgpt.build import prepare, prepare_with

    if cfg.data.source == "shakespeare":
        return prepare(cfg)
    if not cfg.model.path:
        raise ConfigError(
            'over Flower, data.source = "dir" needs model.path: a checkpoint every machine '
            "holds (the vocabulary cannot be built from text the server never sees)"
        )
    from fedgpt.build import run_model

    return prepare_with(cfg, [], run_model(cfg))


def build_server(cfg, prep, runtime, ids: list[str], log: Log):
    """The FederatedServer over ``runtime``, from the same builder as in-process runs
    (:func:`fedgpt.build.build_server`). Returns (server, privacy, tiers)."""
    from fedgpt.build import build_server as build

    public = None
    if cfg.privacy.secure_aggregation == "ckks":
        from fedgpt.privacy.ckks import read_context

        if not cfg.privacy.ckks_keys:
            raise ConfigError(
                'privacy.secure_aggregation = "ckks" over Flower needs privacy.ckks_keys: the '
                "server reads public_context.bin there, each node its secret_context.bin"
            )
        path = Path(cfg.privacy.ckks_keys) / "public_context.bin"
        public = read_context(path, "privacy.ckks_keys public context")
    server, privacy, tiers = build(cfg, prep, runtime, ids, public)
    if privacy.active:
        log(f"privacy: {cfg.privacy.mode}, noise multiplier {privacy.z:.4g}")
    return server, privacy, tiers


class LogHooks:
    """:class:`fedgpt.callbacks.Hooks` that print log lines (the ServerApp's output) and one
    line per round."""

    def __init__(self, log: Log):
        self.log = log

    def rounds(self, total: int, done: int) -> None: ...
    def stage(self, name: str, total: int | None) -> None: ...
    def advance(self, n: int = 1) -> None: ...

    def round_done(self, row: dict) -> None:
        self.log(
            f"round {row['round']}: participants {count(row['participants'])}, "
            f"dropped {len(row['dropped'])}, train_loss {row['train_loss']}, "
            f"test_loss {row['test_loss']}, {row['seconds']:.2f} s"
        )


def run_rounds(
    cfg,
    prep,
    server,
    privacy,
    run_dir: Path,
    log: Log,
    extra: dict,
    resume: bool = False,
    on_attempt=None,
    run_id: str | None = None,
) -> dict:
    """Rounds (with the ``runtime.min_replies`` quorum and retries), metrics, ledger,
    checkpoints, model, summary and report in ``run_dir``, exactly as ``run_experiment``
    writes them (:class:`fedgpt.runner.Runner`), without baselines; ``resume`` continues
    from the folder's last checkpoint. Returns the summary (``extra`` merged in)."""
    from fedgpt.runner import Runner

    return Runner(
        cfg, prep, server, privacy, run_dir, LogHooks(log), resume=resume, extra=extra,
        run_id=run_id, on_attempt=on_attempt,
    ).run()  # fmt: skip
