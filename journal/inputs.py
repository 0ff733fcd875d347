"""Plumbing: reading the files that users and their pipelines hand to sop, safely.

Every file sop reads but did not write goes through :func:`read_file`: it is
opened with ``O_NONBLOCK`` (a FIFO or a device never blocks a command), and
with ``O_NOFOLLOW`` where a link is not expected; it must be a regular file
(``fstat``), and it is read only up to a size limit, so a huge or endless
file is a clear refusal, not minutes and gigabytes.

``run_metadata.json`` has exactly one reader, :func:`read_metadata`, used by
the commit gate (the whole object) and by the sweep (only ``run_id`` and
``strategy``).  Both decode with the same strict JSON rules, so a file the
gate accepted is never one the sweep calls broken:

- at most :data:`METADATA_MAX_BYTES` (16 MiB);
- UTF-8 without a byte-order mark (a BOM, UTF-16 or UTF-32 is refused with a
  hint to save it as UTF-8);
- JSON, with what Python's ``json.dump`` writes besides: ``NaN``,
  ``Infinity`` and ``-Infinity`` are read as that text, and so is a number
  beyond a 64-bit float (``1e400``), so that they land in the sheet as text
  (SPEC §2) and in the journal as they were written, never as an empty cell;
- no lone surrogate escape (``"\\ud800"``: it cannot be written to the
  sheet or the journal), nesting at most a few hundred deep;
- a JSON object at the top.

The fast path is msgspec; a file it refuses is read again by Python's
``json`` under the rules above, the same way for the gate and the sweep.

Directive files (``sop-begin --directive``) are read by :func:`read_directive`:
at most :data:`DIRECTIVE_MAX_BYTES`, JSON, TOML or YAML, and YAML without
aliases (a kilobyte of nested aliases would otherwise expand to gigabytes).
"""

from __future__ import annotations

import json
import math
import os
import stat
from typing import Any

import msgspec

from . import fsops
from .errors import Refused

METADATA_MAX_BYTES = 16 << 20           # a run's metadata is a few KB; 16 MiB leaves room for big metrics
DIRECTIVE_MAX_BYTES = 64 << 10          # a directive names a strategy and a run id
_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_O_NONBLOCK = getattr(os, "O_NONBLOCK", 0)


class Unreadable(Exception):
    """Why a file cannot be read as sop needs it (one line, starting with the file's name or kind)."""


def read_file(path: str | os.PathLike[str], limit: int, *, follow: bool = False) -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes; :class:`Unreadable` otherwise.

    Never blocks on a FIFO (``O_NONBLOCK``), never follows a link unless
    ``follow`` (``O_NOFOLLOW``), and never reads more than ``limit`` + 1 bytes.
    FileNotFoundError passes through, so that callers can say "missing".
    """
    flags = os.O_RDONLY | _O_NONBLOCK | (0 if follow else _O_NOFOLLOW)
    if not follow and os.path.islink(path):
        raise Unreadable("is a symbolic link (not followed)")
    try:
        fd = os.open(path, flags | fsops.O_BINARY)
    except FileNotFoundError:
        raise
    except OSError as e:
        if not follow and os.path.islink(path):
            raise Unreadable("is a symbolic link (not followed)") from None
        raise Unreadable(f"cannot be read: {e.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            what = "a folder" if stat.S_ISDIR(st.st_mode) else "a FIFO" if stat.S_ISFIFO(st.st_mode) \
                else "not a regular file"
            raise Unreadable(f"is {what}, not a regular file")
        if st.st_size > limit:
            raise Unreadable(f"is {st.st_size} bytes, more than the limit of {limit}")
        chunks: list[bytes] = []
        total = 0
        while True:
            b = os.read(fd, min(1 << 20, limit + 1 - total))
            if not b:
                break
            chunks.append(b)
            total += len(b)
            if total > limit:
                raise Unreadable(f"is more than the limit of {limit} bytes")
        return b"".join(chunks)
    except OSError as e:
        raise Unreadable(f"cannot be read: {e.strerror}") from None
    finally:
        os.close(fd)


def _encoding_problem(raw: bytes) -> str | None:
    if raw.startswith(b"\xef\xbb\xbf"):
        return "starts with a UTF-8 byte-order mark; save it as UTF-8 without BOM"
    if raw[:2] in (b"\xff\xfe", b"\xfe\xff") or (len(raw) >= 2 and (raw[0] == 0 or raw[1] == 0)):
        return "is UTF-16 or UTF-32; save it as UTF-8"
    return None


class Identity(msgspec.Struct):
    """The two keys of ``run_metadata.json`` the sweep's identity check needs (the rest is skipped)."""

    run_id: Any = None
    strategy: Any = None


_decode_identity = msgspec.json.Decoder(Identity).decode
_decode_any = msgspec.json.Decoder().decode


