"""Benchmark: `medseg predict`'s inference path vs a plain MONAI sliding-window loop.

Both run in this process with the same network, weights, preprocessing and sliding-window
settings (Gaussian weighting, overlap 0.5, sw_batch_size 4, no TTA), on a Task04 case and on the
280 x 320 x 22 DICOM series. The reference uses MONAI and nibabel directly (no medseg code):
LoadImage -> channel first -> Orientation RAS -> Spacing -> NormalizeIntensity ->
sliding_window_inference -> softmax -> inverse transforms -> argmax.

    python benchmarks/inference.py [--model MODEL_DIR] [--repeats 5] [--json out.json]

Without --model, a model directory with random weights is built from the embedded sample's plan
(timing does not depend on the weight values). Prints seconds per volume, voxels per second
(input voxels) and the ratio medseg / reference (target: <= 1.05, and < 0.3 s for Task04 on CPU).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from monai import transforms as T
from monai.data import MetaTensor
from monai.inferers import sliding_window_inference

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SAMPLE = ROOT / "data/sample/Task04_Hippocampus"
DICOM = ROOT.parent / "shared/data/dicom/Study3/11-T1post-18670"


def random_model_dir(tmp: Path) -> Path:
    from medseg.data import compute_fingerprint, read_dataset
    from medseg.models import NetworkSpec, build_unet
    from medseg.models.directory import save_model_dir
    from medseg.plan import make_plan
    plan = make_plan(compute_fingerprint(read_dataset(SAMPLE)), patch_size=(40, 56, 40), strides=[1, 2, 2, 2])
    spec = NetworkSpec(in_channels=1, out_channels=3)
    torch.manual_seed(0)
    return save_model_dir(tmp / "model", build_unet(spec), plan, spec)


def reference_pipeline(network, plan, overlap=0.5, sw_batch_size=4):
    pre = T.Compose([
        T.LoadImaged("image", reader="NibabelReader", image_only=True, ensure_channel_first=True),
        T.Orientationd("image", axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S"))),
        T.Spacingd("image", pixdim=plan.target_spacing, mode="bilinear"),
        T.NormalizeIntensityd("image", nonzero=True, channel_wise=True),
    ])

    @torch.no_grad()
    def run(path):
        d = pre({"image": str(path)})
        img = d["image"]
        logits = sliding_window_inference(img.as_tensor()[None], plan.patch_size, sw_batch_size, network,
                                          overlap=overlap, mode="gaussian", sigma_scale=0.125)
        prob = MetaTensor(torch.softmax(logits, 1)[0], meta=img.meta, applied_operations=img.applied_operations)
        prob = pre.inverse({"image": prob})["image"]
        return np.asarray(prob.argmax(0), dtype=np.uint8)
    return run


def timeit(fn, path, repeats):
    fn(path)  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn(path)
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args(argv)
    from medseg.inference.segmenter import Segmenter
    import nibabel as nib

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = a.model or random_model_dir(Path(tmp))
        seg = Segmenter.load(model_dir, device="cpu")
        ref = reference_pipeline(seg.predictor.model.network, seg.plan)
        cases = [("Task04 case", SAMPLE / "imagesTr/hippocampus_004.nii.gz")]
        if DICOM.is_dir():
            from medseg.data.dicom import dicom_to_nifti
            cases.append(("DICOM 280x320x22", dicom_to_nifti(DICOM, Path(tmp) / "t1post.nii.gz")))
        rows = []
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, median of {a.repeats} runs")
        print(f"{'volume':<18} {'voxels':>9} {'medseg s':>9} {'ref s':>9} {'medseg vox/s':>13} {'ratio':>6} {'same labels':>11}")
        for name, path in cases:
            voxels = int(np.prod(nib.load(path).shape[:3]))
            t_m, out_m = timeit(lambda p: seg.predict(p).labels, path, a.repeats)
            t_r, out_r = timeit(ref, path, a.repeats)
            same = float((out_m == out_r).mean())
            rows.append({"volume": name, "voxels": voxels, "medseg_seconds": t_m, "reference_seconds": t_r,
                         "medseg_voxels_per_second": voxels / t_m, "ratio": t_m / t_r, "label_agreement": same})
            print(f"{name:<18} {voxels:>9} {t_m:>9.3f} {t_r:>9.3f} {voxels / t_m:>13.0f} {t_m / t_r:>6.2f} {same:>11.4f}")
    if a.json:
        a.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
