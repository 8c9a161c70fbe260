"""Benchmark: peak memory and time of the per-class Dice on a large label map, medseg's label-map
path (`medseg.evaluation.per_class_metrics`) against the one-hot path it replaced (MONAI
`one_hot` of prediction and reference, then `compute_dice`: the reference, MONAI only).

A synthetic 512 x 512 x 300 volume with 15 foreground labels (a CT with many organs at risk):
the reference is 16 slabs of labels, the prediction the same shifted by 2 voxels. Each method runs
in a fresh subprocess, so its peak resident set size (``ru_maxrss``) is its own; the figure is the
peak minus the RSS with both label maps loaded (what the metric itself adds). HD95 is left out:
its cost is MONAI's distance transform, the same in both paths (the label-map path runs it one
class at a time on two binary masks).

    python benchmarks/metrics_memory.py [--shape 512 512 300] [--labels 15] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, resource, sys, time
sys.path.insert(0, {root!r})
import numpy as np, torch
torch.set_num_threads(1)
method, shape, labels = sys.argv[1], tuple(int(x) for x in sys.argv[2:5]), int(sys.argv[5])
ref = (np.arange(shape[2]) * (labels + 1) // shape[2]).astype(np.uint8)[None, None, :].repeat(shape[0], 0).repeat(shape[1], 1)
pred = np.roll(ref, 2, axis=2)
from monai.metrics import compute_dice
from monai.networks.utils import one_hot
from medseg.evaluation import per_class_metrics
unit = 1 if sys.platform == "darwin" else 1024
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * unit
t0 = time.perf_counter()
if method == "one_hot":
    p = one_hot(torch.as_tensor(pred, dtype=torch.long)[None, None], labels + 1)
    r = one_hot(torch.as_tensor(ref, dtype=torch.long)[None, None], labels + 1)
    dice = compute_dice(p, r, include_background=False, ignore_empty=False)[0].tolist()
else:
    m = per_class_metrics(pred, ref, labels + 1, hd95=False)
    dice = [m[k]["dice"] for k in sorted(m)]
seconds = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * unit
print(json.dumps({{"method": method, "seconds": seconds, "added_peak_mb": (peak - before) / 2**20,
                  "peak_mb": peak / 2**20, "dice": dice}}))
"""


def run(method: str, shape, labels: int) -> dict:
    code = CHILD.format(root=str(ROOT))
    out = subprocess.run([sys.executable, "-c", code, method, *map(str, shape), str(labels)], capture_output=True,
                         text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", type=int, nargs=3, default=[512, 512, 300])
    ap.add_argument("--labels", type=int, default=15, help="foreground labels")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    reference, medseg = run("one_hot", args.shape, args.labels), run("label_map", args.shape, args.labels)
    same = max(abs(a - b) for a, b in zip(reference["dice"], medseg["dice"]))
    print(f"volume {' x '.join(map(str, args.shape))}, {args.labels} foreground labels, Dice only")
    print(f"{'method':<28}{'added peak MB':>14}{'seconds':>10}")
    for name, r in (("one-hot (MONAI, before)", reference), ("label map (medseg, after)", medseg)):
        print(f"{name:<28}{r['added_peak_mb']:>14.0f}{r['seconds']:>10.2f}")
    print(f"ratio after / before: memory {medseg['added_peak_mb'] / reference['added_peak_mb']:.3f}, "
          f"time {medseg['seconds'] / reference['seconds']:.2f}; largest Dice difference {same:.1e}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"shape": args.shape, "labels": args.labels, "before": reference,
                                         "after": medseg}, indent=1))


if __name__ == "__main__":
    main()
