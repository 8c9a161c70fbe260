"""Build the embedded sample: the first N cases (sorted by name) of an MSD task, same layout.

    python data_scripts/make_sample.py ../shared/data/Task04_Hippocampus data/sample/Task04_Hippocampus -n 16

Copies the files byte for byte and writes a dataset.json listing only those cases.
"""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("source", type=Path)
    ap.add_argument("dest", type=Path)
    ap.add_argument("-n", type=int, default=16, help="number of cases")
    a = ap.parse_args(argv)
    doc = json.loads((a.source / "dataset.json").read_text())
    cases = sorted(doc["training"], key=lambda c: c["image"])[: a.n]
    for sub in ("imagesTr", "labelsTr"):
        (a.dest / sub).mkdir(parents=True, exist_ok=True)
    for c in cases:
        for key in ("image", "label"):
            shutil.copyfile(a.source / c[key], a.dest / c[key])
    doc.update(training=cases, numTraining=len(cases), numTest=0, test=[])
    doc["release"] = f"{doc.get('release', '')}; medseg embedded sample: {len(cases)} cases"
    (a.dest / "dataset.json").write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {len(cases)} cases to {a.dest}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
