"""medseg.checkpoint: a checkpoint is written atomically."""
import signal
import subprocess
import sys

from tests.conftest import ROOT


def test_sigkill_while_writing_a_checkpoint_keeps_the_previous_one(tmp_path):
    """A process killed in the middle of save_checkpoint leaves the previous complete checkpoint."""
    import torch

    from medseg.checkpoint import load_checkpoint, save_checkpoint

    path = tmp_path / "last.pt"
    save_checkpoint({"next_epoch": 1, "w": torch.arange(10)}, path)
    script = f"""
import sys, time, torch
sys.path.insert(0, {str(ROOT)!r})
import medseg.checkpoint as c
real_save = torch.save
def slow_save(obj, f):
    real_save(obj, f)
    with open(f, "ab") as fh:
        fh.write(b"x" * 1000)  # more bytes on the way...
    print("writing", flush=True)
    time.sleep(60)
c.torch.save = slow_save
c.save_checkpoint({{"next_epoch": 2, "w": torch.zeros(1000)}}, {str(path)!r})
"""
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    state = load_checkpoint(path)
    assert state["next_epoch"] == 1 and torch.equal(state["w"], torch.arange(10))
