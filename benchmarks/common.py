"""Shared by the benchmarks: peak-memory sampling, timing, table printing and JSON output."""
from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SAMPLE = ROOT / "data/sample/Task04_Hippocampus"


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20


class PeakMemory:
    """Peak memory while the block runs, in MB: on CUDA torch's peak allocated memory; on CPU the
    process's resident set size sampled every 5 ms, minus its value at the start (what the block
    added on top of what was already resident)."""

    def __init__(self, device: torch.device):
        self.device, self.peak_mb = device, 0.0

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            return self
        self._base, self._max, self._stop = _rss_mb(), 0.0, threading.Event()

        def sample():
            while not self._stop.is_set():
                self._max = max(self._max, _rss_mb())
                time.sleep(0.005)

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            self.peak_mb = torch.cuda.max_memory_allocated(self.device) / 2**20
        else:
            self._stop.set()
            self._thread.join()
            self.peak_mb = max(0.0, max(self._max, _rss_mb()) - self._base)


def print_table(title: str, rows: list[dict], columns: list[tuple[str, str, str]]) -> None:
    """Print ``rows`` as an aligned text table; columns are (key, header, format)."""
    cells = [[h for _, h, _ in columns]] + [[format(r[k], f) if isinstance(r[k], float) else str(r[k])
                                            for k, _, f in columns] for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(columns))]
    print(f"\n{title}")
    for j, c in enumerate(cells):
        print("  ".join(x.rjust(w) for x, w in zip(c, widths)))
        if j == 0:
            print("  ".join("-" * w for w in widths))


def write_json(path: str | None, payload: dict) -> None:
    """Write the results (and the machine) as JSON when ``path`` is given."""
    if not path:
        return
    import platform
    payload = {"machine": {"cpu": platform.processor() or platform.machine(), "cores": torch.get_num_threads(),
                           "torch": torch.__version__,
                           "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None},
               **payload}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(payload, indent=1))
    print(f"\nwrote {path}")
