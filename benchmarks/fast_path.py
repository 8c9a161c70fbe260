"""Benchmark: speed-up of autocast, channels_last_3d and torch.compile on medseg's training step.

For each norm and batch size, times the training step (forward, Dice+CE with deep supervision,
backward, SGD) of the Hippocampus network (DynUNet, filters 16-128, patch 40 x 56 x 40) on random
patches in every variant, in this process, and prints seconds per iteration, patches per second,
peak memory and the speed-up against float32 eager (the baseline, same process, same patches).

    python benchmarks/fast_path.py [--norms instance] [--batch-sizes 2] [--variants fp32,amp,cl,compile,amp+compile]
                                   [--amp bf16|fp16] [--iterations 6] [--device cpu|cuda] [--json out.json]

On CPU, ``amp`` is bf16 where the CPU computes it natively (AVX512-BF16/AMX), otherwise it runs
float32 and the row says so (see medseg.precision.effective_amp). torch.compile's
compilation happens in the untimed warm-up iterations.
"""
from __future__ import annotations

import argparse

import torch

from common import PeakMemory, print_table, write_json

PATCH = (40, 56, 40)
FILTERS, STRIDES = [16, 32, 64, 128], [1, 2, 2, 2]
VARIANTS = {"fp32": {}, "amp": {"amp": True}, "cl": {"channels_last": True}, "compile": {"compile": True},
            "amp+cl": {"amp": True, "channels_last": True}, "amp+compile": {"amp": True, "compile": True}}


def main() -> None:
    from medseg.precision import effective_amp
    from medseg.models import NetworkSpec, build_unet
    from medseg.training.timing import StepVariant, time_training_step

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--norms", default="instance")
    ap.add_argument("--batch-sizes", default="2")
    ap.add_argument("--variants", default="fp32,amp,cl,compile,amp+compile")
    ap.add_argument("--amp", default="bf16", choices=["bf16", "fp16"])
    ap.add_argument("--iterations", type=int, default=6)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--json")
    args = ap.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    variants = args.variants.split(",")
    if variants[0] != "fp32":
        variants.insert(0, "fp32")  # the baseline
    rows = []
    for norm in args.norms.split(","):
        for b in [int(x) for x in args.batch_sizes.split(",")]:
            base = None
            for v in variants:
                opts = VARIANTS[v]
                amp = args.amp if opts.get("amp") else "none"
                torch.manual_seed(0)
                torch._dynamo.reset()  # each compiled variant compiles afresh (no recompile-limit fallback to eager)
                net = build_unet(NetworkSpec(1, 3, FILTERS, STRIDES, norm=norm, deep_supervision=True))
                with PeakMemory(device) as mem:
                    variant = StepVariant(amp, opts.get("channels_last", False), opts.get("compile", False))
                    s = time_training_step(net, PATCH, b, steps=args.iterations, warmup=2, device=device,
                                           variant=variant)
                base = base or s
                rows.append({"norm": norm, "batch_size": b, "variant": v, "autocast": effective_amp(device, amp),
                             "seconds_per_iteration": s, "patches_per_second": b / s, "peak_memory_mb": mem.peak_mb,
                             "speedup_vs_fp32": base / s})
                print(f"{norm} b={b} {v}: {s:.3f} s/it", flush=True)
    print_table(f"Training step variants on {device}, patch {PATCH}", rows,
                [("norm", "norm", ""), ("batch_size", "batch", ""), ("variant", "variant", ""),
                 ("autocast", "autocast", ""), ("seconds_per_iteration", "s/it", ".3f"),
                 ("patches_per_second", "patches/s", ".2f"), ("peak_memory_mb", "peak MB", ".0f"),
                 ("speedup_vs_fp32", "speed-up", ".2f")])
    write_json(args.json, {"benchmark": "fast_path", "patch_size": PATCH, "rows": rows})


if __name__ == "__main__":
    main()
