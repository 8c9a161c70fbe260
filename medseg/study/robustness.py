"""Does one sweep's ranking of norms hold in other sweeps? The robustness report of several sweeps.

A typical use is a learning-rate check: the same (norm, batch size) cells run again with the
learning rate x0.3 and x3 (``medseg sweep --set train.lr=... --sweep-id ...``), then

    medseg report -e EXPERIMENT --sweep main --sweep lr_low --sweep lr_high

compares, within each sweep, every pair of norms at every batch size on the cells and seeds that
**all** the sweeps have, with the statistics of the sweep report (:mod:`medseg.study.statistics`:
paired mean difference in final mean Dice over cases, 95 % BCa bootstrap CI, Wilcoxon signed-rank
test), Holm-corrected across every comparison of every sweep (one family). A ranking *holds* at a
batch size when the difference A - B has the same sign in every sweep, and *holds, every CI
excludes 0* when no sweep's interval contains 0; otherwise *the ranking changes*. With one shared
seed this is a check of one training run per cell, not a finding.
"""
from __future__ import annotations

import math
from pathlib import Path

from medseg.atomic import atomic_write_text, write_csv
from medseg.errors import MedsegError
from medseg.norm_registry import NORMS
from medseg.study.report import collect_runs, dice_by_cell, find_sweep, format_ci, pairwise_markdown
from medseg.study.rules import NEGLIGIBLE, PLATEAU_DELTA
from medseg.study.statistics import Comparison, cell_case_means, holm, mean_ci, pairwise_table
from medseg.tracking import Tracker

HOLDS = "holds"
HOLDS_STRICT = "holds, every CI excludes 0"
CHANGES = "the ranking changes"


def ranking_holds(comparisons: list[Comparison]) -> str:
    """:data:`HOLDS_STRICT`, :data:`HOLDS` or :data:`CHANGES` for one pair of norms at one batch size,
    from its comparison in each sweep (a zero or NaN difference has no sign: the ranking changes)."""
    signs = {math.copysign(1, c.mean_difference) if c.mean_difference else 0.0 for c in comparisons}
    if len(signs) != 1 or signs == {0.0} or not all(math.isfinite(c.mean_difference) for c in comparisons):
        return CHANGES
    return HOLDS_STRICT if not any(c.tie for c in comparisons) else HOLDS


def build_robustness_report(tracking_uri: str, experiment: str, sweep_ids: list[str], folder: Path,
                            plateau_delta: float = PLATEAU_DELTA, negligible: float = NEGLIGIBLE) -> dict:
    """Compare the norms within each sweep on what all the sweeps share, and say whether each ranking holds.

    Writes ``robustness.md`` (the cells' final Dice, the comparisons per sweep, whether each ranking
    holds), ``robustness.csv`` (one row per comparison, with its ``sweep``) and ``robustness_cells.csv``
    (final mean Dice with its 95 % CI over cases, learning rate and convergence per sweep and cell).
    Nothing is logged to MLflow (the sweeps have different parent runs).

    Args:
        tracking_uri: the MLflow store holding every sweep.
        experiment: their MLflow experiment.
        sweep_ids: two or more sweep ids; the first is the reference in the tables' order.
        folder: output folder (created).
        plateau_delta: the plateau rule's threshold (mean Dice), as in the sweep report.
        negligible: negligible difference in mean Dice (verdicts).

    Returns:
        ``{"seeds", "cells", "comparisons": [(sweep id, Comparison)], "holds": [{"batch_size", "norm_a",
        "norm_b", "holds"}], "folder"}``.

    Raises:
        MedsegError: fewer than two sweeps, no such experiment or sweep, a sweep without a finished
            child, no seed shared by every sweep, or no two norms at one batch size in every sweep.
    """
    if len(set(sweep_ids)) < 2:
        raise MedsegError("a robustness report needs two or more different sweeps", ", ".join(sweep_ids))
    client = Tracker.client_for(tracking_uri)
    rows = {}
    for sweep_id in sweep_ids:
        experiment_id, _ = find_sweep(client, experiment, sweep_id)
        rows[sweep_id] = collect_runs(client, experiment_id, sweep_id, plateau_delta)
        if not rows[sweep_id]:
            raise MedsegError(f"sweep {sweep_id} has no finished child run yet", experiment)
    seeds = sorted(set.intersection(*({r["seed"] for r in rs} for rs in rows.values())))
    if not seeds:
        raise MedsegError("the sweeps share no seed, so nothing is paired across them", ", ".join(sweep_ids))
    rows = {s: [r for r in rs if r["seed"] in seeds] for s, rs in rows.items()}
    dice = {s: dice_by_cell(rs) for s, rs in rows.items()}
    cells = set.intersection(*(set(d) for d in dice.values()))
    if not any(sum(1 for n, b in cells if b == bs) > 1 for _, bs in cells):
        raise MedsegError("the sweeps share no two norms at one batch size: nothing to compare", ", ".join(sweep_ids))
    comparisons = [(s, c) for s in sweep_ids
                   for c in pairwise_table({k: v for k, v in dice[s].items() if k in cells}, list(NORMS), negligible)]
    for (_, c), p in zip(comparisons, holm([c.p_value for _, c in comparisons])):  # one family: every sweep
        c.p_holm = p
    keys = sorted({(c.batch_size, c.norm_a, c.norm_b) for _, c in comparisons},
                  key=lambda k: (k[0], NORMS.index(k[1]), NORMS.index(k[2])))
    holds = [{"batch_size": b, "norm_a": a, "norm_b": nb,
              "holds": ranking_holds([c for _, c in comparisons if (c.batch_size, c.norm_a, c.norm_b) == (b, a, nb)])}
             for b, a, nb in keys]
    cell_rows = []
    for s in sweep_ids:
        for norm, bs in sorted(cells, key=lambda k: (k[1], NORMS.index(k[0]))):
            rs = [r for r in rows[s] if (r["norm"], r["batch_size"]) == (norm, bs)]
            m, lo, hi = mean_ci(cell_case_means(dice[s][(norm, bs)]))
            cell_rows.append({"sweep": s, "norm": norm, "batch_size": bs, "lr": rs[0]["lr"], "seeds": len(rs),
                              "converged": sum(r["converged"] for r in rs), "case_dice_mean": m, "case_dice_ci_low": lo,
                              "case_dice_ci_high": hi})
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    write_csv([{"sweep": s, **c.to_dict()} for s, c in comparisons], folder / "robustness.csv")
    write_csv(cell_rows, folder / "robustness_cells.csv")
    atomic_write_text(folder / "robustness.md",
                      _markdown(experiment, sweep_ids, seeds, cell_rows, comparisons, holds, plateau_delta))
    return {"seeds": seeds, "cells": cell_rows, "comparisons": comparisons, "holds": holds, "folder": folder}


