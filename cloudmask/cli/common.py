"""Pieces every command shares: consoles, common options, JSON output."""

from __future__ import annotations

import gc
import json
import os
import signal
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import click
import typer
from rich.console import Console
from typer.core import TyperCommand

from cloudmask.errors import CloudmaskError

class Terminated(KeyboardInterrupt):
    """SIGTERM (``timeout``, a batch scheduler's limit, ``kill``) while a command runs, raised in the
    main thread like Ctrl-C, so the scene in progress removes its temporaries and lock the same way."""


_SIGTERM = {"seen": False}


def _on_sigterm(signum: int, frame: Any) -> None:
    _SIGTERM["seen"] = True
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM ends the process at once
    raise Terminated


@contextmanager
def terminate_like_ctrl_c() -> Iterator[None]:
    """SIGTERM raises :class:`Terminated` while the block runs (in the main thread, and only where
    nobody installed a handler of their own). A Python signal handler's exception can be swallowed
    (raised inside a finalizer or a weakref callback: "Exception ignored in …"); the signal is also
    remembered, so the block still ends as terminated (see :func:`check_terminated`)."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return
    _SIGTERM["seen"] = False
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        yield
        check_terminated()
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def check_terminated() -> None:
    """Raise :class:`Terminated` if a SIGTERM arrived whose exception was swallowed on the way."""
    if _SIGTERM["seen"]:
        raise Terminated


@contextmanager
def startup_imports() -> Iterator[None]:
    """Import a command's numerical stack (torch, Dask, rasterio) with the cyclic collector off, then
    freeze what was imported.

    Why: importing torch creates ~250 000 objects and the collector traverses all of them again at
    every 25 % of growth (~0.3 s of full collections per run), and again in the collections during
    the run; frozen, they are skipped. Modules live as long as the process; the imports' own cyclic
    leftovers (~100 objects) stay too, which is cheaper than the full collection that would find them."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if enabled:
            gc.enable()


#: Human output goes to stdout; errors and progress bars to stderr so ``--json`` stays parseable.
console = Console()
err_console = Console(stderr=True)

SensorsDirOpt = Annotated[
    list[Path] | None,
    typer.Option(
        "--sensors-dir", metavar="DIR",
        help="Extra directory of sensor YAML files (repeatable; also $CLOUDMASK_SENSORS).",
        exists=True,
        file_okay=False,
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="Errors only: no progress bars, tables or warnings (for cron).")]


def use_sensors_dirs(dirs: list[Path] | None) -> None:
    """Make ``--sensors-dir`` visible to every registry lookup in this process."""
    if dirs:
        current = [p for p in os.environ.get("CLOUDMASK_SENSORS", "").split(os.pathsep) if p]
        os.environ["CLOUDMASK_SENSORS"] = os.pathsep.join(current + [str(d) for d in dirs])


def print_json(obj: Any) -> None:
    """Write JSON to stdout without rich markup or wrapping."""
    typer.echo(json.dumps(obj, indent=2, default=str))


def error_message(exc: BaseException) -> str:
    """The one line an error is reported with (also the ``error`` of ``--json`` documents)."""
    if isinstance(exc, CloudmaskError):
        return str(exc)
    if isinstance(exc, OSError):
        where = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
        return f"{where}{exc.strerror or exc}"
    return f"internal error: {type(exc).__name__}: {exc}"


def _click_classes(name: str) -> tuple[type[Exception], ...]:
    """click's exception class ``name``, and Typer's own copy of it where Typer vendors click
    (0.2x+): which one a parse error is depends on the Typer version."""
    classes = [getattr(click.exceptions, name)]
    try:
        from typer._click import exceptions as vendored  # type: ignore[import-not-found]

        classes.append(getattr(vendored, name))
    except (ImportError, AttributeError):
        pass
    return tuple(classes)


#: click's usage errors (unknown option, bad value, missing argument), in either copy of click.
USAGE_ERRORS = _click_classes("UsageError")
CLICK_ERRORS = _click_classes("ClickException")


