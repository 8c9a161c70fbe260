"""Stopping cleanly on SIGTERM and SIGINT (Ctrl-C, SLURM's pre-emption, ``kill``): the handler only
records the request; the loop that owns the work checks it at a safe point, saves what it needs
(a checkpoint) and stops. Shared by training (medseg/training/run.py) and the sweep
(medseg/study/sweep.py)."""
from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopRequest:
    """Set by :func:`stop_on_signals`: ``signal`` is the name of the first signal received
    (``"SIGTERM"`` or ``"SIGINT"``), ``None`` while none has arrived; true once one has."""

    def __init__(self) -> None:
        self.signal: str | None = None

    def __bool__(self) -> bool:
        return self.signal is not None


@contextmanager
def stop_on_signals(on_stop: Callable[[str], None] | None = None) -> Iterator[StopRequest]:
    """Within the block, SIGTERM and SIGINT set the yielded :class:`StopRequest` instead of ending the
    process; ``on_stop(signal name)`` is also called on each (e.g. to forward it to child processes).
    The previous handlers are restored on leaving. Outside the main thread (where Python cannot
    install handlers) nothing is installed and the request stays unset."""
    request = StopRequest()

    def handler(signum, _frame):
        name = signal.Signals(signum).name
        request.signal = request.signal or name
        if on_stop is not None:
            on_stop(name)

    previous = {}
    if threading.current_thread() is threading.main_thread():
        previous = {s: signal.signal(s, handler) for s in STOP_SIGNALS}
    try:
        yield request
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
