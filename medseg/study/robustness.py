"""Do several sweeps rank the norms alike? The robustness report of two or more sweeps.

A typical use is a learning-rate check: the same (norm, batch size) cells run again with the
learning rate x0.3 and x3 (``medseg sweep --set train.lr=... --sweep-id ...``), then

    medseg report -e EXPERIMENT --sweep main --sweep lr_low --sweep lr_high

compares, within each sweep, every pair of norms at every batch size on the cells and seeds that
**all** the sweeps have, with the statistics of the sweep report (:mod:`medseg.study.statistics`:
paired mean difference in final mean Dice over cases, 95 % BCa bootstrap CI, Wilcoxon signed-rank
test), Holm-corrected across every comparison of every sweep (one family), and says per pair and
batch size whether the ranking holds (:func:`ranking_holds`), which parameters the sweeps differ
in, and what was left out. With one shared seed this is a check of one training run per cell, not
a finding.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from medseg.atomic import atomic_write_text, write_csv
from medseg.errors import MedsegError
from medseg.norm_registry import NORMS
from medseg.study.report import SWEEP_COLUMN, collect_sweeps, dice_by_cell, format_ci, pairwise_markdown
from medseg.study.rules import NEGLIGIBLE, PLATEAU_DELTA
from medseg.study.statistics import Comparison, cell_case_means, holm, mean_ci, pairwise_table
from medseg.tracking import Tracker

import matplotlib.pyplot as plt  # after medseg.study.report, which selects the Agg backend

HOLDS_STRICT = "holds, every CI excludes 0"
HOLDS = "holds in sign, some CIs contain 0"
HOLDS_NO_DIFFERENCE = "same sign, every CI contains 0"
CHANGES = "the ranking changes sign"
REVERSES = "reverses: CIs exclude 0 in opposite directions"
# parent-run params that name the cells or the bookkeeping, not the recipe: left out of "the sweeps differ in"
_NOT_RECIPE = ("sweep.norms", "sweep.batch_sizes", "sweep.seeds", "sweep.rule", "base.seed", "base.output_dir",
               "base.model.norm", "base.train.batch_size")


def ranking_holds(comparisons: list[Comparison]) -> tuple[str, str]:
    """Whether one pair of norms at one batch size keeps its ranking across sweeps, from its
    comparison (A - B) in each sweep: ``(verdict, ahead)``.

    The verdict is :data:`HOLDS_STRICT` (the same sign everywhere and no 95 % CI contains 0),
    :data:`HOLDS` (the same sign, some CIs contain 0), :data:`HOLDS_NO_DIFFERENCE` (the same sign,
    every CI contains 0: no sweep tells the norms apart), :data:`REVERSES` (one sweep's CI excludes 0
    for A and another's for B) or :data:`CHANGES` (otherwise; a zero or NaN difference has no sign).
    ``ahead`` is the norm the mean differences favour when their sign holds, else ``"-"``. The CIs
    are each comparison's own (unadjusted) intervals; the Holm p-values are in the tables.
    """
    means = [c.mean_difference for c in comparisons]
    a_ahead = [c for c in comparisons if not c.tie and c.mean_difference > 0]
    b_ahead = [c for c in comparisons if not c.tie and c.mean_difference < 0]
    if a_ahead and b_ahead:
        return REVERSES, "-"
    if not all(math.isfinite(m) and m != 0 for m in means) or len({m > 0 for m in means}) != 1:
        return CHANGES, "-"
    ahead = comparisons[0].norm_a if means[0] > 0 else comparisons[0].norm_b
    if len(a_ahead) + len(b_ahead) == len(comparisons):
        return HOLDS_STRICT, ahead
    return (HOLDS if a_ahead or b_ahead else HOLDS_NO_DIFFERENCE), ahead


def recipe_differences(parents: dict[str, dict[str, str]]) -> dict[str, list[str]]:
    """The sweep parameters (parent-run params, ``base.*`` and ``sweep.*``) whose values differ
    between sweeps: ``{param: [value in each sweep]}``; the cells' and bookkeeping params are left
    out (:data:`_NOT_RECIPE`, ``base.tracking.*``), and so is a config key that a sweep run by an
    older medseg did not record while every sweep that records it has the key's default: that sweep
    ran with the behaviour the default keeps."""
    from medseg.config import Config, flatten
    defaults = {f"base.{k}": str(v) for k, v in flatten(Config()).items()}
    keys = sorted(set().union(*parents.values()))
    keys = [k for k in keys if k not in _NOT_RECIPE and not k.startswith("base.tracking.")]
    out = {}
    for k in keys:
        values = [p.get(k, "-") for p in parents.values()]
        recorded = {v for v in values if v != "-"}
        if len(set(values)) <= 1 or ("-" in values and recorded == {defaults.get(k)}):
            continue
        out[k] = values
    return out


def build_robustness_report(tracking_uri: str, experiment: str, sweep_ids: list[str], folder: Path,
                            plateau_delta: float = PLATEAU_DELTA, negligible: float = NEGLIGIBLE) -> dict:
    """Compare the norms within each sweep on what all the sweeps share, and say whether each ranking holds.

    Writes ``robustness.md`` (what the sweeps differ in and what was left out, the cells' final Dice,
    whether each ranking holds, the comparisons per sweep), ``robustness.png`` (:func:`plot_robustness`),
    ``robustness.csv`` (one row per comparison, with its ``sweep``), ``robustness_holds.csv`` (one
    row per pair of norms and batch size: :func:`ranking_holds` and each sweep's difference) and ``robustness_cells.csv`` (final mean
    Dice with its 95 % CI over cases, learning rate and convergence per sweep and cell).
    Nothing is logged to MLflow (the sweeps have different parent runs).

    Args:
        tracking_uri: the MLflow store holding every sweep.
        experiment: their MLflow experiment.
        sweep_ids: two or more different sweep ids, in the tables' order.
        folder: output folder (created).
        plateau_delta: the plateau rule's threshold (mean Dice), as in the sweep report.
        negligible: negligible difference in mean Dice (verdicts).

    Returns:
        ``{"seeds", "cells", "comparisons": [(sweep id, Comparison)], "holds": [{"batch_size", "norm_a",
        "norm_b", "ahead", "ranking", "<sweep>: A - B", ...}], "notes", "folder"}``; ``notes``: the
        parameters the sweeps differ in, sweeps whose parent run did not finish, whether the
        validation cases differ, and what each sweep had that was left out.

    Raises:
        MedsegError: fewer than two sweeps, no such experiment or sweep, a sweep without a finished
            child, no seed shared by every sweep, or no two norms at one batch size in every sweep.
    """
    rows, parents = collect_sweeps(Tracker.client_for(tracking_uri), experiment, sweep_ids, "a robustness report",
                                   plateau_delta)
    seeds = sorted(set.intersection(*({r["seed"] for r in rs} for rs in rows.values())))
    if not seeds:
        raise MedsegError("the sweeps share no seed, so nothing is paired across them", ", ".join(sweep_ids))
    other_seeds = {s: [r for r in rs if r["seed"] not in seeds] for s, rs in rows.items()}
    rows = {s: [r for r in rs if r["seed"] in seeds] for s, rs in rows.items()}
    dice = {s: dice_by_cell(rs) for s, rs in rows.items()}
    cells = set.intersection(*(set(d) for d in dice.values()))
    left_out = {s: _left_out(other_seeds[s], sorted(set(d) - cells)) for s, d in dice.items()}
    if not any(sum(1 for n, b in cells if b == bs) > 1 for _, bs in cells):
        raise MedsegError("the sweeps share no two norms at one batch size: nothing to compare", ", ".join(sweep_ids))
    comparisons = [(s, c) for s in sweep_ids
                   for c in pairwise_table({k: v for k, v in dice[s].items() if k in cells}, list(NORMS), negligible)]
    for (_, c), p in zip(comparisons, holm([c.p_value for _, c in comparisons])):  # one family: every sweep
        c.p_holm = p
    keys = sorted({(c.batch_size, c.norm_a, c.norm_b) for _, c in comparisons},
                  key=lambda k: (k[0], NORMS.index(k[1]), NORMS.index(k[2])))
    holds = []
    for b, a, nb in keys:
        per_sweep = [(s, c) for s, c in comparisons if (c.batch_size, c.norm_a, c.norm_b) == (b, a, nb)]
        verdict, ahead = ranking_holds([c for _, c in per_sweep])
        holds.append({"batch_size": b, "norm_a": a, "norm_b": nb, "ahead": ahead, "ranking": verdict,
                      **{f"{s}: A - B": c.mean_difference for s, c in per_sweep}})
    validation = {s: {frozenset(cases) for seeds_ in d.values() for cases in seeds_.values()} for s, d in dice.items()}
    notes = {"differ": recipe_differences({s: dict(p.data.params) for s, p in parents.items()}),
             "unfinished": [f"{s} (parent run {p.info.status})" for s, p in parents.items() if p.info.status != "FINISHED"],
             "validation_differs": len(set().union(*validation.values())) > 1, "left_out": left_out}
    cell_rows = []
    for s in sweep_ids:
        for norm, bs in sorted(cells, key=lambda k: (k[1], NORMS.index(k[0]))):
            rs = [r for r in rows[s] if (r["norm"], r["batch_size"]) == (norm, bs)]
            m, lo, hi = mean_ci(cell_case_means(dice[s][(norm, bs)]))
            cell_rows.append({SWEEP_COLUMN: s, "norm": norm, "batch_size": bs, "lr": rs[0]["lr"], "seeds": len(rs),
                              "converged": sum(r["converged"] for r in rs), "case_dice_mean": m, "case_dice_ci_low": lo,
                              "case_dice_ci_high": hi})
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    write_csv([{SWEEP_COLUMN: s, **c.to_dict()} for s, c in comparisons], folder / "robustness.csv")
    write_csv(cell_rows, folder / "robustness_cells.csv")
    write_csv(holds, folder / "robustness_holds.csv")
    plot_robustness(comparisons, sweep_ids, folder / "robustness.png")
    atomic_write_text(folder / "robustness.md",
                      _markdown(experiment, sweep_ids, seeds, cell_rows, comparisons, holds, notes, plateau_delta))
    return {"seeds": seeds, "cells": cell_rows, "comparisons": comparisons, "holds": holds, "notes": notes,
            "folder": folder}


def plot_robustness(comparisons: list[tuple[str, Comparison]], sweep_ids: list[str], path: Path) -> Path:
    """A forest plot: per pair of norms and batch size (one row each), every sweep's mean paired
    difference A - B in final mean Dice with its 95 % CI, beside a line at 0. Returns ``path``."""
    keys = list(dict.fromkeys((c.batch_size, c.norm_a, c.norm_b) for _, c in comparisons))
    fig, ax = plt.subplots(figsize=(8, 1.2 + 0.5 * len(keys) * max(1, len(sweep_ids) / 3)))
    for j, sweep in enumerate(sweep_ids):
        cs = {(c.batch_size, c.norm_a, c.norm_b): c for s, c in comparisons if s == sweep}
        rows = [(i, cs[k]) for i, k in enumerate(keys) if k in cs and math.isfinite(cs[k].mean_difference)]
        y = np.array([i for i, _ in rows]) + (j - (len(sweep_ids) - 1) / 2) * 0.8 / len(sweep_ids)
        x = np.array([c.mean_difference for _, c in rows])
        err = np.array([[c.mean_difference - c.ci_low, c.ci_high - c.mean_difference] for _, c in rows]).reshape(-1, 2)
        ax.errorbar(x, y, xerr=err.T if len(rows) else None, fmt="o", capsize=3, label=sweep, color=f"C{j}")
    ax.axvline(0, color="k", lw=1)
    ax.set_yticks(range(len(keys)), [f"batch {b}: {a} - {nb}" for b, a, nb in keys]), ax.invert_yaxis()
    ax.set_xlabel("final mean Dice A - B (paired, 95 % CI)"), ax.grid(alpha=0.3, axis="x")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0)), ax.set_title("Does the ranking hold in every sweep?")
    fig.tight_layout(), fig.savefig(path, dpi=110), plt.close(fig)
    return path


def _left_out(other_seeds: list[dict], cells: list[tuple[str, int]]) -> str:
    """``"seed 1 (20 children); 2 cells: group at batch 1, 2"`` ("" when nothing was left out)."""
    parts = []
    if other_seeds:
        seeds = sorted({r["seed"] for r in other_seeds})
        children = f"{len(other_seeds)} child" + ("ren" if len(other_seeds) > 1 else "")
        parts.append(f"seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))} ({children})")
    if cells:
        by_norm = {n: [str(b) for m, b in cells if m == n] for n in NORMS if any(m == n for m, _ in cells)}
        parts.append(f"{len(cells)} cell{'s' if len(cells) > 1 else ''}: "
                     + "; ".join(f"{n} at batch {', '.join(bs)}" for n, bs in by_norm.items()))
    return "; ".join(parts)


def _markdown(experiment: str, sweep_ids: list[str], seeds: list[int], cells: list[dict],
              comparisons: list[tuple[str, Comparison]], holds: list[dict], notes: dict, plateau_delta: float) -> str:
    unconverged = [c for c in cells if c["converged"] < c["seeds"]]
    family = sum(math.isfinite(c.p_value) for _, c in comparisons)
    lines = [f"# Does the ranking hold across sweeps {', '.join(f'`{s}`' for s in sweep_ids)}?", ""]
    if unconverged:
        lines += [f"**Warning: {len(unconverged)} cells have a child that did not converge** (last validation gain > "
                  f"{plateau_delta:g}): " + ", ".join(f"{c[SWEEP_COLUMN]} {c['norm']} at batch {c['batch_size']}"
                                                       for c in unconverged) + ".", ""]
    else:
        lines += [f"Every child compared converged (last validation gain ≤ {plateau_delta:g}).", ""]
    if notes["unfinished"]:
        lines += ["**Warning: not every sweep finished**: " + ", ".join(notes["unfinished"]) + ".", ""]
    if notes["validation_differs"]:
        lines += ["**Warning: the sweeps were validated on different cases**, so their differences are not "
                  "measured on the same cases.", ""]
    differ = notes["differ"]
    lines += ["**The sweeps differ in**: " + ("; ".join(f"`{k}` ({', '.join(v)})" for k, v in differ.items())
                                             if differ else "no recorded sweep parameter") + ".", ""]
    lines += [f"Experiment `{experiment}`. Compared: the (norm, batch size) cells and the seeds "
              f"({', '.join(map(str, seeds))}) that every sweep has; left out: "
              + (" / ".join(f"{s}: {v}" for s, v in notes["left_out"].items() if v) or "nothing") + ". "
              "Within each sweep, each pair of norms at each batch size: the paired mean difference A - B in final "
              "mean Dice over cases with its 95 % BCa bootstrap CI and the Wilcoxon signed-rank test, Holm-corrected "
              f"across the {family} comparisons below (one family, so the Holm p-values differ from each sweep's own "
              "report). Ranking: *" + HOLDS_STRICT + "* when A - B has the same sign in every sweep and no CI contains "
              "0; *" + HOLDS + "*; *" + HOLDS_NO_DIFFERENCE + "* (no sweep tells the norms apart); *" + CHANGES + "*; *"
              + REVERSES + "*. The CIs are each comparison's unadjusted interval; see the Holm p in the tables."
              + (" One seed: a check of one training run per cell, not a finding." if len(seeds) == 1 else ""),
              "", "## Final mean Dice per sweep and cell", "",
              "| sweep | norm | batch size | learning rate (after the batch-size rule) | final Dice [95 % CI over cases] "
              "| converged |", "|---|---|---|---|---|---|"]
    lines += [f"| {c[SWEEP_COLUMN]} | {c['norm']} | {c['batch_size']} | {c['lr']:.3g} | "
              f"{format_ci(c['case_dice_mean'], c['case_dice_ci_low'], c['case_dice_ci_high'])} | "
              f"{c['converged']} of {c['seeds']} |" for c in cells]
    lines += ["", "## Does the ranking hold?", "", "![A - B per sweep](robustness.png)", "",
              "| batch size | A | B | A - B [95 % CI] per sweep | ahead | ranking |", "|---|---|---|---|---|---|"]
    for h in holds:
        key = (h["batch_size"], h["norm_a"], h["norm_b"])
        shown = "; ".join(f"{s}: {format_ci(c.mean_difference, c.ci_low, c.ci_high, '+.3f')}" for s, c in comparisons
                          if (c.batch_size, c.norm_a, c.norm_b) == key)
        lines.append(f"| {h['batch_size']} | {h['norm_a']} | {h['norm_b']} | {shown} | {h['ahead']} | {h['ranking']} |")
    for s in sweep_ids:
        lines += ["", f"## `{s}`", "", pairwise_markdown([c for t, c in comparisons if t == s]).rstrip()]
    return "\n".join(lines) + "\n"
