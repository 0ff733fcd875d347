"""Every filesystem mutation sop makes goes through this module.

One small facade, so that a crash test can stop the process at the k-th
mutation and an I/O error can be injected at any one of them (STYLE §6,
after ZODB's ``_finish_finish`` and Mercurial's ``KILL_9_POST_FINALIZE``).

Fault injection is driven by the environment, read once per process:

``SOP_CRASH_AT=K``
    ``os._exit(137)`` just before mutation number K (1-based) begins.
``SOP_FAIL_AT=K:ERRNO[:persist]``
    raise ``OSError(ERRNO)`` at mutation K (``ENOSPC``, ``EIO``, ``EACCES``
    …); with ``persist`` every mutation from K on fails.
``SOP_TRACE_MUTATIONS=PATH``
    append one line per mutation (``N kind path``) to PATH, so a test can
    count the crash points of a command.

Temporary files are named ``.<name>.sop-tmp-<pid>-<hex>`` beside their
target, so that recovery can recognise and remove those of interrupted
writes (:func:`is_temp_name`).
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import stat
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

_counter = 0
_crash_at: int | None = None
_fail_at: int | None = None
_fail_errno = 0
_fail_persist = False
_trace: str | None = None
_loaded = False

TEMP_RE = re.compile(r"^\..+\.sop-tmp-\d+-[0-9a-f]+$")

# Every os.open is binary: on Windows the default is text mode, which writes
# \r\n for \n (a journal line would fail its checksum).
O_BINARY = getattr(os, "O_BINARY", 0)
# On Windows, a replace that meets a file held for a moment (antivirus, a sync
# client, Excel's own save) is tried again after these pauses (seconds).
REPLACE_RETRY = (0.05, 0.1, 0.2, 0.4) if os.name == "nt" else ()
# On Linux, a file at least this large that a replace drops is released by a helper process after the
# rename instead of inside it (:func:`_release_later`).
RELEASE_LATER_BYTES = 8 << 20
_CATS = ("/bin/cat", "/usr/bin/cat")
_holders: list[tuple[int, int]] = []      # (pid, pidfd or -1) of the helpers not yet reaped
_holders_lock = threading.Lock()


def _load() -> None:
    global _loaded, _crash_at, _fail_at, _fail_errno, _fail_persist, _trace
    _loaded = True
    _fail_at, _fail_errno, _fail_persist = None, 0, False
    crash = os.environ.get("SOP_CRASH_AT")
    _crash_at = int(crash) if crash else None
    fail = os.environ.get("SOP_FAIL_AT")
    if fail:
        parts = fail.split(":")
        _fail_at = int(parts[0])
        _fail_errno = getattr(errno, parts[1]) if len(parts) > 1 else errno.EIO
        _fail_persist = len(parts) > 2 and parts[2] == "persist"
    _trace = os.environ.get("SOP_TRACE_MUTATIONS") or None


def reset() -> None:
    """Forget the counter and re-read the environment (for in-process tests)."""
    global _counter
    _counter = 0
    _load()


def point(kind: str, path: str | os.PathLike[str]) -> None:
    """Mark one mutation about to start: crash or fail here if asked to."""
    global _counter
    if not _loaded:
        _load()
    _counter += 1
    if _trace:
        with open(_trace, "a", encoding="utf-8") as f:
            f.write(f"{_counter} {os.getpid()} {kind} {os.fspath(path)}\n")
    if _crash_at is not None and _counter == _crash_at:
        os._exit(137)
    if _fail_at is not None and (_counter == _fail_at or (_fail_persist and _counter > _fail_at)):
        raise OSError(_fail_errno, f"{os.strerror(_fail_errno)} (injected)", os.fspath(path))


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Make a directory entry change durable (no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | O_BINARY)
    except OSError:
        return
    try:
        fsync(fd)
    finally:
        os.close(fd)


def fsync(fd: int) -> None:
    """fsync that reaches the disk: on macOS plain fsync stops at the drive's cache (F_FULLFSYNC)."""
    if sys.platform == "darwin":
        import fcntl
        try:
            fcntl.fcntl(fd, fcntl.F_FULLFSYNC)
            return
        except (AttributeError, OSError):       # not supported by this filesystem: fsync is all there is
            pass
    os.fsync(fd)


def _replace_once(src: Path, dst: Path) -> None:
    if os.name == "nt":                        # MOVEFILE_REPLACE_EXISTING | MOVEFILE_WRITE_THROUGH
        import ctypes
        kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)   # type: ignore[attr-defined,unused-ignore]
        if not kernel32.MoveFileExW(os.fspath(src), os.fspath(dst), 0x1 | 0x8):
            raise ctypes.WinError(ctypes.get_last_error())          # type: ignore[attr-defined,unused-ignore]
        return
    os.replace(src, dst)


