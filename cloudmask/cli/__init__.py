"""The ``cloudmask`` command line: a thin Typer layer over the library."""

from cloudmask.cli.app import app, main

__all__ = ["app", "main"]
