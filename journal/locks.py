"""Plumbing: the workspace lock, the sheet-writer lock, and who holds the sheet open.

``.sop/lock`` (filelock) is held around every mutation of the workspace:
reading the journal's tail, deciding, appending records.  ``.sop/sheet.lock``
is held by the one process that rewrites the Master Sheet; it writes every
decided row that is waiting (group commit), so commits do not queue one
whole-sheet rewrite each.

The sheet is *locked by a person* when an Office owner file ``~$<name>``
(Office shortens long names: ``~$`` replaces the first two characters) or a
LibreOffice lock file ``.~lock.<name>#`` lies beside it.  An Office owner
file starts with one byte giving the length of the user name, then the name
in the ANSI code page; a LibreOffice lock file is one CSV line
``Author,user,host,date,url;``.

An owner file is looked at, never followed: a link is reported as a lock
without reading its target, a folder of that name is not an owner file, and
a FIFO never blocks (:func:`journal.inputs.read_file`).  Its age (mtime) is
part of every message, and one older than ``[lock] stale_owner_hours`` is
called possibly stale, with how to clear it: Excel that crashed leaves its
owner file behind, and sop must not silently ignore one (the person may still
be editing), nor leave the user guessing why every commit is rolled back.
"""

from __future__ import annotations

import contextlib
import os
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import filelock

from .errors import Busy, UnsafeStore
from .inputs import Unreadable, read_file

OWNER_FILE_MAX_BYTES = 64 << 10
# How often a waiter tries the lock again.  filelock's 50 ms default left the lock idle between
# holders: 4 processes committing 200 runs took 22.1 s with it and 15.4 s with 2 ms (BENCHMARKS.md,
# "Many workers, one workspace"); a try is one non-blocking flock(2).
POLL_SECONDS = 0.005


@contextlib.contextmanager
def hold(path: Path, timeout: float, what: str = "workspace", shared: str = "") -> Iterator[None]:
    """Hold a filelock, or raise Busy (exit 6) after ``timeout`` seconds.

    ``shared`` names the network file system the lock lies on, when the
    workspace allows one (``[journal] allow_network_fs``): the holder may
    then be a process on another host, which nothing here can see.  A lock
    the file system will not give at all (an error, not a wait) is
    UnsafeStore (exit 2): every command, ``sop-recover`` too, takes the same
    lock, so the message never sends anyone there.
    """
    lock = filelock.FileLock(str(path), timeout=timeout)
    try:
        lock.acquire(poll_interval=POLL_SECONDS)
    except filelock.Timeout:
        where = (f" It lies on {shared}, so the holder may be a sop process on another host; it must finish "
                 "there (the network file system is allowed on the understanding that one host writes)."
                 if shared else "")
        raise Busy(f"the {what} is busy: another sop process held {path} for {timeout:g} s",
                   detail=f"Action: wait for it to finish and try again, or raise [lock] timeout_seconds.{where}") \
            from None
    except (OSError, NotImplementedError) as e:
        why = e.strerror if isinstance(e, OSError) and e.strerror else str(e) or type(e).__name__
        raise UnsafeStore(f"cannot take the {what} lock {path}: {why}",
                          detail="Every sop command that writes takes this lock, 'sop-recover' too, so retrying "
                                 "cannot help. Action: fix what stops it (the folder's permissions, a read-only "
                                 "or full disk), or move the workspace to a local disk, or use the PostgreSQL "
                                 "store ([journal] store = \"postgresql\", see sop-config(5)).") from None
    try:
        yield
    finally:
        lock.release()


def owner_files(sheet: Path) -> list[Path]:
    """The lock files that say a person has the sheet open, in the order checked."""
    name = sheet.name
    names = [f"~${name}", f".~lock.{name}#"]
    if len(name) > 2:
        names.insert(1, f"~${name[2:]}")
    return [sheet.with_name(n) for n in names]


def is_owner_file_name(name: str) -> bool:
    return name.startswith("~$") or (name.startswith(".~lock.") and name.endswith("#"))


def _who(path: Path) -> str:
    try:
        data = read_file(path, OWNER_FILE_MAX_BYTES)[:4096]
    except Unreadable as e:
        return f"unknown user (it {e})"
    except OSError:
        return "unknown user"
    if path.name.startswith(".~lock."):
        text = data.decode("utf-8", "replace").split(";")[0]
        parts = text.split(",")
        for p in parts[:2]:
            if p.strip():
                return _printable(p.strip())
        return "unknown user"
    if data:
        n = data[0]
        raw = data[1:1 + n]
        try:
            name = raw.decode("cp1252").strip("\x00 ")
        except UnicodeDecodeError:
            name = ""
        if name:
            return _printable(name)
    return "unknown user"


def _printable(name: str) -> str:
    """A user name as one line of text: control and invisible characters shown as escapes."""
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in name)[:200]


def _fmt_age(seconds: float) -> str:
    s = max(0, int(seconds))
    for unit, n in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if s >= n:
            k = s // n
            return f"{k} {unit}{'s' if k != 1 else ''} old"
    return f"{s} seconds old"


@dataclass
class OwnerFile:
    """An owner file beside the sheet: who it names, how old it is, and whether that is past stale."""

    path: Path
    user: str
    age_seconds: float
    stale: bool

    def __str__(self) -> str:
        return (f"{self.user} ({self.path.name}, {_fmt_age(self.age_seconds)}"
                f"{'; possibly stale' if self.stale else ''})")

    def hint(self) -> str:
        """What to do about it, for the detail of a message."""
        text = (f"The owner file {self.path.name} beside the sheet is {_fmt_age(self.age_seconds)}. ")
        if self.stale:
            text += ("It may be left over from an Excel or LibreOffice that crashed. ")
        return text + (f"If nobody has the sheet open (ask {self.user}), delete {self.path} and run the "
                       "command again; never delete it while the sheet is open.")


def owner_file(sheet: Path, *, stale_hours: float = 24.0, now: float | None = None) -> OwnerFile | None:
    """The first owner file beside the sheet (not followed, not a folder), or None when it is free."""
    for p in owner_files(sheet):
        try:
            st = os.lstat(p)
        except OSError:
            continue
        if stat.S_ISDIR(st.st_mode):
            continue                      # a folder of that name is not an owner file
        age = (time.time() if now is None else now) - st.st_mtime
        return OwnerFile(p, _who(p), age, age > stale_hours * 3600)
    return None


def sheet_locked_by(sheet: Path, *, stale_hours: float = 24.0) -> str | None:
    """The user who has the sheet open (from its owner file, with its age), or None when it is free."""
    f = owner_file(sheet, stale_hours=stale_hours)
    return None if f is None else str(f)