def _markdown(experiment: str, sweep_ids: list[str], seeds: list[int], cells: list[dict],
              comparisons: list[tuple[str, Comparison]], holds: list[dict], plateau_delta: float) -> str:
    unconverged = [c for c in cells if c["converged"] < c["seeds"]]
    lines = [f"# Does the ranking hold across sweeps {', '.join(f'`{s}`' for s in sweep_ids)}?", "",
             (f"**Warning: {len(unconverged)} cells have a child that did not converge** (last validation gain > "
              f"{plateau_delta:g}): " + ", ".join(f"{c['sweep']} {c['norm']} at batch {c['batch_size']}" for c in unconverged)
              + "." if unconverged else f"Every child compared converged (last validation gain ≤ {plateau_delta:g})."),
             "",
             f"Experiment `{experiment}`. Compared: the (norm, batch size) cells and the seeds ({', '.join(map(str, seeds))}) "
             "that every sweep has. Within each sweep, each pair of norms at each batch size: the paired mean "
             "difference in final mean Dice over cases with its 95 % BCa bootstrap CI and the Wilcoxon signed-rank "
             f"test, Holm-corrected across all {sum(math.isfinite(c.p_value) for _, c in comparisons)} comparisons "
             "below (one family). A ranking *holds* when A - B has the same sign in every sweep."
             + (" One seed: a check of one training run per cell, not a finding." if len(seeds) == 1 else ""),
             "", "## Final mean Dice per sweep and cell", "",
             "| sweep | norm | batch size | learning rate | final Dice [95 % CI] | converged |", "|---|---|---|---|---|---|"]
    lines += [f"| {c['sweep']} | {c['norm']} | {c['batch_size']} | {c['lr']:.3g} | "
              f"{format_ci(c['case_dice_mean'], c['case_dice_ci_low'], c['case_dice_ci_high'])} | "
              f"{c['converged']} of {c['seeds']} |" for c in cells]
    lines += ["", "## Does the ranking hold?", "", "| batch size | A | B | A - B [95 % CI] per sweep | ranking |", "|---|---|---|---|---|"]
    for h in holds:
        key = (h["batch_size"], h["norm_a"], h["norm_b"])
        shown = "; ".join(f"{s}: {format_ci(c.mean_difference, c.ci_low, c.ci_high, '+.3f')}" for s, c in comparisons
                          if (c.batch_size, c.norm_a, c.norm_b) == key)
        lines.append(f"| {h['batch_size']} | {h['norm_a']} | {h['norm_b']} | {shown} | {h['holds']} |")
    for s in sweep_ids:
        lines += ["", f"## `{s}`", "", pairwise_markdown([c for t, c in comparisons if t == s]).rstrip()]
    return "\n".join(lines) + "\n"