def _reap_holders() -> None:
    """Reap the helpers of earlier replaces that have left (a long-lived process makes many).

    By pidfd where the kernel has them, so that a pid reaped by someone else
    and reused is never waited for; two threads never reap the same helper.
    """
    if sys.platform != "linux":
        return
    with _holders_lock:
        for entry in list(_holders):
            pid, pidfd = entry
            try:
                if pidfd >= 0:
                    done = os.waitid(os.P_PIDFD, pidfd, os.WEXITED | os.WNOHANG) is not None
                else:
                    done = os.waitpid(pid, os.WNOHANG)[0] != 0
            except ChildProcessError:                   # reaped by someone else
                done = True
            except OSError:
                continue
            if done:
                _holders.remove(entry)
                if pidfd >= 0:
                    os.close(pidfd)


def _release_later(target: Path) -> int | None:
    """Keep the file at ``target`` open in a helper process; returns the pipe that lets it go.

    Replacing a file drops its last link, and the kernel frees its blocks inside
    the ``rename``: 31-43 ms for the 111 MB workbook of a 1M-row sheet on this
    project's machine (ext4 with online discard), a sixth of a steady commit.
    A ``cat`` whose standard input is a pipe from this process and which holds
    the old file at descriptor 3 still references the inode, so the rename only
    unlinks it; the blocks are freed when ``cat`` reads end-of-file and exits:
    when the pipe is closed right after the rename and its directory fsync, on
    the other core while the command finishes.  Nothing on disk changes: the old
    file is gone from the folder either way, and a crash or kill of either
    process closes the descriptor and frees it the ordinary way.

    Linux only, on a file system known to be local, for files of at least
    :data:`RELEASE_LATER_BYTES` with one link, and only when the helper starts;
    anything else (no ``cat``, no ``/proc``, a limit on processes) leaves the
    freeing inside the rename, as before.  ``cat`` gets nothing else of this
    process: standard output and error go to ``/dev/null``, the inheritable
    descriptors other than the three standard ones are closed in it.
    """
    if sys.platform != "linux":
        return None
    def worth_it(st: os.stat_result) -> bool:
        return stat.S_ISREG(st.st_mode) and st.st_size >= RELEASE_LATER_BYTES and st.st_nlink == 1
    try:                                       # one stat for the small files most writes replace
        if not worth_it(os.lstat(target)):
            return None
        fd = os.open(target, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK | O_BINARY)
    except OSError:
        return None
    _reap_holders()
    r = w = pidfd = -1
    try:
        if not worth_it(os.fstat(fd)):         # replaced between the two looks
            return None
        from . import fstype

        if not fstype.known_local(target.parent):   # NFS renames an open target aside (.nfsXXXX) and
            return None                             # an SMB server may refuse to replace it
        if fd <= 3:                            # with a standard stream closed: keep it clear of 0-3
            import fcntl

            low, fd = fd, fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 4)
            os.close(low)
        r, w = os.pipe()
        inherited = []
        for name in os.listdir("/proc/self/fd"):
            n = int(name)
            if n > 3 and n not in (fd, r, w):
                try:
                    if os.get_inheritable(n):
                        inherited.append(n)
                except OSError:
                    pass
        actions: list[tuple[object, ...]] = [(os.POSIX_SPAWN_DUP2, r, 0), (os.POSIX_SPAWN_DUP2, fd, 3),
                                             (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0),
                                             (os.POSIX_SPAWN_DUP2, 1, 2)]
        actions += [(os.POSIX_SPAWN_CLOSE, n) for n in inherited]
        for cat in _CATS:
            try:
                pid = os.posix_spawn(cat, ["cat"], {}, file_actions=actions)  # type: ignore[arg-type]
            except OSError:
                continue
            try:
                pidfd = os.pidfd_open(pid)
            except (AttributeError, OSError):      # a kernel before 5.3: reaped by pid
                pidfd = -1
            with _holders_lock:
                _holders.append((pid, pidfd))
            pipe, w = w, -1
            return pipe
        return None
    except OSError:                            # no /proc, no descriptor to spare: the rename frees it
        return None
    finally:
        for x in (fd, r, w):
            if x >= 0:
                os.close(x)


def _let_go(pipe: int | None) -> None:
    if pipe is not None:
        os.close(pipe)


def replace(src: Path, dst: Path, pauses: tuple[float, ...] | None = None) -> None:
    """``os.replace``, written through to disk on Windows, tried again briefly while the target is held."""
    for pause in (REPLACE_RETRY if pauses is None else pauses):
        try:
            _replace_once(src, dst)
            return
        except PermissionError:
            time.sleep(pause)
    _replace_once(src, dst)


def is_busy(e: OSError) -> bool:
    """Whether an error renaming or deleting a folder means a program holds something in it.

    Windows: a sharing or lock violation, or access denied (what renaming a
    folder with an open file in it gives); POSIX: EBUSY, ETXTBSY.
    """
    winerror = getattr(e, "winerror", None)
    if winerror is not None:
        return winerror in (5, 32, 33)
    return e.errno in (errno.EBUSY, errno.ETXTBSY)


