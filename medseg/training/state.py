"""The resume state of a training run: what ``checkpoints/last.pt`` holds besides the weights, as one
typed record, saved and loaded here only.

The file is a plain ``torch.save`` dict (tensors and plain values, loaded with ``weights_only=True``,
see :mod:`medseg.checkpoint`), so a checkpoint written by an earlier medseg still loads.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch

from medseg.checkpoint import load_checkpoint, save_checkpoint
from medseg.keys import EPOCH

# the weights and optimizer states stored beside the TrainState fields (checkpoint keys)
NETWORK, OPTIMIZER, SCHEDULER, SCALER = "network", "optimizer", "scheduler", "scaler"
LAST_CHECKPOINT, BEST_CHECKPOINT = "last.pt", "best.pt"  # in the run folder's checkpoints/


@dataclass
class TrainState:
    """Where a run stands, enough to continue it exactly.

    Attributes:
        mlflow_run_id: the run's MLflow run (a resume logs into it).
        seed: the run's seed (the patch stream depends on it and the stream index only).
        next_epoch: the epoch to run next (0-based).
        next_iteration: the iteration of ``next_epoch`` to run next (nonzero after a mid-epoch stop).
        epoch_losses: the losses of ``next_epoch``'s iterations already done.
        best_val_dice_mean: the best mean validation Dice so far (-1 before the first validation).
        best_epoch: its epoch (-1 before the first validation).
        history: one row of metrics per finished epoch.
    """

    mlflow_run_id: str
    seed: int
    next_epoch: int = 0
    next_iteration: int = 0
    epoch_losses: list[float] = field(default_factory=list)
    best_val_dice_mean: float = -1.0
    best_epoch: int = -1
    history: list[dict] = field(default_factory=list)

    def end_epoch(self, row: dict) -> None:
        """Record a finished epoch's metrics row (with its ``epoch``) and move to the next epoch."""
        self.history.append(row)
        self.next_epoch, self.next_iteration, self.epoch_losses = row[EPOCH] + 1, 0, []

    def improve(self, dice: float, epoch: int) -> bool:
        """Take ``dice`` as the new best if it beats the best so far; True when it did."""
        if dice > self.best_val_dice_mean:
            self.best_val_dice_mean, self.best_epoch = dice, epoch
            return True
        return False


def save_training_state(path: str | Path, state: TrainState, network: torch.nn.Module, optimizer, scheduler,
                        scaler: torch.amp.GradScaler | None) -> None:
    """Write ``state`` with the network's weights and the optimizer, scheduler and scaler states
    atomically to ``path`` (a crash leaves the previous file)."""
    save_checkpoint({**asdict(state), NETWORK: network.state_dict(), OPTIMIZER: optimizer.state_dict(),
                     SCHEDULER: scheduler.state_dict(), SCALER: scaler.state_dict() if scaler else {}}, path)


def load_training_state(path: str | Path, map_location="cpu") -> tuple[TrainState, dict]:
    """Read a file written by :func:`save_training_state`.

    Returns:
        (the :class:`TrainState`, ``{"network", "optimizer", "scheduler", "scaler"}`` state dicts).

    Raises:
        OSError, RuntimeError, pickle.UnpicklingError: unreadable file or one with code objects in it.
        KeyError: a file without the state's fields.
    """
    raw = load_checkpoint(path, map_location=map_location)
    state = TrainState(**{f.name: raw[f.name] for f in fields(TrainState)})
    state.epoch_losses, state.history = list(state.epoch_losses), list(state.history)
    return state, {k: raw.get(k) for k in (NETWORK, OPTIMIZER, SCHEDULER, SCALER)}


def restore(weights: dict, network: torch.nn.Module, optimizer, scheduler, scaler) -> None:
    """Load the state dicts from :func:`load_training_state` into the run's objects, in place."""
    network.load_state_dict(weights[NETWORK])
    optimizer.load_state_dict(weights[OPTIMIZER])
    scheduler.load_state_dict(weights[SCHEDULER])
    if scaler is not None and weights.get(SCALER):
        scaler.load_state_dict(weights[SCALER])
