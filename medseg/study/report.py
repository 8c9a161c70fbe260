"""The sweep report, built from the MLflow store alone: per-run rows, mean +- std over seeds per
(norm, batch size) as CSV and Markdown, and PNG plots. Logged to the sweep's parent run.

Per child run, read back from MLflow:

* ``dice_mean`` and ``dice_<label>``: validation Dice of the best epoch's model (sliding window),
  ``hd95_mean`` in mm;
* ``seconds_per_iteration`` and ``patches_per_second``: means over the run's epochs (wall time,
  data loading included); ``peak_memory_mb``: the process's peak resident memory on CPU, the peak
  allocated GPU memory on CUDA; ``final_train_loss``: the last epoch's mean loss;
* ``bn_batch_stats_gap`` (batch norm only): Dice with batch statistics minus Dice with running
  statistics, for the best model.
"""
from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from medseg.atomic import atomic_write_text, write_csv
from medseg.errors import MedsegError
from medseg.tracking import Tracker

SUMMARY_METRICS = ("dice_mean", "hd95_mean", "seconds_per_iteration", "patches_per_second", "peak_memory_mb",
                   "final_train_loss", "bn_batch_stats_gap", "dice_mean_batch_stats")
NORM_ORDER = ("instance", "group", "layer", "batch", "none")


