"""Plumbing: the one JSON rendering of results (``--json``).

Every result the API returns is a dataclass; its JSON document is its
fields in order, nested results rendered the same way, except fields marked
``field(metadata=NOT_JSON)``, plus whatever its ``json_extra`` property
adds.  An error is ``{"code": N, "message": "…"}`` (with ``detail`` when it
has one), as SPEC §5 says.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
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
