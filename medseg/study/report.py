"""The sweep report, built from the MLflow store alone, logged to the sweep's parent run.

Per child run, read back from MLflow:

* the **final model** (the network at the end of training, which the study compares):
  ``final_val_dice_mean`` and the per-case Dice of every validation case and label
  (``final_case_dice/<case>/<label>``), the batch-dependence metrics
  (``final_batch_dependence_train`` / ``_eval``, in logits);
* the learning curve (``val_dice_mean`` per epoch) and whether it reached its plateau: a child is
  *not converged* when its last validation improved on the one before by more than
  ``plateau_delta`` mean Dice;
* the **best epoch's model** (``best_val_dice_mean``, HD95 in mm): shown beside the final model,
  never ranked by, since the epoch was chosen on the same validation cases (optimistic);
* ``seconds_per_iteration`` and ``patches_per_second`` (means over epochs, wall time, data loading
  included), ``peak_memory_mb`` (process peak RSS on CPU, peak allocated GPU memory on CUDA),
  ``final_train_loss``, and for batch norm ``bn_batch_stats_gap`` (Dice with batch statistics minus
  Dice with running statistics, best model).

Paired statistics between norms: see :mod:`medseg.study.statistics`.
"""
from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from medseg.atomic import atomic_write_text, write_csv
from medseg.errors import MedsegError
from medseg.keys import (
    BATCH_DEPENDENCE_EVAL,
    BATCH_DEPENDENCE_TRAIN,
    BEST_DICE_MEAN,
    BN_MODE_CASE_DICE,
    BN_MODE_DICE_MEAN,
    BN_MODES,
    FINAL_CASE_DICE,
    FINAL_DICE_MEAN,
    PATCHES_PER_SECOND,
    PEAK_MEMORY_MB,
    PRECISE_BN_PATCHES,
    SECONDS_PER_ITERATION,
    SUPERSEDED_TAG,
    SWEEP_ID_TAG,
    SWEEP_ROLE_TAG,
    TRAIN_LOSS,
    VAL_DICE_MEAN,
    check_sweep_id,
)
from medseg.norm_registry import NORMS
from medseg.study.rules import NEGLIGIBLE, PLATEAU_DELTA, UNLEARNED_LABEL_DICE
from medseg.study.statistics import (ALPHA, BN_PRECISE, BN_WINDOW, MIN_SEEDS, THESE_NETWORKS_ONLY, Comparison,
                                     batch_size_table, case_dice, cell_case_means, inference_statistics_table,
                                     interaction_table, label_table, mean_ci, pairwise_table, random_effect_interval,
                                     seed_case_grid)
from medseg.tracking import Tracker

SUMMARY_METRICS = ("final_dice_mean", "last_third_gain", "best_dice_mean", "hd95_mean", "seconds_per_iteration",
                   "patches_per_second",
                   "peak_memory_mb", "final_train_loss", "bn_batch_stats_gap", "batch_dependence_train",
                   "batch_dependence_eval", "bn_window_dice_mean", "bn_precise_dice_mean")
NORM_ORDER = NORMS
SWEEP_COLUMN = "sweep"  # the column naming each row's sweep in reports over several sweeps
TABLES = ("pairwise", "batch_size_effect", "interaction", "per_label", "inference_statistics")  # in report order
ROW_DETAIL = ("curve", "cases", "bn_mode_cases")  # a child row's nested data, left out of runs.csv
BN_MODE_NAMES = {"window": BN_WINDOW, "precise": BN_PRECISE}  # a BN inference mode -> its name in the tables