def fail(message: str, code: int) -> typer.Exit:
    """Print ``message`` as one red line on stderr; the Exit to raise with ``code``."""
    from rich.markup import escape

    # one line, whatever the message carries (e.g. a STAC item id with a newline in it)
    message = message.replace("\r", "\\r").replace("\n", "\\n")
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


def is_help_request(exc: BaseException) -> bool:
    """click's "no arguments: show the help" (``cloudmask`` alone), which it raises as a usage error."""
    return type(exc).__name__ == "NoArgsIsHelpError"


def usage_failure(exc: Any) -> typer.Exit:
    """click's usage error (unknown option, value out of range) as one line, not its usage block:
    the same form as every other error, and one line in a cron job's mail."""
    ctx = exc.ctx
    hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
    return fail(exc.format_message() + hint, exc.exit_code)


def _asks_json(args: list[str]) -> bool:
    """``--json`` among the options (not after ``--``, where it would be an input's name)."""
    return "--json" in args[: args.index("--") if "--" in args else None]


class Command(TyperCommand):
    """A command whose help names its arguments as click does, ``INPUT...`` and ``[SENSOR]``. Why:
    Typer adds their Python types (``INPUT <list[str]>``) and braces required ones (``{PRED}...``),
    which tell a user nothing. (Parameters are told apart by ``param_type_name``: Typer may bring
    its own copy of click.)"""

    def parse_args(self, ctx: typer.Context, args: list[str]) -> list[str]:
        """With ``--json``, a command line that does not parse still prints a document on stdout."""
        given = list(args)  # click's parser consumes the list
        try:
            return super().parse_args(ctx, args)
        except Exception as exc:
            if _asks_json(given) and hasattr(exc, "format_message"):  # click's usage errors, not --help's Exit
                self.json_error(exc.format_message())
            if isinstance(exc, USAGE_ERRORS) and not is_help_request(exc):
                raise usage_failure(exc) from None
            raise

    def invoke(self, ctx: typer.Context) -> Any:
        """With ``--quiet``, errors only: warnings are dropped for this command (a warning per scene
        or per item would mail a cron job every night). With ``--json``, an error still leaves a
        document on stdout (``{"error": ...}``), for a cron job that reads only stdout; the error
        line and the exit code are the usual ones (:mod:`cloudmask.cli.app`)."""
        try:
            if not ctx.params.get("quiet"):
                return super().invoke(ctx)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return super().invoke(ctx)
        except (BrokenPipeError, typer.Exit, typer.Abort, click.exceptions.Exit, click.exceptions.Abort,
                *CLICK_ERRORS):
            raise  # a command's own exit code, or click's usage errors (handled in parse_args)
        except Exception as exc:  # noqa: BLE001 - a bug too: a cron job reading stdout gets a document
            if self.json_errors and _json_on(ctx):
                self.json_error(error_message(exc))
            raise

    #: whether :meth:`invoke` prints the error document (``mask`` prints its own, with the scenes done)
    json_errors = True

    def json_error(self, message: str) -> None:
        """The ``--json`` document of a command that failed as a whole."""
        print_json({"error": message})

    def collect_usage_pieces(self, ctx: typer.Context) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if param.param_type_name == "argument":
                name = _argument_name(param)
                pieces.append((name if param.required else f"[{name}]") + ("..." if param.nargs != 1 else ""))
            else:
                pieces.extend(param.get_usage_pieces(ctx))
        return pieces

    def format_options(self, ctx: typer.Context, formatter: Any) -> None:
        arguments, options = [], []
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is None:
                continue
            if param.param_type_name == "argument":
                arguments.append((_argument_name(param) + ("..." if param.nargs != 1 else ""), record[1]))
            else:
                options.append(record)
        for title, rows in (("Arguments", arguments), ("Options", options)):
            if rows:
                with formatter.section(title):
                    formatter.write_dl(rows)


def _json_on(ctx: typer.Context) -> bool:
    """Whether the command was given ``--json`` (its parameter's name varies: ``as_json``, ``json_out``)."""
    return any("--json" in getattr(p, "opts", ()) and ctx.params.get(p.name) for p in ctx.command.params)


def _argument_name(param: Any) -> str:
    return param.metavar or (param.name or "").upper()
