"""Benchmark: a training iteration with and without single examples routed through oneDNN.

Both variants run in this process, one after the other for each setting, on random patches with the normalizer study's
network (by default DynUNet 8-16-32-64, deep supervision, instance norm, patch 24 x 40 x 24, float32):
"plain" swaps every convolution back to ``torch.nn.Conv3d`` (PyTorch's own kernel choice, which
is ``slow_conv3d`` at batch 1), "routed" is what ``build_unet`` returns
(:mod:`medseg.models.onednn_conv`). Each in contiguous and in channels_last_3d memory format.

    python benchmarks/single_example_conv.py [--threads 1] [--steps 10] [--json out.json]
                                             [--filters 8,16,32,64] [--patch 24,40,24] [--batch-sizes 1,2,3,4]

``--filters 16,32,64,128 --patch 40,56,40`` is the Hippocampus recipe's network (configs/hippocampus.yaml),
where most single-example convolutions run on oneDNN already and are left alone.

Prints seconds per iteration for batch sizes 1-4 and the ratio routed / plain (< 1 is faster).
"""
from __future__ import annotations

import argparse

import torch

from common import print_table, write_json

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--json")
    ap.add_argument("--filters", default="8,16,32,64")
    ap.add_argument("--patch", default="24,40,24")
    ap.add_argument("--batch-sizes", default="1,2,3,4")
    args = ap.parse_args()
    filters, patch = [int(v) for v in args.filters.split(",")], tuple(int(v) for v in args.patch.split(","))
    torch.set_num_threads(args.threads)
    from medseg.models import NetworkSpec, build_unet
    from medseg.models.onednn_conv import SingleExampleConv3d
    from medseg.training.timing import StepVariant, time_training_step

    spec = NetworkSpec(1, 3, filters, [1, 2, 2, 2], norm="instance", deep_supervision=True)

    def network(routed: bool) -> torch.nn.Module:
        net = build_unet(spec, seed=0)
        if not routed:
            for m in net.modules():
                if type(m) is SingleExampleConv3d:
                    m.__class__ = torch.nn.Conv3d
        return net

    rows = []
    for batch in [int(v) for v in args.batch_sizes.split(",")]:
        for channels_last in (False, True):
            t = {routed: time_training_step(network(routed), patch, batch, steps=args.steps, warmup=3,
                                            variant=StepVariant(channels_last=channels_last)) for routed in (False, True)}
            rows.append({"batch": batch, "layout": "channels_last" if channels_last else "contiguous",
                         "plain_s": t[False], "routed_s": t[True], "ratio": t[True] / t[False]})
    print_table(f"seconds per training iteration ({args.threads} thread(s), float32, filters {filters}, "
                f"patch {patch})", rows,
                [("batch", "batch", ""), ("layout", "layout", ""), ("plain_s", "plain s/it", ".3f"),
                 ("routed_s", "routed s/it", ".3f"), ("ratio", "routed/plain", ".2f")])
    write_json(args.json, {"threads": args.threads, "filters": filters, "patch": patch, "rows": rows})


if __name__ == "__main__":
    main()
