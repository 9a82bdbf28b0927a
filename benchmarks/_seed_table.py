"""The harness behind benchmarks/medical.py and benchmarks/finance.py: one task, each model
(the classical reference and the SmolLM2 LoRA classifier), each configuration, several
seeds; a table and a plot of pooled test AUC with 95 % intervals, and the cost of each row.

* single-site: each site's local-only model on its own test records (the FedAvg run's
  baseline), mean ± sd over sites;
* centralized: one model on the pooled training records (the FedAvg run's baseline);
* FedAvg; FedProx + FedAdam; FedAvg under SecAgg; record-level DP-SGD at ε = 1 and ε = 8
  per site (:func:`dp_sgd`); client-level DP (:func:`client_dp`) where asked for.

Cost per row: the federated rounds' wall seconds (this process: clients and server on the
same cores; median over seeds) and the bytes moved (updates up, weights down).

Intervals: a two-level bootstrap, seeds resampled with replacement and, within each, the
pooled test records resampled by class from the run's score histogram
(:func:`fedgpt.tasks.scores.auc_interval` is the one-run version); 2.5 and 97.5
percentiles of the mean AUC over seeds.
"""

from __future__ import annotations

import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from fedgpt.config import load_config
from fedgpt.experiment import run_experiment
from fedgpt.privacy.accountant import plan_noise
from fedgpt.tasks import scores

RESULTS = Path(__file__).parent / "results"


def value(overrides: list[str], key: str) -> float:
    """The last value ``overrides`` set for ``key``."""
    return float(next(o.split("=", 1)[1] for o in reversed(overrides) if o.startswith(key + "=")))


def dp_sgd(models: dict, epsilon: float, fewest: int, delta: float = 1e-5):
    """The DP-SGD configuration of each model: z planned (dp-accounting) so that a site of
    ``fewest`` training records, whose sampling rate is the highest, ends at ``epsilon``
    after all its steps; each site also enforces ``epsilon`` itself."""

    def extra(model: str) -> list[str]:
        o = models[model]
        steps = int(value(o, "federation.rounds") * value(o, "client.local_steps"))
        q = min(1.0, value(o, "client.batch_size") / fewest)
        z = plan_noise(epsilon, q, steps, delta)
        return ['privacy.mode="dp_sgd"', f"privacy.noise_multiplier={z:.6g}",
                f"privacy.target_epsilon={epsilon * 1.001:g}", "privacy.clip_norm=1.0",
                f"privacy.delta={delta:g}"]  # fmt: skip

    return extra


def client_dp(models: dict, epsilon: float, sites: int, clip: float, delta: float = 1e-5):
    """Client-level DP (DP-FedAvg, central_dp): every site each round (q = 1), z planned
    so the released model is (ε, δ)-DP towards any one site after all rounds."""

    def extra(model: str) -> list[str]:
        rounds = int(value(models[model], "federation.rounds"))
        z = plan_noise(epsilon, 1.0, rounds, delta)
        return ['privacy.mode="central_dp"', f"privacy.noise_multiplier={z:.6g}",
                f"privacy.clip_norm={clip:g}", f"privacy.delta={delta:g}",
                'federation.server_optimizer="fedavg"']  # fmt: skip

    return extra


def run_one(overrides: list[str], seed: int, root: Path, name: str) -> dict:
    cfg = load_config(None, [*overrides, f"seed={seed}", f'out_dir="{root}"', 'name="b"'])
    start = time.process_time()
    summary = run_experiment(cfg, root / name)
    rows = [json.loads(x) for x in (root / name / "metrics.jsonl").read_text().splitlines()]
    fed = summary["federated"]
    out = {
        "seed": seed,
        "auc": fed.get("test_auc"),
        "hist": fed.get("test_hist"),
        "accuracy": fed.get("test_accuracy"),
        "ece": fed.get("test_ece"),
        "federated_seconds": summary.get("federated_seconds"),
        "bytes_moved": sum(r.get("bytes_up", 0) + r.get("bytes_down", 0) for r in rows),
        "process_seconds": time.process_time() - start,
        "epsilon": (summary.get("privacy") or {}).get("epsilon"),
    }
    base = summary.get("baselines") or {}
    if base:
        c, loc = base["centralized"], base["local_only"]
        out["centralized"] = {"auc": c.get("test_auc"), "hist": c.get("test_hist"),
                              "accuracy": c.get("test_accuracy")}  # fmt: skip
        out["sites"] = [r.get("test_auc") for r in loc["per_client"]]
        per = summary.get("federated_per_client") or {}  # the same sites, federated model
        out["fed_sites"] = [(per.get(r.get("client")) or {}).get("auc") for r in loc["per_client"]]
    return out


