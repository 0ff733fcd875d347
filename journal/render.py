"""Plumbing: the one JSON rendering of results (``--json``).

Every result the API returns is a dataclass; its JSON document is its
fields in order, nested results rendered the same way, except fields marked
``field(metadata=NOT_JSON)``, plus whatever its ``json_extra`` property
adds.  An error is ``{"code": N, "message": "…"}`` (with ``detail`` when it
has one), as SPEC §5 says.

The text is ``json.dumps(to_json(result), indent=2)``; :func:`json_text`
gives it in pieces, a list field an item at a time, so that a sweep's
million findings are never one document (nor a million dicts) in memory.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from collections.abc import Iterator, Sequence
from json.encoder import encode_basestring, encode_basestring_ascii
from typing import Any

NOT_JSON = {"json": False}


def error_doc(code: int, message: str, detail: str | None = None) -> dict[str, Any]:
    err: dict[str, Any] = {"code": code, "message": message}
    if detail:
        err["detail"] = detail
    return err


def to_json(obj: Any) -> Any:
    """A result as JSON-able data (see the module docstring)."""
    from .errors import SopError
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        doc = {f.name: to_json(getattr(obj, f.name)) for f in dataclasses.fields(obj)
               if f.metadata.get("json", True)}
        extra = getattr(obj, "json_extra", None)
        if extra:
            doc.update({k: to_json(v) for k, v in extra.items()})
        return doc
    if hasattr(obj, "__struct_fields__"):                 # a msgspec Struct (an owner, a state)
        return {f: to_json(getattr(obj, f)) for f in obj.__struct_fields__}
    if isinstance(obj, SopError):
        return error_doc(obj.exit_code, obj.message, obj.detail)
    if isinstance(obj, dict):
        return {str(k): to_json(v) for k, v in obj.items()}
    if isinstance(obj, Sequence) and not isinstance(obj, (str, bytes, bytearray)):    # a list, a sweep's Findings
        return [to_json(v) for v in obj]
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    return obj


def json_text(obj: Any, *, ensure_ascii: bool = True) -> Iterator[str]:
    """``json.dumps(to_json(obj), indent=2, ensure_ascii=ensure_ascii, default=str)``, the same text in pieces.

    A result's list fields (a sweep's findings) are encoded an item at a
    time; an item that is a dataclass of plain values (str, int, bool,
    None) is written directly, without a dict or json's pure-Python
    indenting encoder.  Anything else goes through :func:`json.dumps`.
    """
    def dumps(value: Any, level: int) -> str:
        text = json.dumps(to_json(value), indent=2, ensure_ascii=ensure_ascii, default=str)
        return text.replace("\n", "\n" + "  " * level) if level else text

    if not (dataclasses.is_dataclass(obj) and not isinstance(obj, type)):
        yield dumps(obj, 0)
        return
    doc = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj) if f.metadata.get("json", True)}
    doc.update(getattr(obj, "json_extra", None) or {})
    if not doc:
        yield "{}"
        return
    enc = encode_basestring_ascii if ensure_ascii else encode_basestring
    yield "{"
    for n, (key, value) in enumerate(doc.items()):
        head = ("," if n else "") + "\n  " + enc(str(key)) + ": "
        if not (isinstance(value, Sequence) and not isinstance(value, (str, bytes, bytearray)) and len(value)):
            yield head + dumps(value, 1)
            continue
        yield head + "["
        for i, item in enumerate(value):
            yield ("," if i else "") + "\n    " + (_flat(item, enc) or dumps(item, 2))
        yield "\n  ]"
    yield "\n}"


@functools.cache
def _json_fields(cls: type) -> tuple[str, ...] | None:
    """The JSON fields of a dataclass whose document is only its fields (no ``json_extra``), else None."""
    if getattr(cls, "json_extra", None) is not None:
        return None
    return tuple(f.name for f in dataclasses.fields(cls) if f.metadata.get("json", True)) or None


def _flat(item: Any, enc: Any) -> str | None:
    """An item of a list at depth 2, when it is a dataclass of plain values; else None."""
    if not dataclasses.is_dataclass(item) or isinstance(item, type):
        return None
    names = _json_fields(type(item))
    if names is None:
        return None
    parts = []
    for name in names:
        v = getattr(item, name)
        if isinstance(v, str):
            text = enc(v)
        elif v is None:
            text = "null"
        elif v is True:
            text = "true"
        elif v is False:
            text = "false"
        elif isinstance(v, int):
            text = int.__repr__(v)
        else:
            return None
        parts.append(enc(name) + ": " + text)
    return "{\n      " + ",\n      ".join(parts) + "\n    }"
