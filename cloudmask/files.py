"""Small file helpers shared by every writer (light: no GDAL, no torch, so the CLI can use them)."""

from __future__ import annotations

import os
from pathlib import Path


def _read_umask() -> int:
    current = os.umask(0)  # the only way to read it is to set it: done once, at import, not while
    os.umask(current)  # other threads may be creating files
    return current


_UMASK = _read_umask()


def usual_permissions(path: str | Path) -> None:
    """Give a temporary file the permissions a plain new file gets (0666 less the umask) before it
    is renamed into place: ``tempfile.mkstemp`` makes 0600 files, which colleagues sharing an
    output folder could not read."""
    os.chmod(path, 0o666 & ~_UMASK)
