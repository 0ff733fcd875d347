r"""Plumbing: is a folder on a network (or FUSE) file system, where the file store cannot be trusted?

The file store keeps its journal in ``.sop/journal/`` and serialises writers
with ``flock`` on ``.sop/lock`` (filelock).  On a file system shared between
hosts neither holds: measured in the field, ``flock`` on sshfs (and on NFS
mounted ``nolock``, SMB mounted ``nobrl``) is granted on every host at once,
and client caches hide records another host appended, so two hosts each
append their own continuation and the journal forks.  So the file store
refuses to write there (SPEC §1 ``[journal]``; see :func:`journal.txn.check_store`),
and this module says where "there" is.

Network types (:data:`NETWORK_TYPES`, matched against the file system type
as the kernel names it): NFS (``nfs``, ``nfs4``), SMB/CIFS (``cifs``,
``smb3``, ``smbfs``), every FUSE file system (``fuse`` and ``fuse.*``:
sshfs, glusterfs, rclone, s3fs, bindfs, …; but not ``fuseblk``, which is a
local disk driven through FUSE: ntfs-3g, exfat), the cluster and distributed
file systems (``ceph``, ``lustre``, ``gpfs``, ``beegfs``, ``glusterfs``,
``orangefs``, ``pvfs2``, ``afs``, ``coda``), WebDAV (``davfs``, ``webdav``),
Plan 9 and host shares of virtual machines (``9p`` — WSL 2's ``/mnt/c`` too
—, ``virtiofs``, ``vboxsf``, ``vmhgfs``), and on macOS ``afpfs``,
``smbfs``, ``webdav`` and macFUSE (``osxfuse``, ``macfuse``, ``fusefs*``).

How the mount of a path is found, by platform:

* Linux: ``/proc/self/mountinfo`` (:func:`parse_mountinfo`): the mount whose
  mount point is the longest prefix of the resolved path, so a local mount
  inside a network one (and the reverse) is seen as what it is.  The mount
  point and the source are decoded from the kernel's octal escapes
  (``\040`` is a space).  The fifth field is the mount point; the file
  system type follows the ``-`` separator.
* Windows: a UNC path (``\\server\share\…``, ``\\?\UNC\server\share\…``) is
  a network share; a drive is one when ``GetDriveTypeW`` says
  ``DRIVE_REMOTE`` (a mapped network drive).
* Elsewhere (macOS, the BSDs), and on Linux without ``/proc``:
  ``psutil.disk_partitions(all=True)`` with the same longest-prefix rule.

A path whose mount cannot be found (no ``/proc``, psutil failing) counts as
local: the check guards against a known hazard and never stops a workspace
it cannot judge.  The answer for a path is cached for the life of the
process (:func:`network_mount`): a command checks before every commit, and
mounts do not change under a running command.  :func:`forget` empties the
cache (tests that mount and unmount).
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass

NETWORK_TYPES = frozenset({
    "nfs", "nfs4", "cifs", "smb3", "smbfs", "smb2", "ncpfs",
    "fuse",
    "ceph", "lustre", "gpfs", "beegfs", "glusterfs", "orangefs", "pvfs2", "afs", "coda",
    "davfs", "webdav",
    "9p", "virtiofs", "vboxsf", "vmhgfs",
    "afpfs", "osxfuse", "macfuse",
})
NETWORK_PREFIXES = ("fuse.", "fusefs", "macfuse", "osxfuse")     # fuse.sshfs, fusefs.sshfs (FreeBSD, macFUSE)
LOCAL_FUSE = frozenset({"fuseblk"})                             # a local disk through FUSE (ntfs-3g, exfat)


@dataclass(frozen=True)
class Mount:
    """One mounted file system: where it is mounted, its type, and what it mounts (a device or a share)."""

    point: str
    fstype: str
    source: str = ""
    remote: bool | None = None      # what the platform says (Windows' drive type); None: judged by fstype

    @property
    def network(self) -> bool:
        return self.remote if self.remote is not None else is_network_type(self.fstype)


def is_network_type(fstype: str) -> bool:
    """Whether a file system type (as mountinfo or psutil names it) is shared between hosts."""
    t = fstype.lower()
    if t in LOCAL_FUSE:
        return False
    return t in NETWORK_TYPES or t.startswith(NETWORK_PREFIXES)


_ESCAPE = re.compile(r"\\([0-7]{3})")


def unescape(field: str) -> str:
    r"""A mountinfo field with the kernel's octal escapes decoded (``\040`` space, ``\011`` tab, ``\134`` \)."""
    return _ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), field)


