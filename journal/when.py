"""Plumbing: durations and points in time as people type them.

``--older-than 24h`` (``sop-recover``, ``sop-status``, ``sop-sweep``) and
``--since 3d`` (``sop-log``) read ages the same way: a number and one of
``s m h d w`` (``90s``, ``15m``, ``24h``, ``7d``, ``2w``).  ``--since`` and
``--until`` also take an ISO date or time, ``now``, ``today`` and
``yesterday``.  Times are UTC unless the text says otherwise.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime, timedelta

from .errors import UsageError

MAX_SECONDS = 1000 * 366 * 86400     # longer than a millennium is a typo (and "now - it" must stay after year 1)
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
AGE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*(?:ago)?\s*$", re.IGNORECASE)


def parse_duration(text: str | timedelta) -> timedelta:
    """``90s``, ``15m``, ``24h``, ``7d``, ``2w`` (a bare number is seconds); a timedelta as it is."""
    if isinstance(text, timedelta):
        seconds = text.total_seconds()
    else:
        t = text.strip().lower()
        try:
            seconds = float(t[:-1]) * UNITS[t[-1]] if t and t[-1] in UNITS else float(t)
        except ValueError:
            raise UsageError(f"not a duration: {text!r}",
                             detail="Use a number with s, m, h, d or w, e.g. 24h.") from None
    if not math.isfinite(seconds) or seconds < 0 or seconds > MAX_SECONDS:
        raise UsageError(f"not a duration sop accepts: {text!r} (it must be from 0 to 1000 years)",
                         detail="Use a number with s, m, h, d or w, e.g. 24h.")
    return text if isinstance(text, timedelta) else timedelta(seconds=seconds)


def parse_when(text: str | datetime, now: datetime, *, end: bool = False) -> datetime:
    """A ``--since``/``--until`` bound: an ISO date or time (UTC unless it says), or an age like ``2h``, ``3d``.

    A date alone as an ``end`` bound means the end of that day, as a person
    reading ``--until 2026-03-01`` expects.
    """
    if isinstance(text, datetime):
        return text if text.tzinfo else text.replace(tzinfo=UTC)
    t = text.strip()
    m = AGE_RE.match(t)
    if m:
        try:
            return now - parse_duration(m[1] + m[2])
        except OverflowError:
            raise UsageError(f"not a date, time or age sop accepts: {text!r}") from None
    low = t.lower()
    midnight = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    if low == "now":
        return now
    if low in ("today", "yesterday"):
        day = midnight - timedelta(days=1 if low == "yesterday" else 0)
        return day + timedelta(days=1, microseconds=-1) if end else day
    try:
        dt = datetime.fromisoformat(t)
    except (ValueError, OverflowError):
        raise UsageError(f"not a date, time or age: {text!r}",
                         detail="Use an ISO date or time (2026-03-01, 2026-03-01T14:30Z) or an age "
                                "(90m, 2h, 3d, 1w).") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    if end and len(t) == 10 and dt.date() < datetime.max.date():
        dt += timedelta(days=1, microseconds=-1)
    return dt