def _folder_busy(e: OSError, what: str, path: Path) -> OSError:
    from .errors import FolderBusy

    if not is_busy(e):
        return e
    err = FolderBusy(f"busy, retry: cannot {what} {os.fspath(path)}: a program holds a file in it ({e.strerror})",
                     detail="Close the file (Excel, an editor, a terminal inside the folder), then run the "
                            "command again.")
    err.errno, err.strerror, err.filename = e.errno, e.strerror, os.fspath(path)
    return err


def temp_name(target: Path) -> Path:
    return target.with_name(f".{target.name}.sop-tmp-{os.getpid()}-{os.urandom(4).hex()}")


def is_temp_name(name: str) -> bool:
    return bool(TEMP_RE.match(name))


def atomic_write(target: str | os.PathLike[str], content: bytes | Callable[[BinaryIO], None],
                 before_replace: Callable[[os.stat_result], None] | None = None) -> None:
    """Replace ``target`` atomically and durably: temp, fsync, replace, fsync dir.

    ``content`` is the bytes, or a function that writes them to a file object
    (for streaming writers).  After a crash ``target`` is the old file or the
    new one, never a torn one; a leftover temp file is removed by recovery.
    ``before_replace`` gets the new file's own stat (its inode, size and
    mtime, which the rename keeps) after the fsync and before the rename, so
    a cache keyed on them is in place the moment the file is.
    """
    target = Path(target)
    tmp = temp_name(target)
    point("write", tmp)
    try:
        with open(tmp, "xb") as f:
            if callable(content):
                content(f)
            else:
                f.write(content)
            f.flush()
            fsync(f.fileno())
            st = os.fstat(f.fileno())
        if before_replace is not None:
            before_replace(st)
        point("replace", target)
        holder = None
        try:
            holder = _release_later(target)
            replace(tmp, target)
        except BaseException:
            _let_go(holder)
            raise
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    try:
        point("fsync_dir", target.parent)
        fsync_dir(target.parent)
    finally:
        _let_go(holder)


def write_hint(path: str | os.PathLike[str], data: bytes = b"") -> None:
    """Create a small file that only hints at something (no fsync: losing it costs nothing)."""
    point("hint", path)
    with open(path, "wb") as f:
        f.write(data)


def remove_hint(path: str | os.PathLike[str]) -> None:
    """Remove a hint file; one already gone is fine."""
    point("unhint", path)
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def append_durable(path: str | os.PathLike[str], data: bytes) -> None:
    """Append ``data`` to ``path`` (created if missing) and fsync it."""
    path = Path(path)
    point("append", path)
    existed = path.exists()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | O_BINARY, 0o644)
    try:
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]
        fsync(fd)
    finally:
        os.close(fd)
    if not existed:
        fsync_dir(path.parent)


def truncate_durable(path: str | os.PathLike[str], length: int) -> None:
    """Cut ``path`` to ``length`` bytes and fsync it."""
    point("truncate", path)
    fd = os.open(path, os.O_WRONLY | O_BINARY)
    try:
        os.ftruncate(fd, length)
        fsync(fd)
    finally:
        os.close(fd)


def mkdir(path: str | os.PathLike[str], *, exist_ok: bool = False, parents: bool = False) -> None:
    path = Path(path)
    point("mkdir", path)
    path.mkdir(parents=parents, exist_ok=exist_ok)
    fsync_dir(path.parent)


def rename(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
    """Rename without replacing: refuses when ``dst`` exists."""
    src, dst = Path(src), Path(dst)
    point("rename", src)
    if os.path.lexists(dst):
        raise FileExistsError(errno.EEXIST, "destination exists", os.fspath(dst))
    try:
        os.rename(src, dst)
    except OSError as e:
        raise _folder_busy(e, "rename", src) from e
    fsync_dir(dst.parent)
    if src.parent != dst.parent:
        fsync_dir(src.parent)


def unlink(path: str | os.PathLike[str]) -> None:
    path = Path(path)
    point("unlink", path)
    os.unlink(path)
    fsync_dir(path.parent)


def rmtree(path: str | os.PathLike[str]) -> None:
    """Delete a folder tree without following links.

    A symlink given as ``path`` is refused: sop never deletes through a link.
    """
    path = Path(path)
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise OSError(errno.ENOTDIR, "refusing to delete: not a real folder", os.fspath(path))
    point("rmtree", path)
    try:
        shutil.rmtree(path)
    except OSError as e:
        raise _folder_busy(e, "delete", path) from e
    fsync_dir(path.parent)


def file_list(path: str | os.PathLike[str]) -> list[tuple[str, int]]:
    """Names (relative, ``/``-separated) and sizes of the files under a folder; links not followed."""
    root = Path(path)
    out: list[tuple[str, int]] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            full = os.path.join(dirpath, name)
            try:
                size = os.lstat(full).st_size
            except OSError:
                size = -1
            out.append((os.path.relpath(full, root).replace(os.sep, "/"), size))
    out.sort()
    return out