def _history(client, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def find_sweep(client, experiment: str, sweep_id: str | None = None):
    """The experiment id and the sweep's parent run (the newest sweep when ``sweep_id`` is None).

    Raises:
        MedsegError: no such experiment, or no sweep (with that id) in it.
    """
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise MedsegError("no such MLflow experiment", experiment)
    query = "tags.`medseg.role` = 'parent'" + (f" and tags.`medseg.sweep_id` = '{sweep_id}'" if sweep_id else "")
    parents = client.search_runs([exp.experiment_id], query, order_by=["attributes.start_time DESC"], max_results=1)
    if not parents:
        raise MedsegError(f"no sweep{' ' + sweep_id if sweep_id else ''} in this experiment", experiment)
    return exp.experiment_id, parents[0]


def collect_runs(client, experiment_id: str, sweep_id: str) -> list[dict]:
    """One row per finished child run of the sweep (superseded restarts left out), with its
    learning curve under ``curve``: [(training patches seen, validation mean Dice)]."""
    runs = client.search_runs([experiment_id], f"tags.`medseg.sweep_id` = '{sweep_id}' and "
                              "tags.`medseg.role` = 'child' and attributes.status = 'FINISHED'", max_results=5000)
    rows = []
    for r in runs:
        if r.data.tags.get("medseg.superseded") == "true":
            continue
        p, m = r.data.params, r.data.metrics
        bs, ipe = int(p["train.batch_size"]), int(p["train.iterations_per_epoch"])
        epochs = _history(client, r.info.run_id, "seconds_per_iteration")
        loss = _history(client, r.info.run_id, "train_loss")
        row = {"run_id": r.info.run_id, "norm": p["model.norm"], "batch_size": bs, "seed": int(p["seed"]),
               "iterations": ipe * int(p["train.epochs"]), "samples": ipe * int(p["train.epochs"]) * bs,
               "lr": float(p["train.lr"]), "dice_mean": m.get("best_val_dice_mean", math.nan),
               "hd95_mean": m.get("best_val_hd95_mean", math.nan),
               "seconds_per_iteration": float(np.mean([v for _, v in epochs])) if epochs else math.nan,
               "patches_per_second": float(np.mean([v for _, v in
                                                    _history(client, r.info.run_id, "patches_per_second")] or [math.nan])),
               "peak_memory_mb": max([v for _, v in _history(client, r.info.run_id, "peak_memory_mb")] or [math.nan]),
               "final_train_loss": loss[-1][1] if loss else math.nan,
               "bn_batch_stats_gap": m.get("best_bn_batch_stats_gap", math.nan),
               "dice_mean_batch_stats": m.get("best_val_dice_mean_batch_stats", math.nan)}
        row.update({k.replace("best_val_", ""): v for k, v in m.items()
                    if k.startswith("best_val_dice_") and k not in ("best_val_dice_mean", "best_val_dice_mean_batch_stats")})
        row["curve"] = [((s + 1) * ipe * bs, v) for s, v in _history(client, r.info.run_id, "val_dice_mean")]
        rows.append(row)
    order = {n: i for i, n in enumerate(NORM_ORDER)}
    return sorted(rows, key=lambda x: (x["batch_size"], order.get(x["norm"], 99), x["seed"]))


def summarize_runs(rows: list[dict]) -> list[dict]:
    """Mean and sample standard deviation over seeds for each (norm, batch size)."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        groups[(r["norm"], r["batch_size"])].append(r)
    metrics = list(SUMMARY_METRICS) + _class_keys(rows)
    out = []
    for (norm, bs), rs in groups.items():
        s = {"norm": norm, "batch_size": bs, "seeds": len(rs), "samples": rs[0]["samples"],
             "iterations": rs[0]["iterations"], "lr": rs[0]["lr"]}
        for k in metrics:
            v = np.array([r.get(k, math.nan) for r in rs], dtype=float)
            v = v[np.isfinite(v)]
            s[f"{k}_mean"] = float(v.mean()) if v.size else math.nan
            s[f"{k}_std"] = float(v.std(ddof=1)) if v.size > 1 else math.nan
        out.append(s)
    order = {n: i for i, n in enumerate(NORM_ORDER)}
    return sorted(out, key=lambda x: (order.get(x["norm"], 99), x["batch_size"]))


def _class_keys(rows: list[dict]) -> list[str]:
    """``dice_<label>`` keys of the per-class Dice columns."""
    return sorted({k for r in rows for k in r if k.startswith("dice_") and k not in SUMMARY_METRICS})


def mean_std(s: dict, key: str, fmt: str) -> str:
    """``"0.622 ± 0.258"`` from a summary row's ``<key>_mean`` / ``<key>_std`` (``"-"`` if missing)."""
    m, sd = s[f"{key}_mean"], s[f"{key}_std"]
    if not math.isfinite(m):
        return "-"
    return format(m, fmt) + (f" ± {format(sd, fmt.lstrip('+'))}" if math.isfinite(sd) else "")


def markdown_table(summary: list[dict]) -> str:
    """The summary as a Markdown table (mean ± std over seeds)."""
    classes = sorted({k[:-5] for s in summary for k in s
                      if k.startswith("dice_") and k.endswith("_mean") and k[:-5] not in SUMMARY_METRICS})
    head = (["norm", "batch size", "seeds", "iterations", "lr", "mean Dice"] + [c.replace("dice_", "Dice ")
            for c in classes] + ["HD95 (mm)", "s/iteration", "patches/s", "peak memory (MB)", "final loss",
                                 "BN batch-stats gap"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s in summary:
        cells = [s["norm"], str(s["batch_size"]), str(s["seeds"]), str(s["iterations"]), f"{s['lr']:.3g}",
                 mean_std(s, "dice_mean", ".3f")] + [mean_std(s, c, ".3f") for c in classes] + [
                 mean_std(s, "hd95_mean", ".2f"), mean_std(s, "seconds_per_iteration", ".3f"), mean_std(s, "patches_per_second", ".1f"),
                 mean_std(s, "peak_memory_mb", ".0f"), mean_std(s, "final_train_loss", ".3f"), mean_std(s, "bn_batch_stats_gap", "+.3f")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _by_norm(summary: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = defaultdict(list)
    for s in summary:
        out[s["norm"]].append(s)
    return out


def _errorbar_plot(ax, summary: list[dict], key: str, ylabel: str) -> None:
    for norm, ss in _by_norm(summary).items():
        ss = sorted(ss, key=lambda s: s["batch_size"])
        err = [s[f"{key}_std"] if math.isfinite(s[f"{key}_std"]) else 0 for s in ss]
        ax.errorbar([s["batch_size"] for s in ss], [s[f"{key}_mean"] for s in ss], yerr=err, marker="o", capsize=4,
                    label=norm)
    ax.set_xlabel("batch size"), ax.set_ylabel(ylabel), ax.grid(alpha=0.3), ax.legend()
    ax.set_xticks(sorted({s["batch_size"] for s in summary}))


def plot_report(rows: list[dict], summary: list[dict], folder: Path) -> list[Path]:
    """dice_vs_batch_size.png, learning_curves.png, speed_memory.png in ``folder``."""
    paths = []
    fig, ax = plt.subplots(figsize=(6, 4.5))
    _errorbar_plot(ax, summary, "dice_mean", "validation mean Dice (± std over seeds)")
    ax.set_title("Validation Dice vs batch size")
    fig.tight_layout(), fig.savefig(folder / "dice_vs_batch_size.png", dpi=110), plt.close(fig)
    paths.append(folder / "dice_vs_batch_size.png")

    sizes = sorted({r["batch_size"] for r in rows})
    fig, axes = plt.subplots(1, len(sizes), figsize=(4.5 * len(sizes), 4), squeeze=False, sharey=True)
    for ax, bs in zip(axes[0], sizes):
        curves: dict[str, list] = defaultdict(list)
        for r in rows:
            if r["batch_size"] == bs and r["curve"]:
                curves[r["norm"]].append(r["curve"])
        for norm, cs in curves.items():
            n = min(len(c) for c in cs)
            x = [c[0] for c in cs[0][:n]]
            y = np.array([[v for _, v in c[:n]] for c in cs])
            ax.plot(x, y.mean(0), marker=".", label=norm)
            if len(cs) > 1:
                ax.fill_between(x, y.min(0), y.max(0), alpha=0.15)
        ax.set_title(f"batch size {bs}"), ax.set_xlabel("training patches seen"), ax.grid(alpha=0.3)
        ax.set_ylim(0, 1), ax.legend()
    axes[0][0].set_ylabel("validation mean Dice (mean of seeds; band: min-max)")
    fig.tight_layout(), fig.savefig(folder / "learning_curves.png", dpi=110), plt.close(fig)
    paths.append(folder / "learning_curves.png")

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.5))
    _errorbar_plot(a, summary, "seconds_per_iteration", "seconds per iteration")
    _errorbar_plot(b, summary, "peak_memory_mb", "peak memory (MB)")
    fig.tight_layout(), fig.savefig(folder / "speed_memory.png", dpi=110), plt.close(fig)
    paths.append(folder / "speed_memory.png")
    return paths


def build_report(tracking_uri: str, experiment: str, folder: Path, sweep_id: str | None = None,
                 log_to_parent: bool = True) -> dict:
    """Build the report of a sweep from the MLflow store and write it to ``folder``.

    Writes ``runs.csv`` (one row per child run), ``summary.csv`` and ``summary.md`` (mean ± std over
    seeds per norm and batch size) and the PNG plots; logs them to the parent run under ``report/``.

    Returns:
        ``{"sweep_id", "parent_run_id", "rows", "summary", "folder"}``.

    Raises:
        MedsegError: no such experiment or sweep, or no finished child run.
    """
    client = Tracker.client_for(tracking_uri)
    experiment_id, parent = find_sweep(client, experiment, sweep_id)
    sweep_id = parent.data.tags["medseg.sweep_id"]
    rows = collect_runs(client, experiment_id, sweep_id)
    if not rows:
        raise MedsegError(f"sweep {sweep_id} has no finished child run yet", experiment)
    summary = summarize_runs(rows)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    write_csv([{k: v for k, v in r.items() if k != "curve"} for r in rows], folder / "runs.csv")
    write_csv(summary, folder / "summary.csv")
    p = parent.data.params
    header = (f"# Normalizer x batch-size sweep `{sweep_id}`\n\n"
              f"Experiment `{experiment}`, parent run `{parent.info.run_id}`, {len(rows)} finished child runs.\n\n"
              f"Budget rule: {p.get('sweep.rule', '?')}. Mean ± standard deviation over seeds; Dice and HD95 of the "
              "best epoch's model on the validation fold (sliding window); BN batch-stats gap = Dice with batch "
              "statistics minus Dice with running statistics.\n\n")
    atomic_write_text(folder / "summary.md", header + markdown_table(summary))
    plot_report(rows, summary, folder)
    if log_to_parent:
        client.log_artifacts(parent.info.run_id, str(folder), "report")
    return {"sweep_id": sweep_id, "parent_run_id": parent.info.run_id, "rows": rows, "summary": summary,
            "folder": folder}
