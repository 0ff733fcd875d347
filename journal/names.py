"""Plumbing: which strategy names and run ids are safe, and how they compare.

Names become folder names, so they compare case-insensitively after Unicode
NFC normalisation (``Alpha`` and ``alpha`` are one folder on Windows and
macOS), and a name that a file system or a shell would mangle is refused.
"""

from __future__ import annotations

import math
import re
import unicodedata
from datetime import UTC, datetime

from .errors import Refused

MAX_LEN = 120
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


def cell_text(value: object) -> str:
    """A sheet cell as the text it stands for: a numeric run id compares as its integer text."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def unsafe_reason(name: str) -> str | None:
    """Why ``name`` cannot be a folder name, or None when it is safe."""
    if name == "":
        return "it is empty"
    if len(name) > MAX_LEN:
        return f"it is longer than {MAX_LEN} characters"
    if name in (".", ".."):
        return "it is '.' or '..'"
    if "/" in name or "\\" in name:
        return "it contains a path separator"
    if any(unicodedata.category(c) == "Cc" for c in name):
        return "it contains a control character"
    if name[0] in "-.":
        return f"it starts with '{name[0]}'"
    if name[-1] in " .":
        return "it ends with a space or a dot"
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


def check_safe(name: str, what: str) -> None:
    """Refuse (exit 1) an unsafe strategy name or run id."""
    reason = unsafe_reason(name)
    if reason:
        raise Refused(f"Unsafe {what} {name!r}: {reason}.",
                      detail=f"Action: choose a {what} that is a plain folder name.")


def stamp(now: datetime) -> str:
    """UTC ``YYYYmmddTHHMMSSZ``, as used in ``_FAILED_<ts>`` names."""
    return now.astimezone(UTC).strftime(TS_FORMAT)


def parse_stamp(ts: str) -> datetime:
    return datetime.strptime(ts, TS_FORMAT).replace(tzinfo=UTC)


def new_run_id(now: datetime, rand: str) -> str:
    """A unique, safe run id: the UTC time and random hex."""
    return f"{stamp(now)}-{rand}"
