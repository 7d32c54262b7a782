"""The ``cloudmask`` command group itself: what building it costs."""

from __future__ import annotations

import os
import subprocess
import sys

from cloudmask.cli.common import QuietOpt  # resolved by typer from this module (annotations are strings)


def test_building_the_cli_leaves_the_mask_stack_unimported() -> None:
    """`cloudmask --help`, `sensors` and `fetch` start in a fraction of a second: building the
    command line must not import Dask, xarray, rasterio or torch (they load when `mask` runs)."""
    code = (
        "import sys; from cloudmask.cli import app; import typer.main; typer.main.get_command(app); "
        "print(','.join(m for m in ('dask', 'xarray', 'rasterio', 'torch') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_a_closed_pipe_ends_the_command_quietly() -> None:
    """`cloudmask fetch --help | head`: the reader goes away; no error line, no traceback."""
    proc = subprocess.Popen([sys.executable, "-m", "cloudmask", "fetch", "--help"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env={**os.environ, "COLUMNS": "80"})
    proc.stdout.close()  # gone before the command (still importing) writes a byte: its first write fails
    err = proc.stderr.read().decode()
    proc.wait(timeout=60)
    assert err == ""  # exit status: whatever click and rich give a closed pipe


def test_help_names_every_option_in_full_on_an_80_column_terminal() -> None:
    """Plain help, not rich's table: at 80 columns the table cut option names short
    ("--sun-from-metad…") and squeezed their help into a column a few words wide."""
    out = subprocess.run([sys.executable, "-m", "cloudmask", "mask", "--help"], capture_output=True, text=True,
                         check=True, env={**os.environ, "COLUMNS": "80"}).stdout
    assert "…" not in out and max(len(line) for line in out.splitlines()) <= 80
    for option in ("--shadow-matching / --no-shadow-matching", "--sun-from-metadata", "--shadow-darkness"):
        assert option in out
    listing = subprocess.run([sys.executable, "-m", "cloudmask", "--help"], capture_output=True, text=True,
                             check=True, env={**os.environ, "COLUMNS": "80"}).stdout
    assert "..." not in listing.split("Commands:")[1]  # every command's one-line summary whole


def test_help_names_arguments_as_a_user_types_them_not_by_python_type() -> None:
    """Typer's own help said `INPUT <list[str]>`, `SENSOR <str>` and `{PRED}...`."""
    import re

    from typer.testing import CliRunner

    from cloudmask.cli.app import app

    runner = CliRunner()
    pages = {}
    for command in ("mask", "fetch", "evaluate", "sensors", "train", "simulate", "sample"):
        res = runner.invoke(app, [command, "--help"], env={"COLUMNS": "100"})
        assert res.exit_code == 0, res.output
        pages[command] = res.stdout
        assert "list[" not in res.stdout and "{" not in res.stdout
        assert not re.search(r"<\w[^<>]*>", res.stdout), res.stdout  # no "<type>"
    # in mask's, a "<" only in click's ranges of allowed values, e.g. [0.0<=x<=1.0]
    assert "<" not in re.sub(r"[\d.]+<=x(<=[\d.]+)?", "", pages["mask"]), pages["mask"]
    assert "mask [OPTIONS] [INPUT]..." in pages["mask"] and "\n  INPUT...  Scenes:" in pages["mask"]
    assert "evaluate [OPTIONS] PRED..." in pages["evaluate"] and "\n  PRED...  Predicted" in pages["evaluate"]
    assert "sensors [OPTIONS] [SENSOR]" in pages["sensors"] and "\n  SENSOR  Show" in pages["sensors"]
    assert "train [OPTIONS] [KEY=VALUE]..." in pages["train"]


def test_quiet_drops_warnings_for_the_command_alone() -> None:
    """`--quiet` is for cron, errors only: a command's warnings are dropped, and Python's warning
    filters are as before once it returns (a library caller's are not changed for good)."""
    import warnings

    import typer
    from typer.testing import CliRunner

    from cloudmask.cli.common import Command

    toy = typer.Typer()

    @toy.command(cls=Command)
    def run(quiet: QuietOpt = False) -> None:
        warnings.warn("no usable sun azimuth", UserWarning, stacklevel=1)
        typer.echo("done")

    @toy.command(cls=Command)
    def other() -> None:  # a second command, so typer keeps the command names
        pass

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        before = list(warnings.filters)
        loud = CliRunner().invoke(toy, ["run"])
        assert loud.exit_code == 0 and [str(w.message) for w in seen] == ["no usable sun azimuth"]
        quiet = CliRunner().invoke(toy, ["run", "--quiet"])
        assert quiet.exit_code == 0 and quiet.output == "done\n" and len(seen) == 1
        assert warnings.filters == before


def test_every_command_with_quiet_drops_warnings() -> None:
    """Every command offering ``--quiet`` is a :class:`~cloudmask.cli.common.Command`, whose
    ``invoke`` drops warnings under it."""
    import typer.main

    from cloudmask.cli import app
    from cloudmask.cli.common import Command

    group = typer.main.get_command(app)
    with_quiet = [name for name, cmd in group.commands.items() if any(p.name == "quiet" for p in cmd.params)]
    assert {"mask", "fetch", "evaluate", "simulate", "train", "sample"} <= set(with_quiet)
    assert all(isinstance(group.commands[name], Command) for name in with_quiet)


def test_json_errors_still_print_one_document(tmp_path) -> None:
    """A cron job reading only stdout gets a document on any failure of a command with ``--json``
    (an error of the request, of a file, of the command line); stderr and the exit code as usual."""
    import json

    from typer.testing import CliRunner

    from cloudmask.cli.app import app

    cases = [
        (["fetch", "--bbox", "1,2,3", "--date", "2024-06-01", "--json"], 2, "expected four numbers"),
        (["fetch", "--bbox", "1,2,3,4", "--workers", "many", "--json"], 2, "--workers"),
        (["evaluate", str(tmp_path / "gone.tif"), "--truth", str(tmp_path / "t.tif"), "--json"], None, "gone.tif"),
        (["sensors", "no-such-sensor", "--json"], 2, "no-such-sensor"),
        (["mask", str(tmp_path / "gone.tif"), "--json", "--tile-size", "2"], 2, "tile-size"),
    ]
    for args, code, word in cases:
        res = CliRunner().invoke(app, args)
        assert res.exit_code != 0 and (code is None or res.exit_code == code), (args, res.output)
        doc = json.loads(res.stdout)  # exactly one document
        assert word in doc["error"], (args, doc)
        assert "error" in res.stderr.lower() and "Traceback" not in res.output
    ok = CliRunner().invoke(app, ["sensors", "sentinel2", "--json"])
    assert ok.exit_code == 0 and "error" not in json.loads(ok.stdout)


def test_json_document_on_an_internal_error_too(tmp_path, monkeypatch) -> None:
    """A bug (not a library error) with ``--json``: stdout still holds one document naming it; the
    error then goes on to the console script's last-resort "internal error" line."""
    import json

    from typer.testing import CliRunner

    from cloudmask import evaluate as ev
    from cloudmask.cli.app import app

    def broken(*a, **k):
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(ev, "evaluate", broken)
    (tmp_path / "p.tif").write_bytes(b"x")
    res = CliRunner().invoke(app, ["evaluate", str(tmp_path / "p.tif"), "--truth", str(tmp_path / "p.tif"), "--json"])
    assert isinstance(res.exception, ZeroDivisionError)
    assert json.loads(res.stdout) == {"error": "internal error: ZeroDivisionError: division by zero"}


def test_an_error_message_with_a_newline_stays_one_line(monkeypatch) -> None:
    """A message can carry text from outside (a STAC item id "x\\ny"): the error is still one line."""
    from typer.testing import CliRunner

    from cloudmask import stac
    from cloudmask.cli.app import app
    from cloudmask.errors import FetchError

    def broken(*a, **k):
        raise FetchError("item x\ny: HTTP 404 Not Found")

    monkeypatch.setattr(stac, "search", broken)
    res = CliRunner().invoke(app, ["fetch", "--bbox", "1,2,3,4", "--catalog", "http://127.0.0.1:9", "--collection", "c"])
    assert res.exit_code == 1 and res.stderr.count("\n") == 1 and "item x\\ny: HTTP 404" in res.stderr, res.stderr


def test_usage_errors_are_one_line_with_exit_2() -> None:
    """click printed its usage block (four lines) for a bad option value, an unknown option or
    command and a missing argument, where every other error is one line (also with --quiet)."""
    cases = {
        ("mask", "x.tif", "--sun-azimuth", "400", "-q"): "Invalid value for '--sun-azimuth'",
        ("mask", "--dilate", "-1", "x.tif"): "Invalid value for '--dilate'",
        ("mask", "--bogus", "x.tif"): "No such option: --bogus",
        ("--bogus", "mask"): "No such option: --bogus",
        ("maks",): "No such command 'maks'",
        ("evaluate",): "Missing argument 'PRED'",
    }
    for args, words in cases.items():
        out = subprocess.run([sys.executable, "-m", "cloudmask", *args], capture_output=True, text=True,
                             env={**os.environ, "COLUMNS": "200"})
        assert out.returncode == 2, (args, out.stderr)
        assert out.stdout == "" and len(out.stderr.splitlines()) == 1, (args, out.stderr)
        assert out.stderr.startswith("error: ") and words in out.stderr and "--help" in out.stderr
    # `cloudmask` alone is click's "no arguments: show the help" (raised as a usage error): the help
    bare = subprocess.run([sys.executable, "-m", "cloudmask"], capture_output=True, text=True)
    assert not bare.stderr.startswith("error:") and "Commands:" in bare.stderr + bare.stdout
    assert len((bare.stderr + bare.stdout).splitlines()) > 5
