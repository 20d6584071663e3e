"""The bundle's exceptions. Library code raises them and never prints or exits; the command-line entry points
(``bundle.cli``, the scripts) turn them into one ``ERROR`` line and an exit status.

Each is also a ``ValueError``, so callers that caught that before still do.
"""

from __future__ import annotations

import os

__all__ = [
    "BundleError",
    "ConfigError",
    "DataError",
    "BadInputError",
    "CheckpointError",
    "MissingCheckpointError",
    "CheckpointMismatchError",
    "TrainingError",
    "SyntheticSampleWarning",
    "innermost",
    "one_line",
]


class BundleError(Exception):
    """Base class: a problem the user can fix, described in one line.

    ``exit_code`` is the status a command-line entry point exits with: 2 when the run cannot start (configuration,
    data set, weights), 1 when it ran but inputs failed.
    """

    exit_code = 1


class ConfigError(BundleError, ValueError):
    """A configuration value that cannot work: an unknown option, an impossible number, an unknown key."""

    exit_code = 2


class DataError(BundleError, ValueError):
    """A data set that cannot be used: missing or empty folder, bad datalist, missing files."""

    exit_code = 2


class BadInputError(BundleError, ValueError):
    """One input file (photograph or mask) that cannot be read; ``path`` names it, ``reason`` says why."""

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class CheckpointError(BundleError, ValueError):
    """A checkpoint file that cannot be used; ``path`` names it."""

    exit_code = 2

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class MissingCheckpointError(CheckpointError):
    """No checkpoint where one is required (evaluation never runs on random weights)."""


class CheckpointMismatchError(CheckpointError):
    """The checkpoint's network differs from the one the configuration asks for; the message names both."""


class TrainingError(BundleError):
    """Training that started but cannot go on (e.g. the loss became NaN); its checkpoints from before are kept."""


class SyntheticSampleWarning(UserWarning):
    """Weights trained on the embedded synthetic sample only: their masks of real photographs are junk."""


def innermost(error: BaseException) -> BaseException:
    """The exception at the bottom of ``error``'s chain of causes.

    MONAI wraps a failing transform or config item in ``RuntimeError("applying transform ...")`` / ``"Failed to
    instantiate ..."``; the innermost cause is the one that says what is wrong.
    """
    while error.__cause__ is not None:
        error = error.__cause__
    return error


def one_line(error: BaseException) -> str:
    """``error``'s message on one line (white space folded), or its type's name when it has none."""
    return " ".join(str(error).split()) or type(error).__name__