def _literal(text: str) -> Any:
    """A JSON number as a float, or as its text when a float cannot hold it (``1e400``)."""
    f = float(text)
    return f if math.isfinite(f) else text


def _no_surrogates(value: Any, depth: int = 0) -> None:
    if isinstance(value, str):
        if any("\ud800" <= c <= "\udfff" for c in value):
            raise Unreadable("holds a lone surrogate escape (\\ud800-\\udfff), which is not text")
    elif isinstance(value, dict):
        for k, v in value.items():
            _no_surrogates(k, depth + 1)
            _no_surrogates(v, depth + 1)
    elif isinstance(value, list):
        for v in value:
            _no_surrogates(v, depth + 1)


def _decode_lenient(raw: bytes) -> Any:
    """What msgspec refused, by Python's json: NaN, Infinity and huge numbers become their text."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise Unreadable(f"is not UTF-8 ({e.reason} at byte {e.start})") from None
    try:
        data = json.loads(text, parse_constant=str, parse_float=_literal)
    except RecursionError:
        raise Unreadable("is nested too deeply") from None
    except ValueError as e:
        raise Unreadable(f"is not valid JSON ({e})") from None
    try:
        _no_surrogates(data)
    except RecursionError:
        raise Unreadable("is nested too deeply") from None
    return data


def _decode(raw: bytes, identity: bool) -> Any:
    problem = _encoding_problem(raw)
    if problem:
        raise Unreadable(problem)
    try:
        data = _decode_identity(raw) if identity else _decode_any(raw)
    except msgspec.ValidationError as e:
        if identity and str(e).startswith("Expected `object`"):
            raise Unreadable("does not hold a JSON object") from None
        data = _decode_lenient(raw)
    except (msgspec.DecodeError, RecursionError):
        data = _decode_lenient(raw)
    if isinstance(data, Identity):
        return data
    if not isinstance(data, dict):
        raise Unreadable("does not hold a JSON object")
    if identity:
        return Identity(run_id=data.get("run_id"), strategy=data.get("strategy"))
    return data


def read_metadata(path: str | os.PathLike[str], *, identity: bool = False) -> Any:
    """The object in a ``run_metadata.json`` (an :class:`Identity` when ``identity``).

    Raises FileNotFoundError when it is missing and :class:`Unreadable` (its
    message says why, in one line, to follow the file's name) when it is a link, not a regular file,
    over :data:`METADATA_MAX_BYTES`, or not strict UTF-8 JSON holding an object.
    """
    return _decode(read_file(path, METADATA_MAX_BYTES), identity)


# ---------------------------------------------------------------- directives

def _yaml_load(text: str) -> Any:
    import yaml

    class NoAliases(yaml.SafeLoader):
        def compose_node(self, parent: Any, index: Any) -> Any:
            if self.check_event(yaml.AliasEvent):
                raise yaml.YAMLError("aliases (*name) are not allowed in a directive")
            return super().compose_node(parent, index)

    return yaml.load(text, Loader=NoAliases)  # noqa: S506 - a SafeLoader without aliases


def _no_constant(text: str) -> Any:
    raise ValueError(f"{text} is not JSON")


def read_directive(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A directive file's mapping (JSON, TOML or YAML by its suffix); Refused (exit 1) with why."""
    shown = os.fspath(path)
    try:
        raw = read_file(path, DIRECTIVE_MAX_BYTES, follow=True)
        text = raw.decode("utf-8")
    except FileNotFoundError:
        raise Refused(f"cannot read directive {shown}: no such file") from None
    except Unreadable as e:
        raise Refused(f"cannot read directive {shown}: it {e}") from None
    except UnicodeDecodeError as e:
        raise Refused(f"cannot read directive {shown}: not UTF-8 ({e.reason} at byte {e.start})") from None
    suffix = os.path.splitext(shown)[1].lower()
    kind = {".toml": "TOML", ".yaml": "YAML", ".yml": "YAML"}.get(suffix, "JSON")
    try:
        if kind == "TOML":
            import tomllib
            data: Any = tomllib.loads(text)
        elif kind == "YAML":
            data = _yaml_load(text)
        else:
            try:
                data = _decode_any(raw)
            except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
                data = json.loads(text, parse_constant=_no_constant)    # the same verdict, a clearer reason
                _no_surrogates(data)
    except Unreadable as e:
        raise Refused(f"directive {shown} {e}") from None
    except RecursionError:
        raise Refused(f"directive {shown} is nested too deeply") from None
    except Exception as e:  # each parser has its own error class
        msg = " ".join(str(e).split())[:300]
        raise Refused(f"directive {shown} is not valid {kind}: {msg}") from None
    if not isinstance(data, dict):
        raise Refused(f"directive {shown} must be a mapping with a 'Strategy' key")
    return data