def parse_mountinfo(text: str) -> list[Mount]:
    """The mounts of a ``/proc/<pid>/mountinfo`` text, in its order; lines it cannot read are skipped.

    A line: ``id parent major:minor root mount-point options [optional…] - fstype source super-options``.
    """
    out: list[Mount] = []
    for line in text.splitlines():
        parts = line.split(" ")
        try:
            sep = parts.index("-", 6)
        except ValueError:
            continue
        if len(parts) < sep + 2:
            continue
        out.append(Mount(unescape(parts[4]), parts[sep + 1], unescape(parts[sep + 2]) if len(parts) > sep + 2
                         else ""))
    return out


def _inside(path: str, point: str, sep: str) -> bool:
    if path == point:
        return True
    base = point if point.endswith(sep) else point + sep
    return path.startswith(base)


def mount_of(path: str, mounts: list[Mount], *, sep: str = "/", casefold: bool = False) -> Mount | None:
    """The mount holding an absolute, resolved path: the longest mount point that is a prefix of it.

    Of two mounts on one point the later one (mounted over the first) wins,
    as the kernel lists them in mount order.
    """
    key = path.casefold() if casefold else path
    best: Mount | None = None
    for m in mounts:
        point = m.point.casefold() if casefold else m.point
        if _inside(key, point, sep) and (best is None or len(m.point) >= len(best.point)):
            best = m
    return best


# ---------------------------------------------------------------- per platform

def _linux_mounts() -> list[Mount] | None:
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
            return parse_mountinfo(f.read())
    except OSError:
        return None


def _psutil_mounts() -> list[Mount] | None:
    try:
        import psutil

        return [Mount(p.mountpoint, p.fstype, p.device) for p in psutil.disk_partitions(all=True)]
    except Exception:                   # psutil missing a platform's call: judge nothing rather than fail
        return None


def unc_share(path: str) -> str | None:
    r"""The ``\\server\share`` of a UNC path (also ``\\?\UNC\server\share\…``, ``/`` separators), else None."""
    p = path.replace("/", "\\")
    if p[:8].upper() == "\\\\?\\UNC\\":
        p = "\\\\" + p[8:]
    elif p.startswith("\\\\?\\") or p.startswith("\\\\.\\"):
        return None                     # a device path to a local drive (\\?\C:\…)
    if not p.startswith("\\\\"):
        return None
    parts = p[2:].split("\\")
    if len(parts) < 2 or not parts[0] or not parts[1]:
        return None
    return f"\\\\{parts[0]}\\{parts[1]}"


DRIVE_REMOTE = 4


def _windows_mount(path: str) -> Mount | None:
    share = unc_share(path)
    if share is not None:
        return Mount(share, "smb (a UNC path)", share, remote=True)
    drive = os.path.splitdrive(path)[0]
    if len(drive) != 2 or drive[1] != ":":
        return None
    root = drive + "\\"
    if sys.platform == "win32":
        import ctypes

        try:
            kind = ctypes.windll.kernel32.GetDriveTypeW(ctypes.c_wchar_p(root))
        except (AttributeError, OSError):
            return None
        if kind == DRIVE_REMOTE:
            return Mount(root, "network drive (DRIVE_REMOTE)", root, remote=True)
        return Mount(root, "local drive", root, remote=False)
    return None


def find_mount(path: str) -> Mount | None:
    """The mount that holds ``path`` (resolved first), or None when it cannot be told.  Not cached."""
    real = os.path.realpath(path)
    if os.name == "nt":                 # realpath may turn a mapped drive into its UNC path, or not
        found = [m for m in (_windows_mount(real), _windows_mount(path)) if m is not None]
        return next((m for m in found if m.network), found[0] if found else None)
    mounts = _linux_mounts() if sys.platform.startswith("linux") else None
    if mounts is None:
        mounts = _psutil_mounts()
    if not mounts:
        return None
    return mount_of(real, mounts, casefold=sys.platform == "darwin")


_cache: dict[str, Mount | None] = {}


def network_mount(path: str | os.PathLike[str]) -> Mount | None:
    """The network (or FUSE) mount that holds ``path``, or None when it is local or cannot be told.

    Cached per process per path: the check runs before every write.
    """
    key = os.fspath(path)
    try:
        return _cache[key]
    except KeyError:
        pass
    m = find_mount(key)
    found = m if m is not None and m.network else None
    _cache[key] = found
    return found


_local_cache: dict[str, bool] = {}


def known_local(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is on a file system known to be local (not network, not FUSE, not unknown).

    Cached per process per path, as :func:`network_mount` is.
    """
    key = os.fspath(path)
    known = _local_cache.get(key)
    if known is None:
        m = find_mount(key)
        known = _local_cache[key] = m is not None and not m.network
    return known


def forget() -> None:
    """Empty the caches of :func:`network_mount` and :func:`known_local` (after a test mounted or
    unmounted something)."""
    _cache.clear()
    _local_cache.clear()
