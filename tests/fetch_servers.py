"""Real servers on 127.0.0.1 for the fetch tests: a Range-capable file server with fault injection,
``rustac serve`` STAC APIs (memory backend, and pgstac on a throw-away PostgreSQL cluster).

Loaded as a pytest plugin from ``tests/conftest.py``. Nothing here mocks HTTP or pystac-client.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from RangeHTTPServer import RangeRequestHandler

from cloudmask.registry import load_registry
from cloudmask.testing import random_reflectance, stac_item, test_transform, write_raster

# --------------------------------------------------------------------------- file server
#
# The server runs in a child process: GDAL (rasterio.open on an http URL) keeps the GIL while it waits
# for curl, so a server thread in the test process would deadlock against it. Faults and the request
# log cross the process boundary as small files in a control folder.


class _Faults(dict):
    """``faults[path] = ["500", "drop", "404"]``: written through to the server's control file."""

    def __init__(self, control: Path):
        super().__init__()
        self._file = control / "faults.json"

    def __setitem__(self, key: str, value: list[str]) -> None:
        super().__setitem__(key, list(value))
        tmp = self._file.with_suffix(".tmp")
        tmp.write_text(json.dumps(dict(self)))
        os.replace(tmp, self._file)


@dataclass
class FileServer:
    """A Range-capable HTTP server over ``root``; ``faults[path]`` lists actions to replay.

    Actions, consumed one per GET of that path: an HTTP status such as ``"500"``, ``"503"`` or
    ``"404"`` (answered with that error), ``"drop"`` (send half the body with the full
    Content-Length, then close the connection), ``"range-drop"`` (the same for the range asked for,
    answered 206). ``faults["HEAD " + path]`` does the same for HEADs
    (GDAL asks for a file's size with one before its first range request).
    """

    root: Path
    control: Path
    url: str = ""
    faults: _Faults = field(init=False)

    def __post_init__(self) -> None:
        self.faults = _Faults(self.control)

    @property
    def requests(self) -> list[tuple[str, str, str | None]]:
        """(method, path, Range header or None) of every request so far."""
        log = self.control / "requests.log"
        if not log.exists():
            return []
        rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
        return [(m, p, r) for m, p, r in rows]

    def faults_left(self, path: str) -> list[str]:
        """The actions not yet replayed for ``path``."""
        f = self.control / "faults.json"
        return list(json.loads(f.read_text()).get(path, [])) if f.exists() else []

    def gets(self, path: str) -> list[str | None]:
        """The Range headers of every GET of ``path`` (None = whole file)."""
        return [r for m, p, r in self.requests if m == "GET" and p == path]


class _Handler(RangeRequestHandler):
    control: Path
    lock = threading.Lock()

    def log_message(self, format: str, *args: Any) -> None:  # keep output clean
        pass

    def _record(self, method: str) -> None:
        with self.lock, (self.control / "requests.log").open("a") as fh:
            fh.write(json.dumps([method, self.path.split("?")[0], self.headers.get("Range")]) + "\n")

    def _take_fault(self, path: str) -> str | None:
        f = self.control / "faults.json"
        with self.lock:
            if not f.exists():
                return None
            faults = json.loads(f.read_text())
            queue = faults.get(path)
            if not queue:
                return None
            action = queue.pop(0)
            f.write_text(json.dumps(faults))
            return str(action)

    def do_HEAD(self) -> None:
        self._record("HEAD")
        fault = self._take_fault("HEAD " + self.path.split("?")[0])
        if fault is not None and fault.isdigit():
            self.send_error(int(fault))
            return
        super().do_HEAD()

    def _cut_short(self, path: str, ranged: bool) -> None:
        """Announce the whole body (of the range asked for, answered 206, when ``ranged``), send half
        of it and close the connection: what a dropped connection looks like to the client."""
        data = Path(self.translate_path(path)).read_bytes()
        start, end = 0, len(data) - 1
        if ranged and (m := re.match(r"bytes=(\d+)-(\d*)", self.headers.get("Range") or "")):
            start, end = int(m[1]), min(int(m[2] or end), end)
        body = data[start : end + 1]
        self.send_response(206 if ranged else 200)
        self.send_header("Content-Type", "image/tiff")
        if ranged:
            self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[: len(body) // 2])
        self.wfile.flush()
        self.close_connection = True
        self.connection.shutdown(socket.SHUT_RDWR)

    def do_GET(self) -> None:
        self._record("GET")
        path = self.path.split("?")[0]
        fault = self._take_fault(path)
        if fault == "500":
            self.send_error(500, "injected failure")
            return
        if fault is not None and fault.isdigit():
            self.send_error(int(fault))
            return
        if fault in ("drop", "range-drop"):
            self._cut_short(path, ranged=fault == "range-drop")
            return
        if fault == "slow":
            self._trickle(path)
            return
        super().do_GET()

    def _trickle(self, path: str) -> None:
        """The whole file (200), 256 bytes every 20 ms: a download that takes a while."""
        file = Path(self.translate_path(path))
        data = file.read_bytes()
        self.send_response(200)
        self.send_header("Content-Type", "image/tiff")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Last-Modified", self.date_time_string(int(file.stat().st_mtime)))
        self.end_headers()
        try:
            for i in range(0, len(data), 256):
                self.wfile.write(data[i : i + 256])
                self.wfile.flush()
                time.sleep(0.02)
        except OSError:
            pass  # the client went away


def serve_files(root: str, control: str) -> None:
    """Child-process entry point: serve ``root`` on a free port and print the port."""
    handler = type("Handler", (_Handler,), {"control": Path(control)})
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=root))
    server.daemon_threads = True
    print(server.server_address[1], flush=True)
    server.serve_forever(poll_interval=0.05)


