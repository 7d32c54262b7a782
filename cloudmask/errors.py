"""One error hierarchy for the whole library.

Library code raises these; the CLI maps them to one red line and an exit code in a single place
(:func:`cloudmask.cli.app.main`). ``exit_code`` 2 means the user asked for something invalid,
1 means a valid request failed while running.
"""

from __future__ import annotations


class CloudmaskError(Exception):
    """Base class: a failure with a message meant for the user."""

    exit_code: int = 1


class UsageError(CloudmaskError):
    """The request itself is invalid (bad option value, unknown name)."""

    exit_code = 2


class RegistryError(CloudmaskError):
    """A sensor YAML file is missing, malformed or physically implausible."""

    exit_code = 2


class UnknownSensorError(UsageError):
    """The sensor id is not in the registry."""


class BandError(UsageError):
    """Band names or counts do not match the sensor or the file."""


class SceneError(CloudmaskError):
    """A scene cannot be read: missing, corrupt, truncated or empty input."""


class ModelError(CloudmaskError):
    """Weights are missing, corrupt, or do not fit the architecture."""


class OutputError(CloudmaskError):
    """An output cannot be written (permissions, disk full, locked by another run)."""


class OutputBusyError(OutputError):
    """Another live run holds the output's lock: it is being written, so this run leaves it to that one."""

    def __init__(self, message: str, owner: str = "unknown owner") -> None:
        super().__init__(message)
        self.owner = owner  # "pid N on HOST", as the lock file says


class ClusterError(CloudmaskError):
    """The Dask cluster of ``--scheduler`` failed a scene (its workers died running a block)."""


class SchedulerLostError(ClusterError):
    """The Dask scheduler went away mid-run: no later scene can run either, so the run stops."""


class FetchError(CloudmaskError):
    """A STAC search or download failed."""


class NoResultsError(FetchError):
    """A STAC search matched nothing."""


class EvaluateError(CloudmaskError):
    """Prediction and truth cannot be compared (grid mismatch, unknown encoding)."""


class AmbiguousSceneError(EvaluateError, UsageError):
    """Two files in one folder pair as the same scene: the input is invalid (exit 2), not a guess."""

    exit_code = 2


def first_line(exc: BaseException) -> str:
    """An exception as one line for a message. rasterio's "See previous exception" wrapper gives way
    to its cause, GDAL's own message, which says what failed."""
    text = str(exc).strip()
    cause = exc.__cause__ or exc.__context__
    if "previous exception" in text and cause is not None and str(cause).strip():
        text = str(cause).strip()
    return text.splitlines()[0] if text else type(exc).__name__
