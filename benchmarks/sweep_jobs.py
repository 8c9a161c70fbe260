"""Benchmark: does ``medseg sweep --jobs 2`` finish the study's children sooner than ``--jobs 1``?

Runs the same small sweep twice, in fresh MLflow stores, through the installed command: the MRI
study's base config (configs/sweep_hippocampus.yaml) on ../shared/data/Task04_Hippocampus when
present (else the embedded sample), norms instance and batch at batch size 1 (the cells that
dominate the study's wall time), BUDGET patches each, one validation. Each child's start-up,
preprocessing, training and validation are in the wall time, as in a real sweep.

    python benchmarks/sweep_jobs.py [--budget 240] [--norms instance,batch] [--batch-sizes 1] [--json out.json]

Prints the wall time of each and the ratio jobs 1 / jobs 2 (above 1: --jobs 2 is faster). Run it on
a quiet machine: it measures how the cores are shared.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import print_table, write_json

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "Task04_Hippocampus"
SAMPLE = ROOT / "data" / "sample" / "Task04_Hippocampus"


def run_sweep(jobs: int, args, work: Path) -> float:
    cmd = [str(Path(sys.executable).with_name("medseg")), "sweep", "--config", str(ROOT / "configs/sweep_hippocampus.yaml"),
           "--data", str(args.data), "--norms", args.norms, "--batch-sizes", args.batch_sizes, "--seeds", "1",
           "--budget-samples", str(args.budget), "--evaluations", "1", "--jobs", str(jobs),
           "--tracking-uri", f"sqlite:///{work / f'jobs{jobs}.db'}", "--sweep-id", f"jobs{jobs}",
           "--report-dir", str(work / f"report{jobs}"), "--set", f"output_dir={work / f'runs{jobs}'}",
           "--set", "validation.hd95=false"]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, cwd=ROOT)
    return time.perf_counter() - start


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget", type=int, default=240, help="training patches per child")
    ap.add_argument("--norms", default="instance,batch")
    ap.add_argument("--batch-sizes", default="1")
    ap.add_argument("--data", type=Path, default=SHARED if SHARED.is_dir() else SAMPLE)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="medseg-jobs-") as tmp:
        work = Path(tmp)
        rows = {jobs: run_sweep(jobs, args, work) for jobs in (1, 2)}
    children = len(args.norms.split(",")) * len(args.batch_sizes.split(","))
    table = [{"jobs": j, "children": children, "wall_s": s, "s_per_child": s / children} for j, s in rows.items()]
    print_table(f"medseg sweep, {children} children of {args.budget} patches on {args.data.name}, "
                f"{os.cpu_count()} CPUs", table,
                [("jobs", "jobs", ""), ("children", "children", ""), ("wall_s", "wall (s)", ".1f"),
                 ("s_per_child", "s / child", ".1f")])
    print(f"jobs 1 / jobs 2 wall time: {rows[1] / rows[2]:.2f}x")
    write_json(args.json and str(args.json), {"rows": table, "ratio_jobs1_over_jobs2": rows[1] / rows[2]})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
