"""Small file helpers shared by every writer (light: no GDAL, no torch, so the CLI can use them)."""

from __future__ import annotations

import os
from pathlib import Path


def usual_permissions(path: str | Path) -> None:
    """Give a temporary file the permissions a plain new file gets (0666 less the umask) before it
    is renamed into place: ``tempfile.mkstemp`` makes 0600 files, which colleagues sharing an
    output folder could not read."""
    current = os.umask(0)
    os.umask(current)
    os.chmod(path, 0o666 & ~current)
