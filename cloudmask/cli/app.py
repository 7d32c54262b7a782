"""The Typer application and the one place where errors become exit codes."""

from __future__ import annotations

import gc
import sys
import warnings
from typing import Annotated, Any

import typer
from rich.markup import escape
from typer.core import TyperGroup

from cloudmask import __version__
from cloudmask.cli.common import (
    USAGE_ERRORS, Terminated, err_console, error_message, fail, is_help_request, terminate_like_ctrl_c, usage_failure,
)
from cloudmask.errors import CloudmaskError

_state = {"debug": False}



def _warning_line(message: Any, category: type[Warning], filename: str, lineno: int, file: Any = None,
                  line: str | None = None, _default: Any = warnings.showwarning) -> None:
    """A warning as one yellow line on stderr (Python's own format, with its source line, under --debug)."""
    if _state["debug"]:
        _default(message, category, filename, lineno, file, line)
        return
    if category.__name__ == "NotGeoreferencedWarning":
        # rasterio's, for every file opened or written; cloudmask says it once per scene ("… is not
        # georeferenced; the mask will not be either"). By name: importing rasterio here would
        # slow down every command that does not need it
        return
    err_console.print(f"[yellow]warning:[/] {escape(str(message))}", highlight=False, soft_wrap=True)


class _ErrorMappingGroup(TyperGroup):
    """Turns library errors into one red line on stderr and the error's exit code (2 usage, 1 run),
    and warnings into one yellow line each."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except USAGE_ERRORS as exc:  # e.g. an option before the command that does not exist
            if is_help_request(exc):  # `cloudmask` alone: its help, as click prints it
                raise
            raise usage_failure(exc) from None

    def resolve_command(self, ctx: Any, args: list[str]) -> Any:
        try:
            return super().resolve_command(ctx, args)
        except USAGE_ERRORS as exc:  # "No such command 'maks'."
            raise usage_failure(exc) from None

    def invoke(self, ctx: Any) -> Any:
        try:
            with warnings.catch_warnings(), terminate_like_ctrl_c():
                warnings.showwarning = _warning_line
                return super().invoke(ctx)
        except CloudmaskError as exc:
            if _state["debug"]:
                raise
            raise fail(str(exc), exc.exit_code) from None
        except Terminated:
            raise fail("terminated", 143) from None
        except KeyboardInterrupt:
            raise fail("interrupted", 130) from None
        except BrokenPipeError:  # `cloudmask … | head`: click stops quietly (exit 1), as for its own output
            raise
        except OSError as exc:  # disk full, permissions, broken pipes outside the library's own checks
            if _state["debug"]:
                raise
            raise fail(error_message(exc), 1) from None


app = typer.Typer(
    name="cloudmask",
    cls=_ErrorMappingGroup,
    help="Sensor-independent cloud and cloud-shadow masks for multispectral satellite scenes.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode=None,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"cloudmask {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks on errors.")] = False,
) -> None:
    """cloudmask: one network for clouds and shadows on any multispectral sensor."""
    _state["debug"] = debug


def _register() -> None:
    # Each command lives in its own module; importing it adds it to ``app``.
    from cloudmask.cli import evaluate, fetch, mask, sample, sensors, simulate, train  # noqa: F401


_register()


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except Exception as exc:  # last resort: an unexpected bug still gets one line, not a traceback
        if _state["debug"] or "--debug" in sys.argv[1:]:  # (a crash before the options were read, too)
            raise
        err_console.print(
            f"[bold red]internal error:[/] {escape(type(exc).__name__)}: {escape(str(exc))} "
            "(run with --debug for the traceback)",
            highlight=False,
        )
        sys.exit(1)
    finally:
        # Interpreter shutdown runs full collections over every object torch and the rest created
        # (~0.45 s after a mask run on a 2-core machine); frozen, they are skipped. Nothing is left
        # to collect that matters: outputs are closed and renamed before a command returns.
        gc.freeze()
