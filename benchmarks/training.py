"""Benchmark: medseg's training step vs a plain MONAI reference loop, per norm and batch size.

Both run in this process, alternating, on the embedded Task04 sample with the same network
(DynUNet, filters 16-128, deep supervision), loss (Dice+CE, deep-supervision weights 1, 1/2, 1/4),
optimizer (SGD Nesterov 0.99, lr 0.01, poly decay), gradient clipping (12), patch (40 x 56 x 40),
patch sampling (foreground oversampling 0.33) and augmentation, with data loading in the loop
(no workers). The reference uses MONAI and torch only: CacheDataset of the preprocessing chain,
a Dataset with the random chain, a DataLoader, and an explicit loop.

    python benchmarks/training.py [--norms instance,group,batch,layer] [--batch-sizes 1,2,3,4]
                                  [--iterations 10] [--device cpu|cuda] [--json out.json]

Prints seconds per iteration, patches per second and peak memory (see common.PeakMemory) for
both, and the ratio medseg / reference (target <= 1.05).
"""
from __future__ import annotations

import argparse
import itertools
import math
import time

import torch
from monai import transforms as T
from monai.data import CacheDataset, DataLoader, Dataset
from monai.losses import DiceCELoss
from monai.networks.nets import DynUNet

from common import SAMPLE, PeakMemory, print_table, write_json

PATCH = (40, 56, 40)
FILTERS, STRIDES = [16, 32, 64, 128], [1, 2, 2, 2]


def medseg_runner(norm: str, batch_size: int, iterations: int, device: torch.device, cache: dict):
    from medseg import transforms as mt
    from medseg.data import compute_fingerprint, read_dataset
    from medseg.models import NetworkSpec, build_unet
    from medseg.plan import make_plan
    from medseg.training.distributed import DistInfo, rank_indices
    from medseg.training.loop import Step, dice_ce_loss, train_epoch
    from medseg.training.optim import build_optimizer, build_scheduler
    from medseg.training.patch_stream import EpochPatchStream

    if "plan" not in cache:
        spec = read_dataset(SAMPLE)
        cache["plan"] = make_plan(compute_fingerprint(spec), patch_size=PATCH, strides=STRIDES)
        pre, prep = mt.preprocessing(cache["plan"]), mt.patch_preparation(cache["plan"])
        cache["volumes"] = [prep(pre(c.as_dict())) for c in spec.cases[:12]]
    plan = cache["plan"]
    torch.manual_seed(0)
    net = build_unet(NetworkSpec(1, 3, FILTERS, STRIDES, norm=norm, deep_supervision=True)).to(device)
    stream = EpochPatchStream(cache["volumes"], mt.patch_sampling_and_augmentation(plan), iterations * batch_size, 0)
    opt = build_optimizer(net.parameters(), "sgd", 0.01)
    sched = build_scheduler(opt, iterations)
    step = Step(dice_ce_loss(), opt, sched, device, grad_clip=12.0)

    def run(epoch: int) -> float:
        loader = DataLoader(stream, batch_size=batch_size,
                            sampler=rank_indices(epoch, iterations * batch_size, 0, batch_size, DistInfo()))
        return train_epoch(net, loader, step)["seconds_per_iteration"]
    return run


