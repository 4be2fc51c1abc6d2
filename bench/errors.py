"""The exception hierarchy for errors a user can cause; the CLI turns them into one line, exit 2."""

from __future__ import annotations

from collections.abc import Iterable

from specs import closest


class BenchError(Exception):
    """Base class of every error caused by user input (config, data, records, CLI arguments)."""


class ConfigError(BenchError):
    """Raised when a suite file or a ``--set`` override is invalid.

    The message names the file, the key path, the value given, what is allowed and, for names,
    the closest valid one.
    """

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        key: str | None = None,
        given: object = None,
        allowed: str | None = None,
        choices: Iterable[str] | None = None,
    ):
        parts = []
        if file:
            parts.append(str(file))
        if key:
            parts.append(key)
        where = ": ".join(parts)
        text = f"{where}: {message}" if where else message
        if given is not None:
            text += f" (given: {given!r})"
        if allowed:
            text += f"; allowed: {allowed}"
        if choices is not None and isinstance(given, str):
            hint = closest(given, choices)
            if hint:
                text += f" (did you mean {hint!r}?)"
        super().__init__(text)
        self.file, self.key, self.given, self.allowed = file, key, given, allowed


class DataError(BenchError):
    """Raised when a data source is missing, empty or malformed (names the path)."""


class PrivacyError(BenchError):
    """Raised when a privacy target cannot be met (e.g. no noise multiplier reaches epsilon)."""


class ExecutorError(BenchError):
    """Raised when the chosen executor cannot run here (e.g. SLURM without a cluster)."""


class RecordsError(BenchError):
    """Raised when a records file cannot be read at all (a bad line is reported, not raised)."""


class SavedModelError(BenchError):
    """Raised when ``bench eval`` cannot evaluate a run's saved weights: no record with that run
    key, no saved model for it (it ran without ``--save-models``), or a file that is missing,
    unreadable, not that run's, or does not fit the run's model."""


class DeviceError(BenchError):
    """Raised when a ``--device`` names no device, or one this machine does not have (CUDA
    without a GPU, a GPU index past the last one)."""


class BackboneError(BenchError):
    """Raised when a backbone name or spec string is unknown or malformed."""


def user_errors() -> tuple[type[Exception], ...]:
    """Everything the CLI reports as one line with exit code 2.

    A function, not a constant, so that importing this module (as the torch-free report code
    does) does not import `norms` and with it torch.
    """
    from bkclip.errors import ClipError  # imports torch, which the report code must not
    from norms.errors import NormError

    return (BenchError, NormError, ClipError)


class UsageError(BenchError):
    """Raised when a command-line flag's value is unusable (names the flag, the value given and
    what is allowed)."""


class ComparisonError(BenchError):
    """Raised when the run folders given to ``bench across`` hold nothing to compare: no
    backbone and budget ran on two datasets with norms in common (the message says what
    differs), or two folders hold the same dataset at the same setting."""
