"""Benchmark: the data pipeline alone vs what the training step consumes.

Measures, in this process, patches per second of (a) medseg's patch stream (foreground-oversampled
crop + augmentation from cached preprocessed Task04 volumes, through a DataLoader with 0, 1 and 2
workers), (b) the same work written with plain MONAI (Dataset + DataLoader, no medseg code), and
(c) the training step alone on random patches (forward, Dice+CE, backward, SGD: the consumer).

    python benchmarks/data_pipeline.py [--batch-size 2] [--batches 30] [--device cpu|cuda] [--amp bf16|fp16|none]
                                     [--json out.json]

Prints patches/s and the ratio supply / consumption (target >= 3: data loading is never the
bottleneck) and medseg / reference for the pipeline (target about 1).
"""
from __future__ import annotations

import argparse
import time

import torch
from monai.data import DataLoader, Dataset

from common import print_table, write_json
from training import PATCH, medseg_runner, reference_data, reference_random_chain


def patches_per_second(loader, batches: int) -> float:
    it = iter(loader)
    next(it)  # worker start-up is not pipeline throughput
    start, n = time.perf_counter(), 0
    for _ in range(batches):
        n += next(it)["image"].shape[0]
    return n / (time.perf_counter() - start)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--batches", type=int, default=30)
    ap.add_argument("--workers", default="0,1,2")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--amp", default="bf16", help="autocast of the training step (medseg's default; on CPU only "
                                                  "where it is native, see effective_amp)")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    from medseg import transforms as mt
    from medseg.models import NetworkSpec, build_unet
    from medseg.training.distributed import DistInfo, rank_indices
    from medseg.training.patch_stream import EpochPatchStream
    from medseg.precision import effective_amp
    from medseg.training.timing import StepVariant, time_training_step

    cache: dict = {}
    medseg_runner("instance", args.batch_size, 1, torch.device("cpu"), cache)  # preprocess and cache the volumes
    ref_data = Dataset(reference_data(cache), reference_random_chain())
    n = (args.batches + 1) * args.batch_size
    stream = EpochPatchStream(cache["volumes"], mt.patch_sampling_and_augmentation(cache["plan"]), n, 0)
    rows = []
    for workers in [int(w) for w in args.workers.split(",")]:
        ours = DataLoader(stream, batch_size=args.batch_size, num_workers=workers,
                          sampler=rank_indices(0, n, 0, args.batch_size, DistInfo()))
        theirs = DataLoader(ref_data, batch_size=args.batch_size, num_workers=workers,
                            sampler=torch.utils.data.RandomSampler(ref_data, replacement=True, num_samples=n))
        a = patches_per_second(ours, args.batches)
        b = patches_per_second(theirs, args.batches)
        rows.append({"workers": workers, "medseg_patches_per_s": a, "reference_patches_per_s": b, "ratio": a / b})
    device = torch.device(args.device)
    net = build_unet(NetworkSpec(1, 3, [16, 32, 64, 128], [1, 2, 2, 2], deep_supervision=True))
    step = time_training_step(net, PATCH, args.batch_size, steps=5, warmup=2, device=device,
                              variant=StepVariant(amp=args.amp))
    consume = args.batch_size / step
    for r in rows:
        r["training_step_patches_per_s"] = consume
        r["supply_over_consumption"] = r["medseg_patches_per_s"] / consume
    print_table(f"Data pipeline vs training step, batch {args.batch_size}, patch {PATCH}, step on {device} "
                f"(autocast {effective_amp(device, args.amp)})", rows,
                [("workers", "workers", ""), ("medseg_patches_per_s", "medseg patches/s", ".1f"),
                 ("reference_patches_per_s", "MONAI patches/s", ".1f"), ("ratio", "medseg/MONAI", ".2f"),
                 ("training_step_patches_per_s", "step consumes patches/s", ".1f"),
                 ("supply_over_consumption", "supply/consumption", ".1f")])
    write_json(args.json, {"benchmark": "data_pipeline", "batch_size": args.batch_size, "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
