"""One report over several sweeps that are parts of one study: the same recipe, different seeds
(for example a seed added later with ``medseg sweep --first-seed``), or different cells.

The children of all the sweeps are pooled and reported as one sweep (:func:`medseg.study.report.write_report`):
per (norm, batch size) cell, every seed from every sweep; paired comparisons on the seeds both cells
have. Pooling is refused when the recipes differ (a learning-rate check is compared with a
robustness report instead, :mod:`medseg.study.robustness`) or when one (norm, batch size, seed)
child is in two sweeps. Nothing is logged to MLflow (the sweeps have different parent runs).
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path

from medseg.errors import MedsegError
from medseg.study.report import SWEEP_COLUMN, collect_sweeps, planned_children, sort_runs, write_report
from medseg.study.robustness import recipe_differences
from medseg.study.rules import NEGLIGIBLE, PLATEAU_DELTA
from medseg.tracking import Tracker


def build_pooled_report(tracking_uri: str, experiment: str, sweep_ids: list[str], folder: Path,
                        plateau_delta: float = PLATEAU_DELTA, negligible: float = NEGLIGIBLE) -> dict:
    """Report the children of several sweeps with one recipe as one study, in ``folder``.

    Writes what a sweep's report writes (:func:`medseg.study.report.build_report`: ``summary.md``,
    the CSVs, the plots), with a ``sweep`` column in ``runs.csv``. The comparisons pool the seeds of
    every sweep: for a cell, the per-case Dice is averaged over all its seeds, and two cells are
    compared on the seeds both have.

    Args:
        tracking_uri: the MLflow store holding every sweep.
        experiment: their MLflow experiment.
        sweep_ids: two or more different sweep ids.
        folder: output folder (created).
        plateau_delta: the plateau rule's threshold (mean Dice).
        negligible: negligible difference in mean Dice (verdicts).

    Returns:
        what :func:`medseg.study.report.write_report` returns, plus ``"sweep_ids"`` and ``"sweep_id"``
        (their ids joined by ``+``, a label).

    Raises:
        MedsegError: fewer than two sweeps, no such experiment or sweep, a sweep without a finished
            child, recipes that differ (named with each sweep's value), or a child in two sweeps.
    """
    by_sweep, parents = collect_sweeps(Tracker.client_for(tracking_uri), experiment, sweep_ids, "pooling",
                                       plateau_delta)
    rows = sort_runs([{SWEEP_COLUMN: s, **r} for s, rs in by_sweep.items() for r in rs])
    differ = recipe_differences({s: dict(p.data.params) for s, p in parents.items()})
    if differ:
        raise MedsegError("the sweeps' recipes differ, so they are not parts of one study: "
                          + "; ".join(f"{k} = {' / '.join(v)}" for k, v in differ.items())
                          + " (compare them without --pool: a robustness report)", ", ".join(sweep_ids))
    twice = [k for k, n in Counter((r["norm"], r["batch_size"], r["seed"]) for r in rows).items() if n > 1]
    if twice:
        raise MedsegError("a child is in more than one sweep (pooled sweeps need different seeds or cells; "
                          "see medseg sweep --first-seed): "
                          + ", ".join(f"{n}_bs{b}_seed{s}" for n, b, s in sorted(twice)), ", ".join(sweep_ids))
    planned = [c for p in parents.values() for c in planned_children(p.data.params)]
    status = ", ".join(f"`{s}` ({p.info.run_id}, {p.info.status})" for s, p in parents.items())
    rule = parents[sweep_ids[0]].data.params.get("sweep.rule", "?")
    result = write_report(folder, rows, "sweeps " + " + ".join(f"`{s}`" for s in sweep_ids) + ", pooled",
                          f"Experiment `{experiment}`, parent runs {status}", planned, rule, plateau_delta,
                          negligible)
    return {"sweep_ids": list(sweep_ids), "sweep_id": "+".join(sweep_ids), **result}
