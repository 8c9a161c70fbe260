"""Progress reporting that the core can call without knowing about the terminal.

Core functions take a ``progress`` callable ``(iterable, description, total) -> iterable``;
:func:`silent` is the default, :func:`rich_progress` draws a rich progress bar.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")
ProgressFn = Callable[[Iterable[T], str, int | None], Iterable[T]]


def silent(iterable: Iterable[T], description: str = "", total: int | None = None) -> Iterable[T]:
    """No progress display."""
    return iterable


def rich_progress(iterable: Iterable[T], description: str = "", total: int | None = None) -> Iterator[T]:
    """A rich progress bar: count, elapsed and remaining time, and seconds per item."""
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn,
                               TimeElapsedColumn, TimeRemainingColumn)
    from rich.text import Text

    class SecondsPerItem(ProgressColumn):
        def render(self, task):
            if not task.completed or task.elapsed is None:
                return Text("-- s/it")
            return Text(f"{task.elapsed / task.completed:.2f} s/it")

    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TimeRemainingColumn(), SecondsPerItem()]
    with Progress(*columns, transient=False) as bar:
        yield from bar.track(iterable, total=total, description=description)