@contextlib.contextmanager
def running_file_server(root: Path, control: Path) -> Iterator[FileServer]:
    """Serve ``root`` on 127.0.0.1 (port 0) from a child process.

    A child process, not a thread: GDAL holds the GIL while it waits on HTTP, so an in-process
    server could never answer rasterio's range requests.
    """
    root.mkdir(exist_ok=True)
    control.mkdir(exist_ok=True)
    code = f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import fetch_servers as f; f.serve_files(sys.argv[1], sys.argv[2])"
    proc = subprocess.Popen([sys.executable, "-c", code, str(root), str(control)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline().strip())
        yield FileServer(root=root, control=control, url=f"http://127.0.0.1:{port}")
    finally:
        proc.terminate()
        proc.wait(5)
        if proc.stdout is not None:
            proc.stdout.close()


@pytest.fixture
def file_server(tmp_path: Path) -> Iterator[FileServer]:
    """A Range-capable file server for ``tmp_path/www``."""
    with running_file_server(tmp_path / "www", tmp_path / "www-control") as server:
        yield server


# --------------------------------------------------------------------------- scenes


S2_SIZE = 32  # pixels per side at 20 m; 10 m and 60 m bands scale accordingly


def s2_raster_bands(offset: float = -0.1) -> list[dict[str, Any]]:
    return [{"nodata": 0, "data_type": "uint16", "scale": 0.0001, "offset": offset}]


def write_s2_item(
    server: FileServer,
    item_id: str,
    *,
    cloud_cover: float = 10.0,
    datetime: str = "2024-06-15T10:30:00Z",
    bbox: tuple[float, float, float, float] | None = None,
    baseline: str = "05.10",
    raster_offset: float | None = -0.1,
    bands: list[str] | None = None,
    collection: str = "sentinel-2-l2a",
    folder: str | None = None,
    seed: int = 0,
    size: int = S2_SIZE,
) -> dict[str, Any]:
    """Write small per-band Sentinel-2 GeoTIFFs under the server root and return a STAC item for them.

    The footprint is the rasters' (near 9.0 E, 46.95 N). Asset keys are the registry's earth-search keys; DN = reflectance*10000 + 1000 (baseline >= 04.00),
    or without the +1000 for older baselines, so reading back checks the scaling the registry chose.
    """
    s2 = load_registry()["sentinel2"]
    sub = folder or item_id
    (server.root / sub).mkdir(parents=True, exist_ok=True)
    wanted = [s2.band(b) for b in bands] if bands else list(s2.bands)
    refl = random_reflectance(len(wanted), size, size, seed=seed)
    add = 1000 if float(baseline) >= 4.0 else 0
    assets: dict[str, str] = {}
    for i, band in enumerate(wanted):
        key = band.assets["earth-search"]
        dn = np.round(refl[i] * 10000 + add).astype("uint16")
        dn[0, :] = 0  # one nodata row
        write_raster(server.root / sub / f"{key}.tif", dn, nodata=0, transform=test_transform(20.0))
        assets[key] = f"{server.url}/{sub}/{key}.tif"
    if bbox is None:  # the rasters' real footprint, so --clip and footprint searches agree
        from rasterio.warp import transform_bounds

        t = test_transform(20.0)
        bbox = transform_bounds("EPSG:32632", "EPSG:4326", t.c, t.f - 20.0 * size, t.c + 20.0 * size, t.f)
    item = stac_item(
        item_id, assets, bbox=tuple(round(v, 6) for v in bbox), datetime=datetime, cloud_cover=cloud_cover, collection=collection,
        extra_properties={"s2:processing_baseline": baseline, "proj:epsg": 32632},
    )
    for key in assets:
        item["assets"][key]["file:size"] = (server.root / sub / f"{key}.tif").stat().st_size
        if raster_offset is not None:
            item["assets"][key]["raster:bands"] = s2_raster_bands(raster_offset)
    item["assets"]["thumbnail"] = {"href": f"{server.url}/{sub}/thumb.jpg", "roles": ["thumbnail"], "type": "image/jpeg"}
    return item


def collection_json(cid: str) -> dict[str, Any]:
    return {
        "type": "Collection", "stac_version": "1.0.0", "id": cid, "description": f"test collection {cid}",
        "license": "proprietary", "links": [],
        "extent": {"spatial": {"bbox": [[-180, -90, 180, 90]]}, "temporal": {"interval": [[None, None]]}},
    }


# --------------------------------------------------------------------------- rustac serve


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _rustac() -> str:
    exe = shutil.which("rustac") or str(Path(sys.executable).with_name("rustac"))
    if not Path(exe).exists():
        pytest.fail("the `rustac` console script is missing: pip install -e '.[test]'")
    return exe


def _wait_http(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"rustac serve exited: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"rustac serve did not answer {url}: {log.read_text()[-2000:]}")


class StacServers:
    """Starts ``rustac serve`` processes loaded with given items; stops them at teardown."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.procs: list[subprocess.Popen[bytes]] = []

    def serve(self, items: list[dict[str, Any]], pgstac: str | None = None) -> str:
        """Write collections + items to files, serve them, return the API root URL."""
        n = len(self.procs)
        files = []
        for cid in sorted({str(it.get("collection")) for it in items}):
            p = self.tmp / f"collection-{n}-{cid}.json"
            p.write_text(json.dumps(collection_json(cid)))
            files.append(str(p))
        if items:
            p = self.tmp / f"items-{n}.json"
            p.write_text(json.dumps({"type": "FeatureCollection", "features": items}))
            files.append(str(p))
        port = _free_port()
        log = self.tmp / f"rustac-{n}.log"
        cmd = [_rustac(), "serve", "--addr", f"127.0.0.1:{port}", *(["--pgstac", pgstac] if pgstac else []), *files]
        with log.open("wb") as fh:
            proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT)
        self.procs.append(proc)
        url = f"http://127.0.0.1:{port}"
        _wait_http(url + "/", proc, log)
        return url

    def close(self) -> None:
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()


@pytest.fixture
def stac_servers(tmp_path: Path) -> Iterator[StacServers]:
    servers = StacServers(tmp_path)
    try:
        yield servers
    finally:
        servers.close()


# --------------------------------------------------------------------------- pgstac


def _pg_bin() -> Path | None:
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).resolve().parent
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    return found[-1].parent if found else None


def _postgis_available(bindir: Path) -> bool:
    try:
        share = subprocess.run([str(bindir / "pg_config"), "--sharedir"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        share = str(Path("/usr/share/postgresql") / bindir.parent.name)
    return (Path(share) / "extension" / "postgis.control").exists()


def _skip_or_fail(reason: str) -> None:
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"pgstac tier cannot run in CI: {reason}")
    pytest.skip(f"pgstac tier skipped: {reason}")


@pytest.fixture(scope="session")
def pgstac_dsn() -> Iterator[str]:
    """A migrated pgstac database: ``$CLOUDMASK_PGSTAC_DSN``, else a throw-away cluster started here."""
    dsn = os.environ.get("CLOUDMASK_PGSTAC_DSN")
    if dsn:
        yield dsn
        return
    bindir = _pg_bin()
    if bindir is None:
        _skip_or_fail("PostgreSQL (initdb) not found; install postgresql + postgis or set CLOUDMASK_PGSTAC_DSN")
    assert bindir is not None
    if not _postgis_available(bindir):
        _skip_or_fail(f"PostGIS is not installed for {bindir.parent.name}; apt-get install postgresql-*-postgis-3")
    pypgstac = shutil.which("pypgstac") or str(Path(sys.executable).with_name("pypgstac"))
    if not Path(pypgstac).exists():
        _skip_or_fail("pypgstac not installed: pip install 'pypgstac[psycopg]'")
    root = Path(tempfile.mkdtemp(prefix="cloudmask-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root
        shutil.chown(root, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    port = _free_port()
    data = root / "data"
    # cwd: the postgres user may not be allowed into the checkout (initdb fails on getcwd there)
    run = functools.partial(subprocess.run, check=True, capture_output=True, text=True, cwd=root)
    try:
        run([*as_user, str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync"])
        run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-l", str(root / "log"), "-w", "start", "-o",
             f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off"])
    except subprocess.CalledProcessError as exc:
        shutil.rmtree(root, ignore_errors=True)
        _skip_or_fail(f"cannot start a PostgreSQL cluster ({(exc.stderr or exc.stdout or '').strip()[-300:]})")
    dsn = f"postgresql://postgres@127.0.0.1:{port}/postgres"
    try:
        run([pypgstac, "migrate", "--dsn", dsn])
        # rustac's pgstac backend calls the pgstac functions unqualified
        run([str(bindir / "psql"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "-c",
             "ALTER DATABASE postgres SET search_path TO pgstac, public"])
        yield dsn
    finally:
        subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"], capture_output=True, cwd=root)
        shutil.rmtree(root, ignore_errors=True)


def unique_collection(prefix: str = "s2") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"