def mean_interval(runs: list[dict], key: str = "hist", draws: int = 2000) -> list[float]:
    """The 95 % interval of one run's AUC, over test records and seeds together.

    Every seed is scored on the same test records, so averaging seeds does not shrink the
    error that comes from which records happen to be in the test set: resampling each seed's
    records on its own and averaging would make the interval about sqrt(seeds) too narrow.
    Each draw instead picks a seed at random and resamples its test records by class (the
    stratified bootstrap of :func:`fedgpt.tasks.scores.auc_interval`); the quantiles of
    those AUCs cover the test-record error and the spread over seeds."""
    hists = [np.asarray(r[key], dtype=np.float64).reshape(3, scores.BINS) for r in runs]
    rng = np.random.default_rng(0)
    seed_of = rng.integers(0, len(hists), size=draws)
    out = np.empty(draws)
    for i, h in enumerate(hists):
        mine = np.flatnonzero(seed_of == i)
        if not mine.size:
            continue
        n0, n1 = int(round(h[0].sum())), int(round(h[1].sum()))
        neg = rng.multinomial(n0, h[0] / h[0].sum(), size=mine.size).astype(np.float64)
        pos = rng.multinomial(n1, h[1] / h[1].sum(), size=mine.size).astype(np.float64)
        out[mine] = scores.aucs(neg, pos)
    return [float(x) for x in np.quantile(out, [0.025, 0.975])]


def summarise(runs: list[dict], key: str | None = None) -> dict:
    """Mean AUC over seeds, its interval, accuracy and cost, for one table row."""
    src = [r[key] for r in runs] if key else runs
    aucs = [r["auc"] for r in src if r.get("auc") is not None]
    row = {
        "seeds": len(aucs),
        "auc": statistics.mean(aucs) if aucs else None,
        "auc_sd_over_seeds": statistics.stdev(aucs) if len(aucs) > 1 else 0.0,
        "auc_ci": mean_interval([r for r in src if r.get("hist")]) if aucs else None,
        "accuracy": statistics.mean(r["accuracy"] for r in src),
    }
    if key is None:
        row |= {
            "federated_seconds": statistics.median(r["federated_seconds"] for r in runs),
            "bytes_moved": statistics.median(r["bytes_moved"] for r in runs),
            "epsilon": max((r["epsilon"] for r in runs if r["epsilon"] is not None), default=None),
        }
    return row


def single_site(runs: list[dict], key: str = "sites") -> dict:
    """Mean over seeds of the mean AUC over sites, each site's model on its own test
    records (``"sites"``: trained alone; ``"fed_sites"``: the federated model)."""
    sites = [a for r in runs for a in r[key] if a is not None]
    means = [statistics.mean(a for a in r[key] if a is not None) for r in runs]
    return {
        "seeds": len(runs),
        "auc": statistics.mean(means),
        "auc_sd_over_sites": statistics.pstdev(sites),
        "sites": len(runs[0][key]),
    }


def run_table(task: str, models: dict, configs: dict, seeds: list[int], log=print) -> dict:
    """Every (model, configuration, seed); returns the table's rows per model."""
    table: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for model, base in models.items():
            rows: dict[str, dict] = {}
            for config, extra in configs.items():
                runs = []
                for seed in seeds:
                    t0 = time.perf_counter()
                    over = [*base, *extra(model)] if callable(extra) else [*base, *extra]
                    if config != "fedavg":
                        over.append("baselines.enabled=false")
                    runs.append(run_one(over, seed, Path(tmp), f"{model}-{config}-{seed}"))
                    log(f"{task} {model} {config} seed {seed}: AUC {runs[-1]['auc']:.4f} "
                        f"({time.perf_counter() - t0:.0f} s)")  # fmt: skip
                rows[config] = summarise(runs)
                if config == "fedavg":
                    rows["centralized"] = summarise(runs, "centralized")
                    rows["single_site"] = single_site(runs)
                    rows["fedavg_sites"] = single_site(runs, "fed_sites")
            table[model] = rows
    return table


