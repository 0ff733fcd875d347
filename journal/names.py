"""Plumbing: which strategy names and run ids are safe, and how they compare.

Names become folder names, so they compare case-insensitively after Unicode
NFC normalisation (``Alpha`` and ``alpha`` are one folder on Windows and
macOS), and a name that a file system or a shell would mangle is refused.

This is the one gate for names: ``sop-begin`` (``--strategy``, ``--run-id``
and a directive's ``Strategy``/``RunID``), ``sop-release``, the Python API
and the sweep (a folder or row with a name it refuses is an
``unsafe_entry``) all ask :func:`unsafe_reason`.  Besides characters, a name
must fit the file system once sop has added its longest suffix
(``_FAILED_<ts>-NNN``, :data:`SUFFIX_BYTES`): its UTF-8 length is at most the
folder's name limit (``NAME_MAX``, 255 bytes on ext4, APFS, NTFS) minus that
suffix, so a run can always be quarantined.  Names that the sweep treats as
Office or LibreOffice owner files (``~$…``, ``.~lock.…#``) and characters a
person cannot see or tell apart in Excel (zero-width and bidirectional
format characters, non-breaking and other non-ASCII spaces, line and
paragraph separators, private-use, unassigned and surrogate code points)
are refused.
"""

from __future__ import annotations

import math
import os
import re
import unicodedata
from datetime import UTC, datetime

from .errors import Refused

MAX_LEN = 120
DEFAULT_NAME_MAX = 255                  # bytes in one file name: ext4, XFS, APFS, NTFS (UTF-16 units), ZFS
SUFFIX_BYTES = len("_FAILED_20260101T000000Z-999")   # the longest suffix sop adds to a folder name
# Characters a person cannot see or tell from a plain space in Excel: format (zero-width, bidi
# overrides, soft hyphen, BOM), line/paragraph separators, surrogates, private use, unassigned.
INVISIBLE_CATEGORIES = {"Cf", "Zl", "Zp", "Cs", "Co", "Cn"}
RESERVED = {"CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$",
            *(f"COM{i}" for i in range(10)), *(f"LPT{i}" for i in range(10)),
            "COM¹", "COM²", "COM³", "LPT¹", "LPT²", "LPT³"}
FAILED_RE = re.compile(r"^(?P<base>.+)_FAILED_(?P<ts>\d{8}T\d{6}Z)(?:-(?P<n>\d+))?$")
TS_FORMAT = "%Y%m%dT%H%M%SZ"


def key(name: str) -> str:
    """The comparison key of a strategy name or run id."""
    if name.isascii():                  # NFC leaves ASCII as it is
        return name.lower()
    return unicodedata.normalize("NFC", name).casefold()


def header_key(text: object) -> str:
    """A header name's comparison key: case-insensitive, ignoring spaces, ``_`` and ``-`` (SPEC §2).

    ``Run ID``, ``run_id`` and ``RunID`` are one column; directive keys
    (``Strategy``, ``RunID``) and the metadata keys that fill columns match
    the same way.
    """
    if text is None:
        return ""
    s = str(text).strip().casefold()
    for ch in (" ", "_", "-", "\t", "\n", "\r", "\u00a0"):
        s = s.replace(ch, "")
    return s


# What no name or run id holds and the sheet index cannot keep (its texts are NUL-separated UTF-8),
# yet a cell can carry through OOXML's escapes: _x0000_ is a NUL, _xD800_ a lone surrogate.
UNKEEPABLE_RE = re.compile("[\0\ud800-\udfff]")


def cell_text(value: object) -> str:
    """A sheet cell as the text it stands for: a numeric run id compares as its integer text; a NUL or
    a lone surrogate in it reads as U+FFFD (no name holds either: see :func:`kept_texts`)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return str(int(value))
    text = str(value).strip()
    return UNKEEPABLE_RE.sub("\ufffd", text) if _unkeepable(text) else text


def kept_texts(texts: list[str]) -> list[str]:
    """:func:`cell_text`'s replacement for a batch of texts already stripped: one look at them all."""
    if not _unkeepable("".join(texts)):
        return texts
    return [UNKEEPABLE_RE.sub("\ufffd", t) for t in texts]


def _unkeepable(text: str) -> bool:
    """Whether ``text`` holds a NUL or a lone surrogate (an ASCII text is only searched for the NUL)."""
    return "\0" in text or (not text.isascii() and UNKEEPABLE_RE.search(text) is not None)