def reference_data(cache: dict) -> list[dict]:
    """The 12 training volumes preprocessed by a plain MONAI chain (CacheDataset), cached."""
    import json
    if "ref_data" not in cache:
        doc = json.loads((SAMPLE / "dataset.json").read_text())
        items = [{"image": str(SAMPLE / c["image"]), "label": str(SAMPLE / c["label"])} for c in doc["training"][:12]]
        keys = ("image", "label")
        pre = T.Compose([
            T.LoadImaged(keys, reader="NibabelReader", image_only=True, ensure_channel_first=True),
            T.Orientationd(keys, axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S"))),
            T.Spacingd(keys, pixdim=(1.0, 1.0, 1.0), mode=("bilinear", "nearest")),
            T.NormalizeIntensityd("image", nonzero=True, channel_wise=True),
            T.SpatialPadd(keys, spatial_size=PATCH),
            T.ClassesToIndicesd("label", num_classes=3, indices_postfix="_cls_indices"),
        ])
        cache["ref_data"] = list(CacheDataset(items, pre, progress=False))
    return cache["ref_data"]


def reference_random_chain() -> T.Compose:
    """Patch crop (foreground oversampling 0.33) and augmentation in plain MONAI."""
    r, p = math.radians(15), 0.2
    keys = ("image", "label")
    rand = T.Compose([
        T.RandCropByLabelClassesd(keys, "label", PATCH, ratios=[0.67, 0.165, 0.165], num_classes=3, num_samples=1,
                                  indices_key="label_cls_indices", warn=False),
        T.DeleteItemsd("label_cls_indices"),
        T.RandAffined(keys, prob=p, rotate_range=(r, r, r), scale_range=0.1, mode=("bilinear", "nearest"),
                      padding_mode="zeros"),
        *[T.RandFlipd(keys, prob=0.5, spatial_axis=a) for a in range(3)],
        T.RandGaussianNoised("image", prob=p / 2, std=0.1),
        T.RandScaleIntensityd("image", prob=p, factors=0.25),
        T.RandScaleIntensityFixedMeand("image", prob=p, factors=0.25, preserve_range=True),
        T.RandAdjustContrastd("image", prob=p, gamma=(0.7, 1.5), retain_stats=True),
    ])
    rand.set_random_state(0)
    return rand


def reference_runner(norm: str, batch_size: int, iterations: int, device: torch.device, cache: dict):
    """Plain MONAI + torch: no medseg code."""
    data, rand = reference_data(cache), reference_random_chain()
    norm_name = {"instance": ("instance", {"affine": True, "eps": 1e-5}), "batch": ("batch", {"affine": True}),
                 "group": ("group", {"num_groups": 8, "affine": True}),
                 "layer": ("group", {"num_groups": 1, "affine": True})}[norm]
    torch.manual_seed(0)
    net = DynUNet(3, 1, 3, [3] * 4, STRIDES, STRIDES[1:], filters=FILTERS, norm_name=norm_name,
                  deep_supervision=True, deep_supr_num=2).to(device)
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.99, nesterov=True, weight_decay=3e-5)
    sched = torch.optim.lr_scheduler.PolynomialLR(opt, total_iters=iterations, power=0.9)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True, batch=True, smooth_nr=1e-5, smooth_dr=1e-5)
    sampler = torch.utils.data.RandomSampler(data, replacement=True, num_samples=iterations * batch_size)
    loader = DataLoader(Dataset(data, rand), batch_size=batch_size, sampler=sampler)

    def run(epoch: int) -> float:
        net.train()
        start = time.perf_counter()
        for batch in loader:
            image, label = batch["image"].to(device), batch["label"].to(device)
            opt.zero_grad(set_to_none=True)
            heads = net(image).unbind(1)
            loss = sum(0.5**i * loss_fn(h, label) for i, h in enumerate(heads)) / sum(0.5**i for i in range(len(heads)))
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 12.0)
            opt.step()
            sched.step()
            loss.item()
        return (time.perf_counter() - start) / iterations
    return run


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--norms", default="instance,group,batch,layer")
    ap.add_argument("--batch-sizes", default="1,2,3,4")
    ap.add_argument("--iterations", type=int, default=10, help="timed iterations per measurement")
    ap.add_argument("--repeats", type=int, default=2, help="alternating medseg/reference measurements (median)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    cache: dict = {}
    rows = []
    for norm, bs in itertools.product(args.norms.split(","), [int(b) for b in args.batch_sizes.split(",")]):
        result = {}
        runners = {"medseg": medseg_runner(norm, bs, args.iterations, device, cache),
                   "reference": reference_runner(norm, bs, args.iterations, device, cache)}
        for name, run in runners.items():
            run(0)  # warm-up (allocator, oneDNN/cuDNN kernel choice)
        times = {name: [] for name in runners}
        for epoch in range(1, args.repeats + 1):
            for name, run in runners.items():
                with PeakMemory(device) as mem:
                    times[name].append(run(epoch))
                result[f"{name}_peak_mb"] = max(result.get(f"{name}_peak_mb", 0.0), mem.peak_mb)
        for name in runners:
            s = sorted(times[name])[len(times[name]) // 2]
            result[f"{name}_s_per_it"], result[f"{name}_patches_per_s"] = s, bs / s
        result.update(norm=norm, batch_size=bs, ratio=result["medseg_s_per_it"] / result["reference_s_per_it"])
        rows.append(result)
        print(f"{norm} bs{bs}: medseg {result['medseg_s_per_it']:.3f} s/it, reference "
              f"{result['reference_s_per_it']:.3f} s/it, ratio {result['ratio']:.3f}", flush=True)
    print_table(f"Training step incl. data loading, {args.iterations} iterations x {args.repeats} (median), "
                f"{device}, patch {PATCH}", rows,
                [("norm", "norm", ""), ("batch_size", "batch", ""), ("medseg_s_per_it", "medseg s/it", ".3f"),
                 ("reference_s_per_it", "MONAI loop s/it", ".3f"), ("ratio", "ratio", ".3f"),
                 ("medseg_patches_per_s", "medseg patches/s", ".2f"), ("medseg_peak_mb", "medseg peak MB", ".0f"),
                 ("reference_peak_mb", "MONAI peak MB", ".0f")])
    write_json(args.json, {"benchmark": "training", "iterations": args.iterations, "patch": PATCH, "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
