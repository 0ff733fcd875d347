"""Opening a workbook for a rewrite of its master sheet, checking its XML beside the rewrite, and replacing it."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, BinaryIO

from journal import fsops
from journal.errors import SheetDamaged

from . import deflate, validate
from .package import Package, Replacement, SheetInfo, Written, damaged, write_package
from .scan import Scan, Scanner, Segments, check_odd, iter_sheet, scan_sheet

if TYPE_CHECKING:
    import subprocess

VALIDATOR_MIN_BYTES = 8 << 20       # below this a worksheet part is checked in process (a child costs ~50 ms)


def child_command(path: str | os.PathLike[str], part: str) -> list[str]:
    """The validator child: this Python, isolated, running :mod:`.validate` by its file path (and
    told where python-isal is, when this process inflates with it)."""
    return [sys.executable, "-I", "-S", validate.__file__, os.fspath(path), part, *deflate.isal_home()]


class Validator:
    """Runs expat over the worksheet part in a child process, on the other core, while we rewrite it.

    Expat costs as much as the rest of an append together and holds the GIL, so on a machine
    with two or more cores it runs beside the two passes; ``join`` is called before the new file
    replaces the old one.  With one core, a part small enough that starting a child costs more
    than it saves, or when no child can be started, validation runs in process (``inline``).
    """

    def __init__(self, pkg: Package, part: str) -> None:
        self.pkg, self.part = pkg, part
        self.proc: subprocess.Popen[bytes] | None = None
        if ((os.cpu_count() or 1) < 2 or not sys.executable or getattr(sys, "frozen", False)
                or pkg.names[part].file_size < VALIDATOR_MIN_BYTES):
            return
        # a steady append checks no part: subprocess is not on its path
        import subprocess

        try:
            self.proc = subprocess.Popen(child_command(pkg.path, part), stdin=subprocess.DEVNULL,
                                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        except OSError:
            self.proc = None

    @property
    def inline(self) -> bool:
        return self.proc is None

    def join(self) -> None:
        if self.proc is None:
            return
        out, _err = self.proc.communicate()
        code = self.proc.returncode
        self.proc = None
        if code == 3:
            raise damaged(self.pkg.path, f"{self.part} {out.decode(errors='replace').strip()}",
                          "Open and re-save it in Excel, or restore it from a backup.")
        if code != 0:   # the child itself failed (killed, no memory…): check in process instead
            with Package(self.pkg.path) as pkg:     # (the package it was started with may be closed by now)
                seg = Segments()
                for _ in iter_sheet(pkg, self.part, True, seg):
                    pass
                check_odd(pkg, self.part, seg)

    def cancel(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.communicate()
            self.proc = None


class Trusted(Validator):
    """No XML check: the part is one this package wrote (or checked) and the file is unchanged since."""

    def __init__(self, pkg: Package, part: str) -> None:
        self.pkg, self.part = pkg, part
        self.proc = None

    @property
    def inline(self) -> bool:
        return False


def checked_before(pkg: Package, checked: Sequence[int] | None) -> bool:
    """Whether the opened file is the version whose stat (size, mtime_ns, inode, device) is ``checked``."""
    if not checked:
        return False
    st = os.fstat(pkg.f.fileno())
    return [st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev] == list(checked)


# The first scan of the last check_append that passed (its XML check too), by the stat of the very
# file it read: an append to that file right after (the commit gate, then the write) starts from it.
# A scan made beside a read (:func:`prescan`) waits here with its XML check still running (its
# Validator); whoever recalls it joins the check first.
_checked_scan: list[tuple[list[int], str, str, Scan, Validator | None]] = []


def _stamp_of(pkg: Package) -> list[int]:
    st = os.fstat(pkg.f.fileno())
    return [st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev]


def remember_scan(pkg: Package, part: str, scan: Scan, pending: Validator | None = None) -> None:
    """Keep the first scan of a file whose checks just passed (or, with ``pending``, whose XML check
    is still running), for an append to the same file."""
    for *_, old in _checked_scan:
        if old is not None and old is not pending:
            old.cancel()
    _checked_scan[:] = [(_stamp_of(pkg), os.fspath(pkg.path), part, scan, pending)]


def forget_scans() -> None:
    """Forget the scans kept for an append, stopping an XML check still running for one."""
    for *_, pending in _checked_scan:
        if pending is not None:
            pending.cancel()
    _checked_scan.clear()


def _recall_scan(pkg: Package, part: str) -> Scan | None:
    for i, (stamp, path, p, scan, pending) in enumerate(_checked_scan):
        if p == part and path == os.fspath(pkg.path) and stamp == _stamp_of(pkg):
            if pending is not None:
                del _checked_scan[i]
                pending.join()               # SheetDamaged when the part is not well-formed
                _checked_scan.insert(i, (stamp, path, p, scan, None))
            return scan
    return None


class Prescan:
    """The first pass of an append made beside a read of the same part (:func:`.read.read_table`
    with ``prescan``), with the XML check started in a child: a commit gate that reads the sheet
    after a foreign save, then checks it, then writes it, reads its rows once, not three times.

    Only for a part large enough to be checked in a child (the check never blocks the read); a
    shape the scan refuses just drops it (the read goes on, and :func:`.append.check_append`
    will refuse it with its own message)."""

    def __init__(self, pkg: Package, part: str, seg: Segments) -> None:
        self.pkg, self.part = pkg, part
        self.validator: Validator | None = Validator(pkg, part)
        if self.validator.inline:
            self.validator = None
        self.scanner: Scanner | None = Scanner(pkg, part, seg, True) if self.validator is not None else None

    def feed(self, chunk: bytes) -> None:
        if self.scanner is None:
            return
        try:
            self.scanner.feed(chunk)
        except SheetDamaged:
            self.drop()

    def drop(self) -> None:
        self.scanner = None
        if self.validator is not None:
            self.validator.cancel()
            self.validator = None

    def finish(self) -> None:
        """The read is complete: keep the scan for an append to this very file."""
        if self.scanner is None or self.validator is None:
            return
        try:
            scan = self.scanner.finish()
        except SheetDamaged:
            self.drop()
            return
        remember_scan(self.pkg, self.part, scan, self.validator)
        self.scanner = self.validator = None


@contextlib.contextmanager
def opened(path: str | os.PathLike[str], worksheet: str | None) -> Iterator[tuple[Package, SheetInfo]]:
    """The package and its master sheet, closed however the rewrite ends."""
    pkg = Package(path)
    try:
        yield pkg, pkg.sheet(worksheet)
    finally:
        pkg.close()


@contextlib.contextmanager
def editing(path: str | os.PathLike[str], worksheet: str | None, keep_rest: bool = False,
            checked: Sequence[int] | None = None, opened_pkg: tuple[Package, SheetInfo] | None = None,
            ) -> Iterator[tuple[Package, SheetInfo, Validator, Scan]]:
    """Open a workbook for a rewrite of its master sheet: the package, the sheet, the XML check
    started beside the rewrite, and the first scan (``keep_rest``: see :func:`.scan.scan_sheet`).
    The check is cancelled and the package closed however the rewrite ends (a finished rewrite
    has joined the check already).  When the opened file is the version whose stat is
    ``checked`` (this package's checks passed on it), the XML check is skipped.  ``opened_pkg``
    is a package already opened (:func:`opened`).  Right after :func:`.append.check_append` passed
    on the same file (the same stat), its first scan is used again: no first pass, no XML check."""
    pkg, info = opened_pkg if opened_pkg is not None else (Package(path), None)
    validator: Validator | None = None
    try:
        if info is None:
            info = pkg.sheet(worksheet)
        known = _recall_scan(pkg, info.part) if keep_rest else None
        if known is not None:                # checked a moment ago, the same file: no first pass, no XML check
            validator = Trusted(pkg, info.part)
            yield pkg, info, validator, known
            return
        validator = Trusted(pkg, info.part) if checked_before(pkg, checked) else Validator(pkg, info.part)
        yield pkg, info, validator, scan_sheet(pkg, info.part, validator.inline, keep_rest)
    finally:
        if validator is not None:
            validator.cancel()
        pkg.close()


def write_workbook(path: str | os.PathLike[str], pkg: Package, validator: Validator, replace: dict[str, Replacement],
                   drop: set[str],
                   before_replace: Callable[[os.stat_result, dict[str, Written]], None] | None = None) -> None:
    """Write the rewritten workbook and put it in the old one's place (:func:`fsops.atomic_write`).

    Members in ``replace`` are written anew, those in ``drop`` left out, the others copied.  The
    XML check is joined once the new file is written, so a part that fails it never replaces the
    old file; the package is closed either way.  ``before_replace`` is a plain hook passed on to
    :func:`fsops.atomic_write`: it gets the new file's stat after the check passed and before the
    replace (if it raises, the old file stays), and where the replaced members went.
    """
    written: dict[str, Written] = {}

    def write(f: BinaryIO) -> None:
        try:
            written.update(write_package(pkg, f, replace, drop))
            validator.join()
        finally:
            pkg.close()

    hook = None if before_replace is None else (lambda st: before_replace(st, written))
    fsops.atomic_write(path, write, hook)