def name_max(folder: str | os.PathLike[str] | None = None) -> int:
    """The file system's limit on one file name in ``folder`` (bytes), or 255 when it cannot say."""
    if folder is not None and hasattr(os, "pathconf"):
        try:
            n = os.pathconf(folder, "PC_NAME_MAX")
            if n and n > 0:
                return min(int(n), DEFAULT_NAME_MAX * 4)
        except (OSError, ValueError):
            pass
    return DEFAULT_NAME_MAX


def max_name_bytes(limit: int = DEFAULT_NAME_MAX) -> int:
    """The longest name (UTF-8 bytes) that still fits ``limit`` with sop's longest suffix."""
    return limit - SUFFIX_BYTES


def unsafe_reason(name: object, *, limit: int = DEFAULT_NAME_MAX) -> str | None:
    """Why ``name`` cannot be a folder name, or None when it is safe.

    ``limit`` is the file system's name limit in bytes (:func:`name_max`).
    """
    if not isinstance(name, str):
        return f"it is a {type(name).__name__}, not text"
    if name == "":
        return "it is empty"
    if len(name) > MAX_LEN:
        return f"it is longer than {MAX_LEN} characters"
    if any(unicodedata.category(c) == "Cs" for c in name):
        return "it is not valid Unicode (a lone surrogate, e.g. bytes that are not UTF-8)"
    nbytes, most = len(name.encode("utf-8")), max_name_bytes(limit)
    if nbytes > most:
        return (f"it is {nbytes} bytes in UTF-8, more than {most} (the file system allows {limit} "
                f"in a name, and sop may add {SUFFIX_BYTES} for _FAILED_<ts>-N)")
    if name in (".", ".."):
        return "it is '.' or '..'"
    if "/" in name or "\\" in name:
        return "it contains a path separator"
    if any(unicodedata.category(c) == "Cc" for c in name):
        return "it contains a control character"
    bad = next((c for c in name if unicodedata.category(c) in INVISIBLE_CATEGORIES
                or (unicodedata.category(c) == "Zs" and c != " ")), None)
    if bad is not None:
        return (f"it contains U+{ord(bad):04X} {unicodedata.name(bad, 'unnamed')}, which cannot be seen "
                "or told from another character in Excel")
    if name[0] in "-.":
        return f"it starts with '{name[0]}'"
    if name[0] == " ":
        return "it starts with a space"
    if name[-1] in " .":
        return "it ends with a space or a dot"
    if name.startswith("~$"):
        return "it starts with '~$', as Office's owner files do (the sweep never treats it as a folder)"
    if any(c in '<>:"|?*' for c in name):
        return 'it contains one of < > : " | ? * (not allowed in Windows file names)'
    stem = name.split(".")[0].rstrip(" ").upper()
    if stem in RESERVED:
        return f"'{stem}' is a reserved device name on Windows"
    if FAILED_RE.match(name):
        return "it ends in _FAILED_<timestamp>, which is how quarantined folders are named"
    return None


OS_JUNK = frozenset({"desktop.ini", "thumbs.db", "ehthumbs.db", ".ds_store"})


def is_os_junk(name: str) -> bool:
    """Files the desktop drops into any folder (Explorer, Finder, macOS on other filesystems).

    ``desktop.ini`` and ``Thumbs.db`` (Windows), ``.DS_Store`` and the
    AppleDouble ``._<name>`` files (macOS): never artifacts, never findings.
    """
    return name.lower() in OS_JUNK or name.startswith("._")


def shown(name: object) -> str:
    """A name quoted for a message: characters that cannot be seen (or printed) as escapes."""
    if not isinstance(name, str):
        return repr(name)
    return "'" + "".join(c if c.isprintable() and unicodedata.category(c) not in INVISIBLE_CATEGORIES
                         else ascii(c)[1:-1] for c in name) + "'"


def check_safe(name: object, what: str, *, limit: int = DEFAULT_NAME_MAX) -> None:
    """Refuse (exit 1) an unsafe strategy name or run id."""
    reason = unsafe_reason(name, limit=limit)
    if reason:
        raise Refused(f"Unsafe {what} {shown(name)}: {reason}.",
                      detail=f"Action: choose a {what} that is a plain folder name.")


def stamp(now: datetime) -> str:
    """UTC ``YYYYmmddTHHMMSSZ``, as used in ``_FAILED_<ts>`` names."""
    return now.astimezone(UTC).strftime(TS_FORMAT)


def parse_stamp(ts: str) -> datetime:
    return datetime.strptime(ts, TS_FORMAT).replace(tzinfo=UTC)


def new_run_id(now: datetime, rand: str) -> str:
    """A unique, safe run id: the UTC time and random hex."""
    return f"{stamp(now)}-{rand}"
