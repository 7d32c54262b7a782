"""Small file helpers shared by every writer (light: no GDAL, no torch, so the CLI can use them)."""

from __future__ import annotations

import contextlib
import glob
import os
import re
import secrets
import socket
import time
import unicodedata
from pathlib import Path

from cloudmask.errors import OutputBusyError, OutputError


#: In an item folder of ``cloudmask fetch``: the run fetching it (lock), and "not complete yet" (a
#: marker kept until its item.json is written, so readers refuse a half-fetched folder).
FETCH_LOCK = ".cloudmask-fetch.lock"
FETCH_MARKER = ".cloudmask-fetching"


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


# --------------------------------------------------------------------------- locks


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


#: The contents of the lock files this process holds now. Why: a lock naming our own pid is live
#: only when we hold it; in a container with a fixed hostname where cloudmask runs as pid 1 every
#: time, a killed run's lock names the next run's pid too.
_HELD_LOCKS: set[str] = set()


def _locks_set_aside(lock: Path) -> list[Path]:
    """Locks renamed aside by :meth:`OutputLock._break_stale` (``.lock.stale-PID``); a run killed
    between the rename and the removal leaves one."""
    return sorted(lock.parent.glob(glob.escape(lock.name) + ".stale-*")) if lock.parent.is_dir() else []


def _lock_file_stale(path: Path) -> bool:
    """A lock file left by a process gone from this host, or naming this process without being one
    it holds (a missing file counts as stale; an unreadable or half-written one only when older
    than a minute: its writer may be mid-write)."""
    try:
        text = path.read_text()
        pid_s, host = text.split()[:2]
        pid = int(pid_s)
    except FileNotFoundError:
        return True
    except (OSError, ValueError):
        try:
            return time.time() - path.stat().st_mtime > 60
        except OSError:
            return True
    if host != socket.gethostname():
        return False
    if pid == os.getpid():
        return text not in _HELD_LOCKS
    if not _pid_alive(pid):
        return True
    try:  # the pid is alive, but a process that started after the lock was written cannot hold it:
        written = path.stat().st_mtime  # the pid was reused (after a reboot, in a container)
    except OSError:
        return True
    started = _process_start(pid)
    # minutes, not seconds: a clock stepped forward after the lock was written (NTP at boot, a
    # resumed VM) or an NFS server's clock must not make a live holder's lock look older than it
    return started is not None and started > written + PID_REUSE_MARGIN_S


#: How much later than its lock file a process must have started to be taken for a reused pid.
PID_REUSE_MARGIN_S = 300.0


def _process_start(pid: int) -> float | None:
    """When process ``pid`` started (seconds since the epoch), where /proc says (Linux), else None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        ticks = int(stat.rsplit(")", 1)[1].split()[19])  # field 22, after the command name in (…)
        boot = next(float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime "))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


class OutputLock:
    """An exclusive lock file beside an output (``O_CREAT | O_EXCL``; works on NFS v3+ too).

    A lock left by a dead process on this host is taken over; a live one (or one from another host)
    makes this run report the output as locked.
    """

    def __init__(self, path: Path, target: Path) -> None:
        self.path = path
        self.target = target
        self.held = False

    def __enter__(self) -> OutputLock:
        # pid and host, then a token of this lock alone (older runs read the first two fields)
        me = f"{os.getpid()} {socket.gethostname()} {secrets.token_hex(8)}\n"
        _HELD_LOCKS.add(me)  # before the file names us: another thread here must not judge it stale
        try:
            for _ in range(2):
                try:
                    fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
                except FileExistsError:
                    if self._stale() and self._break_stale():
                        continue
                    owner = self._owner()
                    raise OutputBusyError(f"{self.target}: another run is writing this output (lock {self.path.name}: "
                                          f"{owner})", owner) from None
                except OSError as exc:
                    from cloudmask import cog  # GDAL's: only when a lock cannot be made

                    raise cog.output_error(exc, self.target) from None
                try:
                    os.write(fd, me.encode())
                finally:
                    os.close(fd)
                self.held, self._me = True, me
                for aside in _locks_set_aside(self.path):
                    # a killed takeover's leftover; removed once the lock it holds is stale, as its
                    # taker would have done (one holding a live run's lock waits for that run's end)
                    if _lock_file_stale(aside):
                        remove_quietly(aside)
                return self
            raise OutputError(f"{self.target}: cannot take the lock {self.path}")
        except BaseException:
            _HELD_LOCKS.discard(me)
            raise

    def _owner(self) -> str:
        try:
            pid, host = self.path.read_text().split()[:2]
            return f"pid {pid} on {host}"
        except (OSError, ValueError):
            return "unknown owner"

    def _stale(self) -> bool:
        return _lock_file_stale(self.path)

    def _break_stale(self) -> bool:
        """Remove the stale lock so that of several runs doing so at once only one succeeds: the lock
        is first renamed to a name of this process's own (one rename wins), then judged again; a lock
        that turned out live (another run's, made between our check and the rename) is put back.
        True: try to create ours now."""
        grabbed = self.path.with_name(f"{self.path.name}.stale-{os.getpid()}")
        try:
            os.replace(self.path, grabbed)
        except FileNotFoundError:
            return True  # someone removed it: try to create ours
        except OSError:
            return False
        stale = _lock_file_stale(grabbed)
        if not stale:
            try:
                os.link(grabbed, self.path)  # back in place, unless a new lock is already there
            except OSError:
                pass
        try:
            grabbed.unlink()
        except OSError:
            pass
        return stale

    def __exit__(self, *exc: object) -> None:
        if self.held:
            try:  # only our own lock: never a file another run put there
                if self.path.read_text() == self._me:
                    self.path.unlink()
            except OSError:
                pass
            _HELD_LOCKS.discard(self._me)
            self.held = False


def remove_quietly(path: Path | None) -> None:
    """Best-effort cleanup of a temporary file: an error here must not hide the original one."""
    if path is not None:
        with contextlib.suppress(OSError):
            path.unlink()
