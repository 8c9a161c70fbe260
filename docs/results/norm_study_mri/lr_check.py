"""The MRI arm's learning-rate check: does the ranking of instance and batch norm hold at x0.3 and x3
the learning rate?

Reads seed 0 of the main sweep (lr x1) and the two learning-rate sweeps from the arm's MLflow store
and prints, per learning rate and batch size, each norm's final mean Dice with its 95 % CI over
cases and the paired difference instance - batch with its CI and Wilcoxon p (Holm-corrected across
the printed table), with medseg's own report statistics (medseg.study.statistics). Run from the
repository root:

    python docs/results/norm_study_mri/lr_check.py > docs/results/norm_study_mri/lr_check.md
"""
from __future__ import annotations

import sys

from medseg.study.report import collect_runs, dice_by_cell, pairwise_markdown
from medseg.study.statistics import cell_case_means, holm, mean_ci, pairwise_table
from medseg.tracking import Tracker

STORE = "sqlite:///docs/results/norm_study_mri/mlflow.db"
EXPERIMENT = "medseg-norm-study"
SWEEPS = {0.3: "mri_v2_lr0.0003", 1.0: "mri_v2_main", 3.0: "mri_v2_lr0.003"}  # lr multiplier -> sweep id
NORMS, BATCH_SIZES, SEED = ("instance", "batch"), (1, 4), 0


def main(store: str = STORE) -> int:
    client = Tracker.client_for(store)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    if experiment is None:
        print(f"{store}: no experiment {EXPERIMENT!r}", file=sys.stderr)
        return 1
    experiment_id = experiment.experiment_id
    lines = ["| lr | batch size | instance: final Dice [95 % CI] | batch: final Dice [95 % CI] |", "|---|---|---|---|"]
    comparisons, missing = [], []
    for factor, sweep_id in SWEEPS.items():
        rows = [r for r in collect_runs(client, experiment_id, sweep_id) if r["seed"] == SEED
                and r["norm"] in NORMS and r["batch_size"] in BATCH_SIZES]
        dice = dice_by_cell(rows)
        missing += [f"{sweep_id}: {n} at batch {b}" for n in NORMS for b in BATCH_SIZES if (n, b) not in dice]
        for b in BATCH_SIZES:
            cells = []
            for n in NORMS:
                if (n, b) in dice:
                    m, lo, hi = mean_ci(cell_case_means(dice[(n, b)]))
                    lr = next(r["lr"] for r in rows if (r["norm"], r["batch_size"]) == (n, b))
                    cells.append(f"{m:.3f} [{lo:.3f}, {hi:.3f}] (lr {lr:.3g})")
                else:
                    cells.append("not run")
            lines.append(f"| x{factor:g} | {b} | " + " | ".join(cells) + " |")
        comparisons += [(factor, c) for c in pairwise_table(dice, list(NORMS))]
    # one Holm family for the whole check: recompute over every comparison printed
    for (_, c), p in zip(comparisons, holm([c.p_value for _, c in comparisons])):
        c.p_holm = p
    print("## Final mean Dice (seed 0)\n\n" + "\n".join(lines) + "\n")
    for factor in SWEEPS:
        table = [c for f, c in comparisons if f == factor]
        if table:
            print(f"## lr x{factor:g}: instance - batch\n\n" + pairwise_markdown(table))
    print(_verdicts(comparisons))
    if missing:
        print("Not finished yet: " + "; ".join(missing) + ".")
    return 0


def _verdicts(comparisons: list) -> str:
    """Whether the ranking holds, per batch size: instance - batch has the same sign at every
    learning rate (*holds*), and every interval excludes 0 on that side (*holds, every CI excludes 0*)."""
    lines = ["## Does the ranking hold?\n",
             "The ranking holds at a batch size when instance - batch has the same sign at x0.3, x1 and x3 "
             "the learning rate (one seed: a check, not a finding).\n"]
    for b in BATCH_SIZES:
        cs = {f: c for f, c in comparisons if c.batch_size == b}
        if set(cs) != set(SWEEPS):
            lines.append(f"- batch size {b}: not all learning rates finished.")
            continue
        signs = {(c.mean_difference > 0) for c in cs.values()}
        shown = ", ".join(f"x{f:g} {c.mean_difference:+.3f} [{c.ci_low:+.3f}, {c.ci_high:+.3f}]" for f, c in cs.items())
        if len(signs) > 1:
            lines.append(f"- batch size {b}: **the ranking changes** ({shown}).")
        else:
            strict = all(not c.tie for c in cs.values())
            lines.append(f"- batch size {b}: holds{', every CI excludes 0' if strict else ''} ({shown}).")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
