"""``cloudmask fetch``: placeholder until its issue lands."""

from __future__ import annotations

from cloudmask.cli.app import app
from cloudmask.errors import UsageError


@app.command("fetch", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def fetch_cmd() -> None:
    """Not available yet in this build."""
    raise UsageError("`cloudmask fetch` is not implemented yet in this version")
