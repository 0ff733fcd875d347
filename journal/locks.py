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
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import filelock

from .errors import Busy


@contextlib.contextmanager
def hold(path: Path, timeout: float, what: str = "workspace") -> Iterator[None]:
    """Hold a filelock, or raise Busy (exit 6) after ``timeout`` seconds."""
    lock = filelock.FileLock(str(path), timeout=timeout)
    try:
        lock.acquire()
    except filelock.Timeout:
        raise Busy(f"the {what} is busy: another sop process held {path} for {timeout:g} s",
                   detail="Action: wait for it to finish and try again, or raise [lock] timeout_seconds.") from None
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
        data = path.read_bytes()[:4096]
    except OSError:
        return "unknown user"
    if path.name.startswith(".~lock."):
        text = data.decode("utf-8", "replace").split(";")[0]
        parts = text.split(",")
        for p in parts[:2]:
            if p.strip():
                return p.strip()
        return "unknown user"
    if data:
        n = data[0]
        raw = data[1:1 + n]
        try:
            name = raw.decode("cp1252").strip("\x00 ")
        except UnicodeDecodeError:
            name = ""
        if name:
            return name
    return "unknown user"


def sheet_locked_by(sheet: Path) -> str | None:
    """The user who has the sheet open (from its owner file), or None when it is free."""
    for p in owner_files(sheet):
        if p.exists():
            return f"{_who(p)} ({p.name})"
    return None