def _history(client, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def find_sweep(client, experiment: str, sweep_id: str | None = None):
    """The experiment id and the sweep's parent run (the newest sweep when ``sweep_id`` is None).

    Raises:
        MedsegError: no such experiment, no sweep (with that id) in it, or an id that is not a plain
            name (:func:`medseg.keys.check_sweep_id`).
    """
    if sweep_id is not None:
        check_sweep_id(sweep_id, "--sweep")
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise MedsegError("no such MLflow experiment", experiment)
    query = f"tags.`{SWEEP_ROLE_TAG}` = 'parent'" + (f" and tags.`{SWEEP_ID_TAG}` = '{sweep_id}'" if sweep_id else "")
    parents = client.search_runs([exp.experiment_id], query, order_by=["attributes.start_time DESC"], max_results=1)
    if not parents:
        raise MedsegError(f"no sweep{' ' + sweep_id if sweep_id else ''} in this experiment", experiment)
    return exp.experiment_id, parents[0]


def per_case_dice(metrics: dict[str, float], prefix: str = FINAL_CASE_DICE) -> dict[tuple[str, str], float]:
    """``{(case, label): Dice}`` of the final model from a run's metrics (``prefix``: another way of
    inferring it, :data:`medseg.keys.BN_MODE_CASE_DICE`)."""
    out = {}
    for k, v in metrics.items():
        parts = k.split("/")
        if len(parts) == 3 and parts[0] == prefix:
            out[(parts[1], parts[2])] = v
    return out


def plateau(curve: list[tuple[int, float]], delta: float) -> tuple[float, bool]:
    """The last validation's gain over the one before, and whether it is at most ``delta``
    (a curve with one point has gain NaN and counts as not converged)."""
    if len(curve) < 2:
        return math.nan, False
    gain = curve[-1][1] - curve[-2][1]
    return gain, gain <= delta


def last_third_gain(curve: list[tuple[int, float]]) -> float:
    """The last validation's mean Dice minus that of the last validation at or before two thirds of
    the curve's points (``curve[-1 - ceil(n / 3)]``; 12 points: validation 12 minus 8); NaN with
    fewer than 3 points."""
    if len(curve) < 3:
        return math.nan
    return curve[-1][1] - curve[-1 - math.ceil(len(curve) / 3)][1]


def unlearned_labels(means: dict[str, float], below: float = UNLEARNED_LABEL_DICE) -> list[str]:
    """The labels whose final-model Dice averaged over the validation cases (``means``,
    :func:`label_means`) is below ``below``, in ``means``' order: labels the run did not learn."""
    return [lab for lab, m in means.items() if m < below]


def label_means(cases: dict[tuple[str, str], float]) -> dict[str, float]:
    """``{label: final-model Dice averaged over the validation cases}``, labels sorted."""
    by_label: dict[str, list[float]] = defaultdict(list)
    for (_, label), d in cases.items():
        by_label[label].append(d)
    return {label: float(np.mean(by_label[label])) for label in sorted(by_label)}


def collect_runs(client, experiment_id: str, sweep_id: str, plateau_delta: float = PLATEAU_DELTA) -> list[dict]:
    """One row per finished child run of the sweep (superseded restarts left out), with its
    learning curve under ``curve`` ([(training patches seen, validation mean Dice)]) and its
    final model's per-case Dice under ``cases`` ({(case, label): Dice})."""
    runs = client.search_runs([experiment_id], f"tags.`{SWEEP_ID_TAG}` = '{sweep_id}' and "
                              f"tags.`{SWEEP_ROLE_TAG}` = 'child' and attributes.status = 'FINISHED'", max_results=5000)
    rows = []
    for r in runs:
        if r.data.tags.get(SUPERSEDED_TAG) == "true":
            continue
        p, m, run_id = r.data.params, r.data.metrics, r.info.run_id
        bs, ipe = int(p["train.batch_size"]), int(p["train.iterations_per_epoch"])
        epochs = _history(client, run_id, SECONDS_PER_ITERATION)
        loss = _history(client, run_id, TRAIN_LOSS)
        curve = [((s + 1) * ipe * bs, v) for s, v in _history(client, run_id, VAL_DICE_MEAN)]
        gain, converged = plateau(curve, plateau_delta)
        third = last_third_gain(curve)
        cases = per_case_dice(m)
        modes = {mode: per_case_dice(m, BN_MODE_CASE_DICE[mode]) for mode in BN_MODES if mode != "running"}
        row = {"run_id": run_id, "norm": p["model.norm"], "batch_size": bs, "seed": int(p["seed"]),
               "iterations": ipe * int(p["train.epochs"]), "samples": ipe * int(p["train.epochs"]) * bs,
               "lr": float(p["train.lr"]), "final_dice_mean": m.get(FINAL_DICE_MEAN, math.nan),
               "best_dice_mean": m.get(BEST_DICE_MEAN, math.nan), "last_gain": gain, "converged": converged,
               "last_third_gain": third, "still_rising": bool(third > plateau_delta),
               "hd95_mean": m.get("best_val_hd95_mean", math.nan),
               "seconds_per_iteration": float(np.mean([v for _, v in epochs])) if epochs else math.nan,
               "patches_per_second": float(np.mean([v for _, v in
                                                    _history(client, run_id, PATCHES_PER_SECOND)] or [math.nan])),
               "peak_memory_mb": max([v for _, v in _history(client, run_id, PEAK_MEMORY_MB)] or [math.nan]),
               "final_train_loss": loss[-1][1] if loss else math.nan,
               "bn_batch_stats_gap": m.get("best_bn_batch_stats_gap", math.nan),
               "batch_dependence_train": m.get(BATCH_DEPENDENCE_TRAIN, math.nan),
               "batch_dependence_eval": m.get(BATCH_DEPENDENCE_EVAL, math.nan),
               **{f"bn_{mode}_dice_mean": m.get(BN_MODE_DICE_MEAN[mode], math.nan) for mode in modes},
               "cases": cases, "bn_mode_cases": {k: v for k, v in modes.items() if v}, "curve": curve}
        means = label_means(cases)
        row.update({f"final_dice_{label}": m for label, m in means.items()})
        row["unlearned_labels"] = " ".join(unlearned_labels(means))
        rows.append(row)
    return sort_runs(rows)


def sort_runs(rows: list[dict]) -> list[dict]:
    """Child-run rows in report order: batch size, norm (:data:`NORM_ORDER`, unknown norms last), seed."""
    order = {n: i for i, n in enumerate(NORM_ORDER)}
    return sorted(rows, key=lambda r: (r["batch_size"], order.get(r["norm"], len(order)), r["seed"]))


def collect_sweeps(client, experiment: str, sweep_ids: list[str], what: str,
                   plateau_delta: float = PLATEAU_DELTA) -> tuple[dict[str, list[dict]], dict]:
    """The finished child runs (:func:`collect_runs`) and the parent run of each of several sweeps,
    for a report over them (``what``: its name in errors, e.g. "a robustness report").

    Returns:
        (``{sweep id: rows}``, ``{sweep id: parent run}``), in ``sweep_ids``' order.

    Raises:
        MedsegError: fewer than two different sweeps (or one named twice), no such experiment or
            sweep, or a sweep without a finished child.
    """
    if len(sweep_ids) < 2 or len(set(sweep_ids)) < len(sweep_ids):
        raise MedsegError(f"{what} needs two or more different sweeps (each named once)", ", ".join(sweep_ids))
    rows, parents = {}, {}
    for sweep_id in sweep_ids:
        experiment_id, parents[sweep_id] = find_sweep(client, experiment, sweep_id)
        rows[sweep_id] = collect_runs(client, experiment_id, sweep_id, plateau_delta)
        if not rows[sweep_id]:
            raise MedsegError(f"sweep {sweep_id} has no finished child run yet", experiment)
    return rows, parents


def dice_by_cell(rows: list[dict]) -> dict[tuple[str, int], dict[int, dict[str, float]]]:
    """``{(norm, batch size): {seed: {case: final-model Dice (mean over labels)}}}``."""
    out: dict = defaultdict(dict)
    for r in rows:
        if r["cases"]:
            out[(r["norm"], r["batch_size"])][r["seed"]] = case_dice(r["cases"])
    return dict(out)


def dice_by_inference_statistics(rows: list[dict]) -> dict[tuple[str, int], dict[int, dict[str, float]]]:
    """:func:`dice_by_cell` of the batch- and instance-norm children, with each batch-norm child's
    final network inferred with its window (:data:`BN_WINDOW`) and precise (:data:`BN_PRECISE`)
    statistics as two more cells, where the child measured them."""
    out = {k: v for k, v in dice_by_cell(rows).items() if k[0] in ("batch", "instance")}
    for r in rows:
        for mode, cases in r.get("bn_mode_cases", {}).items():
            out.setdefault((BN_MODE_NAMES[mode], r["batch_size"]), {})[r["seed"]] = case_dice(cases)
    return out


def dice_by_label(rows: list[dict]) -> dict[str, dict[tuple[str, int], dict[int, dict[str, float]]]]:
    """``{label: {(norm, batch size): {seed: {case: final-model Dice of that label}}}}``."""
    out: dict = defaultdict(lambda: defaultdict(dict))
    for r in rows:
        for (case, label), d in r["cases"].items():
            out[label][(r["norm"], r["batch_size"])].setdefault(r["seed"], {})[case] = d
    return {label: dict(cells) for label, cells in out.items()}


def summarize_runs(rows: list[dict]) -> list[dict]:
    """Per (norm, batch size): mean and sample standard deviation over seeds of each metric, the
    final model's mean Dice with its random-effect 95 % interval (seeds and cases crossed,
    :func:`~medseg.study.statistics.random_effect_interval`, with the seed SD; NaN with fewer than
    :data:`~medseg.study.statistics.MIN_SEEDS` seeds) and its 95 % bootstrap CI over cases (seeds
    averaged per case: these networks), how many seeds met the plateau rule and how many were still
    rising over the last third."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        groups[(r["norm"], r["batch_size"])].append(r)
    metrics = list(SUMMARY_METRICS) + _class_keys(rows)
    by_cell = dice_by_cell(rows)
    out = []
    for (norm, bs), rs in groups.items():
        s = {"norm": norm, "batch_size": bs, "seeds": len(rs), "converged": sum(r["converged"] for r in rs),
             "still_rising": sum(r["still_rising"] for r in rs), "samples": rs[0]["samples"], "iterations": rs[0]["iterations"], "lr": rs[0]["lr"]}
        for k in metrics:
            v = np.array([r.get(k, math.nan) for r in rs], dtype=float)
            v = v[np.isfinite(v)]
            s[f"{k}_mean"] = float(v.mean()) if v.size else math.nan
            s[f"{k}_std"] = float(v.std(ddof=1)) if v.size > 1 else math.nan
        cases = cell_case_means(by_cell[(norm, bs)]) if (norm, bs) in by_cell else np.array([])
        s["case_dice_mean"], s["case_dice_ci_low"], s["case_dice_ci_high"] = mean_ci(cases)
        re = random_effect_interval(seed_case_grid(by_cell.get((norm, bs), {})))
        s["case_dice_re_low"], s["case_dice_re_high"], s["seed_sd"] = re.low, re.high, re.seed_sd
        s["cases"] = int(cases.size)
        out.append(s)
    order = {n: i for i, n in enumerate(NORM_ORDER)}
    return sorted(out, key=lambda x: (order.get(x["norm"], 99), x["batch_size"]))


def _class_keys(rows: list[dict]) -> list[str]:
    """``final_dice_<label>`` keys of the per-class Dice columns."""
    return sorted({k for r in rows for k in r if k.startswith("final_dice_") and k not in SUMMARY_METRICS})


def mean_std(s: dict, key: str, fmt: str) -> str:
    """``"0.622 ± 0.258"`` from a summary row's ``<key>_mean`` / ``<key>_std`` (``"-"`` if missing)."""
    m, sd = s[f"{key}_mean"], s[f"{key}_std"]
    if not math.isfinite(m):
        return "-"
    return format(m, fmt) + (f" ± {format(sd, fmt.lstrip('+'))}" if math.isfinite(sd) else "")


def format_ci(m: float, lo: float, hi: float, fmt: str = ".3f") -> str:
    """``"0.846 [0.833, 0.858]"`` (``"-"`` when the mean is not finite)."""
    return "-" if not math.isfinite(m) else f"{format(m, fmt)} [{format(lo, fmt)}, {format(hi, fmt)}]"


def markdown_table(summary: list[dict]) -> str:
    """The summary as a Markdown table: the final model's Dice with its random-effect interval, the
    seed SD and the fixed-network CI, seeds' mean ± std of the other metrics, the best epoch's Dice
    beside (not ranked by)."""
    classes = sorted({k[:-5] for s in summary for k in s if k.startswith("final_dice_") and k.endswith("_mean")
                      and k[:-5] not in SUMMARY_METRICS})
    head = (["norm", "batch size", "seeds", "plateau rule (last interval)", "still rising (last third)",
             "gain over the last third", "iterations", "lr", "final Dice [95 % CI, seeds random]", "seed SD",
             "95 % CI, these networks", "final Dice (± std over seeds)"] + [c.replace("final_dice_", "Dice ")
                                                                            for c in classes]
            + ["best-epoch Dice (biased)", "HD95 (mm, best epoch)", "s/iteration", "patches/s", "peak memory (MB)",
               "final loss", "BN batch-stats gap"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s in summary:
        random = (format_ci(s["case_dice_mean"], s["case_dice_re_low"], s["case_dice_re_high"])
                  if math.isfinite(s["case_dice_re_low"]) else
                  f"{s['case_dice_mean']:.3f} [{THESE_NETWORKS_ONLY}]" if math.isfinite(s["case_dice_mean"]) else "-")
        cells = [s["norm"], str(s["batch_size"]), str(s["seeds"]), f"{s['converged']}/{s['seeds']}",
                 f"{s['still_rising']}/{s['seeds']}", mean_std(s, "last_third_gain", "+.3f"), str(s["iterations"]),
                 f"{s['lr']:.3g}", random, _sd(s["seed_sd"]), _interval(s["case_dice_ci_low"], s["case_dice_ci_high"]),
                 mean_std(s, "final_dice_mean", ".3f")] + [mean_std(s, c, ".3f") for c in classes] + [
                 mean_std(s, "best_dice_mean", ".3f"), mean_std(s, "hd95_mean", ".2f"),
                 mean_std(s, "seconds_per_iteration", ".3f"), mean_std(s, "patches_per_second", ".1f"),
                 mean_std(s, "peak_memory_mb", ".0f"), mean_std(s, "final_train_loss", ".3f"),
                 mean_std(s, "bn_batch_stats_gap", "+.3f")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _comparison_cells(c: Comparison) -> list[str]:
    """The statistics columns of a comparison table row (see _COMPARISON_HEAD)."""
    seeds = " / ".join(f"{v:+.3f}" for v in c.per_seed) if len(c.per_seed) > 1 else "-"
    random = (format_ci(c.mean_difference, c.re_low, c.re_high, "+.3f") if c.random_effect
              else f"{c.mean_difference:+.3f} [{THESE_NETWORKS_ONLY}]" if math.isfinite(c.mean_difference) else "-")
    return [str(c.seeds), str(c.cases), _sd(c.seed_sd), random, _p(c.re_p), _p(c.re_p_holm),
            _interval(c.ci_low, c.ci_high, "+.3f"), _p(c.p_value), _p(c.p_holm), seeds, c.verdict]


_COMPARISON_HEAD = ["seeds", "cases", "seed SD", "mean Dice A - B [95 % CI, seeds random]", "mixed-model p", "Holm p",
                    "95 % CI, these networks", "Wilcoxon p", "Holm p (Wilcoxon)", "per seed", "verdict"]


def _sd(x: float) -> str:
    return "-" if not math.isfinite(x) else f"{x:.3f}"


def _interval(lo: float, hi: float, fmt: str = ".3f") -> str:
    """``"[0.833, 0.858]"`` (``"-"`` when not finite)."""
    return "-" if not math.isfinite(lo) else f"[{format(lo, fmt)}, {format(hi, fmt)}]"


def _comparison_markdown(table: list[Comparison], keys: dict[str, Callable[[Comparison], object]],
                         difference: str = "mean Dice A - B [95 % CI]") -> str:
    """A comparison table as Markdown: the identifying columns ``keys`` (header -> value), then the
    statistics columns, with ``difference`` as the difference column's header."""
    head = list(keys) + [difference if h == _COMPARISON_HEAD[2] else h for h in _COMPARISON_HEAD]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join([str(f(c)) for f in keys.values()] + _comparison_cells(c)) + " |" for c in table]
    return "\n".join(lines) + "\n"


def pairwise_markdown(table: list[Comparison]) -> str:
    """The pairwise comparisons as a Markdown table."""
    return _comparison_markdown(table, {"batch size": lambda c: c.batch_size, "A": lambda c: c.norm_a,
                                        "B": lambda c: c.norm_b})


def batch_size_markdown(table: list[Comparison]) -> str:
    """The per-norm batch-size comparisons (statistics.batch_size_table) as a Markdown table."""
    if not table:
        return "One batch size only: nothing to compare.\n"
    return _comparison_markdown(table, {"norm": lambda c: c.norm_a, "batch size A": lambda c: c.batch_size,
                                        "batch size B": lambda c: c.batch_size_b})


def interaction_markdown(table: list[Comparison]) -> str:
    """The difference-in-differences rows (statistics.interaction_table) as a Markdown table."""
    if not table:
        return "Needs the reference norm and a second batch size: nothing to compare.\n"
    return _comparison_markdown(table, {"norm": lambda c: c.norm_a, "reference": lambda c: c.norm_b,
                                        "batch size A": lambda c: c.batch_size,
                                        "batch size B": lambda c: c.batch_size_b},
                                "(norm - reference) at A minus at B [95 % CI]")


def inference_statistics_markdown(table: list[Comparison]) -> str:
    """The batch-norm inference-statistics rows (statistics.inference_statistics_table) as Markdown."""
    if not table:
        return ("No batch-norm child of this report measured its final network with other statistics (children "
                "trained before medseg measured them, or no batch norm).\n")
    return _comparison_markdown(table, {"batch size": lambda c: c.batch_size, "A": lambda c: c.norm_a,
                                        "B": lambda c: c.norm_b})


def label_markdown(table: list[Comparison]) -> str:
    """The per-label comparisons (statistics.label_table) as a Markdown table."""
    if not table:
        return "Needs the reference norm and a second norm: nothing to compare.\n"
    return _comparison_markdown(table, {"label": lambda c: c.label, "batch size": lambda c: c.batch_size,
                                        "A": lambda c: c.norm_a, "B": lambda c: c.norm_b},
                                "Dice of the label A - B [95 % CI]")


def _p(p: float) -> str:
    return "-" if not math.isfinite(p) else (f"{p:.2g}" if p >= 1e-4 else f"{p:.1e}")


def which_norm(summary: list[dict], table: list[Comparison]) -> list[dict]:
    """Per batch size: the norm with the highest final Dice, the norms tied with it (their paired CI
    against it contains 0) and the norms worse than it. A norm is starred (``group*``) when the
    Holm-corrected test disagrees with the interval (statistics.Comparison.agree), or, for a worse
    norm on the fixed-network path, a seed disagrees in sign; ``interval`` says whether every
    comparison had the random-effect interval (``seeds random``) or not (``these networks only``); and when, on the seeds both have, it beats the norm with
    the highest mean (a partial store, where cells have different seeds), it is listed as tied."""
    out = []
    for bs in sorted({s["batch_size"] for s in summary}):
        cells = [s for s in summary if s["batch_size"] == bs and math.isfinite(s["case_dice_mean"])]
        if not cells:
            continue
        best = max(cells, key=lambda s: s["case_dice_mean"])["norm"]
        tied, worse, fixed = [], [], False
        for s in cells:
            if s["norm"] == best:
                continue
            (c,) = [c for c in table if c.batch_size == bs and {c.norm_a, c.norm_b} == {best, s["norm"]}]
            fixed = fixed or not c.random_effect
            best_wins = (c.norm_a == best) == (c.mean_difference > 0)
            settled = c.agree and (c.tie or ((c.random_effect or c.seeds_agree) and best_wins))
            (tied if c.tie or not best_wins else worse).append(s["norm"] + ("" if settled else "*"))
        out.append({"batch_size": bs, "best": best, "tied_with_best": ", ".join(tied) or "-",
                    "worse": ", ".join(worse) or "-", "interval": THESE_NETWORKS_ONLY if fixed else "seeds random"})
    return out


def which_norm_markdown(rows: list[dict]) -> str:
    lines = ["| batch size | highest final Dice | tied with it (CI contains 0) | worse (CI excludes 0) | interval |",
             "|---|---|---|---|---|"]
    lines += [f"| {r['batch_size']} | {r['best']} | {r['tied_with_best']} | {r['worse']} | {r['interval']} |"
              for r in rows]
    if any("*" in r["tied_with_best"] + r["worse"] for r in rows):
        lines += ["", f"\\* the Holm-corrected test disagrees with the interval (Holm p < {ALPHA:g} for a "
                  f"tie, Holm p ≥ {ALPHA:g} for a worse norm), a seed disagrees in sign, or (partial stores) it beats the "
                  "highest on the seeds both have: see the pairwise table."]
    return "\n".join(lines) + "\n"


def batch_dependence_markdown(summary: list[dict]) -> str:
    lines = ["| norm | batch size | train mode (max abs logit diff) | eval mode |", "|---|---|---|---|"]
    for s in summary:
        lines.append(f"| {s['norm']} | {s['batch_size']} | {_sci(s['batch_dependence_train_mean'])} | "
                     f"{_sci(s['batch_dependence_eval_mean'])} |")
    return "\n".join(lines) + "\n"


def _sci(x: float) -> str:
    return "-" if not math.isfinite(x) else f"{x:.2g}"


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


def plot_paired_differences(pairwise: list[Comparison], reference: str, path: Path) -> Path | None:
    """Each norm's paired difference in final Dice from the ``reference`` norm at each batch size,
    with its primary 95 % interval (:attr:`~medseg.study.statistics.Comparison.interval`: seeds as a
    random effect, or these networks only with fewer seeds): unlike the per-norm CIs of
    dice_vs_batch_size.png, these intervals pair the cases and seeds, so they show differences the
    per-norm intervals hide.
    Returns ``path``, or None when the sweep has one norm."""
    norms = [n for n in NORM_ORDER if any(n in (c.norm_a, c.norm_b) for c in pairwise)]
    if not norms:
        return None
    ref = reference
    others = [n for n in norms if n != ref]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for i, norm in enumerate(others):
        cs = sorted([c for c in pairwise if {c.norm_a, c.norm_b} == {ref, norm} and math.isfinite(c.mean_difference)],
                    key=lambda c: c.batch_size)
        sign = -1.0 if cs and cs[0].norm_a == ref else 1.0  # plot norm - ref
        x = np.array([c.batch_size for c in cs]) + (i - (len(others) - 1) / 2) * 0.06
        y = np.array([sign * c.mean_difference for c in cs])
        bounds = np.array([sorted((sign * c.interval[0], sign * c.interval[1])) for c in cs]).reshape(-1, 2)
        ax.errorbar(x, y, yerr=np.abs(bounds.T - y) if len(cs) else None, marker="o", capsize=4,
                    label=norm, color=f"C{NORM_ORDER.index(norm)}")
    ax.axhline(0, color=f"C{NORM_ORDER.index(ref)}", lw=1.5, label=f"{ref} (reference)")
    ax.set_xlabel("batch size"), ax.set_ylabel(f"final mean Dice: norm - {ref} (paired, 95 % CI*)")
    ax.set_xticks(sorted({c.batch_size for c in pairwise})), ax.grid(alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.set_title(f"Paired difference from {ref} norm\n* seeds as a random effect; with fewer than {MIN_SEEDS} "
                 f"seeds, these networks only", fontsize=10)
    fig.tight_layout(), fig.savefig(path, dpi=110), plt.close(fig)
    return path


def _plateau_band(rows: list[dict]) -> tuple[float, float]:
    """Y limits that show the second half of every learning curve (where the plateau is judged),
    with a margin; earlier, lower points fall below the axis."""
    late = [v for r in rows if r["curve"] for _, v in r["curve"][len(r["curve"]) // 2:]]
    if not late:
        return 0.0, 1.0
    lo, hi = min(late), max(late)
    margin = max(0.02, 0.15 * (hi - lo))
    return max(0.0, lo - margin), min(1.0, hi + margin)


def plot_report(rows: list[dict], summary: list[dict], folder: Path) -> list[Path]:
    """dice_vs_batch_size.png (final Dice with 95 % CI), learning_curves.png (plateau marked),
    speed_memory.png in ``folder``."""
    paths = []
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    norms = list(_by_norm(summary))
    for i, (norm, ss) in enumerate(_by_norm(summary).items()):
        ss = sorted([s for s in ss if math.isfinite(s["case_dice_mean"])], key=lambda s: s["batch_size"])
        x = np.array([s["batch_size"] for s in ss]) + (i - (len(norms) - 1) / 2) * 0.06  # dodge
        y = np.array([s["case_dice_mean"] for s in ss])
        err = np.array([[m - s["case_dice_ci_low"], s["case_dice_ci_high"] - m] for m, s in zip(y, ss)]).T
        ax.errorbar(x, y, yerr=err if len(ss) else None, marker="o", capsize=4, label=norm)
    ax.set_xlabel("batch size"), ax.set_ylabel("final model: mean Dice over cases (95 % CI)")
    ax.set_xticks(sorted({s["batch_size"] for s in summary})), ax.grid(alpha=0.3), ax.legend()
    ax.set_title("Validation Dice vs batch size")
    fig.tight_layout(), fig.savefig(folder / "dice_vs_batch_size.png", dpi=110), plt.close(fig)
    paths.append(folder / "dice_vs_batch_size.png")

    sizes = sorted({r["batch_size"] for r in rows})
    colors = {n: f"C{i}" for i, n in enumerate(NORM_ORDER)}
    fig, axes = plt.subplots(1, len(sizes), figsize=(4.5 * len(sizes), 4), squeeze=False, sharey=True)
    for ax, bs in zip(axes[0], sizes):
        seen = set()
        for r in rows:
            if r["batch_size"] != bs or not r["curve"]:
                continue
            x, y = zip(*r["curve"])
            color = colors.get(r["norm"], "k")
            ax.plot(x, y, color=color, alpha=0.8, lw=1, label=None if r["norm"] in seen else r["norm"])
            seen.add(r["norm"])
            # the plateau check: last two validations; a cross marks a child still improving
            ax.plot(x[-2:], y[-2:], color=color, lw=2.5)
            ax.plot(x[-1], y[-1], marker="o" if r["converged"] else "x", color=color, ms=6 if r["converged"] else 9)
        ax.set_title(f"batch size {bs}"), ax.set_xlabel("training patches seen"), ax.grid(alpha=0.3)
        ax.set_ylim(*_plateau_band(rows)), ax.legend(loc="lower right")
    axes[0][0].set_ylabel("validation mean Dice (o plateau, x not converged; zoomed)")
    fig.tight_layout(), fig.savefig(folder / "learning_curves.png", dpi=110), plt.close(fig)
    paths.append(folder / "learning_curves.png")

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.5))
    _errorbar_plot(a, summary, "seconds_per_iteration", "seconds per iteration")
    _errorbar_plot(b, summary, "peak_memory_mb", "peak memory (MB)")
    fig.tight_layout(), fig.savefig(folder / "speed_memory.png", dpi=110), plt.close(fig)
    paths.append(folder / "speed_memory.png")
    return paths


def build_report(tracking_uri: str, experiment: str, folder: Path, sweep_id: str | None = None,
                 log_to_parent: bool = True, plateau_delta: float = PLATEAU_DELTA,
                 negligible: float = NEGLIGIBLE) -> dict:
    """Build the report of a sweep from the MLflow store and write it to ``folder``.

    Writes ``runs.csv`` (one row per child run), ``cases.csv`` (final-model Dice per child, case
    and label), ``summary.csv``, ``pairwise.csv``, ``batch_size_effect.csv`` (each norm at smaller
    batch sizes against itself at the largest), ``interaction.csv`` (whether a norm's difference
    from the reference changes with batch size) and ``per_label.csv`` (the reference against each
    other norm on each label's Dice), ``summary.md`` (convergence, which norm at which
    batch size, the paired comparisons, the summary and batch-dependence tables) and the PNG
    plots; logs them to the parent run under ``report/``, the tables also as MLflow tables
    (``report/<name>_table.json``, shown as tables in MLflow's artifact view).

    Returns:
        ``{"sweep_id", "parent_run_id", "rows", "summary", "pairwise", "batch_size_effect", "interaction",
        "per_label", "which_norm", "converged", "folder"}`` (the four comparison tables:
        statistics.pairwise_table, batch_size_table, interaction_table and label_table, the reference
        norm being instance norm when present).

    Raises:
        MedsegError: no such experiment or sweep, or no finished child run.
    """
    client = Tracker.client_for(tracking_uri)
    experiment_id, parent = find_sweep(client, experiment, sweep_id)
    sweep_id = parent.data.tags[SWEEP_ID_TAG]
    rows = collect_runs(client, experiment_id, sweep_id, plateau_delta)
    if not rows:
        raise MedsegError(f"sweep {sweep_id} has no finished child run yet", experiment)
    params = parent.data.params
    result = write_report(folder, rows, f"sweep `{sweep_id}`",
                          f"Experiment `{experiment}`, parent run `{parent.info.run_id}`",
                          planned_children(params), params.get("sweep.rule", "?"), plateau_delta, negligible)
    if log_to_parent:
        client.log_artifacts(parent.info.run_id, str(folder), "report")
        _log_tables(client, parent.info.run_id, result["summary"], {k: result[k] for k in TABLES},
                    result["which_norm"])
    return {"sweep_id": sweep_id, "parent_run_id": parent.info.run_id, **result}


def write_report(folder: Path, rows: list[dict], title: str, source: str, planned: list[tuple[str, int, int]],
                 rule: str, plateau_delta: float = PLATEAU_DELTA, negligible: float = NEGLIGIBLE) -> dict:
    """The report's statistics, CSVs, summary.md and plots for the child runs ``rows``
    (:func:`collect_runs`), written to ``folder`` (created).

    Args:
        folder: output folder.
        rows: one row per finished child run, from one sweep or several pooled ones.
        title: what is reported, for the heading (e.g. ``sweep `ct_main```).
        source: where the runs are (experiment and parent run), one sentence.
        planned: the (norm, batch size, seed) children planned (:func:`planned_children`); empty when unknown.
        rule: the budget rule, as the sweep's ``sweep.rule`` parameter states it.
        plateau_delta: the plateau rule's threshold in mean Dice.
        negligible: negligible difference in mean Dice (verdicts).

    Returns:
        ``{"rows", "summary", "pairwise", "batch_size_effect", "interaction", "per_label", "which_norm",
        "converged", "folder"}``.
    """
    summary = summarize_runs(rows)
    dice = dice_by_cell(rows)
    reference = next((n for n in NORM_ORDER if any(n == k[0] for k in dice)), NORM_ORDER[0])
    tables = {"pairwise": pairwise_table(dice, list(NORM_ORDER), negligible),
              "batch_size_effect": batch_size_table(dice, list(NORM_ORDER), negligible),
              "interaction": interaction_table(dice, list(NORM_ORDER), reference, negligible),
              "per_label": label_table(dice_by_label(rows), list(NORM_ORDER), reference, negligible),
              "inference_statistics": inference_statistics_table(dice_by_inference_statistics(rows), negligible)}
    pairwise = tables["pairwise"]
    choice = which_norm(summary, pairwise)
    folder = Path(folder)
    _write_csvs(folder, rows, summary, tables)
    text = _report_markdown(title, source, planned, rule, rows, summary, tables, choice, plateau_delta)
    atomic_write_text(folder / "summary.md", text)
    plot_report(rows, summary, folder)
    plot_paired_differences(pairwise, reference, folder / "paired_differences.png")
    return {"rows": rows, "summary": summary, **tables, "which_norm": choice,
            "converged": sum(r["converged"] for r in rows), "folder": folder}


def _write_csvs(folder: Path, rows: list[dict], summary: list[dict], tables: dict[str, list[Comparison]]) -> None:
    """runs.csv, cases.csv, summary.csv and one CSV per comparison table (pairwise.csv,
    batch_size_effect.csv, interaction.csv, per_label.csv) in ``folder`` (created)."""
    folder.mkdir(parents=True, exist_ok=True)
    write_csv([{k: v for k, v in r.items() if k not in ROW_DETAIL} for r in rows], folder / "runs.csv")
    write_csv([{"run_id": r["run_id"], "norm": r["norm"], "batch_size": r["batch_size"], "seed": r["seed"],
                "case": c, "label": lab, "dice": d} for r in rows for (c, lab), d in sorted(r["cases"].items())],
              folder / "cases.csv")
    write_csv(summary, folder / "summary.csv")
    for name, table in tables.items():
        write_csv([c.to_dict() for c in table], folder / f"{name}.csv")


def planned_children(params: dict[str, str]) -> list[tuple[str, int, int]]:
    """The (norm, batch size, seed) cells a sweep's parent run planned, from its ``sweep.norms``,
    ``sweep.batch_sizes`` and ``sweep.seeds`` parameters (empty when they are missing)."""
    try:
        norms = params["sweep.norms"].split(",")
        sizes = [int(b) for b in params["sweep.batch_sizes"].split(",")]
        seeds = [int(x) for x in params["sweep.seeds"].split(",")]
    except (KeyError, ValueError):
        return []
    return [(n, b, x) for x in seeds for b in sizes for n in norms]


def _completeness(planned: list[tuple[str, int, int]], rows: list[dict]) -> str:
    """``"40 of 40 planned children finished."``, listing the ones not finished."""
    if not planned:
        return f"{len(rows)} children finished."
    done = {(r["norm"], r["batch_size"], r["seed"]) for r in rows}
    missing = [f"{n}_bs{b}_seed{x}" for n, b, x in planned if (n, b, x) not in done]
    text = f"{len(planned) - len(missing)} of {len(planned)} planned children finished."
    return text + (f" **Interim report**: not finished yet: {', '.join(missing)}." if missing else "")


def _family(table: list[Comparison]) -> int:
    """How many comparisons Holm's correction of the Wilcoxon tests counted (those with a p-value)."""
    return sum(math.isfinite(c.p_value) for c in table)


def _family_re(table: list[Comparison]) -> int:
    """How many comparisons Holm's correction of the mixed-model tests counted."""
    return sum(math.isfinite(c.re_p) for c in table)


def _margin(table: list[Comparison]) -> str:
    return f"{table[0].margin:g}" if table else f"{NEGLIGIBLE:g}"


def _report_markdown(title: str, source: str, planned: list[tuple[str, int, int]], rule: str, rows: list[dict],
                     summary: list[dict], tables: dict[str, list[Comparison]], choice: list[dict],
                     plateau_delta: float) -> str:
    """summary.md: convergence, design, which norm at which batch size, the tables (``tables``: the
    pairwise and the batch-size comparisons)."""
    pairwise, by_batch_size, interaction = tables["pairwise"], tables["batch_size_effect"], tables["interaction"]
    per_label = tables["per_label"]
    reference = per_label[0].norm_a if per_label else "the reference norm"
    met = sum(r["converged"] for r in rows)
    rising = [r for r in rows if r["still_rising"]]
    status = (f"**{met} of {len(rows)} children met the plateau rule** (last validation gain ≤ {plateau_delta:g} "
              "mean Dice; with the learning rate decayed to a few % of its peak by then, this rule is weak)")
    status += (f"; **{len(rising)} of {len(rows)} were still rising**: their mean Dice gained more than "
               f"{plateau_delta:g} over the last third of training ("
               + ", ".join(f"{r['norm']}_bs{r['batch_size']}_seed{r['seed']} {r['last_third_gain']:+.3f}"
                           for r in rising) + "), so their final Dice may understate what the recipe reaches."
               if rising else f"; none gained more than {plateau_delta:g} over the last third of training.")
    if met < len(rows):
        status += (f" {len(rows) - met} did not meet the plateau rule: comparisons involving them are not at the "
                   "plateau.")
    unlearned = [r for r in rows if r["unlearned_labels"]]
    if unlearned:
        status += (f" **Warning: {len(unlearned)} {'child' if len(unlearned) == 1 else 'children'} did not learn "
                   "a label** (final Dice below "
                   f"{UNLEARNED_LABEL_DICE:g} over the validation cases): "
                   + ", ".join(f"{r['norm']}_bs{r['batch_size']}_seed{r['seed']} ({r['unlearned_labels']})"
                               for r in unlearned) + ". Their mean Dice measures a failed run; the plateau rule "
                   "does not see it.")
    text = (f"# Normalizer x batch-size {title}\n\n{status} {_completeness(planned, rows)}\n\n"
            f"{source}. Budget rule: {rule}.\n\n"
            "Dice is the **final model**'s (end of training) on the validation fold, sliding window, mean over "
            "the foreground labels of each case. Differences are paired over (case, seed): same cases, and per "
            "seed the same training patches and initial weights. **The primary interval treats training runs as "
            "a random effect**: a mixed model with crossed seed and case effects (statsmodels MixedLM, REML), "
            "95 % t interval with Satterthwaite's degrees of freedom, and its t-test (mixed-model p), "
            f"Holm-corrected across the {_family_re(pairwise)} comparisons of the pairwise table. It answers "
            "whether other training runs of these recipes would differ on other cases, and it needs at least "
            f"{MIN_SEEDS} seeds: with fewer, the row shows *{THESE_NETWORKS_ONLY}* and its verdict rests on the "
            "secondary interval. The **secondary interval holds the trained networks fixed**: per case, the "
            "difference averaged over seeds; 95 % BCa bootstrap CI with cases resampled, and a two-sided Wilcoxon "
            f"signed-rank test, Holm-corrected across the {_family(pairwise)} comparisons (the per-seed column "
            "shows the spread between training runs that it does not contain). The seed SD is the mixed model's "
            "standard deviation of the seed effect. **Verdicts follow the primary interval and its Holm-corrected "
            "p**: two norms tie when the interval contains 0: the data do not tell them apart, which is not a "
            "proof that they are equivalent. *A better* when the interval excludes 0 and the Holm p is below "
            f"{ALPHA:g} (on the fixed-network path also every seed agrees in sign); *suggestive* when the interval "
            f"excludes 0 but the test (or a seed) does not agree; *no practical difference* when the interval "
            f"contains 0 and lies within ±{_margin(pairwise)} mean Dice; *cannot tell* when it contains 0 and "
            "reaches beyond (a tie the test calls significant shows its Holm p).\n\n"
            "## Which norm at which batch size\n\n" + which_norm_markdown(choice) +
            "\n## Pairwise comparisons\n\n" + pairwise_markdown(pairwise) +
            "\n## Batch size, per norm\n\nEach norm at each smaller batch size against itself at the largest, "
            "paired the same way (for one seed, the same patches in the same order and the same initial weights), "
            f"Holm-corrected across the {_family_re(by_batch_size)} (mixed model) and {_family(by_batch_size)} (Wilcoxon) comparisons of this table. This compares the recipe at "
            "each batch size, not batch size alone: at a fixed number of patches a smaller batch takes more, smaller "
            "optimizer steps, with the learning rate scaled by the sweep's rule.\n\n"
            + batch_size_markdown(by_batch_size) +
            "\n## Does batch size change the difference between norms?\n\nFor each norm and each smaller batch size "
            "b: per case, (norm - reference at b) - (norm - reference at the largest batch size), averaged over seeds "
            f"(a difference in differences), Holm-corrected across the {_family_re(interaction)} (mixed model) and "
            f"{_family(interaction)} (Wilcoxon) comparisons of this table. "
            "*batch size b better*: the norm does better against the reference at b than at the largest batch "
            "size.\n\n" + interaction_markdown(interaction) +
            "\n## Batch norm's inference statistics\n\nEvery batch-norm child's final network validated three "
            "ways: with its running averages (`batch`, as medseg infers), with each sliding window normalized by "
            "its own statistics, one window per forward pass (`" + BN_WINDOW + "`: at batch size 1 exactly "
            "instance norm's computation, with batch norm's weights), and with population statistics re-estimated "
            f"from the final weights over {PRECISE_BN_PATCHES} training patches at the child's batch size (`"
            + BN_PRECISE + "`, "
            "precise BN: Wu & Johnson 2021). At batch size 1 batch norm trains as instance norm does, so the "
            "instance-norm child of the same seed is the reference for the window statistics. The same paired "
            "statistics, Holm-corrected across the "
            f"{_family_re(tables['inference_statistics'])} comparisons of this table.\n\n"
            + inference_statistics_markdown(tables["inference_statistics"]) +
            "\n## Per label (secondary)\n\nThe same paired statistics on each foreground label's Dice alone: "
            f"{reference} against each other norm at each batch size, Holm-corrected across the "
            f"{_family_re(per_label)} (mixed model) and {_family(per_label)} (Wilcoxon) comparisons of this table (every label). Exploratory: it shows which structures "
            "carry the differences of the mean over labels; it is not one of the comparisons a conclusion rests "
            "on.\n\n" + label_markdown(per_label) +
            "\n## Summary (per norm and batch size)\n\n"
            "The final Dice's primary interval treats seeds and cases as crossed random effects (the seed SD is "
            "its seed effect's); the interval of these networks resamples cases with seeds averaged per case. "
            "± : standard deviation over seeds. *Still rising*: the children whose gain over the last third "
            f"exceeds {plateau_delta:g}. The best-epoch Dice is "
            "selected on the same validation cases, so it is optimistic; it is shown, not ranked by. The gain over "
            "the last third (last validation minus the one a third of the curve earlier) shows how much a child "
            "still rose late in training: the plateau rule looks only at the last interval, where a learning rate "
            "decaying to 0 makes gains small. HD95 and the BN "
            "batch-statistics gap are the best epoch's. Speed and memory are measured inside the sweep: children "
            "that ran at once shared the machine, so they are not benchmarks.\n\n"
            + markdown_table(summary) +
            "\n## Batch dependence of the trained networks\n\nLargest absolute logit difference between a "
            "validation patch inferred alone and inside a batch of 5, float32, mean over seeds.\n\n"
            + batch_dependence_markdown(summary))
    return text


def _log_tables(client, run_id: str, summary: list[dict], tables: dict[str, list[Comparison]],
                choice: list[dict]) -> None:
    """The report's tables as MLflow tables (JSON artifacts MLflow's artifact view renders as tables):
    the summary, the which-norm table and each non-empty comparison table (``report/<name>_table.json``)."""
    import pandas as pd

    cols = ["norm", "batch_size", "seeds", "converged", "still_rising", "case_dice_mean", "case_dice_re_low",
            "case_dice_re_high", "seed_sd", "case_dice_ci_low", "case_dice_ci_high",
            "final_dice_mean_mean", "final_dice_mean_std", "best_dice_mean_mean", "seconds_per_iteration_mean",
            "peak_memory_mb_mean", "bn_batch_stats_gap_mean", "batch_dependence_train_mean",
            "batch_dependence_eval_mean"]
    client.log_table(run_id, pd.DataFrame([{k: s[k] for k in cols} for s in summary]), "report/summary_table.json")
    client.log_table(run_id, pd.DataFrame(choice), "report/which_norm_table.json")
    for name, table in tables.items():
        if table:
            client.log_table(run_id, pd.DataFrame([c.to_dict() for c in table]), f"report/{name}_table.json")
