"""medseg's own error types.

Every error a user can cause (a bad file, a bad config, a bad option) is raised as a
:class:`MedsegError` subclass. The CLI prints its message without a traceback and exits
with a non-zero code; ``--debug`` shows the traceback.
"""
from __future__ import annotations

from pathlib import Path

# Exit codes of the ``medseg`` command (README, "Exit codes").
EXIT_OK = 0  # success
EXIT_FAILED_CASES = 1  # some cases (predict) or sweep children failed; the others were done
EXIT_USAGE = 2  # bad input or usage: nothing was written
EXIT_INTERNAL = 3  # a bug: rerun with --debug and report the traceback
EXIT_INTERRUPTED = 130  # Ctrl-C / SIGTERM


class MedsegError(Exception):
    """Base class for errors caused by user input.

    Args:
        message: what is wrong and, where possible, how to fix it.
        path: the file or folder the error is about; it is prefixed to the message.
    """

    def __init__(self, message: str, path: str | Path | None = None):
        self.path = path  # a file, folder, URI or option name, as given
        self.reason = message
        super().__init__(f"{path}: {message}" if path is not None else message)


class Interrupted(MedsegError):
    """SIGINT/SIGTERM stopped a command after it saved what it had (exit code 130)."""


class ConfigError(MedsegError):
    """A configuration file or override is invalid (unknown key, wrong type, bad value)."""


class DataError(MedsegError):
    """A dataset, image or label is missing, unreadable or inconsistent."""


class ModelError(MedsegError):
    """A network definition or a model directory is invalid."""


class InputWarning(UserWarning):
    """An input that medseg can process but whose result is probably meaningless (a blank or
    constant image). ``medseg predict`` lists these per case; the Python API raises them through
    :mod:`warnings`."""
