"""Small file helpers shared by every writer (light: no GDAL, no torch, so the CLI can use them)."""

from __future__ import annotations

import os
import re
import unicodedata
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


def safe_name(text: str, default: str) -> str:
    """A file-name part made from a name (a model's, a scene's): runs of anything but letters of any
    script, digits, ``.``, ``-`` and ``_`` become ``_`` (so "模型" and "模式" stay apart), NFC first."""
    return re.sub(r"[^\w.-]+", "_", unicodedata.normalize("NFC", text)).strip("._") or default