LABELS = {
    "single_site": "single site (mean ± sd over sites)",
    "fedavg_sites": "FedAvg model on each site (mean ± sd over sites)",
    "centralized": "centralized",
    "fedavg": "FedAvg",
    "fedprox_fedadam": "FedProx + FedAdam",
    "secagg": "FedAvg + SecAgg",
    "dp_sgd_eps8": "DP-SGD, ε = 8 per site",
    "dp_sgd_eps1": "DP-SGD, ε = 1 per site",
    "central_dp": "client-level DP, ε = 8 (central_dp)",
}
ORDER = list(LABELS)


def markdown(task: str, table: dict, claims: list[str]) -> str:
    lines = [f"# {task}", ""]
    for model, rows in table.items():
        central = rows.get("centralized", {}).get("auc")
        commands = sorted({r["command"] for r in rows.values()})
        head = ("| configuration | seeds | AUC | 95 % interval | × centralized | accuracy | ε "
                "| federated s | bytes moved |")  # fmt: skip
        lines += [f"## {model}", "", *[f"`{c}`  " for c in commands], "", head,
                  "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for key in [k for k in ORDER if k in rows]:
            r = rows[key]
            if key in ("single_site", "fedavg_sites"):
                auc = f"{r['auc']:.3f} ± {r['auc_sd_over_sites']:.3f}"
                lines.append(f"| {LABELS[key]} | {r['seeds']} | {auc} | | "
                             f"{r['auc'] / central:.3f} | | | | |")  # fmt: skip
                continue
            ci = r.get("auc_ci") or [float("nan")] * 2
            eps = f"{r['epsilon']:.2f}" if r.get("epsilon") else ""
            cost = (f"{r['federated_seconds']:.1f} | {r['bytes_moved'] / 2**20:.2f} MiB"
                    if "federated_seconds" in r else " | ")  # fmt: skip
            lines.append(
                f"| {LABELS[key]} | {r['seeds']} | {r['auc']:.3f} | {ci[0]:.3f}–{ci[1]:.3f} | "
                f"{r['auc'] / central:.3f} | {r['accuracy']:.3f} | {eps} | {cost} |"
            )
        lines.append("")
    lines += ["## The seed's claims (not measured here)", "", *[f"- {c}" for c in claims], ""]
    return "\n".join(lines)


def plot(task: str, table: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(table), figsize=(6 * len(table), 4), squeeze=False)
    for ax, (model, rows) in zip(axes[0], table.items(), strict=True):
        keys = [k for k in ORDER if k in rows]
        aucs = [rows[k]["auc"] for k in keys]
        err = [[0, 0] if k in ("single_site", "fedavg_sites") else
               [rows[k]["auc"] - rows[k]["auc_ci"][0], rows[k]["auc_ci"][1] - rows[k]["auc"]]
               for k in keys]  # fmt: skip
        ax.barh(range(len(keys)), aucs, xerr=np.array(err).T, color="tab:blue", alpha=0.8)
        ax.set_yticks(range(len(keys)), [LABELS[k] for k in keys])
        ax.invert_yaxis()
        ax.axvline(0.5, color="grey", lw=0.8, ls=":")
        ax.set_xlim(0.4, 1.0)
        ax.set_xlabel("test AUC: pooled (95 % interval), or mean over sites")
        ax.set_title(model)
    fig.suptitle(task)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def write(name: str, task: str, table: dict, meta: dict, claims: list[str], command: str):
    """Write the results; the rows of models and configurations not run this time are kept
    from the file already there (each model's command is recorded with its rows)."""
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    old = json.loads(path.read_text()) if path.exists() else {}
    meta = {**meta, "torch": torch.__version__, "python": platform.python_version(),
            "threads": torch.get_num_threads()}  # fmt: skip
    merged = old.get("table", {})
    for model, rows in table.items():
        merged.setdefault(model, {}).update({k: {**r, "command": command} for k, r in rows.items()})
    runs = {**old.get("runs", {}), command: meta}
    path.write_text(json.dumps({"runs": runs, "table": merged}, indent=2) + "\n")
    (RESULTS / f"{name}.md").write_text(markdown(task, merged, claims))
    plot(task, merged, RESULTS / f"{name}.png")
